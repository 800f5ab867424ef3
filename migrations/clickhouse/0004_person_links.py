"""0004 — identity links: which user id an anonymous id (or an alias) belongs to.

One row per (project, other id, user id) ever linked, with the earliest time the link was
seen, in person_links_v1. Filled at insert by person_links_mv from the events themselves,
so a link exists as soon as its event is stored (replays and migrations included):

* an event carrying both an anonymous_id and a user_id links them (a native event sent
  after login, Segment `identify`, PostHog `$identify` with `$anon_distinct_id`, and every
  later event of an SDK that sends both);
* `$create_alias` (Segment `alias`, PostHog `alias()`) links `extras.previousId`
  (Segment) or `properties.alias` (PostHog) to the event's person.

Reads resolve an id to the user id of its EARLIEST link (ingest/queries.py): a shared
device that later logs into a second account keeps its anonymous history with the first.
A person is counted once across the link, for events before the identify too, because the
link is applied when reading, never written into the events. AggregatingMergeTree keeps
the table small: rows of one link collapse into one with min(linked_at), in any order.

Steps (each idempotent): the table, the view, then the links of events stored before this
migration through the view's own SELECT (run twice, the copies collapse into one row).
"""

from __future__ import annotations

from typing import Any

TABLE = """
CREATE TABLE IF NOT EXISTS person_links_v1
(
    project_id  UUID,
    other_id    String,
    user_id     String,
    linked_at   SimpleAggregateFunction(min, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (project_id, other_id, user_id)
"""
# The links of a block of events_raw_v1 rows: the view's query and the backfill's.
LINKS = """
SELECT project_id, tupleElement(link, 1) AS other_id, tupleElement(link, 2) AS user_id,
       min(ts) AS linked_at
FROM
(
    SELECT project_id, timestamp AS ts, arrayJoin(arrayFilter(
        x -> tupleElement(x, 1) != '' AND tupleElement(x, 2) != ''
             AND tupleElement(x, 1) != tupleElement(x, 2),
        [
            (ifNull(anonymous_id, ''), ifNull(user_id, '')),
            (if(event = '$create_alias',
                coalesce(nullIf(JSONExtractString(extras, 'previousId'), ''),
                         nullIf(JSONExtractString(properties, 'alias'), ''), ''),
                ''),
             coalesce(user_id, anonymous_id, ''))
        ])) AS link
    FROM events_raw_v1
    WHERE (anonymous_id IS NOT NULL AND user_id IS NOT NULL) OR event = '$create_alias'
)
GROUP BY project_id, other_id, user_id
"""


async def up(ch: Any) -> None:
    await ch.command(TABLE)
    await ch.command(
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS person_links_mv TO person_links_v1 AS {LINKS}"
    )
    await ch.command(f"INSERT INTO person_links_v1 {LINKS}")
