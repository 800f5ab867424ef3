"""Time-ordered UUIDv7 ids (RFC 9562), minted in bulk, kept as 128-bit ints.

Python 3.11 has no ``uuid.uuid7``. Event ids are minted per request: one 48-bit
millisecond timestamp and 12 random bits shared by the request, and a random 62-bit base
incremented per event — one ``os.urandom`` call per request, and the ids of one request
sort in event order. Ids stay ints on the hot path (the ClickHouse client encodes ints
fastest); :func:`uuid_str` formats one where text is needed.
"""

from __future__ import annotations

import os
import time
import uuid

MASK62 = (1 << 62) - 1
_VARIANT = 1 << 63


def uuid7_parts(now_ms: int | None = None) -> tuple[int, int]:
    """``(high, base)``: event ``i`` of a request gets ``high | ((base + i) & MASK62)``."""
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    rnd = int.from_bytes(os.urandom(10), "big")
    high = ((now_ms & 0xFFFF_FFFF_FFFF) << 16) | 0x7000 | (rnd >> 68 & 0xFFF)
    return (high << 64) | _VARIANT, rnd & MASK62


def uuid7_int() -> int:
    high, base = uuid7_parts()
    return high | base


def uuid7() -> str:
    return uuid_str(uuid7_int())


def uuid_str(value: int) -> str:
    """Canonical text of a UUID held as an int."""
    return str(uuid.UUID(int=value))
