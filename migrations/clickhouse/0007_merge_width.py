"""0007 — events_raw_v1 merges wider: each row is rewritten fewer times.

    ALTER TABLE events_raw_v1 MODIFY SETTING merge_selector_base = 10   (default 5)

A table setting, metadata only: instant on a table of any size, no row or column
changes, and merges of parts already on disk simply follow the new rule.

Why. Every batch Sluice inserts becomes a part, and ClickHouse's background merges
rewrite those parts into larger ones: decompress, merge, compress again (ZSTD, 0006).
How many parts one merge takes at once decides how many times a row is rewritten before
it sits in a large part (the write amplification); ``merge_selector_base`` is that
knob. Measured in the bench's sustained phase (20 s at saturation on the embedded
engine, which shares two cores with the HTTP process): with merges turned off
entirely the engine stored 141k events/s against 96k with them, so merging was a third
of the engine's work; with base 10, five runs of each, interleaved: median 113,744
events/s (97k-121k) against 95,945 (89k-99k) with the default. The price is more parts
between merges (about twice as many small ones per partition at any moment): a read
opens a few more files, far below ``parts_to_delay_insert``.

A ClickHouse server too old to know the setting (it arrived in 24.x) keeps its default:
the migration checks ``system.merge_tree_settings`` first and records itself either way,
so an old server boots as before.
"""

from __future__ import annotations

from typing import Any

SETTING, VALUE = "merge_selector_base", 10


async def up(ch: Any) -> None:
    known = await ch.query_rows(
        "SELECT count() FROM system.merge_tree_settings WHERE name = {name:String}",
        {"name": SETTING},
    )
    if known[0][0]:
        await ch.command(f"ALTER TABLE events_raw_v1 MODIFY SETTING {SETTING} = {VALUE}")
