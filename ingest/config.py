"""Configuration: read once from the environment at boot, validated with pydantic.

Enters: ``os.environ`` (or any mapping, for tests).
Leaves: a frozen :class:`Config`.
On failure: :class:`ConfigError` whose message is one line naming the variable, the
value (a URL's password masked: ``postgresql://sluice:***@db/sluice``) and what was
expected; ``cmd``/``cli`` turns it into exit code 2 before anything starts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from storage.urls import mask_url

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ConfigError(ValueError):
    """A configuration variable is invalid. ``str(err)`` is the one line to print; it
    never contains a password."""


def parse_duration(value: str) -> float:
    """``50ms``, ``2s``, ``1m``, ``1h`` or plain seconds (``1.5``) → seconds."""
    match = _DURATION.match(value)
    if not match:
        raise ValueError("expected a duration like 50ms, 2s, 1m, 1h or plain seconds")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _check_port(url: str) -> None:
    try:
        _ = urlparse(url).port  # raises ValueError unless absent or 0..65535
    except ValueError:
        raise ValueError("the port is not a number from 0 to 65535") from None


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


# variable name -> (field name, default as the environment would spell it)
ENV_VARS: dict[str, tuple[str, str | None]] = {
    "HOST": ("host", "127.0.0.1"),
    "PORT": ("port", "8080"),
    "DATA_DIR": ("data_dir", "./data"),
    "CLICKHOUSE_URL": ("clickhouse_url", None),
    "DATABASE_URL": ("database_url", None),
    "INGEST_EVENT_BUFFER": ("event_buffer", "100000"),
    "INGEST_FLUSH_EVENTS": ("flush_events", "20000"),
    "INGEST_FLUSH_INTERVAL": ("flush_interval", "2s"),
    "INGEST_SHUTDOWN_GRACE": ("shutdown_grace", "10s"),
    "INGEST_DURABILITY": ("durability", "fsync"),
    "INGEST_WAL_DIR": ("wal_dir", None),
    "INGEST_WAL_MAX_BYTES": ("wal_max_bytes", "1073741824"),
    "INGEST_DISABLED": ("ingest_disabled", "false"),
    "INGEST_MAX_BODY_BYTES": ("max_body_bytes", "10485760"),
    "INGEST_DLQ_DRAIN_BATCH_LIMIT": ("dlq_drain_batch_limit", "10"),
    "INGEST_TOKEN_CACHE_TTL": ("token_cache_ttl", "60s"),
    "DLQ_DEPTH_503_THRESHOLD": ("dlq_depth_503_threshold", "100000"),
    "ALLOWED_ORIGINS": ("allowed_origins", ""),
    # Noisy and malicious tenants, slow clients (issue 11).
    "INGEST_PROJECT_EVENTS_PER_S": ("project_events_per_s", "0"),
    "INGEST_PROJECT_BURST": ("project_burst", "0"),
    "INGEST_TOKEN_STALE_MAX": ("token_stale_max", "1h"),
    "INGEST_READ_TIMEOUT": ("read_timeout", "30s"),
    "INGEST_READ_CONCURRENCY": ("read_concurrency", "32"),
    "LOG_LEVEL": ("log_level", "info"),
    "LOG_FORMAT": ("log_format", "json"),
    # The read API (ingest/read.py): every read query runs under these ClickHouse limits.
    "QUERY_MAX_EXECUTION_TIME": ("query_max_execution_time", "5s"),
    "QUERY_MAX_MEMORY_BYTES": ("query_max_memory_bytes", "536870912"),
    # A person's events further apart than this start a new session (events without one).
    "SESSION_TIMEOUT": ("session_timeout", "30m"),
    # How often the rollup pass folds finished days into the rollup tables (ingest/rollup.py).
    "ROLLUP_INTERVAL": ("rollup_interval", "60s"),
    # Raw events older than this many days are deleted by ClickHouse (ingest/retention.py).
    "EVENTS_RETENTION_DAYS": ("events_retention_days", "0"),
}
_RETENTION_EXPECTED = "expected a whole number of days from 1 to 36500, or 0 or off (keep for ever)"
_FIELD_TO_VAR = {field: var for var, (field, _) in ENV_VARS.items()}
_DURATION_FIELDS = (
    "flush_interval",
    "shutdown_grace",
    "token_cache_ttl",
    "query_max_execution_time",
    "session_timeout",
    "rollup_interval",
)
_EXPECTED = {
    "port": "an integer from 1 to 65535",
    "query_max_memory_bytes": "a positive integer (bytes)",
    "event_buffer": "a positive integer",
    "flush_events": "a positive integer",
    "max_body_bytes": "a positive integer",
    "wal_max_bytes": "a positive integer (bytes)",
    "dlq_drain_batch_limit": "a positive integer",
    "dlq_depth_503_threshold": "a non-negative integer",
    "project_events_per_s": "a non-negative number of events per second (0 = no limit)",
    "project_burst": "a non-negative integer (0 = one second's worth)",
    "read_concurrency": "a positive integer",
    "events_retention_days": _RETENTION_EXPECTED,
}


class Config(BaseModel):
    """Every setting Sluice reads; see the README's configuration table."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    data_dir: Path
    clickhouse_url: str
    database_url: str | None
    event_buffer: int
    flush_events: int
    flush_interval: float
    shutdown_grace: float
    durability: str
    wal_dir: Path
    wal_max_bytes: int
    ingest_disabled: bool
    max_body_bytes: int
    dlq_drain_batch_limit: int
    token_cache_ttl: float
    query_max_execution_time: float
    query_max_memory_bytes: int
    dlq_depth_503_threshold: int
    allowed_origins: tuple[str, ...]
    log_level: str
    log_format: str
    project_events_per_s: float
    project_burst: int
    token_stale_max: float
    read_timeout: float
    read_concurrency: int
    session_timeout: float
    rollup_interval: float
    events_retention_days: int  # 0 = off

    @field_validator(*_DURATION_FIELDS, mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        seconds = parse_duration(value) if isinstance(value, str) else float(value)
        if seconds <= 0:
            raise ValueError("expected a duration greater than zero")
        return seconds

    @field_validator("ingest_disabled", mode="before")
    @classmethod
    def _bool(cls, value: Any) -> bool:
        return _parse_bool(value) if isinstance(value, str) else bool(value)

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError("out of range")
        return value

    @field_validator("durability")
    @classmethod
    def _durability(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("fsync", "memory"):
            raise ValueError("expected fsync (the default: durable before the 2xx) or memory")
        return value

    @field_validator(
        "event_buffer",
        "flush_events",
        "max_body_bytes",
        "dlq_drain_batch_limit",
        "wal_max_bytes",
        "query_max_memory_bytes",
    )
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("dlq_depth_503_threshold")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            return tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
        return tuple(value)

    @field_validator("clickhouse_url")
    @classmethod
    def _clickhouse_url(cls, value: str) -> str:
        if not value.startswith(("chdb://", "http://", "https://")):
            raise ValueError("expected chdb:///path or http(s)://user:pass@host:port/database")
        _check_port(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgres://", "postgresql://")):
            raise ValueError("expected postgresql://user:pass@host:port/database, or unset")
        if value is not None:
            _check_port(value)
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        value = value.lower()
        if value not in ("debug", "info", "warning", "error", "critical"):
            raise ValueError("expected debug, info, warning, error or critical")
        return value

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        value = value.lower()
        if value not in ("json", "console"):
            raise ValueError("expected json or console")
        return value

    @field_validator("token_stale_max", "read_timeout", mode="before")
    @classmethod
    def _edge_duration(cls, value: Any) -> float:
        return cls._duration(value)

    @field_validator("project_events_per_s", "project_burst")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator("read_concurrency")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("events_retention_days", mode="before")
    @classmethod
    def _retention_days(cls, value: Any) -> int:
        text = str(value).strip().lower()
        if text in ("off", "0", ""):
            return 0
        if not text.isdigit() or not 1 <= int(text) <= 36500:
            raise ValueError(_RETENTION_EXPECTED)
        return int(text)

    @property
    def embedded_postgres_dir(self) -> Path:
        return self.data_dir / "postgres"


def load_config(environ: Mapping[str, str]) -> Config:
    """Build the :class:`Config` from an environment mapping, or raise :class:`ConfigError`."""
    raw: dict[str, Any] = {}
    for var, (field, default) in ENV_VARS.items():
        value = environ.get(var)
        if value is None or (value == "" and default is not None and var != "ALLOWED_ORIGINS"):
            value = default
        raw[field] = value
    data_dir = Path(raw["data_dir"] or "./data")
    if raw["clickhouse_url"] is None:
        raw["clickhouse_url"] = f"chdb://{(data_dir / 'clickhouse').resolve()}"
    if raw["wal_dir"] is None:
        raw["wal_dir"] = str(data_dir / "wal")
    if raw["database_url"] == "":
        raw["database_url"] = None
    try:
        config = Config(**raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        var = _FIELD_TO_VAR.get(field, field)
        value = environ.get(var, ENV_VARS.get(var, ("", ""))[1])
        value = mask_url(value) if isinstance(value, str) else value
        reason = _EXPECTED.get(field) if error["type"].endswith("_parsing") else None
        reason = reason or str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid {var}={value!r}: {reason}") from None
    config = _fit_flush_to_buffer(config, environ)
    return config


def _fit_flush_to_buffer(config: Config, environ: Mapping[str, str]) -> Config:
    """A flush never exceeds the buffer, and a default yields to what the operator set:
    ``INGEST_FLUSH_EVENTS`` unset → at most half of ``INGEST_EVENT_BUFFER`` (a batch can
    be in flight while the next one fills); ``INGEST_EVENT_BUFFER`` unset → at least twice
    ``INGEST_FLUSH_EVENTS``. Only both set and in conflict is an error, naming both."""
    buffer_set = bool(environ.get("INGEST_EVENT_BUFFER"))
    flush_set = bool(environ.get("INGEST_FLUSH_EVENTS"))
    if buffer_set and not flush_set:
        flush = min(config.flush_events, max(1, config.event_buffer // 2))
        return config.model_copy(update={"flush_events": flush})
    if flush_set and not buffer_set:
        buffer = max(config.event_buffer, 2 * config.flush_events)
        return config.model_copy(update={"event_buffer": buffer})
    if config.flush_events > config.event_buffer:
        raise ConfigError(
            f"invalid INGEST_FLUSH_EVENTS={config.flush_events}: "
            f"must not exceed INGEST_EVENT_BUFFER={config.event_buffer}"
        )
    return config
