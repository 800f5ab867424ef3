"""The HTTP surface: ``POST /api/v1/ingest/events``, ``/healthz``, ``/readyz``, ``/metrics``.

Enters: requests. Leaves: the response table in the README. The ingest handler does, in
order: kill switch / shutdown (503 disabled) → fatal (503 down) → read the body, capped
at ``INGEST_MAX_BODY_BYTES`` after gzip decompression (413) → parse the envelope (400)
→ resolve the token (401; 500 if Postgres fails with nothing cached) → validate
(:mod:`ingest.validate`) → admit into the buffer (503 full) → 202/200.

One middleware adds CORS headers and writes one log line per request (``/healthz``,
``/readyz`` and ``/metrics`` are not logged: probes would drown the log).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.web_exceptions import HTTPRequestEntityTooLarge
from aiohttp.web_protocol import RequestPayloadError

from ingest import __version__
from ingest.buffer import Refused
from ingest.ids import uuid_str
from ingest.metrics import CONTENT_TYPE
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
QUIET_PATHS = frozenset(("/healthz", "/readyz", "/metrics"))
READY_STALE_SECONDS = 30.0  # /readyz: a store must have answered this recently

SERVICE: web.AppKey[Any] = web.AppKey("service", object)
# The request logger, bound once logging is configured: a module-level structlog proxy
# resolves itself on every call (~0.6 µs of each request).
REQUEST_LOG: web.AppKey[Any] = web.AppKey("request_log", object)


_JSON_HEADERS = {"Content-Type": "application/json"}


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


async def ingest(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    state = svc.state
    info = request["log"]
    if state.disabled or state.shutting_down:
        return _error(503, "ingest disabled", {"Retry-After": "300"})
    if state.fatal:
        return _error(503, "ingest down", {"Retry-After": "5"})

    buffer = svc.buffer
    if buffer.likely_full():  # answer before reading the body: overload must be cheap
        return _error(503, "ingest buffer full", {"Retry-After": "1"})

    # Any content type is read as JSON: sendBeacon sends text/plain, and a client that
    # forgot the header should get a 2xx or a precise 400, not a 415.
    try:
        body = await request.read()
    except HTTPRequestEntityTooLarge:
        return _error(413, "request body too large")
    except RequestPayloadError as exc:
        return _error(400, f"could not decode the request body ({exc.args[0] if exc.args else exc})"
                      .replace("\n", " "))  # fmt: skip
    try:
        envelope = decode_request(body)
    except BadRequest as exc:
        return _error(400, str(exc))
    events = envelope.events
    if len(events) > MAX_EVENTS_PER_REQUEST:
        return _error(
            400,
            f"too many events: {len(events)} > {MAX_EVENTS_PER_REQUEST} per request; "
            "split the batch",
        )

    token = envelope.token
    if token is None:
        token = _bearer(request)
    if type(token) is not str:
        return _error(401, "unauthorized", _UNAUTHORIZED_HEADERS)
    try:
        project_id = await svc.resolver.resolve(token)
    except Exception as exc:
        log.error("token_lookup_failed", error=str(exc)[:300])
        return _error(500, "internal server error")
    if project_id is None:
        return _error(401, "unauthorized", _UNAUTHORIZED_HEADERS)
    info["project"] = uuid_str(project_id)

    received_at = time.time_ns() // 1_000_000
    sent_at = envelope.sent_at
    if sent_at is not None:
        try:
            sent_at = parse_timestamp(sent_at)
        except Invalid:
            return _error(400, "sent_at invalid: send an ISO 8601 string or epoch milliseconds")

    # Admission is judged on the events sent, before validating them: under overload a
    # request that cannot fit costs a parse, not a validation. (At most the batch's
    # invalid events' worth of room is left unused.)
    if buffer.pending + len(events) > buffer.capacity:
        return _error(503, "ingest buffer full", {"Retry-After": "1"})
    data, accepted, errors, _ = validate(events, project_id, received_at, sent_at)
    if accepted:
        try:  # returns once the events are durable (INGEST_DURABILITY)
            await buffer.admit(data, accepted, project_id)
        except Refused as exc:  # nothing of this request was accepted
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
    if state.fatal_reason:
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
    if path in CORS_PATHS:
        svc = request.app[SERVICE]
        cors = _cors_headers(request.headers.get("Origin"), svc.config.allowed_origins)
        if cors:
            response.headers.update(cors)
            if request.method == "OPTIONS":
                response.headers.update(_PREFLIGHT)
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


def build_app(service: Any) -> web.Application:
    app = web.Application(middlewares=[edge], client_max_size=service.config.max_body_bytes)
    app[SERVICE] = service
    app[REQUEST_LOG] = log.bind()
    app.router.add_post(INGEST_PATH, ingest)
    app.router.add_route("OPTIONS", INGEST_PATH, preflight)
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_route("OPTIONS", "/healthz", preflight)
    app.router.add_get("/readyz", readyz, allow_head=True)
    app.router.add_get("/metrics", metrics)

    # --- the read API (ingest/read.py: GET /api/v1/events, /api/v1/stats/*) -------------
    from ingest.read import add_read_routes  # imported here: the whole hook is this hunk

    add_read_routes(app, service)
    return app
