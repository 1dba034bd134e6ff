"""Outbox relay: sequence committed events, publish them, mark them published.

One pass runs under a database-wide lock (an advisory lock on PostgreSQL; SQLite's
write lock), so event sequence numbers follow the order events became visible and
one relay at a time publishes. The pass is one transaction: if publishing fails, the
sequence numbers roll back with it and the next pass tries again, so a bus outage
delays events and loses none. A crash after publishing but before commit can publish
an event twice; subscribers drop anything at or below the last seq they delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy import func, select, text, update
from sqlmodel import col

from blueline.events.bus import EventBus
from blueline.events.outbox import LineEvent
from blueline.observability.metrics import metrics
from blueline.persistence.database import Database
from blueline.persistence.models import Event
from blueline.persistence.types import utcnow

logger = logging.getLogger(__name__)

# Arbitrary constant naming the relay's advisory lock.
_RELAY_LOCK_KEY = 0x426C75656C696E65  # "Blueline"
_BATCH = 500


class Relay:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        *,
        poll_interval_s: float = 0.5,
        on_published: Callable[[int], None] = lambda _n: None,
    ) -> None:
        self._db = db
        self._bus = bus
        self._poll = poll_interval_s
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._on_published = on_published

    def kick(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="blueline-outbox-relay")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        # Whatever committed before shutdown goes out now if the bus allows it.
        with contextlib.suppress(Exception):
            await self.pass_once()

    async def _run(self) -> None:
        backoff = self._poll
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            self._wake.clear()
            try:
                while await self.pass_once() == _BATCH:
                    pass
                backoff = self._poll
            except Exception as exc:  # the relay must outlive any outage
                logger.warning("outbox relay pass failed (%s); will retry", type(exc).__name__)
                backoff = min(max(backoff * 2, 0.1), 5.0)

    async def pass_once(self) -> int:
        """Sequence and publish one batch; returns how many events went out."""
        async with self._lock, self._db.transaction() as session:
            if self._db.is_postgresql:
                await session.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _RELAY_LOCK_KEY}
                )
            unsequenced = (
                (
                    await session.execute(
                        select(col(Event.id))
                        .where(col(Event.seq).is_(None))
                        .order_by(col(Event.id))
                        .limit(_BATCH)
                    )
                )
                .scalars()
                .all()
            )
            if unsequenced:
                top = (await session.execute(select(func.max(col(Event.seq))))).scalar_one()
                next_seq = int(top or 0)
                for event_id in unsequenced:
                    next_seq += 1
                    await session.execute(
                        update(Event).where(col(Event.id) == event_id).values(seq=next_seq)
                    )
            rows = (
                (
                    await session.execute(
                        select(Event)
                        .where(col(Event.published_at).is_(None))
                        .where(col(Event.seq).is_not(None))
                        .order_by(col(Event.seq))
                        .limit(_BATCH)
                    )
                )
                .scalars()
                .all()
            )
            if not rows:
                metrics().outbox_pending.set(0)
                return 0
            for row in rows:
                await self._bus.publish(LineEvent.from_row(row))
            now = utcnow()
            m = metrics()
            for row in rows:
                m.outbox_publish_delay.observe((now - row.created_at).total_seconds())
            await session.execute(
                update(Event)
                .where(col(Event.id).in_([row.id for row in rows]))
                .values(published_at=now)
            )
        m.outbox_published.inc(len(rows))
        m.outbox_pending.set(max(len(unsequenced) - len(rows), 0))
        self._on_published(len(rows))
        return len(rows)
