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


# WebSocket close codes a client can act on: reconnect and resubscribe with `after`.
CLOSE_SLOW_CONSUMER = 4500
CLOSE_SERVICE_RESTART = 1012


class StreamEnded(Exception):
    """The stream cannot go on; the message tells the client what to do.

    ``close_code`` is set when the whole connection should close (the client must
    reconnect), rather than just this operation ending with an error.
    """

    def __init__(self, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


async def seq_known(db: Database, workspace_id: str, seq: int) -> bool:
    async with db.session() as session:
        found = await session.execute(
            select(col(Event.id))
            .where(col(Event.seq) == seq)
            .where(col(Event.workspace_id) == workspace_id)
        )
        return found.first() is not None


async def committed_so_far(db: Database, workspace_id: str) -> tuple[int, set[str]]:
    """The highest seq, and the events committed but not yet sequenced by the relay:
    together, everything that happened before a subscription without ``after`` began."""
    async with db.session() as session:
        top = (await session.execute(select(func.max(col(Event.seq))))).scalar_one()
        waiting = (
            await session.execute(
                select(col(Event.id))
                .where(col(Event.published_at).is_(None))
                .where(col(Event.seq).is_(None))
                .where(col(Event.workspace_id) == workspace_id)
            )
        ).scalars()
        return int(top or 0), set(waiting)


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
            before_start: set[str] = set()
        else:
            last, before_start = await committed_so_far(db, workspace_id)
            catching_up = False
        while True:
            if catching_up:
                page = await events_after(db, workspace_id, last, setup_id)
                for event in page:
                    last = event.seq
                    if event.row_id in before_start:
                        before_start.discard(event.row_id)
                    else:
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
                    "set to the last event id received",
                    CLOSE_SLOW_CONSUMER,
                )
            elif item is Signal.CLOSED:
                raise StreamEnded(
                    "the server is restarting; reconnect and subscribe with `after`",
                    CLOSE_SERVICE_RESTART,
                )
            elif isinstance(item, LineEvent) and item.seq > last:
                last = item.seq
                if item.row_id in before_start:
                    before_start.discard(item.row_id)
                elif setup_id is None or item.setup_id == setup_id:
                    yield item
