"""The ClickHouse store: replay deduplication in events_raw_v1 (embedded engine), and the
HTTP transport's failure paths against real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from support import clickhouse_rows, free_port

from ingest.flush import insert_rows
from ingest.ids import uuid_str
from ingest.rows import (
    COLUMNS,
    FORMAT,
    LINE_COLUMNS,
    TABLE,
    decode_payload,
    encode_payload,
    lines_to_rows,
    payload_rows,
    project_counts,
    rows_to_lines,
    stored_counts,
    stored_lines,
    stored_rows,
)
from ingest.validate import (
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    decode_request,
    validate,
    validate_batch,
    validate_rows,
)
from storage.clickhouse import (
    SPOOL_DIR,
    ClickHouseError,
    HttpClickHouse,
    classify,
    open_clickhouse,
)
from storage.migrations import clickhouse_up


def rows_for(n: int) -> list[tuple]:
    project = uuid.uuid4().int
    now = int(time.time() * 1000)
    events = [{"event": "e", "timestamp": now - i} for i in range(n)]
    rows, errors = validate_rows(events, project, now)
    assert not errors
    return rows


def test_same_batch_replayed_with_its_token_lands_once(tmp_path: Path) -> None:
    path = tmp_path / "ch"
    rows = rows_for(50)

    async def run() -> None:
        ch = await open_clickhouse(f"chdb://{path}")
        try:
            await clickhouse_up(ch)
            token = str(uuid.uuid4())
            await insert_rows(ch, rows, token)
            await insert_rows(ch, rows, token)  # lost acknowledgement → replay
            await insert_rows(ch, rows[:10], str(uuid.uuid4()))  # same events, new batch
        finally:
            await ch.close()

    asyncio.run(run())
    # The token makes the replay a no-op: the raw table holds 50 + 10 rows, not 110.
    assert clickhouse_rows(path, "SELECT count() FROM events_raw_v1") == [(60,)]
    # ReplacingMergeTree on event_id collapses the 10 repeated through another batch.
    assert clickhouse_rows(path, "SELECT count() FROM events_raw_v1 FINAL") == [(50,)]
    clickhouse_rows(path, "OPTIMIZE TABLE events_raw_v1 FINAL")
    assert clickhouse_rows(path, "SELECT count() FROM events_raw_v1") == [(50,)]
    assert clickhouse_rows(path, "SELECT uniqExact(event_id) FROM events_raw_v1") == [(50,)]


TRICKY = {
    "text": 'é — 😀 "quoted" back\\slash\nnew line\ttab \u0001 \u2028 </script>',
    "numbers": [0, -1, 0.1, 1e-7, 1.5e300, -2.5, 2**63, -(2**63), 2**64 - 1],
    "flags": [True, False, None],
    "nested": {"a": {"b": [[], {}, ""]}, "ключ": "значение"},
}


def test_row_lines_store_exactly_what_the_dead_letter_payload_holds(tmp_path: Path) -> None:
    """The ingest path inserts validation's row lines as they are; the dead-letter
    payload is made from the same lines by lines_to_rows. Both must agree on every value,
    byte for byte, or a replayed batch would differ from a flushed one."""
    path = tmp_path / "ch"
    now = 1_795_000_000_000
    events = [
        {"event": "tricky", "timestamp": now, "properties": TRICKY, "context": TRICKY,
         "uuid": str(uuid.uuid4()), "anonymousId": "a\"b", "user_id": 7},
        {"event": "ε", "timestamp": MIN_TIMESTAMP_MS, "sessionId": "s"},
        {"event": "late", "timestamp": MAX_TIMESTAMP_MS - 1},
        {"event": "epoch", "timestamp": 0},
        {"event": "before-epoch", "timestamp": "1969-12-31T23:59:59.999Z"},
        {"event": "skewed", "timestamp": now - 1, "properties": {"x": 1.0}},
    ]  # fmt: skip
    agent = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Version/17.5 Mobile Safari"
    lines, errors, _ = validate_batch(events, uuid.uuid4().int, now, sent_at_ms=now - 5,
                                      user_agent=agent)  # fmt: skip
    assert errors == []
    # Object text exactly as a client wrote it (spaces, escapes, exponent, a big int).
    body = (b'{"events": [{"event": "as-sent", "timestamp": 1, "properties": '
            b'{"a" : 1e2, "b":"\\u00e9\\"", "c": 123456789012345678901234567890 },'
            b' "extras": { "k" : [ ] }}]}')  # fmt: skip
    verbatim = validate(decode_request(body).events, uuid.uuid4().int, now)
    assert verbatim.count == 1
    lines.append(verbatim.data)
    data = b"".join(lines)
    token = str(uuid.uuid4())

    async def run() -> None:
        ch = await open_clickhouse(f"chdb://{path}")
        try:
            await clickhouse_up(ch)
            await ch.insert_lines(TABLE, lines, LINE_COLUMNS, token)
            replay = [b"".join(lines[:2]), *lines[2:]]  # same lines, other chunks: a no-op
            await ch.insert_lines(TABLE, replay, LINE_COLUMNS, token)
        finally:
            await ch.close()

    asyncio.run(run())
    stored = clickhouse_rows(
        path,
        "SELECT toString(event_id), toString(project_id), event, anonymous_id, user_id, "
        "session_id, toUnixTimestamp64Milli(timestamp), toUnixTimestamp64Milli(received_at), "
        "properties, extras, toUnixTimestamp64Milli(client_timestamp), user_agent, browser, "
        "os, device_type, is_bot FROM events_raw_v1",
    )
    expected = [(uuid_str(r[0]), uuid_str(r[1]), *r[2:]) for r in lines_to_rows(data)]
    assert rows_to_lines(lines_to_rows(data)) == data  # the replay path writes the same lines
    # The drain's path: the payload's rows straight to lines, the same bytes again; and
    # for a payload of before 0002/0003 (fewer columns), what the pipeline rows give.
    stored_payload = payload_rows(encode_payload(lines_to_rows(data)))
    assert stored_lines(stored_payload) == data
    assert stored_counts(stored_payload) == project_counts(lines_to_rows(data))
    old_rows = [r[:10] for r in stored_payload]
    old = orjson.dumps({"format": FORMAT, "columns": COLUMNS[:10], "rows": old_rows})
    assert stored_lines(payload_rows(old)) == rows_to_lines(decode_payload(old))
    # Ids in another form than Sluice writes: not this path (the drain takes the rows').
    for at in (0, 1):
        edited = [list(r) for r in stored_payload]
        edited[-1][at] = edited[-1][at].upper()
        assert stored_lines(edited) is None
        assert rows_to_lines(stored_rows(edited)) == data  # the rows' path: canonical again
    assert sorted(stored) == sorted(expected)
    assert len(stored) == len(events) + 1
    by_name = {r[2]: r for r in expected}
    assert by_name["as-sent"][8:10] == (
        '{"a" : 1e2, "b":"\\u00e9\\"", "c": 123456789012345678901234567890 }',
        '{ "k" : [ ] }',
    )
    assert by_name["ε"][6] == MIN_TIMESTAMP_MS + 5 and by_name["late"][6] == now  # clamped
    assert by_name["before-epoch"][6] == -1 + 5
    # client_timestamp is the time as sent: no skew correction, no clamp.
    assert (by_name["ε"][10], by_name["late"][10]) == (MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS - 1)
    assert json.loads(by_name["tricky"][8]) == json.loads(json.dumps(TRICKY))
    assert str(uuid.UUID(events[0]["uuid"])) == by_name["tricky"][0]


def test_a_backfill_spanning_more_than_100_months_is_stored_by_both_insert_paths(
    tmp_path: Path,
) -> None:
    """ClickHouse refuses an insert touching > 100 partitions (months) by default; that
    refusal reads as transient, so such a batch would be retried for ever."""
    path = tmp_path / "ch"
    months = [int(datetime(2000 + m // 12, m % 12 + 1, 1, tzinfo=UTC).timestamp() * 1000)
              for m in range(120)]  # fmt: skip
    events = [{"event": "backfill", "timestamp": ts} for ts in months]
    now = int(time.time() * 1000)
    lines, errors, _ = validate_batch(events, uuid.uuid4().int, now)
    rows, _ = validate_rows(events, uuid.uuid4().int, now)
    assert not errors

    async def run() -> None:
        ch = await open_clickhouse(f"chdb://{path}")
        try:
            await clickhouse_up(ch)
            await ch.insert_lines(TABLE, lines, LINE_COLUMNS, str(uuid.uuid4()))
            await insert_rows(ch, rows, str(uuid.uuid4()))
        finally:
            await ch.close()

    asyncio.run(run())
    assert clickhouse_rows(
        path, "SELECT count(), uniqExact(toYYYYMM(timestamp)) FROM events_raw_v1"
    ) == [(240, 120)]


def test_spool_files_are_removed_after_each_insert_and_leftovers_at_open(tmp_path: Path) -> None:
    path = tmp_path / "ch"
    spool = path / SPOOL_DIR
    spool.mkdir(parents=True)
    (spool / "999-0.jsonl").write_bytes(b"left by a killed server\n")

    async def run() -> list[str]:
        ch = await open_clickhouse(f"chdb://{path}")
        try:
            left = sorted(p.name for p in spool.iterdir())
            await clickhouse_up(ch)
            await ch.insert_lines(TABLE, [lines_for(5)], LINE_COLUMNS, str(uuid.uuid4()))
            return left + sorted(p.name for p in spool.iterdir())
        finally:
            await ch.close()

    assert asyncio.run(run()) == []
    assert clickhouse_rows(path, "SELECT count() FROM events_raw_v1") == [(5,)]


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policy")
def test_the_engine_process_and_its_threads_only_take_idle_cpu(tmp_path: Path) -> None:
    """The engine's threads must never preempt the event loop (request p99)."""

    async def run() -> tuple[int, list[int]]:
        ch = await open_clickhouse(f"chdb://{tmp_path / 'ch'}")
        try:
            await clickhouse_up(ch)  # the engine has started its thread pools
            pid = ch._proc.pid  # the worker process
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            return pid, [os.sched_getscheduler(t) for t in tids]
        finally:
            await ch.close()

    pid, policies = asyncio.run(run())
    assert len(policies) > 1 and set(policies) == {os.SCHED_IDLE}, (pid, policies)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the server itself is untouched


def test_dedup_token_survives_a_restart_of_the_engine(tmp_path: Path) -> None:
    path = tmp_path / "ch"
    rows = rows_for(20)
    token = str(uuid.uuid4())

    async def insert_once() -> None:
        ch = await open_clickhouse(f"chdb://{path}")
        try:
            await clickhouse_up(ch)
            await insert_rows(ch, rows, token)
        finally:
            await ch.close()

    asyncio.run(insert_once())
    asyncio.run(insert_once())
    assert clickhouse_rows(path, "SELECT count() FROM events_raw_v1") == [(20,)]


def test_a_rejected_row_is_a_permanent_error(tmp_path: Path) -> None:
    path = tmp_path / "ch"

    async def run() -> ClickHouseError:
        ch = await open_clickhouse(f"chdb://{path}")
        try:
            await clickhouse_up(ch)
            await ch.command(
                "ALTER TABLE events_raw_v1 ADD CONSTRAINT no_poison CHECK event != 'poison'"
            )
            rows = rows_for(3)
            bad = (*rows[0][:2], "poison", *rows[0][3:])
            with pytest.raises(ClickHouseError) as err:
                await insert_rows(ch, [bad, *rows[1:]], str(uuid.uuid4()))
            return err.value
        finally:
            await ch.close()

    err = asyncio.run(run())
    assert err.transient is False and err.code == 469
    assert "VIOLATED_CONSTRAINT" in str(err)


def test_unknown_table_and_connection_errors_are_transient() -> None:
    assert classify(ConnectionRefusedError("refused")).transient
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    assert classify(OperationalError("Error connecting")).transient
    assert classify(DatabaseError("Code: 60. Unknown table (UNKNOWN_TABLE)")).transient
    assert classify(DatabaseError("Code: 252. Too many parts (TOO_MANY_PARTS)")).transient
    assert not classify(DatabaseError("Code: 53. Type mismatch (TYPE_MISMATCH)")).transient
    assert not classify(ValueError("bad uuid")).transient


# --- the HTTP transport against real sockets -------------------------------------------


@pytest.fixture
def error_500_listener() -> Iterator[int]:
    """A real HTTP server that answers every request with 500."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def _fail(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = b"Code: 999. DB::Exception: the server is on fire"
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _fail

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def lines_for(n: int) -> bytes:
    now = int(time.time() * 1000)
    lines, errors, _ = validate_batch([{"event": "e", "timestamp": now}] * n, 1, now)
    assert not errors
    return b"".join(lines)


INSERTS = {  # both insert paths: row lines (ingest), columns (dead-letter replays)
    "lines": lambda ch, token: ch.insert_lines(TABLE, [lines_for(2)], LINE_COLUMNS, token),
    "rows": lambda ch, token: insert_rows(ch, rows_for(2), token),
}


def _insert_via_http(url: str, how: str) -> ClickHouseError:
    async def run() -> ClickHouseError:
        ch = HttpClickHouse(url)
        try:
            with pytest.raises(ClickHouseError) as err:
                await INSERTS[how](ch, str(uuid.uuid4()))
            return err.value
        finally:
            await ch.close()

    return asyncio.run(run())


@pytest.mark.parametrize("how", INSERTS)
def test_closed_port_is_transient(how: str) -> None:
    err = _insert_via_http(f"http://127.0.0.1:{free_port()}/default", how)
    assert err.transient


@pytest.mark.parametrize("how", INSERTS)
def test_listener_that_never_answers_times_out_as_transient(silent_listener: int, how: str) -> None:
    started = time.monotonic()
    err = _insert_via_http(
        f"http://127.0.0.1:{silent_listener}/default?connect_timeout=1&send_receive_timeout=1",
        how,
    )
    assert err.transient
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("how", INSERTS)
def test_server_answering_500_is_transient(error_500_listener: int, how: str) -> None:
    err = _insert_via_http(f"http://127.0.0.1:{error_500_listener}/default", how)
    assert err.transient
