"""The write-ahead log on a real disk: its reader is its own test (write, cut anywhere,
read back what was whole), group commit, corruption, and the log under a real server
whose writes really fail."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from support import SLUICE, clickhouse_rows, events_with_ids, poll, request

from ingest.wal import (
    CORRUPT_DIR,
    HEADER_BYTES,
    RECORD_HEADER,
    Wal,
    WalLocked,
    WalStats,
    read_segment,
)

PROJECT = uuid.uuid4().int.to_bytes(16, "big")


def payload(i: int, events: int = 3) -> bytes:
    return b"".join(b'["line %d.%d"]\n' % (i, j) for j in range(events))


async def write_log(directory: Path, records: int, segments: int = 1) -> list[bytes]:
    """Write ``records`` records into ``segments`` segments through a real Wal."""
    wal = Wal(directory, 1 << 30)
    assert wal.open() == []
    ids = [uuid.uuid4().bytes for _ in range(segments)]
    waits = [wal.append(ids[i % segments], PROJECT, payload(i), i) for i in range(records)]
    await asyncio.gather(*waits)
    await wal.close()
    return ids


def test_cut_anywhere_reads_back_exactly_the_whole_records(tmp_path: Path) -> None:
    asyncio.run(write_log(tmp_path / "wal", 6))
    (path,) = sorted((tmp_path / "wal").glob("*.wal"))
    whole = read_segment(path)
    assert [r[1] for r in whole.records] == [payload(i) for i in range(6)]
    assert whole.torn == 0 and whole.corrupt is None and whole.events == 18
    data = path.read_bytes()
    ends = [HEADER_BYTES]
    for _, body in whole.records:
        ends.append(ends[-1] + RECORD_HEADER + 16 + len(body))
    assert ends[-1] == len(data)
    cut_file = tmp_path / "cut.wal"
    for cut in range(len(data)):
        cut_file.write_bytes(data[:cut])
        report = read_segment(cut_file)
        complete = sum(1 for end in ends[1:] if end <= cut)
        assert report.corrupt is None, cut
        if cut < HEADER_BYTES:
            assert (report.segment_id, report.records) == (None, []), cut
            continue
        assert [r[1] for r in report.records] == [payload(i) for i in range(complete)], cut
        assert report.torn == (0 if cut in ends else cut - ends[complete]), cut


def test_a_zero_filled_tail_is_the_end_not_torn_or_corrupt(tmp_path: Path) -> None:
    asyncio.run(write_log(tmp_path / "wal", 2))
    (path,) = sorted((tmp_path / "wal").glob("*.wal"))
    with open(path, "ab") as f:
        f.write(b"\0" * 4096)  # a file that grew before its data reached it
    report = read_segment(path)
    assert (len(report.records), report.torn, report.corrupt) == (2, 0, None)


def test_a_reused_file_ends_where_its_new_records_end(tmp_path: Path) -> None:
    """A released segment's file is reused by a later one: the old records after the new
    ones carry the old segment's tag, so they are never read as the new segment's."""
    big = b'["' + b"x" * 400_000 + b'"]\n'

    async def run() -> list:
        wal = Wal(tmp_path / "wal", 1 << 30)
        wal.open()
        old, new = uuid.uuid4().bytes, uuid.uuid4().bytes
        await asyncio.gather(*[wal.append(old, PROJECT, big, i) for i in range(4)])
        wal.release(old)  # 1.6 MB: kept for reuse
        await wal.append(new, PROJECT, payload(7), 0)
        await wal.close()
        return [p.name for p in (tmp_path / "wal").iterdir()]

    names = asyncio.run(run())
    (path,) = sorted((tmp_path / "wal").glob("*.wal"))
    assert path.stat().st_size > 1_600_000  # the old file, reused
    report = read_segment(path)
    assert [r[1] for r in report.records] == [payload(7)]
    assert (report.torn, report.corrupt) == (0, None)
    assert sorted(names) == sorted(["LOCK", path.name])  # no spare left behind at close


def test_a_bad_record_in_the_middle_moves_the_segment_aside_and_is_counted(
    tmp_path: Path,
) -> None:
    """The whole records before the bad one come back (they may have been acknowledged);
    the file, with what follows the bad record, is kept aside, counted, and survives the
    release of the recovered batch."""
    directory = tmp_path / "wal"
    asyncio.run(write_log(directory, 6, segments=2))
    first, second = sorted(directory.glob("*.wal"))  # records 0, 2, 4 and 1, 3, 5
    data = bytearray(first.read_bytes())
    second_record = HEADER_BYTES + RECORD_HEADER + 16 + len(payload(0))
    data[second_record + RECORD_HEADER + 16 + 2] ^= 0xFF  # inside record 2's row lines
    first.write_bytes(bytes(data))
    wal = Wal(directory, 1 << 30)
    found = wal.open()
    stats = wal.stats
    assert [[r[1] for r in seg.records] for seg in found] == [
        [payload(0)],
        [payload(1), payload(3), payload(5)],
    ]
    assert stats.corrupt_segments == 1 and stats.recovered_segments == 2
    aside = directory / CORRUPT_DIR / first.name
    assert not first.exists() and aside.exists()
    assert (stats.recovered_events, stats.torn_records) == (12, 0)
    for seg in found:
        assert seg.segment_id is not None
        wal.release(seg.segment_id)
    asyncio.run(wal.close())
    assert aside.exists() and not second.exists()  # the corrupt file is kept
    assert read_segment(aside).corrupt is not None


def test_group_commit_one_sync_covers_every_record_queued_meanwhile(tmp_path: Path) -> None:
    async def run() -> WalStats:
        wal = Wal(tmp_path / "wal", 1 << 30)
        wal.open()
        segment = uuid.uuid4().bytes
        # 200 requests arrive while the first sync runs: they share the second sync.
        await asyncio.gather(*[wal.append(segment, PROJECT, payload(i), i) for i in range(200)])
        await wal.close()
        return wal.stats

    stats = asyncio.run(run())
    assert (stats.records, stats.syncs) == (200, 2)


def test_one_process_per_log_directory(tmp_path: Path) -> None:
    first = Wal(tmp_path / "wal", 1 << 20)
    first.open()
    with pytest.raises(WalLocked, match="INGEST_WAL_DIR"):
        Wal(tmp_path / "wal", 1 << 20).open()
    asyncio.run(first.close())
    Wal(tmp_path / "wal", 1 << 20).open()  # released with the process (or close)


def test_a_failed_log_write_is_a_503_for_its_requests_and_shows_in_health(
    start_server, project, tmp_path: Path
) -> None:
    """A real failing disk: the server's files may not grow past 400 KB, so the log
    write that crosses it fails with EFBIG. That request gets 503 (not acknowledged)
    and is not stored; the next request starts a new segment and succeeds; every 202'd
    event lands exactly once."""
    _, token = project
    server = start_server(INGEST_FLUSH_INTERVAL="1h", INGEST_FLUSH_EVENTS="100000",
                          INGEST_EVENT_BUFFER="100000", file_size_limit=400_000)  # fmt: skip
    props = {"blob": "x" * 1500}
    accepted: list[str] = []
    refused: list[str] = []
    for _ in range(20):  # ~50 KB per request: the 8th or so crosses 400 KB
        events = events_with_ids(30, properties=props)
        resp = server.post({"token": token, "events": events})
        assert resp.status in (202, 503), resp.body
        if resp.status == 503:
            assert resp.json() == {"error": "could not write the events to disk; retry"}
            assert resp.headers["Retry-After"] == "5"
            refused += [e["uuid"] for e in events]
            health = server.healthz()
            assert health.status == 503
            assert health.json()["wal"]["failing"] is True
            assert health.json()["wal"]["write_failures"] == 1
            metrics = request(server.url + "/metrics").body.decode()
            assert "sluice_wal_write_failures_total 1.0" in metrics
            break
        accepted += [e["uuid"] for e in events]
    assert refused and accepted
    after = events_with_ids(30, properties=props)
    assert server.post({"token": token, "events": after}).status == 202  # a new segment
    accepted += [e["uuid"] for e in after]
    assert server.healthz().json()["wal"]["failing"] is False
    assert server.stop() == 0, server.logs()
    rows = clickhouse_rows(tmp_path / "data" / "clickhouse",
                           "SELECT toString(event_id), count() FROM events_raw_v1 "
                           "GROUP BY event_id")  # fmt: skip
    assert dict(rows) == {i: 1 for i in accepted}


def test_a_log_cut_mid_record_boots_and_lands_the_whole_records(
    start_server, project, tmp_path: Path
) -> None:
    _, token = project
    data = tmp_path / "data"
    server = start_server(INGEST_FLUSH_INTERVAL="1h", INGEST_FLUSH_EVENTS="100000",
                          INGEST_EVENT_BUFFER="100000")  # fmt: skip
    sent = [events_with_ids(10) for _ in range(5)]
    for events in sent:
        assert server.post({"token": token, "events": events}).status == 202
    server.signal(signal.SIGKILL)
    server.wait()
    (segment,) = sorted((data / "wal").glob("*.wal"))
    size = segment.stat().st_size
    os.truncate(segment, size - 100)  # the last request's record, cut short
    backup = tmp_path / "segment.copy"
    shutil.copy(segment, backup)
    shown = subprocess.run([*SLUICE, "wal", "status", "--json"], capture_output=True, text=True,
                           env={**os.environ, "DATA_DIR": str(data)}, check=True)  # fmt: skip
    status = json.loads(shown.stdout)
    assert [(s["requests"], s["events"], s["state"]) for s in status["segments"]] == [
        (4, 40, f"tail of {read_segment(backup).torn} bytes being written, or torn")
    ]
    assert (status["events"], status["corrupt"]) == (40, [])

    again = start_server(data_dir=data)
    poll(
        lambda: "sluice_wal_torn_records_total 1.0" in request(again.url + "/metrics").body.decode()
    )
    poll(lambda: again.healthz().json()["buffer"]["pending"] == 0)
    assert again.stop() == 0, again.logs()
    assert not list((data / "wal").glob("*.wal"))  # released once stored
    recovered = again.log_events("wal_recovered")
    assert [(r["events"], r["torn_records"]) for r in recovered] == [(40, 1)]
    rows = clickhouse_rows(data / "clickhouse",
                           "SELECT toString(event_id), count() FROM events_raw_v1 "
                           "GROUP BY event_id")  # fmt: skip
    assert dict(rows) == {e["uuid"]: 1 for events in sent[:4] for e in events}
    assert read_segment(backup).torn > 0
