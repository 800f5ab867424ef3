"""Numbered SQL migrations for both stores, applied in order and recorded in each store.

Files live in ``migrations/postgres/NNNN_name.sql`` and ``migrations/clickhouse/NNNN_name.sql``.

* Postgres: applied versions are rows of ``schema_migrations``. Each file runs in its own
  transaction, and the whole run holds an advisory lock, so two processes booting at
  once apply each file exactly once.
* ClickHouse: applied versions are rows of ``sluice_schema_migrations``. ClickHouse has no
  transactional DDL, so every statement must be idempotent (``IF NOT EXISTS``); a file that
  fails half-way is simply run again. A change no idempotent statement can express (a
  new sort key: copy, then swap tables) is a Python file ``NNNN_name.py`` defining
  ``async def up(ch)``, which looks at the store's state before each step, so running it
  again after a failure at any point is safe. Its docstring is what ``migrate dry-run``
  shows.

Enters: a pool or a :class:`~storage.clickhouse.ClickHouse`. Leaves: the versions applied.
On failure: the store's error propagates; nothing after the failing file is applied.
No migration files at all: :class:`MigrationsMissing` (a broken install), never "up to date".
"""

from __future__ import annotations

import ast
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from storage.clickhouse import ClickHouse

# `migrations/` sits beside `storage/`: in the checkout, and in site-packages once the
# wheel is installed (it ships as package data). Anchored to this file rather than found
# by import name, so a `migrations` folder in the working directory is never taken for it.
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sql|py)$")
_PG_LOCK_KEY = 0x5C1CE  # advisory lock id for "sluice migrations"


class MigrationsMissing(RuntimeError):
    """No migration files where they should be: the installation is incomplete."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def is_python(self) -> bool:
        return self.path.suffix == ".py"

    @property
    def sql(self) -> str:
        """The SQL text (for a Python migration: its docstring, as SQL comments)."""
        if self.is_python:
            doc = ast.get_docstring(ast.parse(self.path.read_text())) or ""
            return "\n".join(f"-- {line}".rstrip() for line in doc.splitlines())
        return self.path.read_text()

    async def run_python(self, ch: ClickHouse) -> None:
        spec = importlib.util.spec_from_file_location(
            f"sluice_migration_{self.path.parent.name}_{self.version:04d}", self.path
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        await module.up(ch)

    def statements(self) -> list[str]:
        """Split on ``;`` at line ends (ClickHouse takes one statement per call)."""
        body = "\n".join(
            line for line in self.sql.splitlines() if not line.strip().startswith("--")
        )
        return [s.strip() for s in re.split(r";\s*(?:\n|$)", body) if s.strip()]


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    applied: bool


def discover(store: str, root: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations of ``store`` ("postgres" or "clickhouse"), in version order.

    Raises :class:`MigrationsMissing` when there are none."""
    if not any((root / store).glob("[0-9][0-9][0-9][0-9]_*")):
        raise MigrationsMissing(
            f"no {store} migrations in {root / store}: this Sluice installation is "
            "incomplete (they ship in its wheel as package data); reinstall Sluice"
        )
    found = []
    for path in sorted(p for p in (root / store).iterdir() if p.suffix in (".sql", ".py")):
        match = _FILE.match(path.name)
        if not match or (store != "clickhouse" and path.suffix == ".py"):
            raise ValueError(f"migration file {path} is not named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions under {root / store}")
    return found


# --- Postgres -------------------------------------------------------------------------

_PG_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


async def _pg_applied(conn: asyncpg.Connection) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def postgres_status(pool: asyncpg.Pool) -> list[MigrationStatus]:
    async with pool.acquire() as conn:
        applied = await _pg_applied(conn)
    return [MigrationStatus(m.version, m.name, m.version in applied) for m in discover("postgres")]


async def postgres_up(pool: asyncpg.Pool) -> list[Migration]:
    """Apply pending Postgres migrations; return those applied (empty when up to date)."""
    done: list[Migration] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _PG_LOCK_KEY)
        try:
            await conn.execute(_PG_TABLE)
            applied = await _pg_applied(conn)
            for migration in discover("postgres"):
                if migration.version in applied:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
                done.append(migration)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _PG_LOCK_KEY)
    return done


# --- ClickHouse -----------------------------------------------------------------------

_CH_TABLE = """
CREATE TABLE IF NOT EXISTS sluice_schema_migrations
(
    version     UInt32,
    name        String,
    applied_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version"""


async def _ch_applied(ch: ClickHouse) -> set[int]:
    await ch.command(_CH_TABLE)
    return await _ch_recorded(ch)


async def _ch_recorded(ch: ClickHouse) -> set[int]:
    """Read-only: the versions recorded; none while the bookkeeping table does not exist."""
    (exists,) = await ch.query_rows(
        "SELECT count() FROM system.tables "
        "WHERE database = currentDatabase() AND name = 'sluice_schema_migrations'"
    )
    if not exists[0]:
        return set()
    rows = await ch.query_rows("SELECT DISTINCT version FROM sluice_schema_migrations")
    return {int(r[0]) for r in rows}


async def clickhouse_status(ch: ClickHouse) -> list[MigrationStatus]:
    """Read-only (as :func:`postgres_status`): nothing is created, not even the table."""
    applied = await _ch_recorded(ch)
    return [
        MigrationStatus(m.version, m.name, m.version in applied) for m in discover("clickhouse")
    ]


async def clickhouse_up(ch: ClickHouse) -> list[Migration]:
    """Apply pending ClickHouse migrations; return those applied."""
    applied = await _ch_applied(ch)
    done: list[Migration] = []
    for migration in discover("clickhouse"):
        if migration.version in applied:
            continue
        if migration.is_python:
            await migration.run_python(ch)
        else:
            for statement in migration.statements():
                await ch.command(statement)
        await ch.command(
            "INSERT INTO sluice_schema_migrations (version, name) VALUES "
            f"({migration.version}, '{migration.name}')"
        )
        done.append(migration)
    return done
