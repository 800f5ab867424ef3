"""Stage 2 — buffer: bounded in-memory hand-off between requests and the flusher.

Enters: the validated rows of one request (:meth:`Buffer.admit`, on the event loop).
Leaves: batches for the flusher (:meth:`Buffer.take`).

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
from collections.abc import Sequence

from ingest.validate import EVENT_ID, PROJECT_ID

RECENT_CLIENT_IDS = 100_000  # ~15 MB: enough for retries within minutes at high rates


Key = tuple[int, int]


class RecentIds:
    """Insertion-ordered, bounded set of ``(project_id, event_id)`` keys."""

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


class Buffer:
    """Pending-event counter plus the queue of rows not yet taken by the flusher."""

    def __init__(self, capacity: int, flush_events: int) -> None:
        self.capacity = capacity
        self.flush_events = flush_events
        self.pending = 0  # events admitted and not yet durable anywhere
        self.duplicates_dropped = 0
        self.typical_request = 0.0  # moving average of events per admitted request
        self._rows: list[tuple] = []
        self._ready = asyncio.Event()
        self._recent = RecentIds()

    @property
    def queued(self) -> int:
        """Events waiting for the flusher (a subset of :attr:`pending`)."""
        return len(self._rows)

    def likely_full(self) -> bool:
        """True when a typical request would not fit. Checked before a request body is
        read, so that under overload a refusal costs microseconds, not a parse."""
        return self.pending + self.typical_request > self.capacity

    def admit(self, rows: list[tuple], client_id_rows: Sequence[int] = ()) -> bool:
        """Take all of ``rows`` or none. ``False`` means the buffer is full.

        Rows whose client-supplied id was already admitted are acknowledged but not
        queued again (a retry of the same event).
        """
        keys: list[Key] = []
        if client_id_rows:
            dup_positions = set()
            seen: set[Key] = set()
            for i in client_id_rows:
                row = rows[i]
                key = (row[PROJECT_ID], row[EVENT_ID])
                if key in self._recent or key in seen:
                    dup_positions.add(i)
                else:
                    seen.add(key)
                    keys.append(key)
            if dup_positions:
                rows = [row for i, row in enumerate(rows) if i not in dup_positions]
        n = len(rows)
        if self.pending + n > self.capacity:
            return False
        self.duplicates_dropped += len(client_id_rows) - len(keys)
        for key in keys:
            self._recent.add(key)
        self.typical_request += (n - self.typical_request) * 0.05
        if n:
            self._rows.extend(rows)
            self.pending += n
            if len(self._rows) >= self.flush_events:
                self._ready.set()
        return True

    def take(self, limit: int) -> list[tuple]:
        """Remove and return up to ``limit`` queued rows (they stay pending)."""
        batch = self._rows[:limit]
        del self._rows[:limit]
        if len(self._rows) < self.flush_events:
            self._ready.clear()
        return batch

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
