"""The hot-path token cache in front of :func:`auth.projects.lookup`.

Enters: a plaintext token from a request. Leaves: the project id (the UUID as an int,
the pipeline's row form) or ``None`` for "not usable" (→ 401).

* A resolved token is cached for ``ttl`` (``INGEST_TOKEN_CACHE_TTL``): revoking a token
  or deleting its project takes effect within that time.
* An unknown token is cached for ``negative_ttl`` (short): a flood of bad tokens costs
  one Postgres query per distinct token per few seconds, and malformed ones cost none.
* Concurrent misses for one token share one query.
* If Postgres fails while a *positive* entry is stale, the stale entry is served (ingest
  keeps working through a Postgres outage); with no entry at all the error propagates
  (→ 500, never 401: the token may be fine).
* ``last_used_at`` is stamped at most once per ``touch_interval`` per token, in the
  background; a failed stamp is logged and forgotten.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from auth import tokens
from auth.projects import Resolved

log = structlog.get_logger("sluice.auth")

NEGATIVE_TTL = 5.0  # seconds an unknown token is remembered as unknown
TOUCH_INTERVAL = 60.0  # last_used_at is written at most this often per token
MAX_ENTRIES = 100_000  # bound on distinct cached tokens (a flood of random tokens)


@dataclass
class _Entry:
    resolved: Resolved | None
    project_id: int | None
    fetched_at: float
    touched_at: float


class TokenResolver:
    """Cache + coalescing + stale-on-error around a lookup function."""

    def __init__(
        self,
        lookup: Callable[[str], Awaitable[Resolved | None]],
        touch: Callable[[Resolved], Awaitable[None]],
        *,
        ttl: float,
        negative_ttl: float = NEGATIVE_TTL,
        touch_interval: float = TOUCH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        looks_valid: Callable[[str], bool] = tokens.looks_valid,
    ) -> None:
        self._lookup = lookup
        # The cheap shape check: publishable tokens by default; auth.keys.KeyCache passes
        # the read-key shape and otherwise uses this class as it is.
        self._looks_valid = looks_valid
        self._touch = touch
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._touch_interval = touch_interval
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.hits = 0
        self.misses = 0
        self.stale_served = 0

    async def resolve(self, token: str) -> int | None:
        """Project id for ``token``, or ``None``. Raises when Postgres fails and no
        cached answer exists."""
        if not self._looks_valid(token):
            return None
        now = self._clock()
        entry = self._entries.get(token)
        if entry is not None:
            ttl = self._ttl if entry.resolved else self._negative_ttl
            if now - entry.fetched_at < ttl:
                self.hits += 1
                self._maybe_touch(entry, now)
                return entry.project_id
        self.misses += 1
        try:
            entry = await self._fetch(token, entry)
        except Exception as exc:
            if entry is not None and entry.resolved is not None:
                self.stale_served += 1
                log.warning("token_lookup_failed_serving_stale", error=str(exc)[:200])
                return entry.project_id
            raise
        self._maybe_touch(entry, self._clock())
        return entry.project_id

    async def _fetch(self, token: str, old: _Entry | None) -> _Entry:
        pending = self._inflight.get(token)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._inflight[token] = future
        try:
            resolved = await self._lookup(token)
            now = self._clock()
            touched = old.touched_at if old and old.resolved == resolved else -float("inf")
            entry = _Entry(resolved, resolved.project_id.int if resolved else None, now, touched)
            if len(self._entries) >= MAX_ENTRIES and token not in self._entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[token] = entry
            future.set_result(entry)
            return entry
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters get it, nobody else must
            raise
        finally:
            del self._inflight[token]

    def _maybe_touch(self, entry: _Entry, now: float) -> None:
        if entry.resolved is None or now - entry.touched_at < self._touch_interval:
            return
        entry.touched_at = now
        task = asyncio.get_running_loop().create_task(self._touch_quietly(entry.resolved))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _touch_quietly(self, resolved: Resolved) -> None:
        try:
            await self._touch(resolved)
        except Exception as exc:
            log.warning("token_last_used_update_failed", error=str(exc)[:200])

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)


def utcnow() -> datetime:
    return datetime.now(UTC)
