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

"Users" are distinct persons, ``coalesce(user_id, anonymous_id)`` — no identity
stitching yet: a visitor who logs in counts twice (their anonymous id and their user id),
and events with neither id are not counted as a user.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from storage.clickhouse import ClickHouse, ClickHouseError

TABLE = "events_raw_v1"
MAX_THREADS = 2  # a read takes at most this many of the engine's threads
MAX_RESULT_ROWS = 10_000  # no endpoint returns more (events ≤ 1,000; buckets ≤ 1,000)
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
FILTER_COLUMNS = {
    "event": "event",
    "user_id": "user_id",
    "anonymous_id": "anonymous_id",
    "session_id": "session_id",
    "person": "coalesce(user_id, anonymous_id)",  # user_id, else anonymous_id
}

_PERSON = "coalesce(user_id, anonymous_id)"
_URL = (
    "coalesce(nullIf(JSONExtractString(properties, '$current_url'), ''), "
    "nullIf(JSONExtractString(properties, 'url'), ''), "
    "nullIf(JSONExtractString(extras, 'context', 'page', 'url'), ''), '')"
)
_REFERRER = (
    "coalesce(nullIf(JSONExtractString(properties, 'referrer'), ''), "
    "nullIf(JSONExtractString(properties, '$referrer'), ''), "
    "nullIf(JSONExtractString(extras, 'context', 'page', 'referrer'), ''), '')"
)


def _utm(name: str) -> str:
    return (
        f"coalesce(nullIf(JSONExtractString(properties, '{name}'), ''), "
        f"nullIf(extractURLParameter({_URL}, '{name}'), ''), '')"
    )


# /api/v1/stats/top?by=…: the dimension → its expression (derived from `properties` at
# query time; a materialized column is later work). An empty value is "not set" and is
# left out of the ranking.
TOP_DIMENSIONS = {
    "event": "toString(event)",
    "path": (
        "coalesce(nullIf(JSONExtractString(properties, 'path'), ''), "
        "nullIf(JSONExtractString(extras, 'context', 'page', 'path'), ''), "
        f"nullIf(path({_URL}), ''), '')"
    ),
    "referrer_domain": f"domainWithoutWWW({_REFERRER})",
    "utm_source": _utm("utm_source"),
    "utm_medium": _utm("utm_medium"),
    "utm_campaign": _utm("utm_campaign"),
}
SESSION_GAP_MS = 30 * 60_000  # events of one person further apart start a new session
# Accepted by the API but not computed yet: they need user-agent parsing.
LATER_DIMENSIONS = ("browser", "os", "device_type")


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
        "result_overflow_mode = 'throw', timeout_overflow_mode = 'throw'"
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


@dataclass(frozen=True)
class EventsQuery:
    window: Window
    limit: int
    filters: dict[str, str]  # keys from FILTER_COLUMNS
    after: tuple[int, str] | None = None  # the cursor: (timestamp ms, event id) of the last
    received_after_ms: int | None = None  # only events received after this (`events tail`)


class Reader:
    """The read queries of one ClickHouse, under one set of limits."""

    def __init__(self, clickhouse: ClickHouse, limits: ReadLimits) -> None:
        self._ch = clickhouse
        self._settings = settings_clause(limits)

    async def events(self, project: uuid.UUID, q: EventsQuery) -> list[tuple]:
        """Newest first: ``(event_id, event, timestamp_ms, received_at_ms, anonymous_id,
        user_id, session_id, properties, extras)``; at most ``q.limit`` rows."""
        params = _base(project, q.window)
        where = [_WHERE]
        for name, value in q.filters.items():
            where.append(f"{FILTER_COLUMNS[name]} = {{f_{name}:String}}")
            params[f"f_{name}"] = value
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

    async def timeseries(
        self, project: uuid.UUID, window: Window, origin_ms: int, step_ms: int, event: str | None
    ) -> list[tuple[int, int, int]]:
        """``(bucket start ms, events, users)`` for every bucket of ``step_ms`` from
        ``origin_ms`` (≤ ``since``, aligned by the caller) up to ``until``, empty ones
        filled with zeros (``WITH FILL``); only events in the window are counted."""
        params = {**_base(project, window), "origin_ms": origin_ms, "step_ms": step_ms}
        where = _WHERE
        if event is not None:
            where += " AND event = {event:String}"
            params["event"] = event
        sql = (
            "SELECT toInt64({origin_ms:Int64} + intDiv(toUnixTimestamp64Milli(timestamp) - "
            "{origin_ms:Int64}, {step_ms:Int64}) * {step_ms:Int64}) AS t, "
            f"toUInt64(count()) AS events, toUInt64(uniqExact({_PERSON})) AS users "
            f"FROM {TABLE} FINAL WHERE {where} GROUP BY t "
            "ORDER BY t WITH FILL FROM {origin_ms:Int64} TO {until_ms:Int64} STEP {step_ms:Int64} "
            + self._settings
        )
        rows = await self._ch.query_rows(sql, params)
        return [(int(t), int(n), int(u)) for t, n, u in rows]

    async def top(
        self, project: uuid.UUID, window: Window, by: str, limit: int, event: str | None
    ) -> list[tuple[str, int, int]]:
        """``(value, events, users)``, most events first (ties by value); values that are
        not set (empty) are left out."""
        expression = TOP_DIMENSIONS[by]
        params = {**_base(project, window), "limit": limit}
        where = _WHERE
        if event is not None:
            where += " AND event = {event:String}"
            params["event"] = event
        sql = (
            f"SELECT {expression} AS value, toUInt64(count()) AS events, "
            f"toUInt64(uniqExact({_PERSON})) AS users FROM {TABLE} FINAL WHERE {where} "
            "GROUP BY value HAVING value != '' ORDER BY events DESC, value ASC "
            "LIMIT {limit:UInt32} " + self._settings
        )
        rows = await self._ch.query_rows(sql, params)
        return [(str(v), int(n), int(u)) for v, n, u in rows]

    async def active_users(self, project: uuid.UUID, at_ms: int) -> tuple[int, int, int]:
        """Distinct persons in the 1, 7 and 30 days (of 24 h) before ``at``."""
        day = 86_400_000
        window = Window(at_ms - 30 * day, at_ms)
        params = {**_base(project, window), "d1": at_ms - day, "d7": at_ms - 7 * day}
        sql = (
            "SELECT toUInt64(uniqExactIf(person, "
            "timestamp >= fromUnixTimestamp64Milli({d1:Int64}, 'UTC'))), "
            "toUInt64(uniqExactIf(person, "
            "timestamp >= fromUnixTimestamp64Milli({d7:Int64}, 'UTC'))), "
            f"toUInt64(uniqExact(person)) FROM (SELECT {_PERSON} AS person, timestamp "
            f"FROM {TABLE} WHERE {_WHERE} AND person IS NOT NULL) " + self._settings
        )
        ((dau, wau, mau),) = await self._ch.query_rows(sql, params)
        return int(dau), int(wau), int(mau)

    async def sessions(
        self, project: uuid.UUID, window: Window, person: str | None, limit: int
    ) -> list[tuple]:
        """Newest first: ``(session_id or None, person, start ms, end ms, events)``.

        An event with a ``session_id`` belongs to that session. Events without one are
        grouped per person (``coalesce(user_id, anonymous_id)``): a gap of more than
        :data:`SESSION_GAP_MS` starts a new session. Only events inside the window are
        seen, so a session crossing ``since`` or ``until`` is cut there."""
        params = {**_base(project, window), "gap_ms": SESSION_GAP_MS, "limit": limit}
        where = _WHERE
        if person is not None:
            where += f" AND {_PERSON} = {{person:String}}"
            params["person"] = person
        sql = (
            "SELECT sid, who, toUnixTimestamp64Milli(first), toUnixTimestamp64Milli(last), n "
            "FROM ("
            # gap sessions: number each person's events, +1 after every long gap
            " SELECT CAST(NULL AS Nullable(String)) AS sid, person AS who, min(timestamp) AS "
            " first, max(timestamp) AS last, toUInt64(count()) AS n FROM ("
            "  SELECT person, timestamp, sum(gap) OVER (PARTITION BY person ORDER BY timestamp,"
            "   event_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS k FROM ("
            "   SELECT person, timestamp, event_id, toUInt64(ifNull(dateDiff('millisecond', "
            "    lagInFrame(toNullable(timestamp)) OVER w, timestamp) > {gap_ms:Int64}, 1)) "
            "    AS gap FROM ("
            f"    SELECT {_PERSON} AS person, timestamp, event_id FROM {TABLE} FINAL "
            f"    WHERE {where} AND session_id IS NULL AND person IS NOT NULL)"
            "   WINDOW w AS (PARTITION BY person ORDER BY timestamp, event_id "
            "    ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)))"
            " GROUP BY person, k"
            " UNION ALL"
            # given sessions
            f" SELECT session_id, any({_PERSON}), min(timestamp), max(timestamp), "
            f" toUInt64(count()) FROM {TABLE} FINAL WHERE {where} AND session_id IS NOT NULL"
            " GROUP BY session_id"
            ") ORDER BY first DESC, last DESC, who ASC LIMIT {limit:UInt32} " + self._settings
        )
        rows = await self._ch.query_rows(sql, params)
        return [(sid, who, int(a), int(b), int(n)) for sid, who, a, b, n in rows]

    async def person(self, project: uuid.UUID, window: Window, person: str) -> tuple | None:
        """``(first ms, last ms, events, user_ids, anonymous_ids, [(event, count)])`` of
        the events whose person is ``person``, or ``None`` when there are none. The ids
        seen beside it (an anonymous id on a user's events, …) are what identity
        stitching will join on; nothing is joined yet."""
        params = {**_base(project, window), "person": person}
        where = f"{_WHERE} AND {_PERSON} = {{person:String}}"
        sql = (
            "SELECT toUnixTimestamp64Milli(min(timestamp)), toUnixTimestamp64Milli("
            "max(timestamp)), toUInt64(count()), arraySort(groupUniqArray(100)(user_id)), "
            f"arraySort(groupUniqArray(100)(anonymous_id)) FROM {TABLE} FINAL WHERE {where} "
            + self._settings
        )
        ((first, last, n, users, anons),) = await self._ch.query_rows(sql, params)
        if not n:
            return None
        sql = (
            f"SELECT toString(event) AS name, toUInt64(count()) AS n FROM {TABLE} FINAL "
            f"WHERE {where} GROUP BY name ORDER BY n DESC, name ASC LIMIT 20 " + self._settings
        )
        top = [(str(e), int(c)) for e, c in await self._ch.query_rows(sql, params)]
        return int(first), int(last), int(n), list(users), list(anons), top
