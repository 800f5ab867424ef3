-- Raw events, one row per accepted event. The columns are a contract read by future
-- versions: add columns, never rename or retype them.
--
-- Exactly-once, two mechanisms (see README "Duplicates"):
--  * every INSERT carries its batch id as insert_deduplication_token; the table keeps the
--    last 100,000 tokens (non_replicated_deduplication_window), so replaying a batch whose
--    acknowledgement was lost is a no-op;
--  * ReplacingMergeTree keyed on event_id (last in the sort key) collapses a row that
--    arrived twice through different batches (a client retry the server could not see):
--    merges remove the copy, and `FINAL` hides it until then.
-- received_at has no DEFAULT on purpose: Sluice stamps it when the request is accepted.
CREATE TABLE IF NOT EXISTS events_raw_v1
(
    event_id      UUID,
    project_id    UUID,
    event         LowCardinality(String),
    anonymous_id  Nullable(String),
    user_id       Nullable(String),
    session_id    Nullable(String),
    timestamp     DateTime64(3, 'UTC'),
    received_at   DateTime64(3, 'UTC'),
    properties    String,
    extras        String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (project_id, timestamp, event, event_id)
SETTINGS non_replicated_deduplication_window = 100000
