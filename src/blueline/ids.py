"""Prefixed, time-sortable, globally unique identifiers (``ims_…``, ``pl_…``).

48 bits of milliseconds then 80 random bits, in Crockford base32: ids sort by creation
time, so ``ORDER BY id`` is newest-first pagination without a second column.
"""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

SETUP = "ims"
PHONE_LINE = "pl"
WORKSPACE = "ws"
API_KEY = "key"
EVENT = "evt"
DELIVERY = "whd"
AUDIT_EVENT = "aud"
OPERATION = "op"


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


_last_body = 0
_lock = threading.Lock()


def new_id(prefix: str) -> str:
    """Strictly increasing within this process, even within one millisecond."""
    global _last_body
    millis = time.time_ns() // 1_000_000
    body = (millis << 80) | secrets.randbits(80)
    with _lock:
        if body <= _last_body:
            body = _last_body + 1
        _last_body = body
    return f"{prefix}_{_encode(body, 26)}"


def encode_sortable(value: int, length: int) -> str:
    """``value`` in Crockford base32, fixed width, so strings sort like the numbers."""
    if value < 0 or value >= 32**length:
        raise ValueError("value out of range")
    return _encode(value, length)


def decode_sortable(text: str) -> int | None:
    if not text or any(c not in _ALPHABET for c in text):
        return None
    value = 0
    for c in text:
        value = value * 32 + _ALPHABET.index(c)
    return value


def prefix_of(value: str) -> str | None:
    head, sep, body = value.partition("_")
    if not sep or len(body) != 26 or any(c not in _ALPHABET for c in body):
        return None
    return head
