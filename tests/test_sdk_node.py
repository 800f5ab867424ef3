"""The real Node SDKs (@segment/analytics-node, posthog-node; pinned in
``clients/node/package-lock.json``, installed by ``make test``) against a real
``sluice serve``: ``clients/node/send.js`` sends track, identify, page and a batch with
each and flushes; every event is in ClickHouse once, with the README's mapping."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from typing import Any

import pytest
from support import ROOT, clickhouse_rows

NODE_DIR = ROOT / "clients" / "node"


def node_ready() -> None:
    if shutil.which("node") is None:
        pytest.fail("node is not installed (the Node SDK tests need node 18+)")
    if not (NODE_DIR / "node_modules" / "posthog-node").is_dir():
        pytest.fail("clients/node is not installed: `make test` runs npm ci --prefix clients/node")


def rows_by_name_and_user(server: Any) -> dict[tuple[str, str], dict[str, Any]]:
    rows = clickhouse_rows(
        server.data_dir / "clickhouse",
        "SELECT event, user_id, anonymous_id, session_id, toString(event_id), properties, "
        "extras, count() OVER (PARTITION BY event_id) FROM events_raw_v1",
    )
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for name, user, anon, session, event_id, props, extras, copies in rows:
        assert copies == 1, f"{name} stored {copies} times"
        assert (name, user) not in out, f"two events {name} for {user}"
        out[name, user] = {
            "anonymous_id": anon,
            "session_id": session,
            "event_id": event_id,
            "properties": json.loads(props),
            "extras": json.loads(extras),
        }
    return out


def test_node_sdks_send_to_sluice_unchanged(start_server, project) -> None:
    node_ready()
    project_id, token = project
    server = start_server()
    sent = subprocess.run(
        ["node", str(NODE_DIR / "send.js"), server.url, token],
        capture_output=True, text=True, timeout=60, cwd=NODE_DIR,
    )  # fmt: skip
    assert sent.returncode == 0, (sent.stdout, sent.stderr)
    assert server.stop() == 0, server.logs()
    logged = server.log_events("request")  # complete once the server stopped
    paths = [(e["path"], e["status"]) for e in logged]
    accepted = {p: [e["accepted"] for e in logged if e["path"] == p] for p, _ in paths}
    rows = rows_by_name_and_user(server)

    seg_batch = [f"seg batch {i}" for i in range(5)]
    ph_batch = [f"ph batch {i}" for i in range(5)]
    assert sorted(rows) == sorted(
        [(n, "seg-u1") for n in ["Order Completed", "$identify", "$pageview", *seg_batch]]
        + [(n, "ph-u1") for n in ["signed_up", "$identify", "$pageview", *ph_batch]]
    )
    # Every request went to the SDKs' batch paths and was answered 200.
    assert {p for p, _ in paths} == {"/v1/batch", "/batch/"}, paths
    assert {s for _, s in paths} == {200}, paths
    # 8 events each, in batches (the 5 batch events were sent together: one request).
    assert sum(accepted["/v1/batch"]) == sum(accepted["/batch/"]) == 8, accepted
    assert max(accepted["/v1/batch"]) >= 5 and max(accepted["/batch/"]) >= 5, accepted

    # @segment/analytics-node: page → $pageview, identify → $identify, ids uuid5'd.
    track = rows["Order Completed", "seg-u1"]
    assert track["anonymous_id"] == "seg-anon"
    assert track["properties"] == {"total": 9.5, "currency": "EUR"}
    message_id = track["extras"]["messageId"]
    assert message_id.startswith("node-next-"), message_id
    assert track["event_id"] == str(uuid.uuid5(project_id, message_id))
    assert track["extras"]["type"] == "track"
    assert track["extras"]["context"]["library"]["name"] == "@segment/analytics-node"
    identify = rows["$identify", "seg-u1"]
    assert identify["extras"]["traits"] == {"plan": "pro"}
    assert identify["extras"]["type"] == "identify"
    page = rows["$pageview", "seg-u1"]
    assert page["properties"]["path"] == "/docs"
    assert (page["extras"]["name"], page["extras"]["category"]) == ("Docs", "Guides")
    for name in seg_batch:
        row = rows[name, "seg-u1"]
        assert row["properties"] == {"i": int(name[-1])}
        assert row["event_id"] == str(uuid.uuid5(project_id, row["extras"]["messageId"]))

    # posthog-node: events as sent, distinct_id → user_id, a UUID kept as the event id.
    signed = rows["signed_up", "ph-u1"]
    assert signed["event_id"] == "0193a3f4-1c2d-7e5f-8a9b-0c1d2e3f4a5b"
    assert signed["session_id"] == "ph-sess-1"
    assert signed["properties"]["plan"] == "pro"
    assert signed["properties"]["$lib"] == "posthog-node"
    ph_identify = rows["$identify", "ph-u1"]
    assert ph_identify["anonymous_id"] == "ph-anon"
    assert ph_identify["properties"]["$set"] == {"email": "a@example.com"}
    ph_page = rows["$pageview", "ph-u1"]
    assert ph_page["properties"]["$current_url"] == "https://example.com/docs"
    for name in ph_batch:
        row = rows[name, "ph-u1"]
        assert row["properties"]["i"] == int(name[-1])
        uuid.UUID(row["event_id"])  # posthog-node mints a UUID per event

    # Enrichment: the Node SDKs are the customer's own servers — their requests' agents
    # are kept and are not bots (device unknown); the page values come from properties.
    agents = clickhouse_rows(
        server.data_dir / "clickhouse",
        "SELECT DISTINCT user_id, user_agent, browser, os, device_type, is_bot "
        "FROM events_raw_v1 ORDER BY user_id",
    )
    assert [(user, agent.split("/")[0], *rest) for user, agent, *rest in agents] == [
        ("ph-u1", "posthog-node", "", "", "", 0),
        ("seg-u1", "analytics-node-next", "", "", "", 0),
    ]
    pages = clickhouse_rows(
        server.data_dir / "clickhouse",
        "SELECT user_id, path FROM events_raw_v1 WHERE event = '$pageview' ORDER BY user_id",
    )
    assert pages == [("ph-u1", "/docs"), ("seg-u1", "/docs")]
