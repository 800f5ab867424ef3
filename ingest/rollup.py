"""The rollup pass: finished days of events folded into per-person counts.

Enters: nothing from a request — a background task (started by :mod:`ingest.app`) that
every ``ROLLUP_INTERVAL`` looks at ``events_raw_v1``. Leaves: rows of
``rollup_daily_v1`` (every dimension of ``/stats/top``, per day and person), the same
summed over persons in ``rollup_values_v1`` (migration 0008: what ``top`` ranks by),
``rollup_hourly_v1`` (all events and per event name, per hour and person), the same with
each hour's persons as one array in ``rollup_hour_sets_v1`` (migration 0010: what hourly
time series read) and one row per folded day in
``rollup_days_v1`` (migration 0005), which :mod:`ingest.queries` reads for the folded days
of a window and the raw events for the rest.

What a fold is: for one project and one UTC day — all of it, or for today the hours
before the pass's cutoff — ``events_raw_v1 FINAL`` (so a client retry stored twice
counts once) grouped by (dimension, value, own-person hash, bot flag) into counts,
written under a new version; the day's row in ``rollup_days_v1`` then names that version
and where the fold ends (``folded_until``, migration 0009), so readers switch at once,
never see half a fold, and read the raw events after its end. Persons are stored as
the hash of the event's own id and resolved through the identity links when read, so a
later identify needs no re-fold.

Which days: the pass's cutoff is the last full hour that ended ``PARTIAL_LAG`` (15 min)
ago. A day with events between the previous cutoff and this one is folded up to the
cutoff — a day that is over, whole; today, its finished hours (so today is folded again
each hour, over the whole day so far: about 12 times the work of folding each day once,
inside the same cost bound below). A day is folded again whenever rows for it before
the cutoff are inserted later (a client's offline queue, a dead-letter replay): the
``inserted_at`` column ClickHouse stamps, with its minmax index, finds them. A partial
fold of a project-day the pass found nothing new for is extended to the cutoff as it
stands (:meth:`Rollup._extend`), so a quiet project's day ends up whole without a
re-fold. A pass records its cutoff in ``rollup_days_v1`` under the nil project, so a
restart resumes there instead of folding everything again. Several
instances may fold the same day: each fold is complete on its own, readers take the
newest version.

Cost bound: a pass that spent T seconds folding is followed by at least 9 T seconds of
rest (``DUTY_FACTOR``), so folds take at most ~10% of the engine's time even when a past
day is written to all the time (a steady stream of late events re-dirties it at every
pass). The price: a late event's day then shows it only after the next fold, up to 9 T
seconds later instead of ``ROLLUP_INTERVAL``.

On failure: a fold that fails (ClickHouse down, a read limit) is logged (bounded
repetition) and retried at the next pass; readers keep the previous version or the raw
events, so stats stay right, only slower. ``folded``, ``failures`` and ``pending`` feed
``/metrics``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog

from ingest.logs import Repeats
from ingest.queries import (
    DAILY,
    DAY_MS,
    FOLDED,
    HOUR_SETS,
    HOURLY,
    IS_BOT,
    PERSON_HASH,
    READ_PRIORITY,
    TABLE,
    TOP_DIMENSIONS,
    VALUES,
    day_ms,
    day_text,
)
from storage.clickhouse import ClickHouse

log = structlog.get_logger("sluice.rollup")

DUTY_FACTOR = 9  # a pass that folded for T seconds is followed by ≥ 9 T seconds of rest
NIL = uuid.UUID(int=0)  # rollup_days_v1's bookkeeping row: how far the passes got
# Each fold reads one project-day with these limits (a fold is a big read; it must not
# hold the embedded engine, which serves inserts too, for long), and like every read it
# yields to the inserts (``priority``, see ingest.queries.READ_PRIORITY).
FOLD_SETTINGS = f"SETTINGS max_threads = 2, max_execution_time = 120, priority = {READ_PRIORITY}"
_DAY_WHERE = (
    "project_id = {project:UUID} AND timestamp >= toDateTime64({day:Date}, 3, 'UTC') "
    "AND timestamp < fromUnixTimestamp64Milli({until:Int64}, 'UTC')"
)
HOUR_MS = 3_600_000
# Today's hours are folded once they ended this long ago: an event that arrives later
# than that (a client's batch, an offline queue) re-folds its day at the next pass.
PARTIAL_LAG_MS = 15 * 60_000


def _pairs() -> str:
    """Every (dimension, value) an event contributes to the daily rollup."""
    dims = ", ".join(f"('{name}', {expr})" for name, expr in TOP_DIMENSIONS.items())
    return f"[('', ''), {dims}]"


class Rollup:
    """Folds finished days; one per process (see the module docstring)."""

    def __init__(self, clickhouse: ClickHouse, interval: float) -> None:
        self._ch = clickhouse
        self.interval = interval
        self._stop = asyncio.Event()
        self._repeats = Repeats(60.0)
        self.folded = 0  # project-days folded by this process
        self.failures = 0
        self.pending = 0  # project-days waiting for a fold
        self.last_pass_seconds = 0.0  # how long it folded
        self._cutoff: int | None = None  # events before this (ms) are folded, per the marker
        self._since: str | None = None  # inserted_at from which rows re-fold their day

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                if self._repeats.allow("rollup_pass_failed"):
                    log.warning("rollup_pass_failed", error=str(exc)[:300])
            # Folding is a big read: keep it under ~10% of the engine's time, whatever the
            # interval (a day written to all the time — a steady stream of late events —
            # would otherwise be folded again at every pass).
            pause = max(self.interval, DUTY_FACTOR * self.last_pass_seconds)
            try:
                await asyncio.wait_for(self._stop.wait(), pause)
            except TimeoutError:
                pass

    async def _marker(self) -> None:
        rows = await self._ch.query_rows(
            f"SELECT toUnixTimestamp64Milli(if(until < toDateTime64(day + 1, 3, 'UTC'), until, "
            "toDateTime64(day, 3, 'UTC'))), toString(folded) FROM (SELECT argMax(day, version) "
            "AS day, argMax(folded_until, version) AS until, argMax(folded_at, version) AS folded "
            f"FROM {FOLDED} WHERE project_id = {{nil:UUID}} HAVING count() > 0)",
            {"nil": str(NIL)},
        )
        if rows:
            self._cutoff, self._since = int(rows[0][0]), str(rows[0][1])

    async def run_pass(self, now_ms: int | None = None) -> int:
        """One pass: find the project-days with events to fold, fold them (oldest first),
        extend the partial folds nothing new arrived for, then record how far it got.
        Returns the number of project-days folded."""
        if self._cutoff is None:
            await self._marker()
        started = time.time()
        now_ms = int(started * 1000) if now_ms is None else now_ms
        # the hours that ended at least PARTIAL_LAG ago: today's too, not only past days
        cutoff = (now_ms - PARTIAL_LAG_MS) // HOUR_MS * HOUR_MS
        started_at = datetime.fromtimestamp(started - 1, UTC).strftime("%Y-%m-%d %H:%M:%S")
        conditions = ["timestamp < fromUnixTimestamp64Milli({cutoff:Int64}, 'UTC')"]
        params: dict[str, Any] = {"cutoff": cutoff}
        if self._cutoff is not None:
            # newly finished hours, and older days with rows inserted since the last pass
            conditions.append(
                "(timestamp >= fromUnixTimestamp64Milli({previous:Int64}, 'UTC') "
                "OR inserted_at >= toDateTime({since:String}, 'UTC'))"
            )
            params.update(previous=self._cutoff, since=self._since)
        days = await self._ch.query_rows(
            f"SELECT toString(project_id), toString(toDate(timestamp)) AS d FROM {TABLE} "
            f"WHERE {' AND '.join(conditions)} GROUP BY project_id, d ORDER BY d, project_id "
            "SETTINGS max_threads = 2",
            params,
        )
        self.pending = len(days)
        folding = time.monotonic()
        for project, day in days:
            if self._stop.is_set():
                return 0  # the marker stays: the next process folds these again
            await self.fold(uuid.UUID(project), day, min(day_ms(day) + DAY_MS, cutoff))
            self.pending -= 1
        self.last_pass_seconds = time.monotonic() - folding
        if self._cutoff is not None:
            await self._extend(cutoff, self._cutoff, days)
        version = time.time_ns() // 1000
        await self._ch.command(
            f"INSERT INTO {FOLDED} (project_id, day, version, events, folded_at, folded_until) "
            f"VALUES ('{NIL}', '{day_text(cutoff)}', {version}, 0, '{started_at}', "
            f"fromUnixTimestamp64Milli({cutoff}, 'UTC'))"
        )
        self._cutoff, self._since = cutoff, started_at
        if days:
            log.info("rollup_pass", days=len(days), seconds=round(time.time() - started, 3))
        return len(days)

    async def _extend(self, cutoff: int, previous: int, folded: list[tuple[str, str]]) -> None:
        """A partial fold (a day folded up to some hour) that ends at or after the previous
        cutoff, of a project-day this pass found no events for, is complete up to
        ``cutoff`` as it stands: no event of that project has a time in [previous,
        cutoff), or this pass would have folded the day (one inserted from now on re-folds
        it at the next pass, by ``inserted_at``). Its row in rollup_days_v1 is written
        again, same version, reaching further. (A fold ending before ``previous`` — another
        server's, with a cutoff behind ours — is left as it is: nothing here says what
        lies between.) Only the last week is looked at: older days are whole."""
        await self._ch.command(
            f"INSERT INTO {FOLDED} (project_id, day, version, events, folded_at, folded_until) "
            "SELECT project_id, day, v, n, now64(3), least(toDateTime64(day + 1, 3, 'UTC'), "
            "fromUnixTimestamp64Milli({cutoff:Int64}, 'UTC')) AS reach FROM (SELECT project_id, "
            "day, max(version) AS v, argMax(events, version) AS n, "
            "argMax(folded_until, (version, folded_until)) AS until "
            f"FROM {FOLDED} WHERE project_id != {{nil:UUID}} AND day >= {{week:Date}} "
            "GROUP BY project_id, day HAVING until < toDateTime64(day + 1, 3, 'UTC')) "
            "WHERE until >= fromUnixTimestamp64Milli({previous:Int64}, 'UTC') AND until < reach "
            "AND (toString(project_id), toString(day)) NOT IN "
            "{folded:Array(Tuple(String, String))}",
            parameters={
                "cutoff": cutoff,
                "previous": previous,
                "nil": str(NIL),
                "folded": folded,
                "week": day_text(cutoff - 7 * DAY_MS),
            },
        )

    async def fold(self, project: uuid.UUID, day: str, until_ms: int | None = None) -> None:
        """Fold one project-day — its events before ``until_ms`` (default: all of it)
        under a new version, then point readers at it."""
        version = time.time_ns() // 1000
        until_ms = day_ms(day) + DAY_MS if until_ms is None else until_ms
        params = {"project": str(project), "day": day, "version": version, "until": until_ms}
        bot = f"toUInt8({IS_BOT})"
        await self._ch.command(
            f"INSERT INTO {DAILY} (project_id, day, dim, value, person, is_bot, version, "
            "events) SELECT {project:UUID}, {day:Date}, pair.1, pair.2, ph, bot, "
            "{version:UInt64}, count() FROM (SELECT "
            f"{PERSON_HASH} AS ph, {bot} AS bot, {_pairs()} AS pairs FROM {TABLE} FINAL "
            f"WHERE {_DAY_WHERE}) ARRAY JOIN pairs AS pair "
            "WHERE pair.1 = '' OR pair.2 != '' GROUP BY pair.1, pair.2, ph, bot " + FOLD_SETTINGS,
            parameters=params,
        )
        await self._ch.command(
            f"INSERT INTO {VALUES} (project_id, day, dim, value, is_bot, version, events) "
            "SELECT project_id, day, dim, value, is_bot, version, sum(events) "
            f"FROM {DAILY} WHERE project_id = {{project:UUID}} AND day = {{day:Date}} "
            "AND version = {version:UInt64} GROUP BY project_id, day, dim, value, is_bot, "
            "version " + FOLD_SETTINGS,
            parameters=params,
        )
        await self._ch.command(
            f"INSERT INTO {HOURLY} (project_id, hour, dim, value, person, is_bot, version, "
            "events) SELECT {project:UUID}, h, pair.1, pair.2, ph, bot, {version:UInt64}, "
            "count() FROM (SELECT toStartOfHour(timestamp) AS h, "
            f"{PERSON_HASH} AS ph, {bot} AS bot, [('', ''), ('event', toString(event))] AS pairs "
            f"FROM {TABLE} FINAL WHERE {_DAY_WHERE}) ARRAY JOIN pairs AS pair "
            "GROUP BY h, pair.1, pair.2, ph, bot " + FOLD_SETTINGS,
            parameters=params,
        )
        await self._ch.command(
            f"INSERT INTO {HOUR_SETS} (project_id, hour, dim, value, is_bot, version, events, "
            "persons) SELECT project_id, hour, dim, value, is_bot, version, sum(events), "
            f"groupArray(person) FROM {HOURLY} WHERE project_id = {{project:UUID}} "
            "AND toDate(hour) = {day:Date} AND version = {version:UInt64} "
            "GROUP BY project_id, hour, dim, value, is_bot, version " + FOLD_SETTINGS,
            parameters=params,
        )
        await self._ch.command(
            f"INSERT INTO {FOLDED} (project_id, day, version, events, folded_at, folded_until) "
            "SELECT {project:UUID}, {day:Date}, {version:UInt64}, sum(events), now64(3), "
            "fromUnixTimestamp64Milli({until:Int64}, 'UTC') "
            f"FROM {DAILY} WHERE project_id = {{project:UUID}} AND day = {{day:Date}} "
            "AND version = {version:UInt64} AND dim = ''",
            parameters=params,
        )
        self.folded += 1
