"""Time-ordered UUIDv7 ids (RFC 9562), minted in bulk, kept as 128-bit ints or hex text.

Python 3.11 has no ``uuid.uuid7``. Event ids are minted per request
(:func:`mint_prefix`): the 48-bit millisecond timestamp, 12 random bits and 46 random
bits of the low half are shared by the request, and the last 16 bits count its events
(event ``i`` gets ``prefix + MINT_SUFFIX[i]``), so the ids of one request sort in event
order and writing one is a concatenation. 58 random bits per request and millisecond keep
collisions out of reach. Randomness comes from ``os.urandom``, read 4 KiB at a time (one
system call per ~400 requests; a forked child starts a fresh pool).
:func:`uuid_str` formats an id held as an int.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from functools import lru_cache

MINT_MAX = 1 << 14  # ids one prefix can mint (a request holds at most 10,000 events)
MINT_SUFFIX: tuple[str, ...] = tuple(format(i, "04x") for i in range(MINT_MAX))
_VARIANT = 1 << 63
_POOL_BYTES = 4096
_pool = bytearray()
_pool_lock = threading.Lock()


def _random_int(nbytes: int) -> int:
    with _pool_lock:
        if len(_pool) < nbytes:
            _pool[:] = os.urandom(_POOL_BYTES)
        value = int.from_bytes(_pool[-nbytes:], "big")
        del _pool[-nbytes:]
    return value


os.register_at_fork(after_in_child=_pool.clear)


def _high(now_ms: int | None, rnd12: int) -> int:
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    return ((now_ms & 0xFFFF_FFFF_FFFF) << 16) | 0x7000 | (rnd12 & 0xFFF)


def mint_prefix(now_ms: int | None = None) -> str:
    """The first 28 hex digits of the ids minted for one request at ``now_ms``."""
    rnd = _random_int(8)
    low_top = (_VARIANT >> 16) | (rnd & ((1 << 46) - 1))  # variant bits + 46 random
    return f"{_high(now_ms, rnd >> 52):016x}{low_top:012x}"


def uuid7_int() -> int:
    rnd = _random_int(10)
    return (_high(None, rnd >> 68) << 64) | _VARIANT | (rnd & ((1 << 62) - 1))


@lru_cache(maxsize=4096)  # project ids, logged per request
def uuid_str(value: int) -> str:
    """Canonical text of a UUID held as an int."""
    return str(uuid.UUID(int=value))
