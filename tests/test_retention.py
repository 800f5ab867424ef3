"""EVENTS_RETENTION_DAYS: a TTL on events_raw_v1, on `timestamp`, applied at boot."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from support import clickhouse_rows

from ingest.config import ConfigError, load_config
from ingest.retention import apply_retention, current_ttl
from storage.clickhouse import ClickHouse

PROJECT = uuid.uuid4()


async def _insert(ch: ClickHouse, name: str, age: timedelta, *, client_age: timedelta) -> None:
    """One event whose `timestamp` is ``age`` ago and whose client clock said ``client_age``."""
    now = datetime.now(UTC)
    await ch.command(
        "INSERT INTO events_raw_v1 (event_id, project_id, event, timestamp, received_at, "
        "properties, extras, client_timestamp) VALUES "
        f"(generateUUIDv4(), '{PROJECT}', '{name}', "
        f"fromUnixTimestamp64Milli({int((now - age).timestamp() * 1000)}, 'UTC'), now64(3), "
        f"'{{}}', '{{}}', fromUnixTimestamp64Milli({int((now - client_age).timestamp() * 1000)}, "
        "'UTC'))"
    )


async def _names_after_merge(ch: ClickHouse) -> list[str]:
    await ch.command("OPTIMIZE TABLE events_raw_v1 FINAL")
    rows = await ch.query_rows("SELECT event FROM events_raw_v1 ORDER BY event")
    return [r[0] for r in rows]


async def test_rows_older_than_the_ttl_disappear_after_a_forced_merge(ch: ClickHouse) -> None:
    day = timedelta(days=1)
    await _insert(ch, "fresh", day, client_age=day)
    await _insert(ch, "old", 40 * day, client_age=40 * day)
    # The TTL is on `timestamp` (skew-corrected), not on the client's clock.
    await _insert(ch, "old_by_timestamp", 40 * day, client_age=day)
    await _insert(ch, "fresh_by_timestamp", day, client_age=400 * day)
    assert await ch.query_rows("SELECT count() FROM events_raw_v1") == [(4,)]

    assert await apply_retention(ch, 30) == "set"
    assert await current_ttl(ch) == "toDateTime(timestamp) + toIntervalDay(30)"
    assert await _names_after_merge(ch) == ["fresh", "fresh_by_timestamp"]

    # Rows stored after the TTL was set are judged by it too.
    await _insert(ch, "late_old", 31 * day, client_age=31 * day)
    await _insert(ch, "late_fresh", 29 * day, client_age=29 * day)
    assert await _names_after_merge(ch) == ["fresh", "fresh_by_timestamp", "late_fresh"]


async def test_the_same_retention_again_changes_nothing_and_another_replaces_it(
    ch: ClickHouse,
) -> None:
    assert await apply_retention(ch, 0) == "unchanged"  # off, no TTL: nothing to do
    assert await current_ttl(ch) is None
    assert await apply_retention(ch, 30) == "set"
    assert await apply_retention(ch, 30) == "unchanged"
    assert await apply_retention(ch, 7) == "changed"
    assert await current_ttl(ch) == "toDateTime(timestamp) + toIntervalDay(7)"
    # A TTL set by hand is replaced: Sluice owns this table's TTL.
    await ch.command(
        "ALTER TABLE events_raw_v1 MODIFY TTL toDateTime(received_at) + INTERVAL 1 DAY"
    )
    assert await apply_retention(ch, 7) == "changed"
    assert await current_ttl(ch) == "toDateTime(timestamp) + toIntervalDay(7)"


async def test_turning_it_off_removes_the_ttl(ch: ClickHouse) -> None:
    assert await apply_retention(ch, 30) == "set"
    assert await apply_retention(ch, 0) == "removed"
    assert await current_ttl(ch) is None
    assert await apply_retention(ch, 0) == "unchanged"
    await _insert(ch, "old", timedelta(days=400), client_age=timedelta(days=400))
    assert await _names_after_merge(ch) == ["old"]  # kept: no TTL any more


def test_boot_sets_the_ttl_and_a_boot_without_it_removes_it(start_server, tmp_path) -> None:
    data = tmp_path / "data"
    server = start_server(EVENTS_RETENTION_DAYS="30")
    assert server.stop() == 0
    assert [e["action"] for e in server.log_events("events_retention")] == ["set"]
    engine = clickhouse_rows(
        data / "clickhouse", "SELECT engine_full FROM system.tables WHERE name = 'events_raw_v1'"
    )[0][0]
    assert " TTL toDateTime(timestamp) + toIntervalDay(30) " in engine

    server = start_server()  # EVENTS_RETENTION_DAYS unset: off
    assert server.stop() == 0
    assert [e["action"] for e in server.log_events("events_retention")] == ["removed"]
    engine = clickhouse_rows(
        data / "clickhouse", "SELECT engine_full FROM system.tables WHERE name = 'events_raw_v1'"
    )[0][0]
    assert " TTL " not in engine


@pytest.mark.parametrize("value", ["thirty", "-1", "1.5", "36501", "30d"])
def test_a_bad_value_stops_boot_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"EVENTS_RETENTION_DAYS": value})
    line = str(err.value)
    assert line.startswith(f"invalid EVENTS_RETENTION_DAYS={value!r}: expected a whole number")
    assert "\n" not in line


@pytest.mark.parametrize(("value", "days"), [("", 0), ("0", 0), ("off", 0), ("OFF", 0), ("90", 90)])
def test_retention_is_off_by_default_and_takes_days(value: str, days: int) -> None:
    assert load_config({}).events_retention_days == 0
    assert load_config({"EVENTS_RETENTION_DAYS": value}).events_retention_days == days
