"""Projects and tokens against a real Postgres: issue, lookup, revoke, soft delete, and
an infrastructure failure that raises instead of answering "no project"."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from support import Postgres

from auth import projects, tokens
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


def test_token_format_has_the_prefix_and_enough_entropy() -> None:
    token = tokens.generate()
    assert token.startswith("sluice_pub_") and tokens.looks_valid(token)
    assert len(token) - len("sluice_pub_") == 32  # 32 chars of a 64-letter alphabet: 192 bits
    assert len({tokens.generate() for _ in range(1000)}) == 1000


def test_created_token_resolves_to_its_project_and_only_a_hash_is_stored(database_url) -> None:
    async def run(pool: asyncpg.Pool) -> None:
        project_id, token = await projects.create_project(pool, "shop")
        resolved = await projects.lookup(pool, token)
        assert resolved is not None and resolved.project_id == project_id
        stored = await pool.fetchrow("SELECT token_hash, token_hint FROM api_tokens")
        assert bytes(stored["token_hash"]) == tokens.hash_token(token)
        assert stored["token_hint"] == token[-4:]
        dump = str([dict(r) for r in await pool.fetch("SELECT * FROM api_tokens")])
        assert token not in dump and token[len("sluice_pub_") :] not in dump

    with_pool(database_url, run)


def test_unknown_wrong_prefix_revoked_and_deleted_resolve_to_nothing(database_url) -> None:
    async def run(pool: asyncpg.Pool) -> None:
        project_id, token = await projects.create_project(pool, "shop")
        second_id, second = await projects.issue_token(pool, project_id)
        assert await projects.lookup(pool, tokens.generate()) is None  # unknown
        assert await projects.lookup(pool, "sk_live_" + token[11:]) is None  # wrong prefix
        assert await projects.lookup(pool, "") is None

        assert await projects.revoke_token(pool, token) is not None
        assert await projects.lookup(pool, token) is None
        assert (await projects.lookup(pool, second)).token_id == second_id

        await projects.revoke_token(pool, str(second_id))  # by id
        assert await projects.lookup(pool, second) is None

        other_id, other = await projects.create_project(pool, "blog")
        assert await projects.lookup(pool, other) is not None
        await projects.delete_project(pool, other_id)
        assert await projects.lookup(pool, other) is None
        with pytest.raises(projects.NotFound):
            await projects.issue_token(pool, other_id)  # deleted project gets no tokens
        with pytest.raises(projects.NotFound):
            await projects.delete_project(pool, uuid.uuid4())
        listed = await projects.list_projects(pool)
        assert [p["name"] for p in listed] == ["shop"]
        assert len(await projects.list_projects(pool, include_deleted=True)) == 2

    with_pool(database_url, run)


def test_token_list_never_shows_the_whole_token(database_url) -> None:
    async def run(pool: asyncpg.Pool) -> None:
        project_id, token = await projects.create_project(pool, "shop")
        listed = await projects.list_tokens(pool, project_id)
        assert len(listed) == 1
        assert listed[0]["token"] == f"sluice_pub_…{token[-4:]}"
        assert token not in str(listed)

    with_pool(database_url, run)


def test_lookup_raises_when_postgres_is_down(tmp_path: Path) -> None:
    own = Postgres(tmp_path / "pg")
    try:
        dsn = own.dsn()

        async def run() -> None:
            pool = await create_pool(dsn, retry_for=5)
            try:
                await postgres_up(pool)
                _, token = await projects.create_project(pool, "shop")
                own.stop()
                with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
                    await projects.lookup(pool, token)
            finally:
                pool.terminate()

        asyncio.run(run())
    finally:
        own.close()
