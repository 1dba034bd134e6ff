"""A subscriber that cannot keep up is closed with a clear code instead of growing memory;
an idle one is kept alive with pings."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from blueline.domain import ACTOR_CLI, Origin, SetupChange
from blueline.events.stream import CLOSE_SLOW_CONSUMER
from blueline.persistence.database import Database
from blueline.persistence.eventlog import LiveEvent
from blueline.persistence.journal import Change, Journal
from blueline.persistence.setups import SetupStore
from blueline.persistence.types import utcnow
from blueline.security.chain import Sealer
from blueline.security.vault import Keyring, Vault
from blueline.settings import Settings
from tests.conftest import Api, keyring_spec, make_settings
from tests.integration.test_graphql_setups import create
from tests.integration.test_subscriptions import UPDATES
from tests.support.ws import graphql_ws


@pytest.fixture
def settings(database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient) -> Settings:
    return make_settings(
        database_url,
        sandbox_url,
        subscriber_queue_size=3,
        ws_keep_alive_interval_s=0.2,
        # The burst below is committed by another process's journal: the sweep sends it.
        publish_grace_s=0.1,
        relay_poll_interval_s=0.1,
    )


async def burst_of_events(database_url: str, setup_id: str, count: int) -> list[LiveEvent]:
    """Commit many line events at once, as a busy workspace would; nobody publishes
    them (the events are returned)."""
    db = Database(database_url)
    journal = Journal(db.dialect, Sealer(Vault(Keyring.parse(keyring_spec()))))
    store = SetupStore(db.dialect)
    try:
        async with db.write() as conn:
            setup = await store.get(conn, setup_id)
            assert setup is not None
            [line] = await store.lines_of(conn, setup_id)
            change = Change(SetupChange.LINE_ADDED, setup_id, line.id)
            return await journal.append(
                conn, setup.workspace_id, Origin(ACTOR_CLI), [change] * count, [], utcnow()
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
            await burst_of_events(settings.database_url.get_secret_value(), setup_id, 50)
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
