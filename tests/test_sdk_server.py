"""The real Python SDKs, configured only with Sluice's address and a Sluice token,
against a real ``sluice serve``: every event they report as sent is in ClickHouse once,
with the README's mapping; a refusal the SDK retries lands once."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from support import clickhouse_rows, request

AT = datetime(2026, 11, 22, 10, 0, 0, 123000, tzinfo=UTC)


def stored(server: Any) -> dict[str, dict[str, Any]]:
    """event name → its row, read once the server stopped."""
    rows = clickhouse_rows(
        server.data_dir / "clickhouse",
        "SELECT event, toString(event_id), user_id, anonymous_id, session_id, properties, "
        "extras, count() OVER (PARTITION BY event_id) FROM events_raw_v1",
    )
    out = {}
    for name, event_id, user, anon, session, props, extras, copies in rows:
        assert copies == 1, f"{name} stored {copies} times"
        assert name not in out, f"two events named {name}"
        out[name] = {"event_id": event_id, "user_id": user, "anonymous_id": anon,
                     "session_id": session, "properties": json.loads(props),
                     "extras": json.loads(extras)}  # fmt: skip
    return out


def test_segment_python_sdk_sends_to_sluice_unchanged(start_server, project) -> None:
    from segment.analytics.client import Client

    project_id, token = project
    server = start_server()
    errors: list[Any] = []
    client = Client(token, host=server.url, gzip=True, max_retries=1,
                    on_error=lambda e, batch: errors.append(e))  # fmt: skip
    client.track("u1", "Order Completed", {"total": 9.5}, timestamp=AT,
                 anonymous_id="anon-1", message_id="node-next-1-abc")  # fmt: skip
    client.identify("u1", {"plan": "pro"}, anonymous_id="anon-1", timestamp=AT)
    client.page("u1", "Docs", "Getting started", {"path": "/docs"}, timestamp=AT)
    client.group("u1", "org-9", {"name": "Acme"}, timestamp=AT)
    client.alias("anon-1", "u1", timestamp=AT)
    client.flush()
    client.join()
    assert errors == []
    assert server.stop() == 0, server.logs()
    rows = stored(server)
    assert sorted(rows) == sorted(
        ["Order Completed", "$identify", "$pageview", "$groupidentify", "$create_alias"]
    )
    track = rows["Order Completed"]
    assert (track["user_id"], track["anonymous_id"]) == ("u1", "anon-1")
    assert track["properties"] == {"total": 9.5}
    assert track["event_id"] == str(uuid.uuid5(project_id, "node-next-1-abc"))
    assert track["extras"]["context"]["library"]["name"] == "analytics-python"
    assert rows["$identify"]["extras"]["traits"] == {"plan": "pro"}
    assert rows["$pageview"]["properties"] == {"path": "/docs"}
    assert rows["$groupidentify"]["extras"]["groupId"] == "org-9"
    assert rows["$create_alias"]["extras"]["previousId"] == "anon-1"


def test_posthog_python_sdk_sends_to_sluice_unchanged(start_server, project) -> None:
    from posthog import Posthog

    _, token = project
    server = start_server()
    errors: list[Any] = []
    client = Posthog(token, host=server.url, gzip=True, max_retries=1, disable_geoip=True,
                     on_error=lambda e, batch: errors.append(e),
                     enable_exception_autocapture=False)  # fmt: skip
    event_uuid = str(uuid.uuid4())
    client.capture("signed_up", distinct_id="u1", timestamp=AT, uuid=event_uuid,
                   properties={"plan": "pro", "$session_id": "sess-1"})  # fmt: skip
    client.capture("$identify", distinct_id="u1", timestamp=AT,
                   properties={"$anon_distinct_id": "anon-1"})  # fmt: skip
    client.capture("$pageview", distinct_id="u1", timestamp=AT,
                   properties={"$current_url": "https://example.com/docs"})  # fmt: skip
    client.alias("anon-1", "u1", timestamp=AT)
    client.flush()
    client.shutdown()
    assert errors == []
    assert server.stop() == 0, server.logs()
    rows = stored(server)
    assert sorted(rows) == sorted(["signed_up", "$identify", "$pageview", "$create_alias"])
    signed = rows["signed_up"]
    assert signed["event_id"] == event_uuid
    assert (signed["user_id"], signed["session_id"]) == ("u1", "sess-1")
    assert signed["properties"]["plan"] == "pro"
    assert (rows["$identify"]["user_id"], rows["$identify"]["anonymous_id"]) == ("u1", "anon-1")
    assert rows["$pageview"]["properties"]["$current_url"] == "https://example.com/docs"


def test_a_segment_batch_refused_429_is_retried_by_the_sdk_and_lands_once(
    start_server, project
) -> None:
    """The project's rate limit refuses the second batch (429 with Retry-After); the
    stock SDK waits and sends it again; every event is stored exactly once."""
    from segment.analytics.client import Client

    _, token = project
    server = start_server(INGEST_PROJECT_EVENTS_PER_S="4", INGEST_PROJECT_BURST="4")
    errors: list[Any] = []
    client = Client(token, host=server.url, max_retries=5, upload_size=4,
                    on_error=lambda e, batch: errors.append(e))  # fmt: skip
    for i in range(8):  # two batches of 4: the second arrives before the bucket refilled
        client.track("u1", f"e{i}", timestamp=AT)
    client.flush()
    client.join()
    assert errors == []
    statuses = [e["status"] for e in server.log_events("request") if e["path"] == "/v1/batch"]
    assert 429 in statuses and statuses.count(200) == 2, statuses
    assert server.stop() == 0, server.logs()
    assert sorted(stored(server)) == [f"e{i}" for i in range(8)]


def test_sdk_config_endpoints_answer_what_the_sdks_read(start_server, project) -> None:
    _, token = project
    server = start_server()
    settings = request(f"{server.url}/v1/projects/{token}/settings")
    assert settings.status == 200
    segment_io = settings.json()["integrations"]["Segment.io"]
    assert segment_io["apiHost"] == f"127.0.0.1:{server.port}/v1"
    decide = request(f"{server.url}/decide/?v=3", method="POST", raw=b"{}")
    assert decide.status == 200 and decide.json()["featureFlags"] == {}
    asked = {
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,x-retry-count",
    }
    preflight = request(f"{server.url}/v1/batch", method="OPTIONS", headers=asked)
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert preflight.headers["Access-Control-Allow-Headers"] == "authorization,x-retry-count"


def test_a_batch_refused_503_buffer_full_is_retried_by_each_python_sdk_and_lands_once(
    start_server, project
) -> None:
    """A buffer of 6 events flushed every 1.5 s: the second batch of 4 finds it full
    (503, Retry-After: 1); each stock SDK sends it again until it fits; every event is
    stored exactly once."""
    from posthog import Posthog
    from segment.analytics.client import Client

    _, token = project
    server = start_server(INGEST_EVENT_BUFFER="6", INGEST_FLUSH_EVENTS="6",
                          INGEST_FLUSH_INTERVAL="1500ms")  # fmt: skip
    errors: list[Any] = []
    segment = Client(token, host=server.url, max_retries=8, upload_size=4,
                     on_error=lambda e, batch: errors.append(e))  # fmt: skip
    for i in range(8):
        segment.track("u1", f"s{i}", timestamp=AT)
    segment.flush()
    segment.join()
    posthog = Posthog(token, host=server.url, max_retries=8, flush_at=4, disable_geoip=True,
                      on_error=lambda e, batch: errors.append(e),
                      enable_exception_autocapture=False)  # fmt: skip
    for i in range(8):
        posthog.capture(f"p{i}", distinct_id="u1", timestamp=AT)
    posthog.flush()
    posthog.shutdown()
    assert errors == []
    statuses = [(e["path"], e["status"]) for e in server.log_events("request")]
    assert ("/v1/batch", 503) in statuses and ("/batch/", 503) in statuses, statuses
    assert server.stop() == 0, server.logs()
    assert sorted(stored(server)) == sorted(
        [f"s{i}" for i in range(8)] + [f"p{i}" for i in range(8)]
    )
