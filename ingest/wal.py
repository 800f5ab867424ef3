"""The write-ahead log: accepted events are on disk before the 2xx; one writer owns fsync.

Enters: a request's row lines and its project id (:meth:`Wal.append`, on the event loop),
into the segment the buffer is filling. Leaves: a future that resolves once the record is
durable (written and ``fdatasync``-ed); at boot, the segments a dead process left
(:func:`recover`), for the buffer to flush first. A segment is deleted
(:meth:`Wal.release`) once ClickHouse stored its batch or the dead-letter table holds it.
On failure: a failed write or sync fails the futures of every record it covered (those
requests are answered 503: not acknowledged), the records are cut off the file again,
and the segment takes no more records; the next group starts a new segment.

Format (version 1), the whole of it::

    segment file  <seq:016x>.wal, in INGEST_WAL_DIR
    header        b"SLUICEWAL1\n\0" (12 bytes) + segment id (16 bytes, a UUIDv7)
    record*       length (u32 LE) | crc32 (u32 LE) | tag (u32 LE) | payload (length bytes)
    payload       project id (16 bytes) | row lines (ingest.rows), one request's events
    crc32         zlib.crc32 over the length field and the payload
    tag           crc32(segment id) | 1: the same in every record of one segment
    end           the first record whose tag is not the segment's (zeros, or the old
                  records of a reused file), or the end of the file

A segment is one batch: the buffer cuts a new segment when the current one reaches
``INGEST_FLUSH_EVENTS`` (or at a flush interval), and the segment id is the batch's
ClickHouse insert deduplication token and its ``failed_events`` id. So a segment replayed
after a crash carries the token its first flush had: if that flush landed just before
the crash, the replay is a no-op.

Reading (:func:`read_segment`) is its own test: a record of the segment whose length runs
past the end of the file, or whose checksum fails with no whole record of the segment
after it, is a *torn tail* — a crash mid-write, never acknowledged — and is dropped
(counted). A bad record followed by a whole one is *corruption*: the whole records
before it are replayed (they may have been acknowledged; after a power loss, pages of
the unsynced tail can reach the disk out of order and look like this), and the file is
moved to ``corrupt/`` in the log directory, kept, logged and counted, so that the
records after the bad one are never dropped silently; ``sluice wal status`` lists it.

Released segment files are reused (at most :data:`RECYCLE_KEEP`; see
:meth:`Wal.release`): overwriting written blocks syncs without a journal commit.

Group commit: requests never sync on their own. Records queue on the event loop; one
writer thread writes everything queued with one ``pwritev(…, RWF_DSYNC)`` per file (a
write and a data sync in one system call; ``fdatasync`` where that does not apply), then
resolves the group's future; what arrived meanwhile forms the next
group. Under load a sync covers hundreds of requests (measured figures in the README).
The checksum is computed on the loop when the record is queued (~8 µs for 46 KB): the
writer thread then takes the GIL back once per group — each time it may wait up to a
switch interval behind a busy loop.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ingest.logs import Repeats

log = structlog.get_logger("sluice.wal")

MAGIC = b"SLUICEWAL1\n\0"
HEADER_BYTES = len(MAGIC) + 16
_RECORD = struct.Struct("<III")  # length, crc32, the segment's tag
RECORD_HEADER = _RECORD.size
_LENGTH = struct.Struct("<I")
OVERHEAD = RECORD_HEADER + 16  # bytes a record adds to its row lines (header, project id)
RECYCLE_KEEP = 2  # released segment files kept for reuse
RECYCLE_MIN_BYTES = 1 << 20  # smaller ones are not worth keeping
RECYCLED = "recycle-"


def segment_tag(segment_id: bytes) -> int:
    """The 4 bytes every record of a segment carries (never 0): a record with another
    tag is not this segment's — zeros, or what a recycled file held before."""
    return zlib.crc32(segment_id) | 1


SUFFIX = ".wal"
CORRUPT_DIR = "corrupt"
LOCK_FILE = "LOCK"
_IOV_MAX = 1024


class WalError(OSError):
    """A write or sync of the log failed: the records it covered are not durable."""


class WalLocked(RuntimeError):
    """Another process holds the log directory."""


@dataclass(eq=False)
class _File:
    """The writer thread's view of one segment file."""

    seq: int
    segment_id: bytes
    path: Path
    fd: int = -1
    size: int = 0  # bytes known durable
    closed: bool = False  # sealed (or broken): no more records
    kept: bool = False  # a corrupt segment set aside: released without deleting the file


@dataclass
class WalStats:
    """Counters read by /metrics and /healthz."""

    syncs: int = 0
    records: int = 0  # records made durable
    bytes: int = 0  # live bytes on disk (segments not yet released)
    failures: int = 0
    failing: bool = False  # the last write or sync failed (cleared by the next success)
    last_error: str | None = None
    torn_records: int = 0
    corrupt_segments: int = 0
    recovered_segments: int = 0
    recovered_events: int = 0
    sync_seconds: float = 0.0  # total time groups took, queueing on the writer included
    sync_seconds_max: float = 0.0


class Wal:
    """The log directory: segment files, the group-commit writer, release.

    Call :meth:`append` and :meth:`release` from the event loop only;
    every file operation runs on the single writer thread, in order."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.stats = WalStats()
        self.on_failure: Callable[[list[Any]], None] = lambda items: None
        self._lock_fd = -1
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-wal")
        self._files: dict[bytes, _File] = {}
        self._tags: dict[bytes, int] = {}
        self._recycled: list[Path] = []  # writer thread only
        self._next_recycled = 0
        self._next_seq = 0
        self._queue: list[tuple[bytes, bytes, bytes, bytes, Any]] = []
        self._group: asyncio.Future[None] | None = None
        self._busy = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Event | None = None
        self._repeats = Repeats()  # a full disk fails every write: a line a minute

    # --- boot -----------------------------------------------------------------------

    def open(self) -> list[RecoveredSegment]:
        """Lock the directory and read what a previous process left. Blocking: call at
        boot, before the loop serves requests. Raises :class:`WalLocked`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise WalLocked(
                f"INGEST_WAL_DIR {self.directory} is in use by another process "
                "(each instance needs a log directory of its own)"
            ) from None
        for leftover in self.directory.glob(f"{RECYCLED}*"):
            leftover.unlink(missing_ok=True)
        found = recover(self.directory, self.stats)
        for seg in found:
            self._files[seg.segment_id] = _File(seg.seq, seg.segment_id, seg.path,
                                                size=seg.size, closed=True,
                                                kept=seg.kept)  # fmt: skip
            self.stats.bytes += seg.size - HEADER_BYTES
        seqs = [seq for seq, _ in list_segments(self.directory)]
        self._next_seq = max(seqs, default=-1) + 1
        return found

    # --- the hot path -----------------------------------------------------------------

    def append(self, segment_id: bytes, project: bytes, data: bytes, item: Any) -> asyncio.Future:
        """Queue one record for ``segment_id`` (created on its first record). Returns the
        future of the group that will make it durable; ``item`` is handed back to
        :attr:`on_failure` if that group fails."""
        # The record's header is made here, on the loop (~8 µs for a 46 KB request): in
        # the writer thread zlib would release and re-take the GIL once per record, and
        # with a busy loop each re-take waits up to a switch interval (5 ms).
        length = len(project) + len(data)
        tag = self._tags.get(segment_id)
        if tag is None:
            tag = self._tags[segment_id] = segment_tag(segment_id)
        crc = zlib.crc32(data, zlib.crc32(project, zlib.crc32(_LENGTH.pack(length))))
        self._queue.append((segment_id, _RECORD.pack(length, crc, tag), project, data, item))
        self.stats.bytes += len(data) + OVERHEAD
        group = self._group
        if group is None:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            group = self._group = self._loop.create_future()
        if not self._busy:
            self._start()
        return group

    def full(self, nbytes: int) -> bool:
        """True when ``nbytes`` more would exceed ``INGEST_WAL_MAX_BYTES``."""
        return self.stats.bytes + nbytes > self.max_bytes

    def _start(self) -> None:
        items, self._queue = self._queue, []
        group, self._group = self._group, None
        self._busy = True
        loop = self._loop
        assert loop is not None and group is not None
        started = time.monotonic()
        done = self._executor.submit(self._write, items)
        done.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._finished, f, group, items, started)
        )

    def _finished(self, done: Any, group: asyncio.Future, items: list, started: float) -> None:
        self._busy = False
        took = time.monotonic() - started
        self.stats.sync_seconds += took
        if took > self.stats.sync_seconds_max:
            self.stats.sync_seconds_max = took
        exc = done.exception()
        if exc is None:
            self.stats.failing = False
            self.stats.syncs += 1
            self.stats.records += len(items)
            if not group.done():
                group.set_result(None)
        else:
            self.stats.failures += 1
            self.stats.failing = True
            self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
            self.stats.bytes -= sum(len(it[3]) + OVERHEAD for it in items)
            if (repeats := self._repeats.due("write")) is not None:
                log.error("wal_write_failed", error=self.stats.last_error, records=len(items),
                          repeats=repeats)  # fmt: skip
            self.on_failure([it[4] for it in items])  # before anyone sees the error
            if not group.done():
                group.set_exception(WalError(str(exc)))
                group.exception()  # retrieved here; every waiter still gets it
        if self._queue:
            self._start()
        elif self._idle is not None:
            self._idle.set()

    def _write(self, items: list[tuple[bytes, bytes, bytes, bytes, Any]]) -> None:
        """Writer thread: append every queued record, one writev and one fdatasync per
        file touched. On failure, cut the files back to their durable size and close
        them for good (the caller starts new segments)."""
        touched: dict[_File, list[bytes]] = {}
        created: list[_File] = []
        try:
            for segment_id, head, project, data, _ in items:
                f = self._files.get(segment_id)
                if f is None:
                    f = self._create(segment_id)
                    created.append(f)
                if f.closed:
                    raise WalError(f"segment {f.path.name} takes no more records")
                touched.setdefault(f, []).extend((head, project, data))
            for f, parts in touched.items():
                _write_durably(f.fd, parts, f.size)
            if created:
                _fsync_dir(self.directory)
        except OSError:
            for f in touched:
                f.closed = True
                try:
                    os.ftruncate(f.fd, f.size)
                    os.fdatasync(f.fd)
                except OSError:
                    pass  # the records stay on disk: replayed, never acknowledged
            raise
        for f, parts in touched.items():
            f.size += sum(len(p) for p in parts)

    def _create(self, segment_id: bytes) -> _File:
        seq = self._next_seq
        self._next_seq += 1
        path = self.directory / f"{seq:016x}{SUFFIX}"
        f = _File(seq, segment_id, path)
        if self._recycled:  # blocks already allocated and written: see Wal.release
            os.replace(self._recycled.pop(), path)
            f.fd = os.open(path, os.O_WRONLY)
        else:
            f.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._files[segment_id] = f
        os.pwrite(f.fd, MAGIC + segment_id, 0)  # made durable with the first records
        f.size = HEADER_BYTES
        return f

    # --- after the hot path -------------------------------------------------------------

    def release(self, segment_id: bytes) -> None:
        """A store holds the segment's batch: delete its file (in the writer thread, after
        any write still queued for it) — or keep it for reuse by a later segment.

        Why reuse: appending to a file changes its size, so each sync of a new segment
        commits the filesystem's journal, where it waits behind every other file's
        pending writes (ClickHouse's parts, on the same disk). Overwriting blocks that
        are already allocated and written needs no journal commit (measured: a 46 KB
        write+sync p50 0.27 → 0.18 ms, p99 1.0 → 0.34 ms). A reused file still holds its
        old records after the new ones: they carry the old segment's tag, so reading
        stops there."""
        self._tags.pop(segment_id, None)
        f = self._files.get(segment_id)
        if f is not None:
            self.stats.bytes -= f.size - HEADER_BYTES
            self._executor.submit(self._delete, f)

    def _delete(self, f: _File) -> None:
        f.closed = True
        if f.fd >= 0:
            os.close(f.fd)
            f.fd = -1
        self._files.pop(f.segment_id, None)
        if f.kept:
            return
        try:
            if len(self._recycled) < RECYCLE_KEEP and f.path.stat().st_size >= RECYCLE_MIN_BYTES:
                spare = self.directory / f"{RECYCLED}{self._next_recycled}"
                self._next_recycled += 1
                os.replace(f.path, spare)
                self._recycled.append(spare)
                return
            os.unlink(f.path)
        except FileNotFoundError:
            pass
        except OSError as exc:  # it is replayed at the next boot, deduplicated by its token
            log.warning("wal_delete_failed", segment=f.path.name, error=str(exc)[:200])

    async def flushed(self) -> None:
        """Wait until every queued record has been written (or has failed)."""
        while self._busy or self._queue:
            self._idle = asyncio.Event()
            await self._idle.wait()

    async def close(self) -> None:
        """Finish queued work, close files, release the directory lock."""
        await self.flushed()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_files)
        self._executor.shutdown(wait=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _close_files(self) -> None:
        for f in self._files.values():
            if f.fd >= 0:
                os.close(f.fd)
                f.fd = -1
        for spare in self._recycled:
            spare.unlink(missing_ok=True)
        self._recycled.clear()


_DSYNC = getattr(os, "RWF_DSYNC", 0)  # Linux ≥ 4.7: write and sync in one system call


def _write_durably(fd: int, parts: list[bytes], offset: int) -> None:
    """Write ``parts`` at ``offset`` and make them durable. A group that fits one call
    is written by ``pwritev`` with ``RWF_DSYNC``: one system call, so the writer thread
    gives the GIL up and takes it back once per group instead of twice (measured: each
    take can wait up to a switch interval behind a busy event loop). Otherwise, and
    after a short write, ``fdatasync`` covers the whole file."""
    pending = [memoryview(p) for p in parts if p]
    calls = 0
    while pending:
        batch = pending[:_IOV_MAX]
        whole = len(pending) <= _IOV_MAX and calls == 0
        written = os.pwritev(fd, batch, offset, _DSYNC if whole else 0)
        calls += 1
        offset += written
        if whole and written == sum(len(b) for b in batch) and _DSYNC:
            return  # written and synced by that one call
        while written:
            if written >= len(pending[0]):
                written -= len(pending.pop(0))
            else:
                pending[0] = pending[0][written:]
                written = 0
    os.fdatasync(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading ------------------------------------------------------------------------------


@dataclass
class SegmentReport:
    """What :func:`read_segment` found in one file."""

    path: Path
    seq: int
    segment_id: bytes | None
    records: list[tuple[bytes, bytes]]  # (project id, row lines)
    size: int  # bytes of whole records, header included
    torn: int = 0  # bytes of a torn tail (0: none)
    corrupt: str | None = None  # why the segment is corrupt
    kept: bool = False  # moved aside for inspection: never deleted by Sluice

    @property
    def events(self) -> int:
        return sum(data.count(b"\n") for _, data in self.records)


RecoveredSegment = SegmentReport


def read_segment(path: Path) -> SegmentReport:
    """Every whole record of a segment file, and what (if anything) is wrong with it."""
    raw = path.read_bytes()
    try:
        seq = int(path.stem, 16)
    except ValueError:
        seq = -1
    if len(raw) < HEADER_BYTES:
        # The crash came while the header was written: no record was ever acknowledged.
        return SegmentReport(path, seq, None, [], 0, torn=len(raw))
    if raw[: len(MAGIC)] != MAGIC:
        return SegmentReport(path, seq, None, [], 0, corrupt="not a Sluice log segment")
    report = SegmentReport(path, seq, raw[len(MAGIC) : HEADER_BYTES], [], HEADER_BYTES)
    tag = segment_tag(report.segment_id or b"")
    view = memoryview(raw)
    offset, end = HEADER_BYTES, len(raw)

    def whole_record_at(at: int) -> bool:
        if end - at < RECORD_HEADER:
            return False
        length, crc, found = _RECORD.unpack_from(raw, at)
        stop = at + RECORD_HEADER + length
        return found == tag and length >= 16 and stop <= end and _crc_ok(view, at, length, crc)

    while offset < end:
        if end - offset < RECORD_HEADER:
            if any(view[offset:end]):
                report.torn = end - offset  # a header cut short
            break
        length, crc, found = _RECORD.unpack_from(raw, offset)
        if found != tag:
            break  # zeros, or a recycled file's old records: this segment ends here
        stop = offset + RECORD_HEADER + length
        if length < 16 or stop > end:
            report.torn = end - offset  # runs past the end: cut short by a crash
            break
        if not _crc_ok(view, offset, length, crc):
            if whole_record_at(stop):
                report.corrupt = f"bad record at byte {offset} of {end}"
            else:
                report.torn = stop - offset  # the last record, never completed
            break
        report.records.append((bytes(view[offset + RECORD_HEADER : offset + RECORD_HEADER + 16]),
                               bytes(view[offset + RECORD_HEADER + 16 : stop])))  # fmt: skip
        offset = stop
        report.size = offset
    return report


def _crc_ok(view: memoryview, at: int, length: int, crc: int) -> bool:
    payload = view[at + RECORD_HEADER : at + RECORD_HEADER + length]
    return zlib.crc32(payload, zlib.crc32(_LENGTH.pack(length))) == crc


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """The segment files of a log directory, oldest first."""
    out = []
    for path in directory.glob(f"*{SUFFIX}"):
        try:
            out.append((int(path.stem, 16), path))
        except ValueError:
            continue
    return sorted(out)


def recover(directory: Path, stats: WalStats) -> list[SegmentReport]:
    """Read every segment a previous process left: whole records come back to be
    flushed; torn tails are dropped and counted; a corrupt segment is moved aside (its
    whole records before the bad one still come back); empty segments are deleted."""
    found = []
    for _, path in list_segments(directory):
        report = read_segment(path)
        if report.torn:
            stats.torn_records += 1
            log.warning(
                "wal_torn_tail",
                segment=path.name,
                bytes=report.torn,
                detail="a record cut short by a crash mid-write: never acknowledged",
            )
        if report.corrupt is not None:
            stats.corrupt_segments += 1
            aside = directory / CORRUPT_DIR
            aside.mkdir(exist_ok=True)
            os.replace(path, aside / path.name)
            report.path, report.kept = aside / path.name, True
            log.error("wal_corrupt_segment", segment=path.name, reason=report.corrupt,
                      whole_records_replayed=len(report.records), moved_to=str(report.path),
                      detail="the records after the bad one are not replayed; inspect them "
                             "with 'sluice wal status'")  # fmt: skip
            if not report.records:
                continue
        if not report.records:
            path.unlink()
            continue
        stats.recovered_segments += 1
        stats.recovered_events += report.events
        found.append(report)
    return found
