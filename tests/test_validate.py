"""The lenient per-event contract (pure function: no stores needed)."""

from __future__ import annotations

import json
import uuid

import pytest
from msgspec import Raw

from ingest.rows import COLUMNS, lines_to_rows
from ingest.validate import (
    MAX_EVENT_BYTES,
    MAX_NAME_CHARS,
    MIN_TIMESTAMP_MS,
    BadRequest,
    Event,
    SdkEvent,
    decode_request,
    parse_timestamp,
    validate,
    validate_batch,
    validate_rows,
)

PROJECT = uuid.uuid4().int
NOW = 1_795_000_000_000  # 2026-11-18T...


def one(event: dict, sent_at: int | None = None) -> dict:
    rows, errors = validate_rows([event], PROJECT, NOW, sent_at)
    assert errors == [], errors
    row = dict(zip(COLUMNS, rows[0], strict=True))
    row["properties"] = json.loads(row["properties"])
    row["extras"] = json.loads(row["extras"])
    return row


def reasons(events: list) -> list[dict]:
    return validate_batch(events, PROJECT, NOW)[1]


def test_bad_events_are_rejected_by_index_with_a_reason_and_the_rest_kept() -> None:
    events = [
        {"event": "ok", "timestamp": NOW},
        {"timestamp": NOW},
        {"event": "", "timestamp": NOW},
        {"event": "x"},
        {"event": "x", "timestamp": "yesterday"},
        {"event": "x", "timestamp": NOW, "properties": [1]},
        "not an object",
        {"event": 5, "timestamp": NOW},
        {"event": "x", "timestamp": NOW, "properties": {"blob": "y" * MAX_EVENT_BYTES}},
        {"event": "x", "timestamp": NOW, "uuid": "nope"},
        {"event": "x", "timestamp": NOW, "user_id": {"a": 1}},
        {"event": "x", "timestamp": NOW, "extras": "str"},
        {"event": "ok2", "timestamp": "2026-11-01T00:00:00Z"},
    ]
    rows, errors = validate_rows(events, PROJECT, NOW)
    assert [r[2] for r in rows] == ["ok", "ok2"]
    assert errors == [
        {"index": 1, "reason": "event required"},
        {"index": 2, "reason": "event required"},
        {"index": 3, "reason": "timestamp required"},
        {"index": 4, "reason": "timestamp invalid"},
        {"index": 5, "reason": "properties must be an object"},
        {"index": 6, "reason": "event must be an object"},
        {"index": 7, "reason": "event must be a string"},
        {"index": 8, "reason": "event too large"},
        {"index": 9, "reason": "uuid must be a UUID"},
        {"index": 10, "reason": "user_id must be a string"},
        {"index": 11, "reason": "extras must be an object"},
    ]


def test_camel_case_aliases_and_epoch_milliseconds() -> None:
    row = one({"event": "e", "timestamp": 1_700_000_000_123, "anonymousId": "a1",
               "userId": 42, "sessionId": "s1"})  # fmt: skip
    assert (row["anonymous_id"], row["user_id"], row["session_id"]) == ("a1", "42", "s1")
    assert row["timestamp"] == 1_700_000_000_123
    assert row["received_at"] == NOW
    assert row["extras"] == {}


def test_snake_case_wins_and_a_different_camel_value_is_kept_in_extras() -> None:
    row = one({"event": "e", "timestamp": NOW, "user_id": "u1", "userId": "u2"})
    assert row["user_id"] == "u1" and row["extras"] == {"userId": "u2"}


def test_stray_fields_fold_into_extras_and_win_over_explicit_extras() -> None:
    row = one({"event": "e", "timestamp": NOW, "extras": {"plan": "free", "keep": 1},
               "plan": "pro", "context": {"ip": "1.2.3.4"}})  # fmt: skip
    assert row["extras"] == {"plan": "pro", "keep": 1, "context": {"ip": "1.2.3.4"}}
    assert row["properties"] == {}


def test_client_ids_are_kept_and_others_minted_as_uuid7() -> None:
    given = str(uuid.uuid4())
    lines, _, client_ids = validate_batch(
        [{"event": "a", "timestamp": NOW, "messageId": given.upper()},
         {"event": "b", "timestamp": NOW}],
        PROJECT, NOW,
    )  # fmt: skip
    rows = lines_to_rows(b"".join(lines))
    assert uuid.UUID(int=rows[0][0]) == uuid.UUID(given)
    assert client_ids == [(0, uuid.UUID(given).int)]
    minted = uuid.UUID(int=rows[1][0])
    assert minted.version == 7
    assert int(minted.hex[:12], 16) == NOW  # time-ordered: the accept time in ms


def test_sent_at_corrects_clock_skew_and_keeps_the_original() -> None:
    # The client's clock runs 10 minutes behind: it says it sent at NOW - 600 s.
    ts = NOW - 600_000 - 5_000  # event happened 5 s before sending, by the client's clock
    row = one({"event": "e", "timestamp": ts}, sent_at=NOW - 600_000)
    assert row["timestamp"] == NOW - 5_000
    assert row["extras"]["original_timestamp"] == ts


def test_far_future_timestamp_is_clamped_to_received_at() -> None:
    future = "2030-01-01T00:00:00Z"
    row = one({"event": "e", "timestamp": future})
    assert row["timestamp"] == NOW
    assert row["extras"]["original_timestamp"] == future
    near = one({"event": "e", "timestamp": NOW + 3_600_000})  # an hour ahead: kept
    assert near["timestamp"] == NOW + 3_600_000 and near["extras"] == {}


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("2026-11-01T12:00:00Z", 1_793_534_400_000),
        ("2026-11-01T12:00:00.250+00:00", 1_793_534_400_250),
        ("2026-11-01T14:00:00+02:00", 1_793_534_400_000),
        ("2026-11-01T12:00:00", 1_793_534_400_000),  # no zone: UTC
        (1_793_534_400_000, 1_793_534_400_000),
        (1_793_534_400_000.9, 1_793_534_400_000),
    ],
)
def test_timestamp_forms(value: object, ms: int) -> None:
    assert parse_timestamp(value) == ms


@pytest.mark.parametrize("value", [True, None, "", "12:00", [1], 10**16])
def test_timestamp_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(value)


SHAPES = [
    {"event": "plain", "timestamp": NOW},
    {"event": "all", "timestamp": "2026-11-01T12:00:00.250+02:00", "anonymousId": "a",
     "user_id": 42, "userId": "other", "session_id": "", "sessionId": "s",
     "properties": {"x": [1, {"y": None}], "é": "\u2014"}, "extras": {"keep": 1, "context": 0},
     "context": {"ip": "1.2.3.4"}, "type": "track", "traits": {"plan": "pro"},
     "integrations": {}, "channel": "web", "sentAt": "x", "originalTimestamp": 5,
     "messageId": "6F1C3A52-0D4B-4C8B-9E0C-0B2E4A7E9A11",
     "uuid": "6f1c3a52-0d4b-4c8b-9e0c-0b2e4a7e9a11", "event_id": str(uuid.UUID(int=7))},
    {"event": "far", "timestamp": "2300-01-01T00:00:00", "properties": None, "extras": None},
    {"event": "big", "timestamp": NOW, "properties": {"n": 2**70}},
]  # fmt: skip


@pytest.mark.parametrize("sent_at", [None, NOW - 60_000])
def test_the_typed_fast_path_and_the_per_event_path_write_the_same_line(
    sent_at: int | None,
) -> None:
    """An event of the common shape is decoded in one typed pass; one that does not fit
    is left as its text and decoded on its own. For the same event, the outcome must not
    differ."""
    for event in SHAPES:
        typed = decode_request(json.dumps({"events": [event]}).encode()).events
        assert type(typed[0]) in (Event, SdkEvent), event
        fast = validate(typed, PROJECT, NOW, sent_at)
        slow = validate([Raw(json.dumps(event).encode())], PROJECT, NOW, sent_at)
        assert (fast.errors, fast.client_ids) == (slow.errors, slow.client_ids)
        assert fast.count == slow.count
        if event.get("uuid"):  # minted ids are random: compare lines with a client id only
            assert json.loads(fast.data) == json.loads(slow.data)  # extras: any key order


def test_object_values_are_stored_as_sent_and_line_breaks_never_split_a_row() -> None:
    body = (
        b'{"events": [\n  {"event": "a", "timestamp": 1795000000000,\n'
        b'   "properties": {"n" : 1e2, "big": 123456789012345678901234567890,\n'
        b'                  "s": "\\u00e9\\n"},\n'
        b'   "context": {"k": [1, 2 ]}}\n,{"event":"b","timestamp":1795000000000,'
        b'"properties":{"x" : 1.50}}]}'
    )
    result = validate(decode_request(body).events, PROJECT, NOW)
    assert result.errors == [] and result.count == 2
    assert result.data.count(b"\n") == 2
    rows = lines_to_rows(result.data)
    assert rows[0][8] == '{"n":1e2,"big":123456789012345678901234567890,"s":"\\u00e9\\n"}'
    assert rows[0][9] == '{"context":{"k":[1,2]}}'
    assert rows[1][8] == '{"x":1.50}'
    one_line = b'{"events": [{"event": "b", "timestamp": 1, "properties": {"x" : 1.50}}]}'
    result = validate(decode_request(one_line).events, PROJECT, NOW)
    assert lines_to_rows(result.data)[0][8] == '{"x" : 1.50}'  # byte for byte


def test_extras_merge_keeps_the_explicit_object_as_base_and_client_values_verbatim() -> None:
    row = one({"event": "e", "timestamp": NOW, "extras": {"a": 1, "context": 0},
               "context": {"ip": "x"}, "userId": "u2", "user_id": "u1"})  # fmt: skip
    assert row["extras"] == {"a": 1, "context": {"ip": "x"}, "userId": "u2"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not valid JSON"),
        (b'{"events": [1,\n 2', "body is not valid JSON"),
        (b"[1, 2]", "body must be a JSON object"),
        (b'{"events": {}}', "events must be a list"),
        (b'{"token": "x"}', "events required"),
        (b'{"events": [], "batch": 1}', "unknown envelope key(s): batch"),
    ],
)
def test_malformed_bodies_are_a_bad_request(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as exc:
        decode_request(body)
    assert str(exc.value).startswith(message)


def test_the_envelope_keeps_odd_token_and_sent_at_values_for_the_handler_to_judge() -> None:
    env = decode_request(b'{"token": 5, "sent_at": [1], "events": [{"event": "e"}]}')
    assert (env.token, env.sent_at, len(env.events)) == (5, [1], 1)
    env = decode_request(b'{"token": "t", "sent_at": "2026-11-01T12:00:00Z", "events": []}')
    assert (env.token, env.sent_at, env.events) == ("t", "2026-11-01T12:00:00Z", [])


def test_length_limits_are_counted_in_characters_with_the_field_named() -> None:
    ok, long = "é" * MAX_NAME_CHARS, "é" * (MAX_NAME_CHARS + 1)
    events = [
        {"event": ok, "timestamp": NOW, "userId": ok},
        {"event": long, "timestamp": NOW},
        {"event": "e", "timestamp": NOW, "anonymousId": long},
        {"event": "e", "timestamp": NOW, "session_id": long},
        {"event": "e", "timestamp": NOW, "user_id": "u", "userId": long},  # kept in extras
    ]
    rows, errors = validate_rows(events, PROJECT, NOW)
    assert errors == [
        {"index": 1, "reason": "event name too long"},
        {"index": 2, "reason": "anonymous_id too long"},
        {"index": 3, "reason": "session_id too long"},
    ]
    assert [r[2] for r in rows] == [ok, "e"]
    assert json.loads(rows[1][9]) == {"userId": long}


def test_a_body_takes_the_narrowest_typed_shape_that_fits() -> None:
    plain = {"event": "e", "timestamp": NOW, "context": {"ip": "x"}}
    segment = {**plain, "type": "track", "integrations": {}}
    odd = {**plain, "shoe_size": 44}

    def kinds(*events: dict) -> list[str]:
        decoded = decode_request(json.dumps({"events": list(events)}).encode()).events
        return [type(e).__name__ for e in decoded]

    assert kinds(plain, plain) == ["Event", "Event"]
    assert kinds(plain, segment) == ["SdkEvent", "SdkEvent"]
    assert kinds(plain, segment, odd) == ["Event", "SdkEvent", "Raw"]
    rows, errors = validate_rows([segment, odd], PROJECT, NOW)
    assert errors == []
    assert json.loads(rows[0][9]) == {"context": {"ip": "x"}, "type": "track", "integrations": {}}
    assert json.loads(rows[1][9]) == {"context": {"ip": "x"}, "shoe_size": 44}


# --- hostile input (issue 11): no exception, request-level 400 or per-event reason ----


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"events": [{"event": "e", "timestamp": 1, "p": "\xff"}]}', "body is not valid UTF-8"),
        ('{"events": []}'.encode("utf-16"), "body is not valid UTF-8"),
        (b'{"events": [{"event": "e", "timestamp": NaN}]}', "body is not valid JSON"),
        (b'{"events": [{"event": "e", "properties": {"x": Infinity}}]}', "body is not valid JSON"),
        (b'{"events": [{"event": "a\x00b"}]}', "body is not valid JSON"),
        (b'{"events": [{"event": "\\q"}]}', "body is not valid JSON"),
        (b'{"events": [{"p": ' + b"[" * 5000 + b"]" * 5000 + b"}]}", "nested too deeply"),
        (b'{"events": [{"a": "\\ud800", "p": ' + b"[" * 5000 + b"]" * 5000 + b"}]}",
         "nested too deeply"),  # a lone surrogate first, then too deep: both paths
        (b'{"events": [], ' + b", ".join(b'"k%d": 1' % i for i in range(100)) + b"}",
         "unknown envelope key(s): k0, k1, k10, k11, k12, …;"),
    ],
)  # fmt: skip
def test_bytes_that_are_not_json_are_a_bad_request_for_the_whole_body(
    body: bytes, message: str
) -> None:
    with pytest.raises(BadRequest) as exc:
        decode_request(body)
    assert message in str(exc.value)


def test_a_utf8_byte_order_mark_is_ignored() -> None:
    body = b'\xef\xbb\xbf{"events": [{"event": "e", "timestamp": 1795000000000}]}'
    assert validate(decode_request(body).events, PROJECT, NOW).count == 1


def test_numbers_out_of_range_reject_their_event_only() -> None:
    body = (
        b'{"events": [{"event": 1e400, "timestamp": 1}, {"event": "e", "timestamp": 1e400},'
        b'{"event": "e", "timestamp": -1e400}, {"event": "e", "timestamp": 1, "userId": 1e400},'
        b'{"event": "e", "timestamp": 1, "uuid": 1e400},'
        b'{"event": "e", "timestamp": 1, "user_id": ' + b"9" * 201 + b"},"
        b'{"event": "e", "timestamp": 1, "user_id": ' + b"9" * 5000 + b"},"
        b'{"event": "ok", "timestamp": "0001-01-01T00:00:00+01:00"},'
        b'{"event": "ok", "timestamp": 1795000000000, "properties": {"big": 1e400}}]}'
    )
    result = validate(decode_request(body).events, PROJECT, NOW)
    assert result.errors == [
        {"index": 0, "reason": "event must be a string"},
        {"index": 1, "reason": "timestamp out of range"},
        {"index": 2, "reason": "timestamp out of range"},
        {"index": 3, "reason": "user_id must be a string"},
        {"index": 4, "reason": "uuid must be a UUID string"},
        {"index": 5, "reason": "user_id too long"},
        {"index": 6, "reason": "user_id must be a string"},
        {"index": 7, "reason": "timestamp out of range"},
    ]
    assert lines_to_rows(result.data)[0][8] == '{"big": 1e400}'  # object text: as sent


def test_token_and_sent_at_out_of_range_are_values_of_no_accepted_type() -> None:
    env = decode_request(b'{"token": 1e400, "sent_at": 1e400, "events": []}')
    assert type(env.token) is not str
    with pytest.raises(ValueError, match="timestamp out of range"):
        parse_timestamp(env.sent_at)


def test_nul_characters_and_unpaired_surrogates_reject_their_event_naming_the_field() -> None:
    """Postgres refuses both in jsonb and text; an event holding one could be neither
    parked nor replayed. Escaped backslashes and real surrogate pairs are fine."""
    body = (
        b'{"events": ['
        b'{"event": "a\\u0000", "timestamp": 1795000000000},'
        b'{"event": "e", "timestamp": 1795000000000, "properties": {"x": "\\u0000"}},'
        b'{"event": "e", "timestamp": 1795000000000, "properties": {"x": "\\ud83d"}},'
        b'{"event": "e", "timestamp": 1795000000000, "properties": {"x": "\\ude00\\ud83d\\ude00"}},'
        b'{"event": "e", "timestamp": 1795000000000, "context": {"\\u0000": 1}},'
        b'{"event": "e", "timestamp": 1795000000000, "k\\udbff": 1},'
        b'{"event": "e", "timestamp": "2026-11-01T00:00:00\\u0000"},'
        b'{"event": "e", "timestamp": 1795000000000, "userId": "\\ud800\\ud800"},'
        b'{"event": "ok", "timestamp": 1795000000000, "properties": {"x": "\\\\u0000 \\\\ud800"}},'
        b'{"event": "ok \\ud83d\\ude00", "timestamp": 1795000000000, "userId": "\\u00e9\\n"}'
        b"]}"
    )  # fmt: skip
    result = validate(decode_request(body).events, PROJECT, NOW)
    reason = "{} contains a NUL character or invalid Unicode".format
    assert result.errors == [
        {"index": 0, "reason": reason("event")},
        {"index": 1, "reason": reason("properties")},
        {"index": 2, "reason": reason("properties")},
        {"index": 3, "reason": reason("properties")},
        {"index": 4, "reason": reason("extras")},  # a stray key is reported as extras
        {"index": 5, "reason": reason("extras")},
        {"index": 6, "reason": reason("timestamp")},
        {"index": 7, "reason": reason("userId")},
    ]
    rows = lines_to_rows(result.data)
    assert rows[0][8] == '{"x": "\\\\u0000 \\\\ud800"}'  # as sent: backslash, then "u0000"
    assert (rows[1][2], rows[1][4]) == ("ok \U0001f600", "é\n")


def test_numeric_timestamps_below_1e11_are_epoch_seconds() -> None:
    """Epoch seconds never land in January 1970: 1e11 ms is 1973-03-03, and every time
    from 1900 to 2300 in seconds is below 1e11."""
    assert parse_timestamp(1_732_270_000) == 1_732_270_000_000
    assert parse_timestamp(1_732_270_000.123) == 1_732_270_000_123
    assert parse_timestamp(-2_208_988_800) == MIN_TIMESTAMP_MS  # 1900-01-01 in seconds
    with pytest.raises(ValueError, match="out of range"):
        parse_timestamp(99_999_999_999)  # seconds: year 5138
    assert parse_timestamp(100_000_000_000) == 100_000_000_000  # milliseconds from here
    assert one({"event": "e", "timestamp": 1_794_999_000})["timestamp"] == NOW - 1_000_000
    assert one({"event": "e", "timestamp": NOW - 5})["timestamp"] == NOW - 5
    _, errors = validate_rows([{"event": "e", "timestamp": 99_999_999_999}], PROJECT, NOW)
    assert errors == [{"index": 0, "reason": "timestamp out of range"}]
    skewed = one({"event": "e", "timestamp": 1_794_999_000}, sent_at=parse_timestamp(1_794_999_990))
    assert skewed["timestamp"] == NOW - 990_000  # sent 990 s after it happened


def test_a_repeated_client_id_in_one_request_is_rejected_not_dropped() -> None:
    """What the response counts as accepted is what is stored: the second event with an
    id (under any of its three names, any spelling of the UUID) is rejected."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    events = [
        {"event": "first", "timestamp": NOW, "uuid": a},
        {"event": "again", "timestamp": NOW, "event_id": a.upper()},
        {"event": "bad", "timestamp": "nope", "messageId": b},  # rejected: does not count
        {"event": "b", "timestamp": NOW, "messageId": "{" + b + "}"},
        {"event": "again", "timestamp": NOW, "uuid": b, "event_id": a},
        {"event": "minted", "timestamp": NOW},
        {"event": "minted", "timestamp": NOW},
    ]
    lines, errors, client_ids = validate_batch(events, PROJECT, NOW)
    assert errors == [
        {"index": 1, "reason": "duplicate id in batch"},
        {"index": 2, "reason": "timestamp invalid"},
        {"index": 4, "reason": "duplicate id in batch"},
    ]
    rows = lines_to_rows(b"".join(lines))
    assert [r[2] for r in rows] == ["first", "b", "minted", "minted"]
    assert client_ids == [(0, uuid.UUID(a).int), (1, uuid.UUID(b).int)]
    assert len({r[0] for r in rows}) == 4
