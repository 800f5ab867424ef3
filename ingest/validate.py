"""Stage 1 — validate: the lenient per-event contract. Pure: no I/O, the clock is passed in.

Enters: a request body (:func:`decode_request` → :class:`Envelope`), then its decoded
events, the project id, ``received_at`` (ms) and the envelope's optional ``sent_at``
(ms) (:func:`validate`).
Leaves: one *row line* per good event — the bytes ClickHouse ingests (see below) — and,
for each bad event, ``{"index": i, "reason": "..."}``. A bad event never fails the batch.
Nothing a client sends raises anything but :class:`BadRequest` or :class:`Invalid`.

Request or event? The rule: bytes that cannot be read as JSON at all are the request's
fault, a 400 (:class:`BadRequest`) for the whole body — the events in it cannot be told
apart. That is: not UTF-8 (RFC 8259 requires it; a browser cannot produce anything else),
malformed JSON (``NaN``/``Infinity`` literals, a raw control character in a string, a bad
escape), nesting deeper than the decoder allows (Python's recursion limit: ~1,000 levels
less the caller's stack), or not an object with an ``events`` list. A leading UTF-8 byte
order mark is ignored. Once the body is JSON, every problem inside one event is that event's
rejection, by index: a value of the wrong type, a number out of range (``1e400`` as a
timestamp), a string with a NUL character or an unpaired UTF-16 surrogate escape
(``\\u0000``, ``\\ud800``: Postgres cannot hold them, so such an event could be neither
parked nor replayed), a duplicate id. Duplicate keys: the last one wins (inside object
values the text is kept as sent).

Per event:

* ``event`` — required, non-empty string (≤ 200 characters).
* ``timestamp`` — required: ISO 8601 / RFC 3339 string (no zone = UTC) or an epoch
  number: milliseconds, or **seconds** when its magnitude is below
  :data:`EPOCH_SECONDS_BELOW` (10^11). Every instant from 1900 to 2300 in seconds is
  below that, and 10^11 ms is March 1973: no number is ambiguous within the range
  accepted, 1900-01-01 ≤ t < 2300-01-01 (ClickHouse's ``DateTime64``). So
  ``1732270000`` is 2024-11-22, never 1970-01-21.
* ``anonymous_id`` / ``user_id`` / ``session_id`` (or ``anonymousId`` / ``userId`` /
  ``sessionId``) — optional strings (integers are taken as their decimal text; ``""``
  means absent), ≤ 200 characters. When both spellings are sent and differ, the
  snake_case one is stored and the camelCase one is kept in ``extras``.
* ``properties`` — object, default ``{}``.
* ``user_agent`` — optional string: the device's agent when a server relays the event;
  without it, the request's ``User-Agent`` header (passed in) is the event's. Either is
  described by :mod:`ingest.enrich` (browser, os, device type, bot) into the row line.
* ``uuid`` / ``event_id`` / ``messageId`` — optional client id (a UUID). It makes a retry
  of the same event land once. Without it Sluice mints a UUIDv7. Within one request, a
  second event with an id already accepted is rejected (``duplicate id in batch``):
  what the response counts as accepted is exactly what is stored.
* no string anywhere in the event (values, keys, object text) may hold a NUL character
  or an unpaired surrogate: ``<field> contains a NUL character or invalid Unicode``.
* anything else is folded into ``extras`` (an explicit ``extras`` object is the base,
  stray fields win on collision).
* the event's stored row (ids, name, ``properties``, ``extras``) must serialise to
  ≤ 32 KiB ("event too large").

Object values (``properties``, ``extras``, and every stray field's value) are stored as
the client sent them, byte for byte, except for whitespace between tokens when the body
had line breaks; ``extras`` keys come in no guaranteed order.

User agents: the header's values are encoded once per request into the prefix every
line of the request shares (with the project id and ``received_at``), so they cost
nothing per event (measured on the benchmark's body: 1.60–1.76 µs per event with them,
1.65–1.87 without, min of 25 runs in three rounds — within noise); an event with an
agent of its own gets the prefix of that agent, made once per distinct agent in the
request (~+0.1 µs per event with 10 distinct agents in 100 events), for at most
:data:`MAX_AGENTS_PER_REQUEST` agents.

Time: ``received_at`` is stamped once per request. With ``sent_at``, each timestamp is
corrected for client clock skew (``timestamp + (received_at - sent_at)``); a result more
than a day ahead of ``received_at`` is clamped to ``received_at``. Either way the
client's original value is kept as ``extras.original_timestamp``.

How: msgspec decodes the body in one typed pass into :class:`Event` structs (a second
pass tries :class:`SdkEvent` when the plain shape does not fit), with object values kept
as raw text (:class:`msgspec.Raw`) — no Python object per property — and the length
limits checked in C. An event of another shape falls back to a per-event decode
(:func:`_generic`), so the fast path never changes an outcome. Each good event is
written as its row line (the format is :mod:`ingest.rows`'s; it is written here, inline,
because this is the hot path); the buffer and the flusher only concatenate lines, and
ClickHouse's own parser reads them. Measured per event of the benchmark's shape (one
core, no other load): ~0.33 µs to decode and ~1.07 µs to check it and write its line,
against ~0.83 + ~2.3 µs with orjson dicts and hand-written checks.

The hostile-input checks are per request and run in C (:func:`decode_request`): UTF-8
validation only for a body that is not ASCII (~12 µs for the 46 KB benchmark body written
with raw UTF-8; ``isascii`` is ~1.5 µs), a NUL-escape search only for a body with a
backslash (~8 µs). Only a body where one finds something takes a slower path, and then
only for its suspect events. Per event, the fast path gained one comparison for a numeric
timestamp and a set lookup for an event with a client id (~0.04 µs).
"""

from __future__ import annotations

import operator
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NamedTuple

import msgspec
from msgspec import Meta, Raw, Struct

from ingest.enrich import describe, describe_later
from ingest.ids import MINT_MAX, MINT_SUFFIX, mint_prefix
from ingest.rows import lines_to_rows

# Limits (documented in the README).
MAX_EVENTS_PER_REQUEST = 10_000
MAX_EVENT_BYTES = 32 * 1024  # one event's row line (properties + extras + the rest)
MAX_NAME_CHARS = 200
MAX_ID_CHARS = 200
# Distinct user agents of their own that one request's events may have parsed: a new agent
# costs ~25 µs (more on a busy machine) on the event loop, so a request of 10,000 events
# with 10,000 invented agents could hold it for a quarter of a second. Past this many, an
# agent is stored as sent with its other values '' — derivable later, as for rows stored
# before migration 0003. Relaying SDKs send batches of ~100 events.
MAX_AGENTS_PER_REQUEST = 100
MIN_TIMESTAMP_MS = -2_208_988_800_000  # 1900-01-01, DateTime64's lower bound
MAX_TIMESTAMP_MS = 10_413_792_000_000  # 2300-01-01 (exclusive), its upper bound
FUTURE_TOLERANCE_MS = 86_400_000  # more than a day ahead of received_at is clamped
# A numeric timestamp below this magnitude is epoch seconds, at or above it milliseconds.
# 1900..2300 in seconds is within ±1.04e10; 1e11 ms is 1973-03-03: never ambiguous.
EPOCH_SECONDS_BELOW = 100_000_000_000

ENVELOPE_KEYS = frozenset(("token", "events", "sent_at"))
_ID_FIELDS = (("anonymous_id", "anonymousId"), ("user_id", "userId"), ("session_id", "sessionId"))
_CLIENT_ID_KEYS = ("uuid", "event_id", "messageId")
_KNOWN = frozenset(
    (
        "event",
        "timestamp",
        "properties",
        "extras",
        "user_agent",
        *_CLIENT_ID_KEYS,
        *tuple(k for pair in _ID_FIELDS for k in pair),
    )
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)
_ABSENT = Raw(b"")  # the default of a Raw field: the key was not sent (compared by identity)
_EMPTY = Raw(b"{}")
_LBRACE = 0x7B


class Invalid(ValueError):
    """One event is rejected; ``str(exc)`` is the reason given to the client."""


class BadRequest(ValueError):
    """The whole request is malformed (400); ``str(exc)`` says what to send instead."""


class Rejected(NamedTuple):
    """Stands in the events list for an event :func:`decode_request` already judged (a
    NUL or an unpaired surrogate in it): :func:`validate` rejects it with ``reason``."""

    reason: str


UNICODE_REASON = "{} contains a NUL character or invalid Unicode"
DUPLICATE_ID = "duplicate id in batch"


# Checked by msgspec in the typed pass; _generic gives the reason when one fails.
_Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS)]
_Id = Annotated[str, Meta(max_length=MAX_ID_CHARS)] | int


class Event(Struct, forbid_unknown_fields=True, gc=False):
    """The common shape of an event, decoded in one pass with its types checked.

    An event with any other key, or a value of another type, does not fit: it is decoded
    on its own by :func:`_generic`, which gives the precise reason or folds the unknown
    keys into ``extras``. Object values stay :class:`msgspec.Raw`: their text as sent.
    """

    event: _Name
    timestamp: str | int | float | None = None
    anonymous_id: _Id | None = None
    anonymousId: _Id | None = None
    user_id: _Id | None = None
    userId: _Id | None = None
    session_id: _Id | None = None
    sessionId: _Id | None = None
    uuid: str | None = None
    event_id: str | None = None
    messageId: str | None = None
    properties: Raw = _ABSENT
    extras: Raw = _ABSENT
    user_agent: str | None = None  # the device's, when a server relays its events
    # The key SDKs most often send besides the above: not part of the row, it folds into
    # ``extras`` like any stray key, without leaving the fast path.
    context: Raw = _ABSENT


class SdkEvent(Event, forbid_unknown_fields=True, gc=False):
    """:class:`Event` plus the other keys Segment's and RudderStack's SDKs send on every
    event, for bodies where the plain shape does not fit (a second typed pass; each
    key costs a check per event, so the plain shape goes without them)."""

    integrations: Raw = _ABSENT
    traits: Raw = _ABSENT
    type: Raw = _ABSENT
    channel: Raw = _ABSENT
    originalTimestamp: Raw = _ABSENT
    sentAt: Raw = _ABSENT


_SDK_KEYS = ("integrations", "traits", "type", "channel", "originalTimestamp", "sentAt")
_sdk_values = operator.attrgetter(*_SDK_KEYS)


def _sdk_strays(ev: SdkEvent) -> dict[str, Any] | None:
    """The keys of :class:`SdkEvent` beyond :class:`Event` that were sent."""
    found = {k: v for k, v in zip(_SDK_KEYS, _sdk_values(ev), strict=True) if v is not _ABSENT}
    return found or None


class _Envelope(Struct, forbid_unknown_fields=True, gc=False):
    events: list[Event]
    token: str | None = None
    sent_at: str | int | float | None = None


class _SdkEnvelope(Struct, forbid_unknown_fields=True, gc=False):
    events: list[SdkEvent]
    token: str | None = None
    sent_at: str | int | float | None = None


class Envelope(NamedTuple):
    """A decoded request body. ``events`` holds an :class:`Event` (or, for a body where
    that shape does not fit, :class:`SdkEvent`) per event that fits, and the event's
    :class:`msgspec.Raw` text for any other."""

    events: list[Event | SdkEvent | Raw]
    token: Any
    sent_at: Any


_decode_envelopes = (msgspec.json.Decoder(_Envelope).decode,
                     msgspec.json.Decoder(_SdkEnvelope).decode)  # fmt: skip
_decode_raw_object = msgspec.json.Decoder(dict[str, Raw]).decode
_decode_raw_list = msgspec.json.Decoder(list[Raw]).decode
_decode_events = (msgspec.json.Decoder(Event).decode, msgspec.json.Decoder(SdkEvent).decode)
_decode_any = msgspec.json.Decoder().decode
_encoder = msgspec.json.Encoder()
_encode, _encode_into = _encoder.encode, _encoder.encode_into


def decode_request(body: bytes) -> Envelope:
    """The request body → :class:`Envelope`. Raises :class:`BadRequest`, nothing else.

    One typed pass when every event fits :class:`Event`; otherwise the envelope, then
    each event, are decoded on their own, so that a bad event costs only itself.
    A body with a line break has its whitespace removed first: row lines keep object
    text as sent, and a line break in one would split its row (only ``\n`` frames rows;
    a ``\r`` is just whitespace to ClickHouse).

    An event holding a NUL character or an unpaired surrogate is replaced by a
    :class:`Rejected` (the module docstring says why).
    """
    if not body.isascii():  # ~1.5 µs for 46 KB of ASCII; the UTF-8 check only otherwise
        try:
            body.decode()
        except UnicodeDecodeError as exc:
            raise BadRequest(
                f"body is not valid UTF-8 (byte {exc.start}): JSON must be sent as UTF-8"
            ) from None
        if body[:3] == b"\xef\xbb\xbf":  # a byte order mark: RFC 8259 lets us ignore it
            body = body[3:]
    try:
        envelope = _decode_envelope(body)
    except BadRequest:
        # msgspec refuses an unpaired surrogate escape anywhere, even inside an object
        # value it only skips; a browser sends one for a string cut mid-emoji. Mark each
        # as a NUL escape (same length) so that only its event is rejected, with the
        # reason a NUL gets. Error path only.
        marked = _mark_lone_surrogates(body)
        if marked is None:
            raise
        try:
            envelope = _decode_envelope(marked)
        except BadRequest:
            raise BadRequest("body is not valid JSON") from None
        except RecursionError:
            raise BadRequest("body is not valid JSON: nested too deeply") from None
        body = marked
    except RecursionError:
        raise BadRequest("body is not valid JSON: nested too deeply") from None
    # A NUL can only arrive as the escape \u0000 (a raw NUL byte is not JSON). rfind, not
    # find: CPython's reverse search tests the needle's first byte, a backslash, rare in
    # JSON; the forward one tests its last, "0", common (8 vs 25 µs on a 46 KB body).
    if b"\\" in body and body.rfind(b"\\u0000") >= 0:
        _refuse_unicode(body, envelope.events)
    return envelope


def _decode_envelope(body: bytes) -> Envelope:
    if b"\n" in body:
        try:
            body = msgspec.json.format(body, indent=-1)
        except msgspec.DecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
    for decode_envelope in _decode_envelopes:
        try:
            env = decode_envelope(body)
            return Envelope(env.events, env.token, env.sent_at)  # type: ignore[arg-type]
        except msgspec.ValidationError:
            pass
        except msgspec.DecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
    # The typed passes stop at the first value of the wrong type; a malformed part after
    # it (a DecodeError here) still makes the body something other than JSON.
    try:
        top = _decode_raw_object(body)
    except msgspec.ValidationError:
        raise BadRequest('body must be a JSON object: {"token": ..., "events": [...]}') from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    unknown = top.keys() - ENVELOPE_KEYS
    if unknown:
        # The message quotes what was sent: a few keys, each cut short, so a body of
        # 100,000 keys is not echoed back.
        named = ", ".join(key[:40] for key in sorted(unknown)[:5])
        raise BadRequest(
            f"unknown envelope key(s): {named}{', …' if len(unknown) > 5 else ''}; "
            "allowed: token, events, sent_at (event fields go inside each event)"
        )
    if "events" not in top:
        raise BadRequest("events required")
    try:
        raws = _decode_raw_list(top["events"])
    except msgspec.ValidationError:
        raise BadRequest("events must be a list") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    events: list[Event | Raw] = []
    for raw in raws:
        for decode_event in _decode_events:
            try:
                events.append(decode_event(raw))
                break
            except msgspec.DecodeError:  # ValidationError included
                pass
        else:
            events.append(raw)
    token, sent_at = top.get("token"), top.get("sent_at")
    return Envelope(events, _envelope_value(token), _envelope_value(sent_at))


_OUT_OF_RANGE = object()  # a number msgspec cannot hold (1e400): never a valid value


def _envelope_value(raw: Raw | None) -> Any:
    """``token``/``sent_at`` as sent; a number out of range comes back as a value of no
    accepted type, for the handler to judge like any other (401, 400)."""
    if raw is None:
        return None
    try:
        return _decode_any(raw)
    except msgspec.DecodeError:  # ValidationError included
        return _OUT_OF_RANGE


# Every escape of a JSON string, in order: in valid JSON a backslash only ever starts an
# escape, so a left-to-right scan pairs an escaped backslash correctly and never reads
# the text backslash-backslash-u0000 (a backslash, then "u0000") as a NUL.
_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)


def _mark_lone_surrogates(body: bytes) -> bytes | None:
    """``body`` with every unpaired surrogate escape turned into ``\\u0000``, or ``None``
    when it has none."""
    if b"\\u" not in body:
        return None
    marked: bytearray | None = None
    high_at = -1  # where an unpaired high surrogate escape starts
    prev_end = -1
    for m in _ESCAPE.finditer(body):
        code = m.group(1)
        unit = int(code, 16) if code is not None else -1
        if high_at >= 0:
            if m.start() == prev_end and 0xDC00 <= unit <= 0xDFFF:
                high_at, prev_end = -1, m.end()
                continue  # a pair
            marked = marked or bytearray(body)
            marked[high_at : high_at + 6] = b"\\u0000"
            high_at = -1
        if 0xD800 <= unit <= 0xDBFF:
            high_at = m.start()
        elif 0xDC00 <= unit <= 0xDFFF:
            marked = marked or bytearray(body)
            marked[m.start() : m.end()] = b"\\u0000"
        prev_end = m.end()
    if high_at >= 0:
        marked = marked or bytearray(body)
        marked[high_at : high_at + 6] = b"\\u0000"
    return None if marked is None else bytes(marked)


def has_nul_escape(raw: bytes | Raw) -> bool:
    """True when the JSON text ``raw`` holds a ``\\u0000`` escape (an escaped backslash
    followed by ``u0000`` is not one)."""
    text = bytes(raw)
    return b"\\u0000" in text and any(m.group(1) == b"0000" for m in _ESCAPE.finditer(text))


def _refuse_unicode(body: bytes, events: list[Event | SdkEvent | Raw | Rejected]) -> None:
    """Replace each event holding a NUL escape by a :class:`Rejected` naming the field.
    Slow path: only for a body that has such an escape somewhere."""
    try:
        raws = _decode_raw_list(_decode_raw_object(body)["events"])
    except (msgspec.DecodeError, KeyError, RecursionError):  # pragma: no cover - decoded once
        return
    for index, raw in enumerate(raws):
        if not has_nul_escape(raw):
            continue
        field = "event"
        try:
            obj = _decode_raw_object(raw)
        except msgspec.ValidationError:  # not an object: rejected as such anyway
            continue
        for key, value in obj.items():
            if has_nul_escape(value) or "\x00" in key:
                # Reasons are metric labels: a stray key is reported as "extras".
                field = key if key in _KNOWN and "\x00" not in key else "extras"
                break
        events[index] = Rejected(UNICODE_REASON.format(field))


def parse_timestamp(value: Any) -> int:
    """An ISO 8601 string or an epoch number (milliseconds; seconds below
    :data:`EPOCH_SECONDS_BELOW`) → epoch milliseconds. Raises ``Invalid``."""
    kind = type(value)
    if kind is str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise Invalid("timestamp invalid") from None
        ms = (parsed - (_EPOCH_NAIVE if parsed.tzinfo is None else _EPOCH)) // _MS
    elif kind is int or kind is float:
        if value != value:  # NaN
            raise Invalid("timestamp invalid")
        if -EPOCH_SECONDS_BELOW < value < EPOCH_SECONDS_BELOW:
            ms = round(value * 1000)  # epoch seconds
        else:
            ms = int(value)
    elif value is _OUT_OF_RANGE:
        raise Invalid("timestamp out of range")
    else:
        raise Invalid("timestamp invalid")
    if not MIN_TIMESTAMP_MS <= ms < MAX_TIMESTAMP_MS:
        raise Invalid("timestamp out of range")
    return ms


def _generic(raw: Raw | Rejected) -> tuple[Event, dict[str, Any]]:
    """An event that does not fit :class:`Event` → an :class:`Event` with its types
    checked and both spellings of an id resolved, plus the keys that go to ``extras``
    (verbatim). Raises ``Invalid`` with the reason."""
    if type(raw) is Rejected:
        raise Invalid(raw.reason)
    try:
        obj = _decode_raw_object(raw)
    except msgspec.DecodeError:  # ValidationError included
        raise Invalid("event must be an object") from None
    fields: dict[str, Any] = {}
    more: dict[str, Any] = {key: value for key, value in obj.items() if key not in _KNOWN}

    def value(key: str) -> Any:
        found = obj.get(key)
        if found is None:
            return None
        try:
            return _decode_any(found)
        except msgspec.DecodeError:  # a number out of range: of no accepted type
            return _OUT_OF_RANGE

    name = value("event")
    if type(name) is not str:
        raise Invalid("event required" if name is None else "event must be a string")
    if not name:
        raise Invalid("event required")
    if len(name) > MAX_NAME_CHARS:
        raise Invalid("event name too long")
    ts = value("timestamp")
    if ts is _OUT_OF_RANGE:
        raise Invalid("timestamp out of range")
    if ts is not None and type(ts) not in (str, int, float):
        raise Invalid("timestamp invalid")
    for key in ("properties", "extras"):
        if key in obj:
            fields[key] = obj[key]
    for snake, camel in _ID_FIELDS:
        text, alias = value(snake), value(camel)
        if alias is not None:
            if text is None:
                text = alias
            elif alias != text:
                more[camel] = obj[camel]  # both spellings, different values: keep the other
        if type(text) is str:
            if len(text) > MAX_ID_CHARS:
                raise Invalid(f"{snake} too long")
        elif type(text) is int:
            if len(str(text)) > MAX_ID_CHARS:
                raise Invalid(f"{snake} too long")
        elif text is not None:
            raise Invalid(f"{snake} must be a string")
        fields[snake] = text
    for key in _CLIENT_ID_KEYS:
        given = value(key)
        if given is not None and type(given) is not str:
            raise Invalid(f"{key} must be a UUID string")
        fields[key] = given
    agent = value("user_agent")
    if agent is not None and type(agent) is not str:
        raise Invalid("user_agent must be a string")
    fields["user_agent"] = agent
    return Event(event=name, timestamp=ts, **fields), more


def _client_id(ev: Event, more: dict[str, Any]) -> int:
    """The client's event id (the first of ``uuid``, ``event_id``, ``messageId``); a
    different second one is kept in ``extras``. Raises ``Invalid``."""
    found: int | None = None
    for key in _CLIENT_ID_KEYS:
        given = getattr(ev, key)
        if given is None:
            continue
        try:
            parsed = uuid.UUID(given).int
        except ValueError:
            raise Invalid(f"{key} must be a UUID") from None
        if found is None:
            found = parsed
        elif parsed != found:
            more[key] = given
    assert found is not None
    return found


def _object(raw: Raw, key: str) -> Raw | None:
    """An object value's text, ``None`` when absent or null. Raises ``Invalid``."""
    if raw is _ABSENT:
        return None
    if memoryview(raw)[0] != _LBRACE:
        if bytes(raw) == b"null":
            return None
        raise Invalid(f"{key} must be an object")
    return raw


class Validated(NamedTuple):
    """What :func:`validate` makes of one request's events."""

    # The row lines of the good events, concatenated. A copy of the working bytearray:
    # msgspec grows that by up to 2x, and handed over as is it held 720 instead of 469
    # bytes per buffered event (measured); the copy costs ~2 µs a request.
    data: bytes
    count: int  # how many lines
    errors: list[dict[str, Any]]  # {"index": i, "reason": "..."} per bad event
    client_ids: list[tuple[int, int]]  # (line index, id) of events with a client id


def validate(
    events: Sequence[Event | SdkEvent | Raw],
    project_id: int,
    received_at_ms: int,
    sent_at_ms: int | None = None,
    user_agent: str | None = None,
) -> Validated:
    """Validate one request's decoded events (:func:`decode_request`) for ``project_id``
    (the UUID as an int): one row line per good event, the reason for each bad one.
    ``user_agent`` is the request's ``User-Agent`` header: an event's agent unless it
    carries its own ``user_agent``."""
    buf = bytearray()
    count = 0
    errors: list[dict[str, Any]] = []
    client_ids: list[tuple[int, int]] = []
    seen_ids: set[int] = set()  # client ids accepted so far: a repeat is rejected
    skew = received_at_ms - sent_at_ms if sent_at_ms is not None else 0
    if len(events) > MINT_MAX:
        raise ValueError(f"at most {MINT_MAX} events per call")  # callers cap at 10,000
    id_prefix, id_suffix = mint_prefix(received_at_ms), MINT_SUFFIX  # minted ids
    # Every line starts with the request's project id, received_at and user agent (with
    # what it says: ingest.enrich), encoded once: a Raw element is written verbatim, so
    # this one stands for all seven values. An event with an agent of its own gets a
    # prefix of its own, encoded once per distinct agent in the request.
    head = (format(project_id, "032x"), received_at_ms / 1000)
    shared = Raw(_encode((*head, *describe(user_agent)))[1:-1])
    prefixes: dict[str, Raw] = {}
    latest = received_at_ms + FUTURE_TOLERANCE_MS
    fromisoformat = datetime.fromisoformat
    epoch, epoch_naive, absent = _EPOCH, _EPOCH_NAIVE, _ABSENT
    encode_into = _encode_into
    for index, ev in enumerate(events):
        try:
            kind = type(ev)
            if kind is Event:
                more: dict[str, Any] | None = None
            elif kind is SdkEvent:
                more = _sdk_strays(ev)  # type: ignore[arg-type]
            else:
                ev, more = _generic(ev)  # type: ignore[arg-type]

            name = ev.event  # 1-200 characters, checked while decoding
            raw_ts = ev.timestamp
            if type(raw_ts) is str:
                try:
                    parsed = fromisoformat(raw_ts)
                except ValueError:
                    raise Invalid("timestamp invalid") from None
                delta = parsed - (epoch_naive if parsed.tzinfo is None else epoch)
                ts = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
            elif raw_ts is None:
                raise Invalid("timestamp required")
            elif -EPOCH_SECONDS_BELOW < raw_ts < EPOCH_SECONDS_BELOW:
                ts = round(raw_ts * 1000)  # epoch seconds (the module docstring says why)
            else:
                ts = int(raw_ts)
            if not MIN_TIMESTAMP_MS <= ts < MAX_TIMESTAMP_MS:
                raise Invalid("timestamp out of range")

            # The three id fields, unrolled: both spellings resolved, a different camelCase
            # value kept in extras, an int taken as its text, "" as absent (the lengths
            # were checked while decoding). A helper called per field would add three
            # calls (~70 ns each in CPython 3.11) to a loop of ~1 µs.
            anonymous_id = ev.anonymous_id
            alias = ev.anonymousId
            if alias is not None:
                if anonymous_id is None:
                    anonymous_id = alias
                elif alias != anonymous_id:
                    more = more or {}
                    more["anonymousId"] = alias
            if type(anonymous_id) is int:
                anonymous_id = str(anonymous_id)
                if len(anonymous_id) > MAX_ID_CHARS:
                    raise Invalid("anonymous_id too long")
            elif not anonymous_id:  # "" is absent
                anonymous_id = None
            user_id = ev.user_id
            alias = ev.userId
            if alias is not None:
                if user_id is None:
                    user_id = alias
                elif alias != user_id:
                    more = more or {}
                    more["userId"] = alias
            if type(user_id) is int:
                user_id = str(user_id)
                if len(user_id) > MAX_ID_CHARS:
                    raise Invalid("user_id too long")
            elif not user_id:  # "" is absent
                user_id = None
            session_id = ev.session_id
            alias = ev.sessionId
            if alias is not None:
                if session_id is None:
                    session_id = alias
                elif alias != session_id:
                    more = more or {}
                    more["sessionId"] = alias
            if type(session_id) is int:
                session_id = str(session_id)
                if len(session_id) > MAX_ID_CHARS:
                    raise Invalid("session_id too long")
            elif not session_id:  # "" is absent
                session_id = None

            if ev.uuid is None and ev.event_id is None and ev.messageId is None:
                event_id = None
            else:
                more = more or {}
                event_id = _client_id(ev, more)
                if event_id in seen_ids:
                    raise Invalid(DUPLICATE_ID)

            properties = ev.properties
            if properties is absent:
                properties = _EMPTY
            base = ev.extras
            if base is not absent:
                base = _object(base, "extras")

            if ev.context is not absent:  # a stray key the typed pass knows
                more = more or {}
                more["context"] = ev.context
            prefix = shared
            agent = ev.user_agent  # a relayed event's own (ingest/enrich.py)
            if agent:
                prefix = prefixes.get(agent)  # type: ignore[assignment]
                if prefix is None:
                    if len(prefixes) < MAX_AGENTS_PER_REQUEST:
                        values = describe(agent)
                    else:  # kept, not parsed (MAX_AGENTS_PER_REQUEST says why)
                        values = describe_later(agent)
                    prefix = prefixes[agent] = Raw(_encode((*head, *values))[1:-1])

            client_ts = ts / 1000  # as sent: the stable part of the sort key
            if skew:
                more = more or {}
                more["original_timestamp"] = raw_ts
                ts += skew
                if ts < MIN_TIMESTAMP_MS:
                    raise Invalid("timestamp out of range")
            if ts > latest:
                more = more or {}
                more.setdefault("original_timestamp", raw_ts)
                ts = received_at_ms

            if base is absent or base is None:
                extras: Any = more or _EMPTY
            elif more:
                extras = _decode_raw_object(base)
                extras.update(more)  # stray keys win over the explicit extras object
            else:
                extras = base

            if event_id is None:
                eid = id_prefix + id_suffix[index]
            else:
                eid = format(event_id, "032x")
            start = len(buf)
            encode_into((prefix, eid, name, anonymous_id, user_id, session_id, ts / 1000,
                         client_ts, extras, properties), buf, -1)  # fmt: skip
            if buf[-1 - len(properties)] != _LBRACE:  # properties is not an object
                del buf[start:]
                properties = _object(properties, "properties") or _EMPTY
                encode_into((prefix, eid, name, anonymous_id, user_id, session_id, ts / 1000,
                             client_ts, extras, properties), buf, -1)  # fmt: skip
            buf.append(10)
            if len(buf) - start > MAX_EVENT_BYTES:
                del buf[start:]
                raise Invalid("event too large")
        except Invalid as exc:
            errors.append({"index": index, "reason": str(exc)})
            continue
        except RecursionError:  # a value nested near the decoder's limit, decoded again
            errors.append({"index": index, "reason": "event nested too deeply"})
            continue
        if event_id is not None:
            client_ids.append((count, event_id))
            seen_ids.add(event_id)
        count += 1
    return Validated(bytes(buf), count, errors, client_ids)


def validate_batch(
    events: Sequence[Any],
    project_id: int,
    received_at_ms: int,
    sent_at_ms: int | None = None,
    user_agent: str | None = None,
) -> tuple[list[bytes], list[dict[str, Any]], list[tuple[int, int]]]:
    """:func:`validate` for events given as Python values (tests, the benchmark): they
    are encoded and decoded as a request body would be. Returns ``(lines, errors,
    client_ids)`` with one ``bytes`` per row line."""
    body = msgspec.json.encode({"events": list(events)})
    result = validate(
        decode_request(body).events, project_id, received_at_ms, sent_at_ms, user_agent
    )
    lines = [line + b"\n" for line in result.data.split(b"\n")[:-1]]
    return lines, result.errors, result.client_ids


def validate_rows(
    events: Sequence[Any],
    project_id: int,
    received_at_ms: int,
    sent_at_ms: int | None = None,
    user_agent: str | None = None,
) -> tuple[list[tuple], list[dict[str, Any]]]:
    """:func:`validate_batch`, with the good events as pipeline rows: what a caller that
    parks events directly in the dead-letter table needs (the benchmark's backlog,
    tests)."""
    lines, errors, _ = validate_batch(events, project_id, received_at_ms, sent_at_ms, user_agent)
    return lines_to_rows(b"".join(lines)), errors
