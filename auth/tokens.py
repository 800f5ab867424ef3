"""The publishable token format. Pure functions, no I/O.

A token is ``sluice_pub_`` followed by ``secrets.token_urlsafe(24)``: 32 characters from
a 64-letter alphabet, 192 bits of entropy. Only ``sha256(token)`` is stored; the plaintext
is shown once, when the token is issued. "Publishable" means it is safe to ship inside a
web page: it can only append events to its project.
"""

from __future__ import annotations

import hashlib
import re
import secrets

PREFIX = "sluice_pub_"
_RANDOM_BYTES = 24  # 192 bits; the brief asks for at least 128
# Matched whole (fullmatch): with re.match and "$", a trailing newline would pass.
_SHAPE = re.compile(r"sluice_pub_[A-Za-z0-9_-]{32}")
HINT_CHARS = 4


def generate() -> str:
    """A fresh token (plaintext): show it once, store :func:`hash_token` of it."""
    return PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)


def looks_valid(token: str) -> bool:
    """True when ``token`` has the publishable-token shape (cheap, no I/O)."""
    return _SHAPE.fullmatch(token) is not None


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def hint(token: str) -> str:
    """The last characters, stored so operators can tell tokens apart."""
    return token[-HINT_CHARS:]


def display(token_hint: str) -> str:
    """How a stored token is shown: prefix, ellipsis, last characters."""
    return f"{PREFIX}…{token_hint}"
