"""Local fan-out: a slow subscriber never makes delivery fail for the others."""

from __future__ import annotations

from blueline.events.hub import Hub, Signal
from tests.support.events import live_event as event


async def test_a_full_queue_ends_in_overflow_even_when_a_signal_took_the_last_slot() -> None:
    hub = Hub(max_queue=3)
    async with hub.subscribe("ws_a") as slow, hub.subscribe("ws_a") as fast:
        for seq in (1, 2):
            hub.deliver(event(seq))
            assert await fast.get() == event(seq)
        hub.broadcast(Signal.RESYNC)  # takes the slow queue's last slot
        assert await fast.get() is Signal.RESYNC
        hub.deliver(event(3))  # must not raise
        assert await fast.get() == event(3)
        hub.broadcast(Signal.CLOSED)
        assert await fast.get() is Signal.CLOSED
        assert slow.overflowed
        assert await slow.get() is Signal.OVERFLOW
        assert not fast.overflowed


async def test_subscribers_only_get_their_own_workspace() -> None:
    hub = Hub(max_queue=10)
    async with hub.subscribe("ws_b") as other, hub.subscribe("ws_a") as mine:
        hub.deliver(event(1))
        assert await mine.get() == event(1)
        assert await other.get(wait_s=0.01) is None
    assert hub.subscriber_count == 0
