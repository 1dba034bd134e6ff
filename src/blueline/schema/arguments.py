"""List arguments, normalised the same way for compiled reads and ordinary resolvers,
so both accept and refuse the same inputs with the same words."""

from __future__ import annotations

from enum import Enum
from typing import Any

from blueline import ids
from blueline import readmodel as rm


class ArgumentError(ValueError):
    """An argument no request may pass; the message is the client's error."""


def page_size(first: Any) -> int:
    size = rm.DEFAULT_PAGE if first is None else first
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= rm.MAX_PAGE:
        raise ArgumentError(f"`first` must be between 0 and {rm.MAX_PAGE}")
    return size


def encode_cursor(connection: rm.Connection, key: str | int) -> str:
    return f"{connection.cursor_prefix}{key}"


def cursor_key(connection: rm.Connection, after: Any) -> str | int | None:
    """The ordering key an ``after`` cursor names, or None for the first page."""
    if after is None:
        return None
    if not isinstance(after, str) or not after.startswith(connection.cursor_prefix):
        raise ArgumentError("`after` is not a valid cursor")
    key = after.removeprefix(connection.cursor_prefix)
    if connection.order_column == "id":
        if ids.prefix_of(key) != connection.node.id_prefix:
            raise ArgumentError("`after` is not a valid cursor")
        return key
    if not key.isascii() or not key.isdigit() or len(key) > 18:
        raise ArgumentError("`after` is not a valid cursor")
    return int(key)


def filter_value(value: Any) -> str | None:
    """A filter argument as stored (enums by value)."""
    if value is None:
        return None
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)
