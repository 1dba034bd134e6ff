"""Outbox relay: sequence committed events, publish them, mark them published.

One pass runs under a database-wide lock (an advisory lock on PostgreSQL; SQLite's
write lock), so event sequence numbers follow the order events became visible and
one relay at a time publishes. The pass is one transaction: if publishing fails, the
sequence numbers roll back with it and the next pass tries again, so a bus outage
delays events and loses none. A crash after publishing but before commit can publish
an event twice; subscribers drop anything at or below the last seq they delivered.
Sequenced and published are one step, so ``published_at`` is set exactly when ``seq``
is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy import bindparam, func, select, text, update

from blueline.events.bus import EventBus
from blueline.events.outbox import LineEvent
from blueline.observability.metrics import metrics
from blueline.persistence.database import Database
from blueline.persistence.models import Event
from blueline.persistence.types import UTCDateTime, utcnow

logger = logging.getLogger(__name__)

# Arbitrary constant naming the relay's advisory lock.
_RELAY_LOCK_KEY = 0x426C75656C696E65  # "Blueline"
_BATCH = 500
_EVENTS = Event.__table__  # type: ignore[attr-defined]

# Built once: the relay runs after every commit, and building this per pass cost more
# than executing it.
_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
_WAITING = (
    select(_EVENTS.c.id, func.row_number().over(order_by=_EVENTS.c.id).label("position"))
    .where(_EVENTS.c.published_at.is_(None))
    .order_by(_EVENTS.c.id)
    .limit(_BATCH)
    .subquery()
)
_SEQUENCE_AND_MARK = (
    update(_EVENTS)
    .where(_EVENTS.c.id == _WAITING.c.id)
    .values(
        seq=select(func.coalesce(func.max(_EVENTS.c.seq), 0)).scalar_subquery()
        + _WAITING.c.position,
        published_at=bindparam("r_now", type_=UTCDateTime()),
    )
    .returning(*_EVENTS.c)
)


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
        """Sequence and publish one batch; returns how many events went out.

        One UPDATE numbers the oldest unpublished events after the highest seq and
        marks them published, returning them; they are then published in one round
        trip, and the transaction commits only if that succeeded.
        """
        async with self._lock, self._db.connect() as conn, conn.begin():
            if self._db.is_postgresql:
                await conn.execute(_ADVISORY_LOCK, {"key": _RELAY_LOCK_KEY})
            now = utcnow()
            rows = (await conn.execute(_SEQUENCE_AND_MARK, {"r_now": now})).all()
            if not rows:
                metrics().outbox_pending.set(0)
                return 0
            events = sorted((LineEvent.from_row(row) for row in rows), key=lambda e: e.seq)
            await self._bus.publish_many(events)
        m = metrics()
        for row in rows:
            m.outbox_publish_delay.observe((now - row.created_at).total_seconds())
        m.outbox_published.inc(len(rows))
        m.outbox_pending.set(0 if len(rows) < _BATCH else _BATCH)
        self._on_published(len(rows))
        return len(rows)
