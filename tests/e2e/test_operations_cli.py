"""Operating a running deployment: key management from the CLI, and shutdown."""

from __future__ import annotations

import asyncio
import signal

import pytest
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import Deployment
from tests.e2e.support import run_cli
from tests.integration.test_subscriptions import UPDATES
from tests.support.ws import graphql_ws

pytestmark = pytest.mark.e2e

LIST = "{ imessageSetups { totalCount } }"


async def test_keys_are_listed_without_their_secret_and_revoked_from_the_cli(
    deployment: Deployment,
) -> None:
    api = deployment.api
    assert "errors" not in await api.graphql(LIST)

    listing = run_cli(["api-keys", "list"], deployment.env, deployment.cwd)
    assert listing.returncode == 0, listing.stderr
    assert api.key not in listing.stdout
    [row] = [line for line in listing.stdout.splitlines() if line.startswith("key_")]
    key_id, workspace = row.split()[:2]
    assert workspace == "default"
    assert api.key.startswith(row.split()[2].rstrip("…"))

    revoked = run_cli(["api-keys", "revoke", key_id], deployment.env, deployment.cwd)
    assert revoked.returncode == 0, revoked.stderr
    # Without Redis the server learns of it from its poll of the database
    # (REVOCATION_POLL_INTERVAL_S, 0.5 s): refused within about a second.
    deadline = asyncio.get_running_loop().time() + 2
    while True:
        response = await api.http.post(
            "/graphql", json={"query": LIST}, headers={"Authorization": f"Bearer {api.key}"}
        )
        if response.status_code != 200 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert response.status_code == 401

    again = run_cli(["api-keys", "revoke", key_id], deployment.env, deployment.cwd)
    assert again.returncode != 0
    assert "no active API key" in again.stderr


async def test_sigterm_closes_subscriptions_with_the_restart_code(
    deployment: Deployment,
) -> None:
    api = deployment.api

    async def subscribe_until_closed() -> None:
        async with graphql_ws(api.base_url, api.key) as ws:
            await ws.subscribe(UPDATES)
            await asyncio.sleep(0.3)
            deployment.process.popen.send_signal(signal.SIGTERM)
            await ws.receive(timeout=15)

    with pytest.raises(ConnectionClosed) as closed:
        await subscribe_until_closed()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1012
    assert deployment.process.stop() in (0, -signal.SIGTERM)
    assert not deployment.process.killed
