"""The outbox: an event its committer handed over is published in order, leaves it and
is not sent again; an event nobody published (another process without a bus, a crash,
a hand-over past its bound) is swept exactly once."""

from __future__ import annotations

import httpx
import pytest

from blueline.events import publisher
from blueline.persistence.eventlog import LiveEvent
from blueline.runtime import Runtime
from blueline.settings import Settings
from tests.conftest import make_settings
from tests.integration.test_secrets_at_rest import create_setups
from tests.integration.test_subscription_backpressure import burst_of_events
from tests.support.waiting import eventually


@pytest.fixture
def settings(database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient) -> Settings:
    # The periodic sweep waits an hour, so only the sweeps the tests run send anything.
    return make_settings(database_url, sandbox_url, publish_grace_s=3600)


async def waiting(runtime: Runtime) -> int:
    async with runtime.db.read() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM event_outbox", ()))


async def events(runtime: Runtime) -> int:
    async with runtime.db.read() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM event", ()))


async def test_published_events_leave_the_outbox_and_are_not_swept(runtime: Runtime) -> None:
    await runtime.publisher.start()
    await create_setups(runtime, 2)
    assert await events(runtime) >= 2

    await eventually(lambda: waiting(runtime), lambda n: n == 0)
    assert await runtime.publisher.sweep_once(grace_s=0) == 0


async def test_events_nobody_published_are_swept_once(runtime: Runtime, database_url: str) -> None:
    await runtime.publisher.start()
    [setup_id] = await create_setups(runtime, 1)
    await eventually(lambda: waiting(runtime), lambda n: n == 0)

    await burst_of_events(database_url, setup_id, 3)
    assert await waiting(runtime) == 3

    assert await runtime.publisher.sweep_once(grace_s=0) == 3
    assert await waiting(runtime) == 0
    assert await runtime.publisher.sweep_once(grace_s=0) == 0
    # The sweep takes what was published off the outbox; the log keeps every event.
    assert await events(runtime) >= 4


async def handed_over(runtime: Runtime, events: list[LiveEvent], *batches: slice) -> list[int]:
    """Hand ``events`` to the publisher in ``batches``; the seqs a subscriber then sees."""
    mine = {event.row_id for event in events}
    seen: list[int] = []
    async with runtime.bus.hub.subscribe(events[0].workspace_id) as subscriber:
        for batch in batches:
            runtime.publisher.publish_soon(events[batch])
        while len(seen) < len(events):
            item = await subscriber.get(1.0)
            if item is None:
                break
            if isinstance(item, LiveEvent) and item.row_id in mine:
                seen.append(item.seq)
    return seen


async def test_events_handed_over_go_out_in_the_order_handed(
    runtime: Runtime, database_url: str
) -> None:
    await runtime.bus.start()
    await runtime.publisher.start()
    [setup_id] = await create_setups(runtime, 1)
    events = await burst_of_events(database_url, setup_id, 6)

    seen = await handed_over(runtime, events, slice(0, 1), slice(1, 4), slice(4, None))

    assert seen == [event.seq for event in events]
    # Marked as published, so no sweep sends them again.
    await eventually(lambda: waiting(runtime), lambda n: n == 0)
    assert await runtime.publisher.sweep_once(grace_s=0) == 0


async def test_events_past_the_handover_bound_are_left_to_the_sweep(
    runtime: Runtime, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await runtime.bus.start()
    await runtime.publisher.start()
    [setup_id] = await create_setups(runtime, 1)
    await eventually(lambda: waiting(runtime), lambda n: n == 0)
    events = await burst_of_events(database_url, setup_id, 5)
    monkeypatch.setattr(publisher, "MAX_QUEUED", 2)

    # The second hand-over finds the queue full: its events are not lost but wait.
    seen = await handed_over(runtime, events, slice(0, 2), slice(2, None))

    assert seen == [event.seq for event in events[:2]]
    await eventually(lambda: waiting(runtime), lambda n: n == 3)
    assert await runtime.publisher.sweep_once(grace_s=0) == 3
    assert await waiting(runtime) == 0
