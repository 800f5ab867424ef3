"""The ``sluice`` command line: ``serve``, ``migrate``, ``projects``, ``tokens``, ``keys``,
``dlq``, ``wal``, and the read side's clients ``events tail`` and ``stats``.

Exit codes: 0 success, 1 a store failed or the thing asked for does not exist (also:
the migration files are missing, or a read-only command met an unmigrated database), 2
bad configuration or usage (one line naming the variable or argument; never a password).
Output for humans by default; ``--json`` (every command but ``serve``) prints one JSON
document and nothing else. Read-only commands (``migrate status|dry-run``, ``* list``,
``dlq stats|show``) write nothing to either store; commands that change Postgres bring
its schema up first. Apart from ``migrate up`` the CLI changes Postgres state only:
ClickHouse work (replays) is done by the running server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import orjson

from ingest.config import Config, ConfigError, load_config, parse_duration
from storage.urls import mask_url

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
Access = Literal["read", "write", "schema"]  # what a command does to Postgres


class UsageError(Exception):
    """Bad usage found after parsing (exit 2)."""


class CliError(Exception):
    """A failure to report as one line with exit code 1 (a URL's password masked)."""

    def __init__(self, message: str) -> None:
        super().__init__(mask_url(message))


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID | Decimal) or type(value).__name__ == "UUID":
        return str(value)  # asyncpg's UUID type is not uuid.UUID
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def out_json(value: Any) -> None:
    text = orjson.dumps(value, default=_default, option=orjson.OPT_INDENT_2).decode()
    sys.stdout.write(text + "\n")


def out_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if hasattr(value, "isoformat"):
        return value.isoformat(timespec="seconds")
    return str(value)


def _uuid(text: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise CliError(f"{what} {text!r} is not a UUID") from None


_AGE = re.compile(r"^(\d+)([smhd])$")


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``15m``, ``90s`` → seconds (durations also accept ms/plain)."""
    match = _AGE.match(text.strip())
    if match:
        return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return parse_duration(text)


# --- commands -------------------------------------------------------------------------


def _require_migrations() -> None:
    """Both stores' migration files are there, or one line and exit 1 before anything
    starts (an install without them must never look "up to date")."""
    from storage.migrations import MigrationsMissing, discover

    try:
        for store in ("postgres", "clickhouse"):
            discover(store)
    except MigrationsMissing as exc:
        raise CliError(str(exc)) from None


def _postgres_name(config: Config) -> str:
    from storage.postgres import describe

    if config.database_url is None:
        return f"the embedded Postgres under {config.embedded_postgres_dir}"
    return f"Postgres at {describe(config.database_url)}"


def _no_embedded_postgres(config: Config) -> bool:
    """``DATABASE_URL`` is unset and the embedded cluster was never created."""
    from storage.postgres import EmbeddedPostgres

    return config.database_url is None and not EmbeddedPostgres(config.embedded_postgres_dir).exists


def _no_embedded_clickhouse(config: Config) -> bool:
    """``CLICKHOUSE_URL`` is embedded and its directory was never created."""
    from storage.clickhouse import embedded_path

    path = embedded_path(config.clickhouse_url)
    return path is not None and not Path(path).exists()


async def _with_pool(config: Config, fn: Callable[[Any], Awaitable[int]], *, access: Access) -> int:
    """Run ``fn(pool)`` on Postgres; ``access`` says what the command does to it.

    * ``read`` — nothing is written: no migration, and the embedded cluster is not created.
      Against a database without Sluice's schema: "run `sluice migrate up` first".
    * ``write`` — rows change; the schema is brought up first, so the CLI works on a fresh
      install (idempotent and advisory-locked: safe beside a running server).
    * ``schema`` — ``migrate up`` itself: ``fn`` migrates.
    """
    import asyncpg

    from ingest.app import connect_postgres
    from storage.migrations import postgres_up
    from storage.postgres import close_pool

    if access != "read":
        _require_migrations()
    elif _no_embedded_postgres(config):
        raise CliError(
            f"no Sluice database under {config.embedded_postgres_dir} yet: "
            "run `sluice migrate up` first (or set DATABASE_URL)"
        )
    try:
        pool = await connect_postgres(config)
        if access == "write":
            await postgres_up(pool)
    except Exception as exc:
        raise CliError(f"Postgres: {exc}") from exc
    try:
        return await fn(pool)
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
        raise CliError(
            f"{_postgres_name(config)} is not migrated for this Sluice ({exc}): "
            "run `sluice migrate up` first"
        ) from None
    finally:
        await close_pool(pool)


async def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from ingest.app import serve

    _require_migrations()
    on_ready = _demo_banner if args.demo else None
    return await serve(config, on_ready=on_ready)


async def _demo_banner(service: Any) -> None:
    """``make run``: make sure a demo project exists and show how to send it an event."""
    from auth import projects

    config = service.config
    token_file = config.data_dir / "demo-token"
    token = token_file.read_text().strip() if token_file.exists() else None
    if token is None or await projects.lookup(service.pool, token) is None:
        _, token = await projects.create_project(service.pool, "demo")
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
    key, key_file = await _demo_key(service, token)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    url = f"http://{host}:{config.port}/api/v1/ingest/events"
    body = (
        '{"token": "' + token + '", "events": [{"event": "hello", '
        '"timestamp": "2026-01-01T00:00:00Z", "properties": {"from": "curl"}}]}'
    )
    print(f"\nSluice is listening on http://{host}:{config.port}")
    print(f"demo project token: {token}   (kept in {token_file})")
    print(f"demo read key:      {key}   (kept in {key_file}; secret: reads every event)")
    print(f"try:\n  curl -s -X POST {url} -H 'Content-Type: application/json' -d '{body}'")
    read_url = f"http://{host}:{config.port}/api/v1/events?since=2026-01-01T00:00:00Z"
    print(f"  curl -s '{read_url}' -H 'Authorization: Bearer {key}'")
    print(f"health: curl -s http://{host}:{config.port}/healthz\n", flush=True)


async def _demo_key(service: Any, token: str) -> tuple[str, Path]:
    """The demo project's read key (``data/demo-key``), created when missing or unusable."""
    from auth import keys, projects

    key_file = service.config.data_dir / "demo-key"
    key = key_file.read_text().strip() if key_file.exists() else None
    resolved = await projects.lookup(service.pool, token)
    assert resolved is not None  # the banner made sure the token is usable
    found = await keys.lookup(service.pool, key) if key else None
    if found is None or found.project_id != resolved.project_id:
        _, key = await keys.create_key(service.pool, resolved.project_id)
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
    assert key is not None
    return key, key_file


async def cmd_migrate(config: Config, args: argparse.Namespace) -> int:
    from storage import migrations
    from storage.clickhouse import ClickHouseError, open_clickhouse

    _require_migrations()
    up, with_sql = args.action == "up", args.action == "dry-run"
    report: dict[str, Any] = {}
    failed = False

    async def on_pg(pool: Any) -> int:
        if up:
            applied = await migrations.postgres_up(pool)
            report["postgres"] = {"applied": [m.version for m in applied]}
        else:
            status = await migrations.postgres_status(pool)
            report["postgres"] = _status_report(status, with_sql, "postgres")
        return 0

    # status and dry-run write nothing: they only read the bookkeeping tables, and an
    # embedded store that was never created is not created to be read (all is pending).
    if not up and _no_embedded_postgres(config):
        report["postgres"] = _status_report(_all_pending("postgres"), with_sql, "postgres")
    else:
        await _with_pool(config, on_pg, access="schema" if up else "read")
    if not up and _no_embedded_clickhouse(config):
        report["clickhouse"] = _status_report(_all_pending("clickhouse"), with_sql, "clickhouse")
    else:
        try:
            ch = await open_clickhouse(config.clickhouse_url)
            try:
                if up:
                    applied = await migrations.clickhouse_up(ch)
                    report["clickhouse"] = {"applied": [m.version for m in applied]}
                else:
                    status = await migrations.clickhouse_status(ch)
                    report["clickhouse"] = _status_report(status, with_sql, "clickhouse")
            finally:
                await ch.close()
        except ClickHouseError as exc:
            report["clickhouse"] = {"error": str(exc)}
            failed = True
    if args.json:
        out_json(report)
    else:
        for store, info in report.items():
            if "error" in info:
                print(f"{store}: unavailable: {info['error']}")
            elif "applied" in info:
                applied = ", ".join(f"{v:04d}" for v in info["applied"]) or "nothing (up to date)"
                print(f"{store}: applied {applied}")
            else:
                for m in info["migrations"]:
                    print(f"{store}: {m['version']:04d} {m['name']:<24} {m['state']}")
                    if with_sql and m["state"] == "pending":
                        print(_indent(m["sql"]))
    return EXIT_FAIL if failed else EXIT_OK


def _all_pending(store: str) -> list[Any]:
    from storage.migrations import MigrationStatus, discover

    return [MigrationStatus(m.version, m.name, False) for m in discover(store)]


def _status_report(status: list[Any], with_sql: bool, store: str) -> dict[str, Any]:
    from storage.migrations import discover

    sql = {m.version: m.sql for m in discover(store)}
    items = []
    for s in status:
        item = {
            "version": s.version,
            "name": s.name,
            "state": "applied" if s.applied else "pending",
        }
        if with_sql and not s.applied:
            item["sql"] = sql[s.version]
        items.append(item)
    return {"migrations": items, "pending": sum(1 for s in status if not s.applied)}


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines())


async def cmd_projects(config: Config, args: argparse.Namespace) -> int:
    from auth import projects

    if args.action in ("pause", "resume"):
        return await _with_pool(config, lambda pool: _pause(pool, args), access="write")

    async def run(pool: Any) -> int:
        if args.action == "create":
            project_id, token = await projects.create_project(pool, args.name)
            if args.json:
                out_json({"project_id": str(project_id), "token": token})
            else:
                print(f"project {project_id} ({args.name})")
                print(f"token   {token}")
                print("The token is shown only now; it is stored as a hash.")
        elif args.action == "list":
            rows = await projects.list_projects(pool, include_deleted=args.all)
            if args.json:
                out_json(rows)
            else:
                out_table(rows, ["id", "name", "created_at", "deleted_at", "paused_at",
                                 "active_tokens"])  # fmt: skip
        else:
            project_id = _uuid(args.id, "project id")
            try:
                await projects.delete_project(pool, project_id)
            except projects.NotFound as exc:
                raise CliError(str(exc)) from None
            if args.json:
                out_json({"project_id": str(project_id), "deleted": True})
            else:
                print(f"project {project_id} deleted (soft); its tokens no longer resolve")
        return EXIT_OK

    return await _with_pool(config, run, access="read" if args.action == "list" else "write")


async def _pause(pool: Any, args: argparse.Namespace) -> int:
    """``projects pause|resume ID``: the incident switch for one tenant."""
    from auth import projects

    project_id = _uuid(args.id, "project id")
    paused = args.action == "pause"
    try:
        await projects.set_paused(pool, project_id, paused)
    except projects.NotFound as exc:
        raise CliError(str(exc)) from None
    _report(
        args,
        {"project_id": str(project_id), "paused": paused},
        f"project {project_id} {'paused: its ingest answers 503' if paused else 'resumed'} "
        "(servers notice within INGEST_TOKEN_CACHE_TTL)",
    )
    return EXIT_OK


async def cmd_tokens(config: Config, args: argparse.Namespace) -> int:
    from auth import projects

    async def run(pool: Any) -> int:
        try:
            if args.action == "issue":
                project_id = _uuid(args.project_id, "project id")
                token_id, token = await projects.issue_token(pool, project_id)
                if args.json:
                    out_json(
                        {"project_id": str(project_id), "token_id": str(token_id), "token": token}
                    )
                else:
                    print(f"token {token}\nid    {token_id}")
                    print("The token is shown only now; it is stored as a hash.")
            elif args.action == "list":
                rows = await projects.list_tokens(pool, _uuid(args.project_id, "project id"))
                if args.json:
                    out_json(rows)
                else:
                    out_table(rows, ["id", "token", "created_at", "revoked_at", "last_used_at"])
            else:
                token_id = await projects.revoke_token(pool, args.token_or_id)
                if args.json:
                    out_json({"token_id": str(token_id), "revoked": True})
                else:
                    print(f"token {token_id} revoked (servers stop accepting it within "
                          "INGEST_TOKEN_CACHE_TTL)")  # fmt: skip
        except projects.NotFound as exc:
            raise CliError(str(exc)) from None
        return EXIT_OK

    return await _with_pool(config, run, access="read" if args.action == "list" else "write")


async def cmd_keys(config: Config, args: argparse.Namespace) -> int:
    """Secret read keys (``sluice_sk_…``) for the read API."""
    from auth import keys, projects

    async def run(pool: Any) -> int:
        try:
            if args.action == "create":
                project_id = _uuid(args.project_id, "project id")
                key_id, key = await keys.create_key(pool, project_id)
                if args.json:
                    out_json({"project_id": str(project_id), "key_id": str(key_id), "key": key})
                else:
                    print(f"key {key}\nid  {key_id}")
                    print("The key is shown only now; it is stored as a hash. It reads every "
                          "event of the project: keep it secret.")  # fmt: skip
            elif args.action == "list":
                rows = await keys.list_keys(pool, _uuid(args.project_id, "project id"))
                if args.json:
                    out_json(rows)
                else:
                    out_table(rows, ["id", "key", "created_at", "revoked_at", "last_used_at"])
            else:
                key_id = await keys.revoke_key(pool, args.key_or_id)
                if args.json:
                    out_json({"key_id": str(key_id), "revoked": True})
                else:
                    print(f"read key {key_id} revoked (servers stop accepting it within "
                          "INGEST_TOKEN_CACHE_TTL)")  # fmt: skip
        except projects.NotFound as exc:
            raise CliError(str(exc)) from None
        return EXIT_OK

    return await _with_pool(config, run, access="read" if args.action == "list" else "write")


async def cmd_dlq(config: Config, args: argparse.Namespace) -> int:
    from ingest.deadletter import DeadLetter

    async def run(pool: Any) -> int:
        dlq = DeadLetter(pool)
        action = args.action
        if action == "stats":
            stats = await dlq.stats()
            if args.json:
                out_json(stats)
            else:
                for key, value in stats.items():
                    print(f"{key:<20} {_cell(value)}")
        elif action == "list":
            rows = await dlq.list_rows(quarantined=args.quarantined, limit=args.limit)
            if args.json:
                out_json(rows)
            else:
                cols = ["id", "event_count", "attempt_count", "created_at", "next_attempt_at"]
                out_table(rows, [*cols, "last_error"])
        elif action == "show":
            row = await dlq.show(_uuid(args.id, "dead-letter row id"))
            if row is None:
                raise CliError(f"no dead-letter row {args.id}")
            if args.json:
                out_json(row)
            else:
                events = row.pop("events")
                for key, value in row.items():
                    print(f"{key:<16} {_cell(value)}")
                print(f"events ({len(events)}):")
                for event in events:
                    print("  " + orjson.dumps(event).decode())
        elif action == "retry":
            target = None if args.all else _uuid(args.id, "dead-letter row id")
            n = await dlq.retry(target)
            if target is not None and n == 0:
                raise CliError(f"no active dead-letter row {args.id}")
            _report(args, {"rows_due_now": n}, f"{n} row(s) due now; the server replays them")
        elif action == "requeue":
            target = None if args.all_quarantined else _uuid(args.id, "dead-letter row id")
            n = await dlq.requeue(target)
            if target is not None and n == 0:
                raise CliError(f"no quarantined dead-letter row {args.id}")
            _report(args, {"rows_requeued": n}, f"{n} quarantined row(s) back in the queue")
        else:  # purge
            older = parse_age(args.older_than) if args.older_than else None
            rows, events = await dlq.count_quarantined(older)
            if rows and not args.yes:
                if not sys.stdin.isatty():
                    raise CliError(
                        f"would delete {rows} quarantined row(s) ({events} events); "
                        "pass --yes to confirm"
                    )
                answer = await asyncio.to_thread(
                    input, f"Delete {rows} quarantined row(s) holding {events} events? [y/N] "
                )
                if answer.strip().lower() not in ("y", "yes"):
                    _report(args, {"rows_deleted": 0, "events_deleted": 0}, "nothing deleted")
                    return EXIT_OK
            rows, events = await dlq.purge_quarantined(older)
            _report(
                args,
                {"rows_deleted": rows, "events_deleted": events},
                f"deleted {rows} quarantined row(s) ({events} events)",
            )
        return EXIT_OK

    read_only = args.action in ("stats", "list", "show")
    return await _with_pool(config, run, access="read" if read_only else "write")


async def cmd_wal(config: Config, args: argparse.Namespace) -> int:
    """``wal status``: what the write-ahead log holds, read from its files only (safe
    beside a running server: its newest segment may show a tail being written)."""
    from ingest.wal import CORRUPT_DIR, list_segments, read_segment

    directory = config.wal_dir

    def describe_segment(path: Path, where: str) -> dict[str, Any]:
        report = read_segment(path)
        if report.corrupt:
            state = f"corrupt: {report.corrupt}"
        elif report.torn:
            state = f"tail of {report.torn} bytes being written, or torn"
        else:
            state = "ok"
        return {
            "file": str(path),
            "where": where,
            "batch_id": str(uuid.UUID(bytes=report.segment_id)) if report.segment_id else None,
            "requests": len(report.records),
            "events": report.events,
            "bytes": path.stat().st_size,
            "state": state,
        }

    segments = [describe_segment(p, "log") for _, p in list_segments(directory)]
    aside = directory / CORRUPT_DIR
    corrupt = [describe_segment(p, "corrupt") for p in sorted(aside.glob("*.wal"))]
    data = {
        "wal_dir": str(directory),
        "durability": config.durability,
        "segments": segments,
        "corrupt": corrupt,
        "events": sum(s["events"] for s in segments),
        "bytes": sum(s["bytes"] for s in segments),
    }
    if args.json:
        out_json(data)
        return EXIT_OK
    print(f"write-ahead log {directory} (INGEST_DURABILITY={config.durability})")
    print(f"{len(segments)} segment(s), {data['events']} event(s), {data['bytes']} bytes")
    out_table(segments, ["file", "batch_id", "requests", "events", "bytes", "state"])
    if corrupt:
        print(
            f"\n{len(corrupt)} corrupt segment(s) kept in {aside} (the whole records "
            "before the bad one were replayed at boot; the rest were not):"
        )
        out_table(corrupt, ["file", "batch_id", "requests", "events", "state"])
    return EXIT_OK


# --- clients of a running server's read API (events tail, stats) ------------------------

TAIL_LAG_MS = 300_000  # events received this long before a poll are still looked for:
# an event is readable only once its batch is flushed (INGEST_FLUSH_INTERVAL) or replayed
TAIL_WINDOW_MS = 7 * 86_400_000  # event timestamps looked at: the API's default window
TAIL_FUTURE_MS = 86_400_000  # ingest clamps timestamps more than a day ahead of receipt
TAIL_PAGES = 10  # pages of 1,000 read per poll at most


class ReadClient:
    """The read API of a running server, with the key and URL the command was given."""

    def __init__(self, config: Config, args: argparse.Namespace) -> None:
        key = args.key or os.environ.get("SLUICE_KEY", "")
        if not key:
            raise UsageError("no read key: pass --key or set SLUICE_KEY (sluice keys create)")
        self.key = key
        self.url = (args.url or f"http://127.0.0.1:{config.port}").rstrip("/")

    async def get(self, session: Any, path: str, params: dict[str, str]) -> dict[str, Any]:
        import aiohttp

        try:
            async with session.get(
                self.url + path, params=params, headers={"Authorization": f"Bearer {self.key}"}
            ) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CliError(f"cannot reach {self.url}: {exc or type(exc).__name__}") from None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if status != 200 or not isinstance(data, dict):
            reason = data.get("error") if isinstance(data, dict) else body[:200].decode("replace")
            raise CliError(f"{self.url}{path} answered {status}: {reason}")
        return data

    def session(self) -> Any:
        import aiohttp

        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))


def _now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


async def cmd_events(config: Config, args: argparse.Namespace) -> int:
    """``events tail``: poll the server's ``/api/v1/events`` every second and print the
    events received since the command started, oldest first, each once."""
    from ingest.read import iso

    client = ReadClient(config, args)
    started = _now_ms()
    print(f"sluice: tailing {client.url} for events received from {iso(started)} "
          "(Ctrl-C stops)", file=sys.stderr, flush=True)  # fmt: skip
    seen: dict[str, int] = {}  # event id → when received (ms)
    async with client.session() as session:
        while True:
            now = _now_ms()
            after = max(started - 1, now - TAIL_LAG_MS)
            params = {
                "received_after": iso(after),
                "since": iso(now - TAIL_WINDOW_MS),
                "until": iso(now + TAIL_FUTURE_MS),
                "limit": "1000",
            }
            found: list[dict[str, Any]] = []
            for _ in range(TAIL_PAGES):
                page = await client.get(session, "/api/v1/events", params)
                found.extend(page["events"])
                if not page.get("next_cursor"):
                    break
                params["cursor"] = page["next_cursor"]
            fresh = [e for e in found if e["event_id"] not in seen]
            fresh.sort(key=lambda e: (e["received_at"], e["timestamp"], e["event_id"]))
            for item in fresh:
                seen[item["event_id"]] = now
                if args.json:
                    sys.stdout.write(orjson.dumps(item).decode() + "\n")
                else:
                    who = item["user_id"] or item["anonymous_id"] or "-"
                    props = orjson.dumps(item["properties"]).decode()
                    print(f"{item['timestamp']}  {item['event']}  {who}  {props}")
            sys.stdout.flush()
            for event_id in [k for k, at in seen.items() if at < after - TAIL_LAG_MS]:
                del seen[event_id]
            await asyncio.sleep(1.0)


async def cmd_stats(config: Config, args: argparse.Namespace) -> int:
    """``stats``: active users, events per day for the last 7 days, top events and
    paths — through the running server's read API."""
    client = ReadClient(config, args)
    async with client.session() as session:
        active = await client.get(session, "/api/v1/stats/active-users", {})
        series = await client.get(session, "/api/v1/stats/timeseries", {"interval": "day"})
        events = await client.get(session, "/api/v1/stats/top", {"by": "event"})
        paths = await client.get(session, "/api/v1/stats/top", {"by": "path"})
    if args.json:
        out_json(
            {
                "active_users": active,
                "timeseries": series,
                "top_events": events["rows"],
                "top_paths": paths["rows"],
            }
        )
        return EXIT_OK
    print(f"active users at {active['at']}: {active['dau']} today (24 h), "
          f"{active['wau']} in 7 days, {active['mau']} in 30 days")  # fmt: skip
    print("\nevents per day (UTC):")
    out_table(series["points"], ["t", "events", "users"])
    print("\ntop events (7 days):")
    out_table(events["rows"], ["value", "events", "users"])
    print("\ntop paths (7 days):")
    out_table(paths["rows"], ["value", "events", "users"])
    return EXIT_OK


def _report(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.json:
        out_json(data)
    else:
        print(text)


# --- parsing --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice",
        description="Event-ingest server for product analytics.",
        epilog="Configuration is read from the environment (DATABASE_URL, CLICKHOUSE_URL, "
        "DATA_DIR, INGEST_*, …: see the README). Exit codes: 0 done, 1 a store failed or "
        "what was asked for does not exist, 2 bad configuration or usage.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_json(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--json", action="store_true", help="print one JSON document only")
        return p

    serve = sub.add_parser("serve", help="run the ingest server (applies pending migrations)")
    serve.add_argument(
        "--demo", action="store_true", help="ensure a demo project; print its token and a curl"
    )

    migrate = with_json(sub.add_parser("migrate", help="schema migrations of both stores"))
    migrate.add_argument(
        "action",
        choices=["status", "up", "dry-run"],
        help="status: applied/pending per store; up: apply pending; dry-run: status plus the "
        "pending SQL (status and dry-run change nothing)",
    )

    projects = sub.add_parser("projects", help="manage projects").add_subparsers(
        dest="action", required=True
    )
    create = with_json(projects.add_parser("create", help="create a project and its first token"))
    create.add_argument("name")
    plist = with_json(projects.add_parser("list", help="list live projects (read-only)"))
    plist.add_argument("--all", action="store_true", help="include deleted projects")
    delete = with_json(projects.add_parser("delete", help="soft-delete a project and its tokens"))
    delete.add_argument("id", help="project id")
    pause = projects.add_parser("pause", help="answer 503 to a project's ingest (SDKs keep events)")
    with_json(pause).add_argument("id", help="project id")
    resume = projects.add_parser("resume", help="take a paused project back")
    with_json(resume).add_argument("id", help="project id")

    tokens = sub.add_parser("tokens", help="manage tokens").add_subparsers(
        dest="action", required=True
    )
    issue = with_json(tokens.add_parser("issue", help="issue another token for a project"))
    issue.add_argument("project_id")
    tlist = with_json(tokens.add_parser("list", help="list a project's tokens, masked (read-only)"))
    tlist.add_argument("project_id")
    revoke = with_json(tokens.add_parser("revoke", help="revoke a token"))
    revoke.add_argument("token_or_id", help="the token itself, or its id")

    keys = sub.add_parser("keys", help="secret read keys for the read API").add_subparsers(
        dest="action", required=True
    )
    kcreate = with_json(keys.add_parser("create", help="a new read key (sluice_sk_…, shown once)"))
    kcreate.add_argument("project_id")
    klist = with_json(keys.add_parser("list", help="list a project's keys, masked (read-only)"))
    klist.add_argument("project_id")
    krevoke = with_json(keys.add_parser("revoke", help="revoke a read key"))
    krevoke.add_argument("key_or_id", help="the key itself, or its id")

    dlq = sub.add_parser("dlq", help="inspect and steer the dead-letter queue").add_subparsers(
        dest="action", required=True
    )
    with_json(dlq.add_parser("stats", help="depth, quarantine, oldest age, last error (read-only)"))
    dlist = with_json(dlq.add_parser("list", help="list active dead-letter rows (read-only)"))
    dlist.add_argument("--quarantined", action="store_true", help="list quarantined rows instead")
    dlist.add_argument(
        "--limit", type=_positive_int, default=100, metavar="N", help="at most N rows (100)"
    )
    show = with_json(dlq.add_parser("show", help="a row and the events inside (read-only)"))
    show.add_argument("id", help="dead-letter row id")
    retry = with_json(dlq.add_parser("retry", help="make an active row (or all) due now"))
    group = retry.add_mutually_exclusive_group(required=True)
    group.add_argument("id", nargs="?", help="dead-letter row id")
    group.add_argument("--all", action="store_true", help="every active row")
    requeue = with_json(dlq.add_parser("requeue", help="move quarantined rows back to the queue"))
    group = requeue.add_mutually_exclusive_group(required=True)
    group.add_argument("id", nargs="?", help="dead-letter row id")
    group.add_argument("--all-quarantined", action="store_true", help="every quarantined row")
    purge = with_json(dlq.add_parser("purge", help="delete quarantined rows for good"))
    purge.add_argument(
        "--quarantined",
        action="store_true",
        required=True,
        help="required: only quarantined rows are ever purged",
    )
    purge.add_argument("--older-than", metavar="AGE", help="quarantined before AGE ago: 30d, 12h")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    def with_client(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--key", help="a secret read key (default: $SLUICE_KEY)")
        p.add_argument(
            "--url", help="the running server (default: http://127.0.0.1:$PORT)", metavar="URL"
        )
        return with_json(p)

    events = sub.add_parser("events", help="read events through a running server")
    tail = events.add_subparsers(dest="action", required=True).add_parser(
        "tail",
        help="print events as they land (polls /api/v1/events every second); --json: one "
        "JSON object per line",
    )
    with_client(tail)
    with_client(sub.add_parser("stats", help="a summary of a project through a running server"))

    wal = sub.add_parser("wal", help="inspect the write-ahead log").add_subparsers(
        dest="action", required=True
    )
    with_json(
        wal.add_parser(
            "status", help="segments waiting for a store, and corrupt ones set aside (read-only)"
        )
    )
    return parser


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], Awaitable[int]]] = {
    "serve": cmd_serve,
    "migrate": cmd_migrate,
    "projects": cmd_projects,
    "tokens": cmd_tokens,
    "keys": cmd_keys,
    "dlq": cmd_dlq,
    "wal": cmd_wal,
    "events": cmd_events,
    "stats": cmd_stats,
}


def _run(coro: Awaitable[int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(os.environ)
    except ConfigError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from ingest.app import BootError
    from ingest.logs import configure_logging

    configure_logging(config.log_level, config.log_format)
    if args.command == "dlq" and args.action == "purge" and args.older_than:
        try:
            parse_age(args.older_than)
        except ValueError:
            print(
                f"sluice: invalid --older-than {args.older_than!r}: expected e.g. 30d",
                file=sys.stderr,
            )
            return EXIT_USAGE
    try:
        return _run(COMMANDS[args.command](config, args))
    except (BootError, CliError) as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except UsageError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
