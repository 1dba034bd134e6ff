"""The credential vault: AES-256-GCM tokens bound to their row, under a rotating keyring."""

from __future__ import annotations

import base64
import logging
import secrets
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blueline.errors import ConfigurationError, DecryptionFailed
from blueline.security.vault import Keyring, Vault


def key_b64() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def entry(kid: str, key: str | None = None) -> str:
    return f"{kid}:{key or key_b64()}"


def vault_of(*entries: str) -> Vault:
    return Vault(Keyring.parse(",".join(entries)))


AAD = "imessage_setup:ims_A:credentials"


def test_encrypted_secret_decrypts_back_to_the_plaintext() -> None:
    vault = vault_of(entry("k1"))
    for plaintext in ["ak_123\nsecret-456", "", "ünïcödé 🔐", "x" * 10_000]:
        assert vault.decrypt(vault.encrypt(plaintext, aad=AAD), aad=AAD) == plaintext


def test_token_is_key_id_then_base64_of_nonce_and_sealed_text() -> None:
    vault = vault_of(entry("k1"))
    token = vault.encrypt("hello", aad=AAD)
    kid, sep, encoded = token.partition(":")
    assert (kid, sep) == ("k1", ":")
    raw = base64.b64decode(encoded, validate=True)
    # 12-byte nonce, the ciphertext (same length as the plaintext), 16-byte tag.
    assert len(raw) == 12 + len("hello") + 16
    assert "hello" not in token


def test_every_encryption_uses_a_fresh_nonce() -> None:
    vault = vault_of(entry("k1"))
    tokens = [vault.encrypt("same secret", aad=AAD) for _ in range(50)]
    assert len(set(tokens)) == 50
    nonces = {base64.b64decode(t.partition(":")[2])[:12] for t in tokens}
    assert len(nonces) == 50


def test_ciphertext_copied_to_another_row_does_not_decrypt() -> None:
    vault = vault_of(entry("k1"))
    plaintext = "ak_live_very_private_value"
    token = vault.encrypt(plaintext, aad="imessage_setup:ims_A:credentials")
    for other_aad in [
        "imessage_setup:ims_B:credentials",
        "imessage_setup:ims_A:webhook_secret",
        "",
    ]:
        with pytest.raises(DecryptionFailed) as caught:
            vault.decrypt(token, aad=other_aad)
        assert plaintext not in str(caught.value)
        assert plaintext not in caught.value.message
        assert caught.value.code == "DECRYPTION_FAILED"


def test_tampered_ciphertext_does_not_decrypt() -> None:
    vault = vault_of(entry("k1"))
    token = vault.encrypt("secret", aad=AAD)
    kid, _, encoded = token.partition(":")
    raw = bytearray(base64.b64decode(encoded))
    raw[-1] ^= 0x01
    with pytest.raises(DecryptionFailed):
        vault.decrypt(f"{kid}:{base64.b64encode(bytes(raw)).decode()}", aad=AAD)


def test_ciphertext_under_a_key_missing_from_the_keyring_fails() -> None:
    token = vault_of(entry("gone")).encrypt("secret", aad=AAD)
    with pytest.raises(DecryptionFailed):
        vault_of(entry("k1")).decrypt(token, aad=AAD)


def test_same_key_id_with_different_key_material_fails() -> None:
    token = vault_of(entry("k1")).encrypt("secret", aad=AAD)
    with pytest.raises(DecryptionFailed):
        vault_of(entry("k1")).decrypt(token, aad=AAD)


@pytest.mark.parametrize(
    "token",
    ["", "no-colon", "k1:", "k1:not base64!", "k1:AAAA", "k1:" + "A" * 40, ":" + "A" * 60],
)
def test_malformed_tokens_fail_with_decryption_failed(token: str) -> None:
    with pytest.raises(DecryptionFailed):
        vault_of(entry("k1")).decrypt(token, aad=AAD)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_decrypt_of_arbitrary_text_only_ever_raises_decryption_failed(token: str) -> None:
    vault = vault_of(entry("k1", base64.b64encode(b"\x01" * 32).decode()))
    with pytest.raises(DecryptionFailed):
        vault.decrypt(token, aad=AAD)
    with pytest.raises(DecryptionFailed):
        vault.decrypt("k1:" + token, aad=AAD)


# -- keyring parsing


def test_first_key_of_the_keyring_is_primary() -> None:
    keyring = Keyring.parse(",".join([entry("a"), entry("b"), entry("c")]))
    assert keyring.primary == "a"
    assert list(keyring.keys) == ["a", "b", "c"]
    vault = Vault(keyring)
    assert vault.primary_kid == "a"
    assert vault.encrypt("x", aad=AAD).startswith("a:")


def test_keyring_tolerates_blank_entries_and_surrounding_whitespace() -> None:
    keyring = Keyring.parse(f"  {entry('a')} , ,{entry('b')},")
    assert list(keyring.keys) == ["a", "b"]


def test_generated_entries_parse_into_a_working_keyring() -> None:
    generated = Keyring.generate_entry("dev")
    assert generated.startswith("dev:")
    vault = Vault(Keyring.parse(generated))
    assert vault.decrypt(vault.encrypt("x", aad=AAD), aad=AAD) == "x"
    assert Keyring.generate_entry() != Keyring.generate_entry()


SHORT_KEY = base64.b64encode(b"S" * 16).decode()
LONG_KEY = base64.b64encode(b"L" * 48).decode()
BAD_B64 = "Zm9v!!bar$$" + "Q" * 30
BARE_KEY = key_b64()


@pytest.mark.parametrize(
    ("spec", "material"),
    [
        pytest.param(f"k1:{BAD_B64}", BAD_B64, id="bad-base64"),
        pytest.param(f"k1:{SHORT_KEY}", SHORT_KEY, id="too-short"),
        pytest.param(f"k1:{LONG_KEY}", LONG_KEY, id="too-long"),
        pytest.param("", None, id="empty"),
        pytest.param(" , ,", None, id="only-separators"),
        pytest.param(BARE_KEY, BARE_KEY, id="missing-kid"),
        pytest.param(f"bad kid!:{BARE_KEY}", BARE_KEY, id="bad-kid"),
        pytest.param(f":{BARE_KEY}", BARE_KEY, id="empty-kid"),
    ],
)
def test_malformed_keyring_is_a_configuration_error_without_key_material(
    spec: str, material: str | None
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Keyring.parse(spec)
    message = str(caught.value)
    assert caught.value.code == "CONFIGURATION_ERROR"
    if material is not None:
        assert material not in message
        assert material[:8] not in message
    for part in spec.split(","):
        encoded = part.partition(":")[2].strip()
        if len(encoded) >= 8:
            assert encoded not in message


def test_duplicate_key_id_is_a_configuration_error_without_key_material() -> None:
    first, second = key_b64(), key_b64()
    with pytest.raises(ConfigurationError) as caught:
        Keyring.parse(f"k1:{first},k1:{second}")
    assert "k1" in str(caught.value)
    assert first not in str(caught.value)
    assert second not in str(caught.value)


def test_keyring_and_vault_reprs_show_no_key_material() -> None:
    raw = secrets.token_bytes(32)
    encoded = base64.b64encode(raw).decode()
    keyring = Keyring.parse(f"k1:{encoded},k2:{key_b64()}")
    vault = Vault(keyring)
    for text in [repr(keyring), str(keyring), repr(vault), str(vault)]:
        assert encoded not in text
        assert repr(raw) not in text
        assert raw.hex() not in text
        assert "k1" in text


# -- rotation


def test_rotation_re_encrypts_old_ciphertexts_under_the_new_primary() -> None:
    old = entry("old")
    token = vault_of(old).encrypt("ak_1\nsecret_1", aad=AAD)

    rotated_ring = vault_of(entry("new"), old)
    assert rotated_ring.decrypt(token, aad=AAD) == "ak_1\nsecret_1"
    assert rotated_ring.is_current(token) is False

    rotated = rotated_ring.rotate(token, aad=AAD)
    assert rotated.startswith("new:")
    assert rotated_ring.is_current(rotated) is True
    assert rotated_ring.decrypt(rotated, aad=AAD) == "ak_1\nsecret_1"


def test_rotating_a_current_ciphertext_leaves_it_unchanged() -> None:
    vault = vault_of(entry("new"), entry("old"))
    token = vault.encrypt("secret", aad=AAD)
    assert vault.rotate(token, aad=AAD) == token


def test_rotated_ciphertext_decrypts_with_only_the_new_key() -> None:
    old, new = entry("old"), entry("new")
    token = vault_of(old).encrypt("secret", aad=AAD)
    with pytest.raises(DecryptionFailed):
        vault_of(new).decrypt(token, aad=AAD)
    rotated = vault_of(new, old).rotate(token, aad=AAD)
    assert vault_of(new).decrypt(rotated, aad=AAD) == "secret"


def test_rotation_keeps_the_row_binding() -> None:
    old = entry("old")
    token = vault_of(old).encrypt("secret", aad=AAD)
    vault = vault_of(entry("new"), old)
    rotated = vault.rotate(token, aad=AAD)
    with pytest.raises(DecryptionFailed):
        vault.decrypt(rotated, aad="imessage_setup:ims_B:credentials")
    with pytest.raises(DecryptionFailed):
        vault.rotate(token, aad="imessage_setup:ims_B:credentials")


# -- development keyring file


def test_development_keyring_file_is_created_private_and_announced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / ".blueline-keyring"
    with caplog.at_level(logging.WARNING, logger="blueline.security.vault"):
        keyring = Keyring.load_or_create_file(path)
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "BLUELINE_ENCRYPTION_KEYS" in warnings[0].getMessage()
    material = path.read_text().strip().partition(":")[2]
    assert material not in caplog.text
    assert len(keyring.keys) == 1


def test_development_keyring_file_is_reused_on_the_next_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / ".blueline-keyring"
    first = Keyring.load_or_create_file(path)
    content = path.read_text()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="blueline.security.vault"):
        second = Keyring.load_or_create_file(path)
    assert caplog.records == []
    assert path.read_text() == content
    assert second == first
    token = Vault(first).encrypt("secret", aad=AAD)
    assert Vault(second).decrypt(token, aad=AAD) == "secret"
