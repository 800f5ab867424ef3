"""Migrations 0006 and 0007: storage tuned by measurement (codecs; merge width), nothing
else (types, defaults, rows kept)."""

from __future__ import annotations

import uuid

from ingest.rows import COLUMN_TYPES, COLUMNS
from storage.clickhouse import ClickHouse
from storage.migrations import discover

CHOSEN = {
    "event_id": "",
    "project_id": "",
    "event": "",
    "anonymous_id": "CODEC(ZSTD(1))",
    "user_id": "CODEC(ZSTD(1))",
    "session_id": "CODEC(ZSTD(1))",
    "timestamp": "CODEC(Delta(8), ZSTD(1))",
    "received_at": "CODEC(Delta(8), ZSTD(1))",
    "properties": "CODEC(ZSTD(1))",
    "extras": "CODEC(ZSTD(1))",
    "client_timestamp": "CODEC(Delta(8), ZSTD(1))",
}


async def _columns(ch: ClickHouse) -> dict[str, tuple[str, str, str, str]]:
    rows = await ch.query_rows(
        "SELECT name, type, default_kind, default_expression, compression_codec "
        "FROM system.columns WHERE database = currentDatabase() AND table = 'events_raw_v1'"
    )
    return {name: (kind, dk, de, codec) for name, kind, dk, de, codec in rows}


async def test_0006_sets_the_measured_codecs_and_keeps_every_type(ch: ClickHouse) -> None:
    columns = await _columns(ch)
    for name, kind in zip(COLUMNS, COLUMN_TYPES, strict=True):
        assert columns[name][0] == kind, name  # the stored contract: no type changed
        assert columns[name][3] == CHOSEN.get(name, ""), name  # later columns: untouched
    assert columns["client_timestamp"][1:3] == ("DEFAULT", "timestamp")  # 0002's default
    (sorting,) = (await ch.query_rows(
        "SELECT sorting_key FROM system.tables WHERE name = 'events_raw_v1'"))[0]  # fmt: skip
    assert sorting == "project_id, toDate(client_timestamp), event, client_timestamp, event_id"


async def test_rows_stored_before_0006_read_back_the_same_and_it_runs_again(
    ch: ClickHouse,
) -> None:
    for name, codec in CHOSEN.items():  # as an install before 0006: the default codec
        if codec:
            await ch.command(f"ALTER TABLE events_raw_v1 MODIFY COLUMN {name} CODEC(Default)")
    project = uuid.uuid4()
    await ch.command(
        "INSERT INTO events_raw_v1 (event_id, project_id, event, anonymous_id, user_id, "
        "session_id, timestamp, received_at, properties, extras) "
        f"SELECT generateUUIDv4(number), '{project}', 'e' || toString(number % 7), "
        "'anon-' || toString(number % 50), if(number % 3 = 0, NULL, 'u' || toString(number)), "
        "NULL, fromUnixTimestamp64Milli(1790000000000 + number * 1000, 'UTC'), "
        "fromUnixTimestamp64Milli(1790000000500 + number * 1000, 'UTC'), "
        "'{\"path\":\"/p' || toString(number % 9) || '\"}', '{}' FROM numbers(5000)"
    )
    digest = "SELECT count(), sum(cityHash64(*)) FROM events_raw_v1"
    before = await ch.query_rows(digest)
    (migration,) = [m for m in discover("clickhouse") if m.version == 6]
    for _ in range(2):  # idempotent: a second run (as after a run cut short) is harmless
        for statement in migration.statements():
            await ch.command(statement)
    await ch.command("OPTIMIZE TABLE events_raw_v1 FINAL")  # rewritten with the codecs
    assert await ch.query_rows(digest) == before
    assert before[0][0] == 5000
    columns = await _columns(ch)
    assert {name: columns[name][3] for name in CHOSEN} == CHOSEN


async def _ddl(ch: ClickHouse) -> str:
    query = (
        "SELECT create_table_query FROM system.tables "
        "WHERE database = currentDatabase() AND name = 'events_raw_v1'"
    )
    return (await ch.query_rows(query))[0][0]


async def test_0007_widens_merges_and_runs_again(ch: ClickHouse) -> None:
    query = "SELECT value FROM system.merge_tree_settings WHERE name = 'merge_selector_base'"
    assert (await ch.query_rows(query))[0][0] == "5"  # the engine's default, for other tables
    ddl = await _ddl(ch)
    assert "merge_selector_base = 10" in ddl
    assert "non_replicated_deduplication_window = 100000" in ddl  # 0001's setting kept
    (migration,) = [m for m in discover("clickhouse") if m.version == 7]
    await migration.run_python(ch)  # a second run changes nothing
    assert await _ddl(ch) == ddl
