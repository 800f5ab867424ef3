"""The ClickHouse store: replay deduplication in events_raw_v1 (embedded engine), and the
HTTP transport's failure paths against real sockets."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import clickhouse_rows, free_port

from ingest.flush import insert_rows
from ingest.validate import validate_batch
from storage.clickhouse import ClickHouseError, HttpClickHouse, classify, open_clickhouse
from storage.migrations import clickhouse_up


def rows_for(n: int) -> list[tuple]:
    project = uuid.uuid4().int
    now = int(time.time() * 1000)
    events = [{"event": "e", "timestamp": now - i} for i in range(n)]
    rows, errors, _ = validate_batch(events, project, now)
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


def _insert_via_http(url: str) -> ClickHouseError:
    async def run() -> ClickHouseError:
        ch = HttpClickHouse(url)
        try:
            with pytest.raises(ClickHouseError) as err:
                await insert_rows(ch, rows_for(2), str(uuid.uuid4()))
            return err.value
        finally:
            await ch.close()

    return asyncio.run(run())


def test_closed_port_is_transient() -> None:
    err = _insert_via_http(f"http://127.0.0.1:{free_port()}/default")
    assert err.transient


def test_listener_that_never_answers_times_out_as_transient(silent_listener: int) -> None:
    started = time.monotonic()
    err = _insert_via_http(
        f"http://127.0.0.1:{silent_listener}/default?connect_timeout=1&send_receive_timeout=1"
    )
    assert err.transient
    assert time.monotonic() - started < 15


def test_server_answering_500_is_transient(error_500_listener: int) -> None:
    err = _insert_via_http(f"http://127.0.0.1:{error_500_listener}/default")
    assert err.transient
