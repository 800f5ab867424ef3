"""Stage 2 — buffer: bounded in-memory hand-off between requests and the flusher.

Enters: the row lines of one request (:meth:`Buffer.admit`, on the event loop), kept as
one ``bytes`` chunk per request (~480 B per event, no per-event object).
Leaves: :class:`Batch` es for the flusher (:meth:`Buffer.take`): exactly up to
``INGEST_FLUSH_EVENTS`` events each (a request's chunk is split at a line if need be).

Bounded by *pending events*: every event from admission until it is durably stored
(in ClickHouse or in the dead-letter table) — queued, in a flush, or held in memory
because both stores failed. Admission is all-or-nothing per request and never waits: if
the request does not fit, nothing of it is taken and the caller answers 503. Because a
batch keeps counting until it is durable, memory stays bounded during any outage and
admission turns to 503 on its own.

It also remembers the ids clients supplied themselves (:class:`RecentIds`), so a client
retry of a batch that was already accepted is acknowledged without storing it twice.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

RECENT_CLIENT_IDS = 100_000  # ~15 MB: enough for retries within minutes at high rates


Key = tuple[int, int]


class RecentIds:
    """Insertion-ordered, bounded set of ``(project_id, event_id)`` keys (ints)."""

    def __init__(self, capacity: int = RECENT_CLIENT_IDS) -> None:
        self.capacity = capacity
        self._keys: dict[Key, None] = {}

    def __contains__(self, key: Key) -> bool:
        return key in self._keys

    def add(self, key: Key) -> None:
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            del self._keys[next(iter(self._keys))]

    def __len__(self) -> int:
        return len(self._keys)


class Refused(Exception):
    """A request's events were not accepted (503): ``reason`` for the client, and the
    seconds it should wait (``Retry-After``)."""

    def __init__(self, reason: str, retry_after: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(slots=True)
class Batch:
    """Events on their way to ClickHouse: row lines (:mod:`ingest.validate`) in the
    chunks they were admitted in (never joined on the event loop), how many, and how many
    per project id (for the usage hook)."""

    parts: list[bytes]
    count: int
    projects: dict[int, int]

    def data(self) -> bytes:
        """The lines as one ``bytes``."""
        return b"".join(self.parts)


def _split(data: bytes, n: int) -> int:
    """Offset just past the ``n``-th line of ``data``."""
    end = 0
    for _ in range(n):
        end = data.index(b"\n", end) + 1
    return end


class Buffer:
    """Pending-event counter plus the queue of request chunks not yet taken by the flusher."""

    def __init__(self, capacity: int, flush_events: int) -> None:
        self.capacity = capacity
        self.flush_events = flush_events
        self.pending = 0  # events admitted and not yet durable anywhere
        self.duplicates_dropped = 0
        self.typical_request = 0.0  # moving average of events per admitted request
        # (a request's row lines, how many, its project id)
        self._chunks: deque[tuple[bytes, int, int]] = deque()
        self._queued = 0
        self._ready = asyncio.Event()
        self._recent = RecentIds()

    @property
    def queued(self) -> int:
        """Events waiting for the flusher (a subset of :attr:`pending`)."""
        return self._queued

    def likely_full(self) -> bool:
        """True when a typical request would not fit. Checked before a request body is
        read, so that under overload a refusal costs microseconds, not a parse."""
        return self.pending + self.typical_request > self.capacity

    async def admit(self, data: bytes, count: int, project_id: int) -> None:
        """Take all ``count`` row lines in ``data`` or none. Raises :class:`Refused`."""
        if not self.admit_now(data, count, project_id):
            raise Refused("ingest buffer full", "1")

    def admit_now(
        self,
        data: bytes,
        count: int,
        project_id: int,
        client_ids: Sequence[tuple[int, int]] = (),
    ) -> bool:
        """Take all ``count`` row lines in ``data`` or none. ``False`` means the buffer
        is full.

        ``client_ids`` are ``(line index, id)`` of events whose id the client supplied;
        one already admitted is acknowledged but not queued again (a client retry).
        """
        keys: list[Key] = []
        if client_ids:
            drop = set()
            seen: set[int] = set()
            for i, event_id in client_ids:
                if (project_id, event_id) in self._recent or event_id in seen:
                    drop.add(i)
                else:
                    seen.add(event_id)
                    keys.append((project_id, event_id))
            if drop:
                lines = data.split(b"\n")[:count]
                data = b"".join(line + b"\n" for i, line in enumerate(lines) if i not in drop)
                count -= len(drop)
        if self.pending + count > self.capacity:
            return False
        self.duplicates_dropped += len(client_ids) - len(keys)
        for key in keys:
            self._recent.add(key)
        self.typical_request += (count - self.typical_request) * 0.05
        if count:
            self._chunks.append((data, count, project_id))
            self._queued += count
            self.pending += count
            if self._queued >= self.flush_events:
                self._ready.set()
        return True

    def take(self, limit: int) -> Batch | None:
        """Remove and return up to ``limit`` queued events (they stay pending)."""
        parts: list[bytes] = []
        projects: dict[int, int] = {}
        count = 0
        chunks = self._chunks
        while chunks and count < limit:
            data, n, project = chunks[0]
            if count + n > limit:  # a request larger than what is left: split its lines
                n = limit - count
                cut = _split(data, n)
                chunks[0] = (data[cut:], chunks[0][1] - n, project)
                data = data[:cut]
            else:
                chunks.popleft()
            parts.append(data)
            projects[project] = projects.get(project, 0) + n
            count += n
        self._queued -= count
        if self._queued < self.flush_events:
            self._ready.clear()
        if not count:
            return None
        return Batch(parts, count, projects)

    def release(self, n: int) -> None:
        """``n`` taken events are now durable: free their room."""
        self.pending -= n

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until a full batch is queued, or ``timeout``. True if a batch is ready."""
        if self._ready.is_set():
            return True
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def wake(self) -> None:
        """Make :meth:`wait_ready` return now (shutdown)."""
        self._ready.set()
