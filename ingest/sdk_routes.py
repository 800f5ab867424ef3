"""The HTTP face of :mod:`ingest.sdk`: aiohttp handlers for the SDK paths, kept apart
from ``ingest/http.py``, which mounts them with its own pipeline (``sdk_accept``).

Enters: requests on :data:`ingest.sdk.ROUTES` and the config paths. Leaves: each
family's answers (:func:`ingest.sdk.respond`). On the way, :func:`add_sdk_routes`'s
``accept`` callable runs the native pipeline — everything the native handler does after
the body is read: the token (401/500), ``native_body(project_id)`` →
``decode_request`` → validate → buffer (503) — and returns its native response, which is
reshaped here. An undecodable body is a 400 (413 if it inflates past ``max_bytes``)
before ``accept`` is called.

Why ``accept`` takes a callable rather than bytes: a non-UUID message id becomes
``uuid5(project, id)``, and the project is known only once ``accept`` resolved the token.

CORS is not handled here: the edge middleware in ``ingest/http.py`` owns it, and must
cover :data:`SDK_PATHS` (analytics.js posts ``text/plain`` — no preflight — but with
``Authorization: Basic`` it preflights, as do posthog-js's ``/flags/`` (JSON) and
RudderStack's ``AnonymousId`` header: the preflight should echo
``Access-Control-Request-Headers``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_exceptions import HTTPRequestEntityTooLarge
from aiohttp.web_protocol import RequestPayloadError

from ingest import sdk
from ingest.validate import BadRequest

NativeBody = Callable[[int], bytes]
Precheck = Callable[[web.Request], web.Response | None]
"""``precheck(request)``: the native handler's checks before it reads a body (kill switch,
fatal, buffer likely full) — a response to send instead, or ``None`` to go on."""
Accept = Callable[[web.Request, str | None, NativeBody], Awaitable[web.StreamResponse]]
"""``accept(request, token, native_body)``: the native pipeline after the body is read.
``native_body(project_id)`` gives the body :func:`ingest.validate.decode_request` takes."""

ReadBody = Callable[[web.Request], Awaitable["bytes | web.Response"]]
"""``read_body(request)``: the body, or the response refusing it (408, 413, 400, 503)."""

_JSON = "application/json"
# Native headers an SDK acts on, carried over to the reshaped answer.
_KEPT_HEADERS = ("Retry-After", "WWW-Authenticate")

SETTINGS_PATH = "/v1/projects/{write_key}/settings"
REMOTE_CONFIG_PATH = "/array/{token}/config"
REMOTE_CONFIG_JS_PATH = "/array/{token}/config.js"
SOURCE_CONFIG_PATHS = ("/sourceConfig", "/sourceConfig/")
SDK_PATHS: frozenset[str] = frozenset((*sdk.ROUTES, *sdk.CONFIG_RESPONSES, *SOURCE_CONFIG_PATHS))
"""Fixed SDK paths (those with a key in them are :data:`SETTINGS_PATH`,
:data:`REMOTE_CONFIG_PATH` and :data:`REMOTE_CONFIG_JS_PATH`) — for the CORS middleware."""


def _answer(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON,
                        headers=headers)  # fmt: skip


def _error(family: str, status: int, message: str) -> web.Response:
    code, body = sdk.respond(family, status, {"error": message})
    return _answer(code, body)


def _reshaped(family: str, native: web.StreamResponse) -> web.StreamResponse:
    """A native response in ``family``'s shape, keeping the headers SDKs act on."""
    if not isinstance(native, web.Response) or native.body is None:
        return native
    try:
        payload = orjson.loads(native.body)  # type: ignore[arg-type]
    except orjson.JSONDecodeError:
        payload = {"error": native.text or "error"}
    status, reshaped = sdk.respond(family, native.status, payload)
    kept = {k: native.headers[k] for k in _KEPT_HEADERS if k in native.headers}
    return _answer(status, reshaped, kept or None)


def _events_handler(
    accept: Accept, max_bytes: int, precheck: Precheck | None, read_body: ReadBody | None
) -> Callable[[web.Request], Awaitable[Any]]:
    async def events(request: web.Request) -> web.StreamResponse:
        route = sdk.ROUTES[request.path]
        family = route.family
        if precheck is not None:
            refused = precheck(request)  # overload must stay cheap: before the body
            if refused is not None:
                return _reshaped(family, refused)
        if read_body is not None:  # the server's reader: read timeout, bounded slots
            read = await read_body(request)
            if not isinstance(read, bytes):
                return _reshaped(family, read)
            body = read
        else:
            try:  # aiohttp has undone Content-Encoding: gzip, within client_max_size
                body = await request.read()
            except HTTPRequestEntityTooLarge:
                return _error(family, 413, "request body too large")
            except RequestPayloadError as exc:
                return _error(family, 400, f"could not decode the request body ({exc})")
        try:
            decoded = sdk.decode(
                route,
                body,
                request.query,
                request.headers.get("Authorization"),
                time.time_ns() // 1_000_000,
                max_bytes,
            )
        except BadRequest as exc:
            return _error(family, 400, str(exc))
        except sdk.BodyTooLarge:
            return _error(family, 413, "request body too large")
        native = await accept(request, decoded.token, partial(sdk.native_body, decoded))
        return _reshaped(family, native)

    return events


async def _fixed(document: dict[str, Any], request: web.Request) -> web.Response:
    return _answer(200, document)


async def _remote_config_js(request: web.Request) -> web.Response:
    script = sdk.posthog_remote_config_js(request.match_info["token"])
    return web.Response(text=script, content_type="application/javascript")


async def _segment_settings(request: web.Request) -> web.Response:
    # The browser reaches Sluice at the Host it asked for; behind a TLS-terminating proxy
    # the scheme comes from X-Forwarded-Proto (it only picks the URL the browser posts to).
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    settings = sdk.segment_settings(request.match_info["write_key"], request.host, scheme)
    return _answer(200, settings)


async def _source_config(request: web.Request) -> web.Response:
    key = request.query.get("writeKey") or sdk.authorization_key(
        request.headers.get("Authorization")
    )
    return _answer(200, sdk.rudderstack_source_config(key or ""))


def add_sdk_routes(
    app: web.Application,
    accept: Accept,
    max_bytes: int,
    precheck: Precheck | None = None,
    read_body: ReadBody | None = None,
) -> None:
    """Add every SDK path to ``app``: the event paths (POST) through ``precheck`` and
    ``accept``, the config paths (GET; the PostHog ones also POST) with their fixed
    documents.
    ``max_bytes`` caps a body decompressed here (gzip by magic bytes, lz64) like
    ``INGEST_MAX_BODY_BYTES`` caps the rest. Config answers do not check the key: they
    hold nothing secret, and the events themselves are authenticated."""
    events = _events_handler(accept, max_bytes, precheck, read_body)
    for path in sdk.ROUTES:
        app.router.add_post(path, events)
    for path, document in sdk.CONFIG_RESPONSES.items():
        app.router.add_route("GET", path, partial(_fixed, document))
        app.router.add_route("POST", path, partial(_fixed, document))
    app.router.add_get(REMOTE_CONFIG_PATH, partial(_fixed, sdk.POSTHOG_REMOTE_CONFIG))
    app.router.add_get(REMOTE_CONFIG_JS_PATH, _remote_config_js)
    app.router.add_get(SETTINGS_PATH, _segment_settings)
    for path in SOURCE_CONFIG_PATHS:
        app.router.add_get(path, _source_config)
