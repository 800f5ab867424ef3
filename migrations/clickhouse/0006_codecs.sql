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
--   event_id          16.06         16.06  (LZ4, kept)         ZSTD(1) 15.02, ZSTD(3) 14.92
--   anonymous_id      10.80          4.96  ZSTD(1)             ZSTD(3) 5.49, (6) 5.00, (9) 5.33
--   session_id         7.61          3.18  ZSTD(1)             ZSTD(3) 3.30, (6) 3.42
--   user_id            0.27          0.11  ZSTD(1)             ZSTD(3) 0.13
--   timestamp          5.33          3.01  Delta(8), ZSTD(1)   ZSTD(1) 3.30, DoubleDelta+ZSTD(1)
--   received_at        5.33          3.12  Delta(8), ZSTD(1)     3.77, T64+ZSTD(1) 3.04,
--   client_timestamp   5.33          3.01  Delta(8), ZSTD(1)     T64+ZSTD(3) 2.97
--   properties        22.05         12.58  ZSTD(1)             ZSTD(3) 12.10, (5) 9.26, (9) 8.41
--   extras             8.62          4.17  ZSTD(1)             ZSTD(3) 3.89, (5) 3.02, (9) 2.98
--   project_id, event  0.21          0.21  (kept)              ZSTD(1) 0.07
--   whole table       81.7          50.5 bytes/event (active parts, system.parts)
--
-- Insert cost, the flush's own statement (row lines, 20,000 events per INSERT), median
-- of 5 rounds interleaved, in events per CPU-second of the engine (two runs): LZ4
-- 246k-268k; chosen 220k (-18%); the ids at ZSTD(1) and JSON at ZSTD(3) 193k-216k;
-- ZSTD(5) 138k-161k, ZSTD(6) 130k-136k, ZSTD(9) 115k-121k. Wall-clock rates on this
-- shared 2-core machine moved ±25% between runs: indicative only.
--
-- Why not more: ZSTD(3) on the JSON saves 0.8 byte/event for ~5-10% more insert CPU;
-- ZSTD(5) and above save ~3.5 bytes/event (7%) but cost 35-55% of the insert rate and
-- 2-4x the merge time (OPTIMIZE FINAL of the million: 4.2-6.4 s against 1.0-2.2 s) — on
-- a box where the embedded engine gets idle CPU only, the stored ingest rate is the
-- engine's. ZSTD on event_id buys 1 byte in 16 (its 74 random bits do not compress) and
-- slows every FINAL read, which decodes the sort key. The ids compress best at ZSTD(1),
-- not higher. Delta(8) beats DoubleDelta: the times are sorted only within a day and an
-- event name, so the deltas jump. project_id and event are already almost free.
--
-- With 0003's enrichment columns (LowCardinality, LZ4, not changed here) the same million
-- events take 85.9 bytes/event before and 54.9 after; ZSTD(1) on those columns would save
-- ~1.5 more (user_agent, browser, os 0.63 -> 0.36 each, device_type 0.52 -> 0.22, path
-- 1.01 -> 0.92, referrer and utm_* ~0.23 -> 0.11) — measured, left to a later migration.
-- Their MATERIALIZED JSON parses halve the insert rate: LZ4 117k, 0006 100k events per
-- CPU-second (-15%).
--
-- Columns added by later migrations get their codecs in those (or a later) migrations.
ALTER TABLE events_raw_v1 MODIFY COLUMN anonymous_id CODEC(ZSTD(1));
ALTER TABLE events_raw_v1 MODIFY COLUMN user_id CODEC(ZSTD(1));
ALTER TABLE events_raw_v1 MODIFY COLUMN session_id CODEC(ZSTD(1));
ALTER TABLE events_raw_v1 MODIFY COLUMN timestamp CODEC(Delta(8), ZSTD(1));
ALTER TABLE events_raw_v1 MODIFY COLUMN received_at CODEC(Delta(8), ZSTD(1));
ALTER TABLE events_raw_v1 MODIFY COLUMN client_timestamp CODEC(Delta(8), ZSTD(1));
ALTER TABLE events_raw_v1 MODIFY COLUMN properties CODEC(ZSTD(1));
ALTER TABLE events_raw_v1 MODIFY COLUMN extras CODEC(ZSTD(1));
