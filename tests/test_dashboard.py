"""The dashboard in a real headless Chromium against a real ``sluice serve`` holding two
seeded projects, A and B.

One walk through the page (``clients/node/dashboard.js``, playwright-core driving
Debian's ``/usr/bin/chromium``) signs in with a wrong key, a revoked key, A's key and B's
key, and reports what each view showed; the tests below compare that with the read API's
own answers for the same window, with ``/healthz`` and ``/metrics``, and with the server's
log. Every request to anything but the Sluice origin is blocked and counted. Screenshots of
each view go to ``$SLUICE_TEST_ARTIFACTS/dashboard`` (default ``test-artifacts/``,
gitignored).

Features that arrive on the server separately (``by=browser|os|device_type`` still
answers 400; ``include_bots`` and ``/stats/sessions`` have landed) are probed once: the
page must show the numbers when the server has them and the server's error text in that
panel when it does not — whichever holds is asserted."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import make_project
from support import ROOT, Postgres, Response, Server, poll, request

from auth import keys
from storage.postgres import create_pool

NODE_DIR = ROOT / "clients" / "node"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("SLUICE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "dashboard"
BUFFER = 12_345  # INGEST_EVENT_BUFFER: a capacity no default has, for the operator panel
PERSON = "u1"
DIMENSIONS = ("event", "path", "referrer_domain", "utm_source")
LATER_DIMENSIONS = ("browser", "os", "device_type")


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def ev(name: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {"event": name, "timestamp": iso(at), "uuid": str(uuid.uuid4()), **fields}


def seed(now: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    h = timedelta(hours=1)
    m = timedelta(minutes=1)
    a = [
        ev("page_view", now - h, userId=PERSON, sessionId="s1",
           properties={"path": "/pricing", "utm_source": "news",
                       "referrer": "https://www.google.com/search?q=sluice"}),
        ev("page_view", now - h + 2 * m, userId=PERSON, sessionId="s1",
           properties={"path": "/docs"}),
        ev("signup", now - h + 5 * m, userId=PERSON, sessionId="s1", properties={"plan": "pro"}),
        ev("page_view", now - 3 * h, anonymousId="anon-7",
           properties={"$current_url": "https://shop.example/blog?utm_source=ads"}),
        ev("purchase", now - 5 * h, userId="u2", properties={"amount": 30}),
        ev("page_view", now - 5 * h - m, userId="u2", properties={"path": "/pricing"}),
        ev("a_only_event", now - 20 * h, userId="u3"),
        ev("page_view", now - 72 * h, userId="u4", properties={"path": "/old"}),  # 7 days only
    ]  # fmt: skip
    b = [
        ev("page_view", now - 2 * h, userId="b-user", properties={"path": "/b-only"}),
        ev("b_only_event", now - 2 * h + m, userId="b-user"),
    ]
    return a, b


def new_key(dsn: str, project_id: uuid.UUID, revoke: bool = False) -> str:
    async def run() -> str:
        pool = await create_pool(dsn, retry_for=5)
        try:
            key = (await keys.create_key(pool, project_id))[1]
            if revoke:
                await keys.revoke_key(pool, key)
            return key
        finally:
            await pool.close()

    return asyncio.run(run())


@dataclass
class Walk:
    server: Server
    keys: dict[str, str]
    report: dict[str, Any]
    live_event: str

    def get(self, path: str, key: str | None = None, **params: Any) -> Response:
        query = urllib.parse.urlencode(params)
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return request(f"{self.server.url}{path}{'?' + query if query else ''}", headers=headers)

    def api(self, path: str, key: str = "a", **params: Any) -> Any:
        answer = self.get(path, key, **params)
        assert answer.status == 200, (path, params, answer.status, answer.body)
        return answer.json()

    def supports(self, path: str, **params: Any) -> Response:
        """Probe once whether the server has a feature still being built."""
        return self.get(path, "a", **params)


def browser_ready() -> None:
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: `make test` installs it (apt-get)")
    if not (NODE_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.fail("clients/node is not installed: `make test` runs npm ci --prefix clients/node")


@pytest.fixture(scope="module")
def walk(pg: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    browser_ready()
    dsn = pg.dsn(pg.create_database())
    a_id, a_token = make_project(dsn, "Acme shop")
    b_id, b_token = make_project(dsn, "Beta app")
    env = {
        "DATABASE_URL": dsn,
        "INGEST_FLUSH_INTERVAL": "100ms",
        "INGEST_TOKEN_CACHE_TTL": "1s",
        "INGEST_EVENT_BUFFER": str(BUFFER),
    }
    server = Server(tmp_path_factory.mktemp("dash") / "data", env).wait_ready()
    try:
        a_events, b_events = seed(datetime.now(UTC))
        for token, events in ((a_token, a_events), (b_token, b_events)):
            answer = server.post({"token": token, "events": events})
            assert answer.status == 202, answer.body
        all_keys = {
            "a": new_key(dsn, a_id),
            "b": new_key(dsn, b_id),
            "revoked": new_key(dsn, a_id, revoke=True),
            "wrong": "sluice_sk_" + "x" * 32,
        }
        walk = Walk(server, all_keys, {}, f"live_{uuid.uuid4().hex[:8]}")
        week = iso(datetime.now(UTC) - timedelta(days=7))

        def landed(key: str, sent: list[dict[str, Any]]) -> bool:
            return len(walk.api("/api/v1/events", key, since=week)["events"]) == len(sent)

        for key, sent in (("a", a_events), ("b", b_events)):
            poll(lambda k=key, s=sent: landed(k, s))

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for old in ARTIFACTS.glob("*.png"):
            old.unlink()
        config = tmp_path_factory.mktemp("walk") / "config.json"
        config.write_text(json.dumps({
            "url": server.url, "artifacts": str(ARTIFACTS), "keys": all_keys,
            "token_a": a_token, "person": PERSON, "live_event": walk.live_event,
        }))  # fmt: skip
        ran = subprocess.run(
            ["node", str(NODE_DIR / "dashboard.js"), str(config)],
            capture_output=True, text=True, timeout=120, cwd=NODE_DIR,
        )  # fmt: skip
        lines = ran.stdout.strip().splitlines()
        assert lines, (ran.returncode, ran.stderr)
        walk.report = json.loads(lines[-1])
        (ARTIFACTS / "report.json").write_text(json.dumps(walk.report, indent=1))
        assert ran.returncode == 0, (walk.report["problems"], ran.stderr)
        yield walk
    finally:
        server.kill()


def window_of(view: dict[str, Any]) -> dict[str, str]:
    return {"since": view["since"], "until": view["until"]}


def number(value: str | None) -> float | None:
    return None if value in (None, "") else float(value)


# --- served files ---------------------------------------------------------------------


def test_root_redirects_and_files_carry_security_headers(walk: Walk) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", walk.server.port, timeout=10)
    conn.request("GET", "/")
    root = conn.getresponse()
    assert (root.status, root.getheader("Location")) == (302, "/dashboard/")
    conn.close()
    assert walk.report["landed"] == walk.server.url + "/dashboard/"  # the browser followed it
    page = request(walk.server.url + "/dashboard/")
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self';" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert b"<script>" not in page.body and b" style=" not in page.body  # nothing inline
    script = request(walk.server.url + "/dashboard/dashboard.js")
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    etag = script.headers["ETag"]
    again = request(walk.server.url + "/dashboard/dashboard.js", headers={"If-None-Match": etag})
    assert (again.status, again.body) == (304, b"")
    missing = request(walk.server.url + "/dashboard/../pyproject.toml")
    assert missing.status == 404
    assert request(walk.server.url + "/dashboard/nope.js").json() == {"error": "Not Found"}


def test_nothing_is_requested_from_another_origin(walk: Walk) -> None:
    report = walk.report
    assert report["blocked"] == []
    assert report["requests"], "the page made no request at all"
    assert all(url.startswith(walk.server.url + "/") for url in report["requests"])
    assert report["problems"] == []  # no CSP refusal, no script error


def test_the_key_is_never_in_a_url_or_the_log_and_only_in_session_storage(walk: Walk) -> None:
    report = walk.report
    secrets = [walk.keys[k] for k in ("a", "b", "wrong", "revoked")]
    for url in [*report["requests"], report["final_url"], report["landed"]]:
        assert not any(secret in url for secret in secrets), url
    assert report["key_in_storage"] is True
    assert report["local_storage"] == 0
    assert report["after_signout_storage"] == []
    logged = walk.server.logs()
    assert "/api/v1/stats/timeseries" in logged  # the page's requests are logged
    assert not any(secret in logged for secret in secrets)


def test_project_endpoint_names_the_keys_project(walk: Walk) -> None:
    a = walk.api("/api/v1/project", "a")
    assert a["name"] == "Acme shop"
    assert walk.api("/api/v1/project", "b")["name"] == "Beta app"
    assert walk.get("/api/v1/project").status == 401
    assert walk.get("/api/v1/project", "a", since="2026-01-01").status == 400
    assert walk.report["a_24h"]["project"] == "Acme shop"
    assert walk.report["b_24h"]["project"] == "Beta app"


# --- sign-in --------------------------------------------------------------------------


def test_a_wrong_or_revoked_key_gets_a_clear_message(walk: Walk) -> None:
    for shown in (walk.report["wrong_key"], walk.report["revoked_key"]):
        assert "This key was not accepted." in shown
        assert "unknown or revoked read key" in shown  # the server's reason


# --- overview -------------------------------------------------------------------------


def test_totals_and_charts_equal_the_api(walk: Walk) -> None:
    for name, interval, users in (("a_24h", "hour", "dau"), ("a_7d", "hour", "wau")):
        view = walk.report[name]
        window = window_of(view)
        series = walk.api("/api/v1/stats/timeseries", interval=interval, **window)["points"]
        active = walk.api("/api/v1/stats/active-users", at=view["until"])
        fields = view["fields"]
        assert number(fields["events"]) == sum(p["events"] for p in series), name
        assert number(fields["users"]) == active[users], name
        for field in ("dau", "wau", "mau"):
            assert number(fields[field]) == active[field], (name, field)
        assert view["chartBars"] == len(series)
        assert view["chartRows"] == [
            [f"{p['t'][:10]} {p['t'][11:19]}", f"{p['events']:,}", f"{p['users']:,}"]
            for p in series
        ]
    assert number(walk.report["a_24h"]["fields"]["events"]) == 7  # the seed, as a check
    custom = walk.report["a_custom"]
    series = walk.api("/api/v1/stats/timeseries", interval="hour", **window_of(custom))["points"]
    assert number(custom["fields"]["events"]) == sum(p["events"] for p in series) == 7
    assert custom["fields"]["users"] == ""  # no unique-user total for a custom range
    assert custom["chartBars"] == len(series)
    assert number(walk.report["a_7d"]["fields"]["events"]) == 8


def test_top_tables_equal_the_api(walk: Walk) -> None:
    view = walk.report["a_24h"]
    for by in DIMENSIONS:
        rows = walk.api("/api/v1/stats/top", by=by, limit=10, **window_of(view))["rows"]
        assert rows, by
        assert view["tops"][by] == [[r["value"], r["events"], r["users"]] for r in rows], by


def test_browser_os_and_device_show_the_servers_answer(walk: Walk) -> None:
    view = walk.report["a_24h"]
    for by in LATER_DIMENSIONS:
        answer = walk.supports("/api/v1/stats/top", by=by, limit=10, **window_of(view))
        panel = view["panels"][f"p-top-{by}"]
        if answer.status == 200:
            rows = answer.json()["rows"]
            if rows:
                assert view["tops"][by] == [[r["value"], r["events"], r["users"]] for r in rows]
            else:
                assert panel["state"] == "empty"
        else:  # not built yet: the panel says what the server said, the page lives on
            assert panel["state"] == "error", panel
            assert answer.json()["error"] in panel["text"]


def test_sessions_panel_shows_the_servers_answer(walk: Walk) -> None:
    view = walk.report["a_24h"]
    answer = walk.supports("/api/v1/stats/sessions", **window_of(view))
    panel = view["panels"]["p-sessions"]
    if answer.status == 200:
        body = answer.json()
        assert panel["state"] == "ready"
        for field in ("sessions", "avg_duration_s", "bounce_rate", "pages_per_session"):
            assert number(view["fields"][field]) == body[field], field
    else:
        assert panel["state"] == "error"
        assert str(answer.status) in panel["text"]


def test_bots_toggle_asks_for_bots_or_shows_why_not(walk: Walk) -> None:
    view = walk.report["a_bots"]
    answer = walk.supports(
        "/api/v1/stats/timeseries", interval="hour", include_bots="true", **window_of(view)
    )
    if answer.status == 200:
        assert number(view["fields"]["events"]) == sum(p["events"] for p in answer.json()["points"])
    else:
        chart = view["panels"]["p-chart"]
        assert chart["state"] == "error"
        assert answer.json()["error"] in chart["text"]
    assert view["project"] == "Acme shop"  # a failing panel does not take the page with it


# --- live tail and person ---------------------------------------------------------------


def test_an_event_sent_after_the_page_loaded_appears_in_the_live_tail(walk: Walk) -> None:
    report = walk.report
    assert report["live_post_status"] == 202
    assert walk.live_event not in report["live_before"]
    assert report["live_after"][0] == walk.live_event  # newest first, by itself
    assert sorted(report["live_before"]) == sorted(report["live_after"][1:])
    assert json.loads(report["live_properties"]) == {"plan": "pro", "answer": 42}
    assert report["live_appeared_ms"] < 15_000


def test_a_person_view_opens_with_their_timeline(walk: Walk) -> None:
    person = walk.report["person"]
    assert person["hash"] == f"#person/{PERSON}"
    assert person["state"] == "ready"
    assert person["title"] == f"Person {PERSON}"
    api = walk.api(f"/api/v1/persons/{PERSON}")
    assert number(person["fields"]["person_events"]) == api["events"] == 3
    assert person["timeline"] == [e["event"] for e in api["recent_events"]]
    assert person["ids"] == [[PERSON, f"#person/{PERSON}"]]  # its user id, as a link
    assert "s1" in person["text"]  # the session


# --- operator panel ---------------------------------------------------------------------


def test_operator_panel_matches_healthz_and_metrics(walk: Walk) -> None:
    instance = walk.report["instance"]
    assert set(instance["states"].values()) == {"ready"}, instance["states"]
    fields = instance["fields"]
    health = walk.get("/healthz").json()
    assert fields["status"] == health["status"] == "ok"
    assert fields["fatal"] == str(health["fatal"]).lower()
    assert fields["ingest_disabled"] == str(health["ingest_disabled"]).lower()
    assert number(fields["dlq_depth"]) == health["dlq_depth"]
    assert fields["buffer"] == f"{health['buffer']['pending']}/{health['buffer']['capacity']}"
    assert health["buffer"]["capacity"] == BUFFER
    metrics = request(walk.server.url + "/metrics").body.decode()
    accepted = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("sluice_events_accepted_total ")
    )
    assert number(fields["accepted_total"]) == accepted == 11  # 8 + 2 seeded, 1 live
    assert number(fields["accepted_rate"]) is not None
    dlq = walk.api("/api/v1/instance/deadletter")
    assert dlq == {
        "active_rows": 0, "active_events": 0, "quarantined_rows": 0,
        "quarantined_events": 0, "oldest_age_seconds": None,
    }  # fmt: skip
    assert number(fields["dlq_active_rows"]) == 0
    assert number(fields["dlq_quarantined_rows"]) == 0
    assert walk.get("/api/v1/instance/deadletter").status == 401


# --- isolation ---------------------------------------------------------------------------


def test_another_projects_key_never_shows_this_projects_data(walk: Walk) -> None:
    b = walk.report["b_24h"]
    series = walk.api("/api/v1/stats/timeseries", "b", interval="hour", **window_of(b))["points"]
    assert number(b["fields"]["events"]) == sum(p["events"] for p in series) == 2
    assert [row[0] for row in b["tops"]["event"]] == ["b_only_event", "page_view"]
    a_only = ["a_only_event", "/pricing", "/docs", "anon-7", "u2", "news", walk.live_event]
    for text in (b["text"], walk.report["b_person"]["text"], walk.report["b_live"]["text"]):
        assert not [word for word in a_only if word in text]
    assert walk.report["b_person"]["state"] == "empty"  # A's person is nobody in B
    assert walk.live_event not in walk.report["b_live"]["events"]
    assert walk.report["b_live"]["events"] == ["b_only_event", "page_view"]


# --- artifacts ---------------------------------------------------------------------------


def test_a_screenshot_of_each_view_is_saved(walk: Walk) -> None:
    names = sorted(Path(p).name for p in walk.report["screenshots"])
    assert len(names) == 12
    for name in names:
        data = (ARTIFACTS / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, name
