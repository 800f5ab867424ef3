"""The ingest contract, black-box: a real ``sluice serve`` process on real stores.

Every row of the response table, the body forms (gzip, text/plain), the stored row,
retries, the bounded buffer, outages of each store, SIGTERM, /healthz and CORS.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import uuid

import pytest
from conftest import make_project
from support import (
    SLUICE,
    Postgres,
    Server,
    clickhouse_rows,
    db_name,
    dead_clickhouse_url,
    event,
    events_with_ids,
    free_port,
    poll,
    request,
)


def stop_and_read(server: Server, sql: str) -> list[tuple]:
    """SIGTERM the server (it must exit 0), then read its embedded ClickHouse."""
    assert server.stop() == 0, server.logs()
    return clickhouse_rows(server.data_dir / "clickhouse", sql)


# --- 2xx -----------------------------------------------------------------------------


def test_partial_batch_is_202_with_errors_by_index_and_the_row_is_stored(
    start_server, project
) -> None:
    project_id, token = project
    server = start_server()
    resp = server.post(
        {
            "token": token,
            "events": [
                {"event": "signup", "timestamp": 1_793_534_400_123, "anonymousId": "anon-1",
                 "userId": "user-1", "sessionId": "sess-1", "properties": {"plan": "pro"},
                 "extras": {"source": "base", "keep": True}, "source": "stray", "locale": "fr"},
                {"event": "missing-timestamp"},
            ],
        }
    )  # fmt: skip
    assert resp.status == 202
    assert resp.json() == {
        "accepted": 1,
        "rejected": 1,
        "errors": [{"index": 1, "reason": "timestamp required"}],
    }
    rows = stop_and_read(
        server,
        "SELECT toString(project_id), event, anonymous_id, user_id, session_id, "
        "toUnixTimestamp64Milli(timestamp), properties, extras FROM events_raw_v1",
    )
    assert len(rows) == 1
    pid, name, anon, user, session, ts, props, extras = rows[0]
    assert (pid, name, anon, user, session, ts) == (
        str(project_id), "signup", "anon-1", "user-1", "sess-1", 1_793_534_400_123
    )  # fmt: skip
    assert json.loads(props) == {"plan": "pro"}
    assert json.loads(extras) == {"source": "stray", "keep": True, "locale": "fr"}


def test_zero_valid_events_is_200(start_server, project) -> None:
    _, token = project
    server = start_server()
    empty = server.post({"token": token, "events": []})
    assert (empty.status, empty.json()) == (200, {"accepted": 0, "rejected": 0, "errors": []})
    bad = server.post({"token": token, "events": [{"event": "x"}, {"timestamp": 1}]})
    assert bad.status == 200
    assert bad.json() == {
        "accepted": 0,
        "rejected": 2,
        "errors": [
            {"index": 0, "reason": "timestamp required"},
            {"index": 1, "reason": "event required"},
        ],
    }


def test_gzip_text_plain_and_bearer_bodies_are_accepted(start_server, project) -> None:
    _, token = project
    server = start_server()
    gz = server.post({"token": token, "events": [event("gz")]}, gzip_body=True)
    assert gz.status == 202, gz.body
    beacon = request(
        server.ingest_url,
        method="POST",
        raw=json.dumps({"token": token, "events": [event("beacon")]}).encode(),
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert beacon.status == 202, beacon.body
    bearer = server.post(
        {"events": [event("bearer")]}, headers={"Authorization": f"Bearer {token}"}
    )
    assert bearer.status == 202, bearer.body
    rows = stop_and_read(server, "SELECT event FROM events_raw_v1 ORDER BY event")
    assert rows == [("beacon",), ("bearer",), ("gz",)]


def test_client_retry_of_the_same_batch_lands_once(start_server, project) -> None:
    _, token = project
    server = start_server()
    batch = {"token": token, "events": events_with_ids(25)}
    for _ in range(3):
        resp = server.post(batch)
        assert resp.status == 202 and resp.json()["accepted"] == 25
    ids = sorted(e["uuid"] for e in batch["events"])
    rows = stop_and_read(
        server, "SELECT toString(event_id), count() FROM events_raw_v1 GROUP BY event_id"
    )
    assert sorted(r[0] for r in rows) == ids
    assert {r[1] for r in rows} == {1}


# --- 4xx -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "headers", "message"),
    [
        (b"{not json", {}, "body is not valid JSON"),
        (b"[1, 2]", {}, "body must be a JSON object"),
        (b'{"token": "x", "events": {}}', {}, "events must be a list"),
        (b'{"token": "x"}', {}, "events required"),
        (b'{"token": "x", "events": [], "batch": 1}', {}, "unknown envelope key(s): batch"),
        (b"this is not gzip", {"Content-Encoding": "gzip"}, "could not decode the request body"),
    ],
)
def test_malformed_requests_are_400_with_a_reason(start_server, raw, headers, message) -> None:
    server = start_server()
    resp = request(server.ingest_url, method="POST", raw=raw, headers=headers)
    assert resp.status == 400
    assert message in resp.json()["error"]


def test_unusable_tokens_are_401(start_server, database_url) -> None:
    _, revoked = make_project(database_url, "revoked")
    deleted_id, deleted = make_project(database_url, "deleted")
    env = {"DATABASE_URL": database_url}
    for args in (["tokens", "revoke", revoked], ["projects", "delete", str(deleted_id)]):
        subprocess.run([*SLUICE, *args], env={**os.environ, **env}, check=True,
                       capture_output=True)  # fmt: skip
    server = start_server()
    for token in (None, "sk_live_abc", "sluice_pub_" + "A" * 32, revoked, deleted, 42):
        body = {"events": [event()]} if token is None else {"token": token, "events": [event()]}
        resp = server.post(body)
        assert resp.status == 401, (token, resp.body)
        assert resp.json() == {"error": "unauthorized"}
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_revoked_token_stops_working_within_the_cache_ttl(start_server, database_url) -> None:
    _, token = make_project(database_url)
    server = start_server(INGEST_TOKEN_CACHE_TTL="500ms")
    assert server.post({"token": token, "events": [event()]}).status == 202
    subprocess.run([*SLUICE, "tokens", "revoke", token], check=True, capture_output=True,
                   env={**os.environ, "DATABASE_URL": database_url})  # fmt: skip
    poll(lambda: server.post({"token": token, "events": [event()]}).status == 401, timeout=10)


def test_body_over_the_cap_is_413_and_so_is_a_gzip_bomb(start_server, project) -> None:
    _, token = project
    server = start_server(INGEST_MAX_BODY_BYTES="20000")
    big = {"token": token, "events": [event(properties={"pad": "x" * 30_000})]}
    resp = server.post(big)
    assert (resp.status, resp.json()) == (413, {"error": "request body too large"})
    bomb = gzip.compress(b'{"token": "' + token.encode() + b'", "events": [' + b" " * 50_000_000)
    assert len(bomb) < 100_000
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    resp = request(server.ingest_url, method="POST", raw=bomb, headers=headers)
    assert (resp.status, resp.json()) == (413, {"error": "request body too large"})
    assert server.post({"token": token, "events": [event()]}).status == 202  # still fine


# --- 503 -----------------------------------------------------------------------------


def test_kill_switch_answers_503_disabled(start_server, project) -> None:
    _, token = project
    server = start_server(INGEST_DISABLED="true")
    resp = server.post({"token": token, "events": [event()]})
    assert (resp.status, resp.json()) == (503, {"error": "ingest disabled"})
    assert resp.headers["Retry-After"] == "300"
    health = server.healthz()
    assert health.status == 200 and health.json()["ingest_disabled"] is True


def test_burst_over_a_tiny_buffer_gets_503_for_the_excess_and_keeps_every_202(
    start_server, project
) -> None:
    _, token = project
    # Flushes only on shutdown: the buffer fills deterministically.
    server = start_server(INGEST_EVENT_BUFFER="100", INGEST_FLUSH_EVENTS="100",
                          INGEST_FLUSH_INTERVAL="1h")  # fmt: skip
    accepted: list[str] = []
    statuses = []
    for _ in range(6):
        batch = events_with_ids(30)
        resp = server.post({"token": token, "events": batch})
        statuses.append(resp.status)
        if resp.status == 202:
            accepted += [e["uuid"] for e in batch]
        else:
            assert resp.json() == {"error": "ingest buffer full"}
            assert resp.headers["Retry-After"] == "1"
    assert statuses == [202, 202, 202, 503, 503, 503]
    health = server.healthz().json()
    assert health["buffer"] == {"pending": 90, "capacity": 100}
    rows = stop_and_read(server, "SELECT toString(event_id) FROM events_raw_v1")
    assert sorted(r[0] for r in rows) == sorted(accepted)


def test_clickhouse_down_parks_batches_and_a_restart_lands_them_with_received_at_intact(
    start_server, project, pg, database_url, tmp_path
) -> None:
    _, token = project
    down = start_server(CLICKHOUSE_URL=dead_clickhouse_url())
    sent = events_with_ids(40)
    for chunk in (sent[:20], sent[20:]):
        assert down.post({"token": token, "events": chunk}).status == 202
    db = db_name(database_url)
    poll(lambda: pg.psql("SELECT coalesce(sum(event_count),0) FROM failed_events", db) == "40")
    poll(lambda: down.healthz().json()["dlq_depth"] >= 1)
    assert down.healthz().status == 200  # depth below the threshold: still "ok"
    parked = json.loads(pg.psql("SELECT json_agg(batch) FROM failed_events", db))
    received = {}
    for batch in parked:
        cols = batch["columns"]
        for row in batch["rows"]:
            received[row[cols.index("event_id")]] = row[cols.index("received_at")]
    assert sorted(received) == sorted(e["uuid"] for e in sent)
    assert down.stop() == 0

    up = start_server(data_dir=tmp_path / "data")  # the embedded ClickHouse works
    poll(lambda: pg.psql("SELECT count(*) FROM failed_events", db) == "0", timeout=60)
    rows = stop_and_read(
        up,
        "SELECT toString(event_id), toUnixTimestamp64Milli(received_at), count() "
        "FROM events_raw_v1 GROUP BY event_id, received_at",
    )
    assert {r[0]: r[1] for r in rows} == received
    assert {r[2] for r in rows} == {1}


def test_dlq_depth_over_the_threshold_turns_healthz_503(start_server, project) -> None:
    _, token = project
    server = start_server(CLICKHOUSE_URL=dead_clickhouse_url(), DLQ_DEPTH_503_THRESHOLD="0")
    assert server.healthz().status == 200
    assert server.post({"token": token, "events": [event()]}).status == 202
    poll(lambda: server.healthz().status == 503)
    body = server.healthz().json()
    assert body["status"] == "down" and body["dlq_depth"] == 1 and body["fatal"] is False


def test_both_stores_down_turns_fatal_drops_nothing_and_recovers(
    start_server, own_pg: Postgres
) -> None:
    dsn = own_pg.dsn()
    _, token = make_project(dsn)
    server = start_server(DATABASE_URL=dsn, CLICKHOUSE_URL=dead_clickhouse_url())
    first = events_with_ids(10)
    assert server.post({"token": token, "events": first}).status == 202
    poll(lambda: own_pg.psql("SELECT coalesce(sum(event_count),0) FROM failed_events") == "10")

    own_pg.stop()
    second = events_with_ids(15)
    assert server.post({"token": token, "events": second}).status == 202  # token is cached
    poll(lambda: server.healthz().status == 503)
    health = server.healthz().json()
    assert health["status"] == "down" and health["fatal"] is True
    assert health["buffer"]["pending"] == 15  # held in memory, still counted
    resp = server.post({"token": token, "events": [event()]})
    assert (resp.status, resp.json()) == (503, {"error": "ingest down"})
    assert resp.headers["Retry-After"] == "5"

    own_pg.start()
    poll(lambda: server.healthz().json()["fatal"] is False, timeout=30)
    poll(lambda: own_pg.psql("SELECT coalesce(sum(event_count),0) FROM failed_events") == "25")
    assert server.healthz().json()["buffer"]["pending"] == 0
    third = events_with_ids(1)
    assert server.post({"token": token, "events": third}).status == 202
    assert server.stop() == 0
    parked = json.loads(own_pg.psql("SELECT json_agg(batch) FROM failed_events"))
    ids = [row[0] for batch in parked for row in batch["rows"]]
    assert sorted(ids) == sorted(e["uuid"] for e in first + second + third)


def test_token_keeps_working_while_postgres_is_stopped(start_server, own_pg: Postgres) -> None:
    dsn = own_pg.dsn()
    _, token = make_project(dsn)
    _, unseen = make_project(dsn, "other")
    server = start_server(DATABASE_URL=dsn, INGEST_TOKEN_CACHE_TTL="200ms")
    assert server.post({"token": token, "events": [event("before")]}).status == 202
    own_pg.stop()
    # The cached entry is stale after 200 ms; Postgres is down: serve the stale entry.
    poll(lambda: server.post({"token": token, "events": [event("during")]}).status == 202)
    resp = server.post({"token": unseen, "events": [event()]})
    assert (resp.status, resp.json()) == (500, {"error": "internal server error"})
    # ClickHouse still takes the batches: the instance stays in the balancer.
    assert request(server.url + "/readyz").status == 200
    own_pg.start()
    rows = stop_and_read(server, "SELECT DISTINCT event FROM events_raw_v1 ORDER BY event")
    assert rows == [("before",), ("during",)]


def test_sigterm_with_events_in_the_buffer_stores_all_of_them(start_server, project) -> None:
    _, token = project
    server = start_server(INGEST_FLUSH_INTERVAL="1h")
    sent = []
    for _ in range(5):
        batch = events_with_ids(60)
        assert server.post({"token": token, "events": batch}).status == 202
        sent += [e["uuid"] for e in batch]
    assert server.healthz().json()["buffer"]["pending"] == 300
    rows = stop_and_read(server, "SELECT toString(event_id) FROM events_raw_v1")
    assert sorted(r[0] for r in rows) == sorted(sent)
    assert server.log_events("shutdown_complete")


def test_postgres_unreachable_at_boot_exits_non_zero_with_a_clear_message(tmp_path) -> None:
    url = f"postgresql://sluice@127.0.0.1:{free_port()}/sluice"
    server = Server(tmp_path / "data", {"DATABASE_URL": url})
    assert server.wait(timeout=60) == 1
    last = server.logs().strip().splitlines()[-1]
    assert last.startswith("sluice: Postgres: Postgres at postgresql://sluice@127.0.0.1")
    assert "did not answer within" in last and "DATABASE_URL" in last


# --- /healthz and CORS ---------------------------------------------------------------


def test_healthz_ok_shape(start_server) -> None:
    server = start_server()
    resp = server.healthz()
    assert resp.status == 200
    body = resp.json()
    assert body["status"] == "ok" and body["version"]
    assert (body["ingest_disabled"], body["fatal"], body["dlq_depth"]) == (False, False, 0)
    assert body["buffer"] == {"pending": 0, "capacity": 100_000}
    for _ in range(5):
        server.healthz()
    assert not [e for e in server.log_events("request") if e["path"] == "/healthz"]


def test_cors_any_origin_by_default(start_server, project) -> None:
    _, token = project
    server = start_server()
    resp = server.post({"token": token, "events": [event()]},
                       headers={"Origin": "https://shop.example"})  # fmt: skip
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    pre = request(server.ingest_url, method="OPTIONS", headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    assert pre.headers["Access-Control-Allow-Headers"] == (
        "Authorization, Content-Type, Content-Encoding"
    )
    assert server.healthz().headers["Access-Control-Allow-Origin"] == "*"


def test_cors_allow_list_echoes_only_listed_origins(start_server) -> None:
    server = start_server(ALLOWED_ORIGINS="https://shop.example,https://blog.example")
    ok = request(server.url + "/healthz", headers={"Origin": "https://blog.example"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://blog.example"
    assert "Origin" in ok.headers["Vary"]
    other = request(server.url + "/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    pre = request(server.ingest_url, method="OPTIONS", headers={"Origin": "https://evil.example"})
    assert pre.status == 204 and "Access-Control-Allow-Origin" not in pre.headers


def test_each_request_is_one_log_line(start_server, project) -> None:
    project_id, token = project
    server = start_server()
    server.post({"token": token, "events": [event(), {"event": "x"}]})
    server.stop()
    lines = [e for e in server.log_events("request") if e["path"].startswith("/api")]
    assert len(lines) == 1
    line = lines[0]
    assert (line["method"], line["status"], line["project"]) == ("POST", 202, str(project_id))
    assert (line["accepted"], line["rejected"]) == (1, 1) and line["duration_ms"] >= 0
    flushes = server.log_events("flush")
    assert flushes and flushes[0]["outcome"] == "stored" and flushes[0]["events"] == 1


def test_unique_ids_are_uuid7_when_the_client_sends_none(start_server, project) -> None:
    _, token = project
    server = start_server()
    server.post({"token": token, "events": [event(), event()]})
    rows = stop_and_read(server, "SELECT toString(event_id) FROM events_raw_v1")
    assert len(rows) == 2 and all(uuid.UUID(r[0]).version == 7 for r in rows)


def test_sigterm_while_clickhouse_hangs_parks_everything_within_the_grace(
    start_server, project, pg, database_url, silent_listener
) -> None:
    """A ClickHouse that accepts connections and never answers: inserts hang (default
    30 s timeout), so shutdown must give up at INGEST_SHUTDOWN_GRACE and park."""
    import time

    _, token = project
    url = f"http://127.0.0.1:{silent_listener}/default"
    server = start_server(CLICKHOUSE_URL=url, INGEST_SHUTDOWN_GRACE="2s")
    sent = events_with_ids(40)
    for chunk in (sent[:20], sent[20:]):
        assert server.post({"token": token, "events": chunk}).status == 202
    started = time.monotonic()
    assert server.stop() == 0, server.logs()
    assert time.monotonic() - started < 15
    parked = json.loads(pg.psql("SELECT json_agg(batch) FROM failed_events",
                                db_name(database_url)))  # fmt: skip
    ids = [row[0] for batch in parked for row in batch["rows"]]
    assert sorted(ids) == sorted(e["uuid"] for e in sent)
