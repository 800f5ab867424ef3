"""`make bench-codecs`: column codecs for events_raw_v1, chosen by measurement.

On a scratch embedded ClickHouse (migrated by `sluice migrate up`, so the table is the
real one) this seeds BENCH_CODEC_EVENTS events shaped like the bench body (bench/seed.py),
then, for each candidate set of codecs:

  size     a copy of events_raw_v1 (``CREATE TABLE … AS``) whose columns get the
           candidate codecs by ``ALTER TABLE … MODIFY COLUMN … CODEC(…)`` — the statement
           migration 0006 runs — filled from the seeded rows and merged
           (``OPTIMIZE … FINAL``): bytes per event of each column (system.columns) and of
           the whole table (active parts, system.parts)
  insert   the flush's own statement (``INSERT … FROM INFILE … FORMAT
           JSONCompactEachRow``, Sluice's settings) with 20,000-row files of row lines
           written from the seeded rows in arrival order: events per second of wall
           time and per second of CPU time (the engine runs in this process), the
           median of CODEC_ROUNDS rounds interleaved over the candidates

A column's size does not depend on the other columns' codecs, so each candidate set
tries one codec per kind of column, and every codec of every kind is measured once; the
``chosen`` set (what migration 0006 applies) is measured like the others. Results go to
bench/results/codecs.json and a table. The machine is shared: the insert rates are
indicative; compare them within one run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, ROOT, SLUICE, WORK, log

sys.path.insert(0, str(ROOT))
from storage.clickhouse import JSON_LINE_SETTINGS

EVENTS = int(os.environ.get("BENCH_CODEC_EVENTS", "1000000"))
INSERT_EVENTS = int(os.environ.get("BENCH_CODEC_INSERT_EVENTS", "200000"))
BATCH = 20_000  # INGEST_FLUSH_EVENTS' default: one flush
CODEC_ROUNDS = int(os.environ.get("BENCH_CODEC_ROUNDS", "5"))
KINDS = {
    "uuid": ("event_id", "project_id"),
    "event": ("event",),
    "ids": ("anonymous_id", "user_id", "session_id"),
    "times": ("timestamp", "received_at", "client_timestamp"),
    "json": ("properties", "extras"),
    # Migration 0003's enrichment columns (LowCardinality; not changed by 0006: measured
    # here for a later migration).
    "enrich": (
        "user_agent",
        "browser",
        "os",
        "device_type",
        "path",
        "referrer_domain",
        "utm_source",
        "utm_medium",
        "utm_campaign",
    ),
}
# Candidate sets: one codec per kind of column (None = the default, LZ4).
CANDIDATES: dict[str, dict[str, str | None]] = {
    "default (LZ4)": {k: None for k in KINDS},
    "zstd1": {"uuid": "ZSTD(1)", "event": "ZSTD(1)", "ids": "ZSTD(1)",
              "times": "Delta(8), ZSTD(1)", "json": "ZSTD(1)", "enrich": "ZSTD(1)"},
    "zstd3": {"uuid": "ZSTD(3)", "event": None, "ids": "ZSTD(3)",
              "times": "DoubleDelta, ZSTD(1)", "json": "ZSTD(3)", "enrich": "ZSTD(3)"},
    "zstd4": {"uuid": None, "event": None, "ids": "ZSTD(4)", "times": "T64, ZSTD(1)",
              "json": "ZSTD(4)", "enrich": None},
    "zstd5": {"uuid": None, "event": None, "ids": "ZSTD(5)", "times": "ZSTD(1)",
              "json": "ZSTD(5)", "enrich": None},
    "zstd6": {"uuid": None, "event": None, "ids": "ZSTD(6)", "times": "T64, ZSTD(3)",
              "json": "ZSTD(6)", "enrich": None},
    "zstd9": {"uuid": None, "event": None, "ids": "ZSTD(9)", "times": "Delta(8), ZSTD(3)",
              "json": "ZSTD(9)", "enrich": None},
}  # fmt: skip
# What migration 0006 applies (keep in step with migrations/clickhouse/0006_codecs.sql).
CHOSEN: dict[str, str | None] = {
    "uuid": None,
    "event": None,
    "ids": "ZSTD(1)",
    "times": "Delta(8), ZSTD(1)",
    "json": "ZSTD(1)",
    "enrich": None,
}
CANDIDATES["chosen (0006)"] = CHOSEN


def codec_clause(codec: str | None) -> str:
    return f"CODEC({codec})" if codec else "CODEC(Default)"


def make_table(client, name: str, codecs: dict[str, str | None]) -> None:
    """A copy of events_raw_v1's definition, with ``codecs`` applied by ALTER."""
    client.command(f"DROP TABLE IF EXISTS {name}")
    client.command(f"CREATE TABLE {name} AS events_raw_v1")
    types = dict(
        client.query(
            "SELECT name, type FROM system.columns WHERE database = currentDatabase() "
            "AND table = 'events_raw_v1'"
        ).result_rows
    )
    for kind, columns in KINDS.items():
        for column in columns:
            if column in types:  # a codec alone: type, default and MATERIALIZED kept
                client.command(
                    f"ALTER TABLE {name} MODIFY COLUMN {column} {codec_clause(codecs[kind])}"
                )


def write_lines(client, directory: Path) -> list[Path]:
    """INSERT_EVENTS seeded rows, newest first (arrival order), as the flush's row lines
    (ingest/rows.py: ids as 32 hex digits, times as epoch seconds with milliseconds,
    properties/extras as JSON objects), BATCH per file."""
    from ingest.rows import LINE_COLUMNS

    def value(column: str) -> str:
        if column in ("event_id", "project_id"):
            return f"concat('\"', replaceAll(toString({column}), '-', ''), '\"')"
        if column in ("timestamp", "received_at", "client_timestamp"):
            return f"toString(toDecimal64(toUnixTimestamp64Milli({column}) / 1000, 3))"
        if column in ("properties", "extras"):
            return column
        if column == "is_bot":
            return "toString(is_bot)"
        return f"if(isNull({column}), 'null', concat('\"', assumeNotNull({column}), '\"'))"

    line = "concat('[', " + ", ',', ".join(value(c) for c in LINE_COLUMNS) + ", ']')"
    rows = client.query(
        f"SELECT {line} FROM events_raw_v1 ORDER BY received_at DESC LIMIT {INSERT_EVENTS}"
    ).result_rows
    paths = []
    for i in range(0, len(rows), BATCH):
        path = directory / f"lines-{i // BATCH:03d}.jsonl"
        path.write_text("".join(r[0] + "\n" for r in rows[i : i + BATCH]))
        paths.append(path)
    return paths


def insert_rate(client, table: str, files: list[Path], round_: int) -> tuple[float, float]:
    """Events per second through the flush's statement, one file per INSERT: per second
    of wall time, and per second of CPU time of this process (the engine runs in it; CPU
    time is less at the mercy of what else runs on the machine)."""
    from ingest.rows import LINE_COLUMNS

    client.command(f"TRUNCATE TABLE {table}")
    settings = ", ".join(f"{k} = {v}" for k, v in JSON_LINE_SETTINGS.items())
    started, cpu = time.perf_counter(), _cpu()
    events = 0
    for i, path in enumerate(files):
        client.command(
            f"INSERT INTO {table} ({', '.join(LINE_COLUMNS)}) FROM INFILE '{path}' "
            f"SETTINGS {settings}, insert_deduplication_token = 'codec-{table}-{round_}-{i}' "
            "FORMAT JSONCompactEachRow"
        )
        events += BATCH
    return events / (time.perf_counter() - started), events / (_cpu() - cpu)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sizes(client, table: str) -> dict:
    client.command(f"TRUNCATE TABLE {table}")
    client.command(
        f"INSERT INTO {table} SELECT * FROM events_raw_v1",
        settings={"insert_deduplicate": 0, "throw_on_max_partitions_per_insert_block": 0},
    )
    started = time.perf_counter()
    client.command(f"OPTIMIZE TABLE {table} FINAL")
    merge_s = time.perf_counter() - started
    rows, on_disk = client.query(
        "SELECT sum(rows), sum(bytes_on_disk) FROM system.parts WHERE active "
        f"AND database = currentDatabase() AND table = '{table}'"
    ).result_rows[0]
    columns = dict(
        client.query(
            "SELECT name, data_compressed_bytes FROM system.columns "
            f"WHERE database = currentDatabase() AND table = '{table}'"
        ).result_rows
    )
    return {
        "bytes_per_event": on_disk / rows,
        "merge_s": merge_s,
        "columns": {name: b / rows for name, b in columns.items()},
    }


def main() -> int:
    import clickhouse_connect
    from seed import seed

    work = WORK / "codecs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    RESULTS.mkdir(exist_ok=True)
    env = {**os.environ, "DATA_DIR": str(work), "LOG_LEVEL": "warning"}
    subprocess.run([*SLUICE, "migrate", "up"], env=env, check=True, capture_output=True)
    client = clickhouse_connect.get_client(dsn=f"chdb://{work / 'clickhouse'}")
    project = "5e1ce000-0000-4000-8000-000000000001"
    log(f"codecs: seeding {EVENTS:,} events")
    seeded = seed(client, project, EVENTS, 90, int(time.time() * 1000))
    files = write_lines(client, work)
    tables = {name: f"codec_{i}" for i, name in enumerate(CANDIDATES)}
    results: dict[str, dict] = {}
    for name, codecs in CANDIDATES.items():
        make_table(client, tables[name], codecs)
        results[name] = {
            "codecs": codecs,
            **sizes(client, tables[name]),
            "insert_runs": [],
            "insert_cpu_runs": [],
        }
        log(f"codecs: {name}: {results[name]['bytes_per_event']:.1f} bytes/event")
    for round_ in range(CODEC_ROUNDS):
        for name in CANDIDATES:
            wall, cpu = insert_rate(client, tables[name], files, round_)
            results[name]["insert_runs"].append(wall)
            results[name]["insert_cpu_runs"].append(cpu)
    for name in CANDIDATES:
        results[name]["insert_events_per_s"] = statistics.median(results[name]["insert_runs"])
        results[name]["insert_events_per_cpu_s"] = statistics.median(
            results[name]["insert_cpu_runs"]
        )
    client.close()

    out = {
        "events": seeded["events"],
        "insert_events": len(files) * BATCH,
        "candidates": results,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (RESULTS / "codecs.json").write_text(json.dumps(out, indent=2) + "\n")
    columns = [c for cs in KINDS.values() for c in cs]
    print(f"\nbytes per event on disk ({seeded['events']:,} events, merged), by column:\n")
    print("| column | " + " | ".join(CANDIDATES) + " |")
    print("|---|" + "---|" * len(CANDIDATES))
    kind_of = {c: k for k, cs in KINDS.items() for c in cs}
    for column in columns:
        cells = [
            f"{r['columns'][column]:.2f} ({r['codecs'][kind_of[column]] or 'LZ4'})"
            for r in results.values()
        ]
        print(f"| {column} | " + " | ".join(cells) + " |")
    what = f"row lines, {BATCH:,}/INSERT, median of {CODEC_ROUNDS}"
    for label, cell in [
        ("**table (active parts)**", lambda r: f"**{r['bytes_per_event']:.1f}**"),
        ("merge (OPTIMIZE FINAL), s", lambda r: f"{r['merge_s']:.1f}"),
        (f"insert, events/s ({what})", lambda r: f"{r['insert_events_per_s']:,.0f}"),
        ("insert, events per CPU-second", lambda r: f"{r['insert_events_per_cpu_s']:,.0f}"),
    ]:
        print(f"| {label} | " + " | ".join(cell(r) for r in results.values()) + " |")
    print("\nwritten: bench/results/codecs.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
