"""The stores, behind small interfaces with real implementations only.

* :mod:`storage.clickhouse` — ClickHouse: embedded (chdb) or a server (HTTP), one
  interface, errors classified as transient or permanent.
* :mod:`storage.postgres` — an asyncpg pool; the embedded Postgres (pgserver) when
  ``DATABASE_URL`` is unset.
* :mod:`storage.migrations` — numbered SQL files under ``migrations/``, applied in order
  and recorded in each store.
* :mod:`storage.urls` — store URLs in messages with their passwords masked.

Depends on nothing else of Sluice's.
"""
