"""Generated hostile bodies (hypothesis) through the real decoder and validator, and
through a real server: nothing a client sends is a 5xx, and what is accepted is
storable.

The bodies are JSON written by Python's own encoder, which writes what a careless or
malicious client would: ``NaN``/``Infinity`` literals, integers of any size, lone
surrogates as ``\\udXXX`` escapes (or, unescaped, as bytes that are not UTF-8), NUL
characters, deep nesting; some are then cut or have bytes spliced in. Examples are
derandomized and bounded, so every run checks the same few hundred bodies quickly.
"""

from __future__ import annotations

import http.client
import json
import uuid
from typing import Any

import msgspec
import orjson
from conftest import make_project
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import db_name, dead_clickhouse_url, event, poll, request

from ingest.rows import COLUMNS, encode_payload, lines_to_rows
from ingest.validate import (
    MAX_EVENTS_PER_REQUEST,
    BadRequest,
    Invalid,
    decode_request,
    has_nul_escape,
    parse_timestamp,
    validate,
)

PROJECT = uuid.uuid4().int
TOKEN = "sluice_pub_" + "T" * 32
NOW = 1_795_000_000_000
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Every kind of code point: NUL and other controls, lone surrogates, astral characters.
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
special_text = st.sampled_from(
    ["\x00", "\ud800", "\udfff", "\ud83d\ude00", "a\\u0000", "\\", "\u2028", "é", ""]
)
plain_text = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=12)
texts = st.one_of(plain_text, plain_text, any_text, special_text)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),  # NaN and ±Infinity included: the encoder writes them as literals
    st.sampled_from([0, -1, 1_732_270_000, 1_732_270_000.5, 10**11, 2**63, 1e308, 5e-324]),
)
good_timestamps = st.one_of(
    st.integers(min_value=10**12, max_value=2 * 10**12),  # epoch milliseconds
    st.integers(min_value=10**9, max_value=2 * 10**9),  # epoch seconds
    st.sampled_from(["2026-11-01T12:00:00Z", "2026-11-01T12:00:00.25+02:00", "2026-11-01"]),
)
timestamps = st.one_of(
    good_timestamps,
    good_timestamps,
    numbers,
    texts,
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(["0001-01-01T00:00:00+23:59", "2300-01-01", "9999-12-31T23:59:59-23:59"]),
)
# Number literals no Python value encodes to; a sentinel string is swapped for each.
RAW_NUMBERS = ["1e400", "-1e400", "1e-400", "1E+999999", "-0.0e-99999", "1" + "0" * 4400,
               "0." + "1" * 20_000, "1.5e308", "-0"]  # fmt: skip
raw_numbers = st.sampled_from([f"__raw{i}__" for i in range(len(RAW_NUMBERS))])
scalars = st.one_of(st.none(), st.booleans(), numbers, texts, raw_numbers)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
# Valid Unicode, hostile numbers: what a sloppy but honest client sends.
clean_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, plain_text, raw_numbers),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(plain_text, inner, max_size=4),
    max_leaves=12,
)
KEYS = ["event", "timestamp", "properties", "extras", "uuid", "event_id", "messageId",
        "anonymous_id", "anonymousId", "user_id", "userId", "session_id", "sessionId",
        "context", "type", "traits", "sentAt"]  # fmt: skip
uuids = st.one_of(st.uuids().map(str), st.sampled_from([str(uuid.UUID(int=1))]), texts)
plausible_event = st.fixed_dictionaries(
    {"event": st.sampled_from(["page_view", "x", ""]) | texts, "timestamp": timestamps},
    optional={
        "properties": st.one_of(
            st.dictionaries(plain_text, clean_values, max_size=4),
            st.dictionaries(texts, values, max_size=4),
            values,
        ),
        "extras": st.one_of(st.dictionaries(texts, values, max_size=3), values),
        "uuid": uuids,
        "messageId": uuids,
        "userId": st.one_of(texts, numbers),
        "session_id": st.one_of(texts, numbers),
        "context": st.one_of(clean_values, values),
    },
)
odd_event = st.dictionaries(st.one_of(st.sampled_from(KEYS), texts), values, max_size=6)
events = st.lists(st.one_of(plausible_event, odd_event, values), max_size=8).flatmap(
    lambda odd: st.lists(plausible_event, max_size=8).map(lambda good: [*good, *odd])
)
# TOKEN stands for a real project's token where a server is there to check it; it is
# left out now and then (the header may carry it), or is something else entirely.
envelopes = st.fixed_dictionaries(
    {
        "events": st.one_of(events, events, events, values),
        "token": st.sampled_from([TOKEN, TOKEN, TOKEN, None]) | texts | numbers,
    },
    optional={"sent_at": timestamps},
).map(lambda doc: {k: v for k, v in doc.items() if v is not None})


def _encode(doc: Any, ascii_only: bool, indent: int | None) -> bytes:
    text = json.dumps(doc, ensure_ascii=ascii_only, indent=indent)
    for i, literal in enumerate(RAW_NUMBERS):
        text = text.replace(f'"__raw{i}__"', literal)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate: bytes not UTF-8


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind == 1:
        depth = draw(st.integers(1, 3000))
        return b'{"events": [{"event": "e", "timestamp": 1, "properties": {"x": ' + (
            b"[" * depth + b"]" * depth + b"}}]}"
        )
    doc = draw(envelopes) if kind < 8 else draw(st.one_of(values, envelopes))
    ascii_only = draw(st.sampled_from([True, True, False]))
    body = _encode(doc, ascii_only, draw(st.sampled_from([None, None, 1])))
    if kind == 9 and body:  # cut, or splice bytes in
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(max_size=4)) + body[at + draw(st.integers(0, 2)) :]
    return body


def _unicode_clean(text: str) -> bool:
    """Storable in Postgres text/jsonb: no NUL, no surrogate (valid UTF-8 once encoded)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def check_body(body: bytes) -> tuple[int, int] | None:
    """What the ingest handler does with ``body``, minus the I/O, with the invariants
    asserted. Returns (accepted, rejected), or None for a 400."""
    try:
        envelope = decode_request(body)
    except BadRequest as exc:
        assert str(exc)
        return None
    if envelope.sent_at is not None:
        try:
            parse_timestamp(envelope.sent_at)
        except Invalid:
            return None
    if len(envelope.events) > MAX_EVENTS_PER_REQUEST:
        return None
    result = validate(envelope.events, PROJECT, NOW)
    assert result.count + len(result.errors) == len(envelope.events)
    assert all(type(e["reason"]) is str and e["reason"] for e in result.errors)
    rows = lines_to_rows(result.data)
    assert len(rows) == result.count
    assert len({row[0] for row in rows}) == len(rows)  # ids unique within the request
    orjson.loads(encode_payload(rows))  # the dead-letter payload encodes
    for row in rows:
        stored = dict(zip(COLUMNS, row, strict=True))
        for column in ("event", "anonymous_id", "user_id", "session_id"):
            value = stored[column]
            assert value is None or _unicode_clean(value), (column, value)
        for column in ("properties", "extras"):
            text = stored[column]
            assert _unicode_clean(text) and not has_nul_escape(text.encode()), (column, text)
            msgspec.json.decode(text, type=msgspec.Raw)  # JSON, no unpaired surrogate
    return result.count, len(result.errors)


@FUZZ
@given(bodies())
def test_generated_bodies_are_a_bad_request_or_storable_events_with_reasons(body: bytes) -> None:
    check_body(body)


# --- the same through a real server whose ClickHouse is down ---------------------------


def _post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/api/v1/ingest/events", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Content-Type") or ""
    finally:
        conn.close()


# What HTTP allows in a field value (RFC 9110: visible ASCII, space, obs-text). Bytes it
# does not allow (a DEL, a control) are refused by aiohttp's parser, as plain text,
# before Sluice sees the request: that is not ours to answer (see the README).
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
)
header_sets = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.one_of(
            st.sampled_from(["application/json", "text/plain;charset=UTF-8", "x/y"]),
            header_text,
        ),
        "Authorization": st.one_of(st.just(f"Bearer {TOKEN}"), header_text, st.just("Bearer ")),
        "Origin": st.one_of(header_text, st.just("null")),
        "X-Anything": header_text,
    },
).map(lambda h: {k: v.strip() for k, v in h.items()})


def test_generated_bodies_and_headers_never_get_a_5xx_from_a_real_server(
    start_server, project, pg, database_url
) -> None:
    _, token = project
    server = start_server(CLICKHOUSE_URL=dead_clickhouse_url())
    accepted = 0

    @settings(FUZZ, max_examples=300)
    @given(body=bodies(), headers=header_sets)
    def check(body: bytes, headers: dict[str, str]) -> None:
        nonlocal accepted
        body = body.replace(TOKEN.encode(), token.encode())
        headers = {k: v.replace(TOKEN, token) for k, v in headers.items()}
        status, text, content_type = _post(server.port, body, headers)
        assert status < 500, (status, text)
        assert content_type.startswith("application/json"), (status, text)
        reply = json.loads(text)
        if status in (200, 202):
            accepted += reply["accepted"]
        else:
            assert set(reply) == {"error"} and reply["error"], reply

    check()
    assert accepted > 10  # the strategies reach the accept path, not only 4xx
    db = db_name(database_url)
    parked = "SELECT coalesce(sum(event_count), 0) FROM failed_events"
    poll(lambda: pg.psql(parked, db) == str(accepted), timeout=30)
    health = request(server.url + "/healthz").json()
    assert health["fatal"] is False
    # The next ordinary request of another project is still welcome.
    _, other = make_project(database_url, "other")
    resp = server.post({"token": other, "events": [event()]})
    assert resp.status == 202, resp.body
