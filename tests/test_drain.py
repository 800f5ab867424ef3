"""The flusher and the drain, in process, on a real embedded ClickHouse and a real Postgres.

These drive single passes deterministically; the chaos suite does the same through
real server processes and real faults.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import orjson
from support import free_port

from ingest.buffer import Buffer, Refused
from ingest.deadletter import DeadLetter
from ingest.drain import BACKOFF_CAP, Drain, backoff
from ingest.flush import Flusher
from ingest.ids import uuid_str
from ingest.metrics import Metrics
from ingest.rows import decode_payload, encode_payload
from ingest.state import State
from ingest.validate import validate_batch, validate_rows
from storage.clickhouse import ClickHouse, HttpClickHouse
from storage.postgres import create_pool


def make_rows(n: int, project: int | None = None, name: str = "e") -> list[tuple]:
    project = project or uuid.uuid4().int
    now = int(time.time() * 1000)
    rows, errors = validate_rows(
        [{"event": name, "timestamp": now - i} for i in range(n)], project, now
    )
    assert not errors
    return rows


def make_lines(n: int, project: int) -> list[bytes]:
    now = int(time.time() * 1000)
    lines, errors, _ = validate_batch([{"event": "e", "timestamp": now}] * n, project, now)
    assert not errors
    return lines


async def admit(buffer: Buffer, lines: list[bytes], project: int) -> bool:
    try:
        await buffer.admit(b"".join(lines), len(lines), project)
    except Refused:
        return False
    return True


def drain_for(pool, ch, usage=None, limit: int = 10) -> tuple[Drain, State, Metrics]:
    state, metrics = State(), Metrics()
    kwargs = {"usage_hook": usage} if usage else {}
    drain = Drain(pool, DeadLetter(pool), ch, state, metrics, Buffer(1000, 100),
                  batch_limit=limit, **kwargs)  # fmt: skip
    return drain, state, metrics


async def count(ch: ClickHouse, where: str = "1") -> int:
    return int((await ch.query_rows(f"SELECT count() FROM events_raw_v1 WHERE {where}"))[0][0])


async def test_flusher_stores_a_batch_and_reports_usage_once_per_event(pool, ch) -> None:
    usage: Counter[str] = Counter()
    buffer, state, metrics = Buffer(1000, 100), State(), Metrics()
    flusher = Flusher(buffer, ch, DeadLetter(pool), state, metrics, flush_interval=1,
                      usage_hook=lambda p, n: usage.update({p: n}))  # fmt: skip
    a, b = uuid.uuid4().int, uuid.uuid4().int
    assert await admit(buffer, make_lines(150, a), a) and await admit(buffer, make_lines(30, b), b)
    await flusher.flush_pending(reason="test")
    assert buffer.pending == 0
    assert await count(ch) == 180
    assert usage == {uuid_str(a): 150, uuid_str(b): 30}


async def test_buffer_cuts_batches_at_flush_events_without_splitting_a_request() -> None:
    buffer = Buffer(1000, 100)
    a, b, c = uuid.uuid4().int, uuid.uuid4().int, uuid.uuid4().int
    sent = make_lines(60, a) + make_lines(30, b) + make_lines(20, c)
    assert await admit(buffer, sent[:60], a) and await admit(buffer, sent[60:90], b)
    assert await admit(buffer, sent[90:], c)  # 90 + 20 > 100: a batch of its own
    assert not await admit(buffer, make_lines(891, a), a)  # all or nothing: 110 + 891 > 1000
    first, second = await buffer.take(), await buffer.take()
    assert await buffer.take() is None
    assert (first.count, first.projects) == (90, {a: 60, b: 30})
    assert (second.count, second.projects) == (20, {c: 20})
    assert first.id != second.id  # each batch its own deduplication token
    assert first.data() + second.data() == b"".join(sent)  # every line once, in order
    assert buffer.queued == 0 and buffer.pending == 110  # durable only once released
    big = make_lines(150, a)
    assert await admit(buffer, big, a)  # larger than a batch: one batch, never split
    whole = await buffer.take(full_only=True)
    assert (whole.count, whole.data()) == (150, b"".join(big))


async def test_drain_replays_a_parked_batch_once_keeps_received_at_and_reports_usage(
    pool, ch
) -> None:
    usage: Counter[str] = Counter()
    rows = make_rows(40)
    batch_id = str(uuid.uuid4())
    await DeadLetter(pool).park(batch_id, rows, "ClickHouse unavailable: test")
    drain, state, _ = drain_for(pool, ch, lambda p, n: usage.update({p: n}))
    state.set_fatal("test")
    assert await drain.pass_once() == (1, False)
    assert await pool.fetchval("SELECT count(*) FROM failed_events") == 0
    stored = await ch.query_rows(
        "SELECT toString(event_id), toUnixTimestamp64Milli(received_at) FROM events_raw_v1"
    )
    assert sorted(stored) == sorted((uuid_str(r[0]), r[7]) for r in rows)
    assert usage == {uuid_str(rows[0][1]): 40}
    assert state.fatal is False  # a successful replay clears fatal
    # The same batch parked again (a lost acknowledgement) replays as a no-op.
    await DeadLetter(pool).park(batch_id, rows, "again")
    await drain.pass_once()
    assert await count(ch) == 40


async def test_transient_failure_backs_off_and_never_quarantines(pool) -> None:
    dead = HttpClickHouse(f"http://127.0.0.1:{free_port()}/default?connect_timeout=1")
    try:
        await DeadLetter(pool).park(str(uuid.uuid4()), make_rows(5), "first")
        drain, _, _ = drain_for(pool, dead)
        for attempt in range(2, 7):
            await pool.execute("UPDATE failed_events SET next_attempt_at = now()")
            assert await drain.pass_once() == (1, True)
            row = await pool.fetchrow("SELECT * FROM failed_events")
            assert row["attempt_count"] == attempt
            assert row["quarantined_at"] is None
            assert "ClickHouse unavailable" in row["last_error"]
            assert row["next_attempt_at"] > datetime.now(UTC)
    finally:
        await dead.close()


def test_backoff_grows_and_is_capped() -> None:
    assert 0.8 <= backoff(1) <= 1.2
    assert 6.4 <= backoff(4) <= 9.6
    assert all(backoff(n) <= BACKOFF_CAP * 1.2 for n in range(1, 200))
    assert backoff(60) >= BACKOFF_CAP * 0.8


async def test_a_payload_with_ids_in_another_form_lands_by_the_rows_path(pool, ch) -> None:
    """Ids Sluice did not write that way (upper case, no dashes): not the fast path's
    lines, the pipeline rows' path, which stores them canonical; the usage is counted."""
    rows = make_rows(3)
    doc = orjson.loads(encode_payload(rows))
    for row in doc["rows"]:
        row[0], row[1] = row[0].upper(), row[1].replace("-", "")
    await pool.execute(
        "INSERT INTO failed_events (id, batch, event_count, last_error) "
        "VALUES ($1, $2, 3, 'edited by hand')",
        uuid.uuid4(),
        orjson.dumps(doc),
    )
    used: list[tuple[str, int]] = []
    drain, _, _ = drain_for(pool, ch, usage=lambda p, n: used.append((p, n)))
    assert await drain.pass_once() == (1, False)
    stored = await ch.query_rows(
        "SELECT toString(event_id), toString(project_id) FROM events_raw_v1"
    )
    assert sorted(stored) == sorted((uuid_str(r[0]), uuid_str(r[1])) for r in rows)
    assert used == [(uuid_str(rows[0][1]), 3)]
    assert await pool.fetchval("SELECT count(*) FROM failed_events") == 0


async def test_a_poison_event_is_bisected_out_and_quarantined_alone(pool, ch) -> None:
    await ch.command("ALTER TABLE events_raw_v1 ADD CONSTRAINT no_poison CHECK event != 'poison'")
    project = uuid.uuid4().int
    rows = make_rows(99, project)
    poison = make_rows(1, project, name="poison")
    batch = rows[:37] + poison + rows[37:]
    row_id = uuid.uuid4()
    await DeadLetter(pool).park(str(row_id), batch, "ClickHouse error 469 VIOLATED_CONSTRAINT")
    drain, _, _ = drain_for(pool, ch)
    assert await drain.pass_once() == (1, False)
    assert await count(ch) == 99
    assert await count(ch, "event = 'poison'") == 0
    left = await pool.fetchrow("SELECT * FROM failed_events")
    assert left["id"] == row_id and left["quarantined_at"] is not None
    assert left["event_count"] == 1
    assert decode_payload(left["batch"]) == poison
    assert "VIOLATED_CONSTRAINT" in left["last_error"]
    # Quarantined rows are not replayed again.
    assert await drain.pass_once() == (0, False)
    await drain.refresh_depth()
    assert (drain.state.dlq_rows, drain.state.dlq_events) == (0, 0)


async def test_two_drains_sharing_postgres_replay_each_row_once(pool, ch, database_url) -> None:
    dlq = DeadLetter(pool)
    parked = [make_rows(20) for _ in range(30)]
    for rows in parked:
        await dlq.park(str(uuid.uuid4()), rows, "x")
    other_pool = await create_pool(database_url, retry_for=5)
    try:
        first, _, m1 = drain_for(pool, ch, limit=3)
        second, _, m2 = drain_for(other_pool, ch, limit=3)

        async def drain_all(d: Drain) -> None:
            while (await d.pass_once())[0]:
                pass

        await asyncio.gather(drain_all(first), drain_all(second))
    finally:
        await other_pool.close()
    replayed = [m.events_replayed._value.get() for m in (m1, m2)]
    assert sum(replayed) == 600  # no row was replayed by both
    assert await count(ch) == 600
    assert await pool.fetchval("SELECT count(*) FROM failed_events") == 0


async def test_a_20000_event_batch_replayed_through_the_dead_letter_table_is_deduplicated(
    pool, ch
) -> None:
    """The flush stores a batch; its acknowledgement is lost, so the same batch (same id)
    is parked and replayed by the drain: ClickHouse sees the same token and drops the
    replay — the raw table holds each event once without FINAL. Both paths must form
    the same block, which is why the drain inserts row lines like the flush."""
    project = uuid.uuid4().int
    buffer, state, metrics = Buffer(50_000, 20_000), State(), Metrics()
    flusher = Flusher(buffer, ch, DeadLetter(pool), state, metrics, flush_interval=1)
    for _ in range(2):  # two requests of 10,000 (the most one request may hold)
        assert await admit(buffer, make_lines(10_000, project), project)
    batch = await buffer.take()
    assert batch is not None and batch.count == 20_000
    assert await flusher._flush(batch, "test")
    assert await count(ch) == 20_000
    from ingest.rows import lines_to_rows

    await DeadLetter(pool).park(batch.id, lines_to_rows(batch.data()), "ack lost", retry_in=0)
    drain, _, _ = drain_for(pool, ch)
    assert await drain.pass_once() == (1, False)
    assert await pool.fetchval("SELECT count(*) FROM failed_events") == 0
    assert await count(ch) == 20_000  # not 40,000: the replay was a no-op
    # A different batch id for the same rows is a new insert (the token is what counts).
    await DeadLetter(pool).park(str(uuid.uuid4()), lines_to_rows(batch.data())[:10], "x")
    await drain.pass_once()
    assert await count(ch) == 20_010
