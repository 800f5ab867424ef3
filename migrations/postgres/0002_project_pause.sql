-- Per-project pause: the incident switch for one tenant (`sluice projects pause ID`).
-- While set, the project's tokens still resolve, and its ingest answers 503 with
-- Retry-After, so its SDKs keep their events and send them after `resume`.
-- Servers notice within INGEST_TOKEN_CACHE_TTL; no restart.
ALTER TABLE projects ADD COLUMN IF NOT EXISTS paused_at timestamptz;
