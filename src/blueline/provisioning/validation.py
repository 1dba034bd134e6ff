"""Input rules for setups, shared by every entry point."""

from __future__ import annotations

import hashlib
import unicodedata

from blueline.errors import InvalidInput, ValidationFailed

MAX_TEXT = 128
MAX_IDEMPOTENCY_KEY = 255


# Format characters that can disguise what an operator reads (bidirectional overrides
# and isolates, invisible spaces). Joiners stay allowed: emoji sequences and scripts
# such as Persian need them.
_DECEPTIVE = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200b\u2060\ufeff")


def _has_control_chars(value: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cs", "Co") or ch in _DECEPTIVE for ch in value)


def _is_plain_token(value: str) -> bool:
    return value.isascii() and value.isprintable()


def clean_text(value: str, field: str, label: str) -> tuple[str, InvalidInput | None]:
    cleaned = value.strip()
    if not cleaned:
        return cleaned, InvalidInput(f"{label} must not be empty", field=["input", field])
    if len(cleaned) > MAX_TEXT:
        return cleaned, InvalidInput(
            f"{label} must be at most {MAX_TEXT} characters", field=["input", field]
        )
    if _has_control_chars(cleaned):
        return cleaned, InvalidInput(
            f"{label} must not contain control characters", field=["input", field]
        )
    return cleaned, None


def validate_setup_input(
    business_name: str, label: str, idempotency_key: str | None
) -> tuple[str, str, str | None]:
    name, name_error = clean_text(business_name, "businessName", "Business name")
    lab, label_error = clean_text(label, "label", "Label")
    problems = [e for e in (name_error, label_error) if e is not None]
    key = idempotency_key
    if key is not None and (
        not key or len(key) > MAX_IDEMPOTENCY_KEY or not _is_plain_token(key) or key != key.strip()
    ):
        problems.append(
            InvalidInput(
                f"Idempotency key must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters "
                "without spaces at either end",
                field=["input", "idempotencyKey"],
            )
        )
    if problems:
        raise ValidationFailed(problems)
    return name, lab, key


def fingerprint(business_name: str, label: str) -> str:
    return hashlib.sha256(f"{business_name}\x00{label}".encode()).hexdigest()
