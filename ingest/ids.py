"""Time-ordered UUIDv7 ids (RFC 9562), minted in bulk.

Python 3.11 has no ``uuid.uuid7``. Event ids are minted per request: one 48-bit
millisecond timestamp, 12 random bits, and a random 62-bit base incremented per event,
so a request of N events costs one ``os.urandom`` call and the ids of one request sort
in event order.
"""

from __future__ import annotations

import os
import time

_MASK62 = (1 << 62) - 1
_VARIANT = 1 << 63


def _fmt(value: int) -> str:
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7_batch(n: int, now_ms: int | None = None) -> list[str]:
    """``n`` distinct UUIDv7 strings (canonical, lowercase)."""
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    rnd = int.from_bytes(os.urandom(10), "big")
    high = ((now_ms & 0xFFFF_FFFF_FFFF) << 16) | 0x7000 | (rnd >> 68 & 0xFFF)
    base = rnd & _MASK62
    high <<= 64
    return [_fmt(high | _VARIANT | ((base + i) & _MASK62)) for i in range(n)]


def uuid7() -> str:
    return uuid7_batch(1)[0]
