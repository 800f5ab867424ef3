"""Stage 4 — dead-letter: the Postgres ``failed_events`` table and its payload format.

Enters: a batch ClickHouse did not take (its id, its rows, the error).
Leaves: one ``failed_events`` row whose ``id`` is the batch id — also the ClickHouse
insert deduplication token, so replaying a batch that had in fact landed is a no-op.
On failure: the Postgres error propagates; the flusher then keeps the batch in memory
and sets the fatal flag.

The payload (``batch`` JSONB) is a stored contract: its format is defined in
:mod:`ingest.rows` (``sluice.events.v1``), with the columns and the row line.

This module also holds every query on ``failed_events`` (drain, depth, operator CLI), so
the table has one owner.
"""

from __future__ import annotations

import base64
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import orjson

from ingest.rows import COLUMNS, encode_payload, payload_rows

# An event the table could not hold as it was (see :meth:`DeadLetter.park_unstorable`).
UNSTORABLE = "sluice.unstorable.v1"


class DeadLetter:
    """All reads and writes of ``failed_events``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def park(
        self,
        batch_id: str,
        rows: list[tuple],
        error: str,
        *,
        retry_in: float = 0.0,
        conn: asyncpg.Connection | None = None,
    ) -> None:
        """Store a failed batch (idempotent on ``batch_id``)."""
        await (conn or self.pool).execute(
            """INSERT INTO failed_events (id, batch, event_count, last_error, attempt_count,
                                          last_attempt_at, next_attempt_at)
               VALUES ($1, $2, $3, $4, 1, now(), now() + $5)
               ON CONFLICT (id) DO NOTHING""",
            uuid.UUID(batch_id),
            encode_payload(rows),
            len(rows),
            error[:2000],
            timedelta(seconds=retry_in),
        )

    async def park_unstorable(self, row_id: str, line: bytes, reason: str) -> None:
        """Quarantine one event whose values the table cannot hold as they are: its row
        line is kept base64-encoded (format :data:`UNSTORABLE`), for an operator to see
        with ``sluice dlq show``. Idempotent on ``row_id``."""
        encoded = base64.b64encode(line).decode()
        payload = orjson.dumps({"format": UNSTORABLE, "reason": reason, "lines_base64": encoded})
        await self.pool.execute(
            """INSERT INTO failed_events (id, batch, event_count, last_error, attempt_count,
                                          last_attempt_at, quarantined_at)
               VALUES ($1, $2, 1, $3, 1, now(), now())
               ON CONFLICT (id) DO NOTHING""",
            uuid.UUID(row_id),
            payload,
            reason[:2000],
        )

    async def depth(self) -> tuple[int, int]:
        """Active (not quarantined) rows and the events they hold."""
        row = await self.pool.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(event_count), 0) AS events "
            "FROM failed_events WHERE quarantined_at IS NULL"
        )
        return int(row["n"]), int(row["events"])

    # --- drain --------------------------------------------------------------------

    @staticmethod
    async def claim_due(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
        """Lock up to ``limit`` due rows, oldest due first, skipping rows another
        instance holds. Call inside a transaction; the locks are the lease."""
        return await conn.fetch(
            """SELECT id, batch, event_count, attempt_count FROM failed_events
               WHERE quarantined_at IS NULL AND next_attempt_at <= now()
               ORDER BY next_attempt_at, created_at
               LIMIT $1 FOR UPDATE SKIP LOCKED""",
            limit,
        )

    @staticmethod
    async def delete(conn: asyncpg.Connection, row_id: uuid.UUID) -> None:
        await conn.execute("DELETE FROM failed_events WHERE id = $1", row_id)

    @staticmethod
    async def record_failure(
        conn: asyncpg.Connection, row_id: uuid.UUID, error: str, retry_in: float
    ) -> None:
        await conn.execute(
            """UPDATE failed_events SET attempt_count = attempt_count + 1, last_error = $2,
                      last_attempt_at = now(), next_attempt_at = now() + $3
               WHERE id = $1""",
            row_id,
            error[:2000],
            timedelta(seconds=retry_in),
        )

    @staticmethod
    async def replace_rows(
        conn: asyncpg.Connection, row_id: uuid.UUID, rows: list[tuple], error: str
    ) -> None:
        """Keep only ``rows`` in the row (the others have landed)."""
        await conn.execute(
            """UPDATE failed_events SET batch = $2, event_count = $3, last_error = $4
               WHERE id = $1""",
            row_id,
            encode_payload(rows),
            len(rows),
            error[:2000],
        )

    @staticmethod
    async def quarantine_as_is(conn: asyncpg.Connection, row_id: uuid.UUID, reason: str) -> None:
        """Set a row aside without touching its payload (it cannot be decoded)."""
        await conn.execute(
            """UPDATE failed_events SET last_error = $2, attempt_count = attempt_count + 1,
                      last_attempt_at = now(), quarantined_at = now()
               WHERE id = $1""",
            row_id,
            reason[:2000],
        )

    @staticmethod
    async def quarantine(
        conn: asyncpg.Connection, row_id: uuid.UUID, rows: list[tuple], reason: str
    ) -> None:
        """Keep only ``rows`` (events ClickHouse refuses on their own) and set them aside."""
        await conn.execute(
            """UPDATE failed_events SET batch = $2, event_count = $3, last_error = $4,
                      attempt_count = attempt_count + 1, last_attempt_at = now(),
                      quarantined_at = now()
               WHERE id = $1""",
            row_id,
            encode_payload(rows),
            len(rows),
            reason[:2000],
        )

    async def make_all_due(self) -> int:
        """Every active row becomes due now (boot, or ClickHouse came back)."""
        result = await self.pool.execute(
            "UPDATE failed_events SET next_attempt_at = now() "
            "WHERE quarantined_at IS NULL AND next_attempt_at > now()"
        )
        return int(result.split()[-1])

    # --- operator tools (the CLI changes Postgres state only) ---------------------

    async def stats(self) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            """SELECT count(*) FILTER (WHERE quarantined_at IS NULL) AS active_rows,
                      coalesce(sum(event_count) FILTER (WHERE quarantined_at IS NULL), 0)
                          AS active_events,
                      count(*) FILTER (WHERE quarantined_at IS NOT NULL) AS quarantined_rows,
                      coalesce(sum(event_count) FILTER (WHERE quarantined_at IS NOT NULL), 0)
                          AS quarantined_events,
                      extract(epoch FROM now() - min(created_at)) AS oldest_age_seconds
               FROM failed_events"""
        )
        last = await self.pool.fetchrow(
            "SELECT last_error, last_attempt_at FROM failed_events "
            "ORDER BY last_attempt_at DESC NULLS LAST LIMIT 1"
        )
        out = dict(row)
        out["active_events"] = int(out["active_events"])
        out["quarantined_events"] = int(out["quarantined_events"])
        age = out["oldest_age_seconds"]
        out["oldest_age_seconds"] = float(age) if age is not None else None
        out["last_error"] = last["last_error"] if last else None
        out["last_attempt_at"] = last["last_attempt_at"] if last else None
        return out

    async def list_rows(self, *, quarantined: bool, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            """SELECT id, event_count, attempt_count, last_error, created_at, last_attempt_at,
                      next_attempt_at, quarantined_at
               FROM failed_events WHERE (quarantined_at IS NOT NULL) = $1
               ORDER BY created_at LIMIT $2""",
            quarantined,
            limit,
        )
        return [dict(r) for r in rows]

    async def show(self, row_id: uuid.UUID) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            """SELECT id, batch, event_count, attempt_count, last_error, created_at,
                      last_attempt_at, next_attempt_at, quarantined_at
               FROM failed_events WHERE id = $1""",
            row_id,
        )
        if row is None:
            return None
        out = dict(row)
        doc = orjson.loads(out["batch"])
        if isinstance(doc, dict) and doc.get("format") == UNSTORABLE:
            lines = base64.b64decode(doc["lines_base64"])
            out["events"] = [{"row_line": lines.decode(errors="backslashreplace")}]
        else:
            out["events"] = [dict(zip(COLUMNS, r, strict=True)) for r in payload_rows(out["batch"])]
        del out["batch"]
        return out

    async def retry(self, row_id: uuid.UUID | None) -> int:
        """Make one active row (or all) due now; return how many rows changed."""
        if row_id is None:
            result = await self.pool.execute(
                "UPDATE failed_events SET next_attempt_at = now() WHERE quarantined_at IS NULL"
            )
        else:
            result = await self.pool.execute(
                "UPDATE failed_events SET next_attempt_at = now() "
                "WHERE id = $1 AND quarantined_at IS NULL",
                row_id,
            )
        return int(result.split()[-1])

    async def requeue(self, row_id: uuid.UUID | None) -> int:
        """Move quarantined rows (one, or all) back into the active queue, due now."""
        sql = (
            "UPDATE failed_events SET quarantined_at = NULL, next_attempt_at = now() "
            "WHERE quarantined_at IS NOT NULL"
        )
        if row_id is None:
            result = await self.pool.execute(sql)
        else:
            result = await self.pool.execute(sql + " AND id = $1", row_id)
        return int(result.split()[-1])

    async def purge_quarantined(self, older_than: float | None) -> tuple[int, int]:
        """Delete quarantined rows (optionally only those quarantined before
        ``older_than`` seconds ago); return (rows, events) deleted."""
        row = await self.pool.fetchrow(
            """WITH gone AS (
                   DELETE FROM failed_events WHERE quarantined_at IS NOT NULL
                   AND ($1::interval IS NULL OR quarantined_at < now() - $1::interval)
                   RETURNING event_count)
               SELECT count(*) AS n, coalesce(sum(event_count), 0) AS events FROM gone""",
            timedelta(seconds=older_than) if older_than is not None else None,
        )
        return int(row["n"]), int(row["events"])

    async def count_quarantined(self, older_than: float | None) -> tuple[int, int]:
        row = await self.pool.fetchrow(
            """SELECT count(*) AS n, coalesce(sum(event_count), 0) AS events
               FROM failed_events WHERE quarantined_at IS NOT NULL
               AND ($1::interval IS NULL OR quarantined_at < now() - $1::interval)""",
            timedelta(seconds=older_than) if older_than is not None else None,
        )
        return int(row["n"]), int(row["events"])
