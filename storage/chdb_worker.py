"""The child process that owns the embedded ClickHouse directory.

``sluice serve`` runs the embedded engine here rather than in a thread of its own: the
engine's work (parsing, sorting, compressing, merging) and any Python around it would
otherwise share the GIL with the event loop (measured with clickhouse-connect's row
encoding in a thread: ingest halved and p99 went to tens of milliseconds). In a child
process it runs on the other core.

The ingest path's batches arrive as files of row lines (``insert_file``: the parent
writes ``<directory>/.sluice-spool/*.jsonl`` and this process deletes each once
inserted); only the path crosses the pipe. Dead-letter replays take the same path.

Protocol, over the child's stdin/stdout: frames of an 8-byte little-endian length and a
pickle. Requests are ``(id, op, args, kwargs)``; replies ``(id, ok, value)``, where a
failed call's value is ``(message, transient, code)`` from
:func:`storage.clickhouse.classify`. The first reply (id 0) says whether the directory
could be opened.

Requests run concurrently, in two lanes of threads, each thread with its own client
(chdb serialises the calls of one client, never those of two): inserts
(``insert_file``) on :data:`INSERT_THREADS` threads, queries and commands on
:data:`QUERY_THREADS`. So a read of the stats API or a rollup fold that takes a second
no longer holds up the flushes queued behind it, and batches handed over together are
inserted together (measured in bench/run.py's sustained phase: see the README's
Performance section). Replies come back as calls finish, matched by id; a caller that
needs an order awaits one call before making the next.

The child ignores SIGINT/SIGTERM (the parent's shutdown still needs it to flush) and
exits when its stdin closes. When the parent is killed (SIGKILL, OOM) the kernel kills
the child at once (``PR_SET_PDEATHSIG``), even in the middle of an insert, so the
directory is released for a server started right after; ClickHouse writes each part
atomically, so an insert cut short leaves nothing half-stored (the batch is still in the
parent's write-ahead log and is replayed under its token).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

_HEADER = struct.Struct("<Q")
# The engine's work (inserts, background merges on several threads) yields the CPU to
# the HTTP process: its threads run under SCHED_IDLE (Linux; inherited by every thread
# the engine starts later), so they use idle cores and never preempt the event loop.
# Measured at 1,269 req/s (half the stored saturating rate) with merges running: request
# p99 14-29 ms at normal priority, 5-12 ms at nice 10-19 (event-loop stalls of 4-10 ms,
# 19-35 per 10 s), 4.3-4.5 ms under SCHED_IDLE (1 stall). The price is paid only when
# the CPU is saturated: storing then gets what accepting leaves (stored saturating rate
# ~2,500 -> ~1,900 req/s; landed 160k events/s), and the buffer's 503s shed the load.
# Where SCHED_IDLE is unavailable the engine runs at nice ENGINE_NICE.
ENGINE_NICE = 10
# Threads per lane (see the module docstring). Inserts: as many as the flusher hands over
# at once (ingest.flush.MAX_IN_FLIGHT); queries and commands: reads beyond these wait
# here, in order, not in the insert lane.
INSERT_THREADS = 4
QUERY_THREADS = 4


def _yield_cpu() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(ENGINE_NICE)


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the parent dies (Linux), and exit now
    if the parent is already gone (it died before the request took effect)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    parent = os.environ.get("SLUICE_PARENT_PID")
    if parent and os.getppid() != int(parent):
        os._exit(1)


def read_frame(stream: BinaryIO) -> bytes | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    return data if len(data) == size else None


def write_frame(stream: BinaryIO, value: Any) -> None:
    data = pickle.dumps(value, protocol=5)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _quote(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _dispatch(client: Any, op: str, args: tuple, kwargs: dict) -> Any:
    if op == "insert_file":
        from storage.clickhouse import JSON_LINE_SETTINGS

        table, path, names, token = args
        settings = {"insert_deduplication_token": token, **JSON_LINE_SETTINGS}
        try:
            client.command(
                f"INSERT INTO {table} ({', '.join(names)}) FROM INFILE {_quote(path)} "
                f"SETTINGS {', '.join(f'{k} = {_quote(v)}' for k, v in settings.items())} "
                "FORMAT JSONCompactEachRow"
            )
        finally:
            os.unlink(path)
        return None
    if op == "command":
        return client.command(*args, **kwargs)
    if op == "query":
        return list(client.query(*args, **kwargs).result_rows)
    raise ValueError(f"unknown operation {op!r}")


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    _die_with_parent()
    _yield_cpu()  # before the engine starts its threads: they inherit the policy
    # Frames go to the original stdout; anything else printed lands on stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = os.fdopen(0, "rb", buffering=1 << 20)
    path = sys.argv[1]

    from storage.clickhouse import classify

    try:
        import clickhouse_connect

        os.makedirs(path, exist_ok=True)
        client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
        # clickhouse-connect imports pandas (installed with chdb) on the first insert:
        # ~0.5 s. Pay it now rather than stall the first flush.
        from clickhouse_connect.driver import options

        _ = options.pd
    except Exception as exc:
        write_frame(out, (0, False, (" ".join(str(exc).split())[:500], False, None)))
        return 1
    write_frame(out, (0, True, "ready"))
    clients = [client]
    local = threading.local()
    write_lock = threading.Lock()

    def own_client() -> Any:
        mine = getattr(local, "client", None)
        if mine is None:
            mine = local.client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
            clients.append(mine)
        return mine

    def serve(req_id: int, op: str, args: tuple, kwargs: dict) -> None:
        try:
            reply = (req_id, True, _dispatch(own_client(), op, args, kwargs))
        except Exception as exc:
            err = classify(exc)
            reply = (req_id, False, (str(err), err.transient, err.code))
        with write_lock:
            write_frame(out, reply)

    inserts = ThreadPoolExecutor(INSERT_THREADS, thread_name_prefix="insert")
    queries = ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="query")
    try:
        while (frame := read_frame(inp)) is not None:
            req_id, op, args, kwargs = pickle.loads(frame)
            lane = inserts if op == "insert_file" else queries
            lane.submit(serve, req_id, op, args, kwargs)
    finally:
        inserts.shutdown(wait=True)
        queries.shutdown(wait=True)
        for each in clients:
            with contextlib.suppress(Exception):
                each.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
