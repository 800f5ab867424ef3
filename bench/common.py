"""What the bench's phases share: processes (a real `sluice serve`, wrk), bodies, counts.

Imported by bench/run.py (every phase) and bench/read.py (the read phase); run as
scripts, both find it beside them (the script's directory is on sys.path).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BENCH = ROOT / "bench"
WORK = BENCH / ".data"  # generated: bodies, data dirs, logs (git-ignored)
RESULTS = BENCH / "results"
PY = sys.executable
SLUICE = [PY, str(ROOT / "cmd" / "sluice.py")]
ENDPOINT = "/api/v1/ingest/events"


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def rss_mb(pid: int, children_too: bool = True) -> float:
    """Resident memory of a server: its process and its children (the embedded
    ClickHouse worker), so the figure is what the machine pays."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children_too and children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0.0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


# --- bodies ----------------------------------------------------------------------------

PATHS = ["/", "/pricing", "/docs/getting-started", "/blog/launch-week", "/signup"]


def make_event(i: int, valid: bool = True) -> dict:
    event = {
        "event": random.choice(["page_view", "button_click", "signup", "search"]),
        "timestamp": "2026-11-22T10:00:00.123Z",
        "anonymousId": f"anon-{uuid.uuid4().hex[:16]}",
        "userId": f"user-{i % 997}",
        "sessionId": f"sess-{i % 97:04d}",
        "properties": {
            "path": random.choice(PATHS),
            "referrer": "https://www.example.com/search?q=event+ingest",
            "title": "Sluice — event ingest",
            "utm_source": "newsletter",
            "screen_width": 1440,
            "screen_height": 900,
            "plan": "pro",
        },
        "context": {"library": {"name": "sluice-js", "version": "1.4.2"}, "locale": "en-GB"},
    }
    if not valid:
        del event["timestamp"]
    return event


def write_body(path: Path, n: int, invalid_every: int = 0) -> int:
    events = [make_event(i, valid=not (invalid_every and i % invalid_every == 0)) for i in range(n)]
    path.write_bytes(json.dumps({"events": events}).encode())
    return sum(1 for e in events if "timestamp" in e)


# --- processes ---------------------------------------------------------------------------


class Sluice:
    def __init__(self, data_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        full = {**os.environ, "DATA_DIR": str(data_dir), "PORT": str(self.port),
                "LOG_FORMAT": "json", "LOG_LEVEL": "info", **env}  # fmt: skip
        self.log = open(WORK / f"sluice-{self.port}.log", "wb")
        self.proc = subprocess.Popen([*SLUICE, "serve"], env=full, stdout=self.log,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        wait_http(self.url + "/healthz")

    def metric(self, name: str) -> int:
        return int(self.metric_value(name))

    def metric_names(self) -> set[str]:
        with urllib.request.urlopen(self.url + "/metrics") as resp:
            lines = resp.read().decode().splitlines()
        return {line.split()[0].split("{")[0] for line in lines if line and line[0] != "#"}

    def metric_value(self, name: str) -> float:
        with urllib.request.urlopen(self.url + "/metrics") as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0

    def accepted(self) -> int:
        """Events the server answered 2xx for (its own counter), once it has settled.

        wrk stops counting at the end of its run while requests are still in flight, so
        its 202 count is a lower bound; the server's count is exact — but only once the
        requests in flight when wrk stopped have been answered (aiohttp finishes a
        handler whose client left): read it until it stops changing. Loss is judged
        against this count, and the client's count must not exceed it."""
        deadline = time.monotonic() + 30
        last = self.metric("sluice_events_accepted_total")
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = self.metric("sluice_events_accepted_total")
            if now == last:
                return now
            last = now
        raise RuntimeError("the accepted counter did not settle within 30 s")

    def wait_flushed(self, accepted: int, timeout: float = 120) -> float:
        """Return the time at which the flusher has written all ``accepted`` events."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.metric("sluice_events_flushed_total") >= accepted:
                return time.monotonic()
            time.sleep(0.02)
        raise RuntimeError(f"{accepted} accepted events not flushed within {timeout}s")

    def stop(self) -> float:
        """SIGTERM; return when the process has exited (its buffer flushed)."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(120)
        self.log.close()
        if code != 0:
            raise RuntimeError(f"sluice exited {code}; see {self.log.name}")
        return time.monotonic()


def wrk(url: str, body: Path, seconds: float, *, connections: int = 64, token: str = "",
        gz: bool = False) -> dict:  # fmt: skip
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "10s",
           "-s", str(BENCH / "post.lua"), url + ENDPOINT, "--", str(body),
           "gzip" if gz else "plain", token]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    result = json.loads(line[len("WRKJSON ") :])
    secs = result["duration_us"] / 1e6
    result["rps"] = result["requests"] / secs
    result["rps_202"] = result["s202"] / secs
    result["errors"] = (result["other"] + result["connect_errors"] + result["read_errors"]
                        + result["write_errors"] + result["timeouts"])  # fmt: skip
    return result


def clickhouse_count(data_dir: Path) -> int:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{data_dir / 'clickhouse'}")
    try:
        return int(client.command("SELECT count() FROM events_raw_v1"))
    finally:
        client.close()


def create_token(data_dir: Path) -> str:
    env = {**os.environ, "DATA_DIR": str(data_dir), "LOG_LEVEL": "warning"}
    out = subprocess.run([*SLUICE, "projects", "create", "bench", "--json"], env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return json.loads(out)["token"]


def combine(runs: list[dict]) -> dict:
    """Several wrk runs as one: totals, and rates over their summed durations."""
    total = {key: sum(r[key] for r in runs) for key in
             ("requests", "s202", "s503", "errors", "duration_us")}  # fmt: skip
    secs = total["duration_us"] / 1e6
    return {**total, "rps": total["requests"] / secs, "rps_202": total["s202"] / secs,
            "runs": runs}  # fmt: skip
