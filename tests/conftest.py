"""Fixtures: one real Postgres cluster per session (a fresh database per test), real
server processes, real embedded ClickHouse directories."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from support import Postgres, Server

from auth import projects
from storage.clickhouse import ClickHouse, open_clickhouse
from storage.migrations import clickhouse_up, postgres_up
from storage.postgres import create_pool


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    instance = Postgres(tmp_path_factory.mktemp("pg") / "data")
    yield instance
    instance.close()


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[Postgres]:
    """A Postgres of this test's own, which it may stop and start."""
    instance = Postgres(tmp_path / "pg")
    yield instance
    instance.close()


@pytest.fixture
def database_url(pg: Postgres) -> str:
    return pg.dsn(pg.create_database())


def make_project(dsn: str, name: str = "test") -> tuple[uuid.UUID, str]:
    """Migrate ``dsn`` and create a project; return (project_id, token)."""

    async def run() -> tuple[uuid.UUID, str]:
        pool = await create_pool(dsn, retry_for=5)
        try:
            await postgres_up(pool)
            return await projects.create_project(pool, name)
        finally:
            await pool.close()

    return asyncio.run(run())


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A migrated pool on this test's database."""
    pool = await create_pool(database_url, retry_for=5)
    await postgres_up(pool)
    yield pool
    await pool.close()


@pytest.fixture
async def ch(tmp_path: Path) -> AsyncIterator[ClickHouse]:
    """A migrated embedded ClickHouse of this test's own."""
    store = await open_clickhouse(f"chdb://{tmp_path / 'ch'}")
    await clickhouse_up(store)
    yield store
    await store.close()


@pytest.fixture
def project(database_url: str) -> tuple[uuid.UUID, str]:
    return make_project(database_url)


@pytest.fixture
def start_server(tmp_path: Path, database_url: str) -> Iterator[Callable[..., Server]]:
    """``start_server(**env)`` → a ready ``sluice serve`` on this test's database.

    Flushes every 100 ms unless the test says otherwise, so tests don't wait."""
    started: list[Server] = []

    def start(
        wait: bool = True,
        data_dir: Path | None = None,
        file_size_limit: int | None = None,
        **env: str,
    ) -> Server:
        full = {"DATABASE_URL": database_url, "INGEST_FLUSH_INTERVAL": "100ms", **env}
        server = Server(data_dir or tmp_path / "data", full, file_size_limit)
        started.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """Accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()
