"""The process flags the hot path reads, and nothing else.

Written by the flusher, the drain and the lifecycle; read by the HTTP handlers,
``/healthz``, ``/readyz`` and ``/metrics``. Reading is a few attribute loads, so a
health probe never touches a store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class State:
    disabled: bool = False  # INGEST_DISABLED: the incident kill switch
    shutting_down: bool = False  # SIGTERM received: refuse new events, report not ready
    fatal: bool = False  # ClickHouse and the dead-letter table both failed
    fatal_reason: str | None = None
    dlq_rows: int = 0  # active (not quarantined) dead-letter rows
    dlq_events: int = 0  # events held in those rows
    clickhouse_ok_at: float = field(default=0.0)  # monotonic time of last success
    postgres_ok_at: float = field(default=0.0)

    def set_fatal(self, reason: str) -> None:
        self.fatal = True
        self.fatal_reason = reason

    def clear_fatal(self) -> None:
        self.fatal = False
        self.fatal_reason = None

    def clickhouse_ok(self) -> None:
        self.clickhouse_ok_at = time.monotonic()

    def postgres_ok(self) -> None:
        self.postgres_ok_at = time.monotonic()
