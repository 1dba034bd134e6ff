"""Local fan-out: one bounded queue per subscriber, grouped by workspace.

Delivery never blocks the publisher: a subscriber whose queue is full is marked
overflowed and ends; it resumes with ``after`` from the event log.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import Enum

from blueline.persistence.eventlog import LiveEvent


class Signal(Enum):
    # The bus may have missed messages (it reconnected): re-read the event log.
    RESYNC = "resync"
    # The subscriber fell too far behind and must resubscribe.
    OVERFLOW = "overflow"
    # The process is shutting down.
    CLOSED = "closed"


Item = LiveEvent | Signal
# Told a workspace's id when it gets its first local subscriber or loses its last.
WatchListener = Callable[[str], None]


class Subscriber:
    """A bounded queue with one waiter; lighter than ``asyncio.Queue`` (thousands of
    idle subscribers each hold one)."""

    __slots__ = ("_items", "_max", "_waiter", "overflowed", "workspace_id")

    def __init__(self, workspace_id: str, max_queue: int) -> None:
        self.workspace_id = workspace_id
        self._items: deque[Item] = deque()
        self._max = max_queue
        self._waiter: asyncio.Future[None] | None = None
        self.overflowed = False

    def offer(self, item: Item) -> None:
        """Never raises: the publisher must not fail because one subscriber is slow."""
        if self.overflowed:
            return
        if len(self._items) >= self._max:
            # Full: whatever was queued is moot, the subscriber must resume from the log.
            self.overflowed = True
            self._items.clear()
            self._items.append(Signal.OVERFLOW)
        else:
            self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, wait_s: float | None = None) -> Item | None:
        """The next item, or None when ``wait_s`` passed first."""
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                if wait_s is None:
                    await waiter
                else:
                    try:
                        await asyncio.wait_for(waiter, wait_s)
                    except TimeoutError:
                        return None
            finally:
                self._waiter = None
        return self._items.popleft()


class Hub:
    def __init__(self, max_queue: int = 1000) -> None:
        self._by_workspace: dict[str, set[Subscriber]] = {}
        self._max_queue = max_queue
        self._listeners: list[WatchListener] = []

    def watch(self, listener: WatchListener) -> None:
        self._listeners.append(listener)

    @property
    def workspaces(self) -> list[str]:
        """The workspaces that have local subscribers."""
        return list(self._by_workspace)

    def has(self, workspace_id: str) -> bool:
        return workspace_id in self._by_workspace

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._by_workspace.values())

    def deliver(self, event: LiveEvent) -> None:
        for subscriber in tuple(self._by_workspace.get(event.workspace_id, ())):
            subscriber.offer(event)

    def broadcast(self, signal: Signal) -> None:
        for subscribers in tuple(self._by_workspace.values()):
            for subscriber in tuple(subscribers):
                subscriber.offer(signal)

    def signal(self, workspace_id: str, signal: Signal) -> None:
        for subscriber in tuple(self._by_workspace.get(workspace_id, ())):
            subscriber.offer(signal)

    @asynccontextmanager
    async def subscribe(self, workspace_id: str) -> AsyncIterator[Subscriber]:
        subscriber = Subscriber(workspace_id, self._max_queue)
        group = self._by_workspace.get(workspace_id)
        if group is None:
            group = self._by_workspace[workspace_id] = set()
            self._tell(workspace_id)
        group.add(subscriber)
        try:
            yield subscriber
        finally:
            group = self._by_workspace.get(workspace_id)
            if group is not None:
                group.discard(subscriber)
                if not group:
                    del self._by_workspace[workspace_id]
                    self._tell(workspace_id)

    def _tell(self, workspace_id: str) -> None:
        for listener in self._listeners:
            listener(workspace_id)
