"""``GET /openapi.json``: the HTTP contract as an OpenAPI 3.1 document.

Enters: nothing (the document is built once, at import, from the same tables the
routes are built from: :data:`ingest.sdk.ROUTES`, :data:`ingest.sdk.CONFIG_RESPONSES`,
:data:`ingest.sdk_routes.SOURCE_CONFIG_PATHS`). Leaves: the JSON bytes, served by
:func:`handler`. It describes every ingest path (native and SDK), the SDK config paths
and the health paths, with every status each can answer (the README's *Responses*
table, reshaped for the SDK families as :func:`ingest.sdk.respond` does).
``tests/test_openapi.py`` runs schemathesis against a real server with it: a response
the document does not allow is a test failure.

Not described: ``OPTIONS`` (the CORS preflight, 204 on every ingest path), ``HEAD`` on
the GET paths, and the 404 / 405 every other path and method gets.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ingest import __version__, sdk
from ingest.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ingest.sdk_routes import (
    REMOTE_CONFIG_JS_PATH,
    REMOTE_CONFIG_PATH,
    SETTINGS_PATH,
    SOURCE_CONFIG_PATHS,
)

PATH = "/openapi.json"
_NATIVE_PATH = "/api/v1/ingest/events"  # ingest.http.INGEST_PATH (http.py imports us)

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: Schema, description: str, headers: Schema | None = None) -> Schema:
    out: Schema = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "required": True,
        "schema": {"type": "string", "const": 'Bearer realm="sluice"'},
    }
}

# What each status means on an ingest path (README, *Responses*).
_MEANING = {
    400: "the body is not JSON / not the expected shape / does not decode (gzip, br, "
    "chunks); too many events (10,000 per request); bad sent_at; body token differs "
    "from the Authorization header",
    401: "missing token, wrong shape, unknown, revoked, deleted project",
    403: "ALLOWED_ORIGINS is set and the request's Origin is not in it",
    408: "the body did not arrive within INGEST_READ_TIMEOUT (connection closed)",
    413: "body (or decompressed body) over INGEST_MAX_BODY_BYTES",
    429: "the project is over INGEST_PROJECT_EVENTS_PER_S (Retry-After)",
    500: "token lookup failed with no usable cached entry; an unexpected exception",
    503: "nothing accepted, retry (Retry-After): ingest disabled or shutting down, ingest "
    "down (fatal), project paused, buffer full, body-reading slots busy, write-ahead log "
    "full or failing",
}


def _native_responses() -> Schema:
    error = _ref("Error")
    responses: Schema = {
        "202": _json_body(_ref("IngestResult"), "at least one event accepted"),
        "200": _json_body(_ref("IngestResult"), "zero valid events (empty list, all rejected)"),
    }
    for status in (400, 401, 403, 408, 413, 429, 500, 503):
        headers = {401: _WWW_AUTHENTICATE, 429: _RETRY_AFTER, 503: _RETRY_AFTER}.get(status)
        responses[str(status)] = _json_body(error, _MEANING[status], headers)
    return responses


def _sdk_responses(family: str) -> Schema:
    """What :func:`ingest.sdk.respond` makes of the native answers: success is always
    200; a 408 (and for PostHog a 429) becomes a 503. A 500 from an unexpected exception
    leaves the edge middleware in the native shape."""
    if family == sdk.SEGMENT:
        ok, error = _ref("SegmentResult"), _ref("SegmentError")
        statuses = (400, 401, 403, 413, 429, 500, 503)
    else:
        ok, error = _ref("PostHogResult"), _ref("PostHogError")
        statuses = (400, 401, 403, 413, 500, 503)
    responses: Schema = {"200": _json_body(ok, "accepted (accepted may be 0: see errors)")}
    for status in statuses:
        schema = {"anyOf": [error, _ref("Error")]} if status == 500 else error
        meaning = _MEANING[status]
        if status == 503:
            meaning += "; a native 408" + (" or 429" if family == sdk.POSTHOG else "")
        headers = {401: _WWW_AUTHENTICATE, 429: _RETRY_AFTER, 503: _RETRY_AFTER}.get(status)
        responses[str(status)] = _json_body(schema, meaning, headers)
    return responses


_STR_OR_NUM = {"type": ["string", "number"]}
_ID = {"type": ["string", "integer"]}

_SCHEMAS: Schema = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "IngestResult": {
        "type": "object",
        "required": ["accepted", "rejected", "errors"],
        "properties": {
            "accepted": {"type": "integer", "minimum": 0},
            "rejected": {"type": "integer", "minimum": 0},
            "errors": {"type": "array", "items": _ref("EventError")},
        },
    },
    "EventError": {
        "type": "object",
        "required": ["index", "reason"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "reason": {"type": "string"},
        },
    },
    "Event": {
        "type": "object",
        "description": "any other top-level field is folded into extras",
        "required": ["event", "timestamp"],
        "properties": {
            "event": {"type": "string", "minLength": 1, "maxLength": 200},
            "timestamp": {
                "description": "ISO 8601 / RFC 3339 (no zone = UTC), or epoch milliseconds "
                "(seconds below 10^11)",
                **_STR_OR_NUM,
            },
            "anonymous_id": _ID,
            "user_id": _ID,
            "session_id": _ID,
            "anonymousId": _ID,
            "userId": _ID,
            "sessionId": _ID,
            "uuid": {"type": "string", "format": "uuid"},
            "event_id": {"type": "string", "format": "uuid"},
            "messageId": {"type": "string", "format": "uuid"},
            "properties": {"type": "object"},
            "extras": {"type": "object"},
            "user_agent": {
                "type": "string",
                "description": "the device's user agent, when a server relays the event "
                "(default: the request's User-Agent header); at most 1,000 characters kept",
            },
        },
    },
    "IngestRequest": {
        "type": "object",
        "required": ["events"],
        "additionalProperties": False,
        "properties": {
            "token": {"type": "string", "description": "sluice_pub_…, if not in the header"},
            "sent_at": {
                "description": "client send time, for clock-skew correction",
                **_STR_OR_NUM,
            },
            "events": {"type": "array", "maxItems": 10000, "items": _ref("Event")},
        },
    },
    "SegmentMessage": {
        "type": "object",
        "properties": {
            "type": {"enum": ["track", "identify", "page", "screen", "group", "alias"]},
            "event": {"type": "string"},
            "userId": _ID,
            "anonymousId": _ID,
            "messageId": {"type": "string", "description": "a UUID, else uuid5(project, it)"},
            "timestamp": _STR_OR_NUM,
            "originalTimestamp": _STR_OR_NUM,
            "sentAt": _STR_OR_NUM,
            "properties": {"type": "object"},
            "traits": {"type": "object"},
            "context": {"type": "object"},
            "integrations": {"type": "object"},
            "writeKey": {"type": "string"},
        },
    },
    "SegmentBatch": {
        "type": "object",
        "required": ["batch"],
        "properties": {
            "batch": {"type": "array", "items": _ref("SegmentMessage")},
            "writeKey": {"type": "string"},
            "sentAt": _STR_OR_NUM,
            "context": {"type": "object"},
            "integrations": {"type": "object"},
        },
    },
    "SegmentResult": {
        "type": "object",
        "required": ["success", "accepted", "rejected", "errors"],
        "properties": {
            "success": {"const": True},
            "accepted": {"type": "integer", "minimum": 0},
            "rejected": {"type": "integer", "minimum": 0},
            "errors": {"type": "array", "items": _ref("EventError")},
        },
    },
    "SegmentError": {
        "type": "object",
        "required": ["success", "code", "message"],
        "properties": {
            "success": {"const": False},
            "code": {"type": "string"},
            "message": {"type": "string"},
        },
    },
    "PostHogEvent": {
        "type": "object",
        "properties": {
            "event": {"type": "string"},
            "distinct_id": _ID,
            "uuid": {"type": "string", "description": "a UUID, else uuid5(project, it)"},
            "timestamp": _STR_OR_NUM,
            "offset": {"type": "integer"},
            "properties": {"type": "object"},
            "api_key": {"type": "string"},
            "token": {"type": "string"},
        },
    },
    "PostHogBatch": {
        "type": "object",
        "required": ["batch"],
        "properties": {
            "api_key": {"type": "string"},
            "token": {"type": "string"},
            "batch": {"type": "array", "items": _ref("PostHogEvent")},
            "sent_at": _STR_OR_NUM,
        },
    },
    "PostHogForm": {
        "type": "object",
        "description": "posthog-js sendBeacon: data= holds base64, or LZString base64 with "
        "compression=lz64 (at most 256 KiB)",
        "required": ["data"],
        "properties": {"data": {"type": "string"}, "compression": {"type": "string"}},
    },
    "PostHogResult": {
        "type": "object",
        "required": ["status", "accepted", "rejected", "errors"],
        "properties": {
            "status": {"const": 1},
            "accepted": {"type": "integer", "minimum": 0},
            "rejected": {"type": "integer", "minimum": 0},
            "errors": {"type": "array", "items": _ref("EventError")},
        },
    },
    "PostHogError": {
        "type": "object",
        "required": ["type", "code", "detail"],
        "properties": {
            "type": {"enum": ["validation_error", "server_error"]},
            "code": {"type": "string"},
            "detail": {"type": "string"},
        },
    },
    "Health": {
        "type": "object",
        "required": [
            "status",
            "version",
            "ingest_disabled",
            "fatal",
            "dlq_depth",
            "dlq_events",
            "buffer",
            "wal",
        ],
        "properties": {
            "status": {"enum": ["ok", "down"]},
            "version": {"type": "string"},
            "ingest_disabled": {"type": "boolean"},
            "fatal": {"type": "boolean"},
            "fatal_reason": {"type": "string", "description": "only without an Origin"},
            "dlq_depth": {"type": "integer", "minimum": 0},
            "dlq_events": {"type": "integer", "minimum": 0},
            "buffer": {
                "type": "object",
                "required": ["pending", "capacity"],
                "properties": {"pending": {"type": "integer"}, "capacity": {"type": "integer"}},
            },
            "wal": {
                "type": "object",
                "required": ["durability"],
                "properties": {
                    "durability": {"enum": ["fsync", "memory"]},
                    "bytes": {"type": "integer"},
                    "max_bytes": {"type": "integer"},
                    "failing": {"type": "boolean"},
                    "write_failures": {"type": "integer"},
                },
            },
        },
    },
    "Ready": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"enum": ["ready", "not ready"]},
            "reasons": {"type": "array", "items": {"type": "string"}},
        },
    },
}

_SECURITY_SCHEMES: Schema = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer sluice_pub_… (checked before the body is read)",
    },
    "basic": {
        "type": "http",
        "scheme": "basic",
        "description": "Segment: the write key (a Sluice token) as the user, empty password",
    },
    "writeKeyQuery": {"type": "apiKey", "in": "query", "name": "writeKey"},
    "tokenQuery": {"type": "apiKey", "in": "query", "name": "token"},
}
# The key may also be in the body (native "token", Segment "writeKey", PostHog
# "api_key" / "token" / properties.token): OpenAPI has no scheme for that, so the
# anonymous alternative ({}) stands for it, and the body schemas name the fields.
_NATIVE_SECURITY = [{"bearer": []}, {}]
_SEGMENT_SECURITY = [{"basic": []}, {"bearer": []}, {"writeKeyQuery": []}, {}]
_POSTHOG_SECURITY = [{"tokenQuery": []}, {"bearer": []}, {}]


def _query(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


_SEGMENT_QUERY = [_query("writeKey", "the write key (RudderStack's beacon)")]
_POSTHOG_QUERY = [
    _query("sent_at", "send time, epoch ms (posthog-js timestampMode query)"),
    _query("_", "send time, epoch ms (posthog-js before 2024)"),
    _query("compression", "gzip-js / lz64 / base64: informative, the body is sniffed"),
    _query("ver", "the SDK's version: ignored"),
]


def _ingest_operation(summary: str, family: str, kind: str | None, path: str) -> Schema:
    if family == sdk.SEGMENT:
        if kind is None:
            body = {"anyOf": [_ref("SegmentBatch"), _ref("SegmentMessage")]}
        else:
            body = _ref("SegmentMessage")
        content: Schema = {
            "application/json": {"schema": body},
            "text/plain": {"schema": {"type": "string"}},
        }
        return {
            "summary": summary,
            "operationId": "segment" + path.replace("/", "_"),
            "tags": ["segment"],
            "security": _SEGMENT_SECURITY,
            "parameters": _SEGMENT_QUERY,
            "requestBody": {"required": True, "content": content},
            "responses": _sdk_responses(family),
        }
    body = {
        "anyOf": [
            _ref("PostHogBatch"),
            _ref("PostHogEvent"),
            {"type": "array", "items": _ref("PostHogEvent")},
        ]
    }
    content = {
        "application/json": {"schema": body},
        "text/plain": {"schema": {"type": "string"}},
        "application/x-www-form-urlencoded": {"schema": _ref("PostHogForm")},
    }
    return {
        "summary": summary,
        "operationId": "posthog" + path.replace("/", "_"),
        "tags": ["posthog"],
        "security": _POSTHOG_SECURITY,
        "parameters": _POSTHOG_QUERY,
        "requestBody": {"required": True, "content": content},
        "responses": _sdk_responses(family),
    }


def _config(
    summary: str,
    tag: str,
    schema: Schema,
    *,
    content_type: str = "application/json",
    parameters: list[Schema] | None = None,
) -> Schema:
    return {
        "summary": summary,
        "tags": [tag],
        "security": [{}],
        "parameters": parameters or [],
        "responses": {
            "200": {"description": summary, "content": {content_type: {"schema": schema}}}
        },
    }


def _path_key(name: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "minLength": 1},
    }


def build() -> Schema:
    paths: Schema = {
        _NATIVE_PATH: {
            "post": {
                "summary": "Send events (Sluice's own format)",
                "operationId": "ingest",
                "tags": ["ingest"],
                "security": _NATIVE_SECURITY,
                "requestBody": {
                    "required": True,
                    "description": "JSON in any content type (sendBeacon sends text/plain); "
                    "Content-Encoding gzip, deflate, br",
                    "content": {
                        "application/json": {"schema": _ref("IngestRequest")},
                        "text/plain": {"schema": {"type": "string"}},
                    },
                },
                "responses": _native_responses(),
            }
        }
    }
    for path, route in sdk.ROUTES.items():
        what = f"{route.kind} message" if route.kind else "events"
        summary = f"{route.family.capitalize()} SDKs: {what}"
        op = _ingest_operation(summary, route.family, route.kind, path)
        paths[path] = {"post": op}
    for path, document in sdk.CONFIG_RESPONSES.items():
        summary = "posthog-js flags / decide: no flags, nothing enabled"
        op = _config(summary, "posthog", {"type": "object", "required": sorted(document)})
        paths[path] = {"get": op, "post": {**op, "operationId": "post" + path.replace("/", "_")}}
        op["operationId"] = "get" + path.replace("/", "_")
    token = [_path_key("token")]
    remote = {"type": "object", "required": sorted(sdk.POSTHOG_REMOTE_CONFIG)}
    paths[REMOTE_CONFIG_PATH] = {
        "get": _config("posthog-js remote config", "posthog", remote, parameters=token)
    }
    paths[REMOTE_CONFIG_JS_PATH] = {
        "get": _config(
            "posthog-js remote config, as a script",
            "posthog",
            {"type": "string"},
            content_type="application/javascript",
            parameters=token,
        )
    }
    settings = {"type": "object", "required": ["integrations", "plan"]}
    paths[SETTINGS_PATH] = {
        "get": _config(
            "analytics.js settings: events go to this server",
            "segment",
            settings,
            parameters=[_path_key("write_key")],
        )
    }
    source = {"type": "object", "required": ["source"]}
    for path in SOURCE_CONFIG_PATHS:
        paths[path] = {
            "get": _config(
                "rudder-sdk-js source config",
                "segment",
                source,
                parameters=[_query("writeKey", "the write key")],
            )
        }
    paths["/healthz"] = {
        "get": {
            "summary": "Pipeline health (in-memory state only)",
            "tags": ["health"],
            "security": [{}],
            "responses": {
                "200": _json_body(_ref("Health"), "ok"),
                "503": _json_body(
                    _ref("Health"),
                    "down: fatal, the log failing, or the "
                    "dead-letter table over DLQ_DEPTH_503_THRESHOLD",
                ),
            },
        }
    }
    paths["/readyz"] = {
        "get": {
            "summary": "Should a load balancer send traffic here?",
            "tags": ["health"],
            "security": [{}],
            "responses": {
                "200": _json_body(_ref("Ready"), "ready"),
                "503": _json_body(_ref("Ready"), "not ready: reasons says why"),
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics",
            "tags": ["health"],
            "security": [{}],
            "responses": {
                "200": {
                    "description": "the Prometheus text format",
                    "content": {METRICS_CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
                }
            },
        }
    }
    paths[PATH] = {
        "get": {
            "summary": "This document",
            "tags": ["health"],
            "security": [{}],
            "responses": {"200": _json_body({"type": "object"}, "OpenAPI 3.1")},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sluice",
            "version": __version__,
            "description": "Event ingest: Sluice's own POST /api/v1/ingest/events, and the "
            "Segment / RudderStack / PostHog SDK paths on the same pipeline. Every answer "
            "is JSON (except /metrics, config.js and this list's omissions: OPTIONS "
            "preflights answer 204, other paths 404 and methods 405, JSON too).",
        },
        "tags": [{"name": t} for t in ("ingest", "segment", "posthog", "health")],
        "paths": paths,
        "components": {"schemas": _SCHEMAS, "securitySchemes": _SECURITY_SCHEMES},
    }


DOCUMENT: Schema = build()
_BODY = orjson.dumps(DOCUMENT)


async def handler(request: web.Request) -> web.Response:
    return web.Response(body=_BODY, content_type="application/json")
