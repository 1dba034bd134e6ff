"""Lifecycle changes interrupted by a crash, with real processes: ``blueline serve`` is
killed with SIGKILL after the provider (``blueline sandbox-provider``) took a change but
before its answer came back; the restarted API finishes the change by recovery."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Deployment, configure_sandbox
from tests.support.lifecycle import (
    SETUP_UPDATES,
    audit_records,
    create_setup,
    current,
    eventually,
    live,
    mutate,
    updates_of,
    upstream,
    upstream_lines,
)
from tests.support.ws import graphql_ws

pytestmark = pytest.mark.e2e


async def crash_after_the_provider_took_it(
    deployment: Deployment,
    sandbox: httpx.AsyncClient,
    setup_id: str,
    send: Callable[[], Coroutine[Any, Any, Any]],
    took_effect: Callable[[dict[str, Any]], bool],
) -> None:
    """Send a change whose provider answer is held back, SIGKILL the API once the
    provider shows the change, and start the API again with recovery of anything."""
    await configure_sandbox(sandbox, latency_ms=3000)
    pending = asyncio.create_task(send())
    await eventually(lambda: upstream(sandbox, setup_id), took_effect, timeout_s=5)
    deployment.process.kill_hard()
    with pytest.raises(httpx.TransportError):
        await pending
    await configure_sandbox(sandbox)
    deployment.restart(BLUELINE_RECONCILE_MIN_AGE_S="0")


async def replayed_after(api: Any, setup_id: str, after: str, count: int) -> list[dict[str, Any]]:
    async with graphql_ws(api.base_url, api.key) as ws:
        op = await ws.subscribe(SETUP_UPDATES, {"setupId": setup_id, "after": after})
        found = await updates_of(ws, op, setup_id, count)
        await ws.expect_silence(0.3)
    return found


async def test_release_and_close_interrupted_by_a_crash_are_finished_by_recovery(
    deployment: Deployment, sandbox: httpx.AsyncClient
) -> None:
    api = deployment.api
    setup = await create_setup(api)
    setup_id = setup["id"]
    [first] = setup["phoneLines"]
    second = (await mutate(api, "request_line", setupId=setup_id))["phoneLine"]
    first_request, second_request = first["requestId"], second["requestId"]

    async with graphql_ws(api.base_url, api.key) as ws:
        op = await ws.subscribe(SETUP_UPDATES, {"setupId": setup_id})
        last_seen = await live(api, ws, op, setup_id)

    # A release: the number is given back upstream, then the API dies.
    await crash_after_the_provider_took_it(
        deployment,
        sandbox,
        setup_id,
        lambda: mutate(api, "release", request_id="req_release_crashed", phoneLineId=first["id"]),
        lambda account: upstream_lines(account)[first_request] == "released",
    )
    recovered = await eventually(
        lambda: current(api, setup_id), lambda d: d["allLines"][0]["status"] == "RELEASED"
    )
    assert [(line["id"], line["status"]) for line in recovered["allLines"]] == [
        (first["id"], "RELEASED"),
        (second["id"], "PENDING"),
    ]
    [released] = await replayed_after(api, setup_id, last_seen, 1)
    assert released["change"] == "LINE_RELEASED"
    assert released["setup"]["phoneLines"][0]["status"] == "RELEASED"
    newest = (await audit_records(api, setup_id))[0]
    assert (newest["action"], newest["actor"], newest["phoneLineId"], newest["requestId"]) == (
        "line.released",
        "system:recovery",
        first["id"],
        "req_release_crashed",
    )
    assert upstream_lines(await upstream(sandbox, setup_id)) == {
        first_request: "released",
        second_request: "pending",
    }

    # A close: the subaccount is closed upstream, then the API dies.
    await crash_after_the_provider_took_it(
        deployment,
        sandbox,
        setup_id,
        lambda: mutate(api, "close", request_id="req_close_crashed", setupId=setup_id),
        lambda account: account["status"] == "closed",
    )
    closed = await eventually(lambda: current(api, setup_id), lambda d: d["status"] == "CLOSED")
    assert closed["closedAt"] is not None
    assert {line["status"] for line in closed["allLines"]} == {"RELEASED"}
    changes = await replayed_after(api, setup_id, released["eventId"], 2)
    assert [u["change"] for u in changes] == ["LINE_RELEASED", "CLOSED"]
    assert changes[-1]["setup"]["status"] == "CLOSED"
    records = await audit_records(api, setup_id)
    assert [(r["action"], r["actor"], r["phoneLineId"], r["requestId"]) for r in records[:3]] == [
        ("setup.closed", "system:recovery", None, "req_close_crashed"),
        ("line.released", "system:recovery", second["id"], "req_close_crashed"),
        ("line.released", "system:recovery", first["id"], "req_release_crashed"),
    ]
    account = await upstream(sandbox, setup_id)
    assert account["status"] == "closed"
    assert set(upstream_lines(account).values()) == {"released"}

    # Finished once: a further pass changes nothing.
    reconcile = deployment.cli("reconcile", "--min-age", "0")
    assert reconcile.returncode == 0, reconcile.describe()
    assert "operations finished: 0" in reconcile.stdout(), reconcile.describe()
    assert await audit_records(api, setup_id) == records
    assert await current(api, setup_id) == closed
