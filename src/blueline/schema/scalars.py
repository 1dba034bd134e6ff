"""Scalars with one wire form each."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NewType

import strawberry

from blueline.wire import wire_datetime

RFC_3339 = "https://datatracker.ietf.org/doc/html/rfc3339"


def _serialize(value: Any) -> str:
    if isinstance(value, datetime):
        return wire_datetime(value)
    return str(value)


def _parse(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("DateTime must be an RFC 3339 string")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("DateTime must carry a time zone (Z or an offset)")
    return parsed.astimezone(UTC)


DateTime = NewType("DateTime", str)

# Registered with the schema's StrawberryConfig(scalar_map=SCALARS).
SCALARS: dict[object, Any] = {
    DateTime: strawberry.scalar(
        name="DateTime",
        description="A point in time: RFC 3339 in UTC, e.g. 2026-12-01T09:30:00.000000Z",
        specified_by_url=RFC_3339,
        serialize=_serialize,
        parse_value=_parse,
    )
}
