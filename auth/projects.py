"""Projects and their tokens in Postgres (tables from ``migrations/postgres``).

Enters: an asyncpg pool and plain values. Leaves: dataclasses / dicts.
A paused project (``paused_at``, migration 0002) still resolves, flagged ``paused``.
On failure: asyncpg/OS errors propagate unchanged. :func:`lookup` returns ``None`` only
when the token is definitely not usable; an infrastructure failure raises, so callers
can answer 5xx instead of a misleading 401.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from auth import tokens


class NotFound(LookupError):
    """No such (live) project or token."""


@dataclass(frozen=True)
class Resolved:
    """What a usable token resolves to. A paused project's tokens still resolve: the
    caller answers 503 (come back later), not 401 (this token is no good)."""

    project_id: uuid.UUID
    token_id: uuid.UUID
    paused: bool = False


async def create_project(pool: asyncpg.Pool, name: str) -> tuple[uuid.UUID, str]:
    """Create a project and its first token; return ``(project_id, plaintext token)``."""
    name = name.strip()
    if not name:
        raise ValueError("project name must not be empty")
    project_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO projects (id, name) VALUES ($1, $2)", project_id, name)
        _, token = await _insert_token(conn, project_id)
    return project_id, token


async def list_projects(pool: asyncpg.Pool, *, include_deleted: bool = False) -> list[dict]:
    rows = await pool.fetch(
        """
        SELECT p.id, p.name, p.created_at, p.deleted_at,
               -- read through to_jsonb: a read-only listing also works on a database
               -- that migration 0002 (paused_at) has not reached yet
               (to_jsonb(p) ->> 'paused_at')::timestamptz AS paused_at,
               count(t.id) FILTER (WHERE t.revoked_at IS NULL) AS active_tokens
        FROM projects p LEFT JOIN api_tokens t ON t.project_id = p.id
        WHERE $1 OR p.deleted_at IS NULL
        GROUP BY p.id ORDER BY p.created_at
        """,
        include_deleted,
    )
    return [dict(r) for r in rows]


async def delete_project(pool: asyncpg.Pool, project_id: uuid.UUID) -> None:
    """Soft-delete: the row stays (events reference it); its tokens stop resolving."""
    result = await pool.execute(
        "UPDATE projects SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL", project_id
    )
    if result.endswith(" 0"):
        raise NotFound(f"no live project {project_id}")


async def set_paused(pool: asyncpg.Pool, project_id: uuid.UUID, paused: bool) -> None:
    """Pause a live project's ingest (its requests answer 503 until resumed), or resume
    it. Idempotent: pausing a paused project keeps the first ``paused_at``."""
    result = await pool.execute(
        "UPDATE projects SET paused_at = CASE WHEN $2 THEN coalesce(paused_at, now()) END "
        "WHERE id = $1 AND deleted_at IS NULL",
        project_id,
        paused,
    )
    if result.endswith(" 0"):
        raise NotFound(f"no live project {project_id}")


async def issue_token(pool: asyncpg.Pool, project_id: uuid.UUID) -> tuple[uuid.UUID, str]:
    """A new token for a live project; return ``(token_id, plaintext token)``."""
    async with pool.acquire() as conn, conn.transaction():
        live = await conn.fetchval(
            "SELECT 1 FROM projects WHERE id = $1 AND deleted_at IS NULL FOR SHARE", project_id
        )
        if not live:
            raise NotFound(f"no live project {project_id}")
        return await _insert_token(conn, project_id)


async def _insert_token(conn: asyncpg.Connection, project_id: uuid.UUID) -> tuple[uuid.UUID, str]:
    token = tokens.generate()
    token_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO api_tokens (id, project_id, token_hash, token_hint) VALUES ($1, $2, $3, $4)",
        token_id,
        project_id,
        tokens.hash_token(token),
        tokens.hint(token),
    )
    return token_id, token


async def list_tokens(pool: asyncpg.Pool, project_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """SELECT id, token_hint, created_at, revoked_at, last_used_at
           FROM api_tokens WHERE project_id = $1 ORDER BY created_at""",
        project_id,
    )
    out = []
    for r in rows:
        item = dict(r)
        item["token"] = tokens.display(item.pop("token_hint"))
        out.append(item)
    return out


async def revoke_token(pool: asyncpg.Pool, token_or_id: str) -> uuid.UUID:
    """Revoke by plaintext token or by token id; return the token id."""
    if token_or_id.startswith(tokens.PREFIX):
        row = await pool.fetchrow(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) "
            "WHERE token_hash = $1 RETURNING id",
            tokens.hash_token(token_or_id),
        )
    else:
        try:
            token_id = uuid.UUID(token_or_id)
        except ValueError:
            raise NotFound(f"{token_or_id!r} is neither a token nor a token id") from None
        row = await pool.fetchrow(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) "
            "WHERE id = $1 RETURNING id",
            token_id,
        )
    if row is None:
        raise NotFound("no such token")
    return row["id"]


async def lookup(pool: asyncpg.Pool, token: str) -> Resolved | None:
    """Resolve a plaintext token, or ``None`` when it is not usable. Raises on I/O failure."""
    if not tokens.looks_valid(token):
        return None
    row = await pool.fetchrow(
        """SELECT t.id, t.project_id, p.paused_at IS NOT NULL AS paused
           FROM api_tokens t JOIN projects p ON p.id = t.project_id
           WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND p.deleted_at IS NULL""",
        tokens.hash_token(token),
    )
    return Resolved(row["project_id"], row["id"], row["paused"]) if row else None


async def touch_last_used(pool: asyncpg.Pool, token_id: uuid.UUID, at: datetime) -> None:
    await pool.execute(
        "UPDATE api_tokens SET last_used_at = $2 WHERE id = $1 AND "
        "(last_used_at IS NULL OR last_used_at < $2)",
        token_id,
        at,
    )
