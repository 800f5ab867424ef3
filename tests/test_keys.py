"""Secret read keys against a real Postgres: format, only a hash stored, lookup, revoke,
a publishable token never resolves as a read key (nor a key as a token), the CLI, and a
Postgres failure that raises instead of answering "no project"."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from support import SLUICE, Postgres

from auth import keys, projects, tokens
from storage.migrations import postgres_up
from storage.postgres import create_pool


def with_pool(dsn: str, fn: Callable[[asyncpg.Pool], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        pool = await create_pool(dsn, retry_for=5)
        try:
            await postgres_up(pool)
            return await fn(pool)
        finally:
            await pool.close()

    return asyncio.run(run())


def sluice(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SLUICE, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def test_key_format_has_its_own_prefix_and_192_bits() -> None:
    key = keys.generate()
    assert key.startswith("sluice_sk_") and keys.looks_valid(key)
    assert len(key) - len("sluice_sk_") == 32  # 32 chars of a 64-letter alphabet
    assert len({keys.generate() for _ in range(1000)}) == 1000
    assert not keys.looks_valid(tokens.generate())
    assert not tokens.looks_valid(key)


def test_created_key_resolves_to_its_project_and_only_a_hash_is_stored(database_url) -> None:
    async def run(pool: asyncpg.Pool) -> None:
        project_id, token = await projects.create_project(pool, "shop")
        key_id, key = await keys.create_key(pool, project_id)
        resolved = await keys.lookup(pool, key)
        assert resolved == projects.Resolved(project_id, key_id)
        stored = await pool.fetchrow("SELECT key_hash, key_hint FROM read_keys")
        assert bytes(stored["key_hash"]) == tokens.hash_token(key)
        assert stored["key_hint"] == key[-4:]
        dump = str([dict(r) for r in await pool.fetch("SELECT * FROM read_keys")])
        assert key[len("sluice_sk_") :] not in dump
        # the two kinds never cross
        assert await keys.lookup(pool, token) is None
        assert await projects.lookup(pool, key) is None
        listed = await keys.list_keys(pool, project_id)
        assert [(k["id"], k["key"], k["revoked_at"]) for k in listed] == [
            (key_id, "sluice_sk_…" + key[-4:], None)
        ]

    with_pool(database_url, run)


def test_revoked_unknown_and_deleted_project_keys_resolve_to_nothing(database_url) -> None:
    async def run(pool: asyncpg.Pool) -> None:
        project_id, _ = await projects.create_project(pool, "shop")
        first_id, first = await keys.create_key(pool, project_id)
        second_id, second = await keys.create_key(pool, project_id)
        assert await keys.lookup(pool, keys.generate()) is None
        assert await keys.lookup(pool, "sluice_sk_short") is None
        assert await keys.revoke_key(pool, first) == first_id
        assert await keys.lookup(pool, first) is None
        assert (await keys.lookup(pool, second)).token_id == second_id
        assert await keys.revoke_key(pool, str(second_id)) == second_id  # by id
        assert await keys.lookup(pool, second) is None
        with pytest.raises(projects.NotFound):
            await keys.revoke_key(pool, str(uuid.uuid4()))
        with pytest.raises(projects.NotFound):
            await keys.revoke_key(pool, "nonsense")

        other_id, _ = await projects.create_project(pool, "blog")
        _, other = await keys.create_key(pool, other_id)
        await projects.delete_project(pool, other_id)
        assert await keys.lookup(pool, other) is None
        with pytest.raises(projects.NotFound):
            await keys.create_key(pool, other_id)
        with pytest.raises(projects.NotFound):
            await keys.create_key(pool, uuid.uuid4())

    with_pool(database_url, run)


def test_resolver_caches_keys_and_raises_when_postgres_fails(own_pg: Postgres) -> None:
    dsn = own_pg.dsn()

    async def run() -> None:
        pool = await create_pool(dsn, retry_for=5)
        try:
            await postgres_up(pool)
            project_id, token = await projects.create_project(pool, "shop")
            _, key = await keys.create_key(pool, project_id)
            cache = keys.KeyCache(pool, ttl=0.001)
            assert await cache.project(key) == project_id
            assert await cache.project(token) is None  # publishable: not even a query
            assert (cache.hits, cache.misses) == (0, 1)
            own_pg.stop()
            fresh = keys.generate()
            with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
                await cache.project(fresh)  # nothing cached: an error, never "no"
            await cache.close()
        finally:
            own_pg.start()
            await pool.close()

    asyncio.run(run())


def test_cli_creates_lists_and_revokes_keys(tmp_path: Path, database_url: str) -> None:
    env = {"DATABASE_URL": database_url, "DATA_DIR": str(tmp_path)}
    created = json.loads(sluice(env, "projects", "create", "shop", "--json").stdout)
    project_id = created["project_id"]

    proc = sluice(env, "keys", "create", project_id, "--json")
    assert proc.returncode == 0, proc.stderr
    made = json.loads(proc.stdout)
    assert set(made) == {"project_id", "key_id", "key"} and keys.looks_valid(made["key"])

    listed = json.loads(sluice(env, "keys", "list", project_id, "--json").stdout)
    assert [(k["id"], k["key"], k["revoked_at"]) for k in listed] == [
        (made["key_id"], "sluice_sk_…" + made["key"][-4:], None)
    ]
    proc = sluice(env, "keys", "revoke", made["key"], "--json")
    assert json.loads(proc.stdout) == {"key_id": made["key_id"], "revoked": True}
    listed = json.loads(sluice(env, "keys", "list", project_id, "--json").stdout)
    assert listed[0]["revoked_at"] is not None

    proc = sluice(env, "keys", "create", str(uuid.uuid4()))
    assert proc.returncode == 1 and proc.stderr.startswith("sluice: no live project")
    proc = sluice(env, "keys", "create", "not-a-uuid")
    assert (proc.returncode, proc.stderr) == (1, "sluice: project id 'not-a-uuid' is not a UUID\n")
