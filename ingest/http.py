"""The HTTP surface: ``POST /api/v1/ingest/events``, ``/healthz``, ``/readyz``, ``/metrics``.

Enters: requests. Leaves: the response table in the README. The ingest handler does, in
order, cheapest refusal first:

1. kill switch / shutdown (503 disabled) → fatal (503 down);
2. ``Origin`` not in ``ALLOWED_ORIGINS``, when that is set (403): another site must not
   spend a project's quota from its visitors' browsers (non-browser clients send no
   ``Origin`` and are not restricted by it);
3. buffer likely full (503);
4. a token in the ``Authorization`` header is resolved *before the body is read* (401;
   500 if Postgres fails with nothing cached; 503 if the project is paused);
5. read the body, capped at ``INGEST_MAX_BODY_BYTES`` after gzip decompression (413),
   within ``INGEST_READ_TIMEOUT`` (408, connection closed), at most
   ``INGEST_READ_CONCURRENCY`` bodies at once — a body not already received waits for
   a slot (503 when none frees up in time), so a slowloris cannot hold more than that
   many bodies in memory;
6. parse the envelope (400) → the body's token, if the header had none (401/500/503);
7. the project's rate limit, judged on events sent (429, :mod:`ingest.ratelimit`);
8. validate (:mod:`ingest.validate`) → admit into the buffer (503 full) → 202/200.

One middleware adds CORS headers, writes one log line per request (``/healthz``,
``/readyz`` and ``/metrics`` are not logged: probes would drown the log), and turns any
unexpected exception into a JSON 500, logged with its traceback and counted in
``sluice_unhandled_errors_total`` — nothing a client sends should get there, and nothing
that gets there leaves as a text page.

``/healthz`` gives ``fatal_reason`` (raw store error text) only to a request without an
``Origin`` header — monitoring, curl, a load balancer — never to a page on another site.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.web_exceptions import HTTPRequestEntityTooLarge
from aiohttp.web_protocol import RequestPayloadError

from auth.resolver import Access
from ingest import __version__, openapi
from ingest.buffer import Refused
from ingest.ids import uuid_str
from ingest.metrics import CONTENT_TYPE
from ingest.ratelimit import ProjectLimits, retry_after
from ingest.sdk_routes import SDK_PATHS, add_sdk_routes
from ingest.validate import (
    MAX_EVENTS_PER_REQUEST,
    BadRequest,
    Invalid,
    decode_request,
    parse_timestamp,
    validate,
)

log = structlog.get_logger("sluice.http")

INGEST_PATH = "/api/v1/ingest/events"
CORS_PATHS = frozenset((INGEST_PATH, "/healthz"))
_SDK_PREFIXES = ("/v1/projects/", "/array/")  # SDK config paths with a key in them
QUIET_PATHS = frozenset(("/healthz", "/readyz", "/metrics"))
READY_STALE_SECONDS = 30.0  # /readyz: a store must have answered this recently

SERVICE: web.AppKey[Any] = web.AppKey("service", object)
# The request logger, bound once logging is configured: a module-level structlog proxy
# resolves itself on every call (~0.6 µs of each request).
REQUEST_LOG: web.AppKey[Any] = web.AppKey("request_log", object)


_JSON_HEADERS = {"Content-Type": "application/json"}
LOG_EVERY = 10.0  # seconds between two log lines about the same repeating condition
# After refusing a body it did not read whole (408, 413, undecodable), aiohttp discards
# what still arrives for this long before closing (its default is 10 s: a slow client
# would hold the connection that long after its 408).
LINGER_SECONDS = 1.0
PAUSED_RETRY_AFTER = "60"  # a paused project: SDKs keep their events and come back


class Every:
    """Bounded repetition for a log line: :meth:`due` says whether to write it now, and
    how many times the condition occurred since the last line."""

    def __init__(self, seconds: float = LOG_EVERY) -> None:
        self.seconds = seconds
        self._at = -float("inf")
        self._count = 0

    def due(self) -> int:
        self._count += 1
        now = time.monotonic()
        if now - self._at < self.seconds:
            return 0
        count, self._at, self._count = self._count, now, 0
        return count


@dataclass
class Edge:
    """The HTTP edge's own policies and their state (one per app, built from config)."""

    read_timeout: float
    read_slots: asyncio.Semaphore
    limits: ProjectLimits
    allowed_origins: tuple[str, ...]
    unhandled: int = 0  # unexpected exceptions answered 500 (sluice_unhandled_errors_total)
    origin_refused: int = 0  # requests refused 403 for their Origin
    read_timeouts: int = 0  # bodies not received within INGEST_READ_TIMEOUT (408)
    reading: int = 0  # bodies being read now, in a slot
    lookup_log: Every = field(default_factory=Every)
    unhandled_log: Every = field(default_factory=Every)


EDGE: web.AppKey[Edge] = web.AppKey("edge", Edge)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        headers=_JSON_HEADERS if headers is None else {**_JSON_HEADERS, **headers},
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json(status, {"error": message}, headers)


_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="sluice"'}


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


async def _authorize(request: web.Request, token: Any) -> Access | web.Response:
    """The token's :class:`Access`, or the response refusing it (401, 500, 503 paused)."""
    if type(token) is not str:
        return _error(401, "unauthorized", _UNAUTHORIZED_HEADERS)
    try:
        access = await request.app[SERVICE].resolver.resolve(token)
    except Exception as exc:
        times = request.app[EDGE].lookup_log.due()
        if times:
            log.error("token_lookup_failed", error=str(exc)[:300], times=times)
        return _error(500, "internal server error")
    if access is None:
        return _error(401, "unauthorized", _UNAUTHORIZED_HEADERS)
    request["log"]["project"] = uuid_str(access.project_id)
    if access.paused:  # the incident switch for one tenant: its SDKs keep the events
        return _error(503, "project paused", {"Retry-After": PAUSED_RETRY_AFTER})
    return access


def _closing(response: web.Response) -> web.Response:
    """``response``, with the connection closed after it: the rest of the body is not
    read (aiohttp discards what still arrives for :data:`LINGER_SECONDS`, so that the
    client sees the answer rather than a reset, then closes)."""
    response.force_close()
    return response


class _AiohttpLog(logging.Filter):
    """What aiohttp's server logs on its own (a request that is not HTTP, a body that
    failed to decode read again after our answer) is the client's doing: plain-text
    tracebacks an attacker could produce at will. The decode error already had its 400
    and is dropped; anything else passes at most once per :data:`LOG_EVERY` seconds."""

    def __init__(self) -> None:
        super().__init__()
        self._every = Every()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RequestPayloadError):
            return False
        return bool(self._every.due())


async def _read_body(request: web.Request) -> bytes | web.Response:
    """The body, or the response refusing it (408, 413, 400, 503)."""
    edge = request.app[EDGE]
    try:
        # A body already received (the common case: it came with the headers) costs
        # neither a timer nor a slot; aiohttp stops reading a socket whose unread
        # data passes ~128 KiB, so only small bodies can be here whole.
        if request.content.is_eof():
            return await request.read()
        in_slot = False
        try:
            async with asyncio.timeout(edge.read_timeout):
                async with edge.read_slots:
                    in_slot = True
                    edge.reading += 1
                    try:
                        return await request.read()
                    finally:
                        edge.reading -= 1
        except TimeoutError:
            if not in_slot:  # others' bodies held every slot: not this client's fault
                return _error(503, "too many request bodies being read", {"Retry-After": "1"})
            edge.read_timeouts += 1
            message = f"request body not received within {edge.read_timeout:g} s"
            return _closing(_error(408, message, {"Connection": "close"}))
    except HTTPRequestEntityTooLarge:  # the rest (a gzip bomb's) is not worth reading
        return _closing(_error(413, "request body too large"))
    except RequestPayloadError as exc:  # bad gzip, a broken chunked encoding, ...
        cause = exc.args[0] if exc.args else exc
        detail = " ".join(str(getattr(cause, "message", None) or cause).split())
        if ", message: " in detail[:20]:  # aiohttp's "400, message: ..." form
            detail = detail.split(", message: ", 1)[1]
        message = f"could not decode the request body: {detail[:200]}"
        return _closing(_error(400, message))
    except ConnectionError:  # the client went away mid-body: nobody reads this answer
        return _closing(_error(400, "connection lost while reading the request body"))


def _precheck(request: web.Request) -> web.Response | None:
    """What is refused before a body is read (kill switch, fatal, Origin, a buffer too
    full for a typical request): the refusal, or ``None``."""
    svc = request.app[SERVICE]
    edge = request.app[EDGE]
    state = svc.state
    if state.disabled or state.shutting_down:
        return _error(503, "ingest disabled", {"Retry-After": "300"})
    if state.fatal:
        return _error(503, "ingest down", {"Retry-After": "5"})
    if edge.allowed_origins:
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") not in edge.allowed_origins:
            edge.origin_refused += 1
            return _error(403, "origin not allowed")
    if svc.buffer.likely_full():  # answer before reading the body: overload must be cheap
        return _error(503, "ingest buffer full", {"Retry-After": "1"})
    return None


async def ingest(request: web.Request) -> web.Response:
    refused = _precheck(request)
    if refused is not None:
        return refused
    header_token = _bearer(request)
    access: Access | None = None
    if header_token is not None:  # checked before the body is read: a bad one costs no read
        found = await _authorize(request, header_token)
        if type(found) is not Access:
            return found  # type: ignore[return-value]
        access = found

    # Any content type is read as JSON: sendBeacon sends text/plain, and a client that
    # forgot the header should get a 2xx or a precise 400, not a 415.
    body = await _read_body(request)
    if type(body) is not bytes:
        return body  # type: ignore[return-value]
    try:
        envelope = decode_request(body)
    except BadRequest as exc:
        return _error(400, str(exc))
    return await _accept(request, envelope, access, header_token)


async def sdk_accept(
    request: web.Request, token: str | None, native_body: Callable[[int], bytes]
) -> web.Response:
    """The native pipeline for an SDK request (:mod:`ingest.sdk_routes`): the token the
    SDK sent, then its events as a native body made for the token's project."""
    found = await _authorize(request, token)
    if type(found) is not Access:
        return found  # type: ignore[return-value]
    try:
        envelope = decode_request(native_body(found.project_id))
    except BadRequest as exc:
        return _error(400, str(exc))
    return await _accept(request, envelope, found, None)


async def _accept(
    request: web.Request, envelope: Any, access: Access | None, header_token: str | None
) -> web.Response:
    """A decoded body's way in, shared by the native and the SDK paths: the token (if
    not yet checked), ``sent_at``, admission, the rate limit, validation, the buffer."""
    svc = request.app[SERVICE]
    edge = request.app[EDGE]
    info = request["log"]
    buffer = svc.buffer
    events = envelope.events
    if len(events) > MAX_EVENTS_PER_REQUEST:
        return _error(
            400,
            f"too many events: {len(events)} > {MAX_EVENTS_PER_REQUEST} per request; "
            "split the batch",
        )

    token = envelope.token
    if access is None:
        found = await _authorize(request, token)
        if type(found) is not Access:
            return found  # type: ignore[return-value]
        access = found
    elif token is not None and token != header_token:
        return _error(400, "the token in the body differs from the Authorization header")
    project_id = access.project_id

    received_at = time.time_ns() // 1_000_000
    sent_at = envelope.sent_at
    if sent_at is not None:
        try:
            sent_at = parse_timestamp(sent_at)
        except Invalid:
            return _error(400, "sent_at invalid: send an ISO 8601 string or an epoch number")

    # Admission is judged on the events sent, before validating them: under overload a
    # request that cannot fit costs a parse, not a validation. (At most the batch's
    # invalid events' worth of room is left unused.)
    if buffer.pending + len(events) > buffer.capacity:
        return _error(503, "ingest buffer full", {"Retry-After": "1"})
    limits = edge.limits
    if limits.enabled and events:  # judged on events sent, like admission
        wait = limits.take(project_id, len(events))
        if wait:
            return _error(429, "project rate limit exceeded", {"Retry-After": retry_after(wait)})
    data, accepted, errors, _ = validate(
        events, project_id, received_at, sent_at, request.headers.get("User-Agent")
    )
    if accepted:
        try:  # returns once the events are durable (INGEST_DURABILITY)
            await buffer.admit(data, accepted, project_id)
        except Refused as exc:  # nothing of this request was accepted
            if limits.enabled:
                limits.refund(project_id, len(events))  # a 503 must not cost quota
            return _error(503, exc.reason, {"Retry-After": exc.retry_after})

    metrics = svc.metrics
    if accepted:
        metrics.events_accepted.inc(accepted)
    if errors:
        for reason, count in Counter(e["reason"] for e in errors).items():
            metrics.events_rejected.labels(reason).inc(count)
    info["accepted"] = accepted
    info["rejected"] = len(errors)
    return _json(
        202 if accepted else 200, {"accepted": accepted, "rejected": len(errors), "errors": errors}
    )


async def healthz(request: web.Request) -> web.Response:
    """Pipeline health from in-memory state only (no store query per probe)."""
    svc = request.app[SERVICE]
    state = svc.state
    wal = svc.wal
    wal_failing = wal is not None and wal.stats.failing
    down = state.fatal or wal_failing or state.dlq_rows > svc.config.dlq_depth_503_threshold
    body = {
        "status": "down" if down else "ok",
        "version": __version__,
        "ingest_disabled": state.disabled or state.shutting_down,
        "fatal": state.fatal,
        "dlq_depth": state.dlq_rows,
        "dlq_events": state.dlq_events,
        "buffer": {"pending": svc.buffer.pending, "capacity": svc.buffer.capacity},
        "wal": {"durability": svc.config.durability}
        if wal is None
        else {
            "durability": svc.config.durability,
            "bytes": wal.stats.bytes,
            "max_bytes": wal.max_bytes,
            "failing": wal_failing,
            "write_failures": wal.stats.failures,
        },
    }
    if state.fatal_reason and "Origin" not in request.headers:  # raw store text: not for pages
        body["fatal_reason"] = state.fatal_reason
    return _json(503 if down else 200, body)


async def readyz(request: web.Request) -> web.Response:
    """Should a load balancer send traffic here? No from the moment shutdown begins."""
    svc = request.app[SERVICE]
    state = svc.state
    now = time.monotonic()
    problems = []
    if state.shutting_down:
        problems.append("shutting down")
    if state.disabled:
        problems.append("ingest disabled")
    if state.fatal:
        problems.append("fatal: ClickHouse and the dead-letter table failed")
    # Either store is a durable place for events: a Postgres outage alone (tokens cached,
    # ClickHouse taking batches) must not take every instance out of the balancer.
    last_ok = max(state.postgres_ok_at, state.clickhouse_ok_at)
    if now - last_ok > READY_STALE_SECONDS:
        problems.append("neither ClickHouse nor Postgres has answered recently")
    if problems:
        return _json(503, {"status": "not ready", "reasons": problems})
    return _json(200, {"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def preflight(request: web.Request) -> web.Response:
    return web.Response(status=204)


def _cors_headers(origin: str | None, allowed: tuple[str, ...]) -> dict[str, str] | None:
    if not allowed:
        return {"Access-Control-Allow-Origin": "*"}
    if origin and origin.rstrip("/") in allowed:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return None


_PREFLIGHT = {
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding",
    "Access-Control-Max-Age": "86400",
}


@web.middleware
async def edge(request: web.Request, handler: Any) -> web.StreamResponse:
    """CORS and the per-request log line."""
    started = time.perf_counter()
    info: dict[str, Any] = {}
    request["log"] = info
    path = request.path
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # 404, 405 from the router
        response = _error(exc.status, exc.reason)
    except Exception:  # a bug: still JSON, logged with its traceback (bounded), counted
        edge = request.app[EDGE]
        edge.unhandled += 1
        times = edge.unhandled_log.due()
        if times:
            request.app[REQUEST_LOG].exception(
                "unhandled_error", method=request.method, path=path, times=times, **info
            )
        response = _error(500, "internal server error")
    if path in CORS_PATHS or path in SDK_PATHS or path.startswith(_SDK_PREFIXES):
        svc = request.app[SERVICE]
        cors = _cors_headers(request.headers.get("Origin"), svc.config.allowed_origins)
        if cors:
            response.headers.update(cors)
            if request.method == "OPTIONS":
                response.headers.update(_PREFLIGHT)
                asked = request.headers.get("Access-Control-Request-Headers")
                if asked:  # SDKs send their own (X-Retry-Count, AnonymousId, ...)
                    response.headers["Access-Control-Allow-Headers"] = asked
        elif svc.config.allowed_origins:
            response.headers["Vary"] = "Origin"
    duration = time.perf_counter() - started
    app = request.app
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "other"
    app[SERVICE].metrics.observe_request(route, response.status, duration)
    if path not in QUIET_PATHS:
        app[REQUEST_LOG].info(
            "request",
            method=request.method,
            path=path,
            status=response.status,
            duration_ms=round(duration * 1000, 3),
            **info,
        )
    return response


def build_edge(service: Any) -> Edge:
    """The edge policies from the configuration, their figures registered in /metrics."""
    config = service.config
    edge = Edge(
        read_timeout=config.read_timeout,
        read_slots=asyncio.Semaphore(config.read_concurrency),
        limits=ProjectLimits(config.project_events_per_s, config.project_burst),
        allowed_origins=config.allowed_origins,
    )
    resolver = service.resolver

    def counters() -> dict[str, tuple[str, float]]:
        return {
            "sluice_unhandled_errors": ("Unexpected exceptions answered 500", edge.unhandled),
            "sluice_origin_refused": ("Requests refused 403 for their Origin", edge.origin_refused),
            "sluice_read_timeouts": ("Bodies not received in time (408)", edge.read_timeouts),
            "sluice_token_stale_refused": (
                "Lookups failed with a known entry older than INGEST_TOKEN_STALE_MAX",
                resolver.stale_refused,
            ),
        }

    def gauges() -> dict[str, tuple[str, float]]:
        known, unknown = resolver.sizes
        return {
            "sluice_bodies_reading": ("Request bodies being read in a slot", edge.reading),
            "sluice_token_cache_known": ("Known tokens cached", known),
            "sluice_token_cache_unknown": ("Unknown tokens cached", unknown),
            "sluice_ratelimit_buckets": ("Projects with a rate-limit bucket", len(edge.limits)),
        }

    metrics = service.metrics
    metrics.add_counters(counters)
    metrics.add_gauges(gauges)
    metrics.add_project_counter(
        "sluice_ratelimited_events",
        "Events refused 429 by the project rate limit, by project",
        lambda: {uuid_str(p): n for p, n in edge.limits.limited.items()},
    )
    return edge


def build_app(service: Any) -> web.Application:
    aiohttp_log = logging.getLogger("sluice.aiohttp")
    if not any(isinstance(f, _AiohttpLog) for f in aiohttp_log.filters):
        aiohttp_log.addFilter(_AiohttpLog())
    app = web.Application(
        middlewares=[edge],
        client_max_size=service.config.max_body_bytes,
        handler_args={"lingering_time": LINGER_SECONDS, "logger": aiohttp_log},
    )
    app[SERVICE] = service
    app[EDGE] = build_edge(service)
    app[REQUEST_LOG] = log.bind()
    app.router.add_post(INGEST_PATH, ingest)
    app.router.add_route("OPTIONS", INGEST_PATH, preflight)
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_route("OPTIONS", "/healthz", preflight)
    app.router.add_get("/readyz", readyz, allow_head=True)
    app.router.add_get("/metrics", metrics)
    app.router.add_get(openapi.PATH, openapi.handler)  # the contract: ingest/openapi.py
    # The SDKs' own paths (Segment, RudderStack, PostHog): same pipeline, their formats.
    add_sdk_routes(app, sdk_accept, service.config.max_body_bytes, _precheck, _read_body)
    for path in SDK_PATHS:
        app.router.add_route("OPTIONS", path, preflight)

    # --- the read API (ingest/read.py: GET /api/v1/events, /api/v1/stats/*) -------------
    from ingest.read import add_read_routes  # imported here: the whole hook is this hunk

    add_read_routes(app, service)

    # --- the dashboard (ingest/dashboard.py: GET / → /dashboard/, its files) ------------
    from ingest.dashboard import add_dashboard_routes

    add_dashboard_routes(app)
    return app
