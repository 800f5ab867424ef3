-- 0005 — rollups: finished days of events folded into per-person counts, for stats over
-- long ranges (ingest/rollup.py writes them, ingest/queries.py reads them).
--
-- inserted_at: when ClickHouse stored the row (set by ClickHouse at insert, never sent).
-- The rollup pass looks for rows inserted since its last pass (the minmax index skips
-- the rest) to find the days it must fold again: an event arriving late — a client's
-- offline queue, a batch replayed from the dead-letter table hours later — re-folds its
-- day. Rows stored before this migration get the migration's time (MATERIALIZE COLUMN
-- writes it into every part; otherwise ClickHouse would compute now() at every read).
ALTER TABLE events_raw_v1 ADD COLUMN IF NOT EXISTS inserted_at DateTime MATERIALIZED now();

ALTER TABLE events_raw_v1 ADD INDEX IF NOT EXISTS inserted_at_minmax inserted_at TYPE minmax GRANULARITY 1;

ALTER TABLE events_raw_v1 MATERIALIZE COLUMN inserted_at SETTINGS mutations_sync = 1;

-- One row per (day, dimension, value, person, bot flag) of a project: how many distinct
-- events (counted from events_raw_v1 FINAL, so a client retry stored twice counts once).
-- dim '' is every event (value ''), 'event' the event name, then path, referrer_domain,
-- utm_source, utm_medium, utm_campaign, browser, os, device_type. person is cityHash64 of
-- the event's own person id (user id, else anonymous id; 0 when neither), resolved
-- through person_links_v1 when read — so an identify arriving later needs no re-fold.
-- version is the fold that wrote the row; a day is read at the version rollup_days_v1
-- names, so a re-fold replaces a day at once (older rows are merged away by version).
CREATE TABLE IF NOT EXISTS rollup_daily_v1
(
    project_id  UUID,
    day         Date,
    dim         LowCardinality(String),
    value       LowCardinality(String),
    person      UInt64,
    is_bot      UInt8,
    version     UInt64,
    events      UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(day)
ORDER BY (project_id, day, dim, value, person, is_bot);

-- The same per hour, for hourly time series: dim '' and 'event' only.
CREATE TABLE IF NOT EXISTS rollup_hourly_v1
(
    project_id  UUID,
    hour        DateTime('UTC'),
    dim         LowCardinality(String),
    value       LowCardinality(String),
    person      UInt64,
    is_bot      UInt8,
    version     UInt64,
    events      UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(hour)
ORDER BY (project_id, hour, dim, value, person, is_bot);

-- Which days are folded, at which version, and up to when they were inserted.
CREATE TABLE IF NOT EXISTS rollup_days_v1
(
    project_id  UUID,
    day         Date,
    version     UInt64,
    events      UInt64,
    folded_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (project_id, day);
