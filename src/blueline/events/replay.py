"""A subscriber's stream: replay from the event log, then live, with no gap or duplicate.

The subscriber registers with the hub *before* reading the log, so an event is either
in what the log returns or arrives live afterwards (or both, when it is dropped by
seq). Seqs are handed out in visibility order by the relay, so "greater than the last
delivered seq" is exactly "not yet delivered".
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy import func, select
from sqlmodel import col

from blueline.events.hub import Hub, Signal
from blueline.events.outbox import LineEvent
from blueline.persistence.database import Database
from blueline.persistence.models import Event

_PAGE = 500


class StreamEnded(Exception):
    """The stream cannot go on; the message tells the client what to do."""


async def seq_known(db: Database, workspace_id: str, seq: int) -> bool:
    async with db.session() as session:
        found = await session.execute(
            select(col(Event.id))
            .where(col(Event.seq) == seq)
            .where(col(Event.workspace_id) == workspace_id)
        )
        return found.first() is not None


async def latest_seq(db: Database) -> int:
    async with db.session() as session:
        top = (await session.execute(select(func.max(col(Event.seq))))).scalar_one()
    return int(top or 0)


async def events_after(
    db: Database, workspace_id: str, seq: int, setup_id: str | None, limit: int = _PAGE
) -> list[LineEvent]:
    query = (
        select(Event)
        .where(col(Event.workspace_id) == workspace_id)
        .where(col(Event.seq) > seq)
        .order_by(col(Event.seq))
        .limit(limit)
    )
    if setup_id is not None:
        query = query.where(col(Event.setup_id) == setup_id)
    async with db.session() as session:
        rows = (await session.execute(query)).scalars().all()
    return [LineEvent.from_row(row) for row in rows]


async def stream(
    db: Database,
    hub: Hub,
    workspace_id: str,
    *,
    setup_id: str | None = None,
    after_seq: int | None = None,
) -> AsyncIterator[LineEvent]:
    async with hub.subscribe(workspace_id) as subscriber:
        if after_seq is not None:
            if not await seq_known(db, workspace_id, after_seq):
                raise StreamEnded(
                    "`after` is not a known event id (or it is older than the retained "
                    "event log): refetch, then subscribe again"
                )
            last = after_seq
            catching_up = True
        else:
            last = await latest_seq(db)
            catching_up = False
        while True:
            if catching_up:
                page = await events_after(db, workspace_id, last, setup_id)
                for event in page:
                    last = event.seq
                    yield event
                catching_up = len(page) == _PAGE
                if catching_up:
                    continue
            item = await subscriber.get()
            if item is Signal.RESYNC:
                catching_up = True
            elif item is Signal.OVERFLOW:
                raise StreamEnded(
                    "this subscriber fell too far behind; subscribe again with `after` "
                    "set to the last event id received"
                )
            elif item is Signal.CLOSED:
                raise StreamEnded("the server is shutting down; subscribe again with `after`")
            elif isinstance(item, LineEvent) and item.seq > last:
                last = item.seq
                if setup_id is None or item.setup_id == setup_id:
                    yield item
