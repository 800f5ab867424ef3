"""Hostile input (issue 11): what validation accepts can be stored in both stores, and
nothing a client sends makes a 5xx, a traceback or a fatal instance.

The zoo below is one body of events written by hand, byte for byte: most of them cannot
be produced by a JSON encoder (``1e400``, lone surrogate escapes, 4,300-digit integers).
Each names the reason it must be rejected with, or ``None`` when it must be stored.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from ingest.deadletter import DeadLetter
from ingest.ids import uuid_str
from ingest.rows import LINE_COLUMNS, TABLE, lines_to_rows, payload_rows
from ingest.validate import decode_request, validate
from storage.clickhouse import ClickHouse, open_clickhouse
from storage.migrations import clickhouse_up, postgres_up
from storage.postgres import create_pool

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


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, retry_for=5)
    await postgres_up(pool)
    yield pool
    await pool.close()


@pytest.fixture
async def ch(tmp_path: Path) -> AsyncIterator[ClickHouse]:
    store = await open_clickhouse(f"chdb://{tmp_path / 'ch'}")
    await clickhouse_up(store)
    yield store
    await store.close()


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
        "properties, extras, toUnixTimestamp64Milli(client_timestamp) FROM events_raw_v1"
    )
    assert sorted(map(list, in_clickhouse)) == sorted(expected)
    assert rows[0][8].startswith('{"a": 1e400, "b": -1e400')  # object text as sent
