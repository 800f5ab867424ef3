"""The hot-path token cache in front of :func:`auth.projects.lookup`.

Enters: a plaintext token from a request. Leaves: an :class:`Access` (the project id —
the UUID as an int, the pipeline's row form — and whether the project is paused) or
``None`` for "not usable" (→ 401).

* A token of the wrong shape is "not usable" at once: no query, no cache entry.
* A resolved token is cached for ``ttl`` (``INGEST_TOKEN_CACHE_TTL``): revoking a token,
  deleting its project, pausing or resuming it takes effect within that time.
* An unknown token is cached for ``negative_ttl`` (short): a flood of one bad token costs
  one Postgres query per few seconds.
* Known and unknown tokens are kept in two maps, each bounded on its own
  (:data:`MAX_KNOWN`, :data:`MAX_UNKNOWN`, oldest out first): a flood of random
  well-formed tokens can only push out other unknown ones, never a real token.
* Concurrent misses for one token share one query.
* If Postgres fails while a *known* entry is expired, the entry is served as long as
  Postgres confirmed it less than ``stale_max`` ago (``INGEST_TOKEN_STALE_MAX``, 1 h):
  ingest keeps working through a Postgres outage, but a token revoked before it is not
  honoured for ever. Past that, or with no known entry, the error propagates (→ 500,
  never 401: the token may be fine).
* ``last_used_at`` is stamped at most once per ``touch_interval`` per token, in the
  background; a failed stamp is logged and forgotten.

Conditions that repeat per request (serving stale entries through an outage) are logged
at most once per :data:`LOG_EVERY` seconds, with the count since the last line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

import structlog

from auth import tokens
from auth.projects import Resolved

log = structlog.get_logger("sluice.auth")

NEGATIVE_TTL = 5.0  # seconds an unknown token is remembered as unknown
TOUCH_INTERVAL = 60.0  # last_used_at is written at most this often per token
STALE_MAX = 3600.0  # INGEST_TOKEN_STALE_MAX: how long a known entry outlives Postgres
# Bounds, each map on its own: ~200 bytes an entry, so ~20 MB each at most.
MAX_KNOWN = 100_000  # real tokens in use at once on one instance
MAX_UNKNOWN = 100_000  # unknown tokens remembered (a flood only evicts its own kind)
LOG_EVERY = 10.0  # seconds between two lines about the same repeating condition


class Access(NamedTuple):
    """What a request's token grants: its project (as an int) and whether it is paused."""

    project_id: int
    paused: bool


@dataclass
class _Entry:
    resolved: Resolved
    access: Access
    fetched_at: float  # when Postgres last confirmed it (the clock's time)
    touched_at: float


class TokenResolver:
    """Cache + coalescing + bounded stale-on-error around a lookup function."""

    def __init__(
        self,
        lookup: Callable[[str], Awaitable[Resolved | None]],
        touch: Callable[[Resolved], Awaitable[None]],
        *,
        ttl: float,
        negative_ttl: float = NEGATIVE_TTL,
        stale_max: float = STALE_MAX,
        touch_interval: float = TOUCH_INTERVAL,
        max_known: int = MAX_KNOWN,
        max_unknown: int = MAX_UNKNOWN,
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
        self.stale_max = stale_max  # public: the composition root may set it after build
        self._touch_interval = touch_interval
        self._max_known = max_known
        self._max_unknown = max_unknown
        self._clock = clock
        self._known: dict[str, _Entry] = {}
        self._unknown: dict[str, float] = {}  # token → when Postgres said "no such token"
        self._inflight: dict[str, asyncio.Future[Resolved | None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.hits = 0
        self.misses = 0
        self.stale_served = 0
        self.stale_refused = 0  # known entries too old to serve through an outage
        self._stale_logged_at = -float("inf")
        self._stale_unlogged = 0

    @property
    def sizes(self) -> tuple[int, int]:
        """(known, unknown) entries cached."""
        return len(self._known), len(self._unknown)

    async def resolve(self, token: str) -> Access | None:
        """What ``token`` grants, or ``None``. Raises when Postgres fails and no cached
        answer may be given."""
        if not self._looks_valid(token):
            return None
        now = self._clock()
        entry = self._known.get(token)
        if entry is not None:
            if now - entry.fetched_at < self._ttl:
                self.hits += 1
                self._maybe_touch(entry, now)
                return entry.access
        else:
            seen = self._unknown.get(token)
            if seen is not None and now - seen < self._negative_ttl:
                self.hits += 1
                return None
        self.misses += 1
        try:
            resolved = await self._fetch(token)
        except Exception as exc:
            if entry is None:
                raise
            if self._clock() - entry.fetched_at >= self.stale_max:
                self.stale_refused += 1
                raise
            self.stale_served += 1
            self._log_stale(exc)
            return entry.access
        if resolved is None:
            return None
        entry = self._known.get(token)
        if entry is None:  # pragma: no cover - only with a cache bound of zero
            return Access(resolved.project_id.int, resolved.paused)
        self._maybe_touch(entry, self._clock())
        return entry.access

    async def _fetch(self, token: str) -> Resolved | None:
        pending = self._inflight.get(token)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Resolved | None] = asyncio.get_running_loop().create_future()
        self._inflight[token] = future
        try:
            resolved = await self._lookup(token)
            self._store(token, resolved)
            future.set_result(resolved)
            return resolved
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters get it, nobody else must
            raise
        finally:
            del self._inflight[token]

    def _store(self, token: str, resolved: Resolved | None) -> None:
        """Cache a lookup's answer in its own map, evicting that map's oldest entry."""
        now = self._clock()
        old = self._known.pop(token, None)
        self._unknown.pop(token, None)
        if resolved is None:
            self._unknown[token] = now
            if len(self._unknown) > self._max_unknown:
                del self._unknown[next(iter(self._unknown))]
            return
        touched = -float("inf")
        if old is not None and old.resolved.token_id == resolved.token_id:
            touched = old.touched_at
        access = Access(resolved.project_id.int, resolved.paused)
        self._known[token] = _Entry(resolved, access, now, touched)  # re-inserted: newest
        if len(self._known) > self._max_known:
            del self._known[next(iter(self._known))]

    def _log_stale(self, exc: Exception) -> None:
        now = self._clock()
        self._stale_unlogged += 1
        if now - self._stale_logged_at < LOG_EVERY:
            return
        log.warning(
            "token_lookup_failed_serving_stale",
            error=str(exc)[:200],
            times=self._stale_unlogged,
            stale_max_s=self.stale_max,
        )
        self._stale_logged_at, self._stale_unlogged = now, 0

    def _maybe_touch(self, entry: _Entry, now: float) -> None:
        if now - entry.touched_at < self._touch_interval:
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
