"""The read API on a real server with two projects, A and B: each read key sees exactly
its own project's events on every endpoint, also with hostile parameters; a publishable
token cannot read; a revoked key stops within the cache TTL; counts equal a direct count
over the raw table; a query stopped by a read limit is a JSON 503; ``events tail`` prints
an event sent after it started; ``stats`` summarizes through the server.

Events go in through the real ingest endpoint and are polled for (never slept for)."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import make_project
from support import SLUICE, Response, Server, clickhouse_rows, poll, request

from auth import keys
from ingest.read import encode_cursor
from storage.postgres import create_pool

TTL = "1s"  # INGEST_TOKEN_CACHE_TTL of every server here


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def new_key(dsn: str, project_id: uuid.UUID) -> str:
    async def run() -> str:
        pool = await create_pool(dsn, retry_for=5)
        try:
            return (await keys.create_key(pool, project_id))[1]
        finally:
            await pool.close()

    return asyncio.run(run())


@dataclass
class Project:
    id: uuid.UUID
    token: str
    key: str
    events: list[dict[str, Any]]  # as sent

    @property
    def ids(self) -> set[str]:
        return {e["uuid"] for e in self.events}


@dataclass
class World:
    server: Server
    dsn: str
    a: Project
    b: Project
    h0: datetime  # an hour boundary 5 hours before the current hour

    def get(self, path: str, key: str | None, **params: Any) -> Response:
        query = urllib.parse.urlencode(params, doseq=True)
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return request(f"{self.server.url}{path}{'?' + query if query else ''}", headers=headers)

    def window(self) -> dict[str, str]:
        return {"since": iso(self.h0), "until": iso(self.h0 + timedelta(hours=5))}


def ev(name: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {"event": name, "timestamp": iso(at), "uuid": str(uuid.uuid4()), **fields}


def build_world(start_server: Callable[..., Server], dsn: str, **env: str) -> World:
    a_id, a_token = make_project(dsn, "A")
    b_id, b_token = make_project(dsn, "B")
    now = datetime.now(UTC)
    h0 = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    m = timedelta(minutes=1)
    h = timedelta(hours=1)
    a_events = [
        ev("page_view", h0 + 10 * m, userId="u1",
           properties={"path": "/pricing", "utm_source": "news"}),
        ev("page_view", h0 + 20 * m, anonymousId="anon1",
           properties={"$current_url": "https://shop.example/docs?utm_source=ads&utm_medium=cpc",
                       "$referrer": "https://www.google.com/search?q=x"}),
        ev("signup", h0 + h + 10 * m, userId="u1", sessionId="s1",
           properties={"referrer": "https://news.ycombinator.com/item?id=1", "big": 10**30},
           context={"locale": "en"}),
        ev("page_view", h0 + 3 * h + 10 * m, userId="shared", properties={"path": "/pricing"}),
        ev("purchase", h0 + 3 * h + 30 * m, anonymousId="anon2"),
    ]  # fmt: skip
    b_events = [
        ev("page_view", h0 + 10 * m, userId="shared", properties={"path": "/b-only"}),
        ev("page_view", h0 + 2 * h + 10 * m, userId="u9", properties={"utm_source": "b-src"}),
        ev("signup", h0 + 4 * h + 10 * m, anonymousId="b-anon"),
    ]
    server = start_server(INGEST_TOKEN_CACHE_TTL=TTL, **env)
    a = Project(a_id, a_token, new_key(dsn, a_id), a_events)
    b = Project(b_id, b_token, new_key(dsn, b_id), b_events)
    for project in (a, b):
        response = server.post({"token": project.token, "events": project.events})
        assert response.status == 202, response.body
    world = World(server, dsn, a, b, h0)
    if env.get("QUERY_MAX_MEMORY_BYTES") is None:
        for project in (a, b):
            poll(lambda p=project: len(all_events(world, p.key)) == len(p.events))
    return world


def all_events(world: World, key: str, **params: Any) -> list[dict[str, Any]]:
    """Every page of /api/v1/events, following next_cursor."""
    out: list[dict[str, Any]] = []
    params = {**world.window(), **params}
    while True:
        response = world.get("/api/v1/events", key, **params)
        assert response.status == 200, response.body
        body = response.json()
        out.extend(body["events"])
        if body["next_cursor"] is None:
            return out
        params["cursor"] = body["next_cursor"]


@pytest.fixture
def world(start_server: Callable[..., Server], database_url: str) -> World:
    return build_world(start_server, database_url)


# --- isolation ------------------------------------------------------------------------


def test_each_key_reads_exactly_its_projects_events_newest_first(world: World) -> None:
    for project in (world.a, world.b):
        got = all_events(world, project.key)
        assert [e["event_id"] for e in got] == [
            e["uuid"] for e in sorted(project.events, key=lambda e: e["timestamp"], reverse=True)
        ]
    signup = next(e for e in all_events(world, world.a.key) if e["event"] == "signup")
    sent = world.a.events[2]
    received = datetime.fromisoformat(signup.pop("received_at"))
    assert abs(received - datetime.now(UTC)) < timedelta(minutes=2)
    assert signup == {
        "event_id": sent["uuid"],
        "event": "signup",
        "timestamp": sent["timestamp"],
        "anonymous_id": None,
        "user_id": "u1",
        "session_id": "s1",
        "properties": {"referrer": "https://news.ycombinator.com/item?id=1", "big": 10**30},
        "extras": {"context": {"locale": "en"}},
    }


def test_pages_follow_the_cursor_without_gaps_or_repeats(world: World) -> None:
    pages = []
    params = {**world.window(), "limit": 2}
    while True:
        body = world.get("/api/v1/events", world.a.key, **params).json()
        pages.append([e["event_id"] for e in body["events"]])
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    newest_first = [e["uuid"] for e in sorted(world.a.events, key=lambda e: e["timestamp"])][::-1]
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:5]]


def test_filters_and_hostile_values_never_reach_another_project(world: World) -> None:
    a, b = world.a, world.b
    window = world.window()

    def ids(key: str, **params: Any) -> set[str]:
        return {e["event_id"] for e in all_events(world, key, **params)}

    # "shared" is a user id in both projects: each key sees its own only
    assert ids(a.key, user_id="shared") == {a.events[3]["uuid"]}
    assert ids(b.key, user_id="shared") == {b.events[0]["uuid"]}
    assert ids(a.key, event="page_view") == {a.events[i]["uuid"] for i in (0, 1, 3)}
    assert ids(a.key, anonymous_id="anon1", event="page_view") == {a.events[1]["uuid"]}
    assert ids(a.key, session_id="s1") == {a.events[2]["uuid"]}
    assert ids(a.key, person="anon1") == {a.events[1]["uuid"]}
    assert ids(a.key, person="shared") == {a.events[3]["uuid"]}
    assert ids(a.key, user_id="u9") == set()  # B's user
    assert ids(a.key, anonymous_id="b-anon") == set()
    for hostile in ("' OR 1=1 --", "x') OR project_id != '", "u1' UNION ALL SELECT *", "\\'"):
        for name in ("event", "user_id", "anonymous_id", "session_id", "person"):
            assert ids(a.key, **{name: hostile}) == set(), (name, hostile)

    # the stats endpoints bind their filter the same way
    hostile = "page_view' OR 1=1 --"
    series = world.get("/api/v1/stats/timeseries", a.key, interval="hour", event=hostile,
                       **window).json()  # fmt: skip
    assert [p["events"] for p in series["points"]] == [0] * 5
    assert world.get("/api/v1/stats/top", a.key, by="event", event=hostile).json()["rows"] == []
    assert world.get("/api/v1/sessions", a.key, person=hostile).json() == {"sessions": []}

    # the project is never a parameter
    for name in ("project_id", "project", "token"):
        response = world.get("/api/v1/events", a.key, **{name: str(b.id)})
        assert response.status == 400
        assert response.json()["parameter"] == name

    # a cursor crafted from B's newest event, and B's own next_cursor, used with A's key
    newest_b = max(b.events, key=lambda e: e["timestamp"])
    at_ms = int(datetime.fromisoformat(newest_b["timestamp"]).timestamp() * 1000)
    crafted = encode_cursor(at_ms, newest_b["uuid"])
    older_a = {e["uuid"] for e in a.events if e["timestamp"] < newest_b["timestamp"]}
    assert ids(a.key, cursor=crafted) == older_a
    b_page = world.get("/api/v1/events", b.key, limit=1, **window).json()
    assert ids(a.key, cursor=b_page["next_cursor"]) <= a.ids
    assert ids(b.key) == b.ids


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("/api/v1/events", {"limit": "0"}, "limit"),
        ("/api/v1/events", {"limit": "1001"}, "limit"),
        ("/api/v1/events", {"limit": "99999999999999999999999"}, "limit"),
        ("/api/v1/events", {"limit": "-1"}, "limit"),
        ("/api/v1/events", {"limit": "ten"}, "limit"),
        ("/api/v1/events", {"since": "yesterday"}, "since"),
        ("/api/v1/events", {"until": "2026-13-01"}, "until"),
        ("/api/v1/events", {"since": "1800-01-01T00:00:00Z"}, "since"),
        ("/api/v1/events", {"since": "2026-11-02", "until": "2026-11-01"}, "since"),
        ("/api/v1/events", {"cursor": "not-a-cursor"}, "cursor"),
        ("/api/v1/events", {"cursor": "MTo5OTk5OTk5OTk5OTk5OTk5OTk6eHg"}, "cursor"),
        ("/api/v1/events", {"user_id": ""}, "user_id"),
        ("/api/v1/events", {"event": "x" * 201}, "event"),
        ("/api/v1/events", {"received_after": "soon"}, "received_after"),
        ("/api/v1/events", {"order": "asc"}, "order"),
        ("/api/v1/stats/timeseries", {"interval": "week"}, "interval"),
        ("/api/v1/stats/timeseries", {"interval": "hour", "since": "2020-01-01"}, "since"),
        ("/api/v1/stats/top", {}, "by"),
        ("/api/v1/stats/top", {"by": "browser"}, "by"),
        ("/api/v1/stats/top", {"by": "project_id"}, "by"),
        ("/api/v1/stats/top", {"by": "event", "limit": "101"}, "limit"),
        ("/api/v1/stats/active-users", {"at": "now"}, "at"),
        ("/api/v1/stats/active-users", {"since": "2026-11-01"}, "since"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(
    world: World, path: str, params: dict[str, str], parameter: str
) -> None:
    response = world.get(path, world.a.key, **params)
    assert response.status == 400, response.body
    body = response.json()
    assert body["parameter"] == parameter and parameter in body["error"]


def test_a_repeated_parameter_is_400(world: World) -> None:
    url = f"{world.server.url}/api/v1/events?event=a&event=b"
    response = request(url, headers={"Authorization": f"Bearer {world.a.key}"})
    assert (response.status, response.json()["parameter"]) == (400, "event")


# --- keys -----------------------------------------------------------------------------

PATHS = [
    ("/api/v1/events", {}),
    ("/api/v1/stats/timeseries", {}),
    ("/api/v1/stats/top", {"by": "event"}),
    ("/api/v1/stats/active-users", {}),
    ("/api/v1/sessions", {}),
    ("/api/v1/persons/u1", {}),
]


@pytest.mark.parametrize(("path", "params"), PATHS)
def test_publishable_tokens_and_bad_keys_cannot_read(
    world: World, path: str, params: dict[str, str]
) -> None:
    cases = {
        None: "unauthorized: send a read key as Authorization: Bearer sluice_sk_…",
        world.a.token: "a publishable token cannot read: use a secret read key (sluice_sk_…)",
        world.b.token: "a publishable token cannot read: use a secret read key (sluice_sk_…)",
        keys.generate(): "unauthorized: unknown or revoked read key",
        "sluice_sk_" + "x" * 5: "unauthorized: unknown or revoked read key",
        world.a.key + "x": "unauthorized: unknown or revoked read key",
    }
    for key, reason in cases.items():
        response = world.get(path, key, **params)
        assert (response.status, response.json()) == (401, {"error": reason}), key
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="sluice"'
    # and a read key cannot ingest
    response = world.server.post({"token": world.a.key, "events": [ev("x", datetime.now(UTC))]})
    assert response.status == 401


def test_a_revoked_key_stops_within_the_cache_ttl(world: World) -> None:
    key = new_key(world.dsn, world.a.id)
    assert world.get("/api/v1/events", key).status == 200
    proc = subprocess.run(
        [*SLUICE, "keys", "revoke", key, "--json"],
        env={**os.environ, "DATABASE_URL": world.dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    revoked_at = time.monotonic()
    poll(lambda: world.get("/api/v1/events", key).status == 401, timeout=10, interval=0.1)
    assert time.monotonic() - revoked_at < 1.0 + 2.0  # TTL, plus a request's slack
    assert world.get("/api/v1/events", world.a.key).status == 200  # A's other key still reads


# --- stats ----------------------------------------------------------------------------


def hours(world: World, counts: list[tuple[int, int]]) -> list[dict[str, Any]]:
    return [
        {"t": iso(world.h0 + timedelta(hours=i)), "events": n, "users": u}
        for i, (n, u) in enumerate(counts)
    ]


def test_timeseries_counts_events_and_users_per_bucket_with_zeros(world: World) -> None:
    path = "/api/v1/stats/timeseries"
    got = world.get(path, world.a.key, interval="hour", **world.window()).json()
    assert got == {"interval": "hour", "points": hours(world, [(2, 2), (1, 1), (0, 0), (2, 2),
                                                               (0, 0)])}  # fmt: skip
    got = world.get(path, world.b.key, interval="hour", **world.window()).json()
    assert got["points"] == hours(world, [(1, 1), (0, 0), (1, 1), (0, 0), (1, 1)])
    got = world.get(path, world.a.key, interval="hour", event="page_view", **world.window())
    assert got.json()["points"] == hours(world, [(2, 2), (0, 0), (0, 0), (1, 1), (0, 0)])
    # `since` inside an hour: that bucket counts only what follows it
    since = world.h0 + timedelta(minutes=15)
    got = world.get(path, world.a.key, interval="hour", since=iso(since),
                    until=iso(world.h0 + timedelta(hours=2))).json()  # fmt: skip
    assert got["points"] == hours(world, [(1, 1), (1, 1)])
    day = world.get(path, world.a.key, interval="day", since=iso(world.h0),
                    until=iso(world.h0 + timedelta(hours=5))).json()  # fmt: skip
    assert sum(p["events"] for p in day["points"]) == 5
    assert all(p["t"].endswith("T00:00:00.000Z") for p in day["points"])


def test_top_ranks_values_derived_from_properties(world: World) -> None:
    def top(key: str, by: str, **params: Any) -> list[tuple[str, int, int]]:
        response = world.get("/api/v1/stats/top", key, by=by, **world.window(), **params)
        assert response.status == 200, response.body
        body = response.json()
        assert body["by"] == by
        return [(r["value"], r["events"], r["users"]) for r in body["rows"]]

    a, b = world.a.key, world.b.key
    assert top(a, "event") == [("page_view", 3, 3), ("purchase", 1, 1), ("signup", 1, 1)]
    assert top(a, "event", limit=1) == [("page_view", 3, 3)]
    assert top(b, "event") == [("page_view", 2, 2), ("signup", 1, 1)]
    assert top(a, "path") == [("/pricing", 2, 2), ("/docs", 1, 1)]
    assert top(b, "path") == [("/b-only", 1, 1)]
    assert top(a, "referrer_domain") == [("google.com", 1, 1), ("news.ycombinator.com", 1, 1)]
    assert top(a, "utm_source") == [("ads", 1, 1), ("news", 1, 1)]
    assert top(b, "utm_source") == [("b-src", 1, 1)]
    assert top(a, "utm_medium") == [("cpc", 1, 1)]
    assert top(a, "utm_campaign") == []
    assert top(a, "path", event="signup") == []


def test_active_users_are_distinct_people_per_window(world: World) -> None:
    path = "/api/v1/stats/active-users"
    end = world.h0 + timedelta(hours=5)
    assert world.get(path, world.a.key, at=iso(end)).json() == {
        "at": iso(end), "dau": 4, "wau": 4, "mau": 4
    }  # fmt: skip
    mid = world.h0 + timedelta(hours=3, minutes=20)  # before anon2's purchase
    assert world.get(path, world.a.key, at=iso(mid)).json()["dau"] == 3
    assert world.get(path, world.b.key, at=iso(end)).json()["dau"] == 3
    later = end + timedelta(days=2)  # out of the 24 h, inside 7 and 30 days
    assert world.get(path, world.a.key, at=iso(later)).json() == {
        "at": iso(later), "dau": 0, "wau": 4, "mau": 4
    }  # fmt: skip


def test_hourly_counts_equal_a_direct_count_over_the_raw_table(
    start_server: Callable[..., Server], database_url: str
) -> None:
    world = build_world(start_server, database_url)
    a = world.a
    # a client retry of one event, with a sent_at: a second row with the same id
    retry = {**a.events[0]}
    sent_at = datetime.now(UTC) - timedelta(seconds=3)
    assert (
        world.server.post({"token": a.token, "sent_at": iso(sent_at), "events": [retry]}).status
        == 202
    )
    data_dir = world.server.data_dir
    poll(lambda: flushed(world.server) == 9)  # the retry is stored: a row of its own
    listed = all_events(world, a.key)
    assert sorted(e["event_id"] for e in listed) == sorted(a.ids)  # ... read once (FINAL)
    api = world.get("/api/v1/stats/timeseries", a.key, interval="hour", **world.window()).json()
    assert world.server.stop() == 0

    rows = clickhouse_rows(
        data_dir / "clickhouse",
        "SELECT toStartOfHour(timestamp), uniqExact(event_id), "
        "uniqExact(coalesce(user_id, anonymous_id)), count() FROM events_raw_v1 "
        f"WHERE project_id = '{a.id}' GROUP BY 1 ORDER BY 1",
    )
    raw = {r[0].replace(tzinfo=UTC): (r[1], r[2]) for r in rows}
    assert sum(r[3] for r in rows) == 6  # the retry is a row of its own in the raw table
    expected = [raw.get(world.h0 + timedelta(hours=i), (0, 0)) for i in range(5)]
    assert api["points"] == hours(world, expected)
    assert expected == [(2, 2), (1, 1), (0, 0), (2, 2), (0, 0)]


def flushed(server: Server) -> float:
    text = request(server.url + "/metrics").body.decode()
    lines = [line for line in text.splitlines() if line.startswith("sluice_events_flushed_total")]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_a_query_stopped_by_a_read_limit_is_a_json_503(
    start_server: Callable[..., Server], database_url: str
) -> None:
    world = build_world(start_server, database_url, QUERY_MAX_MEMORY_BYTES="1000")
    poll(lambda: flushed(world.server) == 8)  # reads cannot tell us here: wait for the flush
    # (a query small enough to stay under 1,000 bytes, like `top` over 5 rows, may pass:
    # ClickHouse tracks memory in chunks; reading events and filling buckets never does)
    for path in ("/api/v1/events", "/api/v1/stats/timeseries"):
        response = world.get(path, world.a.key)
        assert response.status == 503, response.body
        body = response.json()
        assert body == {
            "error": "the query was stopped at its max_memory_usage limit: "
            "narrow since/until or add a filter",
            "limit": "max_memory_usage",
        }
    assert world.server.healthz().status == 200  # ingest is not affected
    scraped = request(world.server.url + "/metrics").body.decode()
    assert "sluice_read_queries_limited_total 2.0" in scraped.splitlines()


# --- the command line -----------------------------------------------------------------


def _lines(stream: Any, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)


def test_events_tail_prints_an_event_sent_after_it_started(world: World) -> None:
    env = {**os.environ, "SLUICE_KEY": world.a.key}
    proc = subprocess.Popen(
        [*SLUICE, "events", "tail", "--url", world.server.url, "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out: queue.Queue[str] = queue.Queue()
    err: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True).start()
    threading.Thread(target=_lines, args=(proc.stderr, err), daemon=True).start()
    try:
        assert err.get(timeout=30).startswith(f"sluice: tailing {world.server.url}")
        now = datetime.now(UTC)
        fresh_a = ev("tail_me", now, userId="t1", properties={"n": 1})
        fresh_b = ev("tail_me", now, userId="t2")
        assert world.server.post({"token": world.b.token, "events": [fresh_b]}).status == 202
        assert world.server.post({"token": world.a.token, "events": [fresh_a]}).status == 202
        line = json.loads(out.get(timeout=30))
        assert {k: line[k] for k in ("event_id", "event", "user_id", "properties")} == {
            "event_id": fresh_a["uuid"], "event": "tail_me", "user_id": "t1",
            "properties": {"n": 1},
        }  # fmt: skip
        # the events stored before it started, and B's, are never printed
        poll(lambda: world.get("/api/v1/events", world.b.key, event="tail_me").json()["events"])
        deadline = time.monotonic() + 2.5
        extra = []
        while time.monotonic() < deadline:
            try:
                extra.append(out.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                break
        assert extra == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_events_tail_without_a_key_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_KEY"}
    proc = subprocess.run(
        [*SLUICE, "events", "tail"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (
        "sluice: no read key: pass --key or set SLUICE_KEY (sluice keys create)\n"
    )


def test_stats_summarizes_through_the_server(world: World, tmp_path: Path) -> None:
    proc = subprocess.run(
        [*SLUICE, "stats", "--url", world.server.url, "--key", world.b.key, "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["active_users"]["mau"] == 3
    assert summary["top_events"] == [
        {"value": "page_view", "events": 2, "users": 2},
        {"value": "signup", "events": 1, "users": 1},
    ]
    assert summary["top_paths"] == [{"value": "/b-only", "events": 1, "users": 1}]
    assert sum(p["events"] for p in summary["timeseries"]["points"]) == 3
    proc = subprocess.run(
        [*SLUICE, "stats", "--url", world.server.url, "--key", world.b.token],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr == (
        f"sluice: {world.server.url}/api/v1/stats/active-users answered 401: a publishable "
        "token cannot read: use a secret read key (sluice_sk_…)\n"
    )


def test_postgres_down_is_500_for_an_unknown_key_and_a_cached_key_keeps_reading(
    start_server: Callable[..., Server], own_pg: Any
) -> None:
    dsn = own_pg.dsn()
    project_id, token = make_project(dsn, "A")
    key = new_key(dsn, project_id)
    never_seen = new_key(dsn, project_id)
    server = start_server(DATABASE_URL=dsn, INGEST_TOKEN_CACHE_TTL=TTL)
    assert server.post({"token": token, "events": [ev("x", datetime.now(UTC))]}).status == 202
    read = f"{server.url}/api/v1/events"
    poll(lambda: request(read, headers={"Authorization": f"Bearer {key}"}).json()["events"])
    own_pg.stop()
    response = request(read, headers={"Authorization": f"Bearer {never_seen}"})
    assert (response.status, response.json()) == (500, {"error": "internal server error"})
    # past the TTL the cached key is served stale while Postgres is down
    time_to_expire = time.monotonic() + 1.5
    while time.monotonic() < time_to_expire:  # a request per 0.1 s, until the TTL passed
        assert request(read, headers={"Authorization": f"Bearer {key}"}).status == 200
        time.sleep(0.1)


def test_make_run_prints_a_read_key_and_a_read_curl_that_works(
    tmp_path: Path, database_url: str
) -> None:
    from support import free_port

    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "DATA_DIR": str(tmp_path / "data"),
           "PORT": str(port), "INGEST_FLUSH_INTERVAL": "100ms", "LOG_LEVEL": "warning"}  # fmt: skip
    proc = subprocess.Popen(
        [*SLUICE, "serve", "--demo"], env=env, stdout=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        banner = []
        while not banner or not banner[-1].startswith("health:"):
            banner.append(lines.get(timeout=60).rstrip("\n"))
        token = next(x for x in banner if x.startswith("demo project token:")).split()[3]
        key = next(x for x in banner if x.startswith("demo read key:")).split()[3]
        assert keys.looks_valid(key)
        assert (tmp_path / "data" / "demo-key").read_text() == key + "\n"
        read_curl = next(x for x in banner if "/api/v1/events" in x)
        assert read_curl == (
            f"  curl -s 'http://127.0.0.1:{port}/api/v1/events?since=2026-01-01T00:00:00Z' "
            f"-H 'Authorization: Bearer {key}'"
        )
        url = f"http://127.0.0.1:{port}"
        body = {"token": token, "events": [{"event": "hello", "timestamp": "2026-01-01T00:00:00Z"}]}
        assert request(url + "/api/v1/ingest/events", method="POST", body=body).status == 202
        read = url + "/api/v1/events?since=2026-01-01T00:00:00Z"
        got = poll(
            lambda: request(read, headers={"Authorization": f"Bearer {key}"}).json()["events"]
        )
        assert [(e["event"], e["timestamp"]) for e in got] == [
            ("hello", "2026-01-01T00:00:00.000Z")
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


# --- sessions and persons -------------------------------------------------------------


def test_sessions_are_session_ids_else_30_minute_gaps_per_person(world: World) -> None:
    h0, m = world.h0, timedelta(minutes=1)
    g = [ev("page_view", h0 + 120 * m + k * m, userId="g1") for k in (0, 20, 45, 80)]
    tagged = ev("page_view", h0 + 150 * m, userId="g1", sessionId="s2")
    assert world.server.post({"token": world.a.token, "events": [*g, tagged]}).status == 202
    poll(lambda: len(all_events(world, world.a.key)) == 10)

    def sessions(key: str, **params: Any) -> list[tuple]:
        response = world.get("/api/v1/sessions", key, **world.window(), **params)
        assert response.status == 200, response.body
        return [
            (s["session_id"], s["person"], s["start"], s["end"], s["duration_ms"], s["events"])
            for s in response.json()["sessions"]
        ]

    def at(minutes: int) -> str:
        return iso(h0 + minutes * m)

    assert sessions(world.a.key, person="g1") == [
        (None, "g1", at(200), at(200), 0, 1),  # 35 minutes after the one before
        ("s2", "g1", at(150), at(150), 0, 1),
        (None, "g1", at(120), at(165), 45 * 60_000, 3),  # gaps of 20 and 25 minutes
    ]
    assert sessions(world.a.key) == [
        (None, "anon2", at(210), at(210), 0, 1),
        (None, "g1", at(200), at(200), 0, 1),
        (None, "shared", at(190), at(190), 0, 1),
        ("s2", "g1", at(150), at(150), 0, 1),
        (None, "g1", at(120), at(165), 45 * 60_000, 3),
        ("s1", "u1", at(70), at(70), 0, 1),
        (None, "anon1", at(20), at(20), 0, 1),
        (None, "u1", at(10), at(10), 0, 1),
    ]
    assert sessions(world.b.key, person="g1") == []
    assert [s[1] for s in sessions(world.b.key)] == ["b-anon", "u9", "shared"]
    assert len(sessions(world.a.key, limit=2)) == 2
    # pages of 3 follow next_cursor to the same list, without gaps or repeats
    pages, params = [], {**world.window(), "limit": 3}
    while True:
        body = world.get("/api/v1/sessions", world.a.key, **params).json()
        pages.append([(s["session_id"], s["person"], s["start"]) for s in body["sessions"]])
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    whole = [(s[0], s[1], s[2]) for s in sessions(world.a.key)]
    assert pages == [whole[0:3], whole[3:6], whole[6:8]]
    for bad in ("x", encode_cursor(0, str(uuid.uuid4()))):  # an events cursor is not one
        response = world.get("/api/v1/sessions", world.a.key, cursor=bad)
        assert (response.status, response.json()["parameter"]) == (400, "cursor")


def test_a_person_is_their_events_in_their_project_only(world: World) -> None:
    a = world.a
    response = world.get("/api/v1/persons/u1", a.key, **world.window())
    assert response.status == 200, response.body
    body = response.json()
    assert [e["event_id"] for e in body.pop("recent_events")] == [
        a.events[2]["uuid"],
        a.events[0]["uuid"],
    ]
    assert body == {
        "id": "u1",
        "person": "u1",
        "user_id": "u1",
        "linked_ids": [],
        "traits": None,
        "first_seen": a.events[0]["timestamp"],
        "last_seen": a.events[2]["timestamp"],
        "events": 2,
        "user_ids": ["u1"],
        "anonymous_ids": [],
        "top_events": [{"event": "page_view", "events": 1}, {"event": "signup", "events": 1}],
    }
    shared = world.get("/api/v1/persons/shared", world.b.key, **world.window()).json()
    assert [e["event_id"] for e in shared["recent_events"]] == [world.b.events[0]["uuid"]]
    for key, person_id in ((world.b.key, "u1"), (a.key, "u9"), (a.key, "%27%20OR%201%3D1")):
        response = world.get(f"/api/v1/persons/{person_id}", key, **world.window())
        assert (response.status, response.json()) == (
            404,
            {"error": "no events of this person between since and until"},
        )
    odd = "team/ä 1?x=%"  # any id the ingest takes, URL-encoded in the path
    sent = ev("page_view", world.h0 + timedelta(minutes=5), userId=odd)
    assert world.server.post({"token": a.token, "events": [sent]}).status == 202
    path = "/api/v1/persons/" + urllib.parse.quote(odd, safe="")
    got = poll(lambda: world.get(path, a.key, **world.window()).json().get("recent_events"))
    assert [e["event_id"] for e in got] == [sent["uuid"]]
    response = world.get("/api/v1/persons/" + "x" * 201, a.key)
    assert (response.status, response.json()["parameter"]) == (400, "id")
    assert world.get("/api/v1/persons/u1", world.a.token).status == 401


def test_an_identify_makes_one_person_of_the_anonymous_and_the_identified_history(
    world: World,
) -> None:
    """A visitor browses as anonymous "v1", identifies as "carol" (a native event carrying
    both ids), then buys; later a PostHog `$identify` and a Segment `alias` link two more
    ids to her. Every count sees one person, also for events sent before the identify."""
    a, h0, m = world.a, world.h0, timedelta(minutes=1)
    mine = [
        ev("page_view", h0 + 2 * m, anonymousId="v1", properties={"path": "/"}),
        ev("page_view", h0 + 4 * m, anonymousId="v1", properties={"path": "/pricing"}),
        ev("identify", h0 + 5 * m, anonymousId="v1", userId="carol",
           extras={"traits": {"plan": "pro"}}),
        ev("purchase", h0 + 6 * m, userId="carol"),
        ev("page_view", h0 + 7 * m, anonymousId="phone-1"),
    ]  # fmt: skip
    assert world.server.post({"token": a.token, "events": mine}).status == 202
    base = world.server.url
    posthog = {"api_key": a.token, "batch": [{
        "event": "$identify", "distinct_id": "carol", "timestamp": iso(h0 + 8 * m),
        "properties": {"$anon_distinct_id": "phone-1", "$set": {"plan": "team"}},
    }]}  # fmt: skip
    assert request(base + "/batch/", method="POST", body=posthog).status == 200
    segment = {"writeKey": a.token, "batch": [{
        "type": "alias", "previousId": "old-login", "userId": "carol",
        "timestamp": iso(h0 + 9 * m), "messageId": str(uuid.uuid4()),
    }]}  # fmt: skip
    assert request(base + "/v1/batch", method="POST", body=segment).status == 200
    old = ev("login", h0 + 1 * m, userId="old-login")  # the aliased id's own history
    assert world.server.post({"token": a.token, "events": [old]}).status == 202
    poll(lambda: len(all_events(world, a.key)) == len(a.events) + 8)

    expected_ids = ["carol", "old-login", "phone-1", "v1"]
    for asked in ("v1", "carol", "phone-1", "old-login"):
        response = world.get(f"/api/v1/persons/{asked}", a.key, **world.window())
        assert response.status == 200, (asked, response.body)
        body = response.json()
        assert (body["person"], body["user_id"]) == ("carol", "carol")
        assert sorted([body["person"], *body["linked_ids"]]) == expected_ids
        assert body["events"] == 8, asked
        assert body["traits"] == {"plan": "team"}  # the latest identify's
        assert body["first_seen"] == iso(h0 + 1 * m)
    events_of = {e["event_id"] for e in all_events(world, a.key, person="v1")}
    assert len(events_of) == 8
    # hour 0 before: u1 and anon1 (2 people); now carol once more, whatever her ids
    points = world.get("/api/v1/stats/timeseries", a.key, interval="hour",
                       **world.window()).json()["points"]  # fmt: skip
    assert (points[0]["events"], points[0]["users"]) == (2 + 8, 3)
    end = h0 + timedelta(hours=5)
    assert world.get("/api/v1/stats/active-users", a.key, at=iso(end)).json()["dau"] == 5
    top = world.get("/api/v1/stats/top", a.key, by="event", **world.window()).json()["rows"]
    assert {r["value"]: r["users"] for r in top}["page_view"] == 3 + 1
    sessions = world.get("/api/v1/sessions", a.key, person="phone-1",
                         **world.window()).json()["sessions"]  # fmt: skip
    assert [(s["person"], s["events"], s["start"], s["end"]) for s in sessions] == [
        ("carol", 8, iso(h0 + 1 * m), iso(h0 + 9 * m))
    ]
    # project B never sees the link
    assert world.get("/api/v1/persons/v1", world.b.key, **world.window()).status == 404


def test_session_stats_count_durations_bounces_and_pages(world: World) -> None:
    """A's sessions in the window (see test_sessions_…): six one-event sessions. Add one
    two-page session of 10 minutes: 7 sessions, one not a bounce."""
    a, h0, m = world.a, world.h0, timedelta(minutes=1)
    two = [
        ev("page_view", h0 + 240 * m, anonymousId="reader"),
        ev("scroll", h0 + 245 * m, anonymousId="reader"),
        ev("page_view", h0 + 250 * m, anonymousId="reader"),
    ]
    assert world.server.post({"token": a.token, "events": two}).status == 202
    poll(lambda: len(all_events(world, a.key)) == len(a.events) + 3)
    response = world.get("/api/v1/stats/sessions", a.key, **world.window())
    assert response.status == 200, response.body
    # sessions: u1 (10m), anon1, s1, shared, anon2, reader = 6; one page view each for
    # the four with a page_view, 0 for s1 (signup) and anon2 (purchase): all bounce but
    # reader (2 page views).
    assert response.json() == {
        "sessions": 6,
        "avg_duration_s": round(600 / 6, 3),
        "bounce_rate": round(5 / 6, 4),
        "pages_per_session": round((1 + 1 + 0 + 1 + 0 + 2) / 6, 3),
    }
    empty = world.get("/api/v1/stats/sessions", world.b.key, since=iso(h0 - timedelta(days=2)),
                      until=iso(h0 - timedelta(days=1))).json()  # fmt: skip
    assert empty == {"sessions": 0, "avg_duration_s": 0, "bounce_rate": 0, "pages_per_session": 0}
    assert (
        world.get("/api/v1/stats/sessions", a.key, include_bots="maybe").json()["parameter"]
        == "include_bots"
    )
