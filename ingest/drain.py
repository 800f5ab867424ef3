"""Stage 5 — drain: replay ``failed_events`` into ClickHouse, or quarantine what never fits.

Enters: due rows of ``failed_events`` (``next_attempt_at <= now``, not quarantined),
oldest due first, at most ``INGEST_DLQ_DRAIN_BATCH_LIMIT`` per pass, locked with
``FOR UPDATE SKIP LOCKED`` inside the pass's transaction: several Sluice instances
sharing one Postgres never replay the same row at once (the row lock is the lease).
Leaves: the row's events in ``events_raw_v1`` with their original ``event_id`` and
``received_at``, inserted with the row id as the deduplication token (a replay after a
lost acknowledgement is a no-op); then the row is deleted, the usage hook runs for its
events, and fatal clears.

On failure:

* transient (refused, reset, timeout, 5xx, too many parts, unknown error): bump
  ``attempt_count``, keep ``last_error``, and schedule ``next_attempt_at`` with
  exponential backoff and jitter capped at :data:`BACKOFF_CAP`. Transient errors retry
  forever — a day-long ClickHouse outage must not burn a retry budget — and when
  ClickHouse comes back (a flush succeeds again) or Sluice restarts, every row is made
  due at once instead of waiting out its backoff.
* permanent (ClickHouse rejects the rows themselves): bisect. Halves are inserted with
  tokens derived from the row id and their position, so a repeated bisection of the
  same row is deduplicated too; the good events land, and only events that fail on
  their own stay in the row, which is quarantined with the reason.

The depth gauge (active rows, their events) is refreshed after every pass. While the
in-memory buffer is more than half full the drain stands aside: fresh ingest first.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass

import asyncpg
import structlog

from ingest.buffer import Buffer
from ingest.deadletter import DeadLetter
from ingest.flush import UsageHook, insert_lines, no_usage, report_usage
from ingest.logs import Repeats
from ingest.metrics import Metrics
from ingest.rows import (
    EVENT_ID,
    payload_rows,
    project_counts,
    rows_to_lines,
    stored_counts,
    stored_lines,
    stored_rows,
)
from ingest.state import State
from storage.clickhouse import ClickHouse, ClickHouseError

log = structlog.get_logger("sluice.drain")

CONCURRENT_PASSES = 2  # measured: one loop left both processes idle half the time
BACKOFF_BASE = 1.0  # seconds before the 2nd attempt; doubles per attempt
BACKOFF_CAP = 120.0  # "a few minutes" at most between attempts of one row
IDLE_INTERVAL = 1.0  # how often an idle drain looks for due rows. A pass stops at the
# first transient failure, so a dead ClickHouse sees at most one replay attempt a second.


def backoff(attempts: int) -> float:
    """Seconds until the next attempt after ``attempts`` failures (with ±20% jitter)."""
    base = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempts - 1))
    return base * random.uniform(0.8, 1.2)


@dataclass
class _Outcome:
    counts: dict[str, int]  # landed events per project id (for the usage hook)
    landed: int
    bad: list[tuple[tuple, str]]  # (row, reason) ClickHouse refuses on its own


_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError)


class _Undecodable(Exception):
    """A stored payload that cannot be read: the row is quarantined as it is."""


class _Transient(Exception):
    def __init__(self, error: ClickHouseError, landed: list[tuple]) -> None:
        super().__init__(str(error))
        self.error = error
        self.landed = landed
        self.rows: list[tuple] = []


class Drain:
    def __init__(
        self,
        pool: asyncpg.Pool,
        deadletter: DeadLetter,
        clickhouse: ClickHouse,
        state: State,
        metrics: Metrics,
        buffer: Buffer,
        *,
        batch_limit: int,
        usage_hook: UsageHook = no_usage,
    ) -> None:
        self.pool = pool
        self.deadletter = deadletter
        self.clickhouse = clickhouse
        self.state = state
        self.metrics = metrics
        self.buffer = buffer
        self.batch_limit = batch_limit
        self.usage_hook = usage_hook
        self._wake = asyncio.Event()
        self._repeats = Repeats()  # the same failure, over and over: a line a minute
        self._make_due = True  # at start, every active row is due
        self._stopping = False

    def kick(self) -> None:
        """ClickHouse is back: make every row due and run a pass now."""
        self._make_due = True
        self._wake.set()

    async def run(self) -> None:
        """:data:`CONCURRENT_PASSES` pass loops: while one waits on Postgres (claiming
        rows, committing), the other's inserts keep ClickHouse busy. They never share a
        row (SKIP LOCKED), exactly as two instances would not."""
        await asyncio.gather(*(self._loop() for _ in range(CONCURRENT_PASSES)))

    async def _loop(self) -> None:
        while not self._stopping:
            pause = IDLE_INTERVAL
            try:
                if self.buffer.pending * 2 > self.buffer.capacity:
                    pause = 0.05  # fresh ingest first
                else:
                    if self._make_due:
                        self._make_due = False
                        await self.deadletter.make_all_due()
                    handled, transient = await self.pass_once()
                    if handled and not transient:
                        pause = 0  # more may be due: go again at once
                await self.refresh_depth()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if (repeats := self._repeats.due("postgres")) is not None:
                    log.warning("drain_postgres_error", error=str(exc)[:300], repeats=repeats)
                pause = 2.0
            except Exception:
                log.exception("drain_error")
                pause = 2.0
            if pause and not self._stopping:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), pause)
                except TimeoutError:
                    pass

    async def refresh_depth(self) -> None:
        self.state.dlq_rows, self.state.dlq_events = await self.deadletter.depth()
        self.state.postgres_ok()

    async def pass_once(self) -> tuple[int, bool]:
        """One pass. Returns (rows handled, whether a transient error hit any of them).

        Every claimed row's replay starts at once: its ClickHouse inserts queue up (the
        embedded engine runs them in order, a server in parallel) while the next row is
        being decoded. The Postgres updates then run one by one on the pass's
        connection, inside its transaction."""
        started = time.perf_counter()
        replayed = quarantined = 0
        transient = False
        async with self.pool.acquire() as conn, conn.transaction():
            records = await self.deadletter.claim_due(conn, self.batch_limit)
            attempts = [asyncio.create_task(self._attempt(r)) for r in records]
            try:
                for record, attempt in zip(records, attempts, strict=True):
                    outcome = await self._settle(conn, record, attempt)
                    if outcome is None:
                        transient = True
                    else:
                        replayed += outcome[0]
                        quarantined += outcome[1]
            finally:  # Postgres failed mid-pass: the rows stay; their replays are deduped
                for attempt in attempts:
                    attempt.cancel()
                await asyncio.gather(*attempts, return_exceptions=True)
        if records:
            self._log_pass(started, len(records), replayed, quarantined)
        return len(records), transient

    def _log_pass(self, started: float, rows: int, replayed: int, quarantined: int) -> None:
        log.info(
            "drain_pass",
            rows=rows,
            events_replayed=replayed,
            events_quarantined=quarantined,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _attempt(self, record: asyncpg.Record) -> _Outcome:
        """Insert one row's events. Raises :class:`_Transient`, or :class:`_Undecodable`
        when the stored payload cannot be read.

        The whole row first, as row lines with the row id as the token (the flush's
        path: a batch parked whole forms the same block as its first flush, so a batch
        that had landed after all is deduplicated); only if ClickHouse refuses the data
        is it bisected."""
        token = str(record["id"])
        rows: list[tuple] | None = None
        try:
            stored = payload_rows(record["batch"])
            data = stored_lines(stored)  # straight from the payload: ids as Sluice writes them
            if data is None:  # ids in another form: pipeline rows write them canonical
                rows = stored_rows(stored)
                data = rows_to_lines(rows)
        except _DECODE_ERRORS as exc:
            raise _Undecodable(f"dead-letter payload cannot be decoded: {exc}"[:500]) from exc
        refused = await self._insert(data, token)
        if refused is None:
            counts = stored_counts(stored) if rows is None else project_counts(rows)
            return _Outcome(counts, len(stored), [])
        if rows is None:
            rows = stored_rows(stored)  # its ids are canonical: this cannot fail
        try:
            landed, bad = await self._bisect(rows, token, refused)
        except _Transient as exc:
            exc.rows = rows  # what is left of the row is rows minus exc.landed
            raise
        return _Outcome(project_counts(landed), len(landed), bad)

    async def _settle(
        self, conn: asyncpg.Connection, record: asyncpg.Record, attempt: asyncio.Task
    ) -> tuple[int, int] | None:
        """Record one row's outcome. Returns (landed, quarantined) events, or None on a
        transient error (the row is rescheduled with backoff)."""
        row_id: uuid.UUID = record["id"]
        try:
            outcome: _Outcome = await attempt
        except _Undecodable as exc:
            await self.deadletter.quarantine_as_is(conn, row_id, str(exc))
            self.metrics.events_quarantined.inc(record["event_count"])
            log.error("drain_quarantined", row_id=str(row_id), events=record["event_count"],
                      reason=str(exc)[:300])  # fmt: skip
            return 0, record["event_count"]
        except _Transient as exc:
            remaining = record["event_count"]
            if exc.landed:  # part of a bisection landed: keep only the rest in the row
                landed_ids = {id(r) for r in exc.landed}
                rest = [r for r in exc.rows if id(r) not in landed_ids]
                await self.deadletter.replace_rows(conn, row_id, rest, str(exc.error))
                self._landed(project_counts(exc.landed), len(exc.landed))
                remaining = len(rest)
            await self.deadletter.record_failure(
                conn, row_id, str(exc.error), backoff(record["attempt_count"] + 1)
            )
            if (repeats := self._repeats.due("retry")) is not None:
                log.warning(
                    "drain_retry_later",
                    row_id=str(row_id),
                    events=remaining,
                    attempts=record["attempt_count"] + 1,
                    error=str(exc.error)[:300],
                    repeats=repeats,
                )
            return None
        bad = outcome.bad
        if bad:
            bad_rows = [r for r, _ in bad]
            reason = bad[0][1]
            await self.deadletter.quarantine(conn, row_id, bad_rows, reason)
            self.metrics.events_quarantined.inc(len(bad_rows))
            log.error(
                "drain_quarantined",
                row_id=str(row_id),
                events=len(bad_rows),
                landed=outcome.landed,
                reason=reason[:300],
            )
        else:
            await self.deadletter.delete(conn, row_id)
        self._landed(outcome.counts, outcome.landed)
        return outcome.landed, len(bad)

    def _landed(self, counts: dict[str, int], n: int) -> None:
        if not n:
            return
        self.state.clickhouse_ok()
        if self.state.fatal:
            self.state.clear_fatal()
        self.metrics.events_replayed.inc(n)
        report_usage(self.usage_hook, counts)

    @staticmethod
    def _part_token(row_token: str, part: list[tuple]) -> str:
        """Token of a bisection slice: the row id, the slice's first event id and length.

        The same row bisected again yields the same slices and tokens, so a slice that
        landed before a crash is not inserted twice. After a row is rewritten (landed
        events removed) no new slice can start with an event that already landed, so a
        new slice never reuses the token of a landed one."""
        return f"{row_token}/{part[0][EVENT_ID]:032x}/{len(part)}"

    async def _insert(self, data: bytes, token: str) -> str | None:
        """One INSERT of row lines. Returns ``None`` once stored, or ClickHouse's reason
        when it refuses the data. Raises _Transient."""
        try:
            await insert_lines(self.clickhouse, data, token)
            return None
        except ClickHouseError as err:
            if err.transient:
                raise _Transient(err, []) from err
            return str(err)

    async def _insert_or_bisect(
        self, rows: list[tuple], token: str, row_token: str
    ) -> tuple[list[tuple], list[tuple[tuple, str]]]:
        """Insert ``rows``; on a permanent error split them until the offenders are
        alone. Returns (landed rows, [(bad row, reason)]). Raises _Transient."""
        refused = await self._insert(rows_to_lines(rows), token)
        if refused is None:
            return rows, []
        return await self._bisect(rows, row_token, refused)

    async def _bisect(
        self, rows: list[tuple], row_token: str, refused: str
    ) -> tuple[list[tuple], list[tuple[tuple, str]]]:
        """``rows``, refused as a whole for ``refused``: alone, the row is the offender;
        otherwise the halves are tried."""
        if len(rows) == 1:
            return [], [(rows[0], refused)]
        return await self._split(rows, row_token)

    async def _split(
        self, rows: list[tuple], row_token: str
    ) -> tuple[list[tuple], list[tuple[tuple, str]]]:
        """Bisect ``rows`` (which failed permanently as a whole)."""
        mid = len(rows) // 2
        landed: list[tuple] = []
        bad: list[tuple[tuple, str]] = []
        for part in (rows[:mid], rows[mid:]):
            try:
                token = self._part_token(row_token, part)
                ok, failed = await self._insert_or_bisect(part, token, row_token)
            except _Transient as exc:
                raise _Transient(exc.error, landed + exc.landed) from exc
            landed += ok
            bad += failed
        return landed, bad

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
