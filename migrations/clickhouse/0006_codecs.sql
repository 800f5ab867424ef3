-- 0006 — column codecs for events_raw_v1, chosen by measurement (`make bench-codecs`,
-- bench/codecs.py). Storage only: every type, default and the sort key stay as they are;
-- a statement with only a codec changes no data. Parts written from now on, and every
-- part a merge rewrites, use the new codecs; parts already on disk keep theirs until
-- they are merged (`OPTIMIZE TABLE events_raw_v1 FINAL` rewrites them all at once).
--
-- Measured on 1,001,970 events shaped like the bench body (bench/seed.py: 90 days, 48k
-- visitors, 300 event names, bench-body properties with realistic variety), merged into
-- one part per month; bytes on disk per event, by column:
--
--   column            LZ4 (before)  chosen                     alternatives measured
--   event_id          16.06         16.06  (LZ4, kept)         ZSTD(1) 15.01, ZSTD(3) 14.95
--   anonymous_id      10.80          4.96  ZSTD(1)             ZSTD(3) 5.49, (6) 5.00, (9) 5.33
--   session_id         7.61          3.17  ZSTD(1)             ZSTD(3) 3.30, (6) 3.42
--   user_id            0.27          0.11  ZSTD(1)             ZSTD(3) 0.13
--   timestamp          5.33          3.01  Delta(8), ZSTD(1)   ZSTD(1) 3.30, DoubleDelta+ZSTD(1) 3.77,
--   received_at        5.33          3.12  Delta(8), ZSTD(1)     T64+ZSTD(1) 3.04, T64+ZSTD(3) 2.97
--   client_timestamp   5.33          3.01  Delta(8), ZSTD(1)
--   properties        22.05         12.10  ZSTD(3)             ZSTD(1) 12.58, (5) 9.26, (6) 9.02, (9) 8.41
--   extras             8.62          3.89  ZSTD(3)             ZSTD(1) 4.17, (5) 3.02, (6) 3.21, (9) 2.98
--   project_id, event  0.21          0.21  (kept)              ZSTD(1) 0.07
--   whole table       81.7          49.8 bytes/event (active parts, system.parts)
--
-- Why not more: ZSTD(5) and above save another ~3.5 bytes/event on the JSON columns
-- (47.2 → 46.1 for the whole table) but cost the engine: OPTIMIZE FINAL of the million
-- events took 2.3-4.7 s against 1.3-1.9 s, and row-line inserts (the flush's statement,
-- 20,000 events per INSERT) ran at 126k-81k events/s against 150k-220k for LZ4 to ZSTD(3)
-- (wall time on a shared 2-core machine: indicative) — on a box where the embedded engine
-- gets idle CPU only, the stored ingest rate is the engine's. ZSTD on event_id buys 1 byte
-- in 16 (its 74 random bits do not compress) and slows every FINAL read, which decodes
-- the sort key. The ids compress best at ZSTD(1), not higher. Delta(8) beats DoubleDelta
-- (the times are sorted only within a day and an event name: the deltas jump).
--
-- Columns added by later migrations get their codecs in those (or a later) migrations.
ALTER TABLE events_raw_v1 MODIFY COLUMN anonymous_id CODEC(ZSTD(1));
ALTER TABLE events_raw_v1 MODIFY COLUMN user_id CODEC(ZSTD(1));
ALTER TABLE events_raw_v1 MODIFY COLUMN session_id CODEC(ZSTD(1));
ALTER TABLE events_raw_v1 MODIFY COLUMN timestamp CODEC(Delta(8), ZSTD(1));
ALTER TABLE events_raw_v1 MODIFY COLUMN received_at CODEC(Delta(8), ZSTD(1));
ALTER TABLE events_raw_v1 MODIFY COLUMN client_timestamp CODEC(Delta(8), ZSTD(1));
ALTER TABLE events_raw_v1 MODIFY COLUMN properties CODEC(ZSTD(3));
ALTER TABLE events_raw_v1 MODIFY COLUMN extras CODEC(ZSTD(3));
