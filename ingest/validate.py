"""Stage 1 — validate: the lenient per-event contract. Pure: no I/O, the clock is passed in.

Enters: the parsed ``events`` list of one request, the project id, ``received_at`` (ms)
and the envelope's optional ``sent_at`` (ms).
Leaves: rows ready for ClickHouse (tuples in :data:`COLUMNS` order) and, for each bad
event, ``{"index": i, "reason": "..."}``. A bad event never fails the batch.

Per event:

* ``event`` — required, non-empty string (≤ 200 characters).
* ``timestamp`` — required: ISO 8601 / RFC 3339 string (no zone = UTC) or epoch
  milliseconds; 1900-01-01 ≤ t < 2300-01-01.
* ``anonymous_id`` / ``user_id`` / ``session_id`` (or ``anonymousId`` / ``userId`` /
  ``sessionId``) — optional strings (integers are taken as their decimal text; ``""``
  means absent), ≤ 200 characters. When both spellings are sent and differ, the
  snake_case one is stored and the camelCase one is kept in ``extras``.
* ``properties`` — object, default ``{}``.
* ``uuid`` / ``event_id`` / ``messageId`` — optional client id (a UUID). It makes a retry
  of the same event land once. Without it Sluice mints a UUIDv7.
* anything else is folded into ``extras`` (an explicit ``extras`` object is the base,
  stray fields win on collision).
* ``properties`` + ``extras`` must serialise to ≤ 32 KiB ("event too large").

Time: ``received_at`` is stamped once per request. With ``sent_at``, each timestamp is
corrected for client clock skew (``timestamp + (received_at - sent_at)``); a result more
than a day ahead of ``received_at`` is clamped to ``received_at``. Either way the
client's original value is kept as ``extras.original_timestamp``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from ingest.ids import MASK62, uuid7_parts

# The ClickHouse columns of events_raw_v1, and the row layout used everywhere in the
# pipeline (buffer, flush, dead-letter payload). Append only.
COLUMNS: tuple[str, ...] = (
    "event_id",
    "project_id",
    "event",
    "anonymous_id",
    "user_id",
    "session_id",
    "timestamp",
    "received_at",
    "properties",
    "extras",
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
)
EVENT_ID, PROJECT_ID, TIMESTAMP, RECEIVED_AT = 0, 1, 6, 7

# Limits (documented in the README).
MAX_EVENTS_PER_REQUEST = 10_000
MAX_EVENT_BYTES = 32 * 1024  # properties + extras as stored JSON
MAX_NAME_CHARS = 200
MAX_ID_CHARS = 200
MIN_TIMESTAMP_MS = -2_208_988_800_000  # 1900-01-01, DateTime64's lower bound
MAX_TIMESTAMP_MS = 10_413_792_000_000  # 2300-01-01 (exclusive), its upper bound
FUTURE_TOLERANCE_MS = 86_400_000  # more than a day ahead of received_at is clamped

_ID_FIELDS = (("anonymous_id", "anonymousId"), ("user_id", "userId"), ("session_id", "sessionId"))
_CLIENT_ID_KEYS = ("uuid", "event_id", "messageId")
_KNOWN = frozenset(
    (
        "event",
        "timestamp",
        "properties",
        "extras",
        *_CLIENT_ID_KEYS,
        *tuple(k for pair in _ID_FIELDS for k in pair),
    )
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Invalid(ValueError):
    """One event is rejected; ``str(exc)`` is the reason given to the client."""


def parse_timestamp(value: Any) -> int:
    """An ISO 8601 string or epoch milliseconds → epoch milliseconds. Raises ``Invalid``."""
    kind = type(value)
    if kind is int or kind is float:
        if value != value:  # NaN
            raise Invalid("timestamp invalid")
        ms = int(value)
    elif kind is str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise Invalid("timestamp invalid") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        delta = parsed - _EPOCH
        ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    else:
        raise Invalid("timestamp invalid")
    if not MIN_TIMESTAMP_MS <= ms < MAX_TIMESTAMP_MS:
        raise Invalid("timestamp out of range")
    return ms


def _text(event: dict, snake: str, camel: str, extras: dict) -> str | None:
    """One optional id field, either spelling. Raises ``Invalid``."""
    value = event.get(snake)
    alias = event.get(camel)
    if alias is not None:
        if value is None:
            value = alias
        elif alias != value:
            extras[camel] = alias  # both spellings, different values: keep the other
    kind = type(value)
    if kind is str:
        if len(value) > MAX_ID_CHARS:
            raise Invalid(f"{snake} too long")
        return value or None
    if value is None:
        return None
    if kind is int:
        return str(value)
    raise Invalid(f"{snake} must be a string")


def _client_id(event: dict, extras: dict) -> int | None:
    found: int | None = None
    for key in _CLIENT_ID_KEYS:
        value = event.get(key)
        if value is None:
            continue
        if type(value) is not str:
            raise Invalid(f"{key} must be a UUID string")
        try:
            parsed = uuid.UUID(value).int
        except ValueError:
            raise Invalid(f"{key} must be a UUID") from None
        if found is None:
            found = parsed
        elif parsed != found:
            extras[key] = value
    return found


# orjson.dumps returns bytes that keep ~4 KB of allocator memory each while alive
# (measured: 4,121 B per retained 191-byte result); the decoded str costs ~480 B. Buffered
# events keep their JSON as str for that reason.
_EMPTY = "{}"


def validate_batch(
    events: Sequence[Any],
    project_id: int,
    received_at_ms: int,
    sent_at_ms: int | None = None,
) -> tuple[list[tuple], list[dict[str, Any]], list[int]]:
    """Validate one request's events for ``project_id`` (the UUID as an int).

    Returns ``(rows, errors, client_id_rows)``: ``client_id_rows`` are indexes into
    ``rows`` whose id came from the client (the only ones a client retry can repeat).

    Row values are what the ClickHouse client encodes fastest and what costs least memory
    while buffered: UUIDs as 128-bit ints, ``properties``/``extras`` as JSON text,
    timestamps as epoch milliseconds.
    """
    rows: list[tuple] = []
    errors: list[dict[str, Any]] = []
    client_id_rows: list[int] = []
    skew = received_at_ms - sent_at_ms if sent_at_ms is not None else 0
    id_high, id_base = uuid7_parts(received_at_ms)
    dumps = orjson.dumps
    known = _KNOWN
    append = rows.append
    # Names and ids repeat within a batch (one device, one session, a few event names):
    # keep one string object per distinct value, ~60 B less per buffered event.
    same = {}
    share = same.setdefault
    for index, event in enumerate(events):
        try:
            if type(event) is not dict:
                raise Invalid("event must be an object")
            get = event.get
            name = get("event")
            if type(name) is not str:
                raise Invalid("event required" if name is None else "event must be a string")
            if not name:
                raise Invalid("event required")
            if len(name) > MAX_NAME_CHARS:
                raise Invalid("event name too long")
            raw_ts = get("timestamp")
            if raw_ts is None:
                raise Invalid("timestamp required")
            ts = parse_timestamp(raw_ts)

            properties = get("properties")
            if properties is None:
                properties = {}
            elif type(properties) is not dict:
                raise Invalid("properties must be an object")

            base = get("extras")
            if base is None:
                extras: dict[str, Any] = {}
            elif type(base) is dict:
                extras = dict(base)
            else:
                raise Invalid("extras must be an object")
            for key in event.keys() - known:
                extras[key] = event[key]

            anonymous_id = _text(event, "anonymous_id", "anonymousId", extras)
            user_id = _text(event, "user_id", "userId", extras)
            session_id = _text(event, "session_id", "sessionId", extras)
            event_id = _client_id(event, extras)

            if skew:
                extras["original_timestamp"] = raw_ts
                ts += skew
            if ts > received_at_ms + FUTURE_TOLERANCE_MS:
                extras.setdefault("original_timestamp", raw_ts)
                ts = received_at_ms
            if not MIN_TIMESTAMP_MS <= ts < MAX_TIMESTAMP_MS:
                raise Invalid("timestamp out of range")

            try:
                props_json = dumps(properties).decode() if properties else _EMPTY
                extras_json = dumps(extras).decode() if extras else _EMPTY
            except TypeError:
                raise Invalid("properties must be JSON") from None
            if len(props_json) + len(extras_json) > MAX_EVENT_BYTES:
                raise Invalid("event too large")
        except Invalid as exc:
            errors.append({"index": index, "reason": str(exc)})
            continue
        if event_id is None:
            event_id = id_high | ((id_base + index) & MASK62)
        else:
            client_id_rows.append(len(rows))
        append(
            (
                event_id,
                project_id,
                share(name, name),
                anonymous_id and share(anonymous_id, anonymous_id),
                user_id and share(user_id, user_id),
                session_id and share(session_id, session_id),
                ts,
                received_at_ms,
                props_json,
                share(extras_json, extras_json),  # context fields repeat per device
            )
        )
    return rows, errors, client_id_rows
