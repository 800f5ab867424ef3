"""The read side's SQL: every query the read API runs against ``events_raw_v1``.

Enters: a project id (always the one the caller's read key resolved to — never a value
from the request) and already-validated values (:mod:`ingest.read` parses and checks the
request). Leaves: plain Python values (ids as text, times as epoch milliseconds,
``properties``/``extras`` as the JSON text stored). On failure: the store's
:class:`storage.clickhouse.ClickHouseError` propagates; :func:`limit_hit` says whether it
was one of the read limits below cutting the query off.

Rules every query here follows:

* **One project.** ``project_id = {project:UUID}`` is the first condition of every
  query, and the value is bound by the caller from the key. Column names, expressions
  and the ``SETTINGS`` clause are constants of this module; every value from a request
  is bound as a ClickHouse server-side parameter (``{name:Type}``), never formatted into
  the SQL, so no filter, cursor or crafted value can reach another project's rows.
* **Bounded in time.** Every query has ``timestamp >= since AND timestamp < until``.
* **Bounded in cost.** Every query ends with :func:`settings_clause`:
  ``max_execution_time``, ``max_memory_usage`` (``QUERY_MAX_EXECUTION_TIME``,
  ``QUERY_MAX_MEMORY_BYTES``), ``max_threads``, ``max_result_rows`` with
  ``result_overflow_mode = 'throw'``. The embedded engine serves one call at a time,
  ingest inserts included: a read may delay a flush by at most its time limit.
* **Client retries counted once.** A client retry is a second row with the same sort
  key; ``FINAL`` collapses it at read time (ReplacingMergeTree keeps the last copy).
  ``active_users`` counts distinct persons, which copies cannot change, and skips FINAL.

**Persons (identity stitching).** An event's own person is ``ifNull(user_id,
anonymous_id)``; ``person_links_v1`` (migration 0004, filled at insert by a materialized
view) says which user id an anonymous id or alias belongs to: its earliest link, followed
one more hop (an anonymous id linked to an id that was later aliased to another user).
Every query that counts or lists persons joins the project's links (a small table: one row
per link) and counts the resolved person, so a visitor who logs in is one person, for the
events before the identify too. Persons are counted as 64-bit hashes of their id
(``cityHash64``): ``uniqExact`` on strings itself compares 128-bit hashes; with 64 bits the
chance that any two of a million persons collide is about 3·10⁻⁸. Events with neither id
have no person and are counted as events only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from storage.clickhouse import ClickHouse, ClickHouseError

TABLE = "events_raw_v1"
MAX_THREADS = 2  # a read takes at most this many of the engine's threads
MAX_RESULT_ROWS = 10_000  # no endpoint returns more (events ≤ 1,000; buckets ≤ 1,000)
# Reads (and rollup folds) yield to inserts: ClickHouse pauses them while an insert of
# storage.clickhouse.INSERT_PRIORITY runs. Under a saturating ingest load a read can then
# run into its max_execution_time (a 503 that says so); the events are never held up.
READ_PRIORITY = 5
# ClickHouse error codes meaning "a limit of this query stopped it".
LIMIT_CODES = {
    158: "max_result_rows",  # TOO_MANY_ROWS
    159: "max_execution_time",  # TIMEOUT_EXCEEDED
    160: "max_execution_time",  # TOO_SLOW (estimated)
    241: "max_memory_usage",  # MEMORY_LIMIT_EXCEEDED
    307: "max_result_bytes",  # TOO_MANY_BYTES
    396: "max_result_rows",  # TOO_MANY_ROWS_OR_BYTES
}

# The filters of /api/v1/events: request parameter → column (fixed names, never input).
# `person` is not a column: it is resolved through the links first (Reader.identity).
FILTER_COLUMNS = {
    "event": "event",
    "user_id": "user_id",
    "anonymous_id": "anonymous_id",
    "session_id": "session_id",
}
LINKS_TABLE = "person_links_v1"
# An event's own person id (a user id, else its anonymous id) and its 64-bit hash (0: none).
_RAW_PERSON = "ifNull(user_id, anonymous_id)"
PERSON_HASH = (
    "if(isNull(user_id) AND isNull(anonymous_id), 0, cityHash64(ifNull(user_id, anonymous_id)))"
)
# The project's links, resolved: other id (and its hash) → the user id it belongs to (and
# its hash). Earliest link first, then one more hop.
_LINKS = (
    "links1 AS (SELECT other_id, argMin(user_id, first) AS user FROM (SELECT other_id, "
    f"user_id, min(linked_at) AS first FROM {LINKS_TABLE} WHERE project_id = {{project:UUID}} "
    "GROUP BY other_id, user_id) GROUP BY other_id), "
    "links AS (SELECT l1.other_id AS other_id, cityHash64(l1.other_id) AS h, "
    "if(l2.user != '', l2.user, l1.user) AS user, cityHash64(user) AS to "
    "FROM links1 AS l1 LEFT ANY JOIN links1 AS l2 ON l2.other_id = l1.user), "
    # as constant arrays: transform() looks a hash up in a hash table built once per
    # query, ~10x cheaper than a JOIN over millions of rows. One scalar subquery for the
    # three (each of three evaluated the links again: 25 ms against 11 ms on the bench's
    # 10M-event project, every read)
    "(SELECT (groupArray(h), groupArray(to), groupArray(user)) FROM links) AS link_arrays, "
    "link_arrays.1 AS link_from, link_arrays.2 AS link_to, link_arrays.3 AS link_user"
)
# The resolved person of a row ``x`` with ``ph`` and ``who`` (its own person hash and id),
# as a hash (0: no person) and as text.
PERSON = "transform(x.ph, link_from, link_to, x.ph)"
PERSON_NAME = "transform(x.ph, link_from, link_user, ifNull(x.who, ''))"
# An event's bot flag (enrichment column, migration 0003).
IS_BOT = "is_bot"
PAGE_EVENTS = ("$pageview", "$screen", "page_view", "pageview", "page")

# /api/v1/stats/top?by=…: the dimension → its column (the enrichment columns of migration
# 0003: page values computed by ClickHouse at insert, user-agent values by Sluice; see
# the README's *Enrichment*). An empty value is "not set" and is left out of the ranking.
TOP_DIMENSIONS = {
    name: f"toString({name})"
    for name in (
        "event",
        "path",
        "referrer_domain",
        "utm_source",
        "utm_medium",
        "utm_campaign",
        "browser",
        "os",
        "device_type",
    )
}


@dataclass(frozen=True)
class ReadLimits:
    """The ClickHouse limits every read query runs under."""

    max_execution_time: float
    max_memory_usage: int
    max_threads: int = MAX_THREADS
    max_result_rows: int = MAX_RESULT_ROWS


def settings_clause(limits: ReadLimits) -> str:
    """The ``SETTINGS`` clause of every read query (numbers of ours, never input)."""
    return (
        f"SETTINGS max_execution_time = {max(1, round(limits.max_execution_time))}, "
        f"max_memory_usage = {int(limits.max_memory_usage)}, "
        f"max_threads = {int(limits.max_threads)}, "
        f"max_result_rows = {int(limits.max_result_rows)}, "
        "result_overflow_mode = 'throw', timeout_overflow_mode = 'throw', "
        f"priority = {READ_PRIORITY}"
    )


def limit_hit(exc: ClickHouseError) -> str | None:
    """The name of the read limit that stopped the query, or ``None``."""
    return LIMIT_CODES.get(exc.code) if exc.code is not None else None


@dataclass(frozen=True)
class Window:
    """``since <= timestamp < until``, epoch milliseconds."""

    since_ms: int
    until_ms: int


_WHERE = (
    "project_id = {project:UUID} "
    "AND timestamp >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC') "
    "AND timestamp < fromUnixTimestamp64Milli({until_ms:Int64}, 'UTC')"
)


def _base(project: uuid.UUID, window: Window) -> dict[str, Any]:
    return {"project": str(project), "since_ms": window.since_ms, "until_ms": window.until_ms}


def _with_persons(columns: str, where: str, final: bool = True) -> str:
    """``FROM`` clause: the project's events matching ``where`` (``columns`` plus ``ph``,
    the event's own person hash, and ``who``, its id), as ``x``: read :data:`PERSON` /
    :data:`PERSON_NAME` from it. The query must start ``WITH {_LINKS}``."""
    return (
        f"(SELECT {columns}, {PERSON_HASH} AS ph, {_RAW_PERSON} AS who FROM {TABLE}"
        f"{' FINAL' if final else ''} WHERE {where}) AS x"
    )


def _bots(include_bots: bool) -> str:
    return "" if include_bots else f" AND {IS_BOT} = 0"


DAILY, HOURLY, FOLDED = "rollup_daily_v1", "rollup_hourly_v1", "rollup_days_v1"
VALUES = "rollup_values_v1"  # DAILY summed over persons (0008): no person, read FINAL
HOUR_SETS = "rollup_hour_sets_v1"  # HOURLY with each hour's persons as one array (0010)
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Rolled:
    """The days of ``window`` served from the rollups — folded, the part of each day its
    fold covers (``[day, end)``: the whole day, or its first hours for today) wholly
    inside the window; the raw events serve the rest (:meth:`gaps`)."""

    window: Window
    days: tuple[str, ...] = ()  # 'YYYY-MM-DD', ascending
    versions: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()  # where each day's fold ends (ms, exclusive)

    def spans(self) -> list[tuple[int, int]]:
        """What each rolled day covers, as ``[start, end)`` ms ranges."""
        return [(day_ms(d), end) for d, end in zip(self.days, self.ends, strict=True)]

    @classmethod
    def of(cls, window: Window, days: list[tuple[str, int, int]]) -> Rolled:
        """From ``(day, version, end)`` triples, ascending by day."""
        return cls(
            window,
            tuple(d for d, _, _ in days),
            tuple(v for _, v, _ in days),
            tuple(e for _, _, e in days),
        )

    def only(self, keep: list[bool]) -> Rolled:
        """The same, with only the days ``keep`` marks."""
        days = zip(self.days, self.versions, self.ends, strict=True)
        return Rolled.of(self.window, [day for day, k in zip(days, keep, strict=True) if k])

    def gaps(self) -> list[tuple[int, int]]:
        """The parts of the window not rolled up, as ``[since, until)`` ms ranges."""
        out, start = [], self.window.since_ms
        for first, end in self.spans():
            if first > start:
                out.append((start, first))
            start = end
        if start < self.window.until_ms:
            out.append((start, self.window.until_ms))
        return out

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rdays": list(self.days), "rver": list(self.versions)}
        if self.days:
            out["rd0"], out["rd1"] = self.days[0], self.days[-1]
        for i, (since, until) in enumerate(self.gaps()):
            out[f"ra{i}"], out[f"rb{i}"] = since, until
        return out


def day_ms(day: str) -> int:
    """A UTC day, ``YYYY-MM-DD`` → its first millisecond since the epoch."""
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)


def day_text(ms: int) -> str:
    """Epoch milliseconds → its UTC day, ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def _mixed(
    rolled: Rolled,
    table: str,
    dim: str,
    rollup_value: str,
    rollup_bucket: str,
    raw_value: str,
    raw_bucket: str,
    raw_where: str,
    include_bots: bool,
    value_in: str | None = None,
) -> str:
    """``FROM`` clause: rows ``x`` = ``(t, value, ph, n)`` — a bucket, a value, an
    own-person hash and a count of distinct events — from the rollup ``table`` (dimension
    ``dim``) for the rolled days and from the raw events (FINAL) for the gaps between
    them, each range named in the SQL so the ``timestamp`` index skips the rest. Read
    :data:`PERSON` from it; the query must start ``WITH {_LINKS}`` and bind
    :meth:`Rolled.params` and the window. From :data:`VALUES` (no persons) ``ph`` is 0
    and :data:`PERSON` must not be read. ``dim`` and the expressions are constants of
    this module, never input; ``value_in`` (a bound array parameter, ``{name:Array(String)}``)
    keeps only the values it holds."""
    day = "toDate(hour)" if table == HOURLY else "day"
    parts = []
    rollup_only = raw_only = ""
    if value_in is not None:
        rollup_only = f" AND {rollup_value} IN {value_in}"
        raw_only = f" AND {raw_value} IN {value_in}"
    if rolled.days:
        bots = "" if include_bots else " AND is_bot = 0"
        source, person, events = f"{table}", "person", "events"
        if table == VALUES:
            source, person = f"{VALUES} FINAL", "toUInt64(0)"
        elif table == HOURLY:
            # the same rows as HOURLY's, from one array per hour: the version is checked
            # once per hour instead of once per person (0010); events counted once per hour
            source = f"{HOUR_SETS} ARRAY JOIN persons AS ph1, arrayEnumerate(persons) AS i"
            person, events = "ph1", "if(i = 1, events, 0)"
        parts.append(
            f"SELECT {rollup_bucket} AS t, {rollup_value} AS value, {person} AS ph, "
            f"{events} AS n FROM {source} WHERE project_id = {{project:UUID}} "
            f"AND dim = '{dim}' "
            f"AND {day} >= {{rd0:Date}} AND {day} <= {{rd1:Date}} "
            # the day's version by hash lookup (has()+indexOf() per row cost 2-3x)
            f"AND version = transform({day}, {{rdays:Array(Date)}}, {{rver:Array(UInt64)}}, "
            f"toUInt64(0)){bots}{rollup_only}"
        )
    gaps = rolled.gaps()
    if gaps or not parts:
        ranges = " OR ".join(
            f"(timestamp >= fromUnixTimestamp64Milli({{ra{i}:Int64}}, 'UTC') "
            f"AND timestamp < fromUnixTimestamp64Milli({{rb{i}:Int64}}, 'UTC'))"
            for i in range(len(gaps))
        )
        parts.append(
            f"SELECT {raw_bucket} AS t, {raw_value} AS value, {PERSON_HASH} AS ph, "
            f"toUInt64(1) AS n FROM {TABLE} FINAL WHERE {raw_where}{_bots(include_bots)} "
            f"AND ({ranges or '0'}){raw_only}"
        )
    return f"({' UNION ALL '.join(parts)}) AS x"


@dataclass(frozen=True)
class EventsQuery:
    window: Window
    limit: int
    filters: dict[str, str]  # keys from FILTER_COLUMNS
    after: tuple[int, str] | None = None  # the cursor: (timestamp ms, event id) of the last
    received_after_ms: int | None = None  # only events received after this (`events tail`)
    persons: tuple[str, ...] | None = None  # only events of these own person ids


@dataclass(frozen=True)
class Identity:
    """A person: the id everything resolves to, and every id that resolves to it."""

    person: str
    ids: tuple[str, ...]  # person first, then the linked ids (sorted)
    user_id: str | None  # the person's user id, when some id of theirs was identified


MAX_LINKED_IDS = 1_000  # ids of one person considered (a person with more is a bug upstream)


class Reader:
    """The read queries of one ClickHouse, under one set of limits."""

    def __init__(
        self, clickhouse: ClickHouse, limits: ReadLimits, session_gap_ms: int = 30 * 60_000
    ) -> None:
        self._ch = clickhouse
        self._settings = settings_clause(limits)
        self.session_gap_ms = session_gap_ms

    async def identity(self, project: uuid.UUID, person_id: str) -> Identity:
        """Resolve ``person_id`` (a user id, or an anonymous id or alias linked to one)."""
        params = {"project": str(project), "id": person_id, "max": MAX_LINKED_IDS}
        sql = (
            f"WITH {_LINKS} SELECT (SELECT any(user) FROM links WHERE other_id = {{id:String}}) "
            "AS resolved, if(resolved != '', resolved, {id:String}) AS person, "
            "(SELECT arraySort(groupArray({max:UInt32})(other_id)) FROM links "
            "WHERE user = person) AS others, "
            "resolved != '' OR length(others) > 0 " + self._settings
        )
        ((_, person, others, linked),) = await self._ch.query_rows(sql, params)
        ids = (str(person), *(str(o) for o in others if o != person))
        return Identity(str(person), ids, str(person) if linked else None)

    async def events(self, project: uuid.UUID, q: EventsQuery) -> list[tuple]:
        """Newest first: ``(event_id, event, timestamp_ms, received_at_ms, anonymous_id,
        user_id, session_id, properties, extras)``; at most ``q.limit`` rows."""
        params = _base(project, q.window)
        where = [_WHERE]
        for name, value in q.filters.items():
            where.append(f"{FILTER_COLUMNS[name]} = {{f_{name}:String}}")
            params[f"f_{name}"] = value
        if q.persons is not None:
            where.append(f"{_RAW_PERSON} IN {{persons:Array(String)}}")
            params["persons"] = list(q.persons)
        if q.after is not None:
            where.append(
                "(timestamp, event_id) < "
                "(fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC'), {after_id:UUID})"
            )
            params["after_ms"], params["after_id"] = q.after
        if q.received_after_ms is not None:
            where.append("received_at > fromUnixTimestamp64Milli({received_after_ms:Int64}, 'UTC')")
            params["received_after_ms"] = q.received_after_ms
        params["limit"] = q.limit
        sql = (
            "SELECT toString(event_id), toString(event), toUnixTimestamp64Milli(timestamp), "
            "toUnixTimestamp64Milli(received_at), anonymous_id, user_id, session_id, "
            f"properties, extras FROM {TABLE} FINAL WHERE {' AND '.join(where)} "
            "ORDER BY timestamp DESC, event_id DESC LIMIT {limit:UInt32} " + self._settings
        )
        return await self._ch.query_rows(sql, params)

    async def rolled(self, project: uuid.UUID, window: Window) -> Rolled:
        """The folded days whose fold (the whole day, or today's first hours) lies wholly
        inside ``window``, with the version to read."""
        first = -(-window.since_ms // DAY_MS) * DAY_MS
        if first >= window.until_ms:
            return Rolled(window)
        sql = (
            f"SELECT toString(day), max(version), toUnixTimestamp64Milli(argMax(folded_until, "
            f"(version, folded_until))) FROM {FOLDED} WHERE project_id = {{project:UUID}} "
            "AND day >= {d0:Date} AND day <= {d1:Date} GROUP BY day ORDER BY day " + self._settings
        )
        params = {
            "project": str(project),
            "d0": day_text(first),
            "d1": day_text(window.until_ms - 1),
        }
        rows = [
            (str(d), int(v), min(int(end), day_ms(str(d)) + DAY_MS))
            for d, v, end in await self._ch.query_rows(sql, params)
        ]
        rows = [(d, v, end) for d, v, end in rows if day_ms(d) < end <= window.until_ms]
        return Rolled.of(window, rows)

    async def timeseries(
        self,
        project: uuid.UUID,
        window: Window,
        origin_ms: int,
        step_ms: int,
        event: str | None,
        include_bots: bool = False,
    ) -> list[tuple[int, int, int]]:
        """``(bucket start ms, events, users)`` for every bucket of ``step_ms`` (an hour
        or a day) from ``origin_ms`` (≤ ``since``, aligned by the caller) up to ``until``,
        empty ones filled with zeros (``WITH FILL``); only events in the window count.
        Folded days come from the hourly or daily rollup, the rest from the raw events."""
        rolled = await self.rolled(project, window)
        params = {
            **_base(project, window),
            **rolled.params(),
            "origin_ms": origin_ms,
            "step_ms": step_ms,
        }
        where = _WHERE
        dim, value, outer = "", "''", ""
        if event is not None:
            where += " AND event = {event:String}"
            params["event"] = event
            dim, value, outer = "event", "toString(event)", " WHERE x.value = {event:String}"
        table, rollup_t = (
            (HOURLY, "toUnixTimestamp(hour)")
            if step_ms < DAY_MS
            else (DAILY, "toUnixTimestamp(day)")
        )
        raw_t = "toUnixTimestamp64Milli(timestamp)"
        bucket = (
            "toInt64({origin_ms:Int64} + intDiv(%s - {origin_ms:Int64}, {step_ms:Int64}) "
            "* {step_ms:Int64})"
        )
        source = _mixed(
            rolled, table, dim, "value", bucket % f"toInt64({rollup_t}) * 1000",
            value, bucket % raw_t, where, include_bots,
        )  # fmt: skip
        sql = (
            f"WITH {_LINKS} SELECT x.t AS t, toUInt64(sum(x.n)) AS events, "
            f"toUInt64(uniqExactIf({PERSON}, {PERSON} != 0)) AS users "
            f"FROM {source}{outer} GROUP BY t "
            "ORDER BY t WITH FILL FROM {origin_ms:Int64} TO {until_ms:Int64} STEP {step_ms:Int64} "
            + self._settings
        )
        rows = await self._ch.query_rows(sql, params)
        return [(int(t), int(n), int(u)) for t, n, u in rows]

    async def top(
        self,
        project: uuid.UUID,
        window: Window,
        by: str,
        limit: int,
        event: str | None,
        include_bots: bool = False,
    ) -> list[tuple[str, int, int]]:
        """``(value, events, users)``, most events first (ties by value); values that are
        not set (empty) are left out. Folded days come from the rollups (not with an
        ``event`` filter: the rollups do not cross dimensions).

        Two queries: the top values by events — from :data:`VALUES`, a few hundred rows a
        day, no persons — then the users of those values only, from the per-person
        :data:`DAILY` rows: counting distinct persons is the cost, and most values are not
        in the answer. Both read the same folded versions; an event that lands between
        the two can be in one answer's users and not in its events (as between any two
        requests)."""
        params = {**_base(project, window), "limit": limit}
        where = _WHERE
        rolled = Rolled(window)
        if event is not None:
            where += " AND event = {event:String}"
            params["event"] = event
        else:
            rolled = await self.rolled(project, window)
        params.update(rolled.params())
        raw = (TOP_DIMENSIONS[by], "0", where, include_bots)
        ranked = await self._ch.query_rows(
            f"SELECT x.value AS value, toUInt64(sum(x.n)) AS events "
            f"FROM {_mixed(rolled, VALUES, by, 'value', '0', *raw)} "
            "GROUP BY value HAVING value != '' ORDER BY events DESC, value ASC "
            "LIMIT {limit:UInt32} " + self._settings,
            params,
        )
        if not ranked:
            return []
        params["top"] = [str(value) for value, _ in ranked]
        users = await self._ch.query_rows(
            f"WITH {_LINKS} SELECT x.value AS value, "
            f"toUInt64(uniqExactIf({PERSON}, {PERSON} != 0)) AS users "
            f"FROM {_mixed(rolled, DAILY, by, 'value', '0', *raw, value_in='{top:Array(String)}')} "
            "GROUP BY value " + self._settings,
            params,
        )
        persons = {str(value): int(n) for value, n in users}
        return [(str(v), int(n), persons.get(str(v), 0)) for v, n in ranked]

    async def active_users(
        self, project: uuid.UUID, at_ms: int, include_bots: bool = False
    ) -> tuple[int, int, int]:
        """Distinct persons in the 1, 7 and 30 days (of 24 h) before ``at``; folded days
        from the daily rollup."""
        month = Window(at_ms - 30 * DAY_MS, at_ms)
        d1, d7 = at_ms - DAY_MS, at_ms - 7 * DAY_MS
        rolled = await self.rolled(project, month)
        # One scan: a rolled day must lie wholly on one side of each window's start, so
        # the days holding the 1- and 7-day boundaries are read raw.
        rolled = rolled.only(
            [not any(a < edge < b for edge in (d1, d7)) for a, b in rolled.spans()]
        )
        params = {**_base(project, month), **rolled.params(), "d1": d1, "d7": d7}
        source = _mixed(
            rolled, DAILY, "", "''", "toInt64(toUnixTimestamp(day)) * 1000", "''",
            "toUnixTimestamp64Milli(timestamp)", _WHERE, include_bots,
        )  # fmt: skip
        sql = (
            f"WITH {_LINKS} SELECT "
            f"toUInt64(uniqExactIf({PERSON}, {PERSON} != 0 AND x.t >= {{d1:Int64}})), "
            f"toUInt64(uniqExactIf({PERSON}, {PERSON} != 0 AND x.t >= {{d7:Int64}})), "
            f"toUInt64(uniqExactIf({PERSON}, {PERSON} != 0)) FROM {source} " + self._settings
        )
        ((dau, wau, mau),) = await self._ch.query_rows(sql, params)
        return int(dau), int(wau), int(mau)

    def _sessions_sql(self, where: str) -> str:
        """Every session in the window: ``sid, who, first, last, n, pages`` (see
        :meth:`sessions`). Gap sessions: each person's events as one sorted array (8 bytes
        and a flag per event), split where the gap to the previous one exceeds the
        timeout — a window function over every row needed gigabytes for 3 million."""
        pages = ", ".join(f"'{name}'" for name in PAGE_EVENTS)  # constants of this module
        return (
            "SELECT CAST(NULL AS Nullable(String)) AS sid, who, "
            "fromUnixTimestamp64Milli(s[1].1, 'UTC') AS first, "
            "fromUnixTimestamp64Milli(s[-1].1, 'UTC') AS last, toUInt64(length(s)) AS n, "
            "toUInt64(arrayCount(e -> e.2, s)) AS pages FROM ("
            " SELECT any(name) AS who, arraySort(groupArray((ms, page))) AS evs FROM ("
            f"  SELECT {PERSON} AS p, {PERSON_NAME} AS name, x.ms AS ms, x.page AS page FROM "
            + _with_persons(
                f"toUnixTimestamp64Milli(timestamp) AS ms, event IN ({pages}) AS page",
                f"{where} AND session_id IS NULL",
            )
            + f"  WHERE {PERSON} != 0) GROUP BY p)"
            " ARRAY JOIN arraySplit((e, start) -> start, evs, arrayMap((e, i) -> i = 1 OR "
            "  e.1 - evs[greatest(i - 1, 1)].1 > {gap_ms:Int64}, evs, arrayEnumerate(evs))) AS s"
            " UNION ALL"
            # given sessions
            f" SELECT x.sid, nullIf(any({PERSON_NAME}), ''), min(x.ts), max(x.ts), "
            "toUInt64(count()), toUInt64(sum(x.page)) FROM "
            + _with_persons(
                f"session_id AS sid, timestamp AS ts, event IN ({pages}) AS page",
                f"{where} AND session_id IS NOT NULL",
            )
            + " GROUP BY x.sid"
        )

    async def sessions(
        self,
        project: uuid.UUID,
        window: Window,
        persons: tuple[str, ...] | None,
        limit: int,
        include_bots: bool = False,
        after: tuple[int, str] | None = None,
    ) -> list[tuple]:
        """Newest first: ``(session_id or None, person, start ms, end ms, events, key)``;
        ties on the start by ``key`` (``s:`` + the session id, or ``p:`` + the person for
        a gap session: unique per start). ``after`` is a cursor's ``(start ms, key)``.

        An event with a ``session_id`` belongs to that session. Events without one are
        grouped per (resolved) person: a gap of more than the session timeout starts a
        new session. Only events inside the window are seen, so a session crossing
        ``since`` or ``until`` is cut there."""
        params = {**_base(project, window), "gap_ms": self.session_gap_ms, "limit": limit}
        where = _WHERE + _bots(include_bots)
        if persons is not None:
            where += f" AND {_RAW_PERSON} IN {{persons:Array(String)}}"
            params["persons"] = list(persons)
        position = ""
        if after is not None:
            position = (
                " WHERE start_ms < {after_ms:Int64} "
                "OR (start_ms = {after_ms:Int64} AND key > {after_key:String})"
            )
            params["after_ms"], params["after_key"] = after
        sql = (
            f"WITH {_LINKS} SELECT sid, who, toUnixTimestamp64Milli(first) AS start_ms, "
            "toUnixTimestamp64Milli(last), n, if(sid IS NULL, concat('p:', ifNull(who, '')), "
            f"concat('s:', sid)) AS key FROM ({self._sessions_sql(where)}){position} "
            "ORDER BY start_ms DESC, key ASC LIMIT {limit:UInt32} " + self._settings
        )
        rows = await self._ch.query_rows(sql, params)
        return [(sid, who, int(a), int(b), int(n), str(k)) for sid, who, a, b, n, k in rows]

    async def session_stats(
        self, project: uuid.UUID, window: Window, include_bots: bool = False
    ) -> tuple[int, float, float, float]:
        """``(sessions, mean duration s, bounce rate, mean page views per session)``. A
        bounce is a session with one page view, or with one event when it has no page
        view. Zeros when there are no sessions."""
        params = {**_base(project, window), "gap_ms": self.session_gap_ms}
        where = _WHERE + _bots(include_bots)
        sql = (
            f"WITH {_LINKS} SELECT toUInt64(count()), "
            "ifNotFinite(avg(dateDiff('millisecond', first, last)) / 1000, 0), "
            "ifNotFinite(avg(pages = 1 OR (pages = 0 AND n = 1)), 0), "
            f"ifNotFinite(avg(pages), 0) FROM ({self._sessions_sql(where)}) " + self._settings
        )
        ((count, duration, bounce, pages),) = await self._ch.query_rows(sql, params)
        return int(count), float(duration), float(bounce), float(pages)

    async def person(
        self, project: uuid.UUID, window: Window, ids: tuple[str, ...]
    ) -> tuple | None:
        """``(first ms, last ms, events, user_ids, anonymous_ids, [(event, count)], traits)``
        of the events whose own person is one of ``ids`` (a person's resolved ids), or
        ``None`` when there are none. ``traits`` is the JSON text of the latest identify's
        traits (Segment ``traits``, PostHog ``$set``), or ``None``."""
        params = {**_base(project, window), "persons": list(ids)}
        where = f"{_WHERE} AND {_RAW_PERSON} IN {{persons:Array(String)}}"
        traits = (
            "coalesce(nullIf(JSONExtractRaw(extras, 'traits'), ''), "
            "nullIf(JSONExtractRaw(extras, 'context', 'traits'), ''), "
            "nullIf(JSONExtractRaw(properties, '$set'), ''), "
            "nullIf(JSONExtractRaw(extras, '$set'), ''))"
        )
        sql = (
            "SELECT toUnixTimestamp64Milli(min(timestamp)), toUnixTimestamp64Milli("
            "max(timestamp)), toUInt64(count()), arraySort(groupUniqArray(100)(user_id)), "
            "arraySort(groupUniqArray(100)(anonymous_id)), "
            f"argMaxIf({traits}, timestamp, isNotNull({traits})) "
            f"FROM {TABLE} FINAL WHERE {where} " + self._settings
        )
        ((first, last, n, users, anons, latest),) = await self._ch.query_rows(sql, params)
        if not n:
            return None
        sql = (
            f"SELECT toString(event) AS name, toUInt64(count()) AS n FROM {TABLE} FINAL "
            f"WHERE {where} GROUP BY name ORDER BY n DESC, name ASC LIMIT 20 " + self._settings
        )
        top = [(str(e), int(c)) for e, c in await self._ch.query_rows(sql, params)]
        return int(first), int(last), int(n), list(users), list(anons), top, latest
