"""Recovery and reconciliation: setups a crash left half-created, failed setups that left
a subaccount upstream, a provider that is down, and line placements whose webhook was
lost; in-process and through `blueline reconcile`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlmodel import col

from blueline.access import create_api_key
from blueline.domain import Origin
from blueline.errors import ProviderUnavailable
from blueline.persistence import queries
from blueline.persistence.models import (
    Event,
    IMessageSetup,
    LineStatus,
    PhoneLine,
    SetupState,
    SetupStatus,
)
from blueline.persistence.setups import SetupStore
from blueline.persistence.types import utcnow
from blueline.runtime import Runtime, open_runtime
from blueline.security.vault import credentials_aad, webhook_secret_aad
from blueline.settings import SANDBOX_PARTNER_KEY, Settings
from tests.conftest import Api, configure_sandbox, make_settings
from tests.support.auth import authenticate

BLUELINE = Path(sys.executable).with_name("blueline")
ORIGIN = Origin("api_key:key_test")
PARTNER = {"Authorization": f"Bearer {SANDBOX_PARTNER_KEY}"}

DETAIL = """
query($id: ID!) {
  imessageSetup(id: $id) { id status phoneLines { id status phoneNumber requestId } }
}"""


# -- helpers


async def workspace(runtime: Runtime, name: str = "clinic-a") -> str:
    caller = await authenticate(runtime.db, f"Bearer {await create_api_key(runtime.db, name)}")
    assert caller is not None
    return caller.workspace_id


async def crashed_before_provider_call(
    runtime: Runtime, workspace_id: str, name: str = "Acme Dental", key: str | None = None
) -> str:
    """The first write of a create, as a process that died right after it leaves it."""
    setup_id, state = await runtime.provisioning._claim(workspace_id, name, "Front desk", key)
    assert state == SetupState.PROVISIONING
    return setup_id


async def create_upstream(
    sandbox: httpx.AsyncClient, runtime: Runtime, setup_id: str, name: str = "Acme Dental"
) -> dict[str, Any]:
    """The provider call of a create, made directly: the crash came before the second write."""
    response = await sandbox.post(
        "/v1/subaccounts",
        headers=PARTNER,
        json={
            "business_name": name,
            "external_id": setup_id,
            "webhook_url": runtime.provisioning.webhook_url(setup_id),
        },
    )
    assert response.status_code == 201, response.text
    account: dict[str, Any] = response.json()
    return account


async def upstream_for(sandbox: httpx.AsyncClient, setup_id: str) -> list[dict[str, Any]]:
    """Every subaccount the provider holds for this setup (scanning all of them)."""
    response = await sandbox.get("/sandbox/subaccounts")
    response.raise_for_status()
    return [a for a in response.json()["data"] if a["external_id"] == setup_id]


async def row(runtime: Runtime, setup_id: str) -> IMessageSetup:
    async with runtime.db.session() as session:
        found = await session.get(IMessageSetup, setup_id)
    assert found is not None
    return found


async def lines_of(runtime: Runtime, setup_id: str) -> list[PhoneLine]:
    async with runtime.db.session() as session:
        query = (
            select(PhoneLine).where(col(PhoneLine.setup_id) == setup_id).order_by(col(PhoneLine.id))
        )
        return list((await session.execute(query)).scalars())


async def events_of(runtime: Runtime, setup_id: str, event_type: str) -> int:
    async with runtime.db.session() as session:
        query = (
            select(func.count())
            .select_from(Event)
            .where(col(Event.setup_id) == setup_id)
            .where(col(Event.type) == event_type)
        )
        return int((await session.execute(query)).scalar_one())


async def visible(runtime: Runtime, workspace_id: str, setup_id: str) -> bool:
    async with runtime.db.read() as conn:
        return (
            await SetupStore(runtime.db.dialect).visible(conn, workspace_id, setup_id) is not None
        )


async def assert_completed_from(
    runtime: Runtime, workspace_id: str, setup_id: str, account: dict[str, Any]
) -> None:
    setup = await row(runtime, setup_id)
    assert setup.state == SetupState.READY
    assert setup.subaccount_id == account["id"]
    assert await visible(runtime, workspace_id, setup_id)
    assert setup.credentials_enc is not None
    assert setup.webhook_secret_enc is not None
    credentials = runtime.vault.decrypt(setup.credentials_enc, aad=credentials_aad(setup_id))
    assert credentials == (
        f"{account['credentials']['api_key']}\n{account['credentials']['api_secret']}"
    )
    secret = runtime.vault.decrypt(setup.webhook_secret_enc, aad=webhook_secret_aad(setup_id))
    assert secret == account["webhook_secret"]
    [line] = await lines_of(runtime, setup_id)
    assert line.status == LineStatus.PENDING
    assert line.request_id == account["lines"][0]["request_id"]
    assert await events_of(runtime, setup_id, "LINE_ADDED") == 1


# -- setups left in provisioning


async def test_setup_interrupted_after_the_provider_call_is_completed_from_its_subaccount(
    runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    workspace_id = await workspace(runtime)
    setup_id = await crashed_before_provider_call(runtime, workspace_id)
    account = await create_upstream(sandbox, runtime, setup_id)
    assert not await visible(runtime, workspace_id, setup_id)

    report = await runtime.reconcile(0)

    assert (report.completed, report.failed, report.deferred) == (1, 0, 0)
    await assert_completed_from(runtime, workspace_id, setup_id, account)
    [only] = await upstream_for(sandbox, setup_id)
    assert only["id"] == account["id"]
    assert len(only["lines"]) == 1


async def test_setup_interrupted_before_the_provider_call_is_completed_by_creating_it(
    runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    workspace_id = await workspace(runtime)
    setup_id = await crashed_before_provider_call(runtime, workspace_id, name="Bright Smiles")
    assert await upstream_for(sandbox, setup_id) == []

    report = await runtime.reconcile(0)

    assert (report.completed, report.failed, report.deferred) == (1, 0, 0)
    [account] = await upstream_for(sandbox, setup_id)
    assert account["business_name"] == "Bright Smiles"
    assert account["webhook_url"] == runtime.provisioning.webhook_url(setup_id)
    assert account["status"] == "active"
    await assert_completed_from(runtime, workspace_id, setup_id, account)


async def test_second_reconcile_after_recovery_changes_nothing(
    runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    workspace_id = await workspace(runtime)
    setup_id = await crashed_before_provider_call(runtime, workspace_id)
    await runtime.reconcile(0)
    before = await row(runtime, setup_id)

    report = await runtime.reconcile(0)

    assert (report.completed, report.failed, report.discarded, report.lines_assigned) == (
        0,
        0,
        0,
        0,
    )
    after = await row(runtime, setup_id)
    assert after.credentials_enc == before.credentials_enc
    assert after.updated_at == before.updated_at
    assert len(await lines_of(runtime, setup_id)) == 1
    assert len(await upstream_for(sandbox, setup_id)) == 1


async def test_retry_with_the_idempotency_key_returns_the_recovered_setup(
    runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    workspace_id = await workspace(runtime)
    setup_id = await crashed_before_provider_call(runtime, workspace_id, key="create-42")
    await runtime.reconcile(0)

    retried = await runtime.provisioning.create_setup(
        workspace_id, ORIGIN, "Acme Dental", "Front desk", idempotency_key="create-42"
    )

    assert retried == setup_id
    assert len(await lines_of(runtime, retried)) == 1
    assert len(await upstream_for(sandbox, setup_id)) == 1


async def test_recent_setups_are_left_to_the_create_in_progress(
    runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    workspace_id = await workspace(runtime)
    setup_id = await crashed_before_provider_call(runtime, workspace_id)

    report = await runtime.reconcile(3600)

    assert (report.completed, report.failed, report.discarded, report.deferred) == (0, 0, 0, 0)
    assert (await row(runtime, setup_id)).state == SetupState.PROVISIONING
    assert await upstream_for(sandbox, setup_id) == []


# -- failed setups


@pytest.fixture
async def impatient_runtime(
    database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient
) -> AsyncIterator[Runtime]:
    """A runtime that gives up on the provider quickly: slow answers become failures."""
    settings = make_settings(database_url, sandbox_url, provider_timeout_s=0.2, provider_attempts=2)
    async with open_runtime(settings) as rt:
        yield rt


async def test_failed_setup_whose_subaccount_was_created_anyway_gets_it_closed(
    impatient_runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    runtime = impatient_runtime
    workspace_id = await workspace(runtime)
    # Every answer comes too late: the subaccount is created upstream, the create fails.
    await configure_sandbox(sandbox, auto_assign_after_s=None, latency_ms=600)
    with pytest.raises(ProviderUnavailable):
        await runtime.provisioning.create_setup(
            workspace_id, ORIGIN, "Acme Dental", "Front desk", idempotency_key="k-1"
        )
    await configure_sandbox(sandbox, auto_assign_after_s=None)
    async with runtime.db.session() as session:
        [failed] = await queries.setups_in_state(session, SetupState.FAILED, older_than=utcnow())
    [account] = await upstream_for(sandbox, failed.id)
    assert account["status"] == "active"
    assert failed.idempotency_key is None
    assert not await visible(runtime, workspace_id, failed.id)

    report = await runtime.reconcile(0)

    assert (report.discarded, report.completed, report.deferred) == (1, 0, 0)
    [closed] = await upstream_for(sandbox, failed.id)
    assert closed["id"] == account["id"]
    assert closed["status"] == "closed"
    discarded = await row(runtime, failed.id)
    assert discarded.state == SetupState.DISCARDED
    assert not await visible(runtime, workspace_id, failed.id)
    assert await lines_of(runtime, failed.id) == []

    # The key was released: a retry starts a fresh setup with its own subaccount.
    retried = await runtime.provisioning.create_setup(
        workspace_id, ORIGIN, "Acme Dental", "Front desk", idempotency_key="k-1"
    )
    assert retried != failed.id
    [fresh] = await upstream_for(sandbox, retried)
    assert fresh["status"] == "active"


async def test_failed_setup_without_a_subaccount_is_discarded(
    runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    workspace_id = await workspace(runtime)
    await configure_sandbox(sandbox, auto_assign_after_s=None, failure_rate=1)
    with pytest.raises(ProviderUnavailable):
        await runtime.provisioning.create_setup(workspace_id, ORIGIN, "Acme Dental", "Front desk")
    await configure_sandbox(sandbox, auto_assign_after_s=None)
    async with runtime.db.session() as session:
        [failed] = await queries.setups_in_state(session, SetupState.FAILED, utcnow())
    assert failed.failure_reason == "PROVIDER_UNAVAILABLE"

    report = await runtime.reconcile(0)

    assert report.discarded == 1
    assert (await row(runtime, failed.id)).state == SetupState.DISCARDED
    assert await upstream_for(sandbox, failed.id) == []


async def test_provider_outage_defers_recovery_and_leaves_rows_untouched(
    runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    workspace_id = await workspace(runtime)
    stuck = await crashed_before_provider_call(runtime, workspace_id, name="Stuck")
    failed = await crashed_before_provider_call(runtime, workspace_id, name="Failed")
    account = await create_upstream(sandbox, runtime, failed, name="Failed")
    await runtime.provisioning._mark_failed(failed, "PROVIDER_UNAVAILABLE")
    before = {s: await row(runtime, s) for s in (stuck, failed)}

    await configure_sandbox(sandbox, auto_assign_after_s=None, failure_rate=1)
    report = await runtime.reconcile(0)

    assert report.deferred == 2
    assert (report.completed, report.failed, report.discarded) == (0, 0, 0)
    for setup_id, earlier in before.items():
        now = await row(runtime, setup_id)
        for column in IMessageSetup.model_fields:
            assert getattr(now, column) == getattr(earlier, column), column
    assert await upstream_for(sandbox, stuck) == []
    assert (await upstream_for(sandbox, failed))[0]["status"] == "active"

    await configure_sandbox(sandbox, auto_assign_after_s=None)
    report = await runtime.reconcile(0)

    assert (report.completed, report.discarded, report.deferred) == (1, 1, 0)
    assert (await row(runtime, stuck)).state == SetupState.READY
    assert (await row(runtime, failed)).state == SetupState.DISCARDED
    [closed] = await upstream_for(sandbox, failed)
    assert closed["id"] == account["id"]
    assert closed["status"] == "closed"


class FaultyProvider:
    """The sandbox over HTTP, except for the calls given a fault, which get that answer."""

    def __init__(self) -> None:
        self.faults: dict[str, int] = {}
        self._upstream = httpx.AsyncClient(timeout=10)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        status = self.faults.get(request.method)
        if status is not None and request.url.path.startswith("/v1/subaccounts"):
            return httpx.Response(status, json={"error": "injected"})
        forwarded = await self._upstream.request(
            request.method,
            request.url,
            headers={"Authorization": request.headers["Authorization"]},
            content=await request.aread(),
        )
        return httpx.Response(
            forwarded.status_code,
            headers={"content-type": forwarded.headers.get("content-type", "application/json")},
            content=forwarded.content,
        )

    async def aclose(self) -> None:
        await self._upstream.aclose()


@pytest.fixture
async def faulty() -> AsyncIterator[FaultyProvider]:
    provider = FaultyProvider()
    yield provider
    await provider.aclose()


@pytest.fixture
async def faulty_runtime(settings: Settings, faulty: FaultyProvider) -> AsyncIterator[Runtime]:
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(faulty.handle)) as http,
        open_runtime(settings, http=http) as rt,
    ):
        yield rt


async def test_setup_the_provider_refuses_to_create_is_failed_then_discarded(
    faulty_runtime: Runtime, faulty: FaultyProvider, sandbox: httpx.AsyncClient
) -> None:
    runtime = faulty_runtime
    workspace_id = await workspace(runtime)
    setup_id = await crashed_before_provider_call(runtime, workspace_id, key="create-7")
    faulty.faults["POST"] = 422

    report = await runtime.reconcile(0)

    assert (report.failed, report.completed, report.deferred) == (1, 0, 0)
    failed = await row(runtime, setup_id)
    assert failed.state == SetupState.FAILED
    assert failed.failure_reason == "PROVIDER_ERROR"
    assert failed.idempotency_key is None
    assert not await visible(runtime, workspace_id, setup_id)

    report = await runtime.reconcile(0)

    assert report.discarded == 1
    assert (await row(runtime, setup_id)).state == SetupState.DISCARDED
    assert await upstream_for(sandbox, setup_id) == []


async def test_failed_setup_stays_failed_while_the_provider_rate_limits_its_close(
    faulty_runtime: Runtime, faulty: FaultyProvider, sandbox: httpx.AsyncClient
) -> None:
    runtime = faulty_runtime
    workspace_id = await workspace(runtime)
    setup_id = await crashed_before_provider_call(runtime, workspace_id)
    await create_upstream(sandbox, runtime, setup_id)
    await runtime.provisioning._mark_failed(setup_id, "PROVIDER_UNAVAILABLE")
    faulty.faults["DELETE"] = 429

    report = await runtime.reconcile(0)

    # The subaccount is still open upstream: the row must stay FAILED for a later pass.
    [account] = await upstream_for(sandbox, setup_id)
    assert account["status"] == "active"
    assert report.discarded == 0
    assert report.deferred == 1
    assert (await row(runtime, setup_id)).state == SetupState.FAILED

    del faulty.faults["DELETE"]
    report = await runtime.reconcile(0)

    assert report.discarded == 1
    assert (await upstream_for(sandbox, setup_id))[0]["status"] == "closed"


async def test_setup_whose_line_was_placed_before_recovery_comes_back_active(
    runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    workspace_id = await workspace(runtime)
    await configure_sandbox(sandbox, auto_assign_after_s=None, deliver_webhooks=False)
    setup_id = await crashed_before_provider_call(runtime, workspace_id)
    account = await create_upstream(sandbox, runtime, setup_id)
    request_id = account["lines"][0]["request_id"]
    placed = await sandbox.post(f"/sandbox/line-requests/{request_id}/assign", json={})
    number = placed.json()["phone_number"]

    report = await runtime.reconcile(0)

    assert report.completed == 1
    setup = await row(runtime, setup_id)
    assert setup.state == SetupState.READY
    assert setup.status == SetupStatus.ACTIVE
    [line] = await lines_of(runtime, setup_id)
    assert (line.status, line.phone_number) == (LineStatus.ASSIGNED, number)
    assert line.assigned_at is not None
    assert await events_of(runtime, setup_id, "LINE_ASSIGNED") == 1
    assert await events_of(runtime, setup_id, "LINE_ADDED") == 0


# -- lines whose webhook never came


async def test_placement_whose_webhook_was_lost_is_found_by_reconciliation(
    runtime: Runtime, api: Api, sandbox: httpx.AsyncClient
) -> None:
    await configure_sandbox(sandbox, auto_assign_after_s=None, deliver_webhooks=False)
    created = await api.data(
        """mutation { createImessageSetup(input: {businessName: "Acme", label: "Desk"}) {
             setup { id phoneLines { id requestId status } } userErrors { code } } }"""
    )
    setup = created["createImessageSetup"]["setup"]
    [line] = setup["phoneLines"]
    assert line["status"] == "PENDING"

    placed = await sandbox.post(f"/sandbox/line-requests/{line['requestId']}/assign", json={})
    assert placed.status_code == 200, placed.text
    number = placed.json()["phone_number"]
    await asyncio.sleep(0.3)
    detail = (await api.data(DETAIL, {"id": setup["id"]}))["imessageSetup"]
    assert detail["phoneLines"][0]["status"] == "PENDING"
    [account] = await upstream_for(sandbox, setup["id"])
    assert account["deliveries"] == []

    report = await runtime.reconcile(0)

    assert report.lines_assigned == 1
    detail = (await api.data(DETAIL, {"id": setup["id"]}))["imessageSetup"]
    assert detail["status"] == "ACTIVE"
    [assigned] = detail["phoneLines"]
    assert assigned["id"] == line["id"]
    assert assigned["status"] == "ASSIGNED"
    assert assigned["phoneNumber"] == number
    assert await events_of(runtime, setup["id"], "LINE_ASSIGNED") == 1

    again = await runtime.reconcile(0)

    assert again.lines_assigned == 0
    assert await events_of(runtime, setup["id"], "LINE_ASSIGNED") == 1
    [stored] = await lines_of(runtime, setup["id"])
    assert stored.phone_number == number
    assert (await row(runtime, setup["id"])).status == SetupStatus.ACTIVE


async def test_lines_still_pending_upstream_stay_pending(
    runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    workspace_id = await workspace(runtime)
    created = await runtime.provisioning.create_setup(workspace_id, ORIGIN, "Acme", "Desk")

    report = await runtime.reconcile(0)

    assert report.lines_assigned == 0
    [line] = await lines_of(runtime, created)
    assert line.status == LineStatus.PENDING
    assert await events_of(runtime, created, "LINE_ASSIGNED") == 0


async def test_provider_outage_defers_line_reconciliation(
    runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    workspace_id = await workspace(runtime)
    await configure_sandbox(sandbox, auto_assign_after_s=None, deliver_webhooks=False)
    created = await runtime.provisioning.create_setup(workspace_id, ORIGIN, "Acme", "Desk")
    [line] = await lines_of(runtime, created)
    await sandbox.post(f"/sandbox/line-requests/{line.request_id}/assign", json={})

    await configure_sandbox(sandbox, auto_assign_after_s=None, failure_rate=1)
    report = await runtime.reconcile(0)

    assert report.deferred == 1
    assert report.lines_assigned == 0
    [still] = await lines_of(runtime, created)
    assert still.status == LineStatus.PENDING


# -- blueline reconcile


def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUELINE_")}
    keys = settings.encryption_keys
    assert keys is not None
    assert settings.provider_url
    assert settings.public_base_url
    env.update(
        BLUELINE_DATABASE_URL=settings.database_url.get_secret_value(),
        BLUELINE_PROVIDER_URL=settings.provider_url,
        BLUELINE_ENCRYPTION_KEYS=keys.get_secret_value(),
        BLUELINE_PUBLIC_BASE_URL=settings.public_base_url,
        BLUELINE_PROVIDER_BACKOFF_S="0.01",
    )
    return env


async def run_reconcile(settings: Settings, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert BLUELINE.exists(), BLUELINE
    return await asyncio.to_thread(
        subprocess.run,
        [str(BLUELINE), "reconcile", "--min-age", "0"],
        env=cli_env(settings),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_reconcile_command_recovers_setups_and_lines_and_prints_a_summary(
    runtime: Runtime, settings: Settings, sandbox: httpx.AsyncClient, tmp_path: Path
) -> None:
    workspace_id = await workspace(runtime)
    await configure_sandbox(sandbox, auto_assign_after_s=None, deliver_webhooks=False)
    with_subaccount = await crashed_before_provider_call(runtime, workspace_id, name="One")
    account = await create_upstream(sandbox, runtime, with_subaccount, name="One")
    without_subaccount = await crashed_before_provider_call(runtime, workspace_id, name="Two")
    failed = await crashed_before_provider_call(runtime, workspace_id, name="Three")
    await create_upstream(sandbox, runtime, failed, name="Three")
    await runtime.provisioning._mark_failed(failed, "PROVIDER_UNAVAILABLE")
    live = await runtime.provisioning.create_setup(workspace_id, ORIGIN, "Four", "Desk")
    [line] = await lines_of(runtime, live)
    placed = await sandbox.post(f"/sandbox/line-requests/{line.request_id}/assign", json={})
    number = placed.json()["phone_number"]

    result = await run_reconcile(settings, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == (
        "setups completed: 2, failed: 0, discarded: 1, deferred: 0; lines assigned: 1, "
        "adopted: 0, released: 0; setups synced: 0; operations finished: 0"
    )
    await assert_completed_from(runtime, workspace_id, with_subaccount, account)
    [created] = await upstream_for(sandbox, without_subaccount)
    await assert_completed_from(runtime, workspace_id, without_subaccount, created)
    assert (await row(runtime, failed)).state == SetupState.DISCARDED
    assert (await upstream_for(sandbox, failed))[0]["status"] == "closed"
    [assigned] = await lines_of(runtime, live)
    assert (assigned.status, assigned.phone_number) == (LineStatus.ASSIGNED, number)
    assert await events_of(runtime, live, "LINE_ASSIGNED") == 1

    again = await run_reconcile(settings, tmp_path)

    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == (
        "setups completed: 0, failed: 0, discarded: 0, deferred: 0; lines assigned: 0, "
        "adopted: 0, released: 0; setups synced: 0; operations finished: 0"
    )
    assert await events_of(runtime, live, "LINE_ASSIGNED") == 1
    for setup_id in (with_subaccount, without_subaccount):
        assert len(await upstream_for(sandbox, setup_id)) == 1
