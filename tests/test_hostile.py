"""Hostile input (issue 11): what validation accepts can be stored in both stores, and
nothing a client sends makes a 5xx, a traceback or a fatal instance.

The zoo below is one body of events written by hand, byte for byte: most of them cannot
be produced by a JSON encoder (``1e400``, lone surrogate escapes, 4,300-digit integers).
Each names the reason it must be rejected with, or ``None`` when it must be stored.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import time
import uuid
from typing import Any

import brotli
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import make_project
from support import (
    Postgres,
    clickhouse_rows,
    db_name,
    dead_clickhouse_url,
    event,
    poll,
    request,
)

from ingest.app import start_service, stop_service
from ingest.config import load_config
from ingest.deadletter import DeadLetter
from ingest.http import build_app
from ingest.ids import uuid_str
from ingest.rows import LINE_COLUMNS, TABLE, lines_to_rows, payload_rows
from ingest.validate import decode_request, validate

NOW = 1_795_000_000_000
DEEP = 700  # levels of nesting the decoder takes at any stack depth a test runs at
UNICODE = "{} contains a NUL character or invalid Unicode".format


def _event(fields: bytes, name: bytes = b'"zoo"', ts: bytes = b"1795000000000") -> bytes:
    return b'{"event": ' + name + b', "timestamp": ' + ts + (b", " + fields if fields else b"")


ZOO: list[tuple[str, bytes, str | None]] = [
    ("numbers out of float range", _event(
        b'"properties": {"a": 1e400, "b": -1e400, "c": 1e-400, "d": 1E+999999, '
        b'"e": -0.0e-99999, "f": -0, "g": 1.7976931348623157e308, "h": 5e-324}}'), None),
    ("the largest integer the decoder takes", _event(
        b'"properties": {"n": ' + b"9" * 4300 + b', "m": -' + b"9" * 4300 + b"}}"), None),
    ("20,000 fraction digits", _event(b'"properties": {"x": 0.' + b"1" * 20_000 + b"}}"), None),
    ("deep nesting", _event(b'"properties": {"x": ' + b"[" * DEEP + b"]" * DEEP + b"}}"), None),
    ("deep objects", _event(b'"properties": ' + b'{"a": ' * DEEP + b"1" + b"}" * DEEP + b"}"),
     None),
    ("escaped backslashes before u0000 and ud800", _event(
        b'"properties": {"x": "\\\\u0000 \\\\ud800 \\\\\\\\u0000"}}'), None),
    ("surrogate pairs, raw astral, separators, BOM, non-characters", _event(
        b'"properties": {"e": "\\ud83d\\ude00 \xf0\x9f\x98\x80 \\u2028\\u2029 \\ufeff '
        b'\\uffff \xf4\x8f\xbf\xbf", "\\ud83d\\ude00": 1}}'), None),
    ("every other control character", _event(
        b'"properties": {"c": "' + b"".join(b"\\u%04x" % i for i in range(1, 32))
        + b'\\b\\f\\n\\r\\t\\"\\/"}}'), None),
    ("duplicate keys, empty key, markup", _event(
        b'"properties": {"a": 1, "a": 2, "": "</script><script>alert(1)</script>"}}'), None),
    ("a name of odd characters", _event(
        b"", name=b'"\\u0001\\u001f \\u202e\xd7\x90 e\xcc\x81 \\ud83d\\ude00"') + b"}", None),
    ("ids of every kind", _event(
        b'"userId": ' + b"7" * 200 + b', "anonymousId": "\\ud83d\\ude00\\t", '
        b'"session_id": "\\u00e9\\\\u0000"}'), None),
    ("stray fields with hostile values", _event(
        b'"zz": 1e400, "deep": ' + b"[" * DEEP + b"]" * DEEP + b', "": {"\\u2028": null}, '
        b'"extras": {"k": -1e400}, "context": {"n": 1E+999999}}'), None),
    ("null objects, epoch seconds", _event(
        b'"properties": null, "extras": null}', ts=b"1794999999.999"), None),
    ("the earliest and a far-future time", _event(
        b'"sent_at_is_stray": "x"}', ts=b'"1900-01-01T00:00:00+00:00"'), None),
    ("a 30 KB string", _event(b'"properties": {"s": "' + b"x" * 30_000 + b'"}}'), None),
    ("NUL in the name", _event(b"", name=b'"a\\u0000b"') + b"}", UNICODE("event")),
    ("NUL in properties", _event(b'"properties": {"x": "\\u0000"}}'), UNICODE("properties")),
    ("NUL in a key", _event(b'"properties": {"\\u0000": 1}}'), UNICODE("properties")),
    ("NUL in a stray key", _event(b'"k\\u0000": 1}'), UNICODE("extras")),
    ("NUL in an id", _event(b'"userId": "u\\u0000"}'), UNICODE("userId")),
    ("a lone high surrogate", _event(b'"properties": {"x": "\\ud83d"}}'), UNICODE("properties")),
    ("a lone low surrogate", _event(b'"context": {"x": "\\ude00\\ud83d"}}'), UNICODE("extras")),
    ("a lone surrogate in the name", _event(b"", name=b'"\\udbff"') + b"}", UNICODE("event")),
    ("a timestamp out of range", _event(b"", ts=b"1e400") + b"}", "timestamp out of range"),
    ("epoch seconds past 2300", _event(b"", ts=b"99999999999") + b"}", "timestamp out of range"),
    ("a name of 1e400", b'{"event": 1e400, "timestamp": 1}', "event must be a string"),
    ("an integer id of 201 digits", _event(b'"user_id": ' + b"1" * 201 + b"}"),
     "user_id too long"),
    ("too large", _event(b'"properties": {"s": "' + b"x" * 33_000 + b'"}}'), "event too large"),
    ("a duplicate id", _event(b'"uuid": "%s"}' % str(uuid.UUID(int=7)).encode()), None),
    ("the same id again", _event(b'"messageId": "%s"}' % str(uuid.UUID(int=7)).upper().encode()),
     "duplicate id in batch"),
]  # fmt: skip


def zoo_body(token: str | None = None) -> bytes:
    head = b'{"token": "' + token.encode() + b'", ' if token else b"{"
    return head + b'"events": [' + b", ".join(raw for _, raw, _ in ZOO) + b"]}"


def zoo_outcome() -> tuple[int, list[dict]]:
    """(events stored, the errors by index) the zoo must produce."""
    errors = [{"index": i, "reason": r} for i, (_, _, r) in enumerate(ZOO) if r is not None]
    return len(ZOO) - len(errors), errors


def test_the_zoo_is_judged_event_by_event() -> None:
    result = validate(decode_request(zoo_body()).events, uuid.uuid4().int, NOW)
    stored, errors = zoo_outcome()
    assert result.errors == errors
    assert result.count == stored


async def test_what_validation_accepts_is_storable_in_postgres_and_clickhouse(pool, ch) -> None:
    """Every accepted event of the zoo: parked in the dead-letter table (Postgres jsonb)
    and read back equal; inserted into ClickHouse and read back equal — one event at a
    time too, so that one store refusing one event names it."""
    result = validate(decode_request(zoo_body()).events, uuid.uuid4().int, NOW)
    assert result.count == zoo_outcome()[0]
    rows = lines_to_rows(result.data)
    lines = [line + b"\n" for line in result.data.split(b"\n")[:-1]]
    deadletter = DeadLetter(pool)
    for row, line in zip(rows, lines, strict=True):
        await deadletter.park(str(uuid.uuid4()), [row], "zoo")
        await ch.insert_lines(TABLE, [line], LINE_COLUMNS, str(uuid.uuid4()))
    batch_id = str(uuid.uuid4())
    await deadletter.park(batch_id, rows, "zoo, one batch")
    stored = await pool.fetchval("SELECT batch::text FROM failed_events WHERE id = $1",
                                 uuid.UUID(batch_id))  # fmt: skip
    expected = [[uuid_str(r[0]), uuid_str(r[1]), *r[2:]] for r in rows]
    assert payload_rows(stored) == expected
    in_clickhouse = await ch.query_rows(
        "SELECT toString(event_id), toString(project_id), event, anonymous_id, user_id, "
        "session_id, toUnixTimestamp64Milli(timestamp), toUnixTimestamp64Milli(received_at), "
        "properties, extras, toUnixTimestamp64Milli(client_timestamp), user_agent, browser, "
        "os, device_type, is_bot FROM events_raw_v1"
    )
    assert sorted(map(list, in_clickhouse)) == sorted(expected)
    assert rows[0][8].startswith('{"a": 1e400, "b": -1e400')  # object text as sent


# --- through real servers -------------------------------------------------------------

INGEST = "/api/v1/ingest/events"
OK = b'{"event": "ok", "timestamp": 1795000000000}'
UNAUTHORIZED = {"error": "unauthorized"}


def env(events: bytes = OK, extra: bytes = b"") -> bytes:
    """A body whose token is filled in per server (``TOKEN``)."""
    return b'{"token": "TOKEN", ' + extra + b'"events": [' + events + b"]}"


def send(
    port: int,
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    path: str = INGEST,
    chunked: bool = False,
) -> tuple[int, Any, dict[str, str]]:
    """One request on its own connection: (status, JSON reply, headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        if chunked:
            conn.putrequest(method, path)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for i in range(0, len(body), 100):
                part = body[i : i + 100]
                conn.send(b"%x\r\n%s\r\n" % (len(part), part))
            conn.send(b"0\r\n\r\n")
        else:
            conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        assert resp.getheader("Content-Type", "").startswith("application/json"), raw
        return resp.status, json.loads(raw), dict(resp.getheaders())
    finally:
        conn.close()


def accepted(n: int, errors: list[dict] | None = None) -> dict:
    errors = errors or []
    return {"accepted": n, "rejected": len(errors), "errors": errors}


def hostile_requests() -> list[tuple[str, bytes, dict[str, str], dict[str, Any], int, Any]]:
    """(label, body, headers, send() options, status, reply): a reply that is a string is
    the start of the error text (the rest is the JSON decoder's own wording); the option
    ``encode`` compresses the body once its token is filled in."""
    stored, zoo_errors = zoo_outcome()
    many_keys = b"{" + b", ".join(b'"k%d": 1' % i for i in range(100_000)) + b', "events": []}'
    lone = b'{"event": "cut \\ud83d", "timestamp": 1795000000000}'
    return [
        ("not UTF-8", b'{"events": [{"event": "\xff", "timestamp": 1}]}', {}, {}, 400,
         {"error": "body is not valid UTF-8 (byte 23): JSON must be sent as UTF-8"}),
        ("UTF-16", env().decode().encode("utf-16"), {}, {}, 400,
         {"error": "body is not valid UTF-8 (byte 0): JSON must be sent as UTF-8"}),
        ("every byte value", bytes(range(256)), {}, {}, 400,
         {"error": "body is not valid UTF-8 (byte 128): JSON must be sent as UTF-8"}),
        ("empty", b"", {}, {}, 400, "body is not valid JSON: "),
        ("NaN", env(b'{"event": "e", "timestamp": NaN}'), {}, {}, 400, "body is not valid JSON: "),
        ("Infinity", env(b'{"event": "e", "timestamp": 1, "properties": {"x": -Infinity}}'),
         {}, {}, 400, "body is not valid JSON: "),
        ("a raw NUL byte", env(b'{"event": "\x00", "timestamp": 1}'), {}, {}, 400,
         "body is not valid JSON: "),
        ("100,000 levels", env(b'{"event": "e", "properties": {"x": ' + b"[" * 100_000
                               + b"]" * 100_000 + b"}}"), {}, {}, 400,
         {"error": "body is not valid JSON: nested too deeply"}),
        ("an array", b"[1, 2]", {}, {}, 400,
         {"error": 'body must be a JSON object: {"token": ..., "events": [...]}'}),
        ("100,000 envelope keys", many_keys, {}, {}, 400,
         {"error": "unknown envelope key(s): k0, k1, k10, k100, k1000, …; allowed: token, "
                   "events, sent_at (event fields go inside each event)"}),
        ("too many events", env(b", ".join([OK] * 10_001)), {}, {}, 400,
         {"error": "too many events: 10001 > 10000 per request; split the batch"}),
        ("sent_at 1e400", env(extra=b'"sent_at": 1e400, '), {}, {}, 400,
         {"error": "sent_at invalid: send an ISO 8601 string or an epoch number"}),
        ("token 1e400", b'{"token": 1e400, "events": []}', {}, {}, 401, UNAUTHORIZED),
        ("token and a newline", b'{"token": "TOKEN\\n", "events": []}', {}, {}, 401,
         UNAUTHORIZED),
        ("a bad bearer: the body is not read", b"not json", {"Authorization": "Bearer x"}, {},
         401, UNAUTHORIZED),
        ("header and body tokens differ", b'{"token": "sluice_pub_' + b"A" * 32
         + b'", "events": []}', {"Authorization": "Bearer TOKEN"}, {}, 400,
         {"error": "the token in the body differs from the Authorization header"}),
        ("not gzip", env(), {"Content-Encoding": "gzip"}, {}, 400,
         "could not decode the request body: "),
        ("not brotli", env(), {"Content-Encoding": "br"}, {}, 400,
         {"error": "could not decode the request body: Can not decode content-encoding: br"}),
        ("GET", b"", {}, {"method": "GET"}, 405, {"error": "Method Not Allowed"}),
        ("elsewhere", b"", {}, {"path": "/api/v1/../../etc/passwd"}, 404,
         {"error": "Not Found"}),
        # --- these are (partly) accepted ---
        ("brotli", env(), {"Content-Encoding": "br"}, {"encode": brotli.compress}, 202,
         accepted(1)),
        ("gzip, chunked", env(), {"Content-Encoding": "gzip"},
         {"chunked": True, "encode": gzip.compress}, 202, accepted(1)),
        ("a byte order mark", b"\xef\xbb\xbf" + env(), {}, {}, 202, accepted(1)),
        ("an odd content type", env(), {"Content-Type": "image/png; charset=utf-16"}, {}, 202,
         accepted(1)),
        ("an 8,000-byte header", env(), {"X-Pad": "a" * 8000}, {}, 202, accepted(1)),
        ("a Latin-1 header", env(), {"X-Name": "caf\xe9"}, {}, 202, accepted(1)),
        ("the bearer only", b'{"events": [' + OK + b"]}", {"Authorization": "Bearer TOKEN"},
         {}, 202, accepted(1)),
        ("a lone surrogate costs its event only", env(OK + b", " + lone), {}, {}, 202,
         accepted(1, [{"index": 1, "reason": UNICODE("event")}])),
        ("epoch seconds", env(b'{"event": "s", "timestamp": 1794999999.5}'), {}, {}, 202,
         accepted(1)),
        ("no events", env(b""), {}, {}, 200, accepted(0)),
        ("the zoo", zoo_body("TOKEN"), {}, {}, 202, {"accepted": stored,
                                                       "rejected": len(zoo_errors),
                                                       "errors": zoo_errors}),
    ]  # fmt: skip


def five_hundreds(server) -> list[str]:
    text = request(server.url + "/metrics").body.decode()
    return [line for line in text.splitlines() if 'status="5' in line]


@pytest.mark.parametrize("clickhouse", ["unreachable", "embedded"])
def test_hostile_requests_get_a_4xx_or_are_stored_and_nothing_goes_fatal(
    start_server, pg, database_url, clickhouse
) -> None:
    """The issue's check: hostile bodies and headers while ClickHouse is unreachable and
    while it works — exact statuses and replies, no 5xx, no fatal, every accepted event
    stored (or parked), and the next ordinary request of another project is a 202."""
    _, token = make_project(database_url, "hostile")
    env_vars = {"CLICKHOUSE_URL": dead_clickhouse_url()} if clickhouse == "unreachable" else {}
    server = start_server(**env_vars)
    total = 0
    for label, body, headers, options, status, reply in hostile_requests():
        body = body.replace(b"TOKEN", token.encode())
        headers = {k: v.replace("TOKEN", token) for k, v in headers.items()}
        options = dict(options)
        if "encode" in options:
            body = options.pop("encode")(body)
        got_status, got, _ = send(server.port, body, headers, **options)
        if isinstance(reply, str):
            assert (got_status, set(got)) == (status, {"error"}), (label, got)
            assert got["error"].startswith(reply), (label, got)
        else:
            assert (got_status, got) == (status, reply), label
        total += got.get("accepted", 0)
    assert total == zoo_outcome()[0] + 9
    assert server.healthz().json()["fatal"] is False
    _, other = make_project(database_url, "ordinary")
    assert server.post({"token": other, "events": [event()]}).status == 202
    assert five_hundreds(server) == []
    if clickhouse == "unreachable":
        db = db_name(database_url)
        parked = "SELECT coalesce(sum(event_count), 0) FROM failed_events"
        poll(lambda: pg.psql(parked, db) == str(total + 1))
        assert server.healthz().json()["fatal"] is False
        assert server.stop() == 0
    else:
        assert server.stop() == 0, server.logs()
        rows = clickhouse_rows(server.data_dir / "clickhouse", "SELECT count() FROM events_raw_v1")
        assert rows == [(total + 1,)]
    assert "Traceback" not in server.logs()


def _slow_request(port: int, token: str, sent: int, length: int = 1000) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        b"POST " + INGEST.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % length + b"{" * sent
    )
    return sock


def _response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """The response on ``sock`` (status, JSON body) and whatever follows until close."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))  # fmt: skip
    while len(rest) < length:
        rest += sock.recv(65536)
    tail = rest[length:]
    while chunk := sock.recv(65536):  # the server closes the connection: recv returns b""
        tail += chunk
    return int(head.split(b" ")[1]), json.loads(rest[:length]), tail


def test_a_body_trickled_slower_than_the_read_timeout_gets_408_and_the_connection_closes(
    start_server, database_url
) -> None:
    _, token = make_project(database_url)
    server = start_server(INGEST_READ_TIMEOUT="1s")
    sock = _slow_request(server.port, token, sent=10)
    started = time.monotonic()
    try:
        # Trickle a byte every 100 ms: the client is alive, just slower than allowed.
        sock.settimeout(0.1)
        status = None
        while time.monotonic() - started < 20:
            try:
                sock.send(b" ")
            except OSError:
                break  # the server closed the connection on us
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # an answer is there
            except TimeoutError:
                continue
        sock.settimeout(30)
        status, reply, tail = _response(sock)
    finally:
        sock.close()
    assert (status, reply) == (408, {"error": "request body not received within 1 s"})
    assert tail == b""  # closed, nothing more
    assert 0.9 < time.monotonic() - started < 10
    lines = request(server.url + "/metrics").body.decode().splitlines()
    assert "sluice_read_timeouts_total 1.0" in lines
    assert server.post({"token": token, "events": [event()]}).status == 202


def test_slow_bodies_hold_at_most_read_concurrency_slots_and_do_not_block_small_requests(
    start_server, database_url
) -> None:
    """A slowloris holds slots, never more than INGEST_READ_CONCURRENCY bodies; a small
    body that arrived whole needs no slot and is answered at once."""
    _, token = make_project(database_url)
    server = start_server(INGEST_READ_CONCURRENCY="2", INGEST_READ_TIMEOUT="3s")
    socks = [_slow_request(server.port, token, sent=10) for _ in range(2)]
    try:
        poll(lambda: metric(server, "sluice_bodies_reading") == 2.0)
        # Two more wait for a slot; the first two free theirs before these give up.
        socks += [_slow_request(server.port, token, sent=10) for _ in range(2)]
        # Headers and body in one write, so the body does arrive whole with its headers
        # (http.client sends them in two, which under load can reach the server apart).
        status, reply = _whole_request(server.port, {"token": token, "events": [event()]})
        assert status == 202, reply
        assert metric(server, "sluice_bodies_reading") == 2.0  # still two, not four
        replies = [_response(sock)[:2] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    timed_out = (408, {"error": "request body not received within 3 s"})
    assert replies == [timed_out] * 4  # each within its own read timeout


def _whole_request(port: int, doc: Any) -> tuple[int, bytes]:
    """POST ``doc`` with headers and body in one ``sendall``: (status, body)."""
    body = json.dumps(doc).encode()
    head = (f"POST {INGEST} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def metric(server, name: str) -> float | None:
    for line in request(server.url + "/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_allowed_origins_are_enforced_on_the_server_beacons_included(
    start_server, database_url
) -> None:
    _, token = make_project(database_url)
    server = start_server(ALLOWED_ORIGINS="https://shop.example")
    body = json.dumps({"token": token, "events": [event()]}).encode()
    beacon = {"Content-Type": "text/plain;charset=UTF-8"}
    for origin in ("https://evil.example", "null", "https://shop.example.evil.example"):
        status, reply, headers = send(server.port, body, {**beacon, "Origin": origin})
        assert (status, reply) == (403, {"error": "origin not allowed"}), origin
        assert "Access-Control-Allow-Origin" not in headers
    status, _, headers = send(server.port, body, {"Origin": "https://shop.example/"})
    assert status == 202 and headers["Access-Control-Allow-Origin"] == "https://shop.example/"
    assert send(server.port, body, beacon)[0] == 202  # no Origin: not a browser's request
    assert metric(server, "sluice_origin_refused_total") == 3.0


def test_healthz_gives_the_store_error_text_only_to_requests_without_an_origin(
    start_server, own_pg: Postgres
) -> None:
    dsn = own_pg.dsn()
    _, token = make_project(dsn)
    server = start_server(DATABASE_URL=dsn, CLICKHOUSE_URL=dead_clickhouse_url())
    assert server.post({"token": token, "events": [event()]}).status == 202
    poll(lambda: own_pg.psql("SELECT count(*) FROM failed_events") == "1")
    own_pg.stop()
    assert server.post({"token": token, "events": [event()]}).status == 202
    poll(lambda: server.healthz().json()["fatal"] is True)
    local = server.healthz().json()
    assert local["fatal_reason"]  # monitoring, curl: the raw text, to act on
    page = request(server.url + "/healthz", headers={"Origin": "https://any.example"})
    assert page.status == 503
    assert page.json()["fatal"] is True and "fatal_reason" not in page.json()
    own_pg.start()
    poll(lambda: server.healthz().json()["fatal"] is False)


async def test_an_unexpected_exception_is_a_json_500_logged_with_its_traceback_and_counted(
    database_url, tmp_path
) -> None:
    """Nothing a client sends reaches this path any more; a bug still must not leave as
    aiohttp's text page. A route that raises, on the real app over real stores."""
    config = load_config({"DATABASE_URL": database_url, "DATA_DIR": str(tmp_path),
                          "CLICKHOUSE_URL": dead_clickhouse_url()})  # fmt: skip
    service = await start_service(config)
    app = build_app(service)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app.router.add_get("/boom", boom)
    try:
        async with TestClient(TestServer(app)) as client:
            with structlog.testing.capture_logs() as logs:
                replies = [await client.get("/boom") for _ in range(3)]
                bodies = [await r.json() for r in replies]
            metrics = await (await client.get("/metrics")).text()
    finally:
        await stop_service(service)
    assert [r.status for r in replies] == [500, 500, 500]
    assert bodies == [{"error": "internal server error"}] * 3
    lines = [e for e in logs if e["event"] == "unhandled_error"]
    assert len(lines) == 1  # repeats within LOG_EVERY are counted, not written
    assert lines[0]["exc_info"] is True and lines[0]["path"] == "/boom"
    assert "sluice_unhandled_errors_total 3.0" in metrics.splitlines()
    assert 'sluice_http_requests_total{route="/boom",status="500"} 3.0' in metrics.splitlines()
