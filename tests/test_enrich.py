"""Enrichment: what sent an event (browser, os, device_type, is_bot from its user agent)
and where it came from (path, referrer_domain, utm_* from its page), stored in the
columns of migration 0003.

Real user agents through a real server: the native endpoint (the request's header), the
Segment and PostHog endpoints (the agent in the SDK's context), a parked batch replayed
by the drain, a write-ahead log segment written before 0003, and 0003 applied to a
table that already holds rows."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import clickhouse_rows, poll, request

from ingest import enrich
from ingest.buffer import Buffer
from ingest.deadletter import DeadLetter
from ingest.drain import Drain
from ingest.metrics import Metrics
from ingest.rows import COLUMNS, FORMAT, lines_to_rows, payload_rows, rows_to_lines, upgrade_lines
from ingest.state import State
from ingest.validate import validate_batch, validate_rows
from storage.clickhouse import open_clickhouse
from storage.migrations import clickhouse_up, discover

CHROME_DESKTOP = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
FIREFOX_ANDROID = "Mozilla/5.0 (Android 14; Mobile; rv:132.0) Gecko/132.0 Firefox/132.0"
CHROME_ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
HEADLESS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/131.0.0.0 Safari/537.36"
)
SLACK_PREVIEW = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
ANALYTICS_PYTHON = "analytics-python/2.4.0"
POSTHOG_NODE = "posthog-node/4.2.1"
CURL = "curl/8.5.0"
REQUESTS = "python-requests/2.32.3"

# (user agent) → (browser, os, device_type, is_bot)
DESCRIBED = {
    CHROME_DESKTOP: ("Chrome", "Windows", "desktop", 0),
    SAFARI_IPHONE: ("Mobile Safari", "iOS", "mobile", 0),
    FIREFOX_ANDROID: ("Firefox Mobile", "Android", "mobile", 0),
    CHROME_ANDROID_TABLET: ("Chrome", "Android", "tablet", 0),
    GOOGLEBOT: ("Googlebot", "", "bot", 1),
    HEADLESS: ("HeadlessChrome", "Linux", "bot", 1),
    SLACK_PREVIEW: ("Slackbot-LinkExpanding", "", "bot", 1),
    # The customer's own servers: server SDKs, the quick start's curl, a plain HTTP
    # library. Not bots: an event needs the project's token to get here.
    ANALYTICS_PYTHON: ("", "", "", 0),
    POSTHOG_NODE: ("", "", "", 0),
    CURL: ("curl", "", "", 0),
    REQUESTS: ("Python Requests", "", "", 0),
}
AGENT_SQL = "user_agent, browser, os, device_type, is_bot"
PAGE_SQL = "path, referrer_domain, utm_source, utm_medium, utm_campaign, utm_term, utm_content"
AT = 1_795_000_000_000


@pytest.mark.parametrize("agent", list(DESCRIBED))
def test_a_user_agent_is_described_by_uap_and_the_crawler_list(agent: str) -> None:
    assert enrich.describe(agent) == (agent, *DESCRIBED[agent])
    assert enrich.is_bot(agent) is bool(DESCRIBED[agent][3])


def test_no_user_agent_is_unknown_and_a_long_one_is_cut_not_refused() -> None:
    assert enrich.describe(None) == enrich.describe("") == ("", "", "", "", 0)
    long = CHROME_DESKTOP + " x" * 2000
    described = enrich.describe(long)
    assert described[0] == long[: enrich.MAX_USER_AGENT_CHARS]
    assert described[1:] == DESCRIBED[CHROME_DESKTOP]


def _rows(data_dir: Path, where: str = "1") -> dict[str, tuple]:
    found = clickhouse_rows(
        data_dir / "clickhouse",
        f"SELECT event, {AGENT_SQL}, {PAGE_SQL} FROM events_raw_v1 WHERE {where}",
    )
    return {r[0]: tuple(r[1:]) for r in found}


def _agent(agent: str) -> tuple:
    return (agent, *DESCRIBED[agent]) if agent else ("", "", "", "", 0)


NO_PAGE = ("", "", "", "", "", "", "")


def test_native_events_take_the_request_user_agent_or_their_own(start_server, project) -> None:
    _, token = project
    server = start_server()

    def send(agent: str, *events: dict[str, Any]) -> None:
        body = {"token": token, "events": [{"timestamp": AT, **e} for e in events]}
        assert server.post(body, headers={"User-Agent": agent}).status == 202

    send(CHROME_DESKTOP, {"event": "desktop", "properties": {
        "url": "https://shop.example/pricing?utm_source=news%20letter&utm_medium=email"
               "&utm_campaign=launch&utm_term=ingest+tool&utm_content=hero",
        "referrer": "https://www.google.com/search?q=sluice"}})  # fmt: skip
    send(SAFARI_IPHONE, {"event": "iphone", "properties": {"path": "/docs", "utm_source": "ads"}})
    send(GOOGLEBOT, {"event": "googlebot"})
    send(HEADLESS, {"event": "headless"})
    send(CURL, {"event": "curl"})
    send("Mozilla/5.0 café", {"event": "latin-1"})  # urllib sends é as one byte, not UTF-8
    send(ANALYTICS_PYTHON, {"event": "server"},
         # a server relaying its visitors' events names each visitor's agent
         {"event": "relayed", "user_agent": FIREFOX_ANDROID},
         {"event": "relayed-context", "context": {"userAgent": SLACK_PREVIEW}})  # fmt: skip
    poll(lambda: server.healthz().json()["buffer"]["pending"] == 0)
    assert server.stop() == 0, server.logs()
    rows = _rows(server.data_dir)
    assert rows == {
        "desktop": (
            *_agent(CHROME_DESKTOP),
            "/pricing",
            "google.com",
            "news letter",
            "email",
            "launch",
            "ingest tool",
            "hero",
        ),
        "iphone": (*_agent(SAFARI_IPHONE), "/docs", "", "ads", "", "", "", ""),
        "googlebot": (*_agent(GOOGLEBOT), *NO_PAGE),
        "headless": (*_agent(HEADLESS), *NO_PAGE),
        "curl": (*_agent(CURL), *NO_PAGE),
        "latin-1": ("Mozilla/5.0 caf\ufffd", "", "", "", 0, *NO_PAGE),
        "server": (*_agent(ANALYTICS_PYTHON), *NO_PAGE),
        "relayed": (*_agent(FIREFOX_ANDROID), *NO_PAGE),
        # a native event's context is opaque (kept in extras): the request's agent
        "relayed-context": (*_agent(ANALYTICS_PYTHON), *NO_PAGE),
    }
    # The native user_agent field is a column, not an extra; a context stays in extras.
    extras = dict(clickhouse_rows(server.data_dir / "clickhouse",
                                  "SELECT event, extras FROM events_raw_v1 "
                                  "WHERE event LIKE 'relayed%'"))  # fmt: skip
    assert json.loads(extras["relayed"]) == {}
    assert json.loads(extras["relayed-context"]) == {"context": {"userAgent": SLACK_PREVIEW}}


def test_sdk_events_take_the_agent_and_campaign_from_their_context(start_server, project) -> None:
    """Segment's context.userAgent / page / campaign and PostHog's $raw_user_agent /
    $current_url / $referrer, sent by a server whose own agent is a server SDK's."""
    _, token = project
    server = start_server()
    segment = {
        "writeKey": token,
        "batch": [
            {"type": "track", "event": "seg-track", "anonymousId": "a1", "timestamp": AT,
             "context": {"userAgent": SAFARI_IPHONE,
                         "page": {"path": "/checkout", "url": "https://shop.example/checkout",
                                  "referrer": "https://news.ycombinator.com/item?id=1"},
                         "campaign": {"source": "hn", "medium": "social", "name": "launch"}}},
            {"type": "page", "name": "Docs", "anonymousId": "a1", "timestamp": AT,
             "properties": {"path": "/docs", "url": "https://shop.example/docs?utm_source=x",
                            "referrer": ""},
             "context": {"userAgent": GOOGLEBOT}},
            {"type": "track", "event": "seg-server", "userId": "u1", "timestamp": AT},
        ],
    }  # fmt: skip
    sent = request(f"{server.url}/v1/batch", method="POST", body=segment,
                   headers={"User-Agent": ANALYTICS_PYTHON})  # fmt: skip
    assert sent.status == 200, sent.body
    posthog = {
        "api_key": token,
        "batch": [
            {"event": "$pageview", "distinct_id": "d1", "timestamp": AT,
             "properties": {"$raw_user_agent": CHROME_ANDROID_TABLET,
                            "$current_url": "https://app.example/p/42?utm_campaign=spring%20sale",
                            "$referrer": "$direct", "utm_source": "newsletter"}},
            {"event": "ph-server", "distinct_id": "d2", "timestamp": AT, "properties": {}},
        ],
    }  # fmt: skip
    sent = request(f"{server.url}/batch/", method="POST", body=posthog,
                   headers={"User-Agent": POSTHOG_NODE})  # fmt: skip
    assert sent.status == 200, sent.body
    poll(lambda: server.healthz().json()["buffer"]["pending"] == 0)
    assert server.stop() == 0, server.logs()
    rows = clickhouse_rows(server.data_dir / "clickhouse",
                           f"SELECT event, {AGENT_SQL}, {PAGE_SQL} FROM events_raw_v1")  # fmt: skip
    assert sorted(rows) == sorted([
        ("seg-track", *_agent(SAFARI_IPHONE), "/checkout", "news.ycombinator.com", "hn",
         "social", "launch", "", ""),
        # Segment's page message, rendered by Googlebot: a bot, its page still read
        ("$pageview", *_agent(GOOGLEBOT), "/docs", "", "x", "", "", "", ""),
        ("seg-server", *_agent(ANALYTICS_PYTHON), *NO_PAGE),
        ("$pageview", *_agent(CHROME_ANDROID_TABLET), "/p/42", "", "newsletter", "",
         "spring sale", "", ""),
        ("ph-server", *_agent(POSTHOG_NODE), *NO_PAGE),
    ])  # fmt: skip


async def test_a_parked_batch_replays_with_its_agent_columns_and_an_old_payload_with_none(
    pool, ch
) -> None:
    """A batch parked now keeps its agent values through the dead-letter table; one
    parked before 0003 (no such columns in its payload) lands with '' and 0. Both get
    their page values from ClickHouse as they land."""
    project = uuid.uuid4().int
    props = {"$current_url": "https://a.example/x?utm_source=dlq"}
    new_rows, errors = validate_rows([{"event": "new", "timestamp": AT, "properties": props}],
                                     project, AT, user_agent=HEADLESS)  # fmt: skip
    assert errors == []
    await DeadLetter(pool).park(str(uuid.uuid4()), new_rows, "ClickHouse down: test")
    old_rows, _ = validate_rows([{"event": "old", "timestamp": AT, "properties": props}],
                                project, AT, user_agent=CHROME_DESKTOP)  # fmt: skip
    width = COLUMNS.index("user_agent")
    old = [[str(uuid.UUID(int=r[0])), str(uuid.UUID(int=r[1])), *r[2:width]] for r in old_rows]
    payload = {"format": FORMAT, "columns": COLUMNS[:width], "rows": old}
    assert [row[width:] for row in payload_rows(orjson.dumps(payload))] == [["", "", "", "", 0]]
    await pool.execute(
        "INSERT INTO failed_events (id, batch, event_count, last_error) "
        "VALUES ($1, $2::jsonb, 1, 'parked before 0003')",
        uuid.uuid4(), orjson.dumps(payload),
    )  # fmt: skip
    drain = Drain(pool, DeadLetter(pool), ch, State(), Metrics(), Buffer(1000, 100),
                  batch_limit=10)  # fmt: skip
    assert (await drain.pass_once())[0] == 2
    assert await pool.fetchval("SELECT count(*) FROM failed_events") == 0
    stored = await ch.query_rows(
        f"SELECT event, {AGENT_SQL}, path, utm_source FROM events_raw_v1 ORDER BY event"
    )
    assert [tuple(r) for r in stored] == [
        ("new", *_agent(HEADLESS), "/x", "dlq"),
        ("old", "", "", "", "", 0, "/x", "dlq"),
    ]


def _v1_lines(lines: list[bytes]) -> bytes:
    """Row lines as a version before 0003 wrote them (no agent values)."""
    out = b""
    for line in lines:
        values = orjson.loads(line)
        out += orjson.dumps([*values[:2], *values[7:]]) + b"\n"
    return out


def test_lines_of_a_log_segment_written_before_0003_are_upgraded_on_restore() -> None:
    """The write-ahead log holds row lines; a segment a version before 0003 left behind
    holds lines without the agent values. Restored into a batch, they become current
    lines ('' and 0); current lines pass unchanged."""
    project = uuid.uuid4().int
    lines, _, _ = validate_batch([{"event": "e", "timestamp": AT, "properties": {"a": 1}}] * 3,
                                 project, AT, user_agent=SAFARI_IPHONE)  # fmt: skip
    current = b"".join(lines)
    v1 = _v1_lines(lines)
    assert upgrade_lines(current) is current
    upgraded = upgrade_lines(v1)
    assert upgraded != v1
    rows = lines_to_rows(upgraded)
    assert [r[:11] for r in rows] == [r[:11] for r in lines_to_rows(current)]
    assert {r[11:] for r in rows} == {("", "", "", "", 0)}
    assert rows_to_lines(rows) == upgraded

    from ingest.buffer import Buffer
    from ingest.wal import SegmentReport

    report = SegmentReport(Path("x.wal"), 1, uuid.uuid4().bytes, [(project.to_bytes(16, "big"),
                                                                   v1)], 0)  # fmt: skip
    buffer = Buffer(100, 100)
    assert buffer.restore([report]) == 3
    batch = asyncio.run(buffer.take())
    assert batch is not None and batch.data() == upgraded


def test_0003_on_a_table_with_rows_gives_old_rows_page_values_and_no_agent(
    tmp_path: Path,
) -> None:
    """Rows stored before 0003: the agent columns read '' and 0 (it was never kept);
    the page columns are computed from their own JSON. Running 0003 again is a no-op."""
    path = tmp_path / "ch"
    migrations = discover("clickhouse")
    third = next(m for m in migrations if m.version == 3)

    async def run() -> None:
        ch = await open_clickhouse(f"chdb://{path}")
        try:
            await ch.command(
                "CREATE TABLE IF NOT EXISTS sluice_schema_migrations (version UInt32, "
                "name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
                "ENGINE = ReplacingMergeTree ORDER BY version"
            )
            for m in migrations[:2]:
                if m.is_python:
                    await m.run_python(ch)
                else:
                    for statement in m.statements():
                        await ch.command(statement)
                await ch.command(f"INSERT INTO sluice_schema_migrations (version, name) "
                                 f"VALUES ({m.version}, '{m.name}')")  # fmt: skip
            props = json.dumps({"$current_url": "https://www.shop.example/a/b?utm_medium=cpc",
                                "$referrer": "https://www.bing.com/"})  # fmt: skip
            extras = json.dumps({"context": {"campaign": {"source": "seg", "name": "c1"}}})
            await ch.command(
                "INSERT INTO events_raw_v1 (event_id, project_id, event, timestamp, "
                "received_at, properties, extras, client_timestamp) VALUES (generateUUIDv4(), "
                f"generateUUIDv4(), 'old', now64(3), now64(3), '{props}', '{extras}', now64(3))"
            )
            assert [m.version for m in await clickhouse_up(ch)] == [
                m.version for m in migrations[2:]
            ]
            await third.run_python(ch)  # again, as after a crash before its bookkeeping
        finally:
            await ch.close()

    asyncio.run(run())
    assert clickhouse_rows(path, f"SELECT event, {AGENT_SQL}, {PAGE_SQL} FROM events_raw_v1") == [
        ("old", "", "", "", "", 0, "/a/b", "bing.com", "seg", "cpc", "c1", "", "")
    ]


def test_a_request_parses_at_most_max_agents_of_its_own_and_keeps_the_rest_as_sent() -> None:
    """Past MAX_AGENTS_PER_REQUEST distinct agents in one request, an agent is stored as
    sent and its values left unknown: invented agents cannot hold the event loop."""
    from ingest.validate import MAX_AGENTS_PER_REQUEST

    many = MAX_AGENTS_PER_REQUEST + 20
    agents = [f"{CHROME_DESKTOP} build/{i}" for i in range(many)]
    events = [{"event": "e", "timestamp": AT, "user_agent": a} for a in agents]
    events.append({"event": "again", "timestamp": AT, "user_agent": agents[0]})
    rows, errors = validate_rows(events, 7, AT, user_agent=CURL)
    assert errors == []
    values = [r[COLUMNS.index("user_agent") :] for r in rows]
    assert values[:MAX_AGENTS_PER_REQUEST] == [
        (a, "Chrome", "Windows", "desktop", 0) for a in agents[:MAX_AGENTS_PER_REQUEST]
    ]
    assert values[MAX_AGENTS_PER_REQUEST:many] == [
        (a, "", "", "", 0) for a in agents[MAX_AGENTS_PER_REQUEST:]
    ]
    assert values[-1] == values[0]  # an agent already described in the request is reused


def test_a_log_segment_left_by_a_version_before_0003_lands_at_boot(
    start_server, project, tmp_path: Path
) -> None:
    """A server before 0003 died with accepted events in its write-ahead log; this
    version boots on the same data directory, flushes them first, and they land with
    '' and 0 for the agent and their page values from their own JSON."""
    from ingest.wal import Wal

    project_id, _ = project
    data = tmp_path / "data"
    props = {"$current_url": "https://a.example/from/log?utm_source=wal"}
    lines, errors, _ = validate_batch(
        [{"event": "from-log", "timestamp": AT + i, "properties": props} for i in range(5)],
        project_id.int, AT, user_agent=CHROME_DESKTOP,
    )  # fmt: skip
    assert errors == []

    async def write() -> None:
        wal = Wal(data / "wal", 1 << 30)
        assert wal.open() == []
        await wal.append(uuid.uuid4().bytes, project_id.bytes, _v1_lines(lines), None)
        await wal.close()

    asyncio.run(write())
    server = start_server(data_dir=data)
    poll(lambda: server.healthz().json()["buffer"]["pending"] == 0)
    assert server.stop() == 0, server.logs()
    assert [r["events"] for r in server.log_events("wal_recovered")] == [5]
    rows = clickhouse_rows(data / "clickhouse",
                           f"SELECT event, {AGENT_SQL}, path, utm_source, count() "
                           "FROM events_raw_v1 GROUP BY ALL")  # fmt: skip
    assert rows == [("from-log", "", "", "", "", 0, "/from/log", "wal", 5)]


def test_the_real_sdks_user_agents_are_not_bots_and_a_relayed_agent_is_used(
    start_server, project
) -> None:
    """analytics-python and posthog-python, unchanged: each request carries the SDK's
    own User-Agent (not a bot); an event relayed with the visitor's agent in Segment's
    context or PostHog's $raw_user_agent gets that agent."""
    from posthog import Posthog
    from segment.analytics.client import Client

    _, token = project
    server = start_server()
    errors: list[Any] = []
    segment = Client(token, host=server.url, max_retries=1,
                     on_error=lambda e, batch: errors.append(e))  # fmt: skip
    segment.track("u1", "seg-own", timestamp=None)
    segment.track("u1", "seg-relayed", context={"userAgent": SAFARI_IPHONE,
                                                "campaign": {"source": "mail"}})  # fmt: skip
    segment.flush()
    segment.join()
    posthog = Posthog(token, host=server.url, max_retries=1, disable_geoip=True,
                      on_error=lambda e, batch: errors.append(e),
                      enable_exception_autocapture=False)  # fmt: skip
    posthog.capture("ph-own", distinct_id="d1")
    posthog.capture("ph-relayed", distinct_id="d1",
                    properties={"$raw_user_agent": GOOGLEBOT, "$pathname": "/blog"})  # fmt: skip
    posthog.flush()
    posthog.shutdown()
    assert errors == []
    assert server.stop() == 0, server.logs()
    rows = _rows(server.data_dir)
    assert set(rows) == {"seg-own", "seg-relayed", "ph-own", "ph-relayed"}
    assert rows["seg-own"][0].startswith("analytics-python/")
    assert rows["ph-own"][0].startswith("posthog-python/")
    for own in ("seg-own", "ph-own"):
        assert rows[own][1:5] == ("", "", "", 0), rows[own]
    assert rows["seg-relayed"][:5] == _agent(SAFARI_IPHONE)
    assert rows["seg-relayed"][5:] == ("", "", "mail", "", "", "", "")
    assert rows["ph-relayed"][:5] == _agent(GOOGLEBOT)
    assert rows["ph-relayed"][5:] == ("/blog", "", "", "", "", "", "")
