"""Store URLs in messages: passwords masked.

Enters: a URL (``DATABASE_URL``, ``CLICKHOUSE_URL``) or any text that may contain one
(an error message). Leaves: the same text with every password replaced by ``***``:
``postgresql://sluice:***@db:5432/sluice``, ``…?password=***``. Everything else is kept,
so the message still says which store and which user. Never fails: text without a URL
comes back unchanged.

Every error or log line that can carry a store URL goes through :func:`mask_url` (the
exceptions of :mod:`storage.postgres` and :mod:`storage.clickhouse` mask their own
message; ``ingest`` masks configuration and boot errors).
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@ — the password runs to the last "@" of the word, so one that
# contains "@" or "/" (badly escaped, but it happens) is still masked whole.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"]*):[^\s'\"]*@")
# user:password@host given without a scheme (a mistyped URL is shown in its error).
_BARE = re.compile(r"^([^\s:/?#@'\"]*):[^\s'\"]*@(?=\S*$)")
# password=… in a query string or a libpq keyword DSN ("host=db password=…").
_PARAM = re.compile(r"((?:^|[?&;\s])(?:password|passwd|pwd)=)[^&;\s'\"]*", re.IGNORECASE)


def mask_url(text: str) -> str:
    """``text`` with the password of every URL (or ``password=`` parameter) in it masked."""
    if "://" in text:
        text = _USERINFO.sub(rf"\1:{MASK}@", text)
    else:
        text = _BARE.sub(rf"\1:{MASK}@", text)
    return _PARAM.sub(rf"\1{MASK}", text)
