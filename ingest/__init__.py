"""Sluice's ingest pipeline. Each stage is one module; this is the map.

::

    POST /api/v1/ingest/events                                     ingest/http.py
        │  Origin (403) · header token before the body · body ≤ INGEST_MAX_BODY_BYTES
        │  (after gzip), read within INGEST_READ_TIMEOUT (408) · envelope · token
        │  (auth/resolver.py: cached; paused project → 503)
        │    ▲ SDK paths (/v1/batch, /e/, ...): Segment's, RudderStack's   ingest/sdk.py
        │    │ and PostHog's wire formats → token + the native body; pure
        │    │ (their aiohttp handlers: ingest/sdk_routes.py)
        ▼
    rate limit  token bucket per project, on events sent (429)     ingest/ratelimit.py
        │
        ▼
    validate ── one typed msgspec pass; bad events rejected by     ingest/validate.py
        │       index, with a reason; object values kept as sent;
        │       not JSON at all (not UTF-8, NaN, too deep) → 400
        │       the user agent (header, or the event's own) →        ingest/enrich.py
        │       browser, os, device_type, is_bot: once per distinct
        │       agent (cached)
        │  row lines (ingest/rows.py: the row contract), received_at stamped once
        ▼
    buffer ──── bounded by pending events; full → 503 Retry-After  ingest/buffer.py
        │       requests fill a batch; a batch is a log segment,
        │       its id the dedup token, cut at INGEST_FLUSH_EVENTS
        │  append ↓ · the 2xx waits for the group sync that covers it
    log ─────── write-ahead log: length|crc32|payload records,     ingest/wal.py
        │       one writer thread, one fdatasync per group; at boot
        │       the segments a dead process left are flushed first
        │  a batch, once every record in it is durable
        ▼
    flush ───── one INSERT per batch, batch id = dedup token       ingest/flush.py
        │  (ClickHouse parses the lines; nothing is re-encoded in Python)
        │ ok → ClickHouse events_raw_v1 (+ usage hook), log segment deleted;
        │      path, referrer_domain, utm_* computed there (MATERIALIZED, 0003)
        │ fail ↓
    dead-letter  one failed_events row per batch (Postgres),       ingest/deadletter.py
        │        log segment deleted (that fails too → fatal: 503
        │        "ingest down", batch held in memory and in the log)
        ▼
    drain ───── replay due rows (SKIP LOCKED) by the flush's       ingest/drain.py
                path, backoff on transient errors, bisect +
                quarantine permanent ones

Reading (a secret read key, ``auth/keys.py``; never a publishable token)::

    GET /api/v1/events · /stats/{timeseries,top,active-users,sessions}  ingest/read.py
        · /sessions · /persons/{id} · /project
        │  key → project (cached) · parameters checked (400 names one)
        ▼
    queries ── SQL for one project only, values bound as server-side  ingest/queries.py
        │      parameters, FINAL for client retries, persons resolved
        │      through person_links_v1 (identity stitching), ClickHouse
        │      read limits (time, memory, threads, result rows)
        │  folded days and hours from the rollups, the rest from events_raw_v1
        ▲
    rollup ─── background pass: finished (and late-touched) days and  ingest/rollup.py
               today's finished hours folded from events_raw_v1 FINAL
               into per-person and per-value counts

    GET / → /dashboard/: a single page over the read API, /healthz and   ingest/dashboard.py
        /metrics (files in ingest/dashboard_static/, shipped in the wheel)

Around it: process flags read by the hot path (``state.py``), metrics (``metrics.py``),
configuration (``config.py``), logging (``logs.py``), the composition root, the boot
recovery and the one-deadline shutdown (``app.py``), and the ``sluice`` command line
(``cli.py``). Stores live in ``storage/`` (ClickHouse transports, Postgres, migrations);
projects and tokens in ``auth/``.
The raw events' retention (``EVENTS_RETENTION_DAYS`` as a TTL, made to match at boot):
``retention.py``.

The promise: an event answered with 2xx reaches ClickHouse exactly once — also across a
crash (the log), a lost acknowledgement (the dedup token) and a client retry (the sort
key). Every stage says in its docstring what enters, what leaves and what happens on
failure.
"""

__version__ = "0.1.0"
