"""Stage 3 — flush: buffer → ClickHouse, one INSERT per batch.

Enters: :class:`~ingest.buffer.Batch` es taken from the buffer, as soon as
``INGEST_FLUSH_EVENTS`` are queued or every ``INGEST_FLUSH_INTERVAL``.
Leaves: one ``INSERT … FORMAT JSONCompactEachRow`` into ``events_raw_v1`` per batch of
at most ``INGEST_FLUSH_EVENTS`` events — the row lines exactly as validation wrote them,
parsed by ClickHouse — tagged with a fresh batch id (UUIDv7) as its insert deduplication
token; then the usage hook, once per landed event.

On failure:

1. ClickHouse refuses or is unreachable → the batch, under the *same* batch id, becomes
   one ``failed_events`` row (:mod:`ingest.deadletter`, its lines turned into the stored
   payload format); the drain replays it later.
2. That write fails too → the fatal flag goes up (ingest answers 503 "ingest down") and
   the batch stays in memory, still counted as pending, and is retried (ClickHouse
   first, then the dead-letter table) every interval. The first success clears fatal.

The insert runs off the event loop (the engine process for the embedded engine, the
async client for a server), so requests are accepted while a flush is in progress. Up to
:data:`MAX_IN_FLIGHT` batches are handed over at once: under load the loop can take tens
of milliseconds to get back to the flusher, and the next batch must already be queued
for the engine by then (the embedded engine runs them one after another; a server takes
them in parallel). A batch is released from the buffer's count only once it is durable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from ingest.buffer import Batch, Buffer
from ingest.deadletter import DeadLetter
from ingest.ids import uuid7, uuid_str
from ingest.metrics import Metrics
from ingest.rows import LINE_COLUMNS, TABLE, lines_to_rows, rows_to_lines
from ingest.state import State
from storage.clickhouse import ClickHouse, ClickHouseError, classify

log = structlog.get_logger("sluice.flush")

PARK_RETRY_TRANSIENT = 1.0  # first replay of a parked batch: soon, with backoff after that
MAX_IN_FLIGHT = 4  # batches handed to ClickHouse at once (measured: 1 left the engine idle)

UsageHook = Callable[[str, int], None]


def no_usage(project_id: str, count: int) -> None:
    """The default usage hook: does nothing."""


@dataclass
class _Held:
    """A batch neither store took: kept in memory until one does."""

    batch_id: str
    batch: Batch
    error: str


async def insert_batch(ch: ClickHouse, batch: Batch, token: str) -> None:
    """One INSERT of a batch's row lines with ``token`` as its dedup token."""
    await ch.insert_lines(TABLE, batch.parts, LINE_COLUMNS, token)


async def insert_rows(ch: ClickHouse, rows: list[tuple], token: str) -> None:
    """One INSERT of pipeline rows (the drain's replays) with ``token``: written as row
    lines, so a replay reaches ClickHouse by the flush's own path and a batch replayed
    whole forms the same block as its first flush."""
    await ch.insert_lines(TABLE, [rows_to_lines(rows)], LINE_COLUMNS, token)


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


class Flusher:
    def __init__(
        self,
        buffer: Buffer,
        clickhouse: ClickHouse,
        deadletter: DeadLetter,
        state: State,
        metrics: Metrics,
        *,
        flush_events: int,
        flush_interval: float,
        usage_hook: UsageHook = no_usage,
        on_recovery: Callable[[], None] | None = None,
    ) -> None:
        self.buffer = buffer
        self.clickhouse = clickhouse
        self.deadletter = deadletter
        self.state = state
        self.metrics = metrics
        self.flush_events = flush_events
        self.flush_interval = flush_interval
        self.usage_hook = usage_hook
        self.on_recovery = on_recovery
        self._held: list[_Held] = []
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._in_flight: dict[asyncio.Task[bool], tuple[str, Batch]] = {}
        self._stopping = False
        self._clickhouse_failing = False

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
        """Retry held batches, then hand queued rows over in batches of ``flush_events``."""
        if self._held:
            held, self._held = self._held, []
            for item in held:
                await self._flush(item.batch_id, item.batch, "retry")
            if self._held:  # both stores still failing: do not pile up more attempts
                return
        while self.buffer.queued and not (full_only and self.buffer.queued < self.flush_events):
            await self._slots.acquire()
            batch = self.buffer.take(self.flush_events)
            if batch is None:  # taken by stop() meanwhile
                self._slots.release()
                break
            batch_id = uuid7()
            task = asyncio.create_task(self._flush(batch_id, batch, reason))
            self._in_flight[task] = (batch_id, batch)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[bool]) -> None:
        self._in_flight.pop(task, None)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("flush_task_failed", error=repr(task.exception()))

    async def _flush(
        self, batch_id: str, batch: Batch, reason: str, timeout: float | None = None
    ) -> bool:
        """Make one batch durable. Returns True when it is (in either store)."""
        started = time.perf_counter()
        try:
            if timeout is None:
                await insert_batch(self.clickhouse, batch, batch_id)
            else:
                await asyncio.wait_for(insert_batch(self.clickhouse, batch, batch_id), timeout)
        except (ClickHouseError, TimeoutError, OSError) as exc:
            err = classify(exc) if not isinstance(exc, TimeoutError) else None
            error = str(err) if err else f"ClickHouse insert timed out after {timeout:.1f}s"
            self._clickhouse_failing = True
            return await self._park(batch_id, batch, error, reason, started, err)
        duration = time.perf_counter() - started
        self.buffer.release(batch.count)
        self.state.clickhouse_ok()
        if self.state.fatal:
            self.state.clear_fatal()
        if self._clickhouse_failing:
            self._clickhouse_failing = False
            if self.on_recovery:
                self.on_recovery()
        self.metrics.events_flushed.inc(batch.count)
        self._log(log.info, batch_id, batch.count, duration, reason, "stored")
        if self.usage_hook is not no_usage:
            report_usage(self.usage_hook, batch_usage(batch))
        return True

    async def _park(
        self,
        batch_id: str,
        batch: Batch,
        error: str,
        reason: str,
        started: float,
        err: ClickHouseError | None,
    ) -> bool:
        retry_in = PARK_RETRY_TRANSIENT if err is None or err.transient else 0.0
        try:
            rows = lines_to_rows(batch.data())
            await self.deadletter.park(batch_id, rows, error, retry_in=retry_in)
        except Exception as exc:
            duration = time.perf_counter() - started
            self._held.append(_Held(batch_id, batch, error))
            reason_text = f"ClickHouse: {error[:200]}; dead-letter table: {str(exc)[:200]}"
            self.state.set_fatal(reason_text)
            self._log(log.error, batch_id, batch.count, duration, reason, "held", error=reason_text)
            return False
        duration = time.perf_counter() - started
        self.buffer.release(batch.count)
        self.state.postgres_ok()
        if self.state.fatal:
            self.state.clear_fatal()
        self.state.dlq_rows += 1
        self.state.dlq_events += batch.count
        self.metrics.events_parked.inc(batch.count)
        self._log(log.warning, batch_id, batch.count, duration, reason, "parked", error=error[:500])
        return True

    def _log(
        self,
        emit: Callable[..., None],
        batch_id: str,
        events: int,
        duration: float,
        reason: str,
        outcome: str,
        **extra: str,
    ) -> None:
        """The one log line and histogram sample per flush."""
        self.metrics.flush_seconds.labels(outcome).observe(duration)
        emit(
            "flush",
            batch_id=batch_id,
            events=events,
            duration_ms=round(duration * 1000, 2),
            reason=reason,
            outcome=outcome,
            **extra,
        )

    async def stop(self, grace: float) -> int:
        """Shutdown: flush everything within ``grace`` seconds, park whatever is left.

        Returns the number of events that could be stored nowhere (0 unless both
        stores are down); the caller reports them and exits non-zero.
        """
        self._stopping = True
        self.buffer.wake()
        deadline = time.monotonic() + grace
        pending: list[tuple[str, Batch]] = []
        if self._in_flight:  # batches already handed over finish (or fail and park)
            await asyncio.wait(set(self._in_flight), timeout=grace)
            for task, batch in list(self._in_flight.items()):  # still stuck: park them
                task.cancel()  # same batch id: if the insert lands after all, the
                pending.append(batch)  # replay is deduplicated
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        pending += [(h.batch_id, h.batch) for h in self._held]
        self._held = []
        while (batch := self.buffer.take(self.flush_events)) is not None:
            pending.append((uuid7(), batch))
        lost = 0
        for batch_id, batch in pending:
            remaining = deadline - time.monotonic()
            if remaining > 0.05:
                stored = await self._flush(batch_id, batch, "shutdown", timeout=remaining)
            else:
                stored = await self._park(
                    batch_id,
                    batch,
                    "shutdown grace expired before ClickHouse took the batch",
                    "shutdown",
                    time.perf_counter(),
                    None,
                )
            if not stored:
                lost += batch.count
        self._held = []  # counted in `lost` above
        return lost
