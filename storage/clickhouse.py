"""ClickHouse behind one small interface, with two real transports.

* ``chdb:///path`` — the embedded engine (chdb) through clickhouse-connect's *sync*
  client. That client cannot be awaited, so every call runs on one dedicated worker
  thread: the event loop never blocks, and calls are serialised (the chdb client takes
  one lock per call anyway). One process can hold one chdb directory; another process
  opening the same directory fails with a "held by another process" error.
* ``http(s)://user:pass@host:port/db`` — a ClickHouse server through clickhouse-connect's
  async client. The client is created lazily and recreated after a failure, so Sluice
  boots and accepts while the server is unreachable.

Enters: SQL and column-oriented insert batches. Leaves: results, or
:class:`ClickHouseError` with ``transient`` telling callers whether retrying the same
data can ever succeed (connection refused/reset, timeouts, 5xx, "too many parts" are
transient; the server rejecting the rows themselves is permanent).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlparse

import clickhouse_connect
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

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
_ERROR_NAME = re.compile(r"\(([A-Z_]{4,})\)")
# clickhouse-connect's own defaults are 10 s to connect and 300 s per request: far too
# long to notice a dead server. Either can be overridden in the URL's query string.
DEFAULT_CONNECT_TIMEOUT = 5
DEFAULT_SEND_RECEIVE_TIMEOUT = 30


class ClickHouseError(Exception):
    """A ClickHouse call failed. ``transient`` = retrying the same data may succeed."""

    def __init__(self, message: str, *, transient: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.code = code


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

    async def command(self, sql: str, settings: dict[str, Any] | None = None) -> Any:
        raise NotImplementedError

    async def query_rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        raise NotImplementedError

    async def insert_columns(
        self,
        table: str,
        columns: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        column_types: Sequence[str],
        dedup_token: str,
    ) -> int:
        """Insert one column-oriented block with an insert deduplication token.

        Returns the number of rows sent. Raises :class:`ClickHouseError`.
        """
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class EmbeddedClickHouse(ClickHouse):
    """chdb through the sync client, every call on one worker thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.description = f"chdb://{path}"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb")
        self._client: Any = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._client = await loop.run_in_executor(self._executor, self._open_sync)
        except Exception as exc:
            text = str(exc)
            if "Cannot lock file" in text or "Another server instance" in text:
                raise ClickHouseError(
                    f"the embedded ClickHouse at {self.path} is held by another process "
                    "(a running 'sluice serve'?); stop it, or talk to the data through it",
                    transient=False,
                ) from None
            raise classify(exc) from exc

    def _open_sync(self) -> Any:
        import os

        os.makedirs(self.path, exist_ok=True)
        return clickhouse_connect.get_client(dsn=f"chdb://{self.path}")

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._client is None:
            raise ClickHouseError("embedded ClickHouse is closed", transient=True)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        except Exception as exc:
            raise classify(exc) from exc

    async def command(self, sql: str, settings: dict[str, Any] | None = None) -> Any:
        return await self._run(self._client.command, sql, settings=settings)

    async def query_rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        result = await self._run(self._client.query, sql, parameters=parameters)
        return list(result.result_rows)

    async def insert_columns(
        self,
        table: str,
        columns: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        column_types: Sequence[str],
        dedup_token: str,
    ) -> int:
        await self._run(
            self._client.insert,
            table,
            columns,
            column_names=list(column_names),
            column_type_names=list(column_types),
            column_oriented=True,
            settings={"insert_deduplication_token": dedup_token},
        )
        return len(columns[0]) if columns else 0

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, client.close)
        self._executor.shutdown(wait=True)


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

    async def command(self, sql: str, settings: dict[str, Any] | None = None) -> Any:
        return await self._call("command", sql, settings=settings)

    async def query_rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        result = await self._call("query", sql, parameters=parameters)
        return list(result.result_rows)

    async def insert_columns(
        self,
        table: str,
        columns: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        column_types: Sequence[str],
        dedup_token: str,
    ) -> int:
        await self._call(
            "insert",
            table,
            columns,
            column_names=list(column_names),
            column_type_names=list(column_types),
            column_oriented=True,
            settings={"insert_deduplication_token": dedup_token},
        )
        return len(columns[0]) if columns else 0

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


async def open_clickhouse(url: str) -> ClickHouse:
    """Open the store named by ``CLICKHOUSE_URL``.

    The embedded engine is opened now (failure is a boot error); a server is contacted on
    first use, so an unreachable server does not stop Sluice from starting.
    """
    if url.startswith("chdb://"):
        parsed = urlparse(url)
        path = parsed.netloc + parsed.path  # chdb:///abs/path, or chdb://relative/path
        if not path or path in ("/memory", "/:memory:"):
            raise ClickHouseError("CLICKHOUSE_URL: chdb needs an on-disk path", transient=False)
        store = EmbeddedClickHouse(path)
        await store.open()
        return store
    return HttpClickHouse(url)
