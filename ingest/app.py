"""Composition root and lifecycle: wire the pipeline once, start it, stop it in order.

Boot (``sluice serve``):

1. Postgres: ``DATABASE_URL``, or the embedded server under ``$DATA_DIR/postgres``.
   It must answer within :data:`storage.postgres.BOOT_RETRY_SECONDS`, else exit 1.
2. Postgres migrations (idempotent, advisory-locked).
3. ClickHouse: the embedded engine must open (else exit 1); a server may be down — its
   migrations are retried in the background and batches park in ``failed_events``
   meanwhile.
4. Flusher and drain tasks, then the HTTP listener.

Shutdown (SIGTERM/SIGINT):

1. stop admitting: ingest answers 503 "ingest disabled", ``/readyz`` 503 — for
   :func:`readyz_lead` seconds the listener stays open so a load balancer sees it;
2. close the listener and let in-flight requests finish;
3. flush the buffer within ``INGEST_SHUTDOWN_GRACE``;
4. whatever ClickHouse did not take goes to ``failed_events``; exit 0. Exit 1 only if
   some events could be stored nowhere (both stores down), with their count logged.

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
from ingest.buffer import Buffer
from ingest.config import Config
from ingest.deadletter import DeadLetter
from ingest.drain import Drain
from ingest.flush import Flusher, UsageHook, no_usage
from ingest.http import build_app
from ingest.metrics import Metrics
from ingest.state import State
from storage.clickhouse import ClickHouse, ClickHouseError, EmbeddedClickHouse, open_clickhouse
from storage.migrations import clickhouse_up, postgres_up
from storage.postgres import EmbeddedPostgres, close_pool, create_pool
from storage.urls import mask_url

log = structlog.get_logger("sluice.app")

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
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def _gauges(self) -> dict[str, tuple[str, float]]:
        s, b, r = self.state, self.buffer, self.resolver
        return {
            "sluice_buffer_pending_events": ("Events admitted, not yet durable", b.pending),
            "sluice_buffer_capacity_events": ("INGEST_EVENT_BUFFER", b.capacity),
            "sluice_dlq_depth_rows": ("Active dead-letter rows", s.dlq_rows),
            "sluice_dlq_depth_events": ("Events in active dead-letter rows", s.dlq_events),
            "sluice_fatal": ("1 when both stores failed a batch", s.fatal),
            "sluice_ingest_disabled": ("1 when not admitting", s.disabled or s.shutting_down),
            "sluice_token_cache_hits": ("Token lookups answered from cache", r.hits),
            "sluice_token_cache_misses": ("Token lookups sent to Postgres", r.misses),
            "sluice_token_stale_served": ("Stale entries served: Postgres failed", r.stale_served),
            "sluice_duplicate_events_dropped": (
                "Client retries not stored twice",
                b.duplicates_dropped,
            ),
        }


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

    buffer = Buffer(config.event_buffer, config.flush_events)
    deadletter = DeadLetter(pool)
    resolver = TokenResolver(
        lambda token: projects.lookup(pool, token),
        lambda resolved: projects.touch_last_used(pool, resolved.token_id, utcnow()),
        ttl=config.token_cache_ttl,
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
        flush_events=config.flush_events,
        flush_interval=config.flush_interval,
        usage_hook=usage_hook,
        on_recovery=drain.kick,
    )
    service = Service(
        config, state, metrics, buffer, pool, clickhouse, deadletter, resolver, flusher, drain
    )
    metrics.add_gauges(service._gauges)
    try:
        await drain.refresh_depth()
        await _migrate_clickhouse(service)
    except BaseException:
        await clickhouse.close()
        await close_pool(pool)
        raise
    service.tasks.append(asyncio.create_task(flusher.run(), name="flusher"))
    service.tasks.append(asyncio.create_task(drain.run(), name="drain"))
    return service


async def _migrate_clickhouse(service: Service) -> None:
    try:
        # A server that accepts connections and never answers would otherwise hold boot
        # for the whole request timeout.
        applied = await asyncio.wait_for(clickhouse_up(service.clickhouse), BOOT_CLICKHOUSE_WAIT)
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


async def _migrate_later(service: Service) -> None:
    while not service.state.shutting_down:
        await asyncio.sleep(CLICKHOUSE_MIGRATE_RETRY)
        try:
            applied = await clickhouse_up(service.clickhouse)
        except ClickHouseError:
            continue
        service.state.clickhouse_ok()
        log.info("clickhouse_migrated", versions=[m.version for m in applied], late=True)
        service.drain.kick()
        return


async def stop_service(service: Service) -> int:
    """Shutdown steps 3–4 (the listener is already closed). Returns events lost."""
    service.state.shutting_down = True
    service.drain.stop()
    drain_task = next((t for t in service.tasks if t.get_name() == "drain"), None)
    if drain_task is not None:
        try:
            await asyncio.wait_for(asyncio.shield(drain_task), service.config.shutdown_grace / 2)
        except TimeoutError:
            drain_task.cancel()  # its transaction rolls back; rows stay in failed_events
    lost = await service.flusher.stop(service.config.shutdown_grace)
    for task in service.tasks:
        task.cancel()
    await asyncio.gather(*service.tasks, return_exceptions=True)
    await service.resolver.close()
    with contextlib.suppress(Exception):
        await service.clickhouse.close()
    await close_pool(service.pool)
    return lost


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
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.shutdown_grace)
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

    log.info("shutdown_begin", pending=service.buffer.pending)
    service.state.shutting_down = True
    await asyncio.sleep(readyz_lead(config.shutdown_grace))  # let balancers see /readyz 503
    await runner.cleanup()  # closes the listener, waits for in-flight requests
    lost = await stop_service(service)
    if lost:
        log.critical("shutdown_events_lost", events=lost, reason=service.state.fatal_reason)
        return 1
    log.info("shutdown_complete", dlq_depth=service.state.dlq_rows)
    return 0
