"""The audit chain's seal: each record's hash covers its content and the hash before it.

The hash is an HMAC under a key derived from the keyring (``Vault.derived_key``), so
editing a record and recomputing the chain needs the keyring as well as the database.
A record names the key id it was sealed with; rotated keys keep verifying while they
stay in the keyring.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from blueline.security.vault import Vault

PURPOSE = "blueline audit chain v1"
GENESIS = ""

# The fields a hash covers, in this order; `prev_hash` links the chain.
SEALED_FIELDS = (
    "workspace_id",
    "seq",
    "id",
    "occurred_at",
    "action",
    "actor",
    "setup_id",
    "phone_line_id",
    "request_id",
    "changes",
    "prev_hash",
)


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash covers (timestamps in their wire form, as text)."""
    return json.dumps(
        [record[name] for name in SEALED_FIELDS], separators=(",", ":"), ensure_ascii=True
    ).encode()


class Sealer:
    def __init__(self, vault: Vault) -> None:
        self._vault = vault
        self._keys: dict[str, bytes] = {}

    def _key(self, kid: str | None) -> tuple[str, bytes] | None:
        kid = kid or self._vault.primary_kid
        known = self._keys.get(kid)
        if known is not None:
            return kid, known
        found = self._vault.derived_key(PURPOSE, kid)
        if found is not None:
            self._keys[found[0]] = found[1]
        return found

    def seal(self, record: Mapping[str, Any]) -> tuple[str, str]:
        """``(key id, hash)`` for a record whose ``prev_hash`` is already set."""
        found = self._key(None)
        assert found is not None  # the primary key is always in the keyring
        kid, key = found
        return kid, hmac.new(key, canonical(record), hashlib.sha256).hexdigest()

    def verifies(self, record: Mapping[str, Any], kid: str, digest: str) -> bool:
        found = self._key(kid)
        if found is None:
            return False
        expected = hmac.new(found[1], canonical(record), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, digest)
