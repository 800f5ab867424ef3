"""The token cache in front of Postgres: hits, negative caching, last_used_at throttling."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from support import event, request

from auth import projects, tokens
from auth.resolver import TokenResolver, utcnow
from storage.migrations import postgres_up
from storage.postgres import create_pool


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pool(database_url: str):
    pool = await create_pool(database_url, retry_for=5)
    await postgres_up(pool)
    yield pool
    await pool.close()


def resolver_for(pool: asyncpg.Pool, clock: Clock) -> TokenResolver:
    return TokenResolver(
        lambda t: projects.lookup(pool, t),
        lambda r: projects.touch_last_used(pool, r.token_id, utcnow()),
        ttl=60,
        clock=clock,
    )


async def last_used(pool: asyncpg.Pool) -> object:
    return await pool.fetchval("SELECT last_used_at FROM api_tokens")


async def test_last_used_at_is_stamped_at_most_once_a_minute(pool) -> None:
    project_id, token = await projects.create_project(pool, "p")
    clock = Clock()
    resolver = resolver_for(pool, clock)
    assert await resolver.resolve(token) == project_id.int
    deadline = asyncio.get_running_loop().time() + 10
    while await last_used(pool) is None:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    first = await last_used(pool)
    clock.now += 30
    await resolver.resolve(token)
    await resolver.close()  # waits for any stamp in flight
    assert await last_used(pool) == first
    clock.now += 31  # a minute after the first stamp (and past the 60 s cache TTL)
    await resolver.resolve(token)
    await asyncio.gather(*resolver._background)
    assert await last_used(pool) > first
    assert (resolver.hits, resolver.misses) == (1, 2)


async def test_unknown_tokens_are_cached_briefly_and_malformed_ones_never_queried(pool) -> None:
    clock = Clock()
    resolver = resolver_for(pool, clock)
    unknown = tokens.generate()
    assert await resolver.resolve(unknown) is None
    assert await resolver.resolve(unknown) is None
    assert resolver.misses == 1  # the second answer came from the negative cache
    clock.now += 10  # past the negative TTL: asked again
    assert await resolver.resolve(unknown) is None
    assert resolver.misses == 2
    assert await resolver.resolve("not-a-token") is None
    assert resolver.misses == 2


async def test_concurrent_misses_for_one_token_share_one_query(pool) -> None:
    project_id, token = await projects.create_project(pool, "p")
    queries = 0

    async def lookup(t: str):
        nonlocal queries
        queries += 1
        return await projects.lookup(pool, t)

    resolver = TokenResolver(lookup, lambda r: asyncio.sleep(0), ttl=60, clock=Clock())
    results = await asyncio.gather(*(resolver.resolve(token) for _ in range(20)))
    assert results == [project_id.int] * 20
    assert queries == 1
    await resolver.close()


def test_server_counts_cache_hits_in_metrics(start_server, project) -> None:
    _, token = project
    server = start_server()
    for _ in range(3):
        assert server.post({"token": token, "events": [event()]}).status == 202
    text = request(server.url + "/metrics").body.decode()
    assert "sluice_token_cache_hits 2.0" in text and "sluice_token_cache_misses 1.0" in text
