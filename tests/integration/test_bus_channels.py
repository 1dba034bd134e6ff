"""The Redis bus listens to the workspaces its process has subscribers for, and to
nothing else; a workspace it starts hearing sends its subscribers back to the log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from blueline.events.bus import CHANNEL_PREFIX, RedisBus
from blueline.events.hub import Hub, Signal, Subscriber
from blueline.persistence.eventlog import LiveEvent
from tests.support.events import live_event
from tests.support.redis_server import PrivateRedis


@pytest.fixture
async def observer(private_redis: PrivateRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(private_redis.url)
    yield client
    await client.aclose()


@pytest.fixture
async def listening(private_redis: PrivateRedis) -> AsyncIterator[RedisBus]:
    bus = RedisBus(private_redis.url, Hub(), reconnect_max_s=0.2)
    await bus.start()
    yield bus
    await bus.stop()


@pytest.fixture
async def publishing(private_redis: PrivateRedis) -> AsyncIterator[RedisBus]:
    bus = RedisBus(private_redis.url, Hub())
    await bus.start()
    yield bus
    await bus.stop()


async def listeners(observer: aioredis.Redis, workspace_id: str) -> int:
    [(_channel, count)] = await observer.pubsub_numsub(CHANNEL_PREFIX + workspace_id)
    return int(count)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(200):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


async def next_event(subscriber: Subscriber) -> LiveEvent:
    """The next event, past the resync signals a (re)subscription sends."""
    while True:
        item = await subscriber.get(2.0)
        assert item is not None, "nothing arrived"
        if isinstance(item, LiveEvent):
            return item
        assert item is Signal.RESYNC


async def test_only_workspaces_with_subscribers_are_heard(
    listening: RedisBus, publishing: RedisBus, observer: aioredis.Redis
) -> None:
    assert await observer.pubsub_numpat() == 0  # no pattern over every workspace
    assert await listeners(observer, "ws_a") == 0
    async with listening.hub.subscribe("ws_a") as subscriber:
        # The first thing it gets is the resync, and only once Redis counts the channel.
        assert await subscriber.get(2.0) is Signal.RESYNC
        assert await listeners(observer, "ws_a") == 1
        assert await listeners(observer, "ws_b") == 0
        await publishing.publish_many([live_event(1, "ws_b"), live_event(7, "ws_a")])
        assert (await next_event(subscriber)).seq == 7
    await eventually(lambda: unheard(observer, "ws_a"), "the channel left with its last subscriber")


async def unheard(observer: aioredis.Redis, workspace_id: str) -> bool:
    return await listeners(observer, workspace_id) == 0


async def test_a_workspace_left_and_joined_again_at_once_stays_heard(
    listening: RedisBus, publishing: RedisBus, observer: aioredis.Redis
) -> None:
    async with listening.hub.subscribe("ws_a") as first:
        assert await first.get(2.0) is Signal.RESYNC
    # The last subscriber left and a new one came before the UNSUBSCRIBE went out.
    async with listening.hub.subscribe("ws_a") as second:
        await asyncio.sleep(0.3)  # whatever the bus sends, it has sent
        assert await listeners(observer, "ws_a") == 1
        await publishing.publish_many([live_event(3, "ws_a")])
        assert (await next_event(second)).seq == 3


async def test_a_reconnect_hears_every_workspace_again_and_resyncs_it(
    listening: RedisBus,
    observer: aioredis.Redis,
    private_redis: PrivateRedis,
) -> None:
    async with (
        listening.hub.subscribe("ws_a") as a,
        listening.hub.subscribe("ws_b") as b,
    ):
        for subscriber in (a, b):
            assert await subscriber.get(2.0) is Signal.RESYNC
        private_redis.stop()
        # A workspace whose first subscriber comes while the bus is away.
        async with listening.hub.subscribe("ws_c") as c:
            private_redis.start()
            fresh = aioredis.Redis.from_url(private_redis.url)
            try:
                for subscriber in (a, b, c):
                    # Whatever was published while the bus was away is in the log.
                    assert await subscriber.get(10.0) is Signal.RESYNC
                for ws in ("ws_a", "ws_b", "ws_c"):
                    assert await listeners(fresh, ws) == 1
                await fresh.publish(CHANNEL_PREFIX + "ws_b", live_event(9, "ws_b").to_message())
                await fresh.publish(CHANNEL_PREFIX + "ws_c", live_event(4, "ws_c").to_message())
                assert (await next_event(b)).seq == 9
                assert (await next_event(c)).seq == 4
            finally:
                await fresh.aclose()
