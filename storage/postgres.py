"""Postgres: an asyncpg pool, and the embedded server used when ``DATABASE_URL`` is unset.

The embedded server is `pgserver` (Postgres binaries shipped in a pip package) with its
data under ``$DATA_DIR/postgres``, listening on a Unix socket only. pgserver keeps a list
of the processes using a data directory; the server is started by the first and stopped
when the last one exits, so ``sluice serve`` and a CLI command on the same data dir share
one server.

Enters: a DSN. Leaves: a pool whose ``jsonb`` values travel as raw JSON bytes (binary
codec: the dead-letter payload is encoded/decoded by orjson, never by the text codec).
On failure: :class:`PostgresUnavailable` after the boot retry window, naming the target
(never its password: see :mod:`storage.urls`).
"""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import asyncpg

from storage.urls import mask_url

BOOT_RETRY_SECONDS = 15.0  # how long `serve` waits for Postgres to answer before exiting
COMMAND_TIMEOUT = 15.0


class PostgresUnavailable(RuntimeError):
    """Postgres did not answer. The message says where and what to check (no password)."""

    def __init__(self, message: str) -> None:
        super().__init__(mask_url(message))


def describe(dsn: str) -> str:
    """The DSN without its password, for logs and errors."""
    parsed = urlparse(dsn)
    host = parsed.hostname or (parse_host_param(parsed.query) or "local socket")
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.username or ''}@{host}{port}{parsed.path}"


def parse_host_param(query: str) -> str | None:
    for part in query.split("&"):
        if part.startswith("host="):
            return part[5:]
    return None


class EmbeddedPostgres:
    """A pgserver-managed Postgres under ``path`` (started if not running)."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self._server: Any = None

    @property
    def exists(self) -> bool:
        """Whether the cluster was ever created (:meth:`start` would create it)."""
        return (self.path / "PG_VERSION").exists()

    def start(self) -> str:
        """Start (or join) the server; return its DSN. Blocking: call before the loop."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import pgserver
            from pgserver.postgres_server import PostgresServer
        self._prune_dead_handles(PostgresServer)
        try:
            self._server = pgserver.get_server(self.path, cleanup_mode="stop")
        except Exception as exc:
            log = self.path / "log"
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise PostgresUnavailable(
                f"embedded Postgres under {self.path} did not start ({exc}); log tail: {tail}"
            ) from exc
        return str(self._server.get_uri())

    def _prune_dead_handles(self, server_cls: Any) -> None:
        """Forget processes that died without saying goodbye (SIGKILL), so the last live
        user still stops the server when it exits."""
        handles = self.path / ".handle_pids.json"
        if not handles.exists():
            return
        import json

        with server_cls._lock:
            try:
                pids = json.loads(handles.read_text())
            except ValueError:
                pids = []
            alive = [pid for pid in pids if _pid_alive(pid)]
            if alive != pids:
                handles.write_text(json.dumps(alive))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb binary format is a version byte (1) followed by the JSON text.
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda data: b"\x01" + data,
        decoder=lambda data: data[1:],
        format="binary",
    )


async def create_pool(
    dsn: str, *, retry_for: float = BOOT_RETRY_SECONDS, max_size: int = 10
) -> asyncpg.Pool:
    """Open a pool, retrying for ``retry_for`` seconds while Postgres does not answer."""
    deadline = time.monotonic() + retry_for
    delay = 0.2
    while True:
        try:
            return await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=max_size,
                command_timeout=COMMAND_TIMEOUT,
                init=_init_connection,
                timeout=5,
            )
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            if time.monotonic() + delay > deadline:
                raise PostgresUnavailable(
                    f"Postgres at {describe(dsn)} did not answer within {retry_for:.0f}s "
                    f"({type(exc).__name__}: {exc}); check DATABASE_URL and that the server "
                    "is up"
                ) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def close_pool(pool: asyncpg.Pool | None, timeout: float = 5.0) -> None:
    """Close gracefully for up to ``timeout`` s (in-flight queries finish), then cut
    connections."""
    if pool is None:
        return
    try:
        await asyncio.wait_for(pool.close(), timeout=max(0.01, timeout))
    except Exception:
        pool.terminate()
