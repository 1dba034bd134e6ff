"""Event bus: in-process by default, Redis pub/sub across processes.

Either way subscribers attach to the local :class:`Hub`. With Redis, each process holds
one connection that pattern-subscribes to the per-workspace channels (and the control
channel) once at start-up, so a new subscriber never races its own SUBSCRIBE. When that
connection drops and comes back, every local subscriber is told to re-read the event
log, since pub/sub keeps nothing for a listener that was away.

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

    def __repr__(self) -> str:
        return "RedisBus()"

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_forever(), name="blueline-bus-reader")
        # Wait briefly for the first PSUBSCRIBE so events right after start-up arrive;
        # if Redis is down the reader keeps trying and readiness reports it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), timeout=5)

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
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

    def _dispatch(self, message: dict[str, Any]) -> None:
        data = message.get("data")
        try:
            if message.get("type") == "pmessage":
                self.hub.deliver(LiveEvent.from_message(data))  # type: ignore[arg-type]
            elif message.get("type") == "message":
                control = json.loads(data)  # type: ignore[arg-type]
                if isinstance(control, dict):
                    for handler in self._control:
                        handler(control)
        except (ValueError, KeyError, TypeError):
            logger.warning("dropped a malformed bus message")

    async def _read_forever(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(CHANNEL_PREFIX + "*")
                await pubsub.subscribe(CONTROL_CHANNEL)
                self._listening.set()
                # Messages published before this subscription (a reconnect, or Redis
                # coming up after our subscribers did) are gone: catch up from the log.
                self.hub.broadcast(Signal.RESYNC)
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
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max_s)


def create_bus(redis_url: str | None, max_queue: int, *, detached: bool = False) -> EventBus:
    hub = Hub(max_queue)
    return RedisBus(redis_url, hub) if redis_url else MemoryBus(hub, detached=detached)
