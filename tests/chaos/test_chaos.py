"""The chaos suite: real ``sluice serve`` processes, real stores, real faults.

Each test ends with exact counts: every event answered 202 is in ClickHouse exactly once
(or, where the scenario says so, in ``failed_events``), nothing extra, nothing missing.
ClickHouse "goes down" by pointing the server at a dead port and "comes back" by
restarting the server on the working embedded engine (no ClickHouse server can run
here); Postgres goes down by stopping the real Postgres process.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
import urllib.error
import uuid
from collections import Counter
from pathlib import Path

import pytest
from conftest import make_project
from support import (
    SLUICE,
    Postgres,
    Server,
    clickhouse_rows,
    db_name,
    dead_clickhouse_url,
    events_with_ids,
    poll,
    request,
)

pytestmark = pytest.mark.chaos


def dlq_rows(pg: Postgres, db: str, where: str = "true") -> dict[str, int]:
    """event_id → received_at (ms) of every event held in failed_events."""
    raw = pg.psql(f"SELECT coalesce(json_agg(batch), '[]') FROM failed_events WHERE {where}", db)
    out: dict[str, int] = {}
    for batch in json.loads(raw):
        cols = batch["columns"]
        for row in batch["rows"]:
            assert row[cols.index("event_id")] not in out, "event parked twice"
            out[row[cols.index("event_id")]] = row[cols.index("received_at")]
    return out


def ch_counts(data_dir: Path) -> Counter[str]:
    rows = clickhouse_rows(
        data_dir / "clickhouse",
        "SELECT toString(event_id), count() FROM events_raw_v1 GROUP BY event_id",
    )
    return Counter({r[0]: r[1] for r in rows})


class Load:
    """Threads posting batches of events with client ids until told to stop (or until
    the server stops listening). Records exactly which ids got a 202."""

    def __init__(self, server: Server, token: str, threads: int = 4, batch: int = 20) -> None:
        self.server, self.token, self.batch = server, token, batch
        self.accepted: list[str] = []
        self.unknown: list[str] = []  # sent, but the connection broke before an answer
        self.statuses: Counter[int | str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            events = events_with_ids(self.batch)
            try:
                resp = self.server.post({"token": self.token, "events": events}, timeout=10)
            except (urllib.error.URLError, ConnectionError, OSError):
                with self._lock:
                    self.statuses["refused"] += 1
                    self.unknown += [e["uuid"] for e in events]
                if self.server.proc.poll() is not None:
                    return
                time.sleep(0.01)
                continue
            with self._lock:
                self.statuses[resp.status] += 1
                if resp.status == 202:
                    self.accepted += [e["uuid"] for e in events]

    def count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def test_1_clickhouse_unreachable_then_restart_lands_every_event_once(
    start_server, project, pg, database_url, tmp_path
) -> None:
    _, token = project
    db = db_name(database_url)
    down = start_server(CLICKHOUSE_URL=dead_clickhouse_url())
    with Load(down, token) as load:
        poll(lambda: load.count() >= 1000)
    accepted = set(load.accepted)
    assert load.statuses["refused"] == 0 and set(load.statuses) == {202}
    poll(lambda: len(dlq_rows(pg, db)) == len(accepted))
    assert down.stop() == 0
    parked = dlq_rows(pg, db)
    assert set(parked) == accepted

    up = start_server(data_dir=tmp_path / "data")
    poll(lambda: pg.psql("SELECT count(*) FROM failed_events", db) == "0", timeout=120)
    assert up.stop() == 0
    rows = clickhouse_rows(
        tmp_path / "data" / "clickhouse",
        "SELECT toString(event_id), toUnixTimestamp64Milli(received_at), count() "
        "FROM events_raw_v1 GROUP BY event_id, received_at",
    )
    assert {r[0]: r[1] for r in rows} == parked  # every event, received_at unchanged
    assert len(rows) == len(accepted) and {r[2] for r in rows} == {1}


def test_2_a_long_clickhouse_outage_quarantines_nothing(
    start_server, project, pg, database_url, tmp_path
) -> None:
    _, token = project
    db = db_name(database_url)
    down = start_server(CLICKHOUSE_URL=dead_clickhouse_url())
    sent = events_with_ids(50)
    assert down.post({"token": token, "events": sent}).status == 202
    poll(lambda: pg.psql("SELECT count(*) FROM failed_events", db) == "1")
    # Compress a long outage: make the row due again and again (as `sluice dlq retry
    # --all` does) and let the server fail against the dead ClickHouse each time.
    for _ in range(12):
        before = int(pg.psql("SELECT attempt_count FROM failed_events", db))
        pg.psql("UPDATE failed_events SET next_attempt_at = now()", db)
        poll(lambda b=before: int(pg.psql("SELECT attempt_count FROM failed_events", db)) > b)
    row = pg.psql("SELECT attempt_count, quarantined_at IS NULL, last_error FROM failed_events",
                  db).split("|")  # fmt: skip
    assert int(row[0]) >= 13 and row[1] == "t" and "unavailable" in row[2]
    assert down.stop() == 0

    up = start_server(data_dir=tmp_path / "data")
    poll(lambda: pg.psql("SELECT count(*) FROM failed_events", db) == "0", timeout=60)
    assert up.stop() == 0
    assert ch_counts(tmp_path / "data") == Counter({e["uuid"]: 1 for e in sent})


def test_3_clickhouse_and_postgres_down_is_fatal_and_recovers_without_loss(
    start_server, own_pg: Postgres, tmp_path
) -> None:
    dsn = own_pg.dsn()
    _, token = make_project(dsn)
    server = start_server(DATABASE_URL=dsn, CLICKHOUSE_URL=dead_clickhouse_url())
    accepted: list[str] = []
    batch = events_with_ids(30)
    assert server.post({"token": token, "events": batch}).status == 202
    accepted += [e["uuid"] for e in batch]
    poll(lambda: own_pg.psql("SELECT coalesce(sum(event_count), 0) FROM failed_events") == "30")

    own_pg.stop()
    batch = events_with_ids(40)
    assert server.post({"token": token, "events": batch}).status == 202
    accepted += [e["uuid"] for e in batch]
    poll(lambda: server.healthz().status == 503)
    health = server.healthz().json()
    assert (health["status"], health["fatal"]) == ("down", True)
    refused = server.post({"token": token, "events": events_with_ids(5)})
    assert (refused.status, refused.json()) == (503, {"error": "ingest down"})

    own_pg.start()  # Postgres back: the held batch parks, fatal clears
    poll(lambda: server.healthz().json()["fatal"] is False, timeout=30)
    assert server.healthz().json()["buffer"]["pending"] == 0
    assert server.stop() == 0
    assert sorted(dlq_rows(own_pg, "postgres")) == sorted(accepted)

    up = start_server(DATABASE_URL=dsn, data_dir=tmp_path / "data")  # ClickHouse back
    poll(lambda: own_pg.psql("SELECT count(*) FROM failed_events") == "0", timeout=60)
    assert up.healthz().json()["fatal"] is False
    assert up.stop() == 0
    assert ch_counts(tmp_path / "data") == Counter({i: 1 for i in accepted})


def test_4_one_event_clickhouse_rejects_is_quarantined_alone(
    start_server, project, pg, database_url, tmp_path
) -> None:
    _, token = project
    db = db_name(database_url)
    data = tmp_path / "data"
    env = {"DATABASE_URL": database_url, "DATA_DIR": str(data)}
    import os

    subprocess.run([*SLUICE, "migrate", "up"], env={**os.environ, **env}, check=True,
                   capture_output=True)  # fmt: skip
    # A rule the operator added in ClickHouse: validation passes, ClickHouse refuses.
    clickhouse_rows(
        data / "clickhouse",
        "ALTER TABLE events_raw_v1 ADD CONSTRAINT no_poison CHECK event != 'poison'",
    )
    server = start_server(data_dir=data)
    good = events_with_ids(60)
    poison = events_with_ids(1)
    poison[0]["event"] = "poison"
    batch = good[:25] + poison + good[25:]
    assert server.post({"token": token, "events": batch}).json()["accepted"] == 61
    poll(lambda: pg.psql("SELECT count(*) FROM failed_events WHERE quarantined_at IS NOT NULL",
                         db) == "1")  # fmt: skip
    assert server.stop() == 0
    quarantined = dlq_rows(pg, db, "quarantined_at IS NOT NULL")
    assert list(quarantined) == [poison[0]["uuid"]]
    reason = pg.psql("SELECT last_error FROM failed_events", db)
    assert "VIOLATED_CONSTRAINT" in reason
    assert pg.psql("SELECT count(*) FROM failed_events WHERE quarantined_at IS NULL", db) == "0"
    assert ch_counts(data) == Counter({e["uuid"]: 1 for e in good})


def test_5_sigterm_under_load_keeps_every_202_and_readyz_turns_first(
    start_server, project, pg, database_url, tmp_path
) -> None:
    _, token = project
    db = db_name(database_url)
    server = start_server(INGEST_FLUSH_INTERVAL="2s")
    ready_log: list[int | str] = []

    def watch_readyz() -> None:
        while True:
            try:
                ready_log.append(request(server.url + "/readyz", timeout=2).status)
            except OSError:
                ready_log.append("refused")
                return
            time.sleep(0.005)

    with Load(server, token) as load:
        poll(lambda: load.count() >= 2000)
        watcher = threading.Thread(target=watch_readyz, daemon=True)
        watcher.start()
        poll(lambda: len(ready_log) > 3)
        server.signal(signal.SIGTERM)
        assert server.wait(60) == 0, server.logs()
        watcher.join(10)
    accepted = load.accepted
    assert len(accepted) == len(set(accepted))
    in_ch = ch_counts(tmp_path / "data")
    in_dlq = dlq_rows(pg, db)
    assert set(in_ch.values()) <= {1}
    assert set(in_ch) | set(in_dlq) == set(accepted)
    assert not set(in_ch) & set(in_dlq)
    first_refused = ready_log.index("refused")
    assert 503 in ready_log[:first_refused], ready_log[-20:]
    assert ready_log[0] == 200


def test_6_sigkill_under_load_loses_nothing_and_restarts_at_once(
    start_server, project, pg, database_url, tmp_path, capsys
) -> None:
    """SIGKILL under sustained load, three times, each followed by an immediate restart
    on the same data directory: every event answered 202 is in ClickHouse exactly once
    (or parked), none extra."""
    _, token = project
    db = db_name(database_url)
    data = tmp_path / "data"
    accepted: list[str] = []
    unknown: list[str] = []  # the kill came before their answer: stored or not, either way
    for _ in range(3):
        server = start_server(data_dir=data, INGEST_FLUSH_INTERVAL="2s")
        with Load(server, token) as load:
            # Run past a flush, so batches are in flight, queued and being filled.
            poll(lambda s=server, ld=load: len(s.log_events("flush")) >= 1 and ld.count() >= 3000)
            server.signal(signal.SIGKILL)
            server.wait(30)
        accepted += load.accepted
        unknown += load.unknown
    last = start_server(data_dir=data)  # recovers the last kill's log, then stops cleanly
    assert last.stop() == 0, last.logs()
    assert len(accepted) == len(set(accepted))
    in_ch = ch_counts(data)
    in_dlq = dlq_rows(pg, db)
    assert set(in_ch.values()) <= {1}, "an event stored twice"
    stored = set(in_ch) | set(in_dlq)
    assert set(accepted) <= stored  # nothing answered 202 is lost
    assert stored <= set(accepted) | set(unknown)  # nothing that was never sent
    assert not set(in_ch) & set(in_dlq)
    assert not list((data / "wal").glob("*.wal"))
    with capsys.disabled():
        print(f"\n[chaos 6] 3 x SIGKILL under load: {len(accepted)} events answered 202, "
              f"{len(in_ch)} in ClickHouse, {len(in_dlq)} parked, 0 lost; "
              f"{len(stored - set(accepted))} stored whose answer the kill cut off")  # fmt: skip


def test_6b_sigkill_while_clickhouse_is_down_then_restart_lands_everything_once(
    start_server, project, pg, database_url, tmp_path
) -> None:
    _, token = project
    db = db_name(database_url)
    data = tmp_path / "data"
    down = start_server(data_dir=data, CLICKHOUSE_URL=dead_clickhouse_url(),
                        INGEST_FLUSH_INTERVAL="500ms")  # fmt: skip
    with Load(down, token) as load:
        poll(lambda: load.count() >= 2000 and "parked" in down.logs())
        down.signal(signal.SIGKILL)
        down.wait(30)
    up = start_server(data_dir=data)  # a working ClickHouse: the log and the DLQ replay
    poll(lambda: pg.psql("SELECT count(*) FROM failed_events", db) == "0", timeout=120)
    poll(lambda: up.healthz().json()["buffer"]["pending"] == 0)
    assert up.stop() == 0, up.logs()
    in_ch = ch_counts(data)
    assert set(in_ch.values()) == {1}
    assert set(load.accepted) <= set(in_ch) <= set(load.accepted) | set(load.unknown)


def test_6c_sigterm_under_load_while_clickhouse_hangs_exits_within_the_grace(
    start_server, project, pg, database_url, tmp_path, silent_listener
) -> None:
    _, token = project
    db = db_name(database_url)
    data = tmp_path / "data"
    url = f"http://127.0.0.1:{silent_listener}/default"  # accepts, never answers
    slow = start_server(data_dir=data, CLICKHOUSE_URL=url, INGEST_SHUTDOWN_GRACE="3s",
                        INGEST_FLUSH_INTERVAL="300ms")  # fmt: skip
    with Load(slow, token) as load:
        poll(lambda: load.count() >= 2000)
        started = time.monotonic()
        slow.signal(signal.SIGTERM)
        code = slow.wait(60)
    took = time.monotonic() - started
    assert code in (0, 3), slow.logs()  # 3: some batches stay in the log for the next boot
    assert took < 3 + 1.5, f"shutdown took {took:.1f}s with a 3s grace"
    up = start_server(data_dir=data)
    poll(lambda: pg.psql("SELECT count(*) FROM failed_events", db) == "0", timeout=120)
    poll(lambda: up.healthz().json()["buffer"]["pending"] == 0)
    assert up.stop() == 0, up.logs()
    assert ch_counts(data) == Counter({i: 1 for i in load.accepted})


def test_6d_one_client_event_sent_to_two_instances_with_new_sent_at_is_one_row(
    start_server, project, tmp_path
) -> None:
    """A client retry with its own id but a different sent_at (every SDK sends one),
    first to one instance, then to another (its own process, data dir and log, the same
    Postgres and ClickHouse): one row in FINAL, and after OPTIMIZE."""
    _, token = project
    shared = f"chdb://{tmp_path / 'clickhouse'}"
    same = events_with_ids(20)
    other = events_with_ids(1)
    other[0]["timestamp"] = same[0]["timestamp"]  # same time and name: still two events
    first = start_server(data_dir=tmp_path / "a", CLICKHOUSE_URL=shared)
    assert first.post({"token": token, "events": same + other,
                       "sent_at": "2026-11-01T12:00:03Z"}).status == 202  # fmt: skip
    assert first.stop() == 0
    second = start_server(data_dir=tmp_path / "b", CLICKHOUSE_URL=shared)
    assert second.post({"token": token, "events": same,
                        "sent_at": "2026-11-01T11:59:00Z"}).status == 202  # fmt: skip
    assert second.stop() == 0
    path = tmp_path / "clickhouse"
    assert clickhouse_rows(path, "SELECT count() FROM events_raw_v1") == [(41,)]
    assert clickhouse_rows(path, "SELECT count() FROM events_raw_v1 FINAL") == [(21,)]
    # The two copies were corrected differently (their timestamps differ) …
    assert clickhouse_rows(path, "SELECT uniqExact(timestamp) FROM events_raw_v1 "
                           f"WHERE event_id = '{same[5]['uuid']}'") == [(2,)]  # fmt: skip
    clickhouse_rows(path, "OPTIMIZE TABLE events_raw_v1 FINAL")
    # … and still collapse: one row per event, the other event with the same time kept.
    assert clickhouse_rows(path, "SELECT count(), uniqExact(event_id) FROM events_raw_v1") == [
        (21, 21)
    ]


def test_7_two_servers_on_one_postgres_drain_one_backlog_exactly_once(
    start_server, database_url, pg, tmp_path
) -> None:
    from ingest.deadletter import DeadLetter
    from ingest.ids import uuid_str
    from ingest.validate import validate_rows
    from storage.migrations import postgres_up
    from storage.postgres import create_pool

    db = db_name(database_url)
    now = int(time.time() * 1000)
    project = uuid.uuid4().int

    async def backlog() -> list[str]:
        pool = await create_pool(database_url, retry_for=5)
        ids: list[str] = []
        try:
            await postgres_up(pool)
            for _ in range(80):
                rows, _ = validate_rows(
                    [{"event": "b", "timestamp": now} for _ in range(100)], project, now
                )
                await DeadLetter(pool).park(str(uuid.uuid4()), rows, "outage")
                ids += [uuid_str(r[0]) for r in rows]
        finally:
            await pool.close()
        return ids

    ids = asyncio.run(backlog())
    a = start_server(wait=False, data_dir=tmp_path / "a", INGEST_DLQ_DRAIN_BATCH_LIMIT="2")
    b = start_server(wait=False, data_dir=tmp_path / "b", INGEST_DLQ_DRAIN_BATCH_LIMIT="2")
    a.wait_ready()
    b.wait_ready()
    poll(lambda: pg.psql("SELECT count(*) FROM failed_events", db) == "0", timeout=120)
    assert a.stop() == 0 and b.stop() == 0
    in_a, in_b = ch_counts(tmp_path / "a"), ch_counts(tmp_path / "b")
    assert not set(in_a) & set(in_b)  # no row replayed by both
    assert in_a + in_b == Counter({i: 1 for i in ids})
