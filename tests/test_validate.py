"""The lenient per-event contract (pure function: no stores needed)."""

from __future__ import annotations

import json
import uuid

import pytest

from ingest.validate import (
    COLUMNS,
    MAX_EVENT_BYTES,
    lines_to_rows,
    parse_timestamp,
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
