"""Enrichment: what sent an event (its user agent) and where it came from (its page).

Enters: a user agent string, or ``None`` (:func:`describe`). Leaves: the five values a row
line carries for it — :data:`Agent`, ``(user_agent, browser, os, device_type, is_bot)``.
Pure: no I/O, no clock; it never raises for any string (an unknown agent is ``''``
everywhere and ``is_bot`` 0 — "unknown", which stats leave out).

Which user agent: an event's own when its sender relayed it — the native ``user_agent``
field, which :mod:`ingest.sdk` fills from Segment's and RudderStack's
``context.userAgent`` and PostHog's ``properties.$raw_user_agent`` — else the request's
``User-Agent`` header. (A native event's ``context`` is not read: looking into it cost
~0.5 µs an event on the benchmark's body, a third of validation.) At most
:data:`MAX_USER_AGENT_CHARS` characters are kept (longer ones are cut, never refused:
posthog-js cuts at 1,000 too), and a header's bytes that are not UTF-8 become U+FFFD.

What comes out, and from what:

* ``browser`` / ``os`` — uap-core's family names (``Chrome``, ``Mobile Safari``,
  ``Firefox Mobile``; ``Windows``, ``Mac OS X``, ``iOS``, ``Android``), through the
  ``ua-parser`` package (the maintained Python port of uap-core, its rules updated
  monthly in ``ua-parser-builtins``, matched by the Rust ``ua-parser-rs``). ``Other``
  is stored as ``''``. A non-browser agent keeps uap's name for it (``curl``,
  ``Python Requests``).
* ``device_type`` — ``desktop``, ``mobile``, ``tablet``, ``tv``, ``console``, ``bot``
  or ``''`` (:func:`_device_type`: uap's device and OS, plus the tokens browsers use to
  say it — ``Mobi``, an Android without ``Mobile`` being a tablet, as Google documents).
* ``is_bot`` — 1 for crawlers, spiders, link-preview fetchers and headless browsers:
  uap-core's ``Spider`` device, or a match in the ``crawler-user-agents`` list
  (monperrus/crawler-user-agents, ~1,500 patterns, maintained with tags) **except**
  its ``http-library`` entries (``curl``, ``python-requests``, ``Go-http-client``,
  ``axios``, ``node-fetch``, ``okhttp``…). Those are how a customer's own backend sends
  events — the README's quick start is a curl line; server SDKs (analytics-python,
  posthog-node) send their own names, which no list holds — and an event reaches Sluice
  only with the project's token: a crawler that fetches pages does not run the site's
  analytics, but a headless browser or a preview fetcher rendering the page does, so
  those (``browser-automation``, ``social-preview``, ``search-engine``, ``ai-crawler``,
  ``monitoring``…) are bots. Stats exclude bots by default; their events are stored.

Cost, measured on this machine class (one core, shared): a distinct user agent costs
~20 µs in uap and ~1.6 µs against the crawler list (its 1,462 non-library patterns
compiled into one Rust regex set — Python's ``re`` took ~200 µs a string); each answer is
kept in an LRU cache of :data:`CACHE_SIZE` agents, where a lookup is ~0.1 µs. The
request's header is described once per request, and :mod:`ingest.validate` writes its
five values once into the prefix every row line of the request shares, so an event
without an agent of its own costs nothing per event; one with its own agent costs a
cache lookup (and a prefix encoded once per distinct agent in the request). Building
the matchers takes ~0.4 s and ~25 MiB once per process: :func:`warm` does it at start,
not on the first request.

Why the raw agent is stored too: so that a newer uap-core (or another bot rule) can
derive the values again from what arrived. It costs bytes in the pipeline — the
benchmark's row line grew from 498 to 651 bytes with ~125-character agents — and almost
none on disk: 0.55 bytes per event for all five agent columns (1M rows, 1,445 distinct
agents; ``LowCardinality``), against a target of 60 for the whole row.

The page side — ``path``, ``referrer_domain``, ``utm_*`` — is not computed here:
ClickHouse computes them from the stored ``properties``/``extras`` JSON as it inserts
(MATERIALIZED columns, migration 0003: ~1 µs of engine CPU a row, two JSON parses, in
C++), because parsing ``properties`` in Python would cost more than the whole accept path
(see ``migrations/clickhouse/0003_enrichment.py``).
"""

from __future__ import annotations

import re
from functools import lru_cache

MAX_USER_AGENT_CHARS = 1000
CACHE_SIZE = 10_000  # distinct agents kept described (~3 MB at 300 bytes each)
LIBRARY_TAG = "http-library"  # crawler-list entries that are plain HTTP clients: not bots

Agent = tuple[str, str, str, str, int]
"""``(user_agent, browser, os, device_type, is_bot)`` — the row's enrichment values."""
UNKNOWN: Agent = ("", "", "", "", 0)

# Device tokens (checked after uap): TVs and consoles by their own names; "Mobi" is
# what Mozilla's and Google's guidance say a mobile browser puts in its agent.
_TV = re.compile(
    r"SmartTV|SMART-TV|Smart-TV|HbbTV|AppleTV|Apple TV|CrKey|GoogleTV|Android TV|BRAVIA|"
    r"Roku|AFT[A-Z]|Web0S|webOS\.TV|Tizen.+TV|\bTV\b"
)
_CONSOLE = re.compile(r"PlayStation|Xbox|Nintendo")
_TABLET = re.compile(r"iPad|Tablet|Kindle|Silk/|PlayBook")
_MOBILE_OS = frozenset(
    ("iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "Firefox OS", "Symbian OS")
)
_DESKTOP_OS = frozenset(
    ("Windows", "Mac OS X", "Linux", "Ubuntu", "Fedora", "Debian", "Chrome OS", "FreeBSD",
     "OpenBSD", "NetBSD", "Solaris", "Mandriva", "Red Hat", "SUSE", "Gentoo", "Arch Linux")
)  # fmt: skip


class _Matchers:
    """uap-core's parser and the crawler set, built once (:func:`warm`)."""

    def __init__(self) -> None:
        import crawleruseragents
        from ua_parser import Parser
        from ua_parser.loaders import load_lazy_builtins

        patterns = [
            entry["pattern"]
            for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA
            if LIBRARY_TAG not in entry.get("tags", ())
        ]
        try:
            import ua_parser_rs
            from ua_parser.regex import Resolver
        except ImportError:  # pragma: no cover - ua-parser[regex] is a dependency
            from ua_parser.basic import Resolver

            self.parse = Parser(Resolver(load_lazy_builtins())).parse
            chunks = [re.compile("|".join(patterns[i : i + 25]))
                      for i in range(0, len(patterns), 25)]  # fmt: skip
            self.crawler = lambda ua: any(c.search(ua) for c in chunks)
            return
        self.parse = Parser(Resolver(load_lazy_builtins())).parse
        # The crawler patterns as one Rust regex set: uap's extractor takes (regex,
        # family, …) rows and says whether any matched (all 1,462 compile; the list's
        # 2,123 sample agents match exactly as with Python's re).
        crawlers = ua_parser_rs.UserAgentExtractor([(p, "bot", None, None, None, None)
                                                    for p in patterns])  # fmt: skip
        self.crawler = lambda ua: crawlers.extract(ua) is not None


_matchers: _Matchers | None = None


def warm() -> None:
    """Build the matchers now (~0.4 s), so the first request does not wait for them."""
    global _matchers
    if _matchers is None:
        _matchers = _Matchers()
        _matchers.parse("Mozilla/5.0")  # the Rust regex sets compile on first use


def is_bot(user_agent: str) -> bool:
    """True for a crawler, spider, preview fetcher or headless browser (module docstring)."""
    return bool(describe(user_agent)[4])


@lru_cache(maxsize=CACHE_SIZE)
def _describe(user_agent: str) -> Agent:
    if _matchers is None:
        warm()
    assert _matchers is not None
    parsed = _matchers.parse(user_agent)
    browser = parsed.user_agent.family if parsed.user_agent is not None else ""
    os = parsed.os.family if parsed.os is not None else ""
    device = parsed.device.family if parsed.device is not None else ""
    bot = device == "Spider" or _matchers.crawler(user_agent)
    browser = "" if browser == "Other" else browser
    os = "" if os == "Other" else os
    kind = "bot" if bot else _device_type(user_agent, os, device)
    return (user_agent, browser, os, kind, int(bot))


def describe(user_agent: str | None) -> Agent:
    """A user agent → ``(user_agent, browser, os, device_type, is_bot)``; ``None`` or
    ``''`` → :data:`UNKNOWN`. Cached; never raises."""
    if not user_agent:
        return UNKNOWN
    if len(user_agent) > MAX_USER_AGENT_CHARS:
        user_agent = user_agent[:MAX_USER_AGENT_CHARS]
    if not user_agent.isascii():
        user_agent = _repaired(user_agent)
    return _describe(user_agent)


def describe_later(user_agent: str) -> Agent:
    """An agent kept as it came (cut, repaired) with its values unknown: for an agent
    not worth parsing now (:data:`ingest.validate.MAX_AGENTS_PER_REQUEST`)."""
    if len(user_agent) > MAX_USER_AGENT_CHARS:
        user_agent = user_agent[:MAX_USER_AGENT_CHARS]
    if not user_agent.isascii():
        user_agent = _repaired(user_agent)
    return (user_agent, "", "", "", 0)


def _repaired(user_agent: str) -> str:
    """A header that was not UTF-8 reaches us with its bytes as lone surrogates (aiohttp
    decodes with ``surrogateescape``), which JSON and Postgres cannot hold: each such
    byte becomes U+FFFD. (An event's own agent was checked by validation already.)"""
    try:
        user_agent.encode()
    except UnicodeEncodeError:
        raw = user_agent.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "replace").replace("\x00", "")
    return user_agent


def _device_type(user_agent: str, os: str, device: str) -> str:
    """``tv``, ``console``, ``tablet``, ``mobile``, ``desktop`` or ``''`` (not a device
    we can name: a server SDK, curl)."""
    if _TV.search(user_agent):
        return "tv"
    if _CONSOLE.search(user_agent):
        return "console"
    if device == "iPad" or _TABLET.search(user_agent):
        return "tablet"
    if os == "Android" and "Mobile" not in user_agent:
        return "tablet"  # Android phones say "Mobile"; tablets do not (Google's rule)
    if "Mobi" in user_agent or device in ("iPhone", "iPod") or os in _MOBILE_OS:
        return "mobile"
    if os in _DESKTOP_OS or device == "Mac":
        return "desktop"
    return ""
