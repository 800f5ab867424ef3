"""Encode a column-oriented batch as one ClickHouse ``Native`` block — for the few types
Sluice stores, at C speed where it matters.

Why: clickhouse-connect's general encoder spends ~2 µs per row in Python (UUIDs one by
one, the LowCardinality dictionary). Here strings go through clickhouse-connect's own
Cython string writer, UUIDs and timestamps through ``struct``/``array``, and a
``LowCardinality(String)`` column is sent as ``String`` (ClickHouse converts it on
insert). Measured on 5,000 rows: ~1.0 µs/row to encode, and the engine then inserts the
block at ~2.3 µs/row instead of ~5.5 µs/row through the general path.

Enters: columns, their names and ClickHouse types. Leaves: the block's bytes, or
``None`` when a type or a value is outside what this encoder handles (the caller then
uses the general encoder). Raises ``ValueError``/``TypeError`` for values that cannot be
encoded at all (a permanent error for those rows).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from typing import Any

try:  # the Cython writer; clickhouse-connect falls back to pure Python where unbuilt
    from clickhouse_connect.driverc.dataconv import write_str_col
except ImportError:  # pragma: no cover - depends on the platform's wheel
    from clickhouse_connect.driver.dataconv import write_str_col

_LOW64 = (1 << 64) - 1


def _leb128(value: int, out: bytearray) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _string(value: str, out: bytearray) -> None:
    data = value.encode()
    _leb128(len(data), out)
    out += data


def encode_block(
    columns: Sequence[Sequence[Any]], names: Sequence[str], types: Sequence[str]
) -> bytes | None:
    """One Native block of ``columns``, or ``None`` if it has a type this cannot encode."""
    rows = len(columns[0]) if columns else 0
    out = bytearray()
    _leb128(len(columns), out)
    _leb128(rows, out)
    for name, kind, column in zip(names, types, columns, strict=True):
        if kind == "LowCardinality(String)":
            kind = "String"  # ClickHouse converts on insert
        first = next((v for v in column if v is not None), None)
        _string(name, out)
        _string(kind, out)
        if kind == "UUID":
            if type(first) is not int or None in column:
                return None
            # Two little-endian UInt64: the high half, then the low half.
            pairs = [half for x in column for half in (x >> 64, x & _LOW64)]
            out += struct.pack(f"<{2 * rows}Q", *pairs)
        elif kind.startswith("DateTime64(3"):
            if type(first) is not int or None in column:
                return None
            out += array("q", column).tobytes()
        elif kind == "String":
            if (first is not None and type(first) is not str) or None in column:
                return None
            if write_str_col(column, False, "utf8", out):
                raise ValueError(f"column {name}: a value could not be encoded as String")
        elif kind == "Nullable(String)":
            if first is not None and type(first) is not str:
                return None
            out += bytes([v is None for v in column])
            if write_str_col(column, True, "utf8", out):
                raise ValueError(f"column {name}: a value could not be encoded as String")
        else:
            return None
    return bytes(out)
