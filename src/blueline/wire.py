"""Wire forms of values: the one text each kind of value has in responses, records,
snapshots and the audit chain."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def wire_datetime(value: datetime) -> str:
    """RFC 3339, UTC, microseconds, ``Z`` (the SQL in ``persistence.dialect`` builds the
    same text for stored timestamps)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def wire(value: Any) -> Any:
    return wire_datetime(value) if isinstance(value, datetime) else value
