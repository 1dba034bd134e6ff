"""Credential vault: AES-256-GCM envelope with a keyring, for secrets at rest.

A token is ``<kid>:<base64(nonce || ciphertext+tag)>``. The key id lets keys rotate:
every key in the ring can decrypt, only the primary encrypts. The caller binds each
ciphertext to its owning row (``aad``), so a ciphertext copied onto another row fails
to decrypt instead of handing one setup's secret to another.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from blueline.errors import ConfigurationError, DecryptionFailed

logger = logging.getLogger(__name__)

_NONCE_BYTES = 12
_KEY_BYTES = 32


# Associated data binding each sealed secret to its row and column.
def credentials_aad(setup_id: str) -> str:
    return f"imessage_setup:{setup_id}:credentials"


def webhook_secret_aad(setup_id: str) -> str:
    return f"imessage_setup:{setup_id}:webhook_secret"


@dataclass(frozen=True)
class Keyring:
    """Ordered keys; the first is primary. Never printed: its repr hides the keys."""

    keys: dict[str, bytes] = field(repr=False)
    primary: str

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        keys: dict[str, bytes] = {}
        primary = ""
        for entry in (part.strip() for part in spec.split(",")):
            if not entry:
                continue
            kid, sep, encoded = entry.partition(":")
            if not sep or not kid or not kid.isascii() or not kid.replace("-", "").isalnum():
                raise ConfigurationError("keyring entries must look like kid:base64key")
            try:
                key = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigurationError(f"key {kid!r} is not valid base64") from None
            if len(key) != _KEY_BYTES:
                raise ConfigurationError(f"key {kid!r} must be 32 bytes (AES-256)")
            if kid in keys:
                raise ConfigurationError(f"key id {kid!r} appears twice")
            keys[kid] = key
            primary = primary or kid
        if not keys:
            raise ConfigurationError("the keyring is empty")
        return cls(keys=keys, primary=primary)

    @staticmethod
    def generate_entry(kid: str | None = None) -> str:
        kid = kid or "k" + secrets.token_hex(4)
        return f"{kid}:{base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode()}"

    @classmethod
    def load_or_create_file(cls, path: Path, *, create: bool = True) -> Keyring:
        """Development only: a local keyring file, created 0600 on first use.

        Only ``serve`` creates it; other commands refuse to invent a key, since secrets
        sealed under a key the server does not have would be lost.
        """
        if not path.exists():
            if not create:
                raise ConfigurationError(
                    f"no keyring: set BLUELINE_ENCRYPTION_KEYS, or run this where "
                    f"`blueline serve` created {path}"
                )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(cls.generate_entry() + "\n")
            logger.warning(
                "generated a development keyring at %s; set BLUELINE_ENCRYPTION_KEYS in "
                "production and keep that file out of backups shared with others",
                path,
            )
        return cls.parse(path.read_text().strip())


class Vault:
    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._ciphers = {kid: AESGCM(key) for kid, key in keyring.keys.items()}

    def __repr__(self) -> str:
        return f"Vault(primary={self._keyring.primary!r}, keys={len(self._ciphers)})"

    @property
    def primary_kid(self) -> str:
        return self._keyring.primary

    def encrypt(self, plaintext: str, *, aad: str) -> str:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._ciphers[self.primary_kid].encrypt(nonce, plaintext.encode(), aad.encode())
        return f"{self.primary_kid}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, *, aad: str) -> str:
        kid, sep, encoded = token.partition(":")
        cipher = self._ciphers.get(kid)
        if not sep or cipher is None:
            raise DecryptionFailed("ciphertext uses a key that is not in the keyring")
        try:
            raw = base64.b64decode(encoded, validate=True)
            plain = cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad.encode())
        except (binascii.Error, ValueError, InvalidTag):
            raise DecryptionFailed("ciphertext does not decrypt for this record") from None
        return plain.decode()

    def derived_key(self, purpose: str, kid: str | None = None) -> tuple[str, bytes] | None:
        """A key for ``purpose`` (e.g. sealing the audit chain), derived with HKDF from
        the primary key or from ``kid``; None when ``kid`` is not in the keyring. Keys
        for different purposes are independent, and none is the encryption key itself."""
        kid = kid or self.primary_kid
        key = self._keyring.keys.get(kid)
        if key is None:
            return None
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode())
        return kid, hkdf.derive(key)

    def is_current(self, token: str) -> bool:
        return token.partition(":")[0] == self.primary_kid

    def rotate(self, token: str, *, aad: str) -> str:
        return (
            token if self.is_current(token) else self.encrypt(self.decrypt(token, aad=aad), aad=aad)
        )
