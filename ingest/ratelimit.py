"""Per-project rate limit: one token bucket per project, judged on events sent.

Enters: a project id and the number of events its request sent (valid or not: a tenant
that floods invalid events costs the same parse) — :meth:`ProjectLimits.take`.
Leaves: ``0.0`` (go ahead) or the seconds until the request would fit (→ 429 with
``Retry-After``). Nothing here does I/O; the clock is passed in for tests.

The bucket of a project holds up to ``burst`` events and refills at ``rate`` events per
second (``INGEST_PROJECT_EVENTS_PER_S``, ``INGEST_PROJECT_BURST``; off when the rate is
0). A request of ``n`` events is admitted when the bucket holds ``min(n, burst)``, and
takes all ``n``: a request larger than the burst passes when the bucket is full and
leaves it in debt, so the long-run rate holds whatever the request sizes, and no request
size is refused for ever. One project's bucket never touches another's.

Memory is bounded: at most :data:`MAX_PROJECTS` buckets. Over that, buckets that have
refilled (equivalent to no bucket at all) are dropped first, then the least recently
used; only resolved projects ever get one, so random tokens cannot create them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

MAX_PROJECTS = 100_000  # ~150 bytes a bucket


class ProjectLimits:
    """Token buckets by project id."""

    def __init__(
        self,
        rate: float,
        burst: int = 0,
        *,
        max_projects: int = MAX_PROJECTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = float(burst or max(1, math.ceil(rate)))  # 0: one second's worth
        self._max = max_projects
        self._clock = clock
        self._buckets: dict[int, list[float]] = {}  # project → [level, at]; newest last
        self.limited: dict[int, int] = {}  # project → events refused (exposed in /metrics)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, project_id: int, events: int) -> float:
        """Admit ``events`` for ``project_id`` (0.0), or the seconds to wait (> 0)."""
        now = self._clock()
        bucket = self._buckets.pop(project_id, None)  # re-inserted below: most recent
        if bucket is None:
            level = self.burst
        else:
            level = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        need = min(events, self.burst)
        if level < need:
            self._buckets[project_id] = [level, now]
            self.limited[project_id] = self.limited.get(project_id, 0) + events
            return (need - level) / self.rate
        self._buckets[project_id] = [level - events, now]
        if len(self._buckets) > self._max:
            self._evict(now)
        return 0.0

    def refund(self, project_id: int, events: int) -> None:
        """Give back what an admitted request did not use (it was refused later, 503)."""
        bucket = self._buckets.get(project_id)
        if bucket is not None:
            bucket[0] = min(self.burst, bucket[0] + events)

    def _evict(self, now: float) -> None:
        """Down to 90% of the bound (so the scan is paid once per many new projects):
        refilled buckets first, then the least recently used."""
        full = [p for p, (level, at) in self._buckets.items()
                if level + (now - at) * self.rate >= self.burst]  # fmt: skip
        for project in full:
            del self._buckets[project]
        target = self._max * 9 // 10
        while len(self._buckets) > target:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(seconds: float) -> str:
    """``Retry-After`` in whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
