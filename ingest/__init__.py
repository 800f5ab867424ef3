"""Sluice's ingest pipeline. Each stage is one module; this is the map.

::

    POST /api/v1/ingest/events                                     ingest/http.py
        │  Origin (403) · header token before the body · body ≤ INGEST_MAX_BODY_BYTES
        │  (after gzip), read within INGEST_READ_TIMEOUT (408) · envelope · token
        │  (auth/resolver.py: cached; paused project → 503)
        ▼
    rate limit  token bucket per project, on events sent (429)     ingest/ratelimit.py
        │
        ▼
    validate ── one typed msgspec pass; bad events rejected by     ingest/validate.py
        │       index, with a reason; object values kept as sent;
        │       not JSON at all (not UTF-8, NaN, too deep) → 400
        │  row lines (JSONCompactEachRow, received_at stamped once) per request
        ▼
    buffer ──── bounded by pending events; full → 503 Retry-After  ingest/buffer.py
        │  batches of ≤ INGEST_FLUSH_EVENTS, or every INGEST_FLUSH_INTERVAL
        ▼
    flush ───── one INSERT per batch, batch id = dedup token       ingest/flush.py
        │  (ClickHouse parses the lines; nothing is re-encoded in Python)
        │ ok → ClickHouse events_raw_v1 (+ usage hook)
        │ fail ↓
    dead-letter  one failed_events row per batch (Postgres)        ingest/deadletter.py
        │        (that fails too → fatal: 503 "ingest down", batch held in memory)
        ▼
    drain ───── replay due rows (SKIP LOCKED), backoff on          ingest/drain.py
                transient errors, bisect + quarantine permanent ones

Around it: process flags read by the hot path (``state.py``), metrics (``metrics.py``),
configuration (``config.py``), logging (``logs.py``), the composition root and the
shutdown choreography (``app.py``), and the ``sluice`` command line (``cli.py``).
Stores live in ``storage/`` (ClickHouse transports, Postgres, migrations); projects and
tokens in ``auth/``.

The promise: an event answered with 2xx reaches ClickHouse exactly once. Every stage
says in its docstring what enters, what leaves and what happens on failure.
"""

__version__ = "0.1.0"
