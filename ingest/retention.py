"""Retention of raw events: ``EVENTS_RETENTION_DAYS`` as a TTL on ``events_raw_v1``.

Enters: the migrated ClickHouse store and the configured number of days (0 = off).
Leaves: what was done — ``"set"``, ``"changed"``, ``"removed"`` or ``"unchanged"`` — for
the caller to log. On failure: the store's :class:`~storage.clickhouse.ClickHouseError`
propagates; boot treats it as it treats a ClickHouse migration (the embedded engine: the
process exits 1; a server: retried in the background with the migrations).

The TTL is ``toDateTime(timestamp) + toIntervalDay(N)``, on ``timestamp``:

* the time every read uses (``since``/``until`` select on it), so an event leaves the
  store when it leaves every window a read can ask for: what the API shows as an event's
  age is the age retention judges;
* corrected for the client's clock skew and never more than a day ahead of arrival, so
  a device whose clock is years off neither loses its events at once nor keeps them for
  ever — ``client_timestamp`` (the raw client clock, in the sort key) would do both;
* not ``received_at``: an import of old events would then stay for N days after the
  import while every read treats it as old.

It is applied at every boot, after the migrations, and only when it differs from what
the table has (a restart changes nothing): ``ALTER TABLE … MODIFY TTL`` with
``materialize_ttl_after_modify = 1`` (rows already stored are judged too — ClickHouse
rewrites the parts in the background), ``REMOVE TTL`` when retention is turned off and
the table has one. Sluice owns this table's TTL: one set by hand is replaced.

ClickHouse deletes expired rows when it merges parts (a part with expired rows is
merged for that at least every ``merge_with_ttl_timeout``, 4 hours by default), not the
instant they expire; ``OPTIMIZE TABLE events_raw_v1 FINAL`` forces it.
"""

from __future__ import annotations

import re

from storage.clickhouse import ClickHouse

TABLE = "events_raw_v1"
_OURS = re.compile(r"^toDateTime\(timestamp\) \+ toIntervalDay\((\d+)\)$")
_TTL = re.compile(r" TTL (.+?)(?: SETTINGS |$)")


def ttl_expression(days: int) -> str:
    """The TTL for ``days`` of retention, as ClickHouse writes it back in ``engine_full``."""
    return f"toDateTime(timestamp) + toIntervalDay({int(days)})"


async def current_ttl(ch: ClickHouse) -> str | None:
    """The table's TTL expression as ClickHouse shows it, or ``None``."""
    rows = await ch.query_rows(
        "SELECT engine_full FROM system.tables WHERE database = currentDatabase() "
        "AND name = {name:String}",
        {"name": TABLE},
    )
    match = _TTL.search(rows[0][0]) if rows else None
    return match.group(1).strip() if match else None


async def apply_retention(ch: ClickHouse, days: int) -> str:
    """Make ``events_raw_v1``'s TTL say ``days`` (0: no TTL); return what was done."""
    current = await current_ttl(ch)
    if not days:
        if current is None:
            return "unchanged"
        await ch.command(f"ALTER TABLE {TABLE} REMOVE TTL")
        return "removed"
    ours = _OURS.match(current) if current else None
    if ours and int(ours.group(1)) == days:
        return "unchanged"
    await ch.command(
        f"ALTER TABLE {TABLE} MODIFY TTL {ttl_expression(days)}",
        settings={"materialize_ttl_after_modify": 1},
    )
    return "set" if current is None else "changed"
