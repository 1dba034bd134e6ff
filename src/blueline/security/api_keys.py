"""API keys: random, prefixed, shown once, stored only as a SHA-256 hash.

The key carries 256 bits of randomness, so a fast hash is enough: there is nothing
to brute-force that a slow hash would protect.
"""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "bl_live_"
_RANDOM_BYTES = 32


def mint() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + 6]


def parse_bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if (
        scheme.lower() != "bearer"
        or not token.startswith(KEY_PREFIX)
        or not len(KEY_PREFIX) + 16 <= len(token) <= 200
    ):
        return None
    return token
