"""Configuration: defaults, durations, and one clear line + exit 2 for a bad value."""

from __future__ import annotations

import os
import subprocess

import pytest
from support import SLUICE

from ingest.config import ConfigError, load_config, parse_duration


def test_defaults_match_the_documented_table() -> None:
    config = load_config({})
    assert (config.host, config.port) == ("127.0.0.1", 8080)
    assert config.clickhouse_url.startswith("chdb:///") and config.clickhouse_url.endswith(
        "/data/clickhouse"
    )
    assert config.database_url is None
    assert config.event_buffer == 100_000
    assert config.flush_events == 20_000
    assert config.flush_interval == 2.0
    assert config.shutdown_grace == 10.0
    assert config.ingest_disabled is False
    assert config.max_body_bytes == 10_485_760
    assert config.dlq_drain_batch_limit == 10
    assert config.dlq_depth_503_threshold == 100_000
    assert config.token_cache_ttl == 60.0
    assert config.allowed_origins == ()
    assert (config.log_level, config.log_format) == ("info", "json")


@pytest.mark.parametrize(
    ("text", "seconds"), [("50ms", 0.05), ("2s", 2.0), ("1m", 60.0), ("1h", 3600.0), ("1.5", 1.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_data_dir_moves_the_embedded_clickhouse() -> None:
    config = load_config({"DATA_DIR": "/srv/sluice"})
    assert config.clickhouse_url == "chdb:///srv/sluice/clickhouse"
    assert config.embedded_postgres_dir.as_posix() == "/srv/sluice/postgres"


def test_allowed_origins_are_split() -> None:
    config = load_config({"ALLOWED_ORIGINS": "https://a.example, https://b.example/"})
    assert config.allowed_origins == ("https://a.example", "https://b.example")


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("INGEST_FLUSH_INTERVAL", "soon", "expected a duration"),
        ("INGEST_SHUTDOWN_GRACE", "0s", "greater than zero"),
        ("PORT", "http", "integer"),
        ("PORT", "70000", "out of range"),
        ("INGEST_EVENT_BUFFER", "-5", "positive"),
        ("INGEST_DISABLED", "maybe", "true or false"),
        ("CLICKHOUSE_URL", "mysql://x", "chdb:///path"),
        ("DATABASE_URL", "mysql://x", "postgresql://"),
        ("LOG_FORMAT", "xml", "json or console"),
    ],
)
def test_bad_value_names_the_variable(var: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({var: value})
    message = str(err.value)
    assert message.startswith(f"invalid {var}={value!r}")
    assert expected in message
    assert "\n" not in message


def test_flush_size_set_above_the_buffer_set_is_an_error_naming_both() -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"INGEST_EVENT_BUFFER": "10", "INGEST_FLUSH_EVENTS": "20"})
    assert str(err.value) == (
        "invalid INGEST_FLUSH_EVENTS=20: must not exceed INGEST_EVENT_BUFFER=10"
    )


@pytest.mark.parametrize(
    ("env", "buffer", "flush"),
    [
        # the flush default yields to a buffer the operator set: at most half of it
        ({"INGEST_EVENT_BUFFER": "1000"}, 1_000, 500),
        ({"INGEST_EVENT_BUFFER": "30000"}, 30_000, 15_000),
        ({"INGEST_EVENT_BUFFER": "1"}, 1, 1),
        ({"INGEST_EVENT_BUFFER": "500000"}, 500_000, 20_000),
        # the buffer default yields to a flush size the operator set: at least twice it
        ({"INGEST_FLUSH_EVENTS": "80000"}, 160_000, 80_000),
        ({"INGEST_FLUSH_EVENTS": "1000"}, 100_000, 1_000),
        # both set: taken as they are when they fit, even a flush of the whole buffer
        ({"INGEST_EVENT_BUFFER": "1000", "INGEST_FLUSH_EVENTS": "1000"}, 1_000, 1_000),
        # an empty value is unset
        ({"INGEST_EVENT_BUFFER": "1000", "INGEST_FLUSH_EVENTS": ""}, 1_000, 500),
    ],
)
def test_a_default_yields_to_the_value_the_operator_set(
    env: dict[str, str], buffer: int, flush: int
) -> None:
    config = load_config(env)
    assert (config.event_buffer, config.flush_events) == (buffer, flush)


def test_a_server_with_only_a_small_buffer_set_boots(start_server) -> None:
    """Setting only INGEST_EVENT_BUFFER used to stop boot over INGEST_FLUSH_EVENTS."""
    server = start_server(INGEST_EVENT_BUFFER="1000")
    assert server.healthz().json()["buffer"] == {"pending": 0, "capacity": 1000}
    assert server.stop() == 0


def test_bad_config_stops_serve_with_exit_2_and_one_line(tmp_path) -> None:
    env = {**os.environ, "INGEST_FLUSH_INTERVAL": "fast", "DATA_DIR": str(tmp_path)}
    proc = subprocess.run([*SLUICE, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "INGEST_FLUSH_INTERVAL" in lines[0] and "'fast'" in lines[0]
    assert not (tmp_path / "postgres").exists()  # nothing started


def test_tenant_and_slow_client_settings_default_and_refuse_bad_values() -> None:
    config = load_config({})
    assert (config.project_events_per_s, config.project_burst) == (0.0, 0)  # off
    assert (config.token_stale_max, config.read_timeout) == (3600.0, 30.0)
    assert config.read_concurrency == 32
    for var, value, expected in [
        ("INGEST_PROJECT_EVENTS_PER_S", "-1", "must not be negative"),
        ("INGEST_PROJECT_BURST", "lots", "a non-negative integer"),
        ("INGEST_TOKEN_STALE_MAX", "0s", "greater than zero"),
        ("INGEST_READ_TIMEOUT", "soon", "expected a duration"),
        ("INGEST_READ_CONCURRENCY", "0", "must be positive"),
    ]:
        with pytest.raises(ConfigError) as exc:
            load_config({var: value})
        line = str(exc.value)
        assert line.startswith(f"invalid {var}={value!r}: ") and expected in line
