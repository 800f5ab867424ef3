"""structlog configuration, done once at the edge (``serve`` / the CLI).

JSON lines on stderr in production (``LOG_FORMAT=json``), a readable console format for
humans (``LOG_FORMAT=console``). Standard-library logging (asyncpg, aiohttp, pgserver)
goes through the same output at WARNING and above.

JSON lines are written in batches (:class:`BufferedBytesLogger`): a line at warning or
above is written at once with everything before it; info and debug lines within
:data:`FLUSH_SECONDS` or until 64 KiB have gathered, and at exit. One ``write`` per
request line cost ~10 µs of the event loop's time under load (measured), about 3% of a
100-event request. The price: a process killed with SIGKILL loses at most the last
``FLUSH_SECONDS`` of info lines.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, BinaryIO

import orjson
import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FLUSH_SECONDS = 0.2
FLUSH_BYTES = 64 * 1024


class BufferedBytesLogger:
    """A structlog logger for rendered ``bytes`` lines, written in batches (see the
    module docstring). Thread-safe; one flusher thread per logger."""

    def __init__(self, file: BinaryIO, interval: float = FLUSH_SECONDS) -> None:
        self._file = file
        self._lock = threading.Lock()  # guards _pending: held for an append, not a write
        self._write_lock = threading.Lock()  # keeps batches in order
        self._pending = bytearray()
        self._wake = threading.Event()
        self._interval = interval
        threading.Thread(target=self._run, name="sluice-log-flush", daemon=True).start()
        atexit.register(self.flush)

    def _add(self, message: bytes, now: bool) -> None:
        with self._lock:
            self._pending += message
            self._pending += b"\n"
            if not now and len(self._pending) < FLUSH_BYTES:
                if not self._wake.is_set():  # set() takes a lock: once per interval
                    self._wake.set()
                return
        self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._pending:
                return
            data = bytes(self._pending)
            self._pending.clear()
            self._write_lock.acquire()  # before the next batch can be taken
        try:
            self._file.write(data)
            self._file.flush()
        except (OSError, ValueError):  # stderr closed: nothing sensible to do
            pass
        finally:
            self._write_lock.release()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(self._interval)
            self.flush()

    def msg(self, message: bytes) -> None:
        self._add(message, now=False)

    def urgent(self, message: bytes) -> None:
        self._add(message, now=True)

    debug = info = msg
    warning = warn = error = err = critical = exception = fatal = failure = urgent
    log = msg


class _BufferedLoggerFactory:
    def __init__(self, file: BinaryIO) -> None:
        self._logger = BufferedBytesLogger(file)

    def __call__(self, *args: Any) -> BufferedBytesLogger:
        return self._logger


class IsoTimeStamper:
    """``timestamp`` as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it
    (``2026-11-22T13:16:49.096082Z``), with the date and time formatted once per second:
    0.4 µs a line instead of 1.4 µs."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: Any, name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            moment = datetime.fromtimestamp(second, UTC)
            self._prefix, self._second = moment.strftime("%Y-%m-%dT%H:%M:%S"), second
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


class Repeats:
    """Bounded repetition for a condition that recurs (a store down, a disk full): the
    first occurrence of each ``key`` is logged, then at most one line per ``every``
    seconds, carrying how many occurrences it stands for (``repeats``). A drain retrying
    every 2 s through an hour-long outage writes 60 lines, not 1,800."""

    def __init__(self, every: float = 60.0, clock: Any = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}

    def due(self, key: str) -> int | None:
        """``None``: stay quiet. Otherwise log now, with ``repeats=`` the returned count
        (occurrences since the last line, this one included)."""
        now = self._clock()
        last, count = self._seen.get(key, (-float("inf"), 0))
        count += 1
        if now - last >= self.every:
            self._seen[key] = (now, 0)
            return count
        self._seen[key] = (last, count)
        return None


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    numeric = _LEVELS[level]
    shared = [structlog.processors.add_log_level, IsoTimeStamper()]
    if fmt == "json":
        processors = [
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory: Any = _BufferedLoggerFactory(sys.stderr.buffer)
    else:
        processors = [*shared, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, force=True)
    logging.getLogger("pgserver").setLevel(logging.ERROR)
