"""The row contract: the columns of ``events_raw_v1``, the row line, the dead-letter payload.

Everything Sluice stores about an event passes through one of three shapes, all defined
here so that validation, flushing, the write-ahead log, the dead-letter table and the
drain agree on them (``storage/`` sees only column names and bytes):

* **Pipeline row** — a tuple in :data:`COLUMNS` order: ``event_id`` and ``project_id``
  as 128-bit ints, ``timestamp``, ``received_at`` and ``client_timestamp`` as epoch
  milliseconds (UTC), ``properties``/``extras`` as JSON text exactly as stored.
* **Row line** — what ClickHouse ingests (``JSONCompactEachRow``): one JSON array per
  event in :data:`LINE_COLUMNS` order, newline-terminated; ids as 32 hex digits, times as
  epoch seconds with a millisecond fraction, ``properties``/``extras`` as JSON objects
  that ClickHouse stores as the text of their String columns
  (``input_format_json_read_objects_as_strings``). :mod:`ingest.validate` writes them
  (inline, it is the hot path); :func:`rows_to_lines` writes them from pipeline rows and
  :func:`stored_lines` straight from a payload's rows (the drain), the same bytes, so a
  replay goes into ClickHouse by the very path a flush takes.
* **Dead-letter payload** (``failed_events.batch``, format :data:`FORMAT`)::

      {"format": "sluice.events.v1",
       "columns": ["event_id", "project_id", ..., "client_timestamp"],
       "rows": [["0192…", "7f1c…", "page_view", null, ..., 1732270000123, ...], ...]}

  Pipeline rows with ids as UUID text. Readers map by column name, so a column added
  later is absent from older rows: :func:`payload_rows` fills it (``client_timestamp``
  from ``timestamp``, which is what migration 0002 did for stored rows; the user-agent
  columns of migration 0003 with '' and 0, which is what stored rows got).

The page values (``path``, ``referrer_domain``, ``utm_*``) are not pipeline columns:
ClickHouse computes them from ``properties``/``extras`` at insert (migration 0003), so
a replayed row gets them exactly as a first flush would.

Append-only: a column is added at the end of :data:`COLUMNS`, never renamed or retyped
(ClickHouse rows and parked payloads are read back by future versions).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import msgspec
import orjson
from msgspec import Raw

from ingest.ids import uuid_str

COLUMNS: tuple[str, ...] = (
    "event_id",
    "project_id",
    "event",
    "anonymous_id",
    "user_id",
    "session_id",
    "timestamp",  # the client's time, corrected for its clock skew (what queries use)
    "received_at",  # stamped once when the request was accepted
    "properties",
    "extras",
    # The client's own timestamp, as sent (no skew correction, no clamp): the same on
    # every retry of an event, so it can sit in the sort key (migration 0002).
    "client_timestamp",
    # What sent the event (migration 0003; ingest/enrich.py): the user agent as received
    # (cut at 1,000 characters) and what uap-core and the crawler list make of it. ''
    # and 0 when unknown, and for rows stored before 0003.
    "user_agent",
    "browser",
    "os",
    "device_type",
    "is_bot",
)
COLUMN_TYPES: tuple[str, ...] = (
    "UUID",
    "UUID",
    "LowCardinality(String)",
    "Nullable(String)",
    "Nullable(String)",
    "Nullable(String)",
    "DateTime64(3, 'UTC')",
    "DateTime64(3, 'UTC')",
    "String",
    "String",
    "DateTime64(3, 'UTC')",
    "LowCardinality(String)",
    "LowCardinality(String)",
    "LowCardinality(String)",
    "LowCardinality(String)",
    "UInt8",
)
EVENT_ID, PROJECT_ID, TIMESTAMP, CLIENT_TIMESTAMP, USER_AGENT = 0, 1, 6, 10, 11
AGENT_COLUMNS = COLUMNS[USER_AGENT:]  # the five of ingest.enrich.Agent, in its order
AGENT_DEFAULTS = ("", "", "", "", 0)  # unknown: rows and payloads from before 0003
# The order of the values in a row line: those that are the same for a whole request
# first (validation encodes them once per request and copies them into each line: the
# project, received_at, and the request's user agent and what it says), and
# ``properties`` last, where validation checks its first byte in place.
LINE_COLUMNS: tuple[str, ...] = (
    "project_id",
    "received_at",
    *AGENT_COLUMNS,
    "event_id",
    "event",
    "anonymous_id",
    "user_id",
    "session_id",
    "timestamp",
    "client_timestamp",
    "extras",
    "properties",
)

FORMAT = "sluice.events.v1"  # the dead-letter payload format; readers check it
TABLE = "events_raw_v1"
# A UUID as Sluice writes it (uuid_str): lowercase, dashed.
_canonical_uuid = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"
).match

_LINE = tuple[str, float, str, str, str, str, int, str, str, str | None, str | None, str | None,
              float, float, Raw, Raw]  # fmt: skip
_decode_line = msgspec.json.Decoder(_LINE).decode
# A row line written before migration 0003 (no user-agent values): what a write-ahead log
# segment left by an older version holds. Read, never written.
_LINE_V1 = tuple[str, float, str, str, str | None, str | None, str | None, float, float, Raw, Raw]
_decode_line_v1 = msgspec.json.Decoder(_LINE_V1).decode
_encode_into = msgspec.json.Encoder().encode_into
_LBRACE = ord("{")


def lines_to_rows(data: bytes) -> list[tuple]:
    """Row lines (concatenated) → pipeline rows: ``properties``/``extras`` as the JSON
    text of the line — the text ClickHouse stores for them."""
    rows = []
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            (pid, received, ua, browser, os, device, bot, eid, name, anon, user, sess, ts,
             client_ts, extras, props) = _decode_line(line)  # fmt: skip
        except msgspec.ValidationError:  # a line of before 0003 (an old log segment)
            pid, received, eid, name, anon, user, sess, ts, client_ts, extras, props = (
                _decode_line_v1(line)
            )
            ua, browser, os, device, bot = AGENT_DEFAULTS
        rows.append((int(eid, 16), int(pid, 16), name, anon, user, sess, round(ts * 1000),
                     round(received * 1000), bytes(props).decode(), bytes(extras).decode(),
                     round(client_ts * 1000), ua, browser, os, device, bot))  # fmt: skip
    return rows


def upgrade_lines(data: bytes) -> bytes:
    """Row lines of any version → lines of the current :data:`LINE_COLUMNS` (a write-ahead
    log segment left by a version before migration 0003 holds shorter lines; their
    user-agent values become '' and 0). Current lines are returned as they are."""
    first = data[: data.find(b"\n")]
    try:
        _decode_line(first)
        return data
    except msgspec.ValidationError:
        return rows_to_lines(lines_to_rows(data))


def _json_value(text: str) -> Raw | str:
    """A stored ``properties``/``extras`` text as a line value: an object is written as
    itself (ClickHouse stores its text), anything else as a JSON string of the text."""
    return Raw(text.encode()) if text[:1] == "{" else text


def rows_to_lines(rows: Iterable[tuple]) -> bytes:
    """Pipeline rows → row lines (concatenated), the inverse of :func:`lines_to_rows`."""
    buf = bytearray()
    for r in rows:
        _line_into(buf, format(r[1], "032x"), format(r[0], "032x"), r)
    return bytes(buf)


def _line_into(buf: bytearray, project_hex: str, event_hex: str, r: tuple | list) -> None:
    """Append the row line of ``r`` (a pipeline row or a row as stored: the same values
    but the two ids, given here as 32 hex digits) to ``buf``."""
    values = (project_hex, r[7] / 1000, *r[11:16], event_hex, r[2], r[3], r[4], r[5],
              r[6] / 1000, r[10] / 1000, _json_value(r[9]), _json_value(r[8]))  # fmt: skip
    _encode_into(values, buf, -1)
    buf.append(10)


def project_counts(rows: Iterable[tuple]) -> dict[str, int]:
    """Events per project id (text) in pipeline rows."""
    return {uuid_str(p): n for p, n in Counter(row[PROJECT_ID] for row in rows).items()}


# --- the dead-letter payload ------------------------------------------------------------


def encode_payload(rows: list[tuple]) -> bytes:
    """Pipeline rows → the stored payload (ids as text)."""
    text = [(uuid_str(r[0]), uuid_str(r[1]), *r[2:]) for r in rows]
    return orjson.dumps({"format": FORMAT, "columns": COLUMNS, "rows": text})


def payload_rows(raw: bytes | str) -> list[list]:
    """Payload → its rows as stored (ids as text), in the current :data:`COLUMNS` order.
    Raises ``ValueError`` for anything that is not a payload of :data:`FORMAT`."""
    doc = orjson.loads(raw)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"unknown dead-letter payload format {found!r}")
    columns = doc["columns"]
    rows = doc["rows"]
    if tuple(columns) == COLUMNS:
        return rows
    where = {name: i for i, name in enumerate(columns)}
    picks = [where.get(name) for name in COLUMNS]
    out = [[r[i] if i is not None else None for i in picks] for r in rows]
    if "client_timestamp" not in where:  # parked before migration 0002
        for row in out:
            row[CLIENT_TIMESTAMP] = row[TIMESTAMP]
    for column, default in zip(AGENT_COLUMNS, AGENT_DEFAULTS, strict=True):
        if column not in where:  # parked before migration 0003: the agent is unknown
            at = COLUMNS.index(column)
            for row in out:
                row[at] = default
    return out


def decode_payload(raw: bytes | str) -> list[tuple]:
    """Payload → pipeline rows (the inverse of :func:`encode_payload`)."""
    return stored_rows(payload_rows(raw))


def stored_rows(stored: list[list]) -> list[tuple]:
    """Rows as stored (:func:`payload_rows`) → pipeline rows. Raises ``ValueError`` for
    an id that is not a UUID."""
    return [
        (int(r[0].replace("-", ""), 16), int(r[1].replace("-", ""), 16), *r[2:]) for r in stored
    ]


def stored_lines(stored: list[list]) -> bytes | None:
    """Rows as stored (:func:`payload_rows`) → row lines, without pipeline rows in between:
    the drain's replay. The same bytes as ``rows_to_lines(stored_rows(stored))`` (a test
    holds the two equal) for less: 3.5 against 4.0 µs an event on the benchmark body,
    the payload's JSON parse (0.9) included — CPU that the embedded engine, replaying
    next to the server, otherwise lacks. Only for ids in
    the canonical text Sluice writes (lowercase, dashed): ``None`` when any id is in
    another form (a payload edited by hand or written elsewhere), and the caller takes
    the pipeline rows' path, which reads every form ``int()`` reads and writes it
    canonical, as before."""
    buf = bytearray()
    canonical = _canonical_uuid  # ~0.2 µs an id (a strip-and-count check: ~0.4)
    for r in stored:
        event_id, project_id = r[0], r[1]
        if not (type(event_id) is str and type(project_id) is str
                and canonical(event_id) and canonical(project_id)):  # fmt: skip
            return None
        _line_into(buf, project_id.replace("-", ""), event_id.replace("-", ""), r)
    return bytes(buf)


def stored_counts(stored: list[list]) -> dict[str, int]:
    """Events per project id in rows as stored, of a payload :func:`stored_lines` took
    (its ids are canonical text already)."""
    return dict(Counter(r[PROJECT_ID] for r in stored))
