"""Rollups on a real server: finished days are folded, stats read from the folds equal
the stats read from the raw events (client retries counted once, identity stitched), a
late event re-folds its day, and each project's folds are its own.

The first server runs with a one-hour ROLLUP_INTERVAL: its boot pass finds nothing, so
every answer it gives comes from the raw events. The second, on the same stores, folds
at boot; its answers must be the same."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import make_project
from support import Server, clickhouse_rows, poll, request
from test_read import ev, iso, new_key

from ingest.queries import DAY_MS, Reader, ReadLimits, Rolled, Window
from ingest.rollup import Rollup
from storage.clickhouse import ClickHouse
from storage.migrations import discover


def metric(server: Server, name: str) -> float:
    text = request(server.url + "/metrics").body.decode()
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(values[0]) if values else 0.0


def get(server: Server, path: str, key: str, **params: Any) -> Any:
    url = f"{server.url}{path}?{urllib.parse.urlencode(params)}"
    response = request(url, headers={"Authorization": f"Bearer {key}"})
    assert response.status == 200, response.body
    return response.json()


def test_stats_from_folded_days_equal_the_raw_events_and_a_late_event_refolds(
    start_server: Callable[..., Server], database_url: str
) -> None:
    a_id, a_token = make_project(database_url, "A")
    b_id, b_token = make_project(database_url, "B")
    a_key, b_key = new_key(database_url, a_id), new_key(database_url, b_id)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    d3, d2 = today - timedelta(days=3), today - timedelta(days=2)
    h, m = timedelta(hours=1), timedelta(minutes=1)
    bob_view = ev("page_view", d3 + 12 * h, userId="bob", properties={"path": "/a"})
    a_events = [
        ev("page_view", d3 + 10 * h, anonymousId="r1", properties={"path": "/a"}),
        ev("page_view", d3 + 10 * h + 5 * m, anonymousId="r1", properties={"path": "/b"}),
        ev("signup", d3 + 11 * h, anonymousId="r1", userId="rita"),  # links r1 → rita
        bob_view,
        ev("page_view", d2 + 15 * h, userId="rita", properties={"path": "/a"}),
        ev("purchase", d2 + 15 * h + 10 * m, userId="bob"),
    ]
    b_events = [ev("page_view", d3 + 10 * h, userId="rita", properties={"path": "/b-only"})]
    window = {"since": iso(d3 - 12 * h), "until": iso(today)}

    def answers(server: Server, key: str) -> dict[str, Any]:
        return {
            "day": get(server, "/api/v1/stats/timeseries", key, interval="day", **window),
            "hour": get(server, "/api/v1/stats/timeseries", key, interval="hour", **window),
            "hour_pv": get(
                server,
                "/api/v1/stats/timeseries",
                key,
                interval="hour",
                event="page_view",
                **window,
            ),
            "top_path": get(server, "/api/v1/stats/top", key, by="path", **window),
            "top_event": get(server, "/api/v1/stats/top", key, by="event", **window),
            "active": get(server, "/api/v1/stats/active-users", key, at=iso(today)),
        }

    first = start_server(ROLLUP_INTERVAL="1h")
    for token, events in ((a_token, a_events), (b_token, b_events)):
        assert first.post({"token": token, "events": events}).status == 202
    retry = first.post(
        {"token": a_token, "sent_at": iso(datetime.now(UTC) - 5 * m), "events": [bob_view]}
    )
    assert retry.status == 202  # bob's view again: a second raw row, one event
    poll(lambda: metric(first, "sluice_events_flushed_total") == 8)
    raw_a, raw_b = answers(first, a_key), answers(first, b_key)
    assert metric(first, "sluice_rollup_folds_total") == 0  # all of it read raw
    days = {p["t"][:10]: (p["events"], p["users"]) for p in raw_a["day"]["points"]}
    assert days[iso(d3)[:10]] == (4, 2)  # rita (as r1, then identified) and bob
    assert days[iso(d2)[:10]] == (2, 2)
    assert raw_a["top_path"]["rows"] == [
        {"value": "/a", "events": 3, "users": 2},
        {"value": "/b", "events": 1, "users": 1},
    ]
    assert raw_a["active"]["mau"] == 2
    assert raw_b["top_path"]["rows"] == [{"value": "/b-only", "events": 1, "users": 1}]
    data_dir = first.data_dir
    assert first.stop() == 0

    second = start_server(data_dir=data_dir, ROLLUP_INTERVAL="1s")
    poll(lambda: metric(second, "sluice_rollup_folds_total") == 3)  # A: d3, d2; B: d3
    assert answers(second, a_key) == raw_a
    assert answers(second, b_key) == raw_b

    # A late event for d3 (an offline queue flushed today): its day is folded again.
    late = ev("page_view", d3 + 10 * h + 30 * m, anonymousId="late", properties={"path": "/a"})
    assert second.post({"token": a_token, "events": [late]}).status == 202

    def d3_point() -> tuple[int, int]:
        points = get(second, "/api/v1/stats/timeseries", a_key, interval="day", **window)
        point = next(p for p in points["points"] if p["t"][:10] == iso(d3)[:10])
        return point["events"], point["users"]

    poll(lambda: d3_point() == (5, 3))
    assert metric(second, "sluice_rollup_folds_total") == 4
    top = get(second, "/api/v1/stats/top", a_key, by="path", **window)["rows"]
    assert top[0] == {"value": "/a", "events": 4, "users": 3}
    assert second.stop() == 0

    folded = clickhouse_rows(
        data_dir / "clickhouse",
        "SELECT toString(project_id), toString(day), argMax(events, version) "
        "FROM rollup_days_v1 WHERE project_id != '00000000-0000-0000-0000-000000000000' "
        "GROUP BY project_id, day ORDER BY project_id, day",
    )
    assert sorted(folded) == sorted(
        [
            (str(a_id), iso(d3)[:10], 5),
            (str(a_id), iso(d2)[:10], 2),
            (str(b_id), iso(d3)[:10], 1),
        ]
    )
    raw_rows = clickhouse_rows(
        data_dir / "clickhouse",
        f"SELECT uniqExact(event_id) FROM events_raw_v1 WHERE project_id = '{a_id}'",
    )
    assert raw_rows == [(7,)]  # bob's retry (two rows until a merge) is one event
    # What `top` ranks by: the fold's per-value sums (0008), at the version the day names.
    named = (
        f"(SELECT argMax(version, version) FROM rollup_days_v1 WHERE project_id = '{a_id}' "
        f"AND day = '{iso(d3)[:10]}')"
    )
    ranked = clickhouse_rows(
        data_dir / "clickhouse",
        f"SELECT value, events FROM rollup_values_v1 FINAL WHERE project_id = '{a_id}' "
        f"AND day = '{iso(d3)[:10]}' AND dim = 'path' AND version = {named} ORDER BY value",
    )
    assert ranked == [("/a", 3), ("/b", 1)]  # r1, bob (and his retry), late; r1


async def test_0008_sums_every_stored_fold_per_value_and_runs_again(ch: ClickHouse) -> None:
    """A store folded before 0008: the migration writes each fold's per-value sums, at the
    fold's own version; run again (after a failure half-way), it changes no answer."""
    project = uuid.uuid4()
    rows = [  # (day, dim, value, person, is_bot, version, events)
        ("2026-01-02", "path", "/a", 1, 0, 10, 2),
        ("2026-01-02", "path", "/a", 2, 0, 10, 1),
        ("2026-01-02", "path", "/b", 1, 0, 10, 1),
        ("2026-01-02", "path", "/a", 1, 1, 10, 5),  # a bot: its own row
        ("2026-01-02", "path", "/a", 3, 0, 20, 4),  # the day folded again (a late person)
        ("2026-01-03", "", "", 3, 0, 11, 7),
    ]
    values = ", ".join(
        f"('{project}', '{d}', '{dim}', '{v}', {p}, {b}, {ver}, {n})"
        for d, dim, v, p, b, ver, n in rows
    )
    await ch.command(f"INSERT INTO rollup_daily_v1 VALUES {values}")
    await ch.command("TRUNCATE TABLE rollup_values_v1")  # as before 0008
    (migration,) = [m for m in discover("clickhouse") if m.version == 8]
    query = (
        "SELECT toString(day), dim, value, is_bot, version, events FROM rollup_values_v1 "
        f"FINAL WHERE project_id = '{project}' ORDER BY day, dim, value, is_bot, version"
    )
    expected = [
        ("2026-01-02", "path", "/a", 0, 10, 3),
        ("2026-01-02", "path", "/a", 0, 20, 4),
        ("2026-01-02", "path", "/a", 1, 10, 5),
        ("2026-01-02", "path", "/b", 0, 10, 1),
        ("2026-01-03", "", "", 0, 11, 7),
    ]
    for _ in range(2):
        await migration.run_python(ch)
        assert await ch.query_rows(query) == expected


async def test_0010_gathers_every_stored_hour_and_runs_again(ch: ClickHouse) -> None:
    """A store folded before 0010: the migration writes each fold's hours with their
    persons as one array, at the fold's own version; run again, the same rows."""
    project = uuid.uuid4()
    rows = [  # (hour, dim, value, person, is_bot, version, events)
        ("2026-01-02 10:00:00", "", "", 1, 0, 10, 2),
        ("2026-01-02 10:00:00", "", "", 2, 0, 10, 1),
        ("2026-01-02 10:00:00", "", "", 1, 1, 10, 5),
        ("2026-01-02 11:00:00", "event", "signup", 0, 0, 10, 1),
    ]
    values = ", ".join(
        f"('{project}', '{h}', '{dim}', '{v}', {p}, {b}, {ver}, {n})"
        for h, dim, v, p, b, ver, n in rows
    )
    await ch.command(f"INSERT INTO rollup_hourly_v1 VALUES {values}")
    await ch.command("TRUNCATE TABLE rollup_hour_sets_v1")  # as before 0010
    (migration,) = [m for m in discover("clickhouse") if m.version == 10]
    query = (
        "SELECT toString(hour), dim, value, is_bot, version, events, arraySort(persons) "
        f"FROM rollup_hour_sets_v1 WHERE project_id = '{project}' ORDER BY hour, dim, is_bot"
    )
    expected = [
        ("2026-01-02 10:00:00", "", "", 0, 10, 3, [1, 2]),
        ("2026-01-02 10:00:00", "", "", 1, 10, 5, [1]),
        ("2026-01-02 11:00:00", "event", "signup", 0, 10, 1, [0]),
    ]
    for _ in range(2):
        await migration.run_python(ch)
        assert await ch.query_rows(query) == expected


class _RawReader(Reader):
    """The same queries with nothing folded: every answer from the raw events."""

    async def rolled(self, project: uuid.UUID, window: Window) -> Rolled:
        return Rolled(window)


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


async def _put(ch: ClickHouse, project: uuid.UUID, at: str, who: str, path: str) -> None:
    ms = _ms(at)
    await ch.command(
        "INSERT INTO events_raw_v1 (event_id, project_id, event, anonymous_id, timestamp, "
        "received_at, properties, extras, client_timestamp) VALUES (generateUUIDv4(), "
        f"'{project}', 'page_view', '{who}', fromUnixTimestamp64Milli({ms}, 'UTC'), now64(3), "
        f"'{{\"path\": \"{path}\"}}', '{{}}', fromUnixTimestamp64Milli({ms}, 'UTC'))"
    )


async def _answers(reader: Reader, project: uuid.UUID, now: int) -> tuple:
    window = Window(now - 2 * DAY_MS, now)
    return (
        await reader.timeseries(project, window, window.since_ms // 3_600_000 * 3_600_000,
                                3_600_000, None),
        await reader.timeseries(project, window, window.since_ms // DAY_MS * DAY_MS, DAY_MS,
                                None),
        await reader.top(project, window, "path", 10, None),
        await reader.active_users(project, now),
    )  # fmt: skip


async def test_todays_finished_hours_are_folded_and_read_with_the_rest_raw(
    ch: ClickHouse,
) -> None:
    """A pass folds the hours that ended PARTIAL_LAG ago, today's included; readers take
    today's fold for those hours and the raw events after them, with the same answers;
    new hours re-fold the day further, and a day nothing new arrived for is extended."""
    p, q = uuid.uuid4(), uuid.uuid4()
    for at, who, path in [
        ("2026-03-09 10:00", "a1", "/x"),
        ("2026-03-10 09:05", "a1", "/x"),
        ("2026-03-10 13:20", "a2", "/y"),
        ("2026-03-10 14:30", "a3", "/x"),  # after the cutoff: read raw
    ]:
        await _put(ch, p, at, who, path)
    await _put(ch, q, "2026-03-10 12:00", "q1", "/q")  # nothing new for q after this
    limits = ReadLimits(30, 1 << 30)
    reader, raw = Reader(ch, limits), _RawReader(ch, limits)
    rollup = Rollup(ch, 60)
    now = _ms("2026-03-10 14:40")  # cutoff: 14:40 - 15 min → 14:00

    assert await rollup.run_pass(now) == 3  # p: 9th, 10th; q: 10th
    rolled = await reader.rolled(p, Window(now - 2 * DAY_MS, now))
    assert rolled.days == ("2026-03-09", "2026-03-10")
    assert rolled.gaps() == [(now - 2 * DAY_MS, _ms("2026-03-09 00:00")),
                             (_ms("2026-03-10 14:00"), now)]  # fmt: skip
    answers = await _answers(reader, p, now)
    assert answers == await _answers(raw, p, now)
    assert answers[2] == [("/x", 3, 2), ("/y", 1, 1)]
    assert answers[3] == (3, 3, 3)

    # An hour later: a new event in the hour that ended, and a late one for the morning.
    await _put(ch, p, "2026-03-10 14:50", "a4", "/y")
    await _put(ch, p, "2026-03-10 08:00", "a5", "/z")
    later, later_cutoff = now + 3_600_000, _ms("2026-03-10 15:00")
    assert await rollup.run_pass(later) >= 1  # p's 10th, up to 15:00 (q's: see below)
    rolled = await reader.rolled(p, Window(later - DAY_MS, later))
    assert rolled.gaps() == [(later - DAY_MS, _ms("2026-03-10 00:00")),
                             (later_cutoff, later)]  # fmt: skip
    assert await _answers(reader, p, later) == await _answers(raw, p, later)
    assert await _answers(reader, p, later) == await _answers(raw, p, later)

    # A partial fold of a project-day the pass found nothing new for reaches further as
    # it stands (same version); the days the pass folded are left to their new fold.
    def reach(project: uuid.UUID) -> str:
        return (
            "SELECT max(version), toUnixTimestamp64Milli(argMax(folded_until, "
            f"(version, folded_until))) FROM rollup_days_v1 WHERE project_id = '{project}' "
            "AND day = '2026-03-10'"
        )

    ((q_version, _),) = await ch.query_rows(reach(q))
    ((p_version, p_until),) = await ch.query_rows(reach(p))
    await rollup._extend(_ms("2026-03-11 00:00"), later_cutoff, [(str(p), "2026-03-10")])
    assert await ch.query_rows(reach(q)) == [(q_version, _ms("2026-03-11 00:00"))]
    assert await ch.query_rows(reach(p)) == [(p_version, p_until)]
    next_day = _ms("2026-03-11 00:30")
    assert await _answers(reader, q, next_day) == await _answers(raw, q, next_day)
    await rollup.run_pass(next_day)  # nothing after 15:00 for p: the 10th is whole
    assert (await ch.query_rows(reach(p)))[0][1] == _ms("2026-03-11 00:00")
    assert await _answers(reader, p, next_day) == await _answers(raw, p, next_day)
