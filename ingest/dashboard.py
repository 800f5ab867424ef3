"""The browser dashboard: ``GET /`` → ``/dashboard/``, its static files, and the one
instance figure the read API lacks (``GET /api/v1/instance/deadletter``).

Enters: browser requests. Leaves: the files of ``ingest/dashboard_static/`` (shipped in
the wheel as package data, read into memory once when the routes are registered — a
file missing there fails ``sluice serve`` at boot, not a page at run time), each with
security headers; a file not listed is 404.

Where things are decided:

* **No build step, nothing from another origin.** The page is plain HTML, CSS and one
  script, served by Sluice; charts are drawn client-side as SVG by that script from the
  JSON read endpoints (no charting library: a bar-and-line chart is ~100 lines, a
  vendored library would be the larger thing to keep up to date). No fonts are shipped:
  the page uses the system's.
* **Security headers.** ``Content-Security-Policy`` with ``default-src 'self'`` and no
  inline script or style (the script sets sizes through the CSSOM, which CSP allows),
  ``frame-ancestors 'none'``, ``nosniff``, ``Referrer-Policy: no-referrer``. Files are
  sent with ``Cache-Control: no-cache`` and an ``ETag`` (a new Sluice version is seen at
  once; an unchanged file costs a 304).
* **The key.** The page asks for a secret read key and keeps it in ``sessionStorage``
  (this tab only, gone when it closes); it is sent as ``Authorization: Bearer``, never
  in a URL, so the request log line (method, path, status, project) cannot hold it.
  The read API itself stays without CORS: the page is same-origin.
* **The operator panel** reads ``/healthz`` and ``/metrics`` (rates are deltas between
  two scrapes). Dead-letter oldest age and quarantined rows are in neither (they need a
  Postgres query, which a probe must not cost), so the page asks
  ``/api/v1/instance/deadletter``: the counts of :meth:`DeadLetter.stats` — no error
  text, no payload — for any valid read key. They describe the instance, not a project,
  like ``/metrics``, which is unauthenticated; the key only keeps the Postgres query
  from being anyone's to trigger.

On failure: an unknown file is a JSON 404 (the app's middleware); the dead-letter figures
go through the read API's wrapper (401 without a valid key, 500 if Postgres fails).
"""

from __future__ import annotations

import hashlib
import mimetypes
import uuid
from importlib import resources
from typing import Any

from aiohttp import web

from ingest.read import Params, ReadSide, _json, _read_endpoint

DASHBOARD_PATH = "/dashboard/"
DEADLETTER_PATH = "/api/v1/instance/deadletter"
STATIC_PACKAGE = "ingest"
STATIC_DIR = "dashboard_static"

# No inline script or style, nothing from elsewhere; data: only for the SVG favicon.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
    "Cache-Control": "no-cache",
}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


class StaticFile:
    def __init__(self, name: str, body: bytes) -> None:
        self.body = body
        suffix = name[name.rfind(".") :]
        kind = _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
        self.content_type = f"{kind}; charset=utf-8" if kind.startswith("text/") else kind
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def load_files() -> dict[str, StaticFile]:
    """Every file of the static directory, by name (the directory is flat)."""
    root = resources.files(STATIC_PACKAGE) / STATIC_DIR
    files = {
        entry.name: StaticFile(entry.name, entry.read_bytes())
        for entry in root.iterdir()
        if entry.is_file() and not entry.name.startswith(".")
    }
    if "index.html" not in files:
        raise RuntimeError(f"the dashboard's files are missing from {root}: reinstall Sluice")
    return files


def _serve(file: StaticFile, request: web.Request) -> web.Response:
    headers = {**SECURITY_HEADERS, "ETag": file.etag}
    if request.headers.get("If-None-Match") == file.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=file.body, headers={**headers, "Content-Type": file.content_type})


async def deadletter(
    request: web.Request, side: ReadSide, project: uuid.UUID, params: Params
) -> web.Response:
    stats = await side.service.deadletter.stats()
    keep = ("active_rows", "active_events", "quarantined_rows", "quarantined_events")
    body: dict[str, Any] = {name: int(stats[name]) for name in keep}
    body["oldest_age_seconds"] = stats["oldest_age_seconds"]
    return _json(200, body)


def add_dashboard_routes(app: web.Application) -> None:
    """Register the dashboard (called once, from ``ingest.http.build_app``, after the
    read routes: the dead-letter figures use the read API's key check)."""
    files = load_files()
    index = files["index.html"]

    async def root(request: web.Request) -> web.Response:
        # Returned, not raised: the edge middleware turns a raised HTTPException into JSON.
        return web.Response(status=302, headers={"Location": DASHBOARD_PATH})

    async def page(request: web.Request) -> web.Response:
        return _serve(index, request)

    async def static(request: web.Request) -> web.Response:
        file = files.get(request.match_info["name"])
        if file is None:
            raise web.HTTPNotFound()
        return _serve(file, request)

    app.router.add_get("/", root)
    app.router.add_get("/dashboard", root)
    app.router.add_get(DASHBOARD_PATH, page)
    app.router.add_get(DASHBOARD_PATH + "{name}", static)
    app.router.add_get(DEADLETTER_PATH, _read_endpoint(set(), deadletter))
