"""The browser SDKs in a real headless Chromium: posthog-js and @segment/analytics-next,
from their npm packages' dist bundles (pinned in ``clients/node/package-lock.json``),
served by a tiny static server here, load ``clients/node/browser/index.html`` in
Debian's ``/usr/bin/chromium`` driven by playwright-core (``clients/node/browser.js``)
and send track, identify and page to a real ``sluice serve`` on another origin (CORS);
every event is in ClickHouse once, with the README's mapping."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, clickhouse_rows, request

NODE_DIR = ROOT / "clients" / "node"
MODULES = NODE_DIR / "node_modules"
CHROMIUM = Path("/usr/bin/chromium")
FILES = {  # what the page loads from the static server
    "/index.html": NODE_DIR / "browser" / "index.html",
    "/static/array.js": MODULES / "posthog-js" / "dist" / "array.js",
}
BUNDLES = MODULES / "@segment" / "analytics-next" / "dist" / "umd"


def static_server(sluice_url: str) -> ThreadingHTTPServer:
    """The page, the SDK bundles, and analytics.js's settings (Sluice's own answer,
    fetched from Sluice: analytics-next reads its settings from where its bundles come
    from)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            file = FILES.get(path)
            if path.startswith("/analytics-next/bundles/"):
                name = path.rsplit("/", 1)[1]
                file = BUNDLES / name if (BUNDLES / name).is_file() else None
            if path.startswith("/v1/projects/") and path.endswith("/settings"):
                answer = request(sluice_url + path)
                body, kind = answer.body, "application/json"
            elif file is not None:
                body = file.read_bytes()
                kind = "text/html" if file.suffix == ".html" else "application/javascript"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def serve_static() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(sluice_url: str) -> str:
        server = static_server(sluice_url)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def browser_ready() -> None:
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: `make test` installs it (apt-get)")
    if not (MODULES / "playwright-core").is_dir() or not (MODULES / "posthog-js").is_dir():
        pytest.fail("clients/node is not installed: `make test` runs npm ci --prefix clients/node")


def test_browser_sdks_in_chromium_send_to_sluice(start_server, project, serve_static) -> None:
    browser_ready()
    project_id, token = project
    server = start_server()
    origin = serve_static(server.url)
    page = f"{origin}/index.html?" + urllib.parse.urlencode({"key": token, "api": server.url})
    ran = subprocess.run(
        ["node", str(NODE_DIR / "browser.js"), page, server.url, "6"],
        capture_output=True, text=True, timeout=90, cwd=NODE_DIR,
    )  # fmt: skip
    assert ran.returncode == 0, (ran.stdout, ran.stderr)
    report = json.loads(ran.stdout.strip().splitlines()[-1])
    assert sorted(report["answered"]) == sorted(
        ["200 /v1/p", "200 /v1/t", "200 /v1/i", "200 /e/", "200 /e/", "200 /e/"]
    ), report
    assert server.stop() == 0, server.logs()

    rows = clickhouse_rows(
        server.data_dir / "clickhouse",
        "SELECT event, user_id, anonymous_id, toString(event_id), properties, extras, "
        "count() OVER (PARTITION BY event_id) FROM events_raw_v1",
    )
    stored: dict[tuple[str, str], dict[str, Any]] = {}
    for name, user, anon, event_id, props, extras, copies in rows:
        assert copies == 1, f"{name} stored {copies} times"
        sdk = "segment" if "type" in json.loads(extras) else "posthog"
        assert (name, sdk) not in stored, f"two {name} from {sdk}"
        stored[name, sdk] = {
            "user_id": user,
            "anonymous_id": anon,
            "event_id": event_id,
            "properties": json.loads(props),
            "extras": json.loads(extras),
        }
    assert sorted(stored) == sorted(
        [("$pageview", "segment"), ("Clicked Buy", "segment"), ("$identify", "segment"),
         ("$pageview", "posthog"), ("Clicked Buy", "posthog"), ("$identify", "posthog")]
    )  # fmt: skip

    # analytics-next: page → $pageview; a UUID-less messageId ("ajs-next-…") uuid5'd.
    page_row = stored["$pageview", "segment"]
    assert page_row["properties"]["plan"] == "pro"
    assert (page_row["extras"]["category"], page_row["extras"]["name"]) == ("Docs", "Pricing")
    track = stored["Clicked Buy", "segment"]
    assert track["properties"] == {"price": 9.5}
    message_id = track["extras"]["messageId"]
    assert message_id.startswith("ajs-next-"), message_id
    assert track["event_id"] == str(uuid.uuid5(project_id, message_id))
    assert track["extras"]["context"]["library"]["name"] == "analytics.js"
    anonymous = track["anonymous_id"]
    assert anonymous
    identify = stored["$identify", "segment"]
    assert identify["user_id"] == "ajs-u7"
    assert identify["anonymous_id"] == anonymous  # the browser's one anonymous id
    assert identify["extras"]["traits"] == {"email": "b@example.com"}

    # posthog-js: events as sent; $identify links the anonymous id to the user.
    ph_track = stored["Clicked Buy", "posthog"]
    assert ph_track["properties"]["price"] == 9.5
    assert ph_track["properties"]["$lib"] == "web"
    uuid.UUID(ph_track["event_id"])
    ph_identify = stored["$identify", "posthog"]
    assert ph_identify["user_id"] == "ph-u7"
    assert ph_identify["anonymous_id"] == ph_track["anonymous_id"]
    assert ph_identify["extras"]["$set"] == {"email": "a@example.com"}  # top-level $set
    assert stored["$pageview", "posthog"]["properties"]["$current_url"].startswith(origin)

    # Enrichment: every event carries the browser's own agent (posthog-js's
    # $raw_user_agent, analytics-next's context.userAgent, and the request's header
    # agree) — headless Chromium, which is a bot — and the page it was on.
    enriched = clickhouse_rows(
        server.data_dir / "clickhouse",
        "SELECT event, position(user_agent, 'HeadlessChrome') > 0, browser, os, device_type, "
        "is_bot, path FROM events_raw_v1 ORDER BY event",
    )
    assert enriched == [
        (name, True, "HeadlessChrome", "Linux", "bot", 1, "/index.html")
        for name in ("$identify", "$identify", "$pageview", "$pageview", "Clicked Buy",
                     "Clicked Buy")
    ]  # fmt: skip
