"""Passwords in DATABASE_URL / CLICKHOUSE_URL never reach an error line or a log line."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
from support import SLUICE, event, free_port, poll

from ingest.config import ConfigError, load_config
from storage.postgres import PostgresUnavailable, create_pool
from storage.urls import mask_url

SECRET = "hunter2"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://sluice:hunter2@db:5432/sluice", "postgresql://sluice:***@db:5432/sluice"),
        ("https://sluice:hunter2@ch:8443/analytics?x=1", "https://sluice:***@ch:8443/analytics?x=1"),
        ("postgresql://sluice:hun@ter/2@db/sluice", "postgresql://sluice:***@db/sluice"),
        ("postgresql://:hunter2@db/sluice", "postgresql://:***@db/sluice"),
        ("postgresql://db/sluice?user=u&password=hunter2", "postgresql://db/sluice?user=u&password=***"),
        ("host=db password=hunter2 user=u", "host=db password=*** user=u"),
        ("sluice:hunter2@db/sluice", "sluice:***@db/sluice"),
        ("at http://a:hunter2@h/x and http://b:hunter2@i/y", "at http://a:***@h/x and http://b:***@i/y"),
        # nothing to mask: unchanged
        ("postgresql://sluice@db:5432/sluice", "postgresql://sluice@db:5432/sluice"),
        ("http://127.0.0.1:8123/default", "http://127.0.0.1:8123/default"),
        ("chdb:///srv/sluice/clickhouse", "chdb:///srv/sluice/clickhouse"),
        ("Code: 516. DB::Exception: sluice: Authentication failed",
         "Code: 516. DB::Exception: sluice: Authentication failed"),
    ],
)  # fmt: skip
def test_mask_url(text: str, masked: str) -> None:
    assert mask_url(text) == masked


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("DATABASE_URL", "mysql://sluice:hunter2@db/x",
         "invalid DATABASE_URL='mysql://sluice:***@db/x': "
         "expected postgresql://user:pass@host:port/database, or unset"),
        ("DATABASE_URL", "sluice:hunter2@db/x",
         "invalid DATABASE_URL='sluice:***@db/x': "
         "expected postgresql://user:pass@host:port/database, or unset"),
        ("DATABASE_URL", "postgresql://sluice:hunter2@db:pg/x",
         "invalid DATABASE_URL='postgresql://sluice:***@db:pg/x': "
         "the port is not a number from 0 to 65535"),
        ("CLICKHOUSE_URL", "tcp://sluice:hunter2@ch:9000/x",
         "invalid CLICKHOUSE_URL='tcp://sluice:***@ch:9000/x': "
         "expected chdb:///path or http(s)://user:pass@host:port/database"),
        ("CLICKHOUSE_URL", "https://sluice:hunter2@ch:99999/x",
         "invalid CLICKHOUSE_URL='https://sluice:***@ch:99999/x': "
         "the port is not a number from 0 to 65535"),
    ],
)  # fmt: skip
def test_config_errors_mask_the_password(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({var: value})
    assert str(err.value) == message


def test_bad_database_url_stops_serve_without_printing_the_password(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path),
        "DATABASE_URL": "postgresql://sluice:hunter2@db:pg/sluice",
    }
    proc = subprocess.run([*SLUICE, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == (
        "sluice: invalid DATABASE_URL='postgresql://sluice:***@db:pg/sluice': "
        "the port is not a number from 0 to 65535\n"
    )
    assert proc.stdout == ""


def test_postgres_unavailable_names_the_target_without_the_password() -> None:
    port = free_port()  # closed: every connection is refused

    async def run() -> None:
        await create_pool(f"postgresql://sluice:{SECRET}@127.0.0.1:{port}/sluice", retry_for=0.3)

    with pytest.raises(PostgresUnavailable) as err:
        asyncio.run(run())
    message = str(err.value)
    assert message.startswith(f"Postgres at postgresql://sluice@127.0.0.1:{port}/sluice did not")
    assert SECRET not in message


def test_unreachable_clickhouse_server_in_migrate_status_without_the_password(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path),
        "DATABASE_URL": database_url,
        "CLICKHOUSE_URL": f"http://sluice:{SECRET}@127.0.0.1:{port}/default?connect_timeout=1",
    }
    proc = subprocess.run(
        [*SLUICE, "migrate", "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "clickhouse: unavailable: ClickHouse unavailable:" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr


def test_unreachable_clickhouse_server_is_logged_without_the_password(
    start_server, project
) -> None:
    _, token = project
    port = free_port()
    url = (
        f"http://sluice:{SECRET}@127.0.0.1:{port}/default?connect_timeout=1&send_receive_timeout=2"
    )
    server = start_server(CLICKHOUSE_URL=url)
    boot = server.log_events("clickhouse_unreachable_at_boot")
    assert [entry["clickhouse"] for entry in boot] == [f"http://127.0.0.1:{port}/default"]
    assert server.post({"token": token, "events": [event()]}).status == 202
    parked = poll(lambda: [e for e in server.log_events("flush") if e["outcome"] == "parked"])
    assert [e["events"] for e in parked] == [1]
    assert server.stop() == 0
    assert SECRET not in server.logs()
