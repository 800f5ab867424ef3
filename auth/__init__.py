"""Projects and publishable tokens. Nothing outside this package knows how a token looks.

* :mod:`auth.keys` — secret read keys (``sluice_sk_`` + 192 bits, sha256 stored, table
  ``read_keys``): create/list/revoke/lookup, and the same cache in front of them. A
  publishable token can never read; a read key can never ingest.
* :mod:`auth.tokens` — the token format: ``sluice_pub_`` + 32 url-safe characters
  (192 random bits), stored only as its sha256.
* :mod:`auth.projects` — create/list/soft-delete/pause projects; issue/list/revoke tokens;
  :func:`auth.projects.lookup` resolves a plaintext token to its project.
* :mod:`auth.resolver` — the hot-path cache in front of ``lookup`` (TTL; known and
  unknown tokens bounded apart; stale-on-error for at most ``INGEST_TOKEN_STALE_MAX``;
  the project's pause; throttled ``last_used_at``).

A token that is missing, malformed, unknown, revoked or belongs to a deleted project
resolves to "no project" (a 401 later); one of a paused project resolves, flagged paused
(a 503 later: its SDKs keep the events). A Postgres failure raises: that is a 5xx, never a
401, because the token may be perfectly good.
"""
