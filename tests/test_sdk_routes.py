"""The SDK routes (:mod:`ingest.sdk_routes`) on a real aiohttp server, with the real
Python SDKs as clients.

``accept`` — the native pipeline's entry point, which ``ingest/http.py`` will provide —
is played here by its contract: the token resolves through a fixed table, the native
body goes through the real :func:`ingest.validate.decode_request` and
:func:`ingest.validate.validate`, and the answer is the native one (202/200 with
counts, 401, or a 503 with ``Retry-After`` when told to refuse). No store is involved:
the stage under test ends where the buffer begins.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession, web

from ingest.rows import COLUMNS, lines_to_rows
from ingest.sdk_routes import NativeBody, add_sdk_routes
from ingest.validate import decode_request, parse_timestamp, validate

KEY = "sluice_pub_routes"
PROJECT = uuid.UUID("7f1c0000-0000-4000-8000-0000000000aa")


class Pipeline:
    """The native entry point's contract, with the stored rows kept for inspection."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.refuse: tuple[int, str] | None = None  # (status, Retry-After)
        self.disabled = False

    def precheck(self, request: web.Request) -> web.Response | None:
        if self.disabled:
            return web.json_response({"error": "ingest disabled"}, status=503,
                                     headers={"Retry-After": "300"})  # fmt: skip
        return None

    async def accept(
        self, request: web.Request, token: str | None, native_body: NativeBody
    ) -> web.Response:
        if token != KEY:
            challenge = {"WWW-Authenticate": 'Bearer realm="sluice"'}
            return web.json_response({"error": "unauthorized"}, status=401, headers=challenge)
        if self.refuse:
            status, retry_after = self.refuse
            return web.json_response({"error": "ingest buffer full"}, status=status,
                                     headers={"Retry-After": retry_after})  # fmt: skip
        envelope = decode_request(native_body(PROJECT.int))
        now = time.time_ns() // 1_000_000
        sent_at = None if envelope.sent_at is None else parse_timestamp(envelope.sent_at)
        result = validate(envelope.events, PROJECT.int, now, sent_at)
        for row in lines_to_rows(result.data):
            self.rows.append(dict(zip(COLUMNS, row, strict=True)))
        body = {"accepted": result.count, "rejected": len(result.errors), "errors": result.errors}
        return web.json_response(body, status=202 if result.count else 200)


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Pipeline]]:
    pipeline = Pipeline()
    app = web.Application(client_max_size=1024 * 1024)
    add_sdk_routes(app, pipeline.accept, 1024 * 1024, pipeline.precheck)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", pipeline
    await runner.cleanup()


async def test_analytics_python_delivers_through_the_routes(
    served: tuple[str, Pipeline],
) -> None:
    from segment.analytics.client import Client

    url, pipeline = served
    errors: list[Any] = []

    def send() -> None:
        client = Client(KEY, host=url, gzip=True, on_error=lambda e, batch: errors.append(e),
                        max_retries=0)  # fmt: skip
        client.track("u1", "Order Completed", {"total": 3}, message_id="node-next-1-x")
        client.identify("u1", {"plan": "pro"})
        client.flush()
        client.join()

    await asyncio.to_thread(send)
    assert errors == []
    assert [r["event"] for r in pipeline.rows] == ["Order Completed", "$identify"]
    assert pipeline.rows[0]["event_id"] == uuid.uuid5(PROJECT, "node-next-1-x").int


async def test_posthog_python_delivers_through_the_routes(served: tuple[str, Pipeline]) -> None:
    from posthog import Posthog

    url, pipeline = served
    errors: list[Any] = []

    def send() -> None:
        client = Posthog(KEY, host=url, gzip=True, on_error=lambda e, batch: errors.append(e),
                         max_retries=0, enable_exception_autocapture=False)  # fmt: skip
        client.capture("signed_up", distinct_id="u1", properties={"$session_id": "s"})
        client.flush()
        client.shutdown()

    await asyncio.to_thread(send)
    assert errors == []
    assert [(r["event"], r["user_id"], r["session_id"]) for r in pipeline.rows] == [
        ("signed_up", "u1", "s")
    ]


async def test_a_wrong_key_reaches_the_sdk_as_a_401_it_does_not_retry(
    served: tuple[str, Pipeline],
) -> None:
    from segment.analytics.client import Client

    url, pipeline = served
    errors: list[Any] = []

    def send() -> None:
        client = Client("sluice_pub_wrong", host=url, on_error=lambda e, b: errors.append(e))
        client.track("u1", "x")
        client.flush()
        client.join()

    await asyncio.to_thread(send)
    assert [e.status for e in errors] == [401]
    assert pipeline.rows == []


@pytest.mark.parametrize("path", ["/e/", "/e", "/i/v0/e/"])
async def test_posthog_js_gzip_text_plain(served: tuple[str, Pipeline], path: str) -> None:
    url, pipeline = served
    body = gzip.compress(json.dumps({"api_key": KEY, "sent_at": "2026-11-22T10:00:00Z",
        "batch": [{"event": "$pageview", "properties": {"distinct_id": "d", "token": KEY},
                   "offset": 10}]}).encode())  # fmt: skip
    async with ClientSession() as http:
        async with http.post(url + path, data=body, headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 200
            assert await r.json() == {"status": 1, "accepted": 1, "rejected": 0, "errors": []}
    assert [(r["event"], r["user_id"]) for r in pipeline.rows] == [("$pageview", "d")]


async def test_refusals_keep_retry_after_and_become_what_the_sdk_retries(
    served: tuple[str, Pipeline],
) -> None:
    url, pipeline = served
    body = json.dumps({"api_key": KEY, "batch": [{"event": "e", "distinct_id": "d"}]})
    async with ClientSession() as http:
        pipeline.refuse = (503, "1")
        async with http.post(url + "/batch/", data=body) as r:
            assert (r.status, r.headers["Retry-After"]) == (503, "1")
            assert (await r.json())["detail"] == "ingest buffer full"
        pipeline.refuse = (429, "2")
        async with http.post(url + "/batch/", data=body) as r:
            assert (r.status, r.headers["Retry-After"]) == (503, "2")  # posthog-js drops 429
        pipeline.refuse, pipeline.disabled = None, True
        async with http.post(url + "/v1/batch", data=b"not even read") as r:
            assert (r.status, r.headers["Retry-After"]) == (503, "300")
            assert await r.json() == {"success": False, "code": "unavailable",
                                      "message": "ingest disabled"}  # fmt: skip
        pipeline.disabled = False
        async with http.post(url + "/batch/", data=b"{not json") as r:
            assert r.status == 400 and "JSON" in (await r.json())["detail"]
        async with http.post(url + "/v1/batch", data=b'{"batch": [{"type": "track"}]}') as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await r.json())["success"] is False


async def test_config_documents(served: tuple[str, Pipeline]) -> None:
    url, _ = served
    host = url.removeprefix("http://")
    async with ClientSession() as http:
        async with http.get(f"{url}/v1/projects/{KEY}/settings") as r:
            segmentio = (await r.json())["integrations"]["Segment.io"]
            assert (segmentio["protocol"], segmentio["apiHost"]) == ("http", f"{host}/v1")
        async with http.get(f"{url}/v1/projects/{KEY}/settings",
                            headers={"X-Forwarded-Proto": "https"}) as r:  # fmt: skip
            assert (await r.json())["integrations"]["Segment.io"]["protocol"] == "https"
        for method, path in (("GET", "/flags/?v=2"), ("POST", "/flags/?v=2"), ("GET", "/decide")):
            async with http.request(method, url + path, data=b"{}") as r:
                flags = await r.json()
                assert r.status == 200 and flags["featureFlags"] == {}
                assert flags["sessionRecording"] is False
        async with http.get(f"{url}/array/{KEY}/config") as r:
            assert (await r.json())["supportedCompression"] == ["gzip-js"]
        async with http.get(f"{url}/array/{KEY}/config.js") as r:
            script = await r.text()
            assert r.headers["Content-Type"].startswith("application/javascript")
            assert f'c["{KEY}"]={{"config":{{"supportedCompression":["gzip-js"]' in script
        async with http.get(f"{url}/sourceConfig/?writeKey={KEY}&v=3") as r:
            source = (await r.json())["source"]
            assert source["enabled"] is True and source["destinations"] == []
            assert source["writeKey"] == KEY
