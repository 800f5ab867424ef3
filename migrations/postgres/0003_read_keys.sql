-- Secret read keys: `sluice_sk_…`, one project each, for the read API (never for ingest).
-- Kept apart from api_tokens on purpose: a publishable token ships inside web pages and
-- must never be able to read; a separate table means no lookup can confuse the two.
-- (0003: 0002 is taken by another change landing in parallel; the runner applies every
-- version it has not recorded, in order, so the gap is harmless.)

CREATE TABLE read_keys (
    id            uuid PRIMARY KEY,
    project_id    uuid NOT NULL REFERENCES projects (id),
    key_hash      bytea NOT NULL UNIQUE,  -- sha256 of the whole key; the plaintext is never stored
    key_hint      text NOT NULL,          -- last characters, so an operator can tell keys apart
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz             -- stamped at most once a minute per key
);
CREATE INDEX read_keys_project_id ON read_keys (project_id);
