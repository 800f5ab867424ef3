"""Secret read keys: ``sluice_sk_…``, one project each, for the read API only.

Enters: an asyncpg pool and plain values. Leaves: ids, plaintext keys (once, at
creation), dicts for listing, :class:`auth.projects.Resolved` for a usable key.
On failure: asyncpg/OS errors propagate unchanged; :func:`lookup` returns ``None`` only
when the key is definitely not usable (malformed, unknown, revoked, project deleted), so
a Postgres failure becomes a 500, never a 401.

A key is ``sluice_sk_`` + ``secrets.token_urlsafe(24)``: 32 characters of a 64-letter
alphabet, 192 bits. Only its sha256 is stored (``read_keys.key_hash``, migration 0003),
with its last four characters as a hint. Unlike a publishable token (:mod:`auth.tokens`,
safe in a web page, append-only) a read key reads everything its project holds: it
belongs on a server or an operator's machine. The two live in different tables and have
different prefixes, so neither can ever resolve as the other.

The hot-path cache (:class:`KeyCache`) is :class:`auth.resolver.TokenResolver` itself,
built with ``looks_valid=keys.looks_valid``: same TTL
(``INGEST_TOKEN_CACHE_TTL``: a revoked key stops working within it), negative cache,
coalescing and stale-on-error.
"""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import datetime
from typing import Any

import asyncpg

from auth.projects import NotFound, Resolved
from auth.resolver import TokenResolver, utcnow
from auth.tokens import HINT_CHARS, hash_token

PREFIX = "sluice_sk_"
_RANDOM_BYTES = 24  # 192 bits (at least 128 asked for)
_SHAPE = re.compile(r"^sluice_sk_[A-Za-z0-9_-]{32}$")


def generate() -> str:
    """A fresh key (plaintext): show it once, store :func:`auth.tokens.hash_token` of it."""
    return PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)


def looks_valid(key: str) -> bool:
    """True when ``key`` has the read-key shape (cheap, no I/O)."""
    return bool(_SHAPE.match(key))


def display(key_hint: str) -> str:
    return f"{PREFIX}…{key_hint}"


async def create_key(pool: asyncpg.Pool, project_id: uuid.UUID) -> tuple[uuid.UUID, str]:
    """A new read key for a live project; return ``(key_id, plaintext key)``.
    Raises :class:`auth.projects.NotFound` for a missing or deleted project."""
    key = generate()
    key_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        live = await conn.fetchval(
            "SELECT 1 FROM projects WHERE id = $1 AND deleted_at IS NULL FOR SHARE", project_id
        )
        if not live:
            raise NotFound(f"no live project {project_id}")
        await conn.execute(
            "INSERT INTO read_keys (id, project_id, key_hash, key_hint) VALUES ($1, $2, $3, $4)",
            key_id,
            project_id,
            hash_token(key),
            key[-HINT_CHARS:],
        )
    return key_id, key


async def list_keys(pool: asyncpg.Pool, project_id: uuid.UUID) -> list[dict[str, Any]]:
    """A project's keys, masked (``sluice_sk_…abcd``), oldest first."""
    rows = await pool.fetch(
        """SELECT id, key_hint, created_at, revoked_at, last_used_at
           FROM read_keys WHERE project_id = $1 ORDER BY created_at""",
        project_id,
    )
    out = []
    for r in rows:
        item = dict(r)
        item["key"] = display(item.pop("key_hint"))
        out.append(item)
    return out


async def revoke_key(pool: asyncpg.Pool, key_or_id: str) -> uuid.UUID:
    """Revoke by plaintext key or by key id; return the key id (revoking twice is fine)."""
    if key_or_id.startswith(PREFIX):
        row = await pool.fetchrow(
            "UPDATE read_keys SET revoked_at = coalesce(revoked_at, now()) "
            "WHERE key_hash = $1 RETURNING id",
            hash_token(key_or_id),
        )
    else:
        try:
            key_id = uuid.UUID(key_or_id)
        except ValueError:
            raise NotFound(f"{key_or_id!r} is neither a read key nor a key id") from None
        row = await pool.fetchrow(
            "UPDATE read_keys SET revoked_at = coalesce(revoked_at, now()) "
            "WHERE id = $1 RETURNING id",
            key_id,
        )
    if row is None:
        raise NotFound("no such read key")
    return row["id"]


async def lookup(pool: asyncpg.Pool, key: str) -> Resolved | None:
    """Resolve a plaintext key, or ``None`` when it is not usable. Raises on I/O failure."""
    if not looks_valid(key):
        return None
    row = await pool.fetchrow(
        """SELECT k.id, k.project_id FROM read_keys k JOIN projects p ON p.id = k.project_id
           WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND p.deleted_at IS NULL""",
        hash_token(key),
    )
    return Resolved(row["project_id"], row["id"]) if row else None


async def touch_last_used(pool: asyncpg.Pool, key_id: uuid.UUID, at: datetime) -> None:
    await pool.execute(
        "UPDATE read_keys SET last_used_at = $2 WHERE id = $1 AND "
        "(last_used_at IS NULL OR last_used_at < $2)",
        key_id,
        at,
    )


class KeyCache:
    """The read key → project cache: :class:`auth.resolver.TokenResolver` (TTL, negative
    cache, coalescing, stale-on-error) with the read-key shape check. Callers see only
    :meth:`project`, so the resolver's own return type stays this package's business."""

    def __init__(self, pool: asyncpg.Pool, ttl: float) -> None:
        self.resolver = TokenResolver(
            lambda key: lookup(pool, key),
            lambda resolved: touch_last_used(pool, resolved.token_id, utcnow()),
            ttl=ttl,
            looks_valid=looks_valid,
        )

    async def project(self, key: str) -> uuid.UUID | None:
        """The key's project, or ``None`` when the key is not usable. Raises when
        Postgres fails and nothing is cached (→ 500, never 401)."""
        access = await self.resolver.resolve(key)  # a paused project's keys still read
        return None if access is None else uuid.UUID(int=access.project_id)

    @property
    def hits(self) -> int:
        return self.resolver.hits

    @property
    def misses(self) -> int:
        return self.resolver.misses

    async def close(self) -> None:
        await self.resolver.close()
