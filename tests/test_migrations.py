"""Migrations on the real stores: applied in order, recorded, idempotent."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

from support import SLUICE, clickhouse_rows

from storage.clickhouse import open_clickhouse
from storage.migrations import (
    clickhouse_status,
    clickhouse_up,
    discover,
    postgres_status,
    postgres_up,
)
from storage.postgres import create_pool


def test_postgres_migrations_apply_once(database_url: str) -> None:
    async def run() -> None:
        pool = await create_pool(database_url, retry_for=5)
        try:
            before = await postgres_status(pool)
            assert [s.applied for s in before] == [False] * len(discover("postgres"))
            first = await postgres_up(pool)
            assert [m.version for m in first] == [m.version for m in discover("postgres")]
            second = await postgres_up(pool)
            assert second == []
            tables = {
                r["tablename"]
                for r in await pool.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname='public'"
                )
            }
            assert {"projects", "api_tokens", "failed_events", "schema_migrations"} <= tables
            recorded = await pool.fetch("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in recorded] == [m.version for m in first]
            index = await pool.fetchval(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'failed_events_due'"
            )
            assert "next_attempt_at" in index and "quarantined_at IS NULL" in index
        finally:
            await pool.close()

    asyncio.run(run())


def test_concurrent_postgres_migrations_apply_each_file_once(database_url: str) -> None:
    async def run() -> None:
        pools = [await create_pool(database_url, retry_for=5) for _ in range(3)]
        try:
            results = await asyncio.gather(*(postgres_up(p) for p in pools))
            assert sum(len(r) for r in results) == len(discover("postgres"))
        finally:
            for p in pools:
                await p.close()

    asyncio.run(run())


def test_clickhouse_migrations_apply_once(tmp_path: Path) -> None:
    path = tmp_path / "ch"

    async def run() -> None:
        ch = await open_clickhouse(f"chdb://{path}")
        try:
            assert not any(s.applied for s in await clickhouse_status(ch))
            first = await clickhouse_up(ch)
            assert [m.version for m in first] == [m.version for m in discover("clickhouse")]
            assert await clickhouse_up(ch) == []
            assert all(s.applied for s in await clickhouse_status(ch))
        finally:
            await ch.close()

    asyncio.run(run())
    columns = clickhouse_rows(path, "SELECT name, type FROM system.columns "
                              "WHERE table = 'events_raw_v1' ORDER BY position")  # fmt: skip
    assert columns == [
        ("event_id", "UUID"),
        ("project_id", "UUID"),
        ("event", "LowCardinality(String)"),
        ("anonymous_id", "Nullable(String)"),
        ("user_id", "Nullable(String)"),
        ("session_id", "Nullable(String)"),
        ("timestamp", "DateTime64(3, 'UTC')"),
        ("received_at", "DateTime64(3, 'UTC')"),
        ("properties", "String"),
        ("extras", "String"),
        ("client_timestamp", "DateTime64(3, 'UTC')"),
        # 0003: the user agent and what it says, then the page values ClickHouse computes
        ("user_agent", "LowCardinality(String)"),
        ("browser", "LowCardinality(String)"),
        ("os", "LowCardinality(String)"),
        ("device_type", "LowCardinality(String)"),
        ("is_bot", "UInt8"),
        *(
            (name, "LowCardinality(String)")
            for name in (
                "path",
                "referrer_domain",
                "utm_source",
                "utm_medium",
                "utm_campaign",
                "utm_term",
                "utm_content",
            )
        ),
        ("inserted_at", "DateTime"),  # 0005
    ]
    (engine, sorting, partition, default_kinds) = clickhouse_rows(
        path,
        "SELECT engine, sorting_key, partition_key, "
        "(SELECT groupArray(default_kind) FROM system.columns WHERE table = 'events_raw_v1') "
        "FROM system.tables WHERE name = 'events_raw_v1'",
    )[0]
    assert engine == "ReplacingMergeTree"
    assert sorting == "project_id, toDate(client_timestamp), event, client_timestamp, event_id"
    assert partition == "toYYYYMM(client_timestamp)"
    # received_at is stamped by Sluice, never defaulted; client_timestamp defaults to
    # timestamp only for rows that lack it (stored before 0002); the agent columns
    # default to '' / 0 for rows stored before 0003, whose page values ClickHouse computes;
    # inserted_at is stamped by ClickHouse at insert (0005).
    assert default_kinds == [""] * 10 + ["DEFAULT"] * 6 + ["MATERIALIZED"] * 8
    # A fresh install keeps no copy of the (empty) table 0002 replaced.
    assert clickhouse_rows(path, "SELECT count() FROM system.tables "
                           "WHERE name LIKE 'events_raw_v1_%'") == [(0,)]  # fmt: skip


def test_migrate_cli_status_up_dry_run(tmp_path: Path, database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "DATA_DIR": str(tmp_path)}

    def sluice(*args: str) -> dict:
        proc = subprocess.run(
            [*SLUICE, "migrate", *args, "--json"], env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    dry = sluice("dry-run")
    assert dry["postgres"]["pending"] == len(discover("postgres"))
    assert "CREATE TABLE" in dry["postgres"]["migrations"][0]["sql"]
    assert dry["clickhouse"]["pending"] == len(discover("clickhouse"))
    up = sluice("up")
    assert up["postgres"]["applied"] == [m.version for m in discover("postgres")]
    assert up["clickhouse"]["applied"] == [m.version for m in discover("clickhouse")]
    again = sluice("up")
    assert again == {"postgres": {"applied": []}, "clickhouse": {"applied": []}}
    status = sluice("status")
    assert status["postgres"]["pending"] == 0 and status["clickhouse"]["pending"] == 0


def test_0002_carries_stored_rows_over_and_completes_a_run_cut_short(tmp_path: Path) -> None:
    """An install at 0001 with rows: 0002 copies them (client_timestamp = timestamp) and
    keeps the old table aside; running 0002 again (as after a crash before its
    bookkeeping row was written) changes nothing."""
    path = tmp_path / "ch"
    first, second = discover("clickhouse")[:2]

    async def run() -> None:
        ch = await open_clickhouse(f"chdb://{path}")
        try:
            await ch.command(
                "CREATE TABLE IF NOT EXISTS sluice_schema_migrations (version UInt32, "
                "name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
                "ENGINE = ReplacingMergeTree ORDER BY version"
            )
            for statement in first.statements():
                await ch.command(statement)
            await ch.command(
                f"INSERT INTO sluice_schema_migrations (version, name) VALUES (1, '{first.name}')"
            )
            await ch.command(
                "INSERT INTO events_raw_v1 (event_id, project_id, event, timestamp, received_at,"
                " properties, extras) VALUES (generateUUIDv4(), generateUUIDv4(), 'old', "
                "'2026-01-02 03:04:05.678', '2026-01-02 03:04:06', '{}', '{}')"
            )
            assert (await clickhouse_up(ch))[0].version == 2  # and the later ones
            await second.run_python(ch)
        finally:
            await ch.close()

    asyncio.run(run())
    assert clickhouse_rows(
        path, "SELECT event, toString(client_timestamp), toString(timestamp) FROM events_raw_v1"
    ) == [("old", "2026-01-02 03:04:05.678", "2026-01-02 03:04:05.678")]
    assert clickhouse_rows(path, "SELECT count() FROM events_raw_v1_pre0002") == [(1,)]
    assert clickhouse_rows(path, "SELECT count() FROM system.tables "
                           "WHERE name = 'events_raw_v1_next'") == [(0,)]  # fmt: skip
