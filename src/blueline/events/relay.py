"""Outbox relay: sequence committed events, publish them, mark them published.

Numbering runs under a database-wide lock (an advisory lock on PostgreSQL; SQLite's
write lock), so event sequence numbers follow the order events became visible, and
it commits before anything is published: a live event is always already in the log,
and a number once given never changes. Publishing then sends every numbered but
unpublished event in seq order and marks it published. If the bus is down, events
wait and go out later; if two relays (or a crash between publish and mark) send an
event twice, subscribers drop anything at or below the last seq they delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

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
_UNSEQUENCED = (
    select(_EVENTS.c.id, func.row_number().over(order_by=_EVENTS.c.id).label("position"))
    .where(_EVENTS.c.seq.is_(None))
    .order_by(_EVENTS.c.id)
    .limit(_BATCH)
    .subquery()
)
_SEQUENCE = (
    update(_EVENTS)
    .where(_EVENTS.c.id == _UNSEQUENCED.c.id)
    .values(
        seq=select(func.coalesce(func.max(_EVENTS.c.seq), 0)).scalar_subquery()
        + _UNSEQUENCED.c.position
    )
)
_UNPUBLISHED = (
    select(*_EVENTS.c)
    .where(_EVENTS.c.published_at.is_(None))
    .where(_EVENTS.c.seq.is_not(None))
    .order_by(_EVENTS.c.seq)
    .limit(_BATCH)
)
_MARK_PUBLISHED = (
    update(_EVENTS)
    .where(_EVENTS.c.id.in_(bindparam("r_ids", expanding=True)))
    .values(published_at=bindparam("r_now", type_=UTCDateTime()))
)


class Relay:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        *,
        poll_interval_s: float = 0.5,
    ) -> None:
        self._db = db
        self._bus = bus
        self._poll = poll_interval_s
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

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
        """Sequence, commit, then publish one batch; returns how many events went out.

        Numbers are committed before anything is published, so a subscriber that sees
        an event live can always find it in the log too, and a failed publish leaves
        the numbers in place: the next pass publishes the same events under the same
        seqs, which subscribers drop if they already have them.
        """
        async with self._lock, self._db.connect(read_only=False) as conn:
            async with conn.begin():
                if self._db.is_postgresql:
                    await conn.execute(_ADVISORY_LOCK, {"key": _RELAY_LOCK_KEY})
                await conn.execute(_SEQUENCE)
            rows = (await conn.execute(_UNPUBLISHED)).all()
            await conn.rollback()
            if not rows:
                metrics().outbox_pending.set(0)
                return 0
            await self._bus.publish_many([LineEvent.from_row(row) for row in rows])
            now = utcnow()
            async with conn.begin():
                await conn.execute(
                    _MARK_PUBLISHED, {"r_ids": [row.id for row in rows], "r_now": now}
                )
        m = metrics()
        for row in rows:
            m.outbox_publish_delay.observe((now - row.created_at).total_seconds())
        m.outbox_published.inc(len(rows))
        m.outbox_pending.set(0 if len(rows) < _BATCH else _BATCH)
        return len(rows)
