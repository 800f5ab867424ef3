"""Noisy and malicious tenants (issue 11): a per-project rate limit, a per-project
pause, and a token cache that a flood of random tokens and a Postgres outage cannot
turn against real tokens. Real server processes, a real Postgres that is really
stopped, the real ``sluice`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest
from conftest import make_project
from support import SLUICE, Postgres, event, poll, request

from auth import tokens
from ingest.ratelimit import ProjectLimits, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- the token bucket, on its own ------------------------------------------------------


def test_a_bucket_admits_its_burst_then_its_rate_and_keeps_projects_apart() -> None:
    clock = Clock()
    limits = ProjectLimits(rate=10, burst=20, clock=clock)
    assert limits.take(1, 20) == 0.0
    assert limits.take(1, 5) == pytest.approx(0.5)  # 5 events at 10/s
    assert limits.take(2, 20) == 0.0  # another project: its own bucket
    clock.now += 0.5
    assert limits.take(1, 5) == 0.0
    assert limits.limited == {1: 5}


def test_a_request_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_a_debt() -> None:
    clock = Clock()
    limits = ProjectLimits(rate=10, burst=20, clock=clock)
    assert limits.take(1, 100) == 0.0  # never refused for ever for its size
    assert limits.take(1, 1) == pytest.approx(8.1)  # 80 in debt, then one event
    clock.now += 10
    assert limits.take(1, 100) == 0.0  # full again (capped at the burst)
    assert retry_after(0.01) == "1" and retry_after(8.1) == "9"


def test_buckets_are_bounded_refilled_ones_go_first() -> None:
    clock = Clock()
    limits = ProjectLimits(rate=1, burst=10, max_projects=100, clock=clock)
    for project in range(100):
        limits.take(project, 10)  # all empty
    clock.now += 10  # all refilled
    limits.take(1000, 1)
    assert len(limits) == 1  # the refilled ones were as good as absent
    for project in range(200):
        limits.take(project, 10)
    assert len(limits) <= 100


def test_a_refund_gives_back_what_a_refused_request_took() -> None:
    limits = ProjectLimits(rate=1, burst=10, clock=Clock())
    limits.take(1, 10)
    limits.refund(1, 10)
    assert limits.take(1, 10) == 0.0


# --- through a real server ------------------------------------------------------------


def metric(server, line_start: str) -> float | None:
    for line in request(server.url + "/metrics").body.decode().splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_project_over_its_rate_limit_gets_429_while_another_passes(
    start_server, database_url
) -> None:
    noisy_id, noisy = make_project(database_url, "noisy")
    _, quiet = make_project(database_url, "quiet")
    server = start_server(INGEST_PROJECT_EVENTS_PER_S="1", INGEST_PROJECT_BURST="20")
    first = server.post({"token": noisy, "events": [event()] * 15 + [{"event": "bad"}] * 5})
    assert (first.status, first.json()["accepted"]) == (202, 15)  # 20 sent: the burst
    over = server.post({"token": noisy, "events": [event()] * 5})
    assert (over.status, over.json()) == (429, {"error": "project rate limit exceeded"})
    assert over.headers["Retry-After"] == "5"  # 5 events at 1/s
    quiet_resp = server.post({"token": quiet, "events": [event()] * 20})
    assert quiet_resp.status == 202 and quiet_resp.json()["accepted"] == 20
    assert server.post({"token": noisy, "events": [event()]}).status == 429
    line = f'sluice_ratelimited_events_total{{project="{noisy_id}"}}'
    assert metric(server, line) == 6.0
    # The bucket refills at its rate: the noisy project gets through again.
    poll(lambda: server.post({"token": noisy, "events": [event()]}).status == 202, timeout=10)


def sluice(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([*SLUICE, *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_paused_project_gets_503_and_recovers_on_resume(start_server, database_url) -> None:
    paused_id, paused = make_project(database_url, "paused")
    _, other = make_project(database_url, "other")
    server = start_server(INGEST_TOKEN_CACHE_TTL="200ms")
    assert server.post({"token": paused, "events": [event()]}).status == 202

    out = sluice(database_url, "projects", "pause", str(paused_id), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"project_id": str(paused_id), "paused": True}
    listed = json.loads(sluice(database_url, "projects", "list", "--json").stdout)
    assert [p["paused_at"] is not None for p in listed if p["id"] == str(paused_id)] == [True]

    poll(lambda: server.post({"token": paused, "events": [event()]}).status == 503, timeout=10)
    resp = server.post({"token": paused, "events": [event()]})
    assert (resp.status, resp.json()) == (503, {"error": "project paused"})
    assert resp.headers["Retry-After"] == "60"
    # With the token in a header the answer comes before the body is read: not JSON.
    header = request(server.ingest_url, method="POST", raw=b"not json",
                     headers={"Authorization": f"Bearer {paused}"})  # fmt: skip
    assert (header.status, header.json()) == (503, {"error": "project paused"})
    assert server.post({"token": other, "events": [event()]}).status == 202  # unaffected

    assert sluice(database_url, "projects", "resume", str(paused_id)).returncode == 0
    poll(lambda: server.post({"token": paused, "events": [event()]}).status == 202, timeout=10)
    missing = sluice(database_url, "projects", "pause", str(uuid.uuid4()))
    assert missing.returncode == 1 and "no live project" in missing.stderr


def test_random_tokens_then_a_postgres_outage_the_real_token_works_until_the_stale_limit(
    start_server, own_pg: Postgres
) -> None:
    dsn = own_pg.dsn()
    _, token = make_project(dsn)
    server = start_server(DATABASE_URL=dsn, INGEST_TOKEN_CACHE_TTL="200ms",
                          INGEST_TOKEN_STALE_MAX="6s")  # fmt: skip
    assert server.post({"token": token, "events": [event()]}).status == 202
    for _ in range(300):  # each a Postgres query, each cached as unknown
        resp = server.post({"token": tokens.generate(), "events": [event()]})
        assert (resp.status, resp.json()) == (401, {"error": "unauthorized"})
    assert metric(server, "sluice_token_cache_unknown") == 300.0
    assert metric(server, "sluice_token_cache_known") == 1.0

    poll(lambda: server.post({"token": token, "events": [event()]}).status == 202)
    own_pg.stop()
    # Expired and Postgres down: the known entry is served stale, for a while.
    resp = server.post({"token": token, "events": [event("during")]})
    assert resp.status == 202, resp.body
    unknown = server.post({"token": tokens.generate(), "events": [event()]})
    assert (unknown.status, unknown.json()) == (500, {"error": "internal server error"})
    # Past INGEST_TOKEN_STALE_MAX since Postgres last confirmed it: refused, as a 500.
    poll(lambda: server.post({"token": token, "events": [event()]}).status == 500, timeout=30)
    assert metric(server, "sluice_token_stale_refused_total") >= 1.0
    own_pg.start()
    poll(lambda: server.post({"token": token, "events": [event()]}).status == 202, timeout=30)
