"""0008 — rollup_values_v1: each fold's counts per (day, dimension, value), without persons.

    CREATE TABLE rollup_values_v1 (project_id, day, dim, value, is_bot, version, events)
        ReplacingMergeTree ORDER BY (project_id, day, dim, value, is_bot, version)
    INSERT INTO rollup_values_v1 SELECT ... sum(events) FROM rollup_daily_v1 GROUP BY ...

What for. ``/stats/top`` ranks the values of a dimension by events, then counts the
persons of the top ones only. The ranking read ``rollup_daily_v1``, which keeps one row
per (day, value, person): over 30 days of the bench's project 2.97M rows for ``path``,
1.89M for ``event`` — 75-115 ms to sum them, for an answer of ten values. The same sums
per (day, value) are a few hundred rows a day. Each fold (ingest/rollup.py) writes them
from the daily rows it just wrote, under the same version, before ``rollup_days_v1``
names that version; readers pick the named version as they do in the daily table.

``version`` is part of the sort key and readers use ``FINAL``: two copies of one row
(a fold's insert retried, this migration run again after a failure) collapse into one,
while the rows of an older fold of the same day stay until nothing names them (a few
hundred rows per re-fold; they are never read).

Carried over: every row of ``rollup_daily_v1``, summed per (project, day, dimension,
value, bot flag, version) — every fold already stored, at its own version. Running this
again inserts the same rows, which ``FINAL`` collapses.

Upgrade note: a server older than 0008 still folding days next to a newer one writes no
rows here; the top values of such a day are then missing from rankings until it is
folded again by a newer server. Stop old servers before starting new ones.
"""

from __future__ import annotations

from typing import Any

TABLE = "rollup_values_v1"


async def up(ch: Any) -> None:
    await ch.command(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (project_id UUID, day Date, "
        "dim LowCardinality(String), value LowCardinality(String), is_bot UInt8, "
        "version UInt64, events UInt64) ENGINE = ReplacingMergeTree "
        "PARTITION BY toYYYYMM(day) ORDER BY (project_id, day, dim, value, is_bot, version)"
    )
    await ch.command(
        f"INSERT INTO {TABLE} (project_id, day, dim, value, is_bot, version, events) "
        "SELECT project_id, day, dim, value, is_bot, version, sum(events) "
        "FROM rollup_daily_v1 GROUP BY project_id, day, dim, value, is_bot, version"
    )
