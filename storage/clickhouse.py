"""ClickHouse behind one small interface, with two real transports.

* ``chdb:///path`` — the embedded engine (chdb) through clickhouse-connect's *sync*
  client, run in a child process that owns the directory (:mod:`storage.chdb_worker`):
  the event loop never blocks, and the client's Python-side work does not compete with
  request handling for the GIL. Calls are served one at a time, in order. One process
  can hold one chdb directory; opening one held elsewhere fails with a "held by
  another process" error.
* ``http(s)://user:pass@host:port/db`` — a ClickHouse server through clickhouse-connect's
  async client. The client is created lazily and recreated after a failure, so Sluice
  boots and accepts while the server is unreachable.

Enters: SQL, and ``JSONCompactEachRow`` lines with their column names and an insert
deduplication token (ClickHouse parses them; the format of the values is the caller's
business). Leaves: results, or
:class:`ClickHouseError` with ``transient`` telling callers whether retrying the same
data can ever succeed (connection refused/reset, timeouts, 5xx, "too many parts" are
transient; the server rejecting the rows themselves is permanent).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pickle
import re
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import clickhouse_connect
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from storage.urls import mask_url

# Error codes meaning "these rows can never be stored as they are": retrying is useless,
# so the dead-letter drain bisects the batch and quarantines the offenders.
PERMANENT_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        131,  # TOO_LARGE_STRING_SIZE
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
        469,  # VIOLATED_CONSTRAINT
    }
)
_CODE = re.compile(r"Code:\s*(\d+)")
_HEADER = struct.Struct("<Q")  # frame length, as in storage.chdb_worker
_ROOT = str(Path(__file__).resolve().parent.parent)
_ERROR_NAME = re.compile(r"\(([A-Z_]{4,})\)")
# clickhouse-connect's own defaults are 10 s to connect and 300 s per request: far too
# long to notice a dead server. Either can be overridden in the URL's query string.
DEFAULT_CONNECT_TIMEOUT = 5
DEFAULT_SEND_RECEIVE_TIMEOUT = 30
# Settings of every insert, pinned so that a server's profile cannot change them:
# * insert_deduplicate / async_insert: an insert's deduplication token must be honoured
#   (a replay of a batch that landed is a no-op); an asynchronous insert would be
#   deduplicated by other rules, or acknowledged before it is stored;
# * a batch whose events span more than 100 months (a backfill) is stored, not refused —
#   ClickHouse's default refusal would be classified transient and retried forever;
# * inserts go first: ClickHouse pauses a running query of a lower priority (a larger
#   number; 0 = none) while one of a higher priority runs. Reads ask for a lower one
#   (ingest.queries.READ_PRIORITY), so a dashboard's queries take what the inserts leave
#   instead of stalling them (measured with the bench's looping reader: ingest kept 57%
#   of its stored rate without priorities, 95% with them; see the README).
INSERT_PRIORITY = 1
INSERT_SETTINGS = {
    "insert_deduplicate": 1,
    "async_insert": 0,
    "throw_on_max_partitions_per_insert_block": 0,
    "priority": INSERT_PRIORITY,
}
# And of every row-line insert: a JSON object bound for a String column is stored as its
# text (the default in ClickHouse ≥ 23, set so a server's profile cannot change it); and
# one parsing thread per insert — measured in the accept phase, the engine process spent
# ~18% less CPU for the same events (48% → 38-39% of a core at ~3,800 req/s): the
# parallel parser's segmenting and thread hand-offs cost more than they save at 20,000
# rows.
JSON_LINE_SETTINGS = {
    "input_format_json_read_objects_as_strings": 1,
    "input_format_parallel_parsing": 0,
    **INSERT_SETTINGS,
}
SPOOL_DIR = ".sluice-spool"  # in the embedded engine's directory: row lines being inserted
LOCK_WAIT = 10.0  # seconds open() waits for a directory the engine of a killed server held


class ClickHouseError(Exception):
    """A ClickHouse call failed. ``transient`` = retrying the same data may succeed.

    The message never carries a password (:func:`storage.urls.mask_url`)."""

    def __init__(self, message: str, *, transient: bool, code: int | None = None) -> None:
        super().__init__(mask_url(message))
        self.transient = transient
        self.code = code
        self.held = False  # the embedded directory is locked by another process


def classify(exc: BaseException) -> ClickHouseError:
    """Turn any exception from a ClickHouse call into a :class:`ClickHouseError`."""
    if isinstance(exc, ClickHouseError):
        return exc
    text = " ".join(str(exc).split())[:500] or type(exc).__name__
    if isinstance(exc, ValueError | TypeError | OverflowError | UnicodeError):
        # clickhouse-connect could not encode a value: the data itself is bad.
        return ClickHouseError(f"client could not encode rows: {text}", transient=False)
    match = _CODE.search(text)
    code = int(match.group(1)) if match else None
    if isinstance(exc, DatabaseError) and not isinstance(exc, OperationalError):
        name = _ERROR_NAME.search(text)
        label = f"{code} {name.group(1)}" if code is not None and name else str(code)
        return ClickHouseError(
            f"ClickHouse error {label}: {text}", transient=code not in PERMANENT_CODES, code=code
        )
    return ClickHouseError(f"ClickHouse unavailable: {text}", transient=True, code=code)


class ClickHouse:
    """The interface the pipeline uses. Subclasses are real transports only."""

    description: str = "clickhouse"

    async def command(
        self,
        sql: str,
        settings: dict[str, Any] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> Any:
        """Run a statement that returns no rows (DDL, ``INSERT … SELECT``); ``parameters``
        bind ``{name:Type}`` placeholders server-side."""
        raise NotImplementedError

    async def query_rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        raise NotImplementedError

    async def insert_lines(
        self, table: str, parts: Sequence[bytes], column_names: Sequence[str], dedup_token: str
    ) -> None:
        """Insert ``JSONCompactEachRow`` text given in ``parts`` of whole lines (one JSON
        array per line, values in
        ``column_names`` order; a JSON object bound for a String column is stored as its
        text) with an insert deduplication token. ClickHouse parses it; nothing is
        encoded in Python. Raises :class:`ClickHouseError`."""
        raise NotImplementedError

    async def close(self, timeout: float = 30.0) -> None:
        """Finish what was asked within ``timeout`` seconds, then let go."""
        raise NotImplementedError


class EmbeddedClickHouse(ClickHouse):
    """chdb in a child process (:mod:`storage.chdb_worker`) that owns the directory.

    Calls are pickled over a pipe and served in order by the child's sync client; row
    lines travel as a file in the directory's spool (see :meth:`insert_lines`). If the
    child dies, calls in flight fail as transient (their batches park) and the next call
    starts a new child.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.description = f"chdb://{path}"
        self._spool = Path(path) / SPOOL_DIR
        self._spooled = itertools.count()
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 1
        self._start_lock = asyncio.Lock()
        self._closed = False

    async def open(self, wait_for_lock: float = LOCK_WAIT) -> None:
        """Start the engine process. A directory held by the engine of a server that
        was killed a moment ago is released within milliseconds (the engine dies with
        its parent): wait up to ``wait_for_lock`` seconds for it."""
        deadline = asyncio.get_running_loop().time() + wait_for_lock
        while True:
            try:
                await self._ensure_started()
                break
            except ClickHouseError as exc:
                if not exc.held or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(0.2)
        # Files of inserts a killed server never finished: a copy of a batch whose
        # original is in that server's write-ahead log (replayed from there).
        self._spool.mkdir(exist_ok=True)
        for stale in self._spool.glob("*.jsonl"):
            stale.unlink(missing_ok=True)

    async def _ensure_started(self) -> asyncio.subprocess.Process:
        async with self._start_lock:
            if self._proc is not None and self._proc.returncode is None and self._reader:
                if not self._reader.done():
                    return self._proc
            if self._closed:
                raise ClickHouseError("embedded ClickHouse is closed", transient=True)
            env = {
                **os.environ,
                "PYTHONPATH": _ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "SLUICE_PARENT_PID": str(os.getpid()),
            }
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "storage.chdb_worker", self.path,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            )  # fmt: skip
            assert proc.stdout is not None
            try:
                _, ok, value = await _read_reply(proc.stdout)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                await proc.wait()
                raise ClickHouseError(
                    f"embedded ClickHouse worker exited at start ({proc.returncode})",
                    transient=True,
                ) from exc
            if not ok:
                await proc.wait()
                message = value[0]
                held = "Cannot lock file" in message or "Another server instance" in message
                if held:
                    message = (
                        f"the embedded ClickHouse at {self.path} is held by another process "
                        "(a running 'sluice serve'?); stop it, or talk to the data through it"
                    )
                error = ClickHouseError(message, transient=False)
                error.held = held
                raise error
            self._proc = proc
            self._reader = asyncio.create_task(self._read_loop(proc), name="chdb-reader")
            return proc

    async def _read_loop(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while True:
                req_id, ok, value = await _read_reply(proc.stdout)
                future = self._pending.pop(req_id, None)
                if future is None or future.done():
                    continue  # its caller gave up (shutdown deadline)
                if ok:
                    future.set_result(value)
                else:
                    message, transient, code = value
                    future.set_exception(ClickHouseError(message, transient=transient, code=code))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        code = await proc.wait()
        error = ClickHouseError(
            f"embedded ClickHouse worker exited ({code}); it restarts on the next call",
            transient=True,
        )
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        proc = await self._ensure_started()
        assert proc.stdin is not None
        req_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        data = pickle.dumps((req_id, op, args, kwargs), protocol=5)
        try:
            proc.stdin.write(_HEADER.pack(len(data)))
            proc.stdin.write(data)
            await proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            self._pending.pop(req_id, None)
            raise ClickHouseError(
                f"embedded ClickHouse worker gone: {exc}", transient=True
            ) from exc
        return await future

    async def command(
        self,
        sql: str,
        settings: dict[str, Any] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> Any:
        return await self._call("command", sql, settings=settings, parameters=parameters)

    async def query_rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        return await self._call("query", sql, parameters=parameters)

    async def insert_lines(
        self, table: str, parts: Sequence[bytes], column_names: Sequence[str], dedup_token: str
    ) -> None:
        # The lines go to the engine as a file, written by a worker thread (the write
        # releases the GIL): a pipe would move a 10 MB batch 64 KiB per turn of the
        # event loop, which under load left the engine idle (measured: 50 ms inserts
        # took 500-700 ms end to end). The engine deletes the file once inserted.
        file = self._spool / f"{os.getpid()}-{next(self._spooled)}.jsonl"
        await asyncio.get_running_loop().run_in_executor(None, _write_parts, file, parts)
        try:
            await self._call("insert_file", table, str(file), list(column_names), dedup_token)
        except BaseException:
            file.unlink(missing_ok=True)
            raise

    async def close(self, timeout: float = 30.0) -> None:
        """Let the child finish what it was asked, then stop it (it exits on EOF); past
        ``timeout`` it is killed (ClickHouse's parts are written atomically)."""
        self._closed = True
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=max(0.01, timeout))
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


_IOV_MAX = 1024  # buffers per writev call (Linux's IOV_MAX)


def _write_parts(path: Path, parts: Sequence[bytes]) -> None:
    """Write ``parts`` to a new file in as few system calls as possible: this runs in a
    worker thread, and each call gives the GIL back to a busy event loop and waits up to
    a switch interval (5 ms) for it again (measured: one write per request chunk made a
    20,000-event flush take 200-450 ms)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        pending = [memoryview(part) for part in parts if part]
        while pending:
            written = os.writev(fd, pending[:_IOV_MAX])
            while written:  # drop what was written, including a partial buffer
                if written >= len(pending[0]):
                    written -= len(pending.pop(0))
                else:
                    pending[0] = pending[0][written:]
                    written = 0
    finally:
        os.close(fd)


async def _read_reply(stream: asyncio.StreamReader) -> tuple[int, bool, Any]:
    header = await stream.readexactly(_HEADER.size)
    (size,) = _HEADER.unpack(header)
    return pickle.loads(await stream.readexactly(size))


class HttpClickHouse(ClickHouse):
    """A ClickHouse server through clickhouse-connect's async client (created lazily)."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        query = parse_qs(parsed.query)
        self._kwargs: dict[str, Any] = {}
        if "connect_timeout" not in query:
            self._kwargs["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
        if "send_receive_timeout" not in query:
            self._kwargs["send_receive_timeout"] = DEFAULT_SEND_RECEIVE_TIMEOUT
        self._url = url
        netloc = parsed.hostname or ""
        if parsed.port:
            netloc += f":{parsed.port}"
        self.description = f"{parsed.scheme}://{netloc}{parsed.path}"  # no credentials
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def _get(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await clickhouse_connect.get_async_client(
                        dsn=self._url, query_retries=0, **self._kwargs
                    )
                except Exception as exc:
                    raise classify(exc) from exc
        return self._client

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        client = await self._get()
        try:
            return await getattr(client, name)(*args, **kwargs)
        except Exception as exc:
            err = classify(exc)
            if err.transient and isinstance(exc, OperationalError):
                await self._reset(client)
            raise err from exc

    async def _reset(self, client: Any) -> None:
        if self._client is client:
            self._client = None
            try:
                await client.close()
            except Exception:  # the connection is already broken; nothing to save
                pass

    async def command(
        self,
        sql: str,
        settings: dict[str, Any] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> Any:
        return await self._call("command", sql, settings=settings, parameters=parameters)

    async def query_rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        result = await self._call("query", sql, parameters=parameters)
        return list(result.result_rows)

    async def insert_lines(
        self, table: str, parts: Sequence[bytes], column_names: Sequence[str], dedup_token: str
    ) -> None:
        await self._call(
            "raw_insert",
            table,
            list(column_names),
            insert_block=b"".join(parts),
            settings={"insert_deduplication_token": dedup_token, **JSON_LINE_SETTINGS},
            fmt="JSONCompactEachRow",
        )

    async def close(self, timeout: float = 30.0) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), max(0.01, timeout))


def embedded_path(url: str) -> str | None:
    """The directory of a ``chdb://`` URL (``chdb:///abs/path``, ``chdb://relative/path``),
    or None for a ClickHouse server."""
    if not url.startswith("chdb://"):
        return None
    parsed = urlparse(url)
    return parsed.netloc + parsed.path


async def open_clickhouse(url: str) -> ClickHouse:
    """Open the store named by ``CLICKHOUSE_URL``.

    The embedded engine is opened now (failure is a boot error); a server is contacted on
    first use, so an unreachable server does not stop Sluice from starting.
    """
    path = embedded_path(url)
    if path is not None:
        if not path or path in ("/memory", "/:memory:"):
            raise ClickHouseError("CLICKHOUSE_URL: chdb needs an on-disk path", transient=False)
        store = EmbeddedClickHouse(path)
        await store.open()
        return store
    return HttpClickHouse(url)
