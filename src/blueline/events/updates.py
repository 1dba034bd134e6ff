"""Live updates for subscribers: which events a subscription wants, where it starts,
and the update record (``readmodel.UpdateShape``) each event becomes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from blueline import ids
from blueline.domain import SetupChange
from blueline.errors import InvalidInput, NotFound
from blueline.events.hub import Hub
from blueline.events.stream import stream
from blueline.persistence.database import Database
from blueline.persistence.eventlog import EventLog, LiveEvent, parse_event_id
from blueline.persistence.setups import SetupStore

SETUP_NOT_FOUND = "No iMessage setup with this id exists in your workspace"
BAD_AFTER = "`after` is not a valid event id"


def line_updates(event: LiveEvent) -> bool:
    return SetupChange(event.change).is_about_a_line


def setup_updates(_event: LiveEvent) -> bool:
    return True


def update_record(event: LiveEvent) -> dict[str, Any]:
    """The record both update shapes are answered from (computed once per event)."""
    found = event.memo.get("record")
    if found is None:
        snapshot = event.snapshot()
        found = event.memo["record"] = {
            "eventId": event.event_id,
            "change": event.change,
            "setup": snapshot["setup"],
            "phoneLine": snapshot["line"],
        }
    return dict(found)


class Updates:
    def __init__(self, db: Database, log: EventLog, hub: Hub) -> None:
        self._db = db
        self._log = log
        self._hub = hub
        self._store = SetupStore(db.dialect)

    async def open(
        self,
        workspace_id: str,
        *,
        wanted: Callable[[LiveEvent], bool],
        setup_id: str | None,
        after: str | None,
    ) -> AsyncIterator[LiveEvent]:
        """Check the arguments (errors a client can act on), then the stream."""
        if setup_id is not None:
            found = None
            if ids.prefix_of(setup_id) == ids.SETUP:
                async with self._db.read() as conn:
                    found = await self._store.visible(conn, workspace_id, setup_id)
            if found is None:
                raise NotFound(SETUP_NOT_FOUND, field=["setupId"])
        after_seq = None
        if after is not None:
            after_seq = parse_event_id(after)
            if after_seq is None:
                raise InvalidInput(BAD_AFTER, field=["after"])
        return stream(
            self._log,
            self._hub,
            workspace_id,
            wanted=wanted,
            setup_id=setup_id,
            after_seq=after_seq,
        )
