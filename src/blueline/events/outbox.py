"""Write a line event into the outbox, inside the transaction of the change itself.

The payload is a snapshot of the setup and the line as the change left them, so a
subscriber can be served from the event alone (no query per event per subscriber).
It carries no secret: only the fields the GraphQL types expose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from blueline import ids
from blueline.persistence.models import Event
from blueline.persistence.queries import SetupView
from blueline.persistence.types import utcnow

LINE_REQUESTED = "line.requested"
LINE_ASSIGNED = "line.assigned"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


class LineFields(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def phone_number(self) -> str | None: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def requested_at(self) -> datetime: ...
    @property
    def assigned_at(self) -> datetime | None: ...


def snapshot(setup: SetupView, line: LineFields, line_count: int) -> dict[str, Any]:
    return {
        "setup": {
            "id": setup.id,
            "business_name": setup.business_name,
            "label": setup.label,
            "status": str(setup.status),
            "phone_line_count": line_count,
            "created_at": _iso(setup.created_at),
            "updated_at": _iso(setup.updated_at),
        },
        "line": {
            "id": line.id,
            "status": str(line.status),
            "phone_number": line.phone_number,
            "request_id": line.request_id,
            "requested_at": _iso(line.requested_at),
            "assigned_at": _iso(line.assigned_at),
        },
    }


_INSERT = insert(Event)


async def record(
    conn: AsyncConnection,
    event_type: str,
    setup: SetupView,
    line: LineFields,
    line_count: int,
) -> None:
    """One INSERT in the caller's transaction; nothing is published before it commits."""
    await conn.execute(
        _INSERT,
        {
            "id": ids.new_id(ids.EVENT),
            "workspace_id": setup.workspace_id,
            "setup_id": setup.id,
            "line_id": line.id,
            "type": event_type,
            "payload": json.dumps(snapshot(setup, line, line_count), separators=(",", ":")),
            "created_at": utcnow(),
        },
    )


@dataclass(frozen=True)
class LineEvent:
    """A committed, sequenced event as subscribers receive it."""

    seq: int
    row_id: str
    workspace_id: str
    setup_id: str
    type: str
    payload: dict[str, Any]

    @property
    def event_id(self) -> str:
        return format_event_id(self.seq)

    def to_message(self) -> str:
        return json.dumps(
            {
                "seq": self.seq,
                "row_id": self.row_id,
                "workspace_id": self.workspace_id,
                "setup_id": self.setup_id,
                "type": self.type,
                "payload": self.payload,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_message(cls, raw: str | bytes) -> LineEvent:
        data = json.loads(raw)
        return cls(
            seq=int(data["seq"]),
            row_id=str(data["row_id"]),
            workspace_id=str(data["workspace_id"]),
            setup_id=str(data["setup_id"]),
            type=str(data["type"]),
            payload=dict(data["payload"]),
        )

    @classmethod
    def from_row(cls, row: Any) -> LineEvent:
        """From an ``Event`` model or a row of the event table."""
        assert row.seq is not None
        return cls(
            seq=row.seq,
            row_id=row.id,
            workspace_id=row.workspace_id,
            setup_id=row.setup_id,
            type=row.type,
            payload=json.loads(row.payload),
        )


# Event ids clients see: fixed width so they sort as strings in commit order.
_EVENT_ID_PREFIX = "evt_"
_EVENT_ID_WIDTH = 16


def format_event_id(seq: int) -> str:
    return f"{_EVENT_ID_PREFIX}{seq:0{_EVENT_ID_WIDTH}d}"


def parse_event_id(value: str) -> int | None:
    body = value.removeprefix(_EVENT_ID_PREFIX)
    if body == value or len(body) != _EVENT_ID_WIDTH or not body.isdigit():
        return None
    return int(body)
