"""Standard Webhooks signing and verification, pure functions over bytes.

The signed content is ``{id}.{timestamp}.{raw body}``; the key is the base64 part of a
``whsec_`` secret. Verification never raises on hostile input and compares in
constant time; it also does the same work whether or not a real secret was found, so
the caller can verify against a decoy and keep failures indistinguishable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"  # noqa: S105 - a format marker, not a secret
TOLERANCE_S = 300
# Bounds on header sizes so a hostile header costs no more than a normal one.
MAX_ID_LEN = 256
MAX_SIGNATURE_HEADER_LEN = 4096
MAX_SIGNATURES = 16


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return b""


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    return "v1," + _digest_b64(secret_key(secret), msg_id, timestamp, body)


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    content = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, content, hashlib.sha256).digest()


def _digest_b64(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    return base64.b64encode(_digest(key, msg_id, timestamp, body)).decode()


def parse_timestamp(raw: str | None) -> int | None:
    if raw is None or not (0 < len(raw) <= 12) or not raw.isascii() or not raw.isdigit():
        return None
    return int(raw)


def _candidate_signatures(header: str) -> list[bytes]:
    found: list[bytes] = []
    for part in header.split(" ")[:MAX_SIGNATURES]:
        version, sep, value = part.partition(",")
        if not sep or version != "v1":
            continue
        try:
            found.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def verify(
    secrets_: list[str],
    msg_id: str | None,
    timestamp_raw: str | None,
    signature_header: str | None,
    body: bytes,
    now: float,
) -> bool:
    """True when the delivery is fresh and one ``v1`` signature matches one secret.

    Every path computes one HMAC per secret and compares against every candidate, so
    the time taken does not tell which check failed.
    """
    ok = True
    if msg_id is None or not (0 < len(msg_id) <= MAX_ID_LEN) or not msg_id.isascii():
        ok = False
        msg_id = "invalid"
    timestamp = parse_timestamp(timestamp_raw)
    if timestamp is None:
        ok = False
        timestamp = 0
    elif abs(now - timestamp) > TOLERANCE_S:
        ok = False
    if signature_header is None or len(signature_header) > MAX_SIGNATURE_HEADER_LEN:
        ok = False
        signature_header = ""
    candidates = _candidate_signatures(signature_header)
    matched = False
    for secret in secrets_ or [generate_secret()]:
        expected = _digest(secret_key(secret), msg_id, timestamp, body)
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
    return ok and matched and bool(secrets_)
