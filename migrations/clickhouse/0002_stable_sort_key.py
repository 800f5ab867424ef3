"""0002 — a sort key that is the same on every retry of an event; the client's own time.

events_raw_v1 gains client_timestamp (the event's time as the client sent it: no clock
skew correction, no clamp) and is re-keyed on it:

    PARTITION BY toYYYYMM(client_timestamp)
    ORDER BY (project_id, toDate(client_timestamp), event, client_timestamp, event_id)

Before, the key held the corrected timestamp, which differs between two attempts of one
event that carry different sent_at values, so ReplacingMergeTree never collapsed them.
Every value of the new key (and the partition) is the same on every attempt.

ClickHouse cannot change a sort key in place: the rows are copied into a new table
(client_timestamp = timestamp for rows stored before: their original time is not kept
separately), the two tables are swapped atomically, and the old one is kept as
events_raw_v1_pre0002 when it held rows (drop it once satisfied; it is empty on a fresh
install and then dropped). Each step checks the state first, so a run cut short anywhere
is completed by the next one. Stop every instance writing to this ClickHouse first:
rows inserted into the old table during the copy stay in events_raw_v1_pre0002.
"""

from __future__ import annotations

from typing import Any

NEW_KEY = "project_id, toDate(client_timestamp), event, client_timestamp, event_id"
NEXT, OLD = "events_raw_v1_next", "events_raw_v1_pre0002"
COLUMNS = (
    "event_id, project_id, event, anonymous_id, user_id, session_id, timestamp, received_at, "
    "properties, extras"
)
CREATE = f"""
CREATE TABLE {NEXT}
(
    event_id          UUID,
    project_id        UUID,
    event             LowCardinality(String),
    anonymous_id      Nullable(String),
    user_id           Nullable(String),
    session_id        Nullable(String),
    timestamp         DateTime64(3, 'UTC'),
    received_at       DateTime64(3, 'UTC'),
    properties        String,
    extras            String,
    client_timestamp  DateTime64(3, 'UTC') DEFAULT timestamp,
    INDEX timestamp_minmax timestamp TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(client_timestamp)
ORDER BY ({NEW_KEY})
SETTINGS non_replicated_deduplication_window = 100000
"""


async def _table(ch: Any, name: str) -> tuple[str, int] | None:
    rows = await ch.query_rows(
        "SELECT sorting_key, toInt64(ifNull(total_rows, 0)) FROM system.tables "
        "WHERE database = currentDatabase() AND name = {name:String}",
        {"name": name},
    )
    return (rows[0][0], int(rows[0][1])) if rows else None


async def up(ch: Any) -> None:
    current = await _table(ch, "events_raw_v1")
    if current is not None and current[0] != NEW_KEY:
        # Not swapped yet: (re)build the new table from scratch and copy every row.
        await ch.command(f"DROP TABLE IF EXISTS {NEXT}")
        await ch.command(CREATE)
        await ch.command(
            f"INSERT INTO {NEXT} ({COLUMNS}, client_timestamp) "
            f"SELECT {COLUMNS}, timestamp FROM events_raw_v1",
            settings={"throw_on_max_partitions_per_insert_block": 0, "insert_deduplicate": 0},
        )
        await ch.command(f"EXCHANGE TABLES events_raw_v1 AND {NEXT}")
    elif current is None:  # no 0001 table at all (cannot happen through the runner)
        await ch.command(CREATE)
        await ch.command(f"RENAME TABLE {NEXT} TO events_raw_v1")
        return
    # Swapped: what sits under NEXT now is the old table.
    leftover = await _table(ch, NEXT)
    if leftover is None:
        return
    if leftover[1] == 0:
        await ch.command(f"DROP TABLE {NEXT}")
    else:
        await ch.command(f"RENAME TABLE {NEXT} TO {OLD}")
