"""The ``sluice`` command line: ``serve``, ``migrate``, ``projects``, ``tokens``, ``dlq``.

Exit codes: 0 success, 1 a store failed or the thing asked for does not exist, 2 bad
configuration or usage (one line naming the variable or argument). Output for humans by
default; ``--json`` prints one JSON document and nothing else. The CLI changes Postgres
state only: ClickHouse work (replays) is done by the running server.
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
from typing import Any

import orjson

from ingest.config import Config, ConfigError, load_config, parse_duration

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A failure to report as one line with exit code 1."""


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


async def _with_pool(
    config: Config, fn: Callable[[Any], Awaitable[int]], *, migrate: bool = True
) -> int:
    from ingest.app import connect_postgres
    from storage.migrations import postgres_up
    from storage.postgres import close_pool

    try:
        pool = await connect_postgres(config)
        # The CLI may run before any `serve` (fresh install): bring the schema up first.
        # Idempotent and advisory-locked, so it is safe beside a running server.
        if migrate:
            await postgres_up(pool)
    except Exception as exc:
        raise CliError(f"Postgres: {exc}") from exc
    try:
        return await fn(pool)
    finally:
        await close_pool(pool)


async def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from ingest.app import serve

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
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    url = f"http://{host}:{config.port}/api/v1/ingest/events"
    body = (
        '{"token": "' + token + '", "events": [{"event": "hello", '
        '"timestamp": "2026-01-01T00:00:00Z", "properties": {"from": "curl"}}]}'
    )
    print(f"\nSluice is listening on http://{host}:{config.port}")
    print(f"demo project token: {token}   (kept in {token_file})")
    print(f"try:\n  curl -s -X POST {url} -H 'Content-Type: application/json' -d '{body}'")
    print(f"health: curl -s http://{host}:{config.port}/healthz\n", flush=True)


async def cmd_migrate(config: Config, args: argparse.Namespace) -> int:
    from storage import migrations
    from storage.clickhouse import ClickHouseError, open_clickhouse

    report: dict[str, Any] = {}
    failed = False

    async def on_pg(pool: Any) -> int:
        if args.action == "up":
            applied = await migrations.postgres_up(pool)
            report["postgres"] = {"applied": [m.version for m in applied]}
        else:
            status = await migrations.postgres_status(pool)
            report["postgres"] = _status_report(status, args.action == "dry-run", "postgres")
        return 0

    await _with_pool(config, on_pg, migrate=False)
    try:
        ch = await open_clickhouse(config.clickhouse_url)
        try:
            if args.action == "up":
                applied = await migrations.clickhouse_up(ch)
                report["clickhouse"] = {"applied": [m.version for m in applied]}
            else:
                status = await migrations.clickhouse_status(ch)
                report["clickhouse"] = _status_report(
                    status, args.action == "dry-run", "clickhouse"
                )
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
                    if args.action == "dry-run" and m["state"] == "pending":
                        print(_indent(m["sql"]))
    return EXIT_FAIL if failed else EXIT_OK


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
        return await _with_pool(config, lambda pool: _pause(pool, args))

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

    return await _with_pool(config, run)


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

    return await _with_pool(config, run)


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

    return await _with_pool(config, run)


def _report(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.json:
        out_json(data)
    else:
        print(text)


# --- parsing --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice", description="Event-ingest server for product analytics."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_json(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--json", action="store_true", help="print JSON only")
        return p

    serve = sub.add_parser("serve", help="run the ingest server")
    serve.add_argument("--demo", action="store_true", help="ensure a demo project; print a curl")

    migrate = with_json(sub.add_parser("migrate", help="schema migrations of both stores"))
    migrate.add_argument("action", choices=["status", "up", "dry-run"])

    projects = sub.add_parser("projects", help="manage projects").add_subparsers(
        dest="action", required=True
    )
    with_json(projects.add_parser("create", help="create a project and its first token"))
    projects.choices["create"].add_argument("name")
    plist = with_json(projects.add_parser("list", help="list projects"))
    plist.add_argument("--all", action="store_true", help="include deleted projects")
    with_json(projects.add_parser("delete", help="soft-delete a project")).add_argument("id")
    pause = projects.add_parser("pause", help="answer 503 to a project's ingest (SDKs keep events)")
    with_json(pause).add_argument("id")
    with_json(projects.add_parser("resume", help="take a paused project back")).add_argument("id")

    tokens = sub.add_parser("tokens", help="manage tokens").add_subparsers(
        dest="action", required=True
    )
    with_json(tokens.add_parser("issue", help="issue a token")).add_argument("project_id")
    with_json(tokens.add_parser("list", help="list a project's tokens")).add_argument("project_id")
    with_json(tokens.add_parser("revoke", help="revoke a token")).add_argument("token_or_id")

    dlq = sub.add_parser("dlq", help="inspect and steer the dead-letter queue").add_subparsers(
        dest="action", required=True
    )
    with_json(dlq.add_parser("stats", help="depth, quarantine, oldest age, last error"))
    dlist = with_json(dlq.add_parser("list", help="list dead-letter rows"))
    dlist.add_argument("--quarantined", action="store_true")
    dlist.add_argument("--limit", type=int, default=100)
    with_json(dlq.add_parser("show", help="a row and the events inside")).add_argument("id")
    retry = with_json(dlq.add_parser("retry", help="make a row (or all) due now"))
    group = retry.add_mutually_exclusive_group(required=True)
    group.add_argument("id", nargs="?")
    group.add_argument("--all", action="store_true")
    requeue = with_json(dlq.add_parser("requeue", help="move quarantined rows back"))
    group = requeue.add_mutually_exclusive_group(required=True)
    group.add_argument("id", nargs="?")
    group.add_argument("--all-quarantined", action="store_true")
    purge = with_json(dlq.add_parser("purge", help="delete quarantined rows"))
    purge.add_argument("--quarantined", action="store_true", required=True)
    purge.add_argument("--older-than", metavar="AGE", help="e.g. 30d, 12h")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return parser


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], Awaitable[int]]] = {
    "serve": cmd_serve,
    "migrate": cmd_migrate,
    "projects": cmd_projects,
    "tokens": cmd_tokens,
    "dlq": cmd_dlq,
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
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
