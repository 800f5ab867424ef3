"""Stage 2 — buffer: bounded hand-off between requests and the flusher, cut into batches.

Enters: the row lines of one request (:meth:`Buffer.admit`, on the event loop), kept as
one ``bytes`` chunk per request (~480 B per event, no per-event object).
Leaves: :class:`Batch` es for the flusher (:meth:`Buffer.take`), each the contents of one
write-ahead-log segment (:mod:`ingest.wal`) and named by its id — the batch's ClickHouse
deduplication token, fixed before its first event is acknowledged.

A batch is filled by requests in arrival order and closed when the next request would
take it past ``INGEST_FLUSH_EVENTS`` (a request is never split: a batch holds at most
``INGEST_FLUSH_EVENTS`` events, or one request's when a single request is larger), or
when the flusher takes it at a flush interval. With ``INGEST_DURABILITY=fsync``,
:meth:`Buffer.admit` returns only once the request's record is durable in the log, and a
batch is handed to the flusher only once every record in it is.

Bounded by *pending events*: every event from admission until it is durably stored (in
ClickHouse or the dead-letter table) — queued, in a flush, or held in memory because
both stores failed — and by the log's disk budget (``INGEST_WAL_MAX_BYTES``). Admission
is all-or-nothing per request and never waits for room: if the request does not fit,
nothing of it is taken and the caller answers 503 (:class:`Refused`). A request whose
record could not be made durable is taken back out of its batch and refused too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from ingest.ids import uuid7_int
from ingest.rows import upgrade_lines
from ingest.wal import SegmentReport, Wal, WalError


class Refused(Exception):
    """A request's events were not accepted (503): ``reason`` for the client, and the
    seconds it should wait (``Retry-After``)."""

    def __init__(self, reason: str, retry_after: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


Chunk = tuple[bytes, int, int]  # a request's row lines, how many, its project id


@dataclass(eq=False, slots=True)
class Batch:
    """Events on their way to ClickHouse: row lines (:mod:`ingest.rows`) in the chunks
    they were admitted in (never joined on the event loop), how many, how many per
    project id (for the usage hook), and the batch id (a UUIDv7: the log segment's id,
    the insert deduplication token, the ``failed_events`` row id)."""

    id_bytes: bytes  # 16 bytes; the log segment's header holds them
    chunks: list[Chunk] = field(default_factory=list)
    count: int = 0
    closed: bool = False
    durable: asyncio.Future[None] | None = None  # the sync covering its last record
    id: str = ""  # the same id as text (the dedup token, the failed_events id)

    def __post_init__(self) -> None:
        self.id = str(uuid.UUID(bytes=self.id_bytes))

    @property
    def parts(self) -> list[bytes]:
        return [c[0] for c in self.chunks]

    @property
    def projects(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for _, n, project in self.chunks:
            out[project] = out.get(project, 0) + n
        return out

    def data(self) -> bytes:
        """The lines as one ``bytes``."""
        return b"".join(c[0] for c in self.chunks)


class Buffer:
    """Pending-event counter, the batch being filled, and the closed batches not yet
    taken by the flusher."""

    def __init__(self, capacity: int, flush_events: int, wal: Wal | None = None) -> None:
        self.capacity = capacity
        self.flush_events = flush_events
        self.wal = wal
        self.pending = 0  # events admitted and not yet durable in a store
        self.typical_request = 0.0  # moving average of events per admitted request
        self._open: Batch | None = None
        self._closed: deque[Batch] = deque()
        self._queued = 0  # events in batches the flusher has not taken
        self._ready = asyncio.Event()
        if wal is not None:
            wal.on_failure = self._not_durable

    @property
    def queued(self) -> int:
        """Events waiting for the flusher (a subset of :attr:`pending`)."""
        return self._queued

    def likely_full(self) -> bool:
        """True when a typical request would not fit. Checked before a request body is
        read, so that under overload a refusal costs microseconds, not a parse."""
        return self.pending + self.typical_request > self.capacity

    async def admit(self, data: bytes, count: int, project_id: int) -> None:
        """Take all ``count`` row lines in ``data`` or none; with a log, return once they
        are durable. Raises :class:`Refused`."""
        if self.pending + count > self.capacity:
            raise Refused("ingest buffer full", "1")
        wal = self.wal
        if wal is not None and wal.full(len(data)):
            raise Refused("write-ahead log full (INGEST_WAL_MAX_BYTES)", "5")
        batch = self._open
        if batch is None or (batch.count + count > self.flush_events and batch.count):
            batch = self._new_batch()
        chunk = (data, count, project_id)
        batch.chunks.append(chunk)
        batch.count += count
        self.pending += count
        self._queued += count
        self.typical_request += (count - self.typical_request) * 0.05
        if wal is not None:
            durable = batch.durable = wal.append(
                batch.id_bytes, project_id.to_bytes(16, "big"), data, (batch, chunk)
            )
        if batch.count >= self.flush_events:
            self._close()
        if wal is not None:
            try:
                await durable
            except WalError:  # _not_durable took the chunk back out
                raise Refused("could not write the events to disk; retry", "5") from None

    def _new_batch(self) -> Batch:
        if self._open is not None:
            self._close()
        self._open = Batch(uuid7_int().to_bytes(16, "big"))
        return self._open

    def _close(self) -> None:
        batch, self._open = self._open, None
        if batch is None or not batch.count:
            return
        batch.closed = True
        self._closed.append(batch)
        self._ready.set()

    def _not_durable(self, items: list[tuple[Batch, Chunk]]) -> None:
        """The log could not write these chunks: out of their batches they go (their
        requests are answered 503), and each batch they were in takes no more."""
        for batch, chunk in items:
            if batch is self._open or batch in self._closed:
                self._queued -= chunk[1]  # else the flusher took it and is waiting on it
            batch.chunks.remove(chunk)
            batch.count -= chunk[1]
            self.pending -= chunk[1]
            if batch is self._open:
                self._close()
            if not batch.count and batch in self._closed:
                self._closed.remove(batch)

    def restore(self, segments: Iterable[SegmentReport]) -> int:
        """Queue the batches a dead process left in the log, ahead of anything new.
        Returns their events."""
        total = 0
        for seg in segments:
            assert seg.segment_id is not None
            batch = Batch(seg.segment_id, closed=True)
            for project, data in seg.records:
                data = upgrade_lines(data)  # a segment an older version wrote
                n = data.count(b"\n")
                batch.chunks.append((data, n, int.from_bytes(project, "big")))
                batch.count += n
            self._closed.append(batch)
            self.pending += batch.count
            self._queued += batch.count
            total += batch.count
        if self._closed:
            self._ready.set()
        return total

    async def take(self, *, full_only: bool = False) -> Batch | None:
        """The oldest batch, once every record in it is durable; ``full_only=False``
        also closes and takes the batch being filled. ``None`` when there is none."""
        if not self._closed and not full_only:
            self._close()
        if not self._closed:
            self._ready.clear()
            return None
        batch = self._closed.popleft()
        self._queued -= batch.count
        if not self._closed:
            self._ready.clear()
        if batch.durable is not None and not batch.durable.done():
            await asyncio.wait([batch.durable])  # a failure already took its chunks out
        if not batch.count:
            return await self.take(full_only=full_only)
        return batch

    def release(self, batch: Batch) -> None:
        """``batch`` is durable in a store: free its room and its log segment."""
        self.pending -= batch.count
        if self.wal is not None:
            self.wal.release(batch.id_bytes)

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
