"""Test helpers: real stores and real server processes, never stand-ins.

* :class:`Postgres` — a pgserver cluster the tests own, so they can stop and restart
  it to make the real thing fail.
* :class:`Server` — a ``sluice serve`` subprocess on a free port.
* :func:`clickhouse_rows` — read an embedded ClickHouse directory *after* the server
  holding it stopped (one process holds a chdb directory at a time).
* :func:`poll` — wait for a condition with a deadline (never a bare sleep).
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SLUICE = [sys.executable, str(ROOT / "cmd" / "sluice.py")]


def poll(check: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def db_name(dsn: str) -> str:
    """The database a DSN names (pgserver DSNs put the socket path in the query)."""
    return urllib.parse.urlparse(dsn).path.lstrip("/")


def dead_clickhouse_url() -> str:
    """A ClickHouse URL on a closed port: every call is refused at once."""
    return f"http://127.0.0.1:{free_port()}/default?connect_timeout=1&send_receive_timeout=2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A real Postgres (pgserver binaries) the test controls."""

    def __init__(self, path: Path) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

        self.path = path
        self.server = pgserver.get_server(path, cleanup_mode="delete")
        self.base_uri = self.server.get_uri()

    def dsn(self, database: str = "postgres") -> str:
        return self.base_uri.replace("/postgres?", f"/{database}?")

    def psql(self, sql: str, database: str = "postgres") -> str:
        from pgserver._commands import POSTGRES_BIN_PATH

        out = subprocess.run(
            [str(POSTGRES_BIN_PATH / "psql"), "-X", "-A", "-t", "-q", self.dsn(database)],
            input=sql,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name}")
        return name

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(list(args), pgdata=self.path, user=self.server.system_user, timeout=30)

    def stop(self) -> None:
        """Stop the server (fast shutdown: open connections are cut)."""
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        with self.server._lock:
            self.server.ensure_postgres_running()

    def close(self) -> None:
        try:
            self.start()
        except Exception:
            pass
        self.server.cleanup()


def clickhouse_rows(path: Path, sql: str) -> list[tuple]:
    """Run ``sql`` on the embedded ClickHouse at ``path`` once no server holds it.

    A server's engine runs in a child process that exits when the server does; after a
    SIGKILL it notices a moment later, so opening is retried briefly."""
    import clickhouse_connect

    def opened():
        try:
            return clickhouse_connect.get_client(dsn=f"chdb://{path}")
        except Exception as exc:
            if "lock" in str(exc).lower():
                return None
            raise

    client = poll(opened, timeout=30)
    try:
        return list(client.query(sql).result_rows)
    finally:
        client.close()


class Response:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str,
    *,
    method: str = "GET",
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    gzip_body: bool = False,
    timeout: float = 30.0,
) -> Response:
    """One HTTP request on a fresh connection; any status comes back as a Response."""
    hdrs = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    if gzip_body and data is not None:
        data = gzip.compress(data)
        hdrs["Content-Encoding"] = "gzip"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, resp.read(), dict(resp.headers))
    except urllib.error.HTTPError as err:
        return Response(err.code, err.read(), dict(err.headers))


def _file_size_limit(limit: int) -> Callable[[], None]:
    """A disk that fails for real: no file the process writes may grow past ``limit``
    bytes (RLIMIT_FSIZE); a write past it fails with EFBIG (Python ignores SIGXFSZ)."""

    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


class Server:
    """A real ``sluice serve`` process (the checkout's, unless ``command`` says which)."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str],
        file_size_limit: int | None = None,
        *,
        command: Sequence[str] = SLUICE,
        cwd: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "DATA_DIR": str(data_dir),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            **env,
        }
        self.log_path = data_dir / f"server-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*command, "serve"], env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=cwd,
            preexec_fn=None if file_size_limit is None else _file_size_limit(file_size_limit),
        )  # fmt: skip

    @property
    def ingest_url(self) -> str:
        return self.url + "/api/v1/ingest/events"

    def wait_ready(self, timeout: float = 60.0) -> Server:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.logs()}")
            try:
                return request(self.url + "/healthz", timeout=2).status in (200, 503)
            except OSError:
                return False

        poll(up, timeout=timeout)
        return self

    def post(self, body: Any, **kw: Any) -> Response:
        return request(self.ingest_url, method="POST", body=body, **kw)

    def healthz(self) -> Response:
        return request(self.url + "/healthz")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            self._log.close()
        return code

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == name:
                out.append(entry)
        return out


def event(name: str = "page_view", **fields: Any) -> dict[str, Any]:
    return {"event": name, "timestamp": "2026-11-01T12:00:00.000Z", **fields}


def events_with_ids(n: int, **fields: Any) -> list[dict[str, Any]]:
    return [event(uuid=str(uuid.uuid4()), **fields) for _ in range(n)]
