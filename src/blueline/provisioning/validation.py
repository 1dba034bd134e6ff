"""Input rules for names and keys, shared by every entry point that takes one (creating
and renaming setups, workspace names at the CLI).

A name is what an operator reads on a screen, so it must show what it is:

- it is NFC-normalised, trimmed, and 1-128 characters long;
- it holds no control, format, surrogate, private-use or unassigned code point
  (categories Cc, Cf, Cs, Co, Cn), no line or paragraph separator (Zl, Zp) and no
  noncharacter, so nothing invisible can reorder, hide or fake what is shown (bidi
  marks, soft hyphens, tag characters, U+FFFE…);
- nor the marks that only ever render as nothing (U+034F, and Khmer's deprecated
  U+17B4/U+17B5): "Acme" U+034F "Dental" would show as a name it is not;
- the two joiners (U+200C, U+200D) are the exception, only between two visible
  characters (marks such as a variation selector may come between the first and the
  joiner): emoji sequences and scripts such as Persian need them;
- it has at least one visible character (not just fillers such as U+3164 or U+2800).
"""

from __future__ import annotations

import hashlib
import unicodedata

from blueline.errors import InvalidInput, ValidationFailed

MAX_TEXT = 128
MAX_IDEMPOTENCY_KEY = 255

_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_JOINERS = frozenset("\u200c\u200d")
_EMPTY_MARKS = frozenset("\u034f\u17b4\u17b5")
# Graphic characters that render as nothing.
_BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e\u17b4\u17b5\u034f\u2061\u2062\u2063\u2064")
_UNSEEN_CATEGORIES = frozenset({"Zs", "Mn", "Me", "Cf"})


def _is_noncharacter(ch: str) -> bool:
    code = ord(ch)
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def _visible(ch: str) -> bool:
    return ch not in _BLANK and unicodedata.category(ch) not in _UNSEEN_CATEGORIES


def _joins(text: str, index: int) -> bool:
    """Whether the joiner at ``index`` sits between two visible characters; marks such
    as a variation selector may come between the first one and the joiner (❤️‍🔥), but
    a mark with nothing visible before it joins nothing."""
    base = index - 1
    while base >= 0 and unicodedata.category(text[base]) == "Mn":
        base -= 1
    after = index + 1
    return base >= 0 and _visible(text[base]) and after < len(text) and _visible(text[after])


def _refused_at(text: str) -> int | None:
    """Index of the first character the rule refuses, if any."""
    for index, ch in enumerate(text):
        if ch in _JOINERS:
            if _joins(text, index):
                continue
            return index
        if (
            unicodedata.category(ch) in _REFUSED_CATEGORIES
            or _is_noncharacter(ch)
            or ch in _EMPTY_MARKS
        ):
            return index
    return None


def clean_name(value: str, field: str, label: str) -> tuple[str, InvalidInput | None]:
    cleaned = unicodedata.normalize("NFC", value).strip()
    where = ["input", field]
    if not cleaned:
        return cleaned, InvalidInput(f"{label} must not be empty", field=where)
    if len(cleaned) > MAX_TEXT:
        return cleaned, InvalidInput(f"{label} must be at most {MAX_TEXT} characters", field=where)
    refused = _refused_at(cleaned)
    if refused is not None:
        return cleaned, InvalidInput(
            f"{label} must not contain invisible or control characters "
            f"(U+{ord(cleaned[refused]):04X} at position {refused + 1})",
            field=where,
        )
    if not any(_visible(ch) for ch in cleaned):
        return cleaned, InvalidInput(f"{label} must contain a visible character", field=where)
    return cleaned, None


def name_or_raise(value: str, field: str, label: str) -> str:
    cleaned, error = clean_name(value, field, label)
    if error is not None:
        raise ValidationFailed([error])
    return cleaned


def _is_plain_token(value: str) -> bool:
    return value.isascii() and value.isprintable()


def validate_setup_input(
    business_name: str, label: str, idempotency_key: str | None
) -> tuple[str, str, str | None]:
    name, name_error = clean_name(business_name, "businessName", "Business name")
    lab, label_error = clean_name(label, "label", "Label")
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


def validate_update_input(
    business_name: str | None, label: str | None
) -> tuple[str | None, str | None]:
    problems: list[InvalidInput] = []
    name = lab = None
    if business_name is not None:
        name, error = clean_name(business_name, "businessName", "Business name")
        problems += [error] if error else []
    if label is not None:
        lab, error = clean_name(label, "label", "Label")
        problems += [error] if error else []
    if business_name is None and label is None:
        problems.append(InvalidInput("Give a businessName, a label, or both", field=["input"]))
    if problems:
        raise ValidationFailed(problems)
    return name, lab


def fingerprint(business_name: str, label: str) -> str:
    return hashlib.sha256(f"{business_name}\x00{label}".encode()).hexdigest()
