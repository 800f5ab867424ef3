"""Stage 3 — flush: buffer → ClickHouse, one INSERT per batch.

Enters: :class:`~ingest.buffer.Batch` es taken from the buffer, as soon as one is full
(``INGEST_FLUSH_EVENTS``) or every ``INGEST_FLUSH_INTERVAL``, each only once the log
holds every event in it durably.
Leaves: one ``INSERT … FORMAT JSONCompactEachRow`` into ``events_raw_v1`` per batch — the
row lines exactly as validation wrote them, parsed by ClickHouse — with the batch id (its
log segment's id) as the insert deduplication token; then the usage hook, once per landed
event, and the batch's log segment is released.

On failure:

1. ClickHouse refuses or is unreachable → the batch, under the *same* batch id, becomes
   one ``failed_events`` row (:mod:`ingest.deadletter`); the drain replays it later.
   If Postgres refuses the batch for its *content* (a value ``jsonb`` cannot hold —
   validation should never let one through), the batch is split: every event that can
   be parked is parked (rows whose ids derive from the batch id), and each event that
   cannot is kept, encoded, in a quarantined row with the reason. Data never makes the
   instance fatal.
2. The dead-letter write fails for any other reason → the fatal flag goes up (ingest
   answers 503 "ingest down") and the batch stays in memory (and in the log), still
   counted as pending, and is retried (ClickHouse first, then the dead-letter table)
   every interval. The first success clears fatal. The repeated failure is logged once,
   then once a minute with a count.

The insert runs off the event loop (the engine process for the embedded engine, the
async client for a server), so requests are accepted while a flush is in progress. Up to
:data:`MAX_IN_FLIGHT` batches are handed over at once: under load the loop can take tens
of milliseconds to get back to the flusher, and the next batch must already be queued
for the engine by then.

Shutdown (:meth:`Flusher.stop`) has one deadline: the loop stops taking batches, batches
in flight finish or are cancelled at the deadline, then what is queued is flushed (or
parked) while time remains. What is left stays in the log for the next boot (with
``INGEST_DURABILITY=memory``: is lost, and counted).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import structlog

from ingest.buffer import Batch, Buffer
from ingest.deadletter import DeadLetter
from ingest.ids import uuid_str
from ingest.metrics import Metrics
from ingest.rows import LINE_COLUMNS, TABLE, lines_to_rows, rows_to_lines
from ingest.state import State
from storage.clickhouse import ClickHouse, ClickHouseError, classify

log = structlog.get_logger("sluice.flush")

PARK_RETRY_TRANSIENT = 1.0  # first replay of a parked batch: soon, with backoff after that
MAX_IN_FLIGHT = 4  # batches handed to ClickHouse at once (measured: 1 left the engine idle)
HELD_LOG_EVERY = 60.0  # seconds between log lines for a batch that stays held

UsageHook = Callable[[str, int], None]
# What a dead-letter write raises when the batch's content is at fault, not Postgres:
# a value jsonb refuses (asyncpg's DataError: NUL, bad Unicode escape, …), or text that
# cannot be encoded at all.
CONTENT_ERRORS = (asyncpg.DataError, UnicodeError, ValueError, TypeError)


def no_usage(project_id: str, count: int) -> None:
    """The default usage hook: does nothing."""


async def insert_batch(ch: ClickHouse, batch: Batch) -> None:
    """One INSERT of a batch's row lines with its id as the dedup token."""
    await ch.insert_lines(TABLE, batch.parts, LINE_COLUMNS, batch.id)


async def insert_lines(ch: ClickHouse, data: bytes, token: str) -> None:
    """One INSERT of row lines (the drain's replays) with ``token``: a replay reaches
    ClickHouse by the flush's own path, and a batch replayed whole forms the same block
    as its first flush."""
    await ch.insert_lines(TABLE, [data], LINE_COLUMNS, token)


async def insert_rows(ch: ClickHouse, rows: list[tuple], token: str) -> None:
    """:func:`insert_lines` of pipeline rows."""
    await insert_lines(ch, rows_to_lines(rows), token)


def batch_usage(batch: Batch) -> dict[str, int]:
    """Events per project id (text) in a batch."""
    return {uuid_str(p): n for p, n in batch.projects.items()}


def report_usage(hook: UsageHook, counts: dict[str, int]) -> None:
    """Call ``hook(project_id, count)`` for events that just landed."""
    for project_id, count in counts.items():
        try:
            hook(project_id, count)
        except Exception as exc:  # a broken hook must never lose or duplicate events
            log.error("usage_hook_failed", project_id=project_id, error=str(exc)[:200])


def part_id(batch_id: str, first: int, size: int) -> uuid.UUID:
    """The id of a slice of a batch split for parking: the same slice always gets the
    same id, so parking it again is a no-op."""
    return uuid.uuid5(uuid.UUID(batch_id), f"{first}/{size}")


@dataclass
class _Held:
    """A batch neither store took: kept in memory until one does."""

    batch: Batch
    error: str
    failures: int = 1
    logged_at: float = 0.0


class Flusher:
    def __init__(
        self,
        buffer: Buffer,
        clickhouse: ClickHouse,
        deadletter: DeadLetter,
        state: State,
        metrics: Metrics,
        *,
        flush_interval: float,
        usage_hook: UsageHook = no_usage,
        on_recovery: Callable[[], None] | None = None,
    ) -> None:
        self.buffer = buffer
        self.clickhouse = clickhouse
        self.deadletter = deadletter
        self.state = state
        self.metrics = metrics
        self.flush_interval = flush_interval
        self.usage_hook = usage_hook
        self.on_recovery = on_recovery
        self._held: list[_Held] = []
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._in_flight: dict[asyncio.Task[bool], Batch] = {}
        self._stopping = False
        self._clickhouse_failing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name="flusher")
        return self._task

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The loop started by :meth:`start` (:meth:`stop` ends it)."""
        return self._task

    async def run(self) -> None:
        """The background loop: size-or-interval batching until :meth:`stop`."""
        while not self._stopping:
            full = await self.buffer.wait_ready(self.flush_interval)
            if self._stopping:
                break
            try:
                await self._dispatch(reason="size" if full else "interval", full_only=full)
            except Exception:  # never let the loop die; a failed batch is already held
                log.exception("flush_loop_error")

    async def flush_pending(self, *, reason: str) -> None:
        """Flush everything queued now and wait until it is durable (tests, tools)."""
        await self._dispatch(reason=reason, full_only=False)
        await asyncio.gather(*self._in_flight)

    async def _dispatch(self, *, reason: str, full_only: bool) -> None:
        """Retry held batches, then hand queued batches over."""
        if self._held:
            held, self._held = self._held, []
            for item in held:
                await self._flush(item.batch, "retry", held=item)
            if self._held:  # both stores still failing: do not pile up more attempts
                return
        while not self._stopping:
            await self._slots.acquire()
            if self._stopping:
                self._slots.release()
                break
            batch = await self.buffer.take(full_only=full_only)
            if batch is None:
                self._slots.release()
                break
            task = asyncio.create_task(self._flush(batch, reason))
            self._in_flight[task] = batch
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[bool]) -> None:
        self._in_flight.pop(task, None)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("flush_task_failed", error=repr(task.exception()))

    async def _flush(
        self,
        batch: Batch,
        reason: str,
        *,
        deadline: float | None = None,
        insert_deadline: float | None = None,
        held: _Held | None = None,
    ) -> bool:
        """Make one batch durable in a store. True when it is (either store). At
        shutdown ClickHouse gets until ``insert_deadline``, parking until ``deadline``."""
        started = time.perf_counter()
        try:
            if insert_deadline is not None and insert_deadline - time.monotonic() < 0.01:
                raise TimeoutError
            await _until(insert_batch(self.clickhouse, batch), insert_deadline or deadline)
        except (ClickHouseError, TimeoutError, OSError) as exc:
            if isinstance(exc, TimeoutError):
                err = None
                error = "shutdown deadline reached before ClickHouse took the batch"
            else:
                err = classify(exc)
                error = str(err)
            self._clickhouse_failing = True
            return await self._park(batch, error, reason, started, err, deadline, held)
        duration = time.perf_counter() - started
        self.buffer.release(batch)
        self.state.clickhouse_ok()
        if self.state.fatal:
            self.state.clear_fatal()
        if self._clickhouse_failing:
            self._clickhouse_failing = False
            if self.on_recovery:
                self.on_recovery()
        self.metrics.events_flushed.inc(batch.count)
        self._log(log.info, batch, duration, reason, "stored")
        if self.usage_hook is not no_usage:
            report_usage(self.usage_hook, batch_usage(batch))
        return True

    async def _park(
        self,
        batch: Batch,
        error: str,
        reason: str,
        started: float,
        err: ClickHouseError | None,
        deadline: float | None,
        held: _Held | None,
    ) -> bool:
        retry_in = PARK_RETRY_TRANSIENT if err is None or err.transient else 0.0
        try:
            unstorable = await _until(self._park_lines(batch, error, retry_in), deadline)
        except TimeoutError:
            if deadline is None:
                raise
            return False  # shutdown: the batch stays in the log for the next boot
        except Exception as exc:
            duration = time.perf_counter() - started
            reason_text = f"ClickHouse: {error[:200]}; dead-letter table: {str(exc)[:200]}"
            self.state.set_fatal(reason_text)
            if held is None:
                held = _Held(batch, reason_text)
            else:
                held.failures += 1
            self._held.append(held)
            now = time.monotonic()
            if now - held.logged_at >= HELD_LOG_EVERY:  # bounded repetition
                held.logged_at = now
                self._log(log.error, batch, duration, reason, "held", error=reason_text,
                          failures=held.failures)  # fmt: skip
            else:
                self.metrics.flush_seconds.labels("held").observe(duration)
            return False
        duration = time.perf_counter() - started
        self.buffer.release(batch)
        self.state.postgres_ok()
        if self.state.fatal:
            self.state.clear_fatal()
        self.state.dlq_rows += 1
        self.state.dlq_events += batch.count - unstorable
        self.metrics.events_parked.inc(batch.count - unstorable)
        if unstorable:
            self.metrics.events_quarantined.inc(unstorable)
        self._log(log.warning, batch, duration, reason, "parked", error=error[:500],
                  unstorable=unstorable)  # fmt: skip
        return True

    async def _park_lines(self, batch: Batch, error: str, retry_in: float) -> int:
        """Park the batch as one row (its id); if Postgres refuses its content, split it.
        Returns how many events could only be quarantined as unstorable."""
        data = batch.data()
        try:
            await self.deadletter.park(batch.id, lines_to_rows(data), error, retry_in=retry_in)
            return 0
        except CONTENT_ERRORS as exc:
            log.error("dead_letter_refused_content", batch_id=batch.id, error=str(exc)[:300],
                      detail="splitting the batch: the events that can be parked are")  # fmt: skip
        lines = [line + b"\n" for line in data.split(b"\n")[:-1]]
        return await self._park_split(batch.id, lines, 0, error, retry_in)

    async def _park_split(
        self, batch_id: str, lines: list[bytes], first: int, error: str, retry_in: float
    ) -> int:
        row_id = str(part_id(batch_id, first, len(lines)))
        try:
            rows = lines_to_rows(b"".join(lines))
            await self.deadletter.park(row_id, rows, error, retry_in=retry_in)
            return 0
        except CONTENT_ERRORS as exc:
            if len(lines) == 1:
                reason = f"the dead-letter table cannot hold this event: {exc}"[:500]
                await self.deadletter.park_unstorable(row_id, lines[0], reason)
                log.error("event_unstorable", row_id=row_id, reason=reason)
                return 1
        mid = len(lines) // 2
        left = await self._park_split(batch_id, lines[:mid], first, error, retry_in)
        right = await self._park_split(batch_id, lines[mid:], first + mid, error, retry_in)
        return left + right

    def _log(
        self,
        emit: Callable[..., None],
        batch: Batch,
        duration: float,
        reason: str,
        outcome: str,
        **extra: object,
    ) -> None:
        """The one log line and histogram sample per flush."""
        self.metrics.flush_seconds.labels(outcome).observe(duration)
        emit(
            "flush",
            batch_id=batch.id,
            events=batch.count,
            duration_ms=round(duration * 1000, 2),
            reason=reason,
            outcome=outcome,
            **extra,
        )

    async def stop(self, deadline: float) -> int:
        """Shutdown: flush (or park) everything before ``deadline`` (``time.monotonic``).

        Returns the number of events no store took: they stay in the log for the next
        boot (or, without a log, are lost); the caller reports them."""
        self._stopping = True
        self.buffer.wake()
        if self._task is not None:  # the loop finishes the dispatch it is in, then exits
            await asyncio.wait([self._task], timeout=max(0.0, deadline - time.monotonic()))
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # ClickHouse gets the first 60% of what is left; parking what it did not take in
        # the dead-letter table (where any instance can replay it) gets the rest.
        insert_end = time.monotonic() + max(0.0, deadline - time.monotonic()) * 0.6
        pending: list[Batch] = []
        if self._in_flight:  # batches already handed over finish (or park) in time
            await asyncio.wait(set(self._in_flight), timeout=max(0, insert_end - time.monotonic()))
            for task, batch in list(self._in_flight.items()):
                task.cancel()  # same batch id: if the insert lands after all, the replay
                pending.append(batch)  # is a no-op
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        pending += [h.batch for h in self._held]
        self._held = []
        while (batch := await self.buffer.take()) is not None:
            pending.append(batch)
        for batch in pending:
            if deadline - time.monotonic() > 0.05:
                await self._flush(batch, "shutdown", deadline=deadline, insert_deadline=insert_end)
        self._held = []  # reported by the caller
        return self.buffer.pending  # every event admitted and not yet in a store


async def _until(awaitable, deadline: float | None):  # type: ignore[no-untyped-def]
    """``await awaitable``, cancelled with ``TimeoutError`` at ``deadline``."""
    if deadline is None:
        return await awaitable
    return await asyncio.wait_for(awaitable, max(0.001, deadline - time.monotonic()))
