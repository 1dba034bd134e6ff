"""A placement whose webhook never arrives still goes live: the API process asks the
provider about pending lines on its own."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from blueline.settings import Settings
from tests.conftest import Api, configure_sandbox, make_settings
from tests.integration.test_graphql_setups import DETAIL, create


@pytest.fixture
def settings(database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient) -> Settings:
    return make_settings(database_url, sandbox_url, reconcile_interval_s=0.2, reconcile_min_age_s=0)


async def test_line_goes_live_when_every_webhook_is_dropped(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    await configure_sandbox(sandbox, deliver_webhooks=False)
    setup = (await create(api))["setup"]
    request_id = setup["phoneLines"][0]["requestId"]
    placed = await sandbox.post(f"/sandbox/line-requests/{request_id}/assign", json={})
    assert placed.status_code == 200

    for _ in range(100):
        detail = (await api.data(DETAIL, {"id": setup["id"]}))["imessageSetup"]
        if detail["status"] == "ACTIVE":
            break
        await asyncio.sleep(0.05)
    assert detail["status"] == "ACTIVE"
    assert detail["phoneLines"][0]["phoneNumber"] == placed.json()["phone_number"]

    accounts = await sandbox.get("/sandbox/subaccounts", params={"external_id": setup["id"]})
    assert accounts.json()["data"][0]["deliveries"] == []
