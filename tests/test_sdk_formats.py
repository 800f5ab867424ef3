"""The SDK stage on what real SDKs send.

The Python SDKs (segment-analytics-python, posthog — pinned in the ``dev`` extra) run
for real against a capture server on 127.0.0.1 that records each request and answers as
the vendor's server does; each captured request then goes through :mod:`ingest.sdk` and
:func:`ingest.validate.validate`, and the stored rows are checked field by field. The
browser SDKs need a browser: their requests were recorded once in jsdom
(``tests/fixtures/sdk``, with the script that recorded them), and shapes their current
builds no longer send (lz64, offset, sendBeacon's base64 form) are rebuilt from their
source, named at each test.
"""

from __future__ import annotations

import base64
import gzip
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from ingest import sdk
from ingest.rows import COLUMNS, lines_to_rows
from ingest.validate import BadRequest, decode_request, parse_timestamp, validate

PROJECT = uuid.UUID("7f1c0000-0000-4000-8000-00000000abcd")
OTHER_PROJECT = uuid.UUID("7f1c0000-0000-4000-8000-00000000ffff")
KEY = "sluice_pub_testkey"
MAX = 10 * 1024 * 1024


class Captured(NamedTuple):
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


class CaptureServer:
    """A real HTTP server that records requests and answers 200 with the body each
    vendor's server gives (the SDKs read nothing else on success)."""

    def __init__(self) -> None:
        self.requests: list[Captured] = []
        captured = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                captured.append(
                    Captured(
                        self.command,
                        parts.path,
                        dict(parse_qsl(parts.query)),
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                )
                if parts.path.startswith(("/flags", "/decide")):
                    answer: dict[str, Any] = sdk.POSTHOG_FLAGS
                else:
                    route = sdk.ROUTES.get(parts.path)
                    family = route.family if route else sdk.POSTHOG
                    answer = sdk.respond(family, 202, {"accepted": 1})[1]
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    server = CaptureServer()
    yield server
    server.close()


def through_sluice(
    req: Captured, project: uuid.UUID = PROJECT, now_ms: int | None = None
) -> tuple[sdk.SdkRequest, list[dict[str, Any]], list[dict[str, Any]]]:
    """What the HTTP layer will do with a captured request: gunzip on Content-Encoding,
    decode, (the token resolves to ``project``), native body, validate. Returns the
    decoded request, the stored rows as dicts, and the rejections."""
    body = req.body
    if req.headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    decoded = sdk.decode(
        sdk.ROUTES[req.path], body, req.query, req.headers.get("authorization"), now, MAX
    )
    envelope = decode_request(sdk.native_body(decoded, project))
    sent_at = None if envelope.sent_at is None else parse_timestamp(envelope.sent_at)
    result = validate(envelope.events, project.int, now, sent_at)
    rows = [dict(zip(COLUMNS, row, strict=True)) for row in lines_to_rows(result.data)]
    for row in rows:
        row["properties_text"] = row["properties"]
        row["properties"] = json.loads(row["properties"])
        row["extras"] = json.loads(row["extras"])
    return decoded, rows, result.errors


def iso_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


# ----------------------------------------------------------------- analytics-python


def test_segment_python_sdk_requests_map_field_by_field(capture: CaptureServer) -> None:
    from segment.analytics.client import Client

    client = Client(KEY, host=capture.url, gzip=True, sync_mode=False, upload_interval=0.05)
    at = datetime(2026, 11, 22, 10, 0, 0, 123000, tzinfo=UTC)
    ctx = {"ip": "1.2.3.4", "locale": "de-DE"}
    client.track("u1", "Order Completed", {"total": 9.5, "items": [1, 2]}, context=ctx,
                 timestamp=at, anonymous_id="anon-1", message_id="node-next-1-abc")  # fmt: skip
    client.identify("u1", {"email": "a@example.com", "plan": "pro"}, anonymous_id="anon-1",
                    timestamp=at)  # fmt: skip
    client.page("u1", "Docs", "Getting started", {"path": "/docs"}, timestamp=at)
    client.screen("u1", "App", "Home", {"tab": 1}, timestamp=at)
    client.group("u1", "org-9", {"name": "Acme"}, timestamp=at)
    client.alias("anon-1", "u1", timestamp=at)
    client.flush()
    client.join()

    posts = [r for r in capture.requests if r.method == "POST"]
    assert posts, "the SDK sent nothing"
    req = posts[0]
    assert req.path == "/v1/batch"
    assert req.headers["content-encoding"] == "gzip"
    assert req.headers["authorization"] == "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    raw = json.loads(gzip.decompress(req.body))
    assert raw["writeKey"] == KEY and "sentAt" in raw

    rows, errors = [], []
    for post in posts:
        decoded, got, bad = through_sluice(post)
        assert decoded.token == KEY and decoded.family == sdk.SEGMENT
        rows += got
        errors += bad
    assert errors == []
    by_name = {row["event"]: row for row in rows}
    assert list(by_name) == ["Order Completed", "$identify", "$pageview", "$screen",
                             "$groupidentify", "$create_alias"]  # fmt: skip

    track = by_name["Order Completed"]
    assert (track["user_id"], track["anonymous_id"], track["session_id"]) == ("u1", "anon-1", None)
    assert track["properties"] == {"total": 9.5, "items": [1, 2]}
    assert track["client_timestamp"] == iso_ms("2026-11-22T10:00:00.123+00:00")
    assert track["extras"]["type"] == "track"
    assert track["extras"]["context"]["ip"] == "1.2.3.4"
    assert track["extras"]["context"]["library"]["name"] == "analytics-python"
    assert "writeKey" not in track["extras"]
    # A messageId that is not a UUID: a stable per-project uuid5, the original kept.
    assert track["event_id"] == uuid.uuid5(PROJECT, "node-next-1-abc").int
    assert track["extras"]["messageId"] == "node-next-1-abc"

    identify = by_name["$identify"]
    assert (identify["user_id"], identify["anonymous_id"]) == ("u1", "anon-1")
    assert identify["extras"]["traits"] == {"email": "a@example.com", "plan": "pro"}
    assert identify["properties"] == {}
    # The SDK's own messageIds are UUIDs: they are the event ids, as sent.
    assert "messageId" not in identify["extras"]

    page = by_name["$pageview"]
    assert page["properties"] == {"path": "/docs"}
    assert (page["extras"]["name"], page["extras"]["category"]) == ("Getting started", "Docs")
    assert page["extras"]["type"] == "page"
    assert by_name["$screen"]["extras"]["name"] == "Home"

    group = by_name["$groupidentify"]
    assert group["extras"]["groupId"] == "org-9"
    assert group["extras"]["traits"] == {"name": "Acme"}

    alias = by_name["$create_alias"]
    assert alias["user_id"] == "u1"
    assert alias["extras"]["previousId"] == "anon-1"


def test_a_non_uuid_message_id_is_stable_per_project_and_distinct_across_projects() -> None:
    body = json.dumps({"batch": [{"type": "track", "event": "e", "userId": "u",
                                  "messageId": "node-next-1732-abc",
                                  "timestamp": "2026-11-22T10:00:00Z"}]}).encode()  # fmt: skip
    req = Captured("POST", "/v1/batch", {}, {"authorization": "Basic " + base64.b64encode(
        f"{KEY}:".encode()).decode()}, body)  # fmt: skip
    first = through_sluice(req)[1][0]["event_id"]
    again = through_sluice(req)[1][0]["event_id"]
    other = through_sluice(req, OTHER_PROJECT)[1][0]["event_id"]
    assert first == again != other


def test_segment_batch_context_and_integrations_apply_to_each_message() -> None:
    body = json.dumps({
        "batch": [
            {"type": "track", "event": "a", "userId": "u", "timestamp": "2026-11-22T10:00:00Z",
             "context": {"page": {"path": "/x"}, "ip": "9.9.9.9"}},
            {"type": "track", "event": "b", "userId": "u", "timestamp": "2026-11-22T10:00:01Z"},
        ],
        "context": {"ip": "1.1.1.1", "library": {"name": "analytics-node"}},
        "integrations": {"All": False},
        "sentAt": "2026-11-22T10:00:02Z",
    }).encode()  # fmt: skip
    decoded, rows, errors = through_sluice(
        Captured("POST", "/v1/batch", {}, {"authorization": "Basic " + base64.b64encode(
            f"{KEY}:".encode()).decode()}, body))  # fmt: skip
    assert errors == [] and decoded.sent_at == "2026-11-22T10:00:02Z"
    a, b = rows
    assert a["extras"]["context"] == {"ip": "9.9.9.9", "library": {"name": "analytics-node"},
                                      "page": {"path": "/x"}}  # fmt: skip
    assert b["extras"]["context"] == {"ip": "1.1.1.1", "library": {"name": "analytics-node"}}
    assert a["extras"]["integrations"] == b["extras"]["integrations"] == {"All": False}


# -------------------------------------------------------------------- posthog-python


@pytest.mark.parametrize("use_gzip", [False, True])
def test_posthog_python_sdk_requests_map_field_by_field(
    capture: CaptureServer, use_gzip: bool
) -> None:
    from posthog import Posthog

    client = Posthog(KEY, host=capture.url, gzip=use_gzip, flush_interval=0.05,
                     disable_geoip=True, enable_exception_autocapture=False)  # fmt: skip
    at = datetime(2026, 11, 22, 10, 0, 0, 250000, tzinfo=UTC)
    event_uuid = str(uuid.uuid4())
    client.capture("signed_up", distinct_id="u1", timestamp=at, uuid=event_uuid,
                   properties={"plan": "pro", "$session_id": "sess-1",
                               "$set": {"email": "a@example.com"}})  # fmt: skip
    client.capture("$identify", distinct_id="u1", timestamp=at,
                   properties={"$anon_distinct_id": "anon-1"})  # fmt: skip
    client.capture("$pageview", distinct_id="u1", timestamp=at,
                   properties={"$current_url": "https://example.com/docs"})  # fmt: skip
    client.set(distinct_id="u1", properties={"name": "Ada"}, timestamp=at)
    client.alias("anon-1", "u1", timestamp=at)
    client.group_identify("company", "acme", {"seats": 5}, timestamp=at, distinct_id="u1")
    client.flush()
    client.shutdown()

    posts = [r for r in capture.requests if r.method == "POST" and r.path == "/batch/"]
    assert posts, f"the SDK sent nothing to /batch/: {[r.path for r in capture.requests]}"
    assert posts[0].headers.get("content-encoding") == ("gzip" if use_gzip else None)
    rows, errors = [], []
    for post in posts:
        decoded, got, bad = through_sluice(post)
        assert decoded.token == KEY and decoded.family == sdk.POSTHOG
        assert decoded.sent_at is not None
        rows += got
        errors += bad
    assert errors == []
    by_name = {row["event"]: row for row in rows}
    assert sorted(by_name) == sorted(["signed_up", "$identify", "$pageview", "$set",
                                      "$create_alias", "$groupidentify"])  # fmt: skip

    signed = by_name["signed_up"]
    assert signed["event_id"] == uuid.UUID(event_uuid).int
    assert (signed["user_id"], signed["anonymous_id"], signed["session_id"]) == (
        "u1",
        None,
        "sess-1",
    )
    assert signed["client_timestamp"] == iso_ms("2026-11-22T10:00:00.250+00:00")
    assert signed["properties"]["plan"] == "pro"
    assert signed["properties"]["$set"] == {"email": "a@example.com"}
    assert signed["properties"]["$lib"] == "posthog-python"
    assert "token" not in signed["properties"] and "api_key" not in signed["extras"]
    assert signed["extras"]["distinct_id"] == "u1"

    identify = by_name["$identify"]
    assert (identify["user_id"], identify["anonymous_id"]) == ("u1", "anon-1")

    person = by_name["$set"]
    assert person["user_id"] == "u1"
    assert person["extras"]["$set"] == {"name": "Ada"}

    alias = by_name["$create_alias"]  # posthog-python: distinct_id = previous id
    assert alias["user_id"] == "anon-1"
    assert alias["properties"]["alias"] == "u1"

    group = by_name["$groupidentify"]
    assert group["properties"]["$group_type"] == "company"
    assert group["properties"]["$group_set"] == {"seats": 5}


# ------------------------------------------------------------ posthog-js (from source)

# posthog-js (packages/browser/src/request.ts, posthog-core.ts, request-queue.ts at
# 9b2a1b18): a batch is {api_key: properties.token, batch, sent_at} ("capture-body"),
# each queued event carries "offset" (ms before sending) instead of "timestamp", the body
# is gzip sent as text/plain with no compression parameter; a sendBeacon body is the
# form field data= holding base64 of the JSON, with ?compression=base64.


PAGEVIEW_UUID = "0192f3c4-5b6a-7c8d-9e0f-1a2b3c4d5e6f"  # posthog-js mints UUIDv7s


def _js_event(name: str, distinct_id: str, **props: Any) -> dict[str, Any]:
    return {
        "uuid": PAGEVIEW_UUID if name == "$pageview" else str(uuid.uuid4()),
        "event": name,
        "properties": {"token": KEY, "distinct_id": distinct_id, "$device_id": "dev-1",
                       "$session_id": "sess-js", "$lib": "web", **props},
        "offset": 1500,
    }  # fmt: skip


def _js_batch() -> dict[str, Any]:
    return {
        "api_key": KEY,
        "batch": [
            _js_event("$pageview", "dev-1", **{"$user_state": "anonymous",
                                               "$current_url": "https://example.com/"}),
            _js_event("$identify", "u1", **{"$anon_distinct_id": "dev-1",
                                            "$user_state": "identified"}),
        ],
        "sent_at": "2026-11-22T10:00:05.000Z",
    }  # fmt: skip


def test_posthog_js_gzip_text_plain_without_a_compression_parameter() -> None:
    body = gzip.compress(json.dumps(_js_batch()).encode())
    req = Captured("POST", "/e/", {"ver": "1.300.0"}, {"content-type": "text/plain"}, body)
    decoded, rows, errors = through_sluice(req, now_ms=iso_ms("2026-11-22T10:00:05+00:00"))
    assert errors == [] and decoded.token == KEY
    view, ident = rows
    assert view["event"] == "$pageview"
    assert (view["anonymous_id"], view["user_id"], view["session_id"]) == ("dev-1", None, "sess-js")
    # offset: 1,500 ms before sent_at (the client's clock, then corrected for its skew)
    assert view["client_timestamp"] == iso_ms("2026-11-22T10:00:03.500+00:00")
    assert view["event_id"] == uuid.UUID(PAGEVIEW_UUID).int
    assert view["extras"]["offset"] == 1500
    assert "token" not in view["properties"]
    assert (ident["user_id"], ident["anonymous_id"]) == ("u1", "dev-1")


def test_posthog_js_send_beacon_form_data_base64() -> None:
    b64 = base64.b64encode(json.dumps(_js_batch()).encode()).decode()
    body = ("data=" + quote(b64, safe="")).encode()
    req = Captured("POST", "/e/", {"compression": "base64"},
                   {"content-type": "application/x-www-form-urlencoded"}, body)  # fmt: skip
    decoded, rows, errors = through_sluice(req)
    assert errors == [] and decoded.token == KEY and len(rows) == 2


def test_old_posthog_js_lz64_form_body() -> None:
    # posthog-js before 1.62 (src/compression.ts, src/send-request.ts at fcdd0b9f^):
    # data=<encodeURIComponent(LZString.compressToBase64(json))>&compression=lz64, events
    # as a bare array with the key only in properties.token. The fixture is lz-string
    # 1.5.0's own output (npm), for a payload with non-ASCII and a non-BMP character.
    plain = ('[{"event":"$pageview","properties":{"distinct_id":"anon-1","token":"sluice_pub_x",'
             '"$current_url":"https://example.com/ü/€/😀","$session_id":"s-1"},'
             '"timestamp":"2026-11-22T10:00:00.000Z"}]')  # fmt: skip
    lz64 = (
        "NobwRApgbhB2AuYBcYAkAHAhgc2gSwgHcwAaMdAJwHt0IL4CBnZcAEz0YdgGN4B9PK2RhMsKrAC0ARlJh4VANZxh"
        "jADYBXPNwh906gEZ8AHrNTd1FCnH4XVwgBbx46RkgD0biEcwBbdKogAOm4qHzcAH7dAGoI3QF4NwAA900YIRkY8cQE"
        "hFEZpMABfMgYfFPhfdGEAJgAGCoA2aSkJCoqAFSkqpCqOrsCuqoAtfIBdIA==="
    )
    assert sdk.lz_decompress_from_base64(lz64, MAX) == plain
    body = ("data=" + quote(lz64, safe="") + "&compression=lz64").encode()
    decoded, rows, errors = through_sluice(
        Captured("POST", "/e/", {"_": "1763805605000"}, {}, body)
    )
    assert errors == [] and decoded.token == "sluice_pub_x"
    assert decoded.sent_at == 1763805605000  # older builds' ?_= send time
    assert rows[0]["properties"]["$current_url"] == "https://example.com/ü/€/😀"
    assert rows[0]["anonymous_id"] is None and rows[0]["user_id"] == "anon-1"
    assert sdk.lz_decompress_from_base64("Q===", 10) == ""  # compressToBase64("")


def test_posthog_single_event_and_trailing_slash_free_paths() -> None:
    body = json.dumps({"event": "clicked", "api_key": KEY, "distinct_id": 42,
                       "timestamp": "2026-11-22T10:00:00Z"}).encode()  # fmt: skip
    for path in ("/capture", "/capture/", "/i/v0/e", "/track/", "/batch"):
        decoded, rows, errors = through_sluice(Captured("POST", path, {}, {}, body))
        assert errors == [] and decoded.token == KEY and rows[0]["user_id"] == "42"


# -------------------------------------------------------- analytics-next (from source)

# analytics-next (packages/browser/src/plugins/segmentio/{index,normalize,
# fetch-dispatcher,shared-dispatcher,batched-dispatcher}.ts at 0c4fa881): one message per
# request to {protocol}://{apiHost}/<first letter of type>, JSON as Content-Type
# text/plain, writeKey and sentAt in the message, Authorization: Basic base64(key:);
# batching mode posts {writeKey, batch (without sentAt), sentAt} to /b.


def _next_message(kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": kind, "messageId": "ajs-next-1732270000000-5e6f7a8b", "anonymousId": "anon-7",
        "userId": None, "timestamp": "2026-11-22T10:00:00.000Z",
        "context": {"page": {"path": "/pricing"}, "userAgent": "Mozilla/5.0",
                    "library": {"name": "analytics.js", "version": "next-1.70.0"}},
        "integrations": {}, "writeKey": KEY, "sentAt": "2026-11-22T10:00:00.020Z",
        "_metadata": {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []},
        **fields,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("path", "message", "name"),
    [
        ("/v1/t", _next_message("track", event="Clicked", properties={"x": 1}), "Clicked"),
        ("/v1/p", _next_message("page", name="Pricing", properties={"path": "/pricing"}),
         "$pageview"),
        ("/v1/i", _next_message("identify", userId="u7", traits={"email": "b@example.com"}),
         "$identify"),
        ("/v1/g", _next_message("group", groupId="g1", traits={"name": "G"}), "$groupidentify"),
        ("/v1/a", _next_message("alias", userId="u7", previousId="anon-7"), "$create_alias"),
    ],
)  # fmt: skip
def test_analytics_next_single_message_with_write_key_in_the_body(
    path: str, message: dict[str, Any], name: str
) -> None:
    req = Captured("POST", path, {}, {"content-type": "text/plain"}, json.dumps(message).encode())
    decoded, rows, errors = through_sluice(req)
    assert errors == [] and decoded.token == KEY
    assert decoded.sent_at == "2026-11-22T10:00:00.020Z"
    (row,) = rows
    assert row["event"] == name and row["anonymous_id"] == "anon-7"
    assert row["extras"]["context"]["page"] == {"path": "/pricing"}
    assert row["extras"]["_metadata"]["bundled"] == ["Segment.io"]
    assert "writeKey" not in row["extras"]
    assert row["event_id"] == uuid.uuid5(PROJECT, "ajs-next-1732270000000-5e6f7a8b").int
    for key in ("traits", "groupId", "previousId"):
        if key in message:
            assert row["extras"][key] == message[key]


def test_analytics_next_batching_mode_and_rudderstack_beacon_query_key() -> None:
    batch = [_next_message("track", event=f"e{i}", messageId=f"ajs-next-{i}") for i in range(3)]
    for m in batch:
        del m["sentAt"]
    body = json.dumps({"writeKey": KEY, "batch": batch, "sentAt": "2026-11-22T10:00:01Z"})
    decoded, rows, errors = through_sluice(Captured("POST", "/v1/b", {}, {}, body.encode()))
    assert (
        errors == [] and decoded.token == KEY and [r["event"] for r in rows] == ["e0", "e1", "e2"]
    )
    # RudderStack's beacon: the key only in the query string
    del_key = json.dumps({"batch": [dict(batch[0], writeKey=None)]}).encode()
    decoded = sdk.decode(sdk.ROUTES["/beacon/v1/batch"], del_key, {"writeKey": "rs_key"}, None,
                         0, MAX)  # fmt: skip
    assert decoded.token == "rs_key"


# ------------------------------------------------------------------ failures, answers


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/e/", b"\x1f\x8b\x08\x00garbage", "gzip"),
        ("/e/", b"data=!!!notbase64", "base64"),
        ("/e/", b"not json", "JSON"),
        ("/v1/batch", b'{"batch": 3}', "batch must be a list"),
        ("/v1/batch", b"[1]", "JSON object"),
        ("/batch/", b'"x"', "JSON array"),
    ],
)
def test_an_undecodable_body_is_a_bad_request_with_the_reason(
    path: str, body: bytes, reason: str
) -> None:
    with pytest.raises(BadRequest, match=reason):
        sdk.decode(sdk.ROUTES[path], body, {}, None, 0, MAX)


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v1/batch", '{"batch": [{"type": "track", "event": "e", "userId": "u", '
         '"timestamp": "2026-11-22T10:00:00Z", "properties": %s, "context": {"n": 1.0}}]}'),
        ("/batch/", '{"api_key": "k", "batch": [{"event": "e", "distinct_id": "u", '
         '"timestamp": "2026-11-22T10:00:00Z", "properties": %s}]}'),
    ],
)  # fmt: skip
def test_values_are_stored_as_sent(path: str, template: str) -> None:
    # as on the native path: an integer of any size, a number's spelling, escapes
    properties = '{"big":123456789012345678901234567890,"price":9.50,"s":"\\u00e9"}'
    body = (template % properties).encode()
    req = Captured("POST", path, {}, {"authorization": "Basic " + base64.b64encode(
        b"k:").decode()}, body)  # fmt: skip
    _, rows, errors = through_sluice(req)
    assert errors == []
    assert rows[0]["properties_text"] == properties


def test_a_gzip_bomb_by_magic_bytes_is_too_large() -> None:
    bomb = gzip.compress(b"[" + b" " * 2_000_000 + b"]")
    with pytest.raises(sdk.BodyTooLarge):
        sdk.decode(sdk.ROUTES["/e/"], bomb, {}, None, 0, 1_000_000)


def test_a_bad_message_is_rejected_by_its_index_not_the_request() -> None:
    body = json.dumps({"api_key": KEY, "batch": [
        {"event": "ok", "distinct_id": "u", "timestamp": "2026-11-22T10:00:00Z"},
        "not an event",
        {"distinct_id": "u"},
    ]}).encode()  # fmt: skip
    _, rows, errors = through_sluice(Captured("POST", "/batch/", {}, {}, body))
    assert len(rows) == 1
    assert errors == [{"index": 1, "reason": "event must be an object"},
                      {"index": 2, "reason": "event required"}]  # fmt: skip


def test_answers_are_200_with_each_familys_body() -> None:
    assert sdk.respond(sdk.SEGMENT, 202, {"accepted": 2, "rejected": 0, "errors": []}) == (
        200, {"success": True, "accepted": 2, "rejected": 0, "errors": []})  # fmt: skip
    assert sdk.respond(sdk.POSTHOG, 200, {"accepted": 0})[0] == 200
    assert sdk.respond(sdk.POSTHOG, 202, {})[1]["status"] == 1
    status, body = sdk.respond(sdk.POSTHOG, 401, {"error": "unauthorized"})
    assert status == 401 and body["detail"] == "unauthorized"
    status, body = sdk.respond(sdk.SEGMENT, 503, {"error": "ingest buffer full"})
    assert status == 503 and body["message"] == "ingest buffer full"


def test_statuses_an_sdk_would_drop_but_should_retry_become_503() -> None:
    assert sdk.respond(sdk.SEGMENT, 408, {"error": "timeout"})[0] == 503
    assert sdk.respond(sdk.POSTHOG, 408, {"error": "timeout"})[0] == 503
    assert sdk.respond(sdk.POSTHOG, 429, {"error": "slow down"})[0] == 503  # posthog-js drops 429
    assert sdk.respond(sdk.SEGMENT, 429, {"error": "slow down"})[0] == 429  # Segment's retry it


def test_segment_settings_point_analytics_next_at_this_host() -> None:
    settings = sdk.segment_settings(KEY, "events.example.com:8080", "http")
    segmentio = settings["integrations"]["Segment.io"]
    # analytics-next sends to `${protocol}://${apiHost}/t`
    assert (
        f"{segmentio['protocol']}://{segmentio['apiHost']}/t"
        == "http://events.example.com:8080/v1/t"
    )
    assert segmentio["apiKey"] == KEY and settings["metrics"]["sampleRate"] == 0


# ------------------------------------------- browser SDKs, recorded (tests/fixtures/sdk)

# posthog-js 1.449.2 and analytics-next 1.84.3, run in jsdom (node) against a capture
# server that answered with this module's documents; capture_server.py says how.
FIXTURES = Path(__file__).parent / "fixtures" / "sdk"


def recorded(name: str) -> list[Captured]:
    requests = []
    for line in (FIXTURES / name).read_text().splitlines():
        r = json.loads(line)
        parts = urlsplit(r["path"])
        requests.append(Captured(r["method"], parts.path, dict(parse_qsl(parts.query)),
                                 r["headers"], base64.b64decode(r["body_b64"])))  # fmt: skip
    return requests


def test_posthog_js_recorded_requests() -> None:
    requests = recorded("posthog-js-1.449.2.jsonl")
    sends = [r for r in requests if r.path == "/e/"]
    # gzip, as text/plain, with no compression parameter and no query at all
    assert all(r.body[:2] == b"\x1f\x8b" and r.query == {} for r in sends)
    assert all(r.headers["content-type"] == "text/plain" for r in sends)
    assert any(r.path == "/flags/" for r in requests)  # answered with POSTHOG_FLAGS
    rows = []
    for req in sends:
        decoded, got, errors = through_sluice(req)
        assert errors == [] and decoded.token == "sluice_pub_phjs"
        rows += got
    by_name = {row["event"]: row for row in rows}
    assert sorted(by_name) == sorted(["$pageview", "clicked_buy", "$identify",
                                      "$create_alias", "$groupidentify"])  # fmt: skip
    device = by_name["clicked_buy"]["properties"]["$device_id"]
    anonymous = by_name["clicked_buy"]
    assert (anonymous["user_id"], anonymous["anonymous_id"]) == (None, device)
    assert anonymous["properties"] == {**anonymous["properties"], "plan": "pro", "price": 9.5}
    assert "token" not in anonymous["properties"]
    assert anonymous["session_id"] == anonymous["properties"]["$session_id"]
    identify = by_name["$identify"]
    assert (identify["user_id"], identify["anonymous_id"]) == ("u-42", device)
    assert identify["extras"]["$set"] == {"email": "a@example.com"}
    assert identify["extras"]["$set_once"]["first_seen"] == "2026"
    alias = by_name["$create_alias"]
    assert (alias["user_id"], alias["properties"]["alias"]) == ("u-42", "alias-1")
    group = by_name["$groupidentify"]
    assert group["properties"]["$group_key"] == "acme"
    for row in rows:  # posthog-js mints UUIDv7s: they are the event ids
        assert uuid.UUID(int=row["event_id"]).version == 7


@pytest.mark.parametrize("name", ["analytics-next-1.84.3.jsonl",
                                  "analytics-next-1.84.3-batching.jsonl"])  # fmt: skip
def test_analytics_next_recorded_requests(name: str) -> None:
    requests = recorded(name)
    # It asked Sluice for its settings first, then sent where they pointed it.
    assert (
        requests[0].method == "GET" and requests[0].path == "/v1/projects/sluice_pub_ajs/settings"
    )
    sends = requests[1:]
    expected = (
        {"/v1/p", "/v1/t", "/v1/i", "/v1/g", "/v1/a"} if "batching" not in name else {"/v1/b"}
    )
    assert {r.path for r in sends} == expected
    basic = "Basic " + base64.b64encode(b"sluice_pub_ajs:").decode()
    assert all(r.headers["authorization"] == basic for r in sends)
    assert all(r.headers["content-type"] == "text/plain" for r in sends)
    rows = []
    for req in sends:
        decoded, got, errors = through_sluice(req)
        assert errors == [] and decoded.token == "sluice_pub_ajs"
        rows += got
    assert [r["event"] for r in rows] == ["$pageview", "Clicked Buy", "$identify",
                                          "$groupidentify", "$create_alias"]  # fmt: skip
    page, track, identify, group, alias = rows
    assert page["properties"]["path"] == "/pricing"
    assert (page["extras"]["name"], page["extras"]["category"]) == ("Pricing", "Docs")
    assert page["extras"]["context"]["page"]["url"] == "https://shop.example/pricing"
    assert track["properties"] == {"price": 9.5}
    assert identify["user_id"] == "u-7" and identify["extras"]["traits"]["email"] == "b@example.com"
    assert group["extras"]["groupId"] == "g-1" and group["extras"]["traits"] == {"name": "Acme"}
    # analytics.alias("u-7-new") went out as userId "u-7", previousId "u-7" (that is what
    # analytics-next 1.84.3 sends here); the mapping keeps exactly that.
    assert alias["user_id"] == "u-7" and alias["extras"]["previousId"] == "u-7"
    anonymous_ids = {r["anonymous_id"] for r in rows}
    assert len(anonymous_ids) == 1 and None not in anonymous_ids
    for row in rows:  # "ajs-next-<ms>-<uuid>": not a UUID → uuid5, the original kept
        assert row["extras"]["messageId"].startswith("ajs-next-")
        assert row["event_id"] == uuid.uuid5(PROJECT, row["extras"]["messageId"]).int
        assert "writeKey" not in row["extras"]
