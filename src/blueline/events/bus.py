"""Event bus: in-process by default, Redis pub/sub across processes.

Either way subscribers attach to the local :class:`Hub`. With Redis, each process holds
one connection subscribed to the control channel and to the channel of each workspace
it has subscribers for, so a process hears only the events someone of its own waits
for (a pattern over every workspace would hand each process every event of all of
them, its own publishes included). A workspace's first local subscriber subscribes its
channel; Redis's confirmation tells that workspace's subscribers to re-read the event
log, since anything published before it went past this process. The same holds when
the connection drops and comes back: every channel is subscribed again, and each
confirmation sends its workspace back to the log.

The control channel carries operator actions every process must apply at once (an API
key revoked); each message is also findable in the database, which processes poll, so a
lost control message only delays its effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from blueline.events.hub import Hub, Signal
from blueline.persistence.eventlog import LiveEvent

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "blueline:events:"
CONTROL_CHANNEL = "blueline:control"
# A publish or a ping waits at most this long. Committers publish before they answer,
# so a Redis that hangs (rather than refusing) would otherwise hold every write request
# for the client's socket timeout, past a provider's patience with a webhook; what a
# timed-out publish leaves unmarked, the sweep sends once Redis answers again.
REDIS_TIMEOUT_S = 1.0

ControlHandler = Callable[[dict[str, Any]], None]


class EventBus(Protocol):
    hub: Hub
    detached: bool

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish_many(self, events: Sequence[LiveEvent]) -> None: ...

    async def publish_control(self, message: dict[str, Any]) -> None: ...

    def on_control(self, handler: ControlHandler) -> None: ...

    async def ping(self) -> None: ...


class MemoryBus:
    """Single process: publishing is delivering.

    ``detached`` is for a one-shot command in a process of its own without Redis: no
    subscriber listens here, so it publishes nothing and leaves its events to the API
    process's sweep (marking them published here would hide them from it)."""

    def __init__(self, hub: Hub, *, detached: bool = False) -> None:
        self.hub = hub
        self.detached = detached
        self._control: list[ControlHandler] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.hub.broadcast(Signal.CLOSED)

    async def publish_many(self, events: Sequence[LiveEvent]) -> None:
        for event in events:
            self.hub.deliver(event)

    async def publish_control(self, message: dict[str, Any]) -> None:
        for handler in self._control:
            handler(message)

    def on_control(self, handler: ControlHandler) -> None:
        self._control.append(handler)

    async def ping(self) -> None:
        return None


class RedisBus:
    detached = False

    def __init__(
        self,
        url: str,
        hub: Hub,
        *,
        reconnect_max_s: float = 2.0,
        timeout_s: float = REDIS_TIMEOUT_S,
    ) -> None:
        self.hub = hub
        self._timeout_s = timeout_s
        # The listener's reads need a socket timeout; commands do not, since each one
        # runs under ``timeout_s`` here. With one, redis-py wraps every write in
        # ``wait_for``, a task and a loop iteration per command (0.6 ms of a webhook's
        # answer in a trace, most of it waiting for the loop).
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=10
        )
        self._commands: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=None, health_check_interval=10
        )
        self._reader: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._reconnect_max_s = reconnect_max_s
        self._control: list[ControlHandler] = []
        # The reader's connection, once its first SUBSCRIBE went out: from then on a
        # workspace's (un)subscription is sent as its subscribers come and go.
        self._pubsub: PubSub | None = None
        self._subscribed: set[str] = set()
        self._dirty: set[str] = set()
        self._syncer: asyncio.Task[None] | None = None
        self._syncing: PubSub | None = None
        hub.watch(self._watched)

    def __repr__(self) -> str:
        return "RedisBus()"

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_forever(), name="blueline-bus-reader")
        # Wait briefly for the first SUBSCRIBE so events right after start-up arrive;
        # if Redis is down the reader keeps trying and readiness reports it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), timeout=5)

    async def stop(self) -> None:
        for task in (self._syncer, self._reader):
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.hub.broadcast(Signal.CLOSED)
        await self._commands.aclose()
        await self._redis.aclose()

    async def publish_many(self, events: Sequence[LiveEvent]) -> None:
        # One round trip for the batch; order is kept within the pipeline. Cut short,
        # some may have gone out: sent again by the sweep, they are dropped by seq.
        async with (
            asyncio.timeout(self._timeout_s),
            self._commands.pipeline(transaction=False) as pipe,
        ):
            for event in events:
                pipe.publish(CHANNEL_PREFIX + event.workspace_id, event.to_message())
            await pipe.execute()

    async def publish_control(self, message: dict[str, Any]) -> None:
        async with asyncio.timeout(self._timeout_s):
            await self._commands.publish(CONTROL_CHANNEL, json.dumps(message))

    def on_control(self, handler: ControlHandler) -> None:
        self._control.append(handler)

    async def ping(self) -> None:
        if not self._listening.is_set():
            raise ConnectionError("the event bus is not listening")
        async with asyncio.timeout(self._timeout_s):
            await self._commands.ping()

    def _watched(self, workspace_id: str) -> None:
        self._dirty.add(workspace_id)
        self._kick()

    def _kick(self) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            return  # the reader subscribes what the hub has once it connects
        syncer = self._syncer
        # A syncer of a connection that has since been replaced stops at its next step.
        if syncer is None or syncer.done() or self._syncing is not pubsub:
            self._syncing = pubsub
            self._syncer = asyncio.get_running_loop().create_task(
                self._sync(pubsub), name="blueline-bus-subscriptions"
            )

    async def _sync(self, pubsub: PubSub) -> None:
        """Bring the connection's channels to what the hub has now, one command at a
        time, so that a workspace whose subscribers left and came back ends subscribed
        whatever order the changes were noted in."""
        while self._dirty and pubsub is self._pubsub:
            ws = self._dirty.pop()
            wanted = self.hub.has(ws)
            try:
                if wanted and ws not in self._subscribed:
                    self._subscribed.add(ws)
                    await pubsub.subscribe(CHANNEL_PREFIX + ws)
                elif not wanted and ws in self._subscribed:
                    self._subscribed.discard(ws)
                    await pubsub.unsubscribe(CHANNEL_PREFIX + ws)
            except Exception as exc:  # the reader sees the connection fail and resubscribes
                self._dirty.add(ws)
                logger.warning("event bus could not change a subscription (%s)", type(exc).__name__)
                return

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind not in ("message", "subscribe"):
            return  # unsubscribe confirmations, health-check pongs
        channel = message.get("channel")
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        try:
            if kind == "subscribe":
                if channel.startswith(CHANNEL_PREFIX):
                    # From now on this process hears the workspace: what was published
                    # before is in the log.
                    self.hub.signal(channel[len(CHANNEL_PREFIX) :], Signal.RESYNC)
            elif channel.startswith(CHANNEL_PREFIX):
                self.hub.deliver(LiveEvent.from_message(message["data"]))
            elif channel == CONTROL_CHANNEL:
                control = json.loads(message["data"])
                if isinstance(control, dict):
                    for handler in self._control:
                        handler(control)
        except (ValueError, KeyError, TypeError):
            logger.warning("dropped a malformed bus message")

    async def _read_forever(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                wanted = set(self.hub.workspaces)
                await pubsub.subscribe(
                    CONTROL_CHANNEL, *sorted(CHANNEL_PREFIX + ws for ws in wanted)
                )
                self._subscribed = wanted
                self._pubsub = pubsub
                # Workspaces whose subscribers came or went while that was on its way.
                self._dirty |= wanted.symmetric_difference(self.hub.workspaces)
                self._kick()
                self._listening.set()
                delay = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._dispatch(message)
            except asyncio.CancelledError:
                self._listening.clear()
                raise
            except Exception as exc:  # the reader must outlive anything; readiness shows it
                self._listening.clear()
                logger.warning("event bus connection lost (%s); reconnecting", type(exc).__name__)
            finally:
                self._pubsub = None
                # Stopped before the connection closes, so that it cannot open another.
                if self._syncer is not None and self._syncing is pubsub:
                    self._syncer.cancel()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max_s)


def create_bus(redis_url: str | None, max_queue: int, *, detached: bool = False) -> EventBus:
    hub = Hub(max_queue)
    return RedisBus(redis_url, hub) if redis_url else MemoryBus(hub, detached=detached)
