"""``GET /openapi.json`` against the real server: schemathesis generates requests for
every operation the document describes (and, for those with a body, requests that break
the document: wrong types, missing fields), sends them to a real ``sluice serve`` with a
valid token, and checks each answer — no 5xx, and every status, content type, header
and body as the document says."""

from __future__ import annotations

import time
from typing import Any

import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import request

from ingest.openapi import DOCUMENT
from ingest.sdk_routes import add_sdk_routes

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 12  # per operation and mode (45 fuzzed, 29 with a body): ~860 requests
NATIVE_EXAMPLES = 60  # POST /api/v1/ingest/events: the richest body
BUDGET_S = 45.0  # the whole run; it takes ~12 s on two shared cores


def test_every_sdk_route_is_documented() -> None:
    """A path added to the SDK routes without its description fails here (the native
    and health paths are checked on the live server below)."""
    app = web.Application()
    add_sdk_routes(app, accept=None, max_bytes=1)  # type: ignore[arg-type]
    routed = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method not in ("HEAD", "OPTIONS") and route.resource is not None
    }
    documented = {(m.upper(), p) for p, item in DOCUMENT["paths"].items() for m in item}
    assert routed - documented == set()
    # + the native POST, /healthz, /readyz, /metrics, /openapi.json: 46 operations
    assert len(routed) == 41


def test_openapi_document_is_served_and_lists_every_route(start_server, project) -> None:
    server = start_server()
    answer = request(f"{server.url}/openapi.json")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    document = answer.json()
    assert document["openapi"] == "3.1.0"
    paths = document["paths"]
    listed = ["/api/v1/ingest/events", "/v1/batch", "/v1/t", "/batch/", "/e/", "/i/v0/e/",
              "/flags/", "/decide/", "/array/{token}/config", "/sourceConfig/",
              "/v1/projects/{write_key}/settings", "/healthz", "/readyz", "/metrics"]  # fmt: skip
    assert [path for path in listed if path not in paths] == []
    native = paths["/api/v1/ingest/events"]["post"]
    assert sorted(native["responses"]) == sorted(
        ["200", "202", "400", "401", "403", "408", "413", "429", "500", "503"]
    )
    assert native["security"] == [{"bearer": []}, {}]
    assert paths["/v1/batch"]["post"]["security"][0] == {"basic": []}


def fuzz(operation: Any, mode: GenerationMode, examples: int, send: Any) -> None:
    """``examples`` generated requests for ``operation`` in ``mode``, each through ``send``
    (hypothesis shrinks a failing one to its smallest form before raising)."""

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), print_blob=False)  # fmt: skip
    @given(case=operation.as_strategy(mode))
    def run(case: Any) -> None:
        send(case, mode)

    run()


def test_schemathesis_finds_no_server_error_and_no_answer_off_the_document(
    start_server, project
) -> None:
    _, token = project
    server = start_server()
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    counts: dict[str, int] = {}
    deadline = time.monotonic() + BUDGET_S

    def send(case: Any, mode: GenerationMode) -> None:
        assert time.monotonic() < deadline, f"over the {BUDGET_S} s budget"
        run = f"{case.operation.label} {mode.value}"
        counts[run] = counts.get(run, 0) + 1
        if isinstance(case.body, dict):  # a generated body key would only get 400/401
            for field in ("token", "api_key"):
                if field in case.body:
                    case.body[field] = token
        case.call_and_validate(session=session, headers=headers, checks=CHECKS, timeout=10)

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 45  # 46 documented; schemathesis skips the document's own URL
    runs = [(op, GenerationMode.POSITIVE) for op in operations]
    runs += [(op, GenerationMode.NEGATIVE) for op in operations if op.body]
    assert len(runs) == 45 + 29
    for operation, mode in runs:
        examples = NATIVE_EXAMPLES if operation.path == "/api/v1/ingest/events" else EXAMPLES
        try:
            fuzz(operation, mode, examples, send)
        except Exception as exc:  # every operation's failure, not only the first
            failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert failures == [], "\n\n".join(failures)
    assert len(counts) == len(runs)
    assert server.stop() == 0, server.logs()
    statuses = [e["status"] for e in server.log_events("request")]  # all, once it stopped
    quiet = ("/healthz", "/readyz", "/metrics")  # not logged (probes)
    sent = sum(n for run, n in counts.items() if run.split()[1] not in quiet)
    assert len(statuses) == sent + 1  # and the schema's own GET /openapi.json
    assert [s for s in statuses if s >= 500] == []
    # Both the accepting and the refusing paths were reached.
    assert {200, 202, 400} <= set(statuses), sorted(set(statuses))
