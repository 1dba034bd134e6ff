"""A Redis outage delays live events; it never loses them."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from blueline.settings import Settings
from tests.conftest import Api, make_settings
from tests.integration.test_graphql_setups import create
from tests.integration.test_subscriptions import UPDATES
from tests.support.redis_server import PrivateRedis
from tests.support.ws import graphql_ws


@pytest.fixture
def settings(
    database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient, private_redis: PrivateRedis
) -> Settings:
    return make_settings(database_url, sandbox_url, redis_url=private_redis.url)


async def test_events_committed_during_a_redis_outage_arrive_once_it_is_back(
    api: Api, private_redis: PrivateRedis
) -> None:
    async with graphql_ws(api.base_url, api.key) as ws:
        op = await ws.subscribe(UPDATES)
        await asyncio.sleep(0.2)
        before = (await create(api, "Before"))["setup"]
        first = (await ws.next_data(op))["phoneLineUpdates"]
        assert first["setup"]["id"] == before["id"]

        private_redis.stop()
        during = [(await create(api, f"During {i}"))["setup"]["id"] for i in range(3)]
        await asyncio.sleep(0.5)
        private_redis.start()

        received = [(await ws.next_data(op, timeout=20))["phoneLineUpdates"] for _ in range(3)]
        assert [u["setup"]["id"] for u in received] == during
        event_ids = [first["eventId"]] + [u["eventId"] for u in received]
        assert event_ids == sorted(set(event_ids))

        after = (await create(api, "After"))["setup"]
        live = (await ws.next_data(op))["phoneLineUpdates"]
        assert live["setup"]["id"] == after["id"]
        await ws.expect_silence(0.5)


async def test_readiness_reports_the_bus_outage(api: Api, private_redis: PrivateRedis) -> None:
    assert (await api.http.get("/readyz")).status_code == 200
    private_redis.stop()
    for _ in range(50):
        response = await api.http.get("/readyz")
        if response.status_code == 503:
            break
        await asyncio.sleep(0.1)
    assert response.status_code == 503
    assert response.json()["database"] == "ok"
    private_redis.start()
    for _ in range(100):
        if (await api.http.get("/readyz")).status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert (await api.http.get("/readyz")).status_code == 200
