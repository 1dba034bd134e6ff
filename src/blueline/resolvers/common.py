"""Helpers shared by resolvers: cursors, limits, error mapping."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from graphql import GraphQLError
from strawberry.types import Info
from strawberry.types.nodes import SelectedField, Selection

from blueline import ids
from blueline.errors import BluelineError, ValidationFailed
from blueline.schema.types import UserError

MAX_FIRST = 100
_CURSOR_PREFIX = "c1:"


def encode_cursor(setup_id: str) -> str:
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + setup_id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.urlsafe_b64decode(padded.encode()).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise GraphQLError("`after` is not a valid cursor") from None
    setup_id = raw.removeprefix(_CURSOR_PREFIX)
    if setup_id == raw or ids.prefix_of(setup_id) != ids.SETUP:
        raise GraphQLError("`after` is not a valid cursor")
    return setup_id


def check_first(first: int) -> int:
    if first < 0 or first > MAX_FIRST:
        raise GraphQLError(f"`first` must be between 0 and {MAX_FIRST}")
    return first


def user_errors(error: BluelineError) -> list[UserError]:
    problems = error.problems if isinstance(error, ValidationFailed) else [error]
    return [UserError(field=p.field, message=p.message, code=p.code) for p in problems]


def selects_child(info: Info[Any, Any], name: str) -> bool:
    """Whether the current field's selection asks for ``name`` (fragments included)."""

    def walk(selections: list[Selection]) -> bool:
        for selection in selections:
            if isinstance(selection, SelectedField):
                if selection.name == name:
                    return True
            elif walk(selection.selections):  # an inline fragment or fragment spread
                return True
        return False

    return any(walk(field.selections) for field in info.selected_fields)
