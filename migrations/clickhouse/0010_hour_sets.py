"""0010 — rollup_hour_sets_v1: each fold's hourly counts with the hour's persons as one array.

    CREATE TABLE rollup_hour_sets_v1 (project_id, hour, dim, value, is_bot, version,
        events, persons Array(UInt64))
        ReplacingMergeTree(version) ORDER BY (project_id, hour, dim, value, is_bot)
    TRUNCATE, then INSERT ... sum(events), groupArray(person) FROM rollup_hourly_v1

What for. ``/stats/timeseries?interval=hour`` counts distinct persons per hour. Read from
``rollup_hourly_v1``, one row per (hour, person), 30 days of the bench's project are
1.05M rows, and every row is checked against its day's fold version (a per-row
lookup, ~35 ms of the ~150). The same persons as one array per (hour, dimension, value,
bot flag) are 720 rows for all events over 30 days: the version is checked once per
hour and the persons are read as one column. Measured on the bench's 10M-event store,
30 days, 7 rounds: 147 ms against 110 ms, the same answer. Each fold
(ingest/rollup.py) writes them from the hourly rows it just wrote, under the same
version, before ``rollup_days_v1`` names that version; ``rollup_hourly_v1`` keeps being
written (the rows these arrays come from).

Carried over: every row of ``rollup_hourly_v1``, grouped per (project, hour, dimension,
value, bot flag, version). The table is new in this migration and nothing else writes to
it before the migration is recorded, so a run cut short is simply run again from an
empty table. (Two servers booting onto the same ClickHouse at the same moment could
race here, as with 0002: upgrade one server first.)
"""

from __future__ import annotations

from typing import Any

TABLE = "rollup_hour_sets_v1"


async def up(ch: Any) -> None:
    await ch.command(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (project_id UUID, hour DateTime('UTC'), "
        "dim LowCardinality(String), value LowCardinality(String), is_bot UInt8, "
        "version UInt64, events UInt64, persons Array(UInt64)) "
        "ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(hour) "
        "ORDER BY (project_id, hour, dim, value, is_bot)"
    )
    await ch.command(f"TRUNCATE TABLE {TABLE}")
    await ch.command(
        f"INSERT INTO {TABLE} (project_id, hour, dim, value, is_bot, version, events, persons) "
        "SELECT project_id, hour, dim, value, is_bot, version, sum(events), groupArray(person) "
        "FROM rollup_hourly_v1 GROUP BY project_id, hour, dim, value, is_bot, version"
    )
