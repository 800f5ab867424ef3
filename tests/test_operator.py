"""Operator surfaces: the ``sluice dlq`` commands (checked against the database),
``/metrics`` (parsed with a Prometheus text parser) and ``/readyz``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import SLUICE, db_name, event, request

from ingest.deadletter import DeadLetter
from ingest.validate import validate_rows
from storage.migrations import postgres_up
from storage.postgres import create_pool


def park(dsn: str, batches: list[int], quarantine: int = 0) -> list[str]:
    """Park batches of the given sizes; quarantine the first ``quarantine`` of them."""

    async def run() -> list[str]:
        pool = await create_pool(dsn, retry_for=5)
        try:
            await postgres_up(pool)
            ids = []
            for i, size in enumerate(batches):
                now = int(time.time() * 1000)
                rows, _ = validate_rows(
                    [{"event": f"e{i}", "timestamp": now} for _ in range(size)],
                    uuid.uuid4().int, now,
                )  # fmt: skip
                row_id = str(uuid.uuid4())
                await DeadLetter(pool).park(row_id, rows, f"error {i}", retry_in=3600)
                if i < quarantine:
                    await pool.execute(
                        "UPDATE failed_events SET quarantined_at = now() - interval '40 days' "
                        "WHERE id = $1",
                        uuid.UUID(row_id),
                    )
                ids.append(row_id)
            return ids
        finally:
            await pool.close()

    return asyncio.run(run())


@pytest.fixture
def dlq(tmp_path: Path, database_url: str):
    env = {**os.environ, "DATABASE_URL": database_url, "DATA_DIR": str(tmp_path)}

    def run(*args: str, ok: bool = True, stdin: str | None = None):
        proc = subprocess.run([*SLUICE, "dlq", *args], env=env, capture_output=True, text=True,
                              timeout=120, input=stdin)  # fmt: skip
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc

    return run


def j(proc: subprocess.CompletedProcess):
    return json.loads(proc.stdout)


def test_dlq_stats_list_show(dlq, database_url, pg) -> None:
    ids = park(database_url, [5, 7, 11], quarantine=1)
    stats = j(dlq("stats", "--json"))
    assert (stats["active_rows"], stats["active_events"]) == (2, 18)
    assert (stats["quarantined_rows"], stats["quarantined_events"]) == (1, 5)
    assert stats["oldest_age_seconds"] >= 0
    assert stats["last_error"].startswith("error ")
    active = j(dlq("list", "--json"))
    assert sorted(r["id"] for r in active) == sorted(ids[1:])
    quarantined = j(dlq("list", "--quarantined", "--json"))
    assert [r["id"] for r in quarantined] == [ids[0]]
    shown = j(dlq("show", ids[2], "--json"))
    assert shown["event_count"] == 11 and len(shown["events"]) == 11
    assert set(shown["events"][0]) >= {"event_id", "project_id", "event", "received_at"}
    missing = dlq("show", str(uuid.uuid4()), ok=False)
    assert missing.returncode == 1 and "no dead-letter row" in missing.stderr


def test_dlq_retry_and_requeue_change_postgres_state(dlq, database_url, pg) -> None:
    ids = park(database_url, [3, 4, 5], quarantine=1)
    db = db_name(database_url)

    def due() -> int:
        return int(pg.psql("SELECT count(*) FROM failed_events WHERE quarantined_at IS NULL "
                           "AND next_attempt_at <= now()", db))  # fmt: skip

    assert due() == 0
    assert j(dlq("retry", ids[1], "--json")) == {"rows_due_now": 1}
    assert due() == 1
    assert j(dlq("retry", "--all", "--json")) == {"rows_due_now": 2}
    assert due() == 2
    assert j(dlq("requeue", ids[0], "--json")) == {"rows_requeued": 1}
    assert due() == 3
    assert dlq("requeue", ids[0], ok=False).returncode == 1  # no longer quarantined


def test_dlq_purge_asks_unless_yes_and_respects_older_than(dlq, database_url, pg) -> None:
    park(database_url, [2, 3, 4], quarantine=2)
    db = db_name(database_url)
    pg.psql("UPDATE failed_events SET quarantined_at = now() WHERE event_count = 3", db)
    refused = dlq("purge", "--quarantined", ok=False, stdin="")
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert pg.psql("SELECT count(*) FROM failed_events", db) == "3"
    old = j(dlq("purge", "--quarantined", "--older-than", "30d", "--yes", "--json"))
    assert old == {"rows_deleted": 1, "events_deleted": 2}
    rest = j(dlq("purge", "--quarantined", "--yes", "--json"))
    assert rest == {"rows_deleted": 1, "events_deleted": 3}
    assert pg.psql("SELECT event_count FROM failed_events", db) == "4"  # active row kept


def metric_values(text: str) -> dict[tuple, float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_parse_and_count_what_happened(start_server, project) -> None:
    _, token = project
    server = start_server()
    server.post({"token": token, "events": [event(), event(), {"event": "x"}]})
    server.post({"token": "sluice_pub_" + "B" * 32, "events": [event()]})
    text = request(server.url + "/metrics").body.decode()
    values = metric_values(text)
    route = "/api/v1/ingest/events"
    assert values[("sluice_http_requests_total", (("route", route), ("status", "202")))] == 1
    assert values[("sluice_http_requests_total", (("route", route), ("status", "401")))] == 1
    assert values[("sluice_events_accepted_total", ())] == 2
    assert values[("sluice_events_rejected_total", (("reason", "timestamp required"),))] == 1
    assert values[("sluice_buffer_capacity_events", ())] == 100_000
    assert values[("sluice_fatal", ())] == 0
    assert values[("sluice_dlq_depth_rows", ())] == 0
    assert values[("sluice_token_cache_misses", ())] >= 1
    assert ("sluice_http_request_duration_seconds_count", (("route", route),)) in values
    for name in ("flushed", "parked", "replayed", "quarantined"):
        assert (f"sluice_events_{name}_total", ()) in values


def test_readyz_is_200_when_admitting_and_503_when_disabled(start_server) -> None:
    server = start_server()
    assert request(server.url + "/readyz").status == 200
    disabled = start_server(INGEST_DISABLED="1", data_dir=server.data_dir.parent / "d2")
    resp = request(disabled.url + "/readyz")
    assert resp.status == 503 and "ingest disabled" in resp.json()["reasons"]
