"""Composition root and lifecycle: wire the pipeline once, start it, stop it in order.

Boot (``sluice serve``):

1. Postgres: ``DATABASE_URL``, or the embedded server under ``$DATA_DIR/postgres``.
   It must answer within :data:`storage.postgres.BOOT_RETRY_SECONDS`, else exit 1.
2. Postgres migrations (idempotent, advisory-locked).
3. ClickHouse: the embedded engine must open (else exit 1; a directory still held by
   the engine of a server killed a moment ago is waited for); a server may be down —
   its migrations are retried in the background and batches park in ``failed_events``.
   After the migrations, the raw events' TTL is made to match ``EVENTS_RETENTION_DAYS``
   (``ingest/retention.py``).
4. The write-ahead log (``INGEST_DURABILITY=fsync``): lock ``INGEST_WAL_DIR`` and queue
   every whole batch a dead process left in it, ahead of anything new (each under its
   original id, so a batch that had landed is not stored twice).
5. Flusher and drain tasks, the event-loop stall monitor, then the HTTP listener.

Shutdown (SIGTERM/SIGINT) has one deadline, ``INGEST_SHUTDOWN_GRACE`` from the signal:

1. stop admitting: ingest answers 503 "ingest disabled", ``/readyz`` 503 — for
   :func:`readyz_lead` seconds the listener stays open so a load balancer sees it;
2. close the listener and let in-flight requests finish (bounded);
3. stop the drain; flush (or park) what is buffered until the deadline, less a reserve
   for closing the stores (:data:`CLOSE_RESERVE`);
4. exit 0 when everything is in a store; exit 3 when batches stay in the write-ahead log
   for the next boot (logged with their count); exit 1 when events were lost (only
   possible with ``INGEST_DURABILITY=memory`` and both stores down).

Nothing here is module-level state: two services can run in one process (tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from auth import projects
from auth.resolver import TokenResolver, utcnow
from ingest import enrich
from ingest.buffer import Buffer
from ingest.config import Config
from ingest.deadletter import DeadLetter
from ingest.drain import Drain
from ingest.flush import Flusher, UsageHook, no_usage
from ingest.http import build_app
from ingest.metrics import Metrics
from ingest.retention import apply_retention
from ingest.rollup import Rollup
from ingest.state import State
from ingest.wal import Wal, WalLocked
from storage.clickhouse import ClickHouse, ClickHouseError, EmbeddedClickHouse, open_clickhouse
from storage.migrations import clickhouse_up, postgres_up
from storage.postgres import EmbeddedPostgres, close_pool, create_pool
from storage.urls import mask_url

log = structlog.get_logger("sluice.app")

EXIT_OK, EXIT_LOST, EXIT_LEFT_IN_LOG = 0, 1, 3
CLOSE_RESERVE = 1.0  # seconds of the grace kept for closing the stores (at most 20% of it)
STALL_PROBE = 0.05  # the stall monitor's tick; a tick later than this is a stall
CLICKHOUSE_MIGRATE_RETRY = 2.0  # seconds between attempts while a server is unreachable
BOOT_CLICKHOUSE_WAIT = 5.0  # a ClickHouse server slower than this at boot is retried later


class BootError(RuntimeError):
    """Sluice cannot start; the message says why and what to do (never a password)."""

    def __init__(self, message: str) -> None:
        super().__init__(mask_url(message))


def tune_gc() -> None:
    """Keep the cyclic GC off the request path.

    Everything alive after boot (modules, classes, the app) is moved out of the GC's
    reach (``gc.freeze``): a full collection then scans only what requests created
    since. Measured at 400 req/s: 821 collections took 458 ms in 6 s, the longest 52 ms
    — the whole p99. The hot path makes many short-lived dicts (parsed events), so the
    young generation is also allowed to grow larger before it is collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def readyz_lead(grace: float) -> float:
    """How long the listener stays open, answering 503, after SIGTERM."""
    return min(2.0, grace * 0.2)


@dataclass
class Service:
    config: Config
    state: State
    metrics: Metrics
    buffer: Buffer
    pool: asyncpg.Pool
    clickhouse: ClickHouse
    deadletter: DeadLetter
    resolver: TokenResolver
    flusher: Flusher
    drain: Drain
    wal: Wal | None = None
    rollup: Rollup | None = None
    stalls: StallMonitor = field(default_factory=lambda: StallMonitor())
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def _gauges(self) -> dict[str, tuple[str, float]]:
        s, b, r = self.state, self.buffer, self.resolver
        rollup_pending = self.rollup.pending if self.rollup is not None else 0
        return {
            "sluice_rollup_pending_days": ("Project-days waiting to be folded", rollup_pending),
            "sluice_buffer_pending_events": ("Events admitted, not yet durable", b.pending),
            "sluice_buffer_capacity_events": ("INGEST_EVENT_BUFFER", b.capacity),
            "sluice_dlq_depth_rows": ("Active dead-letter rows", s.dlq_rows),
            "sluice_dlq_depth_events": ("Events in active dead-letter rows", s.dlq_events),
            "sluice_fatal": ("1 when both stores failed a batch", s.fatal),
            "sluice_ingest_disabled": ("1 when not admitting", s.disabled or s.shutting_down),
            "sluice_token_cache_hits": ("Token lookups answered from cache", r.hits),
            "sluice_token_cache_misses": ("Token lookups sent to Postgres", r.misses),
            "sluice_token_stale_served": ("Stale entries served: Postgres failed", r.stale_served),
            "sluice_event_loop_max_stall_seconds": (
                "Longest event-loop stall seen since boot",
                self.stalls.max_stall,
            ),
            **self._wal_gauges(),
        }

    def _wal_gauges(self) -> dict[str, tuple[str, float]]:
        if self.wal is None:
            return {}
        w = self.wal.stats
        return {
            "sluice_wal_bytes": ("Bytes of the write-ahead log not yet released", w.bytes),
            "sluice_wal_max_bytes": ("INGEST_WAL_MAX_BYTES", self.wal.max_bytes),
            "sluice_wal_failing": ("1 while the last log write or sync failed", w.failing),
            "sluice_wal_sync_max_seconds": (
                "Longest group write+sync since boot, as the event loop saw it",
                w.sync_seconds_max,
            ),
        }

    def _counters(self) -> dict[str, tuple[str, float]]:
        out = {
            "sluice_event_loop_stalls": (
                f"Event-loop ticks more than {STALL_PROBE * 1000:.0f} ms late",
                self.stalls.stalls,
            ),
        }
        if self.rollup is not None:
            r = self.rollup
            out["sluice_rollup_folds"] = ("Project-days folded into the rollups", r.folded)
            out["sluice_rollup_failures"] = ("Rollup passes that failed (retried)", r.failures)
        if self.wal is not None:
            w = self.wal.stats
            out.update(
                {
                    "sluice_wal_syncs": ("Log group commits (one sync each)", w.syncs),
                    "sluice_wal_sync_seconds": (
                        "Time spent in group writes+syncs, as the event loop saw it",
                        w.sync_seconds,
                    ),
                    "sluice_wal_records": ("Requests made durable in the log", w.records),
                    "sluice_wal_write_failures": ("Failed log writes or syncs", w.failures),
                    "sluice_wal_torn_records": ("Torn records dropped at boot", w.torn_records),
                    "sluice_wal_corrupt_segments": (
                        "Corrupt segments moved aside at boot",
                        w.corrupt_segments,
                    ),
                    "sluice_wal_recovered_events": (
                        "Events recovered from the log at boot",
                        w.recovered_events,
                    ),
                }
            )
        return out


class StallMonitor:
    """Measures how late the event loop runs a tick: every stall is a moment in which no
    request was served. ``max_stall`` (seconds) and ``stalls`` are read by /metrics."""

    def __init__(self) -> None:
        self.max_stall = 0.0
        self.stalls = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + STALL_PROBE
            await asyncio.sleep(STALL_PROBE)
            late = loop.time() - expected
            if late > STALL_PROBE:
                self.stalls += 1
            if late > self.max_stall:
                self.max_stall = late


async def connect_postgres(config: Config) -> asyncpg.Pool:
    """The pool for ``DATABASE_URL``, or for the embedded server (started if needed)."""
    dsn = config.database_url
    if dsn is None:
        embedded = EmbeddedPostgres(config.embedded_postgres_dir)
        dsn = await asyncio.to_thread(embedded.start)
    return await create_pool(dsn)


async def start_service(config: Config, *, usage_hook: UsageHook = no_usage) -> Service:
    """Boot steps 1–4 except the listener. Raises :class:`BootError`."""
    state = State(disabled=config.ingest_disabled)
    metrics = Metrics()
    try:
        pool = await connect_postgres(config)
        await postgres_up(pool)
    except Exception as exc:
        raise BootError(f"Postgres: {exc}") from exc
    state.postgres_ok()
    try:
        clickhouse = await open_clickhouse(config.clickhouse_url)
    except ClickHouseError as exc:
        await close_pool(pool)
        raise BootError(f"ClickHouse ({config.clickhouse_url}): {exc}") from exc

    wal: Wal | None = None
    recovered: list[Any] = []
    if config.durability == "fsync":
        wal = Wal(config.wal_dir, config.wal_max_bytes)
        try:
            recovered = await asyncio.to_thread(wal.open)
        except (WalLocked, OSError) as exc:
            await clickhouse.close()
            await close_pool(pool)
            raise BootError(f"write-ahead log: {exc}") from exc
    buffer = Buffer(config.event_buffer, config.flush_events, wal)
    if recovered:
        events = buffer.restore(recovered)
        assert wal is not None
        log.warning(
            "wal_recovered",
            batches=len(recovered),
            events=events,
            torn_records=wal.stats.torn_records,
            corrupt_segments=wal.stats.corrupt_segments,
            detail="left by a process that did not finish; flushed before anything new",
        )
    deadletter = DeadLetter(pool)
    resolver = TokenResolver(
        lambda token: projects.lookup(pool, token),
        lambda resolved: projects.touch_last_used(pool, resolved.token_id, utcnow()),
        ttl=config.token_cache_ttl,
        stale_max=config.token_stale_max,
    )
    drain = Drain(
        pool,
        deadletter,
        clickhouse,
        state,
        metrics,
        buffer,
        batch_limit=config.dlq_drain_batch_limit,
        usage_hook=usage_hook,
    )
    flusher = Flusher(
        buffer,
        clickhouse,
        deadletter,
        state,
        metrics,
        flush_interval=config.flush_interval,
        usage_hook=usage_hook,
        on_recovery=drain.kick,
    )
    service = Service(
        config, state, metrics, buffer, pool, clickhouse, deadletter, resolver, flusher, drain,
        wal, Rollup(clickhouse, config.rollup_interval),
    )  # fmt: skip
    metrics.add_gauges(service._gauges)
    metrics.add_counters(service._counters)
    try:
        await drain.refresh_depth()
        await _migrate_clickhouse(service)
        # The user-agent matchers (~0.4 s to build): now, not in the first request.
        await asyncio.to_thread(enrich.warm)
    except BaseException:
        if wal is not None:
            await wal.close()
        await clickhouse.close()
        await close_pool(pool)
        raise
    service.tasks.append(flusher.start())
    service.tasks.append(asyncio.create_task(drain.run(), name="drain"))
    service.tasks.append(asyncio.create_task(service.rollup.run(), name="rollup"))
    service.tasks.append(asyncio.create_task(service.stalls.run(), name="stall-monitor"))
    return service


async def _migrate_clickhouse(service: Service) -> None:
    try:
        # A server that accepts connections and never answers would otherwise hold boot
        # for the whole request timeout.
        applied = await asyncio.wait_for(_clickhouse_schema(service), BOOT_CLICKHOUSE_WAIT)
    except (ClickHouseError, TimeoutError) as exc:
        if isinstance(service.clickhouse, EmbeddedClickHouse):
            raise BootError(f"ClickHouse migrations failed: {exc}") from exc
        log.warning(
            "clickhouse_unreachable_at_boot",
            clickhouse=service.clickhouse.description,
            error=str(exc)[:300] or f"no answer within {BOOT_CLICKHOUSE_WAIT:.0f} s",
            detail="accepting anyway; batches park in failed_events until it answers",
        )
        service.tasks.append(asyncio.create_task(_migrate_later(service), name="ch-migrate"))
        return
    service.state.clickhouse_ok()
    if applied:
        log.info("clickhouse_migrated", versions=[m.version for m in applied])


async def _clickhouse_schema(service: Service) -> list[Any]:
    """The ClickHouse migrations, then the raw events' TTL (``EVENTS_RETENTION_DAYS``)."""
    applied = await clickhouse_up(service.clickhouse)
    days = service.config.events_retention_days
    action = await apply_retention(service.clickhouse, days)
    if action != "unchanged":
        log.info("events_retention", action=action, days=days or None)
    return applied


async def _migrate_later(service: Service) -> None:
    while not service.state.shutting_down:
        await asyncio.sleep(CLICKHOUSE_MIGRATE_RETRY)
        try:
            applied = await _clickhouse_schema(service)
        except ClickHouseError:
            continue
        service.state.clickhouse_ok()
        log.info("clickhouse_migrated", versions=[m.version for m in applied], late=True)
        service.drain.kick()
        return


async def stop_service(service: Service, deadline: float | None = None) -> int:
    """Shutdown step 3 (the listener is already closed), by ``deadline``
    (``time.monotonic``; default: the grace from now). Returns the events no store took
    (left in the log, or lost without one)."""
    if deadline is None:
        deadline = time.monotonic() + service.config.shutdown_grace
    grace = service.config.shutdown_grace
    reserve = min(CLOSE_RESERVE, grace * 0.2)
    service.state.shutting_down = True
    service.drain.stop()
    if service.rollup is not None:
        service.rollup.stop()
    flusher_task = service.flusher.task
    others = [t for t in service.tasks if t is not flusher_task]
    for task in others:  # the drain's open transaction rolls back: its rows stay put,
        task.cancel()  # and a replay that landed anyway is deduplicated by its token
    await _bounded(asyncio.gather(*others, return_exceptions=True), deadline - reserve)
    left = await service.flusher.stop(deadline - reserve)
    await _bounded(service.resolver.close(), deadline)
    if service.wal is not None:
        await _bounded(service.wal.close(), deadline)
    with contextlib.suppress(Exception):
        await service.clickhouse.close(timeout=max(0.1, deadline - time.monotonic()))
    await close_pool(service.pool, timeout=deadline - time.monotonic())
    return left


async def _bounded(awaitable: Awaitable[Any], deadline: float) -> None:
    try:
        await asyncio.wait_for(awaitable, max(0.01, deadline - time.monotonic()))
    except TimeoutError:
        log.warning("shutdown_step_cut_short", detail="the shutdown deadline was reached")


async def serve(
    config: Config,
    *,
    usage_hook: UsageHook = no_usage,
    on_ready: Callable[[Service], Awaitable[None]] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code."""
    started = time.monotonic()
    service = await start_service(config, usage_hook=usage_hook)
    app = build_app(service)
    grace = config.shutdown_grace
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=max(0.1, grace * 0.2))
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await stop_service(service)
        raise BootError(f"cannot listen on {config.host}:{config.port}: {exc}") from exc
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "listening",
        host=config.host,
        port=config.port,
        clickhouse=service.clickhouse.description,
        ingest_disabled=config.ingest_disabled,
        boot_ms=round((time.monotonic() - started) * 1000),
    )
    if on_ready is not None:
        await on_ready(service)
    await stop.wait()

    deadline = time.monotonic() + grace  # one deadline for the whole shutdown
    log.info("shutdown_begin", pending=service.buffer.pending, grace_s=grace)
    service.state.shutting_down = True
    await asyncio.sleep(readyz_lead(grace))  # let balancers see /readyz 503
    await _bounded(runner.cleanup(), deadline - min(CLOSE_RESERVE, grace * 0.2))
    left = await stop_service(service, deadline)
    if left and service.wal is None:
        log.critical("shutdown_events_lost", events=left, reason=service.state.fatal_reason)
        return EXIT_LOST
    if left:
        log.warning(
            "shutdown_events_left_in_log",
            events=left,
            wal_dir=str(config.wal_dir),
            detail="no store took them before the deadline; the next boot flushes them",
        )
        return EXIT_LEFT_IN_LOG
    log.info("shutdown_complete", dlq_depth=service.state.dlq_rows)
    return EXIT_OK
