"""Stage 0 — sdk: requests from existing analytics SDKs, turned into the native body.
Pure: no I/O; the clock (``now_ms``) and the project are passed in.

Segment's, RudderStack's and PostHog's SDKs can be pointed at Sluice unchanged. Each
speaks its own wire format; this module is the only place that knows them. The HTTP
layer reads the body (gunzipped when ``Content-Encoding`` said so) and calls:

1. :func:`decode` with the route (:data:`ROUTES`), the body, the query string and the
   ``Authorization`` header → :class:`SdkRequest`: the token, the envelope's
   ``sent_at`` and one mapped event per message, in order (so a rejection's ``index`` is
   the message's index in what the SDK sent).
2. resolves the token to a project (as for a native request), then
3. :func:`native_body` (the request, the project id) → the bytes
   :func:`ingest.validate.decode_request` takes, ``{"events": [...], "sent_at": ...}``;
   from there on it is a native request.
4. :func:`respond` (the family, the native status and body) → the status and body that
   family's SDKs understand (:data:`CONFIG_RESPONSES` holds the GET config documents).

Enters: a route, raw body bytes, the query parameters, the ``Authorization`` header.
Leaves: :class:`SdkRequest`, then native body bytes.
Fails: a body that cannot be decoded (bad gzip, bad base64/LZ-string, not JSON, no
messages where they belong) raises :class:`ingest.validate.BadRequest` — a 400 with the
reason; one that decompresses past ``max_bytes`` raises :class:`BodyTooLarge` (413).
A single bad message is never a failure here: it is passed on as it is and
:func:`ingest.validate.validate` rejects it by index, like any bad event.

The mapping (also the README's table, *Sending with existing SDKs*) keeps every field the
client sent: what is not a column goes to ``extras`` under its own name. The device's
user agent, when the SDK sends it in the event (Segment's and RudderStack's
``context.userAgent``, PostHog's ``properties.$raw_user_agent``), is also the event's
``user_agent`` (:mod:`ingest.enrich`): a server SDK relaying browser events sends its
own name in the request's ``User-Agent`` header. The write key is
the exception: it is the credential, resolved to the project, and is not stored (also
not PostHog's ``properties.token``).

Event ids: a client id that is a UUID is the event id. Other ids (analytics-node's
``node-next-<ms>-<uuid>``, any string) become ``uuid5(project_id, id)`` — stable, so a
retry lands on the same row, and per project, so two projects sending the same id never
share an event id. That needs the project, known only after the token resolves: hence
the two steps, :func:`decode` then :func:`native_body`.

How: JSON is decoded one level at a time with msgspec, values kept as their text
(``msgspec.Raw``), so what is stored is what was sent, as on the native path. Cost,
measured on 100-event batches (shared 2-core machine): ~6 µs per event for PostHog's,
~8 µs for Segment's (context merged per message) — about twice the native
decode + validate that follows; SDK traffic is not the bulk path.
"""

from __future__ import annotations

import base64
import binascii
import uuid
import zlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import msgspec
from msgspec import Raw

from ingest.validate import BadRequest, Invalid, parse_timestamp

SEGMENT = "segment"
POSTHOG = "posthog"

# An lz64 body is decoded bit by bit in Python (measured: ~0.6 s per MiB of input, so
# ~0.16 s at this cap, on the event loop): only posthog-js builds from before mid-2023
# send it, in batches of a few KiB, so a larger one is refused (413).
MAX_LZ64_CHARS = 256 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


class BodyTooLarge(ValueError):
    """The body decompresses past the caller's ``max_bytes`` (a 413, like a gzip bomb)."""


class Route(NamedTuple):
    """What a path means: whose wire format, and for Segment's one-message endpoints,
    the message type the path implies (``None``: the body says, or holds a batch)."""

    family: str
    kind: str | None = None


def _routes() -> dict[str, Route]:
    routes: dict[str, Route] = {}
    # Segment and RudderStack. analytics-next posts each message to "/v1/" + the first
    # letter of its type ("/v1/t", "/v1/i", ...), batches to "/v1/b"; the server SDKs
    # post to "/v1/batch"; RudderStack adds "/v1/import" and the beacon batch.
    for kind in ("track", "identify", "page", "screen", "group", "alias"):
        routes[f"/v1/{kind}"] = routes[f"/v1/{kind[0]}"] = Route(SEGMENT, kind)
    for path in ("/v1/batch", "/v1/b", "/v1/import", "/beacon/v1/batch"):
        routes[path] = Route(SEGMENT)
    # PostHog: posthog-js posts to "/e/" (newer builds may use "/i/v0/e/"), the server
    # SDKs to "/batch/"; "/capture/", "/track/" and "/engage/" are older aliases. Every
    # path with and without its trailing slash (a proxy or a config may drop it).
    for path in ("/e", "/i/v0/e", "/batch", "/capture", "/track", "/engage"):
        routes[path] = routes[path + "/"] = Route(POSTHOG)
    return routes


ROUTES: dict[str, Route] = _routes()
"""Every POST path an SDK sends events to → its :class:`Route`."""


class SdkRequest(NamedTuple):
    """A decoded SDK request, before the project is known."""

    family: str
    token: str | None
    sent_at: str | int | float | None  # the envelope's, for clock-skew correction
    # One per message, in order: a native event (a dict whose "uuid" is the client's id
    # as sent, not yet made a UUID), or the message as sent when it is not an object
    # (validate rejects it by index).
    events: list[Any]


# ---------------------------------------------------------------------------- decoding


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    """Decompress a gzip body, at most ``max_bytes`` of it (a bomb is a 413, not OOM)."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise BadRequest(f"body is not valid gzip ({exc})") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise BodyTooLarge("request body too large")
    if not inflater.eof:
        raise BadRequest("body is not valid gzip (truncated)")
    return out


_LZ_ALPHABET = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
}


def lz_decompress_from_base64(text: str, max_chars: int) -> str:
    """LZString's ``decompressFromBase64`` (lz-string 1.x, what old posthog-js sent as
    ``compression=lz64``). Written out here because the PyPI ports are unmaintained
    (``lzstring``: last release 2018) or unproven; the tests check it against the
    JavaScript original's output. Raises :class:`BadRequest` for input that is not
    LZString data, :class:`BodyTooLarge` past ``max_chars`` of output."""
    if len(text) > MAX_LZ64_CHARS:
        raise BodyTooLarge("lz64 body too large")
    values = [_LZ_ALPHABET.get(c, 0) for c in text]
    length = len(values)
    reset = 32
    state = [values[0] if values else 0, reset, 1]  # current value, bit position, index

    def read(nbits: int) -> int:
        val, position, index = state
        bits, power = 0, 1
        for _ in range(nbits):
            if val & position:
                bits |= power
            position >>= 1
            if position == 0:
                position = reset
                val = values[index] if index < length else 0
                index += 1
            power <<= 1
        state[0], state[1], state[2] = val, position, index
        return bits

    if not text:
        raise BadRequest("lz64 body is empty")
    dictionary: list[str] = ["", "", ""]
    first = read(2)
    if first == 2:
        return ""
    if first > 2:
        raise BadRequest("body is not valid lz64")
    w = chr(read(8 if first == 0 else 16))
    dictionary.append(w)
    result = [w]
    size = len(w)
    enlarge_in, num_bits = 4, 3
    while True:
        if state[2] > length:
            raise BadRequest("body is not valid lz64 (truncated)")
        code = read(num_bits)
        if code == 2:
            break
        if code < 2:
            dictionary.append(chr(read(8 if code == 0 else 16)))
            code = len(dictionary) - 1
            enlarge_in -= 1
            if enlarge_in == 0:
                enlarge_in = 1 << num_bits
                num_bits += 1
        if code < len(dictionary):
            entry = dictionary[code]
        elif code == len(dictionary):
            entry = w + w[0]
        else:
            raise BadRequest("body is not valid lz64")
        result.append(entry)
        size += len(entry)
        if size > max_chars:
            raise BodyTooLarge("request body too large")
        dictionary.append(w + entry[0])
        enlarge_in -= 1
        w = entry
        if enlarge_in == 0:
            enlarge_in = 1 << num_bits
            num_bits += 1
    # JavaScript strings are UTF-16: a character outside the BMP came as two halves.
    joined = "".join(result)
    return joined.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, padding optional; a ``+`` that a form decoder turned
    into a space is put back (base64 has no spaces)."""
    text = text.strip().replace(" ", "+")
    text += "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("body's data= field is not valid base64") from None


# JSON is decoded one level at a time, values kept as their text (msgspec.Raw): what the
# client sent is stored byte for byte, as on the native path (an integer of any size, a
# number's spelling), and nothing is parsed that the mapping does not read.
_object = msgspec.json.Decoder(dict[str, Raw]).decode
_array = msgspec.json.Decoder(list[Raw]).decode
_value = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

Obj = dict[str, Raw]


def _json(data: bytes | str) -> Obj | list[Raw] | Any:
    """The body's JSON: an object or an array with their values as text, or a scalar
    (which the family's decoder refuses with its own message)."""
    text = data.lstrip()
    first = text[:1]
    try:
        if first in (b"{", "{"):
            return _object(text)
        if first in (b"[", "["):
            return _array(text)
        return _value(text)
    except msgspec.DecodeError as exc:  # ValidationError included: a number out of range
        raise BadRequest(f"body is not valid JSON: {exc}") from None


def _val(obj: Obj, key: str) -> Any:
    """One value of a one-level-decoded object, as Python (absent or null: ``None``)."""
    raw = obj.get(key)
    if raw is None:
        return None
    try:
        return _value(raw)
    except msgspec.DecodeError:  # a number past float range: only the text can hold it
        return raw


def _as_object(raw: Raw | Obj | None) -> Obj | None:
    """An object value, one level decoded; ``None`` when it is not an object."""
    if raw is None or type(raw) is dict:
        return raw  # type: ignore[return-value]
    if bytes(memoryview(raw)[:1]) != b"{":
        return None
    return _object(raw)


def _unwrap(body: bytes, query: Mapping[str, str], max_bytes: int) -> Any:
    """Undo whatever encoding an SDK put on the JSON: gzip told by its magic bytes
    (posthog-js sends gzip as ``text/plain`` and, since 2024, without the
    ``compression=gzip-js`` parameter), a form body's ``data=`` field (sendBeacon,
    older posthog-js) holding base64 or LZString-base64 (``compression=lz64`` in the
    query or in the form itself), or plain JSON."""
    if body[:2] == _GZIP_MAGIC:
        body = _gunzip(body, max_bytes)
    stripped = body.lstrip()
    if stripped[:1] not in (b"{", b"[") and b"data=" in stripped[:4096]:
        try:
            form = dict(parse_qsl(stripped.decode(), keep_blank_values=True))
        except UnicodeDecodeError:
            raise BadRequest("form body is not UTF-8") from None
        data = form.get("data", "")
        compression = (form.get("compression") or query.get("compression") or "").lower()
        if compression == "lz64":
            return _json(lz_decompress_from_base64(data, max_bytes))
        if data.lstrip()[:1] in ("{", "["):  # some senders put the JSON itself in data=
            return _json(data)
        raw = _b64decode(data)
        if raw[:2] == _GZIP_MAGIC:
            raw = _gunzip(raw, max_bytes)
        return _json(raw)
    return _json(body)


def authorization_key(authorization: str | None) -> str | None:
    """The user of HTTP Basic auth (Segment's write key, empty password), or a bearer
    token (Sluice's own clients, RudderStack with a proxy in front)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme != "basic":
        return None
    try:
        user = base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
    except (binascii.Error, ValueError):
        return None
    return user or None


def decode(
    route: Route,
    body: bytes,
    query: Mapping[str, str],
    authorization: str | None,
    now_ms: int,
    max_bytes: int,
) -> SdkRequest:
    """One SDK request → :class:`SdkRequest`. ``body`` is as read (already gunzipped if
    ``Content-Encoding: gzip`` said so); ``now_ms`` stands in for a send time the
    request does not carry. Raises :class:`BadRequest` or :class:`BodyTooLarge`."""
    payload = _unwrap(body, query, max_bytes)
    if route.family == SEGMENT:
        return _segment(route, payload, query, authorization, now_ms)
    return _posthog(payload, query, authorization, now_ms)


def _str_or_none(value: Any) -> str | None:
    return value if type(value) is str and value else None


def _batch(payload: Obj) -> list[Raw]:
    try:
        return _array(payload["batch"])
    except msgspec.ValidationError:
        raise BadRequest("batch must be a list") from None


# ----------------------------------------------------------------------------- Segment

# Segment's message types → Sluice's event names: one vocabulary with PostHog's, so a
# count of page views does not depend on which SDK sent them, and a "$" name never
# collides with a customer's own track("page"). ``extras.type`` keeps the original.
SEGMENT_EVENT_NAMES = {
    "page": "$pageview",
    "screen": "$screen",
    "identify": "$identify",
    "group": "$groupidentify",
    "alias": "$create_alias",
}
# Keys of a Segment message that become columns (or are the credential).
_SEGMENT_CONSUMED = frozenset(
    ("event", "anonymousId", "userId", "messageId", "properties", "timestamp", "writeKey")
)


def _segment(
    route: Route, payload: Any, query: Mapping[str, str], authorization: str | None, now_ms: int
) -> SdkRequest:
    if type(payload) is not dict:
        raise BadRequest('body must be a JSON object (a Segment message or {"batch": [...]})')
    shared_context = shared_integrations = None
    messages: list[Raw | Obj]
    if route.kind is None and "batch" in payload:
        messages = list(_batch(payload))
        shared_context = _as_object(payload.get("context"))
        shared_integrations = _as_object(payload.get("integrations"))
    else:  # one message: analytics.js's /v1/t, /v1/i, ... (a batch path with one too)
        messages = [payload]
    sent_at = _val(payload, "sentAt")
    token = (
        authorization_key(authorization)
        or _str_or_none(_val(payload, "writeKey"))
        or _str_or_none(query.get("writeKey"))
    )
    fallback = sent_at if sent_at is not None else now_ms
    events = []
    for raw in messages:
        event, key = _segment_event(raw, route.kind, shared_context, shared_integrations, fallback)
        token = token or key
        events.append(event)
    return SdkRequest(SEGMENT, token, sent_at, events)


def _merged(shared: Obj | None, own: Raw | None) -> Any:
    """A batch-level ``context``/``integrations`` applied to one message: the message's
    own keys win (Segment's rule)."""
    if shared is None:
        return own
    mine = _as_object(own)
    if mine is not None:
        return {**shared, **mine}
    return shared if own is None or bytes(own) == b"null" else own


def _segment_event(
    raw: Raw | Obj, kind: str | None, context: Obj | None, integrations: Obj | None, fallback: Any
) -> tuple[Any, str | None]:
    """One message → (native event, its ``writeKey``). A message that is not an object
    is passed on as sent, for validate to reject by its index."""
    try:
        msg = raw if type(raw) is dict else _object(raw)
    except msgspec.ValidationError:
        return raw, None
    mtype = _val(msg, "type")
    if type(mtype) is not str:
        mtype = kind or "track"
    event_name = _val(msg, "event")
    if mtype == "track":
        name = event_name
    else:
        name = SEGMENT_EVENT_NAMES.get(mtype, event_name or mtype)
    timestamp = _val(msg, "timestamp")
    if timestamp is None:
        timestamp = _val(msg, "originalTimestamp")
    if timestamp is None:
        timestamp = _val(msg, "sentAt")
    if timestamp is None:
        timestamp = fallback
    extras: dict[str, Any] = {k: v for k, v in msg.items() if k not in _SEGMENT_CONSUMED}
    extras["type"] = mtype
    own_context = msg.get("context")
    if context is not None:
        extras["context"] = own_context = _merged(context, own_context)
    if integrations is not None:
        extras["integrations"] = _merged(integrations, msg.get("integrations"))
    if event_name is not None and mtype != "track":
        extras["event"] = msg["event"]
    event: dict[str, Any] = {
        "event": name,
        "timestamp": timestamp,
        "anonymous_id": _val(msg, "anonymousId"),
        "user_id": _val(msg, "userId"),
        "extras": extras,
    }
    properties = msg.get("properties")
    if properties is not None:
        event["properties"] = properties
    message_id = _val(msg, "messageId")
    if message_id is not None:
        event["uuid"] = message_id
    agent = _user_agent(own_context)
    if agent is not None:
        event["user_agent"] = agent
    return event, _str_or_none(_val(msg, "writeKey"))


def _user_agent(context: Raw | Obj | None) -> str | None:
    """``context.userAgent`` of a Segment/RudderStack message: the device's agent, which
    a server SDK relaying browser events sends there (the event's ``user_agent``; the
    context stays in ``extras`` as sent)."""
    try:
        obj = _as_object(context)
    except msgspec.DecodeError:
        return None
    return _str_or_none(_val(obj, "userAgent")) if obj is not None else None


# ----------------------------------------------------------------------------- PostHog

# Keys of a PostHog event that become columns or are the credential.
_POSTHOG_CONSUMED = frozenset(
    ("event", "properties", "timestamp", "uuid", "api_key", "token", "$token")
)


def _posthog(
    payload: Any, query: Mapping[str, str], authorization: str | None, now_ms: int
) -> SdkRequest:
    token: str | None = None
    sent_at: Any = None
    messages: list[Raw | Obj]
    if type(payload) is list:
        messages = payload
    elif type(payload) is dict:
        messages = list(_batch(payload)) if "batch" in payload else [payload]
        token = _str_or_none(_val(payload, "api_key")) or _str_or_none(_val(payload, "token"))
        sent_at = _val(payload, "sent_at")
    else:
        raise BadRequest('body must be a JSON array of events, an event, or {"batch": [...]}')
    if sent_at is None:
        # posthog-js's timestampMode "query" sends the send time as ?sent_at= (POST) or,
        # in builds before 2024, as ?_= : epoch milliseconds.
        for key in ("sent_at", "_"):
            given = query.get(key)
            if given and given.isdigit():
                sent_at = int(given)
                break
    token = (
        token
        or _str_or_none(query.get("token"))
        or _str_or_none(query.get("api_key"))
        or authorization_key(authorization)
    )
    if sent_at is None:
        base_ms = now_ms
    else:
        try:
            base_ms = parse_timestamp(sent_at)
        except Invalid:
            raise BadRequest(
                "sent_at invalid: send an ISO 8601 string or epoch milliseconds"
            ) from None
    events = []
    for raw in messages:
        event, key = _posthog_event(raw, base_ms)
        token = token or key  # posthog-js: the key is in each event's properties.token
        events.append(event)
    return SdkRequest(POSTHOG, token, sent_at, events)


def _posthog_event(raw: Raw | Obj, base_ms: int) -> tuple[Any, str | None]:
    """One event → (native event, the key it carries, if any)."""
    try:
        msg = raw if type(raw) is dict else _object(raw)
    except msgspec.ValidationError:
        return raw, None
    props_raw = msg.get("properties")
    props = _as_object(props_raw)
    key = None
    if props is not None:
        key = _str_or_none(_val(props, "token"))
        if "token" in props:
            props = {k: v for k, v in props.items() if k != "token"}
        pget: Callable[[str], Any] = lambda k: _val(props, k)  # noqa: E731
    else:
        pget = lambda k: None  # noqa: E731
    key = (
        key
        or _str_or_none(_val(msg, "api_key"))
        or _str_or_none(_val(msg, "token"))
        or _str_or_none(_val(msg, "$token"))
    )
    extras: dict[str, Any] = {k: v for k, v in msg.items() if k not in _POSTHOG_CONSUMED}
    name = _val(msg, "event")
    if name is None and ("$set" in msg or "$set_once" in msg or "$unset" in msg):
        name = "$set"  # /engage/: a people update without an event name
    distinct_id = _val(msg, "distinct_id")
    if distinct_id is None:
        distinct_id = _val(msg, "$distinct_id")
    if distinct_id is None:
        distinct_id = pget("distinct_id")
        if distinct_id is not None:
            extras["distinct_id"] = distinct_id  # kept where stitching queries look
    if type(distinct_id) is int:
        distinct_id = str(distinct_id)
    device_id = pget("$device_id")
    if pget("$user_state") == "anonymous" or (device_id is not None and device_id == distinct_id):
        anonymous_id, user_id = distinct_id, None
    else:
        user_id = distinct_id
        anonymous_id = pget("$anon_distinct_id") or device_id
    timestamp = _val(msg, "timestamp")
    if timestamp is None:
        offset = _val(msg, "offset")
        if type(offset) in (int, float):
            timestamp = base_ms - int(offset)  # posthog-js's queue: ms before sending
        else:
            timestamp = base_ms
    event: dict[str, Any] = {
        "event": name,
        "timestamp": timestamp,
        "anonymous_id": anonymous_id,
        "user_id": user_id,
        "session_id": pget("$session_id"),
        "extras": extras,
    }
    if props is not None:
        event["properties"] = props
    elif props_raw is not None:
        event["properties"] = props_raw  # not an object: validate rejects it
    client_id = _val(msg, "uuid")
    if client_id is not None:
        event["uuid"] = client_id
    agent = _str_or_none(pget("$raw_user_agent"))  # posthog-js: the browser's agent
    if agent is not None:
        event["user_agent"] = agent
    return event, key


# ------------------------------------------------------------- after the token resolved


def event_id(client_id: Any, project: uuid.UUID) -> tuple[str, bool]:
    """A client's event id → ``(UUID text, whether it was derived)``: a UUID is kept;
    anything else becomes ``uuid5(project, text)`` — stable across retries, distinct
    across projects."""
    text = client_id if type(client_id) is str else _encode(client_id).decode()
    try:
        return str(uuid.UUID(text)), False
    except ValueError:
        return str(uuid.uuid5(project, text)), True


def to_events(request: SdkRequest, project_id: uuid.UUID | int) -> list[Any]:
    """The mapped events with their final ids, for ``project_id`` (the resolved token's
    project, as a UUID or its int). A derived id keeps the client's own as
    ``extras.messageId`` (Segment) or ``extras.uuid`` (PostHog)."""
    project = project_id if isinstance(project_id, uuid.UUID) else uuid.UUID(int=project_id)
    original_key = "messageId" if request.family == SEGMENT else "uuid"
    out = []
    for ev in request.events:
        if type(ev) is dict and "uuid" in ev:
            client_id = ev["uuid"]
            final, derived = event_id(client_id, project)
            ev = {**ev, "uuid": final}
            if derived:
                ev["extras"] = {**ev["extras"], original_key: client_id}
        out.append(ev)
    return out


def native_body(request: SdkRequest, project_id: uuid.UUID | int) -> bytes:
    """The native request body (``{"events": [...], "sent_at": ...}``, no token: it is
    resolved already) for :func:`ingest.validate.decode_request`."""
    body: dict[str, Any] = {"events": to_events(request, project_id)}
    if request.sent_at is not None:
        body["sent_at"] = request.sent_at
    return _encode(body)


# ------------------------------------------------------------------------------ answers


def respond(family: str, status: int, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """The native answer → what ``family``'s SDKs expect.

    Success is exactly 200 for both: posthog-js retries any status that is not 200 and
    below 400 (a 202 would be sent again and again), analytics-python before 2.4 took
    only 200 as success. The body keeps the native counts for whoever debugs.

    Errors keep their status (the SDKs retry a 5xx, drop a 400/401/413: the native
    table's meaning) with the field each SDK logs — Segment's ``message``, PostHog's
    ``detail`` — except where an SDK would drop what should be retried: a 408 (the body
    was too slow; analytics-python and posthog-js drop every 4xx but 429 or any) and, for
    PostHog, a 429 (posthog-js drops it) become a 503, which every SDK retries. The HTTP
    layer keeps the ``Retry-After`` header."""
    if status < 300:
        extra = {k: body[k] for k in ("accepted", "rejected", "errors") if k in body}
        if family == SEGMENT:
            return 200, {"success": True, **extra}
        return 200, {"status": 1, **extra}
    message = str(body.get("error", "error"))
    if status == 408 or (status == 429 and family == POSTHOG):
        status = 503
    if family == SEGMENT:
        return status, {"success": False, "code": _error_code(status), "message": message}
    return status, {"type": "validation_error" if status < 500 else "server_error",
                    "code": _error_code(status), "detail": message}  # fmt: skip


def _error_code(status: int) -> str:
    return {400: "invalid_request", 401: "unauthorized", 413: "payload_too_large",
            429: "rate_limited", 503: "unavailable"}.get(status, "error")  # fmt: skip


def segment_settings(write_key: str, host: str, scheme: str) -> dict[str, Any]:
    """``GET /v1/projects/<writeKey>/settings`` for analytics.js / analytics-next: it
    sends events to ``{protocol}://{integrations["Segment.io"].apiHost}/<t|i|p|s|g|a|b>``
    (``apiHost`` carries the ``/v1`` prefix, as Segment's own default
    ``api.segment.io/v1`` does), so ``host`` must be this server as the browser reaches
    it (the request's ``Host``). No other integration (no device-mode destinations to
    load) and metrics off (they would go to Segment)."""
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": f"{host}/v1",
                "protocol": scheme,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
            }
        },
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }


# posthog-js's remote config with every server-side feature off: no recordings, surveys,
# heatmaps, site apps, toolbar or flags to fetch. Autocapture is left to the client's
# own setting (``autocapture_opt_out`` absent). gzip is the only compression offered:
# it is what every posthog-js since 2020 prefers, and it is cheap to decode.
_POSTHOG_CONFIG: dict[str, Any] = {
    "supportedCompression": ["gzip-js"],
    "sessionRecording": False,
    "surveys": False,
    "heatmaps": False,
    "siteApps": [],
    "toolbarParams": {},
    "isAuthenticated": False,
    "capturePerformance": False,
    "autocaptureExceptions": False,
    "captureDeadClicks": False,
    "hasFeatureFlags": False,
    "elementsChainAsString": True,
}
POSTHOG_FLAGS: dict[str, Any] = {
    **_POSTHOG_CONFIG,
    "flags": {},
    "featureFlags": {},
    "featureFlagPayloads": {},
    "errorsWhileComputingFlags": False,
}
"""``/flags/?v=2`` and ``/decide/?v=…`` (older builds read the same keys, plus
``config``): no flags, nothing enabled."""
POSTHOG_DECIDE: dict[str, Any] = {**POSTHOG_FLAGS, "config": {"enable_collect_everything": True}}

CONFIG_RESPONSES: dict[str, dict[str, Any]] = {
    "/flags": POSTHOG_FLAGS,
    "/flags/": POSTHOG_FLAGS,
    "/decide": POSTHOG_DECIDE,
    "/decide/": POSTHOG_DECIDE,
}
"""GET (and POST: posthog-js posts to /flags/) config paths → their fixed JSON. Also
``/sourceConfig/`` → :func:`rudderstack_source_config`,
``/array/<token>/config`` → :data:`POSTHOG_REMOTE_CONFIG` and
``/v1/projects/<writeKey>/settings`` → :func:`segment_settings` (they carry the key)."""
POSTHOG_REMOTE_CONFIG: dict[str, Any] = dict(_POSTHOG_CONFIG)


def rudderstack_source_config(write_key: str) -> dict[str, Any]:
    """``GET /sourceConfig/?writeKey=…`` for rudder-sdk-js (v3), when its ``configUrl``
    points at Sluice: the smallest document its ``isValidSourceConfig`` accepts (a
    ``source`` with an ``id``, a ``config`` object and a ``destinations`` list), enabled,
    with no device-mode destinations to load."""
    return {
        "isHosted": False,
        "source": {
            "id": "sluice",
            "name": "sluice",
            "writeKey": write_key,
            "enabled": True,
            "workspaceId": "sluice",
            "config": {},
            "destinations": [],
        },
    }


def posthog_remote_config_js(token: str) -> str:
    """``GET /array/<token>/config.js``: the script form of :data:`POSTHOG_REMOTE_CONFIG`
    that posthog-js's external-scripts loader tries first (remote-config.ts reads
    ``window._POSTHOG_REMOTE_CONFIG[token].config`` and ``.siteApps``); without it the
    SDK logs a failed script load and falls back to the JSON."""
    entry = _encode({"config": POSTHOG_REMOTE_CONFIG, "siteApps": []}).decode()
    key = _encode(token).decode()
    return (
        "(function(){var c=window._POSTHOG_REMOTE_CONFIG=window._POSTHOG_REMOTE_CONFIG||{};"
        f"c[{key}]={entry};}})();"
    )
