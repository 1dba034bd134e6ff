"""Pruning keeps at least seven days of the delivery log and never an unpublished event."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlmodel import col

from blueline import ids
from blueline.errors import InvalidInput
from blueline.persistence.database import Database
from blueline.persistence.models import Event, EventOutbox, WebhookDelivery
from blueline.persistence.retention import prune
from blueline.persistence.types import utcnow


async def _count(db: Database, model: type) -> int:
    async with db.session() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def test_prune_removes_only_old_deliveries_and_published_events(db: Database) -> None:
    now = utcnow()
    async with db.transaction() as session:
        for age_days, webhook_id in ((10, "msg_old"), (3, "msg_recent")):
            session.add(
                WebhookDelivery(
                    id=ids.new_id(ids.DELIVERY),
                    setup_id="ims_x",
                    webhook_id=webhook_id,
                    event_type="line.assigned",
                    outcome="applied",
                    received_at=now - timedelta(days=age_days),
                )
            )
        for age_days, published, seq in ((10, True, 1), (10, False, 2), (3, True, 3)):
            # seq 1 is old and published: pruned; the unpublished one and seq 3 stay.
            event_id = ids.new_id(ids.EVENT)
            if not published:
                session.add(
                    EventOutbox(event_id=event_id, created_at=now - timedelta(days=age_days))
                )
            session.add(
                Event(
                    id=event_id,
                    seq=seq,
                    workspace_id="ws_x",
                    setup_id="ims_x",
                    line_id="pl_x",
                    type="LINE_ADDED",
                    payload="{}",
                    created_at=now - timedelta(days=age_days),
                )
            )

    pruned = await prune(db, 7)

    assert (pruned.deliveries, pruned.events) == (1, 1)
    assert await _count(db, WebhookDelivery) == 1
    assert await _count(db, Event) == 2
    assert (await prune(db, 7)).deliveries == 0


async def test_less_than_seven_days_is_refused(db: Database) -> None:
    with pytest.raises(InvalidInput):
        await prune(db, 6.9)


async def test_each_workspaces_newest_event_survives(db: Database) -> None:
    old = utcnow() - timedelta(days=30)
    async with db.transaction() as session:
        for workspace_id, seq in (("ws_x", 1), ("ws_x", 2), ("ws_y", 1)):
            session.add(
                Event(
                    id=ids.new_id(ids.EVENT),
                    seq=seq,
                    workspace_id=workspace_id,
                    setup_id="ims_x",
                    line_id="pl_x",
                    type="LINE_ADDED",
                    payload="{}",
                    created_at=old,
                )
            )
    assert (await prune(db, 7)).events == 1
    async with db.session() as session:
        remaining = (await session.execute(select(col(Event.workspace_id), col(Event.seq)))).all()
    assert sorted(tuple(r) for r in remaining) == [("ws_x", 2), ("ws_y", 1)]
