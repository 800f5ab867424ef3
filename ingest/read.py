"""The read API: ``GET /api/v1/events``, ``/api/v1/stats/{timeseries,top,active-users}``,
``/api/v1/sessions``, ``/api/v1/persons/{id}`` and ``/api/v1/project`` (the key's project).

Enters: a GET with ``Authorization: Bearer sluice_sk_…`` (a secret read key,
:mod:`auth.keys`) and query parameters. Leaves: JSON (shapes in the README's *Reading
events* section). Each handler does, in order:

1. **key** → the project. No key, a malformed, unknown or revoked key, a deleted
   project: 401. A publishable token (``sluice_pub_…``): 401 saying it cannot read.
   Postgres failing with nothing cached: 500 (the key may be fine), never 401.
2. **parameters** → typed values; anything wrong (unknown, repeated, bad date, limit out
   of range, undecodable cursor, …): 400 ``{"error": …, "parameter": name}``.
3. **query** (:mod:`ingest.queries`) for the key's project only — the project is never a
   parameter, and a cursor only carries a position (a time and an event id), so a
   cursor made from another project's events selects this project's events before that
   position. A person with no events in the window: 404. A query stopped by a read
   limit: 503 ``{"error", "limit"}``; ClickHouse unreachable: 503 with ``Retry-After``;
   anything else: 500. Every answer is JSON with a reason, never a traceback.

Dependencies point one way: ``ingest/http.py`` calls :func:`add_read_routes` from
``build_app``; this module uses :mod:`ingest.queries` (SQL) and :mod:`auth.keys`;
``ingest.queries`` uses ``storage/``. The key cache and the :class:`~ingest.queries.Reader`
are built on the first read request from the ``Service`` (pool, ClickHouse, config).

Not CORS-enabled on purpose: a secret key does not belong in a browser.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import structlog
from aiohttp import web

from auth import keys, tokens
from ingest.queries import (
    FILTER_COLUMNS,
    TOP_DIMENSIONS,
    EventsQuery,
    Reader,
    ReadLimits,
    Window,
    limit_hit,
)
from storage.clickhouse import ClickHouseError

log = structlog.get_logger("sluice.read")

EVENTS_PATH = "/api/v1/events"
TIMESERIES_PATH = "/api/v1/stats/timeseries"
TOP_PATH = "/api/v1/stats/top"
ACTIVE_USERS_PATH = "/api/v1/stats/active-users"
SESSIONS_PATH = "/api/v1/sessions"
SESSION_STATS_PATH = "/api/v1/stats/sessions"
PERSON_PATH = "/api/v1/persons/{person_id:.+}"  # an id may hold a (%2F-encoded) slash
PROJECT_PATH = "/api/v1/project"  # the key's project: what the dashboard's header shows

DEFAULT_WINDOW = timedelta(days=7)
DEFAULT_LIMIT, MAX_LIMIT = 100, 1_000
DEFAULT_TOP_LIMIT, MAX_TOP_LIMIT = 10, 100
MAX_BUCKETS = 1_000  # timeseries points per answer (42 days of hours, ~2.7 years of days)
MAX_FILTER_CHARS = 200  # ids and names are at most 200 characters when ingested
INTERVALS = {"hour": 3_600_000, "day": 86_400_000}
# Timestamps ClickHouse's DateTime64 holds, as ingest accepts them (ms since the epoch).
MIN_MS = int(datetime(1900, 1, 1, tzinfo=UTC).timestamp() * 1000)
MAX_MS = int(datetime(2300, 1, 1, tzinfo=UTC).timestamp() * 1000)
CURSOR_VERSION = "1"
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="sluice"'}
_encode = msgspec.json.Encoder().encode


class BadParameter(ValueError):
    """A query parameter is wrong; ``parameter`` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=_encode(body),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    if status == 401:
        headers = _UNAUTHORIZED_HEADERS
    return _json(status, {"error": message, **extra}, headers)


# --- parameters ---------------------------------------------------------------------


class Params:
    """The query string of one request: each parameter at most once, none unknown."""

    def __init__(self, query: Mapping[str, str], allowed: frozenset[str]) -> None:
        self.values: dict[str, str] = {}
        for name, value in query.items():  # every pair: a repeated name comes twice
            if name not in allowed:
                known = ", ".join(sorted(allowed))
                raise BadParameter(name, f"unknown parameter {name!r} (known: {known})")
            if name in self.values:
                raise BadParameter(name, f"parameter {name!r} given more than once")
            self.values[name] = value

    def text(self, name: str) -> str | None:
        value = self.values.get(name)
        if value is None:
            return None
        if value == "":
            raise BadParameter(name, f"{name} must not be empty")
        if len(value) > MAX_FILTER_CHARS:
            raise BadParameter(name, f"{name} longer than {MAX_FILTER_CHARS} characters")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.values.get(name)
        if raw is None:
            return default
        value = int(raw) if raw.isascii() and raw.isdigit() else None
        if value is None or not low <= value <= high:
            raise BadParameter(name, f"{name} must be an integer from {low} to {high}")
        return value

    def time(self, name: str) -> int | None:
        """An ISO 8601 time (no zone = UTC) as epoch milliseconds."""
        raw = self.values.get(name)
        if raw is None:
            return None
        try:
            parsed = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise BadParameter(
                name, f"{name} must be an ISO 8601 time, like 2026-11-01T00:00:00Z"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ms = (parsed - _EPOCH) // timedelta(milliseconds=1)
        if not MIN_MS <= ms < MAX_MS:
            raise BadParameter(name, f"{name} must be from 1900-01-01 to before 2300-01-01")
        return ms

    def window(self, now_ms: int) -> Window:
        """``since``/``until``; by default the last 7 days."""
        until = self.time("until")
        until = now_ms if until is None else until
        since = self.time("since")
        since = until - DEFAULT_WINDOW // timedelta(milliseconds=1) if since is None else since
        if since >= until:
            raise BadParameter("since", "since must be before until")
        return Window(max(since, MIN_MS), until)

    def choice(self, name: str, options: tuple[str, ...], default: str | None) -> str:
        value = self.values.get(name, default)
        if value is None:
            raise BadParameter(name, f"{name} is required: one of {', '.join(options)}")
        if value not in options:
            raise BadParameter(name, f"{name} must be one of {', '.join(options)}")
        return value

    def flag(self, name: str) -> bool:
        """``true``/``false`` (also ``1``/``0``); absent is false."""
        value = self.values.get(name)
        if value is None:
            return False
        if value.lower() in ("true", "1"):
            return True
        if value.lower() in ("false", "0"):
            return False
        raise BadParameter(name, f"{name} must be true or false")


SESSION_CURSOR_VERSION = "S1"
_BAD_CURSOR = "cursor is not one this server gave out (pass next_cursor as it is)"


def _encode_position(version: str, ms: int, rest: str) -> str:
    return base64.urlsafe_b64encode(f"{version}:{ms}:{rest}".encode()).decode().rstrip("=")


def _decode_position(text: str, version: str) -> tuple[int, str]:
    """A cursor of ``version`` → ``(ms, the rest)``; :class:`BadParameter` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        found, ms, rest = raw.split(":", 2)
        position = int(ms)
        if found != version or not MIN_MS <= position < MAX_MS or str(position) != ms:
            raise ValueError(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadParameter("cursor", _BAD_CURSOR) from None
    return position, rest


def encode_cursor(timestamp_ms: int, event_id: str) -> str:
    """Opaque to clients: a position in "newest first" order, nothing else."""
    return _encode_position(CURSOR_VERSION, timestamp_ms, uuid.UUID(event_id).hex)


def decode_cursor(text: str) -> tuple[int, str]:
    """``(timestamp ms, event id)``; :class:`BadParameter` for anything else."""
    position, hex_id = _decode_position(text, CURSOR_VERSION)
    if not _HEX32.match(hex_id):
        raise BadParameter("cursor", _BAD_CURSOR)
    return position, str(uuid.UUID(hex_id))


def encode_session_cursor(start_ms: int, key: str) -> str:
    """Opaque to clients: a position in the sessions' "newest start first" order."""
    return _encode_position(SESSION_CURSOR_VERSION, start_ms, key)


def decode_session_cursor(text: str) -> tuple[int, str]:
    """``(start ms, key)``; :class:`BadParameter` for anything else."""
    position, key = _decode_position(text, SESSION_CURSOR_VERSION)
    if key[:2] not in ("s:", "p:") or len(key) > MAX_FILTER_CHARS + 2:
        raise BadParameter("cursor", _BAD_CURSOR)
    return position, key


# --- formatting ---------------------------------------------------------------------


def iso(ms: int) -> str:
    """Epoch milliseconds → ``2026-11-01T12:00:00.000Z``."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _stored_json(text: str) -> Any:
    """A stored ``properties``/``extras`` text, sent as the object it is (as stored:
    number spelling and key order kept); anything else as a string."""
    return msgspec.Raw(text.encode()) if text[:1] == "{" else text


# --- the read side, built from the Service on first use -------------------------------


class ReadSide:
    """What the handlers share: the service, the read-key cache, the queries."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self._keys: keys.KeyCache | None = None
        self._reader: Reader | None = None
        self.limited = 0  # queries stopped by a read limit
        self.failed = 0  # queries that failed otherwise (ClickHouse down, …)

    def counters(self) -> dict[str, tuple[str, float]]:
        """For ``/metrics`` (``Metrics.add_counters``; each exposed as ``name_total``)."""
        cache = self._keys
        return {
            "sluice_read_key_cache_hits": (
                "Read-key lookups answered from cache",
                cache.hits if cache else 0,
            ),
            "sluice_read_key_cache_misses": (
                "Read-key lookups sent to Postgres",
                cache.misses if cache else 0,
            ),
            "sluice_read_queries_limited": ("Read queries stopped by a read limit", self.limited),
            "sluice_read_queries_failed": ("Read queries that failed otherwise", self.failed),
        }

    @property
    def key_cache(self) -> keys.KeyCache:
        if self._keys is None:
            svc = self.service
            self._keys = keys.KeyCache(svc.pool, svc.config.token_cache_ttl)
        return self._keys

    @property
    def reader(self) -> Reader:
        if self._reader is None:
            config = self.service.config
            limits = ReadLimits(config.query_max_execution_time, config.query_max_memory_bytes)
            gap_ms = round(config.session_timeout * 1000)
            self._reader = Reader(self.service.clickhouse, limits, gap_ms)
        return self._reader

    @property
    def query_timeout(self) -> float:
        """A query's own limit plus slack for the transport (the embedded engine may be
        busy with an insert first)."""
        return self.service.config.query_max_execution_time + 10.0

    async def close(self, _app: web.Application | None = None) -> None:
        if self._keys is not None:
            await self._keys.close()


READ: web.AppKey[ReadSide] = web.AppKey("read", ReadSide)
Handler = Callable[[web.Request, ReadSide, uuid.UUID, Params], Awaitable[web.Response]]


def _read_endpoint(allowed: set[str], handler: Handler) -> Callable[..., Any]:
    """Key → project, parameters, and every failure as a JSON answer."""
    allowed_names = frozenset(allowed)

    async def endpoint(request: web.Request) -> web.Response:
        side = request.app[READ]
        header = request.headers.get("Authorization", "")
        key = header[7:].strip() if header[:7].lower() == "bearer " else None
        if not key:
            return _error(401, "unauthorized: send a read key as Authorization: Bearer sluice_sk_…")
        if tokens.looks_valid(key) or key.startswith(tokens.PREFIX):
            return _error(
                401, "a publishable token cannot read: use a secret read key (sluice_sk_…)"
            )
        try:
            project_id = await side.key_cache.project(key)
        except Exception as exc:
            log.error("read_key_lookup_failed", error=str(exc)[:300])
            return _error(500, "internal server error")
        if project_id is None:
            return _error(401, "unauthorized: unknown or revoked read key")
        request["log"]["project"] = str(project_id)
        try:
            params = Params(request.query, allowed_names)
            return await asyncio.wait_for(
                handler(request, side, project_id, params), side.query_timeout
            )
        except BadParameter as exc:
            return _error(400, str(exc), parameter=exc.parameter)
        except ClickHouseError as exc:
            limit = limit_hit(exc)
            if limit is not None:
                side.limited += 1
                message = (
                    f"the query was stopped at its {limit} limit: "
                    "narrow since/until or add a filter"
                )
                headers = None
                if limit == "max_execution_time":  # reads yield to inserts (READ_PRIORITY)
                    message += (
                        "; reads wait while events are being stored, so on an instance "
                        "busy ingesting, retry later"
                    )
                    headers = {"Retry-After": "5"}
                return _error(503, message, headers, limit=limit)
            side.failed += 1
            log.warning("read_query_failed", error=str(exc)[:300], transient=exc.transient)
            if exc.transient:
                return _json(503, {"error": "ClickHouse unavailable; retry"}, {"Retry-After": "5"})
            return _error(500, "internal server error")
        except TimeoutError:
            side.failed += 1
            return _error(503, "the query took too long: narrow since/until or add a filter")
        except Exception as exc:
            side.failed += 1
            log.exception("read_failed", error=str(exc)[:300])
            return _error(500, "internal server error")

    return endpoint


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- handlers -------------------------------------------------------------------------


def _event_item(r: tuple) -> dict[str, Any]:
    return {
        "event_id": r[0],
        "event": r[1],
        "timestamp": iso(r[2]),
        "received_at": iso(r[3]),
        "anonymous_id": r[4],
        "user_id": r[5],
        "session_id": r[6],
        "properties": _stored_json(r[7]),
        "extras": _stored_json(r[8]),
    }


async def _person_ids(side: ReadSide, project: uuid.UUID, params: Params) -> tuple[str, ...] | None:
    """The ``person`` parameter → every id of that person (identity stitching), or None."""
    person_id = params.text("person")
    if person_id is None:
        return None
    return (await side.reader.identity(project, person_id)).ids


async def events(
    request: web.Request, side: ReadSide, project: uuid.UUID, params: Params
) -> web.Response:
    window = params.window(_now_ms())
    limit = params.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    filters = {name: v for name in FILTER_COLUMNS if (v := params.text(name)) is not None}
    cursor = params.values.get("cursor")
    after = decode_cursor(cursor) if cursor is not None else None
    received_after = params.time("received_after")
    persons = await _person_ids(side, project, params)
    rows = await side.reader.events(
        project, EventsQuery(window, limit, filters, after, received_after, persons)
    )
    items = [_event_item(r) for r in rows]
    last = rows[-1] if len(rows) == limit else None
    next_cursor = encode_cursor(last[2], last[0]) if last is not None else None
    return _json(200, {"events": items, "next_cursor": next_cursor})


async def timeseries(
    request: web.Request, side: ReadSide, project: uuid.UUID, params: Params
) -> web.Response:
    interval = params.choice("interval", tuple(INTERVALS), "day")
    step = INTERVALS[interval]
    window = params.window(_now_ms())
    start = window.since_ms - window.since_ms % step  # buckets start on UTC hours / days
    buckets = -(-(window.until_ms - start) // step)
    if buckets > MAX_BUCKETS:
        raise BadParameter(
            "since",
            f"since..until spans {buckets} {interval}s; at most {MAX_BUCKETS} points "
            "per answer (narrow since/until or use a longer interval)",
        )
    # The first bucket counts only events from `since` on (the window filters).
    rows = await side.reader.timeseries(
        project, window, start, step, params.text("event"), params.flag("include_bots")
    )
    points = [{"t": iso(t), "events": n, "users": u} for t, n, u in rows]
    return _json(200, {"interval": interval, "points": points})


async def top(
    request: web.Request, side: ReadSide, project: uuid.UUID, params: Params
) -> web.Response:
    by = params.choice("by", tuple(TOP_DIMENSIONS), None)
    limit = params.integer("limit", DEFAULT_TOP_LIMIT, 1, MAX_TOP_LIMIT)
    window = params.window(_now_ms())
    rows = await side.reader.top(
        project, window, by, limit, params.text("event"), params.flag("include_bots")
    )
    return _json(
        200, {"by": by, "rows": [{"value": v, "events": n, "users": u} for v, n, u in rows]}
    )


async def active_users(
    request: web.Request, side: ReadSide, project: uuid.UUID, params: Params
) -> web.Response:
    at = params.time("at")
    at = _now_ms() if at is None else at
    dau, wau, mau = await side.reader.active_users(project, at, params.flag("include_bots"))
    return _json(200, {"at": iso(at), "dau": dau, "wau": wau, "mau": mau})


async def sessions(
    request: web.Request, side: ReadSide, project: uuid.UUID, params: Params
) -> web.Response:
    window = params.window(_now_ms())
    limit = params.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    persons = await _person_ids(side, project, params)
    cursor = params.values.get("cursor")
    after = decode_session_cursor(cursor) if cursor is not None else None
    rows = await side.reader.sessions(
        project, window, persons, limit, params.flag("include_bots"), after
    )
    items = [
        {
            "session_id": sid,
            "person": who,
            "start": iso(first),
            "end": iso(last),
            "duration_ms": last - first,
            "events": n,
        }
        for sid, who, first, last, n, _key in rows
    ]
    last_row = rows[-1] if len(rows) == limit else None
    next_cursor = encode_session_cursor(last_row[2], last_row[5]) if last_row is not None else None
    return _json(200, {"sessions": items, "next_cursor": next_cursor})


async def session_stats(
    request: web.Request, side: ReadSide, project: uuid.UUID, params: Params
) -> web.Response:
    window = params.window(_now_ms())
    count, duration, bounce, pages = await side.reader.session_stats(
        project, window, params.flag("include_bots")
    )
    return _json(
        200,
        {
            "sessions": count,
            "avg_duration_s": round(duration, 3),
            "bounce_rate": round(bounce, 4),
            "pages_per_session": round(pages, 3),
        },
    )


RECENT_EVENTS = 20  # events shown on a person


async def person(
    request: web.Request, side: ReadSide, project: uuid.UUID, params: Params
) -> web.Response:
    person_id = request.match_info["person_id"]
    if not person_id or len(person_id) > MAX_FILTER_CHARS:
        raise BadParameter("id", f"the person id must be 1 to {MAX_FILTER_CHARS} characters")
    window = params.window(_now_ms())
    who = await side.reader.identity(project, person_id)
    found = await side.reader.person(project, window, who.ids)
    if found is None:
        return _error(404, "no events of this person between since and until")
    first, last, n, user_ids, anonymous_ids, top_events, traits = found
    recent = await side.reader.events(
        project, EventsQuery(window, RECENT_EVENTS, {}, persons=who.ids)
    )
    return _json(
        200,
        {
            "id": person_id,
            "person": who.person,
            "user_id": who.user_id or (who.person if who.person in user_ids else None),
            "linked_ids": list(who.ids[1:]),
            "traits": _stored_json(traits) if traits is not None else None,
            "first_seen": iso(first),
            "last_seen": iso(last),
            "events": n,
            "user_ids": user_ids,
            "anonymous_ids": anonymous_ids,
            "top_events": [{"event": e, "events": c} for e, c in top_events],
            "recent_events": [_event_item(r) for r in recent],
        },
    )


async def project_info(
    request: web.Request, side: ReadSide, project: uuid.UUID, params: Params
) -> web.Response:
    """``{"project_id", "name"}`` of the key's project (one Postgres row; the key lookup
    just showed it exists and is not deleted)."""
    name = await side.service.pool.fetchval("SELECT name FROM projects WHERE id = $1", project)
    return _json(200, {"project_id": str(project), "name": name})


def add_read_routes(app: web.Application, service: Any) -> None:
    """Register the read API on ``app`` (called once, from ``ingest.http.build_app``)."""
    side = ReadSide(service)
    app[READ] = side
    metrics = getattr(service, "metrics", None)
    if metrics is not None:
        metrics.add_counters(side.counters)
    window = {"since", "until"}
    app.router.add_get(
        EVENTS_PATH,
        _read_endpoint(
            {*window, "limit", "cursor", "received_after", "person", *FILTER_COLUMNS}, events
        ),
    )
    bots = "include_bots"
    app.router.add_get(
        TIMESERIES_PATH, _read_endpoint({*window, "interval", "event", bots}, timeseries)
    )
    app.router.add_get(TOP_PATH, _read_endpoint({*window, "by", "limit", "event", bots}, top))
    app.router.add_get(ACTIVE_USERS_PATH, _read_endpoint({"at", bots}, active_users))
    app.router.add_get(
        SESSIONS_PATH, _read_endpoint({*window, "person", "limit", "cursor", bots}, sessions)
    )
    app.router.add_get(SESSION_STATS_PATH, _read_endpoint({*window, bots}, session_stats))
    app.router.add_get(PERSON_PATH, _read_endpoint(window, person))
    app.router.add_get(PROJECT_PATH, _read_endpoint(set(), project_info))
    app.on_cleanup.append(side.close)
