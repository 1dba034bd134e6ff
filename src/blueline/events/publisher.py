"""Publishing committed events: at once for whoever committed them, and a sweep for the
rest.

The request (or batch) that commits events hands them over right after commit, and one
sender publishes them in the order handed, whatever queued meanwhile in one bus round
trip: a live update costs no relay hop, and the committer answers its caller without
waiting for the bus. Published events are marked
in the log in batches, off the request path. Whatever a crash, a bus outage or another
process without a bus left unmarked is published by the sweep once it is ``grace_s``
old. A duplicate (a sweep racing a late mark) is harmless: subscribers drop seqs they
already delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta

from blueline.events.bus import EventBus
from blueline.observability.metrics import metrics
from blueline.persistence.eventlog import EventLog, LiveEvent
from blueline.persistence.types import utcnow

logger = logging.getLogger(__name__)

_SWEEP_BATCH = 500
# Events handed over and not yet sent, at most: past it (the bus is slower than the
# commits), the sweep sends the rest.
MAX_QUEUED = 10_000


class Publisher:
    def __init__(
        self,
        log: EventLog,
        bus: EventBus,
        *,
        sweep_interval_s: float = 1.0,
        grace_s: float = 2.0,
        mark_interval_s: float = 0.1,
    ) -> None:
        self._log = log
        self._bus = bus
        self._sweep_interval_s = sweep_interval_s
        self._grace_s = grace_s
        self._mark_interval_s = mark_interval_s
        self._unmarked: list[LiveEvent] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._queued: list[LiveEvent] = []
        self._sender: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._mark_forever(), name="blueline-publish-marker"),
            asyncio.create_task(self._sweep_forever(), name="blueline-publish-sweeper"),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._sender] if self._sender is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks, self._sender = [], None
        # What committed before shutdown goes out now if the bus and database allow it.
        queued, self._queued = self._queued, []
        await self.publish(queued)
        with contextlib.suppress(Exception):
            await self._mark()
        with contextlib.suppress(Exception):
            await self.sweep_once(grace_s=0)

    def publish_soon(self, events: Sequence[LiveEvent]) -> None:
        """Hand over events right after their commit, to be published in this order."""
        if not events or self._bus.detached:
            return
        if len(self._queued) >= MAX_QUEUED:
            return  # the sweep sends them once they are `grace_s` old
        self._queued.extend(events)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_queued(), name="blueline-publish-sender")

    async def _send_queued(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            await self.publish(batch)

    async def publish(self, events: Sequence[LiveEvent]) -> None:
        """Publish now and wait for the bus; never raises."""
        if not events or self._bus.detached:
            return
        try:
            await self._bus.publish_many(events)
        except Exception as exc:  # the sweep sends them once the bus is back
            logger.warning("publishing %d event(s) failed (%s)", len(events), type(exc).__name__)
            return
        m = metrics()
        m.outbox_published.inc(len(events))
        self._unmarked.extend(events)

    async def _mark(self) -> None:
        if not self._unmarked:
            return
        batch, self._unmarked = self._unmarked, []
        try:
            await self._log.mark_published([e.row_id for e in batch])
        except Exception:
            # Left unmarked, they are sent again by a sweep: a duplicate, never a loss.
            logger.warning("could not mark %d published event(s)", len(batch))

    async def _mark_forever(self) -> None:
        while True:
            await asyncio.sleep(self._mark_interval_s)
            await self._mark()

    async def sweep_once(self, grace_s: float | None = None) -> int:
        """Publish events left unpublished for ``grace_s``; how many went out."""
        if self._bus.detached:
            return 0
        grace = self._grace_s if grace_s is None else grace_s
        cutoff = utcnow() - timedelta(seconds=grace)
        sent = 0
        while True:
            events = await self._log.unpublished(cutoff, _SWEEP_BATCH)
            metrics().outbox_pending.set(len(events))
            if not events:
                return sent
            await self._bus.publish_many(events)
            await self._log.mark_published([e.row_id for e in events])
            m = metrics()
            m.outbox_published.inc(len(events))
            sent += len(events)
            if len(events) < _SWEEP_BATCH:
                metrics().outbox_pending.set(0)
                return sent

    async def _sweep_forever(self) -> None:
        backoff = self._sweep_interval_s
        while True:
            await asyncio.sleep(backoff)
            try:
                swept = await self.sweep_once()
                if swept:
                    logger.info("published %d event(s) left unpublished", swept)
                backoff = self._sweep_interval_s
            except Exception as exc:  # the sweep must outlive any outage
                logger.warning("event sweep failed (%s); will retry", type(exc).__name__)
                backoff = min(max(backoff * 2, 0.1), 5.0)
