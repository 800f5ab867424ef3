"""Commands do what they say: read-only commands write nothing, ``migrate status`` and
``migrate dry-run`` leave both stores as they found them, and the README's command line
is the parser's."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from support import ROOT, SLUICE, Postgres, clickhouse_rows, db_name

from ingest.cli import build_parser
from storage.migrations import discover
from storage.postgres import describe

READ_ONLY = [
    (["projects", "list"], "projects"),
    (["tokens", "list", str(uuid.UUID(int=1))], "api_tokens"),
    (["dlq", "stats"], "failed_events"),
    (["dlq", "list"], "failed_events"),
    (["dlq", "show", str(uuid.UUID(int=1))], "failed_events"),
]


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SLUICE, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def public_tables(pg: Postgres, dsn: str) -> str:
    return pg.psql(
        "SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'",
        db_name(dsn),
    )


@pytest.mark.parametrize(("args", "relation"), READ_ONLY)
def test_read_only_commands_on_an_unmigrated_database_say_so_and_write_nothing(
    tmp_path: Path, pg: Postgres, database_url: str, args: list[str], relation: str
) -> None:
    proc = run({"DATABASE_URL": database_url, "DATA_DIR": str(tmp_path)}, *args, "--json")
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == (
        f"sluice: Postgres at {describe(database_url)} is not migrated for this Sluice "
        f'(relation "{relation}" does not exist): run `sluice migrate up` first\n'
    )
    assert public_tables(pg, database_url) == ""  # no migration ran


def test_read_only_command_does_not_create_the_embedded_postgres(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = run({"DATA_DIR": str(data)}, "dlq", "stats")
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == (
        f"sluice: no Sluice database under {data.resolve() / 'postgres'} yet: "
        "run `sluice migrate up` first (or set DATABASE_URL)\n"
    )
    assert not data.exists()


def all_pending(store: str, with_sql: bool) -> dict:
    migrations = [
        {"version": m.version, "name": m.name, "state": "pending"}
        | ({"sql": m.sql} if with_sql else {})
        for m in discover(store)
    ]
    return {"migrations": migrations, "pending": len(migrations)}


@pytest.mark.parametrize("action", ["status", "dry-run"])
def test_status_and_dry_run_on_fresh_embedded_stores_create_nothing(
    tmp_path: Path, action: str
) -> None:
    data = tmp_path / "data"
    proc = run({"DATA_DIR": str(data)}, "migrate", action, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "postgres": all_pending("postgres", action == "dry-run"),
        "clickhouse": all_pending("clickhouse", action == "dry-run"),
    }
    assert not data.exists()


def test_dry_run_writes_nothing_to_existing_stores(
    tmp_path: Path, pg: Postgres, database_url: str
) -> None:
    ch = tmp_path / "clickhouse"
    assert clickhouse_rows(ch, "SELECT 1") == [(1,)]  # the directory exists, no tables
    env = {"DATABASE_URL": database_url, "CLICKHOUSE_URL": f"chdb://{ch}"}
    for action in ("dry-run", "status"):
        proc = run(env, "migrate", action, "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {
            "postgres": all_pending("postgres", action == "dry-run"),
            "clickhouse": all_pending("clickhouse", action == "dry-run"),
        }
    assert public_tables(pg, database_url) == ""
    tables = "SELECT name FROM system.tables WHERE database = currentDatabase()"
    assert clickhouse_rows(ch, tables) == []

    assert run(env, "migrate", "up").returncode == 0
    proc = run(env, "migrate", "status", "--json")
    assert [json.loads(proc.stdout)[s]["pending"] for s in ("postgres", "clickhouse")] == [0, 0]


# --- the README's command line is the parser's -----------------------------------------


def leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    """``"dlq purge"`` → its parser, for every command."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[prefix] = parser
        for sub in subs:
            for name, child in sub.choices.items():
                walk(f"{prefix} {name}".strip(), child)

    walk("", build_parser())
    return found


def readme_command_line() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Command line", 1)[1].split("\n## ", 1)[0]
    return section


def test_every_command_and_option_is_in_the_readme_and_nothing_else() -> None:
    section = readme_command_line()
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    parsers = leaf_parsers()
    for command in parsers:
        *group, last = command.split()
        assert re.search(rf"sluice {' '.join(group)}.*\b{last}\b", block), command
    options = {
        option
        for parser in parsers.values()
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    }
    assert set(re.findall(r"--[a-z][a-z-]*", section)) == options


def test_json_is_taken_by_every_command_but_serve() -> None:
    with_json = {
        command
        for command, parser in leaf_parsers().items()
        if any("--json" in action.option_strings for action in parser._actions)
    }
    assert set(leaf_parsers()) - with_json == {"serve"}
    assert "Every command except `serve` takes `--json`" in readme_command_line()


def test_dlq_list_limit_must_be_positive() -> None:
    proc = subprocess.run(
        [*SLUICE, "dlq", "list", "--limit", "0"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        "sluice dlq list: error: argument --limit: expected a positive integer, got '0'"
    )
