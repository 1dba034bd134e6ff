"""A subscriber that cannot keep up is closed with a clear code instead of growing memory;
an idle one is kept alive with pings."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from sqlalchemy import select
from sqlmodel import col
from websockets.exceptions import ConnectionClosed

from blueline.events import outbox
from blueline.events.replay import CLOSE_SLOW_CONSUMER
from blueline.persistence.database import Database
from blueline.persistence.models import IMessageSetup, PhoneLine
from blueline.settings import Settings
from tests.conftest import Api, make_settings
from tests.integration.test_graphql_setups import create
from tests.integration.test_subscriptions import UPDATES
from tests.support.ws import graphql_ws


@pytest.fixture
def settings(database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient) -> Settings:
    return make_settings(
        database_url, sandbox_url, subscriber_queue_size=3, ws_keep_alive_interval_s=0.2
    )


async def burst_of_events(database_url: str, setup_id: str, count: int) -> None:
    """Commit many line events at once, as a busy workspace would."""
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            setup = (
                await session.execute(
                    select(IMessageSetup).where(col(IMessageSetup.id) == setup_id)
                )
            ).scalar_one()
            line = (
                await session.execute(select(PhoneLine).where(col(PhoneLine.setup_id) == setup_id))
            ).scalar_one()
            for _ in range(count):
                await outbox.record(
                    await session.connection(), outbox.LINE_REQUESTED, setup, line, 1
                )
    finally:
        await db.dispose()


async def test_slow_subscriber_is_closed_with_the_slow_consumer_code(
    api: Api, settings: Settings
) -> None:
    setup_id = (await create(api))["setup"]["id"]

    async def subscribe_and_fall_behind() -> None:
        async with graphql_ws(api.base_url, api.key) as ws:
            await ws.subscribe(UPDATES)
            await asyncio.sleep(0.2)
            await burst_of_events(settings.database_url, setup_id, 50)
            for _ in range(60):
                await ws.receive(timeout=5)

    with pytest.raises(ConnectionClosed) as closed:
        await subscribe_and_fall_behind()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == CLOSE_SLOW_CONSUMER
    assert "after" in closed.value.rcvd.reason


async def test_idle_sockets_get_keep_alive_pings(api: Api) -> None:
    async with graphql_ws(api.base_url, api.key) as ws:
        await ws.subscribe(UPDATES)
        message = json.loads(await asyncio.wait_for(ws.ws.recv(), timeout=5))
        assert message["type"] == "ping"
