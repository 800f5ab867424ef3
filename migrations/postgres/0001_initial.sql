-- Projects, publishable tokens and the dead-letter queue.
-- Stored data is a contract read by future versions: change it only additively.

CREATE TABLE projects (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz            -- soft delete: tokens of a deleted project stop resolving
);

CREATE TABLE api_tokens (
    id            uuid PRIMARY KEY,
    project_id    uuid NOT NULL REFERENCES projects (id),
    token_hash    bytea NOT NULL UNIQUE,  -- sha256 of the whole token; the plaintext is never stored
    token_hint    text NOT NULL,          -- last characters, so an operator can tell tokens apart
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz             -- stamped at most once a minute per token
);
CREATE INDEX api_tokens_project_id ON api_tokens (project_id);

-- One row per batch ClickHouse did not take. `id` is the batch id, which is also the
-- ClickHouse insert deduplication token: a replay after a lost acknowledgement is a no-op.
CREATE TABLE failed_events (
    id               uuid PRIMARY KEY,
    batch            jsonb NOT NULL,      -- {"format": "sluice.events.v1", "columns": [...], "rows": [[...]]}
    event_count      integer NOT NULL,
    last_error       text NOT NULL,
    attempt_count    integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    quarantined_at   timestamptz          -- set when ClickHouse will never take these events
);
-- Batches are written once and read once: skip pglz compression, which is half the
-- cost of writing a large JSONB value (measured: ~200k vs ~100k events/s).
ALTER TABLE failed_events ALTER COLUMN batch SET STORAGE EXTERNAL;
-- Serves the drain's "oldest due, not quarantined" scan.
CREATE INDEX failed_events_due ON failed_events (next_attempt_at, created_at)
    WHERE quarantined_at IS NULL;
