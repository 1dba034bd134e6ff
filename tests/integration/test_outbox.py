"""The outbox: an event its committer published leaves it and is not sent again; an
event nobody published (another process without a bus, a crash) is swept exactly once."""

from __future__ import annotations

import httpx
import pytest

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
