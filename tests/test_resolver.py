"""The token cache in front of Postgres: hits, negative caching, last_used_at throttling,
bounds that a flood cannot abuse, stale entries through an outage (bounded), pauses."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from support import event, request

from auth import projects, tokens
from auth.resolver import Access, TokenResolver, utcnow
from storage.migrations import postgres_up
from storage.postgres import create_pool


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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
    assert await resolver.resolve(token) == Access(project_id.int, paused=False)
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
    assert results == [Access(project_id.int, paused=False)] * 20
    assert queries == 1
    await resolver.close()


def test_server_counts_cache_hits_in_metrics(start_server, project) -> None:
    _, token = project
    server = start_server()
    for _ in range(3):
        assert server.post({"token": token, "events": [event()]}).status == 202
    text = request(server.url + "/metrics").body.decode()
    assert "sluice_token_cache_hits 2.0" in text and "sluice_token_cache_misses 1.0" in text


async def test_a_flood_of_random_tokens_never_evicts_a_real_one(pool) -> None:
    """Known and unknown tokens are bounded apart: 50 random tokens through a cache that
    holds 10 unknown ones leave the real token cached (no query for it)."""
    project_id, token = await projects.create_project(pool, "p")
    clock = Clock()
    resolver = TokenResolver(
        lambda t: projects.lookup(pool, t),
        lambda r: asyncio.sleep(0),
        ttl=60,
        max_known=10,
        max_unknown=10,
        clock=clock,
    )
    assert await resolver.resolve(token) == Access(project_id.int, paused=False)
    for _ in range(50):
        assert await resolver.resolve(tokens.generate()) is None
    assert resolver.sizes == (1, 10)
    misses = resolver.misses
    assert await resolver.resolve(token) == Access(project_id.int, paused=False)
    assert resolver.misses == misses  # a hit: the flood did not push it out
    await resolver.close()


async def test_a_token_of_the_wrong_shape_is_refused_without_a_query(pool) -> None:
    _, token = await projects.create_project(pool, "p")
    resolver = resolver_for(pool, Clock())
    for bad in (token + "\n", token + " ", " " + token, token[:-1], token + "A", token.upper()):
        assert await resolver.resolve(bad) is None, bad
    assert (resolver.misses, resolver.sizes) == (0, (0, 0))
    assert not tokens.looks_valid(token + "\n")


async def test_pausing_a_project_shows_within_the_ttl(pool) -> None:
    project_id, token = await projects.create_project(pool, "p")
    clock = Clock()
    resolver = resolver_for(pool, clock)
    assert (await resolver.resolve(token)).paused is False
    await projects.set_paused(pool, project_id, True)
    assert (await resolver.resolve(token)).paused is False  # cached
    clock.now += 61
    assert await resolver.resolve(token) == Access(project_id.int, paused=True)
    await projects.set_paused(pool, project_id, False)
    clock.now += 61
    assert (await resolver.resolve(token)).paused is False
    with pytest.raises(projects.NotFound):
        await projects.set_paused(pool, uuid.uuid4(), True)
    await resolver.close()


async def test_a_known_token_outlives_a_postgres_outage_for_stale_max_only(own_pg) -> None:
    """Postgres really stopped: an expired entry is served while Postgres confirmed it
    less than stale_max ago; after that the lookup fails (a 500 upstream), and a token
    never seen fails at once."""
    pool = await create_pool(own_pg.dsn(), retry_for=5)
    await postgres_up(pool)
    project_id, token = await projects.create_project(pool, "p")
    _, unseen = await projects.create_project(pool, "q")
    clock = Clock()
    resolver = TokenResolver(
        lambda t: projects.lookup(pool, t),
        lambda r: asyncio.sleep(0),
        ttl=60,
        stale_max=600,
        clock=clock,
    )
    try:
        assert await resolver.resolve(token) == Access(project_id.int, paused=False)
        own_pg.stop()
        clock.now += 61  # expired: asks Postgres, which fails
        assert await resolver.resolve(token) == Access(project_id.int, paused=False)
        clock.now += 500  # 561 s since Postgres confirmed it
        assert await resolver.resolve(token) == Access(project_id.int, paused=False)
        assert resolver.stale_served == 2
        with pytest.raises(Exception):  # noqa: B017 - whatever asyncpg raises for a dead server
            await resolver.resolve(unseen)
        clock.now += 40  # 601 s: past stale_max
        with pytest.raises(Exception):  # noqa: B017
            await resolver.resolve(token)
        assert resolver.stale_refused == 1
        own_pg.start()
        assert await resolver.resolve(token) == Access(project_id.int, paused=False)
    finally:
        await resolver.close()
        await pool.close()
