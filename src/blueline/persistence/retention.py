"""Pruning of the webhook delivery log and the event log.

At least seven days are always kept: the provider re-delivers for days, and a
re-delivery must still find its ``webhook-id`` to be answered without re-applying.
Events are pruned only once published; a subscriber resuming from a pruned id gets
an error telling it to refetch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import aliased
from sqlmodel import col

from blueline.errors import InvalidInput
from blueline.persistence.database import Database
from blueline.persistence.models import Event, EventOutbox, WebhookDelivery
from blueline.persistence.types import utcnow

MIN_RETENTION_DAYS = 7


@dataclass(frozen=True)
class Pruned:
    deliveries: int
    events: int


async def prune(db: Database, days: float = MIN_RETENTION_DAYS) -> Pruned:
    if days < MIN_RETENTION_DAYS:
        raise InvalidInput(f"retention must be at least {MIN_RETENTION_DAYS} days")
    cutoff = utcnow() - timedelta(days=days)
    async with db.transaction() as session:
        deliveries = await session.execute(
            delete(WebhookDelivery).where(col(WebhookDelivery.received_at) < cutoff)
        )
        # Numbering lives in the workspace row, so pruning never restarts it; each
        # workspace's newest event stays anyway, so a subscriber that is up to date can
        # resume with `after` however quiet the workspace has been.
        newer = aliased(Event)
        newest = (
            select(func.max(col(newer.seq)))
            .where(col(newer.workspace_id) == col(Event.workspace_id))
            .scalar_subquery()
        )
        events = await session.execute(
            delete(Event)
            .where(col(Event.created_at) < cutoff)
            .where(~exists().where(col(EventOutbox.event_id) == col(Event.id)))
            .where(col(Event.seq) < newest)
        )
    return Pruned(deliveries=_rowcount(deliveries), events=_rowcount(events))


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
