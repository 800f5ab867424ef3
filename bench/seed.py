"""Seed a project with a realistic history, generated inside ClickHouse.

Enters: a migrated embedded ClickHouse directory (``sluice migrate up`` ran; no server
holds it), a project id, a number of events and of days. Leaves: that many rows in
``events_raw_v1`` (plus one ``identify`` row per identified visitor), spread over the
days before ``end``, merged into one part per month (``OPTIMIZE … FINAL``), so that what
the read phase measures is the steady state of a table, not a pile of fresh parts.
On failure: the engine's error propagates (the bench stops).

One ``INSERT … SELECT … FROM numbers(n)``: ClickHouse builds every row itself, instead of
many minutes through the HTTP path. Measured on this class of machine, busy with other
work: before migration 0003's columns, 10 million events in 37–71 s plus 19–23 s for the
merge; with them, 91 s + 48 s while ClickHouse parsed the JSON again for the MATERIALIZED
columns, and 12.5 s + 9.9 s for 2 million once the seed writes those values itself
(``insert_allow_materialized_columns``; :func:`check_materialized` proves them equal).
Larger insert blocks (fewer parts to merge) and ``optimize_on_insert = 0`` were measured
and are no faster.
Everything is a deterministic hash of the row number (``sipHash64(number, k)``), so two
seeds of the same size hold the same data.

The shape (figures for the default 10 million events over 90 days):

* **visitors**: ``VISITORS`` anonymous ids (``anon-…``, 16 hex digits like the bench
  body's), drawn with a heavy head (u³: a few visitors make many sessions, most make a
  few). ``IDENTIFIED_PCT`` % of visitors are identified: from their identify time on their
  events carry a user id as well (``user-N``, ``USERS`` of them, so a user has one to a
  few anonymous ids — devices); before it, only the anonymous id. One ``identify`` event
  per identified visitor carries both ids and the traits (``extras.traits``).
* **sessions** of 1–15 events (mean ~8; positions past a session's length become
  single-event sessions: the bounces), 20–140 s apart; half the visitors' SDKs send a
  ``session_id`` (as PostHog does), the others none (sessions are then derived).
* **events**: ~55 % ``page_view``; the rest ~300 names (``EVENT_NAMES``: object × action,
  Zipf-like). Properties shaped like the bench body (``path``, ``referrer``, ``title``,
  ``utm_source``, ``screen_width``, ``screen_height``, ``plan``); page views add ``url``
  with ``utm_*`` in its query for ~15 % of them (the ``utm_source`` property says
  ``direct`` or ``organic``). 220 paths; a referrer (12 domains) on the first event of
  60 % of sessions, none elsewhere; 6 user-agent strings in
  ``extras.context.userAgent`` beside the bench body's ``library`` and ``locale``, one
  per visitor (by weight: 1 visitor in 30 is a crawler), and the agent columns filled
  as ingest fills them (``ingest.enrich.describe``: browser, OS, device type, bot flag).
  ``path``, ``referrer_domain`` and ``utm_*`` are computed by ClickHouse at insert
  (MATERIALIZED, migration 0003), as for every stored event.
* **ids and times**: ``event_id`` a UUIDv7 of the event's millisecond plus 74 random bits
  (an SDK's own id is as random); ``received_at`` 0–3 s after ``timestamp``;
  ``client_timestamp`` = ``timestamp`` (no clock skew).
"""

from __future__ import annotations

import time
from typing import Any

VISITORS = 50_000
IDENTIFIED_PCT = 4
USERS = 1_500
OBJECTS = [
    "project", "dashboard", "report", "invoice", "user", "team", "file", "comment",
    "alert", "api_key", "webhook", "export", "chart", "filter", "plan",
]  # fmt: skip
ACTIONS = [
    "created", "viewed", "updated", "deleted", "shared", "opened", "closed", "renamed",
    "copied", "archived", "restored", "exported", "imported", "starred", "moved",
    "tagged", "assigned", "approved", "rejected", "scheduled",
]  # fmt: skip
EVENT_NAMES = [f"{o}_{a}" for a in ACTIONS for o in OBJECTS]  # 300
PATHS = (
    ["/", "/pricing", "/signup", "/login", "/features", "/about", "/contact", "/blog",
     "/docs", "/changelog"]
    + [f"/docs/{s}-{i}" for i in range(10) for s in ("guide", "api", "sdk", "faq")]
    + [f"/blog/post-{i}" for i in range(80)]
    + [f"/app/{o}s" for o in OBJECTS]
    + [f"/app/{o}s/settings" for o in OBJECTS]
    + [f"/customers/story-{i}" for i in range(45)]
)  # fmt: skip
REFERRERS = [
    "https://www.google.com/", "https://www.bing.com/search?q=event+analytics",
    "https://news.ycombinator.com/item?id=41234567", "https://www.reddit.com/r/analytics/",
    "https://twitter.com/", "https://www.linkedin.com/feed/", "https://duckduckgo.com/",
    "https://github.com/sluice/sluice", "https://t.co/abc123", "https://www.producthunt.com/",
    "https://medium.com/@someone/post", "https://stackoverflow.com/questions/123",
]  # fmt: skip
UTM = [
    ("newsletter", "email", "spring_2026"), ("google", "cpc", "brand"),
    ("twitter", "social", "launch_week"), ("partner", "referral", "integrations"),
]  # fmt: skip
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
    "like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
]
# Visitors' agents by weight (of 30): the crawler's 1 in 30 are bots (stats leave them out).
UA_WEIGHTS = [0] * 8 + [1] * 6 + [2] * 6 + [3] * 3 + [4] * 6 + [5] * 1
TITLES = ["Sluice - event ingest", "Pricing - Sluice", "Docs - Sluice", "Blog - Sluice"]
PLANS = ["free", "pro", "team", "enterprise"]
SCREENS = [(1440, 900), (1920, 1080), (390, 844), (1536, 864), (2560, 1440)]


def _array(values: list[Any]) -> str:
    """A ClickHouse array literal of constants of ours (no input reaches it)."""
    return "[" + ", ".join(repr(v) if not isinstance(v, str) else _quote(v) for v in values) + "]"


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _pick(array: str, hashed: str) -> str:
    """``array[1 + hashed % length]``."""
    return f"arrayElement({array}, 1 + ({hashed}) % length({array}))"


def events_sql(project_id: str, n: int, days: int, end_ms: int) -> str:
    """The ``INSERT … SELECT`` that writes ``n`` events (see the module docstring)."""
    span_ms = days * 86_400_000
    h = "sipHash64(number, {k})".format
    u = "(sipHash64(number, {k}) % 1000000) / 1000000.0".format
    from ingest.enrich import describe  # what ingest stores for each agent (uap-core)

    agents = [describe(ua) for ua in USER_AGENTS]
    ua = f"arrayElement({_array(UA_WEIGHTS)}, 1 + sipHash64(visitor, 15) % {len(UA_WEIGHTS)})"
    utm = _array([f"utm_source={s}&utm_medium={m}&utm_campaign={c}" for s, m, c in UTM])
    screens = _array([f'"screen_width":{w},"screen_height":{hh}' for w, hh in SCREENS])
    return f"""
INSERT INTO events_raw_v1
    (event_id, project_id, event, anonymous_id, user_id, session_id, timestamp,
     received_at, properties, extras, client_timestamp, user_agent, browser, os,
     device_type, is_bot, path, referrer_domain, utm_source, utm_medium, utm_campaign,
     utm_term, utm_content)
SELECT
    toUUID(concat(substr(tshex, 1, 8), '-', substr(tshex, 9, 4), '-7', substr(r1, 1, 3), '-',
                  'a', substr(r1, 4, 3), '-', substr(r1, 7, 10), substr(r2, 1, 2))) AS event_id,
    toUUID({{project:String}}) AS project_id,
    ev AS event,
    concat('anon-', leftPad(lower(hex(sipHash64(visitor, 3))), 16, '0')) AS anonymous_id,
    if(identified AND ts_ms >= identify_ms,
       concat('user-', toString(sipHash64(visitor, 5) % {USERS})), NULL) AS user_id,
    if(sipHash64(visitor, 6) % 2 = 0,
       concat('s-', leftPad(lower(hex(sipHash64(session_key, 7))), 16, '0')), NULL) AS session_id,
    fromUnixTimestamp64Milli(ts_ms, 'UTC') AS timestamp,
    fromUnixTimestamp64Milli(ts_ms + toInt64({h(k=8)} % 3000), 'UTC') AS received_at,
    concat('{{"path":"', path, '"',
           if(ev = 'page_view', concat(',"url":"https://app.example.com', path,
              if(utm_query != '', concat('?', utm_query), ''), '"'), ''),
           ',"referrer":"', referrer, '","title":"', {_pick(_array(TITLES), h(k=11))},
           '","utm_source":"', if(referrer = '', 'direct', 'organic'), '",',
           {_pick(screens, "sipHash64(visitor, 12)")},
           ',"plan":"', {_pick(_array(PLANS), "sipHash64(visitor, 13)")}, '"}}') AS properties,
    concat('{{"context":{{"library":{{"name":"sluice-js","version":"1.4.2"}},"locale":"',
           {_pick(_array(["en-GB", "en-US", "de-DE", "fr-FR", "es-ES"]), "sipHash64(visitor, 14)")},
           '","userAgent":"', arrayElement({_array(USER_AGENTS)}, 1 + ua_index),
           '"}}}}') AS extras,
    timestamp AS client_timestamp,
    arrayElement({_array([a[0] for a in agents])}, 1 + ua_index) AS user_agent,
    arrayElement({_array([a[1] for a in agents])}, 1 + ua_index) AS browser,
    arrayElement({_array([a[2] for a in agents])}, 1 + ua_index) AS os,
    arrayElement({_array([a[3] for a in agents])}, 1 + ua_index) AS device_type,
    toUInt8(arrayElement({_array([a[4] for a in agents])}, 1 + ua_index)) AS is_bot,
    path,
    domainWithoutWWW(referrer) AS referrer_domain,
    if(referrer = '', 'direct', 'organic') AS utm_source,
    extractURLParameter(concat('?', utm_query), 'utm_medium') AS utm_medium,
    extractURLParameter(concat('?', utm_query), 'utm_campaign') AS utm_campaign,
    '' AS utm_term,
    '' AS utm_content
FROM
(
    SELECT
        number,
        intDiv(number, 8) AS session,
        number % 8 AS position,
        1 + sipHash64(session, 1) % 15 AS session_length,
        if(position < session_length, session, 1000000000000 + number) AS session_key,
        toUInt64(pow({u(k=2)}, 3) * {VISITORS}) AS visitor_head,
        if(position < session_length, toUInt64(pow((sipHash64(session, 2) % 1000000)
           / 1000000.0, 3) * {VISITORS}), visitor_head) AS visitor,
        {end_ms} - toInt64(sipHash64(session_key, 4) % {span_ms})
            + if(position < session_length, toInt64(position) * (20000 + toInt64(
                 sipHash64(session_key, 16) % 120000)), 0) AS ts_ms_raw,
        least(ts_ms_raw, {end_ms} - 1) AS ts_ms,
        sipHash64(visitor, 17) % 100 < {IDENTIFIED_PCT} AS identified,
        {end_ms} - toInt64(sipHash64(visitor, 18) % {span_ms}) AS identify_ms,
        if({u(k=19)} < 0.55, 'page_view',
           {_pick(_array(EVENT_NAMES), f"toUInt64(pow({u(k=20)}, 2) * 300)")}) AS ev,
        {_pick(_array(PATHS), f"toUInt64(pow({u(k=21)}, 2) * {len(PATHS)})")} AS path,
        if(position = 0 AND sipHash64(session_key, 22) % 100 < 60,
           {_pick(_array(REFERRERS), f"toUInt64(pow({u(k=23)}, 2) * {len(REFERRERS)})")},
           '') AS referrer,
        leftPad(lower(hex(ts_ms)), 12, '0') AS tshex,
        leftPad(lower(hex({h(k=24)})), 16, '0') AS r1,
        leftPad(lower(hex({h(k=25)})), 16, '0') AS r2,
        {ua} AS ua_index,
        if(ev = 'page_view' AND {h(k=9)} % 100 < 15, {_pick(utm, h(k=10))}, '') AS utm_query
    FROM numbers({int(n)})
)
"""


def identify_sql(project_id: str, days: int, end_ms: int) -> str:
    """One ``identify`` event per identified visitor, at its identify time, with both ids."""
    span_ms = days * 86_400_000
    return f"""
INSERT INTO events_raw_v1
    (event_id, project_id, event, anonymous_id, user_id, session_id, timestamp,
     received_at, properties, extras, client_timestamp)
SELECT
    generateUUIDv7(visitor), toUUID({{project:String}}), 'identify',
    concat('anon-', leftPad(lower(hex(sipHash64(visitor, 3))), 16, '0')),
    concat('user-', toString(sipHash64(visitor, 5) % {USERS})), NULL,
    fromUnixTimestamp64Milli(ts_ms, 'UTC'), fromUnixTimestamp64Milli(ts_ms + 500, 'UTC'),
    '{{}}',
    concat('{{"traits":{{"email":"user', toString(sipHash64(visitor, 5) % {USERS}),
           '@example.com","plan":"pro"}},"type":"identify"}}'),
    fromUnixTimestamp64Milli(ts_ms, 'UTC')
FROM
(
    SELECT number AS visitor, {end_ms} - toInt64(sipHash64(visitor, 18) % {span_ms}) AS ts_ms
    FROM numbers({VISITORS})
    WHERE sipHash64(visitor, 17) % 100 < {IDENTIFIED_PCT}
)
"""


def check_materialized(client: Any, sample: int = 200_000) -> None:
    """The seeded values of the MATERIALIZED columns are what their expressions give (on
    ``sample`` rows): the seed stores what ingest would have stored."""
    expressions = client.query(
        "SELECT name, default_expression FROM system.columns WHERE database = "
        "currentDatabase() AND table = 'events_raw_v1' AND default_kind = 'MATERIALIZED' "
        "AND name IN ('path', 'referrer_domain', 'utm_source', 'utm_medium', 'utm_campaign', "
        "'utm_term', 'utm_content')"
    ).result_rows
    if not expressions:
        return
    checks = ", ".join(f"countIf({name} != toString({expr}))" for name, expr in expressions)
    differ = client.query(
        f"SELECT {checks} FROM (SELECT * , {', '.join(n for n, _ in expressions)} "
        f"FROM events_raw_v1 LIMIT {sample})"
    ).result_rows[0]
    wrong = {name: n for (name, _), n in zip(expressions, differ, strict=True) if n}
    if wrong:
        raise RuntimeError(f"seeded values differ from the MATERIALIZED columns: {wrong}")


def seed(client: Any, project_id: str, n: int, days: int, end_ms: int) -> dict:
    """Write the history into ``client`` (a clickhouse-connect client on the embedded
    directory), merge it, and return what was written and how long each step took."""
    settings = {
        # path, referrer_domain and utm_* are written with the values generated beside the
        # JSON instead of ClickHouse parsing it again (that parse doubled the seed time);
        # check_materialized() proves they are what the columns' expressions give.
        "insert_allow_materialized_columns": 1,
        "insert_deduplicate": 0,
        "throw_on_max_partitions_per_insert_block": 0,
        "max_partitions_per_insert_block": 1000,
    }
    params = {"project": project_id}
    started = time.monotonic()
    client.command(events_sql(project_id, n, days, end_ms), parameters=params, settings=settings)
    client.command(identify_sql(project_id, days, end_ms), parameters=params, settings=settings)
    inserted = time.monotonic()
    check_materialized(client)
    client.command("OPTIMIZE TABLE events_raw_v1 FINAL")
    merged = time.monotonic()
    rows = int(client.command("SELECT count() FROM events_raw_v1"))
    return {
        "events": rows,
        "days": days,
        "insert_s": inserted - started,
        "merge_s": merged - inserted,
    }
