"""Several API processes behind one database and Redis: a change committed by any of
them (or by the reconcile command) reaches subscribers on all of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from blueline.settings import SANDBOX_PARTNER_KEY
from tests.conftest import Api, keyring_spec
from tests.e2e.conftest import configure_sandbox
from tests.e2e.support import BluelineProcess, ProcessGroup, printed_api_key, serve_env
from tests.integration.test_graphql_setups import create
from tests.integration.test_subscriptions import UPDATES
from tests.support.asgi_server import free_port
from tests.support.ws import graphql_ws

pytestmark = pytest.mark.e2e

REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass
class Cluster:
    procs: ProcessGroup
    env: dict[str, str]
    first: Api
    second: Api
    cwd: Path


@pytest.fixture
async def cluster(
    procs: ProcessGroup,
    pg_url: str,
    sandbox_process: BluelineProcess,
    sandbox: httpx.AsyncClient,
    tmp_path: Path,
) -> AsyncIterator[Cluster]:
    keys = keyring_spec()
    apis = []
    env: dict[str, str] = {}
    for name in ("first", "second"):
        port = free_port()
        workdir = tmp_path / name
        workdir.mkdir()
        env = serve_env(
            database_url=pg_url,
            provider_url=sandbox_process.base_url,
            port=port,
            encryption_keys=keys,
            redis_url=REDIS_URL,
            BLUELINE_PROVIDER_API_KEY=SANDBOX_PARTNER_KEY,
        )
        apis.append(procs.serve(port=port, env=env, cwd=workdir))
    key = printed_api_key(apis[0].stdout()) or printed_api_key(apis[1].stdout())
    assert key is not None, apis[0].describe()
    first, second = Api(apis[0].base_url, key), Api(apis[1].base_url, key)
    try:
        yield Cluster(procs, env, first, second, tmp_path)
    finally:
        await first.http.aclose()
        await second.http.aclose()


def update_of(data: dict[str, Any]) -> dict[str, Any]:
    update: dict[str, Any] = data["phoneLineUpdates"]
    return update


async def test_webhook_received_by_one_process_reaches_a_subscriber_on_the_other(
    cluster: Cluster, sandbox: httpx.AsyncClient
) -> None:
    async with graphql_ws(cluster.second.base_url, cluster.second.key) as ws:
        op = await ws.subscribe(UPDATES)
        await asyncio.sleep(0.3)
        setup = (await create(cluster.first))["setup"]
        requested = update_of(await ws.next_data(op))
        assert requested["setup"]["id"] == setup["id"]
        assert requested["phoneLine"]["status"] == "PENDING"

        # The provider delivers the webhook to the process that created the setup.
        request_id = setup["phoneLines"][0]["requestId"]
        placed = await sandbox.post(f"/sandbox/line-requests/{request_id}/assign", json={})
        assert placed.status_code == 200
        live = update_of(await ws.next_data(op))
        assert live["phoneLine"]["status"] == "ASSIGNED"
        assert live["phoneLine"]["phoneNumber"] == placed.json()["phone_number"]
        assert live["setup"]["status"] == "ACTIVE"
        await ws.expect_silence(0.5)


async def test_lines_placed_by_the_reconcile_command_reach_subscribers(
    cluster: Cluster, sandbox: httpx.AsyncClient
) -> None:
    await configure_sandbox(sandbox, deliver_webhooks=False)
    setup = (await create(cluster.first))["setup"]
    request_id = setup["phoneLines"][0]["requestId"]
    assert (await sandbox.post(f"/sandbox/line-requests/{request_id}/assign", json={})).is_success
    async with graphql_ws(cluster.second.base_url, cluster.second.key) as ws:
        op = await ws.subscribe(UPDATES, {"setupId": setup["id"]})
        await asyncio.sleep(0.3)
        reconcile = cluster.procs.run(
            ["reconcile", "--min-age", "0"], env=cluster.env, cwd=cluster.cwd
        )
        assert reconcile.returncode == 0, reconcile.describe()
        live = update_of(await ws.next_data(op, timeout=15))
        assert live["phoneLine"]["status"] == "ASSIGNED"
        assert live["setup"]["id"] == setup["id"]
