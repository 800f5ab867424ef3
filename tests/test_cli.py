"""The ``sluice`` command line against a real Postgres."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from support import SLUICE

from auth import projects
from storage.postgres import create_pool


@pytest.fixture
def sluice(tmp_path: Path, database_url: str):
    env = {**os.environ, "DATABASE_URL": database_url, "DATA_DIR": str(tmp_path)}

    def run(*args: str, ok: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*SLUICE, *args], env=env, capture_output=True, text=True, timeout=120,
            input=stdin,
        )  # fmt: skip
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc

    run("migrate", "up")
    return run


def lookup(dsn: str, token: str):
    async def go():
        pool = await create_pool(dsn, retry_for=5)
        try:
            return await projects.lookup(pool, token)
        finally:
            await pool.close()

    return asyncio.run(go())


def test_projects_create_json_prints_only_json_whose_token_resolves(sluice, database_url) -> None:
    proc = sluice("projects", "create", "demo", "--json")
    data = json.loads(proc.stdout)  # nothing but JSON on stdout
    assert set(data) == {"project_id", "token"}
    resolved = lookup(database_url, data["token"])
    assert resolved is not None and str(resolved.project_id) == data["project_id"]


def test_projects_list_and_soft_delete(sluice, database_url) -> None:
    created = json.loads(sluice("projects", "create", "shop", "--json").stdout)
    listed = json.loads(sluice("projects", "list", "--json").stdout)
    assert [(p["id"], p["name"], p["active_tokens"]) for p in listed] == [
        (created["project_id"], "shop", 1)
    ]
    sluice("projects", "delete", created["project_id"])
    assert json.loads(sluice("projects", "list", "--json").stdout) == []
    assert lookup(database_url, created["token"]) is None
    missing = sluice("projects", "delete", str(uuid.uuid4()), ok=False)
    assert missing.returncode == 1 and "no live project" in missing.stderr


def test_tokens_issue_list_revoke(sluice, database_url) -> None:
    created = json.loads(sluice("projects", "create", "shop", "--json").stdout)
    issued = json.loads(sluice("tokens", "issue", created["project_id"], "--json").stdout)
    assert lookup(database_url, issued["token"]) is not None
    listed = sluice("tokens", "list", created["project_id"], "--json").stdout
    assert issued["token"] not in listed and created["token"] not in listed
    rows = json.loads(listed)
    assert sorted(r["token"] for r in rows) == sorted(
        f"sluice_pub_…{t[-4:]}" for t in (created["token"], issued["token"])
    )
    sluice("tokens", "revoke", issued["token"])
    assert lookup(database_url, issued["token"]) is None
    assert lookup(database_url, created["token"]) is not None
    by_id = json.loads(sluice("tokens", "list", created["project_id"], "--json").stdout)
    first = next(r for r in by_id if r["revoked_at"] is None)
    sluice("tokens", "revoke", first["id"])
    assert lookup(database_url, created["token"]) is None


def test_bad_ids_are_usage_errors_with_one_line(sluice) -> None:
    proc = sluice("tokens", "list", "not-a-uuid", ok=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "sluice: project id 'not-a-uuid' is not a UUID"
