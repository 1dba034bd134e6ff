"""Blueline as deployed: real ``blueline`` processes driven over HTTP only.

A frontend talks GraphQL to ``blueline serve``; the provider is a separate
``blueline sandbox-provider`` process that delivers signed webhooks back to it; operators
run CLI commands against the same database. Nothing here reaches into a process.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Api, keyring_spec
from tests.e2e.conftest import Deployment, configure_sandbox
from tests.e2e.support import (
    BluelineProcess,
    ProcessGroup,
    clean_env,
    mint_key,
    printed_api_key,
)
from tests.support.asgi_server import free_port
from tests.support.clients import http_client
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


E164 = re.compile(r"\+[1-9][0-9]{6,14}")

CREATE = """
mutation Create($input: CreateImessageSetupInput!) {
  createImessageSetup(input: $input) {
    setup { id businessName label status phoneLineCount
            phoneLines { id status phoneNumber requestId requestedAt assignedAt } }
    userErrors { field message code }
  }
}"""

DETAIL = """
query Detail($id: ID!) {
  imessageSetup(id: $id) {
    id businessName label status phoneLineCount updatedAt
    phoneLines { id status phoneNumber requestId requestedAt assignedAt }
  }
}"""

LIST = """
query List($first: Int, $after: String) {
  imessageSetups(first: $first, after: $after) {
    edges { cursor node { id businessName status phoneLineCount } }
    pageInfo { hasNextPage endCursor }
    totalCount
  }
}"""

NODE = """
query Node($id: ID!) { node(id: $id) { id } }"""

REQUEST_LINE = """
mutation RequestLine($input: RequestImessagePhoneLineInput!) {
  requestImessagePhoneLine(input: $input) {
    phoneLine { id status phoneNumber requestId requestedAt assignedAt }
    userErrors { field message code }
  }
}"""

RECONCILE_SUMMARY = re.compile(
    r"setups completed: (\d+), failed: (\d+), discarded: (\d+), deferred: (\d+); "
    r"lines assigned: (\d+)"
)


# ------------------------------------------------------------------------- helpers


async def upstream_subaccounts(
    sandbox: httpx.AsyncClient, external_id: str | None = None
) -> list[dict[str, Any]]:
    params = {} if external_id is None else {"external_id": external_id}
    response = await sandbox.get("/sandbox/subaccounts", params=params)
    response.raise_for_status()
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def create_setup(
    api: Api, name: str = "Acme Dental", label: str = "Front desk", **extra: Any
) -> dict[str, Any]:
    data = await api.data(CREATE, {"input": {"businessName": name, "label": label, **extra}})
    result: dict[str, Any] = data["createImessageSetup"]
    return result


async def detail(api: Api, setup_id: str) -> dict[str, Any] | None:
    setup: dict[str, Any] | None = (await api.data(DETAIL, {"id": setup_id}))["imessageSetup"]
    return setup


async def list_setups(api: Api, first: int = 20, after: str | None = None) -> dict[str, Any]:
    connection: dict[str, Any] = (await api.data(LIST, {"first": first, "after": after}))[
        "imessageSetups"
    ]
    return connection


async def wait_active(api: Api, setup_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    setup = await eventually(
        lambda: detail(api, setup_id),
        lambda s: s is not None and s["status"] == "ACTIVE",
        timeout_s=timeout_s,
    )
    assert setup is not None
    return setup


def sqlite_files(directory: Path) -> set[Path]:
    return {
        path
        for path in directory.iterdir()
        if path.is_file() and path.read_bytes()[:16] == b"SQLite format 3\x00"
    }


# ------------------------------------------------------------------------ fixtures


# ------------------------------------------------------------- zero configuration


async def test_zero_config_serve_runs_the_whole_flow_on_embedded_defaults(
    procs: ProcessGroup, tmp_path: Path
) -> None:
    workdir = tmp_path / "app"
    workdir.mkdir()
    env = clean_env()
    first = procs.serve(port=free_port(), env=env, cwd=workdir)

    key = printed_api_key(first.stdout())
    assert key, first.describe()
    [database] = sqlite_files(workdir)
    keyrings = [
        path
        for path in workdir.iterdir()
        if path.is_file() and not path.name.startswith(database.name)
    ]
    assert len(keyrings) == 1, sorted(p.name for p in workdir.iterdir())
    assert keyrings[0].stat().st_mode & 0o777 == 0o600

    api = Api(first.base_url, key)
    try:
        page = await api.http.get("/graphql", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "graphiql" in page.text.lower()

        result = await create_setup(api)
        assert result["userErrors"] == []
        setup = result["setup"]
        assert setup["status"] == "PENDING"
        [line] = setup["phoneLines"]
        assert line["status"] == "PENDING"
        assert line["requestId"]

        created_at = time.monotonic()
        active = await wait_active(api, setup["id"], timeout_s=12)
        waited = time.monotonic() - created_at
        assert 1.5 < waited < 10, f"placed after {waited:.1f} s"
        [assigned] = active["phoneLines"]
        assert assigned["id"] == line["id"]
        assert assigned["status"] == "ASSIGNED"
        assert E164.fullmatch(assigned["phoneNumber"])
    finally:
        await api.http.aclose()

    assert first.stop() in (0, -signal.SIGTERM), first.describe()
    assert not first.killed, "did not shut down on SIGTERM"

    second = procs.serve(port=free_port(), env=env, cwd=workdir)
    assert printed_api_key(second.stdout()) is None, second.stdout()
    assert sqlite_files(workdir) == {database}
    api = Api(second.base_url, key)
    try:
        listed = await list_setups(api)
        assert [edge["node"]["id"] for edge in listed["edges"]] == [setup["id"]]
        assert listed["edges"][0]["node"]["status"] == "ACTIVE"
    finally:
        await api.http.aclose()


# ------------------------------------------------------- PostgreSQL + provider process


async def test_number_placed_immediately_comes_back_active_in_the_create_response(
    deployment: Deployment, sandbox: httpx.AsyncClient
) -> None:
    await configure_sandbox(sandbox, assign_immediately=True)
    result = await create_setup(deployment.api)
    assert result["userErrors"] == []
    setup = result["setup"]
    assert setup["status"] == "ACTIVE"
    assert setup["phoneLineCount"] == 1
    [line] = setup["phoneLines"]
    assert line["status"] == "ASSIGNED"
    assert E164.fullmatch(line["phoneNumber"])
    assert line["requestId"] is None
    assert line["assignedAt"] is not None

    [upstream] = await upstream_subaccounts(sandbox, setup["id"])
    assert upstream["lines"][0]["phone_number"] == line["phoneNumber"]
    assert upstream["deliveries"] == []


async def test_pending_line_becomes_active_through_the_providers_signed_webhook(
    deployment: Deployment, sandbox: httpx.AsyncClient
) -> None:
    result = await create_setup(deployment.api)
    setup = result["setup"]
    assert setup["status"] == "PENDING"
    [line] = setup["phoneLines"]
    assert line["phoneNumber"] is None

    placed = await sandbox.post(f"/sandbox/line-requests/{line['requestId']}/assign", json={})
    assert placed.status_code == 200, placed.text
    number = placed.json()["phone_number"]

    active = await wait_active(deployment.api, setup["id"])
    [assigned] = active["phoneLines"]
    assert assigned["id"] == line["id"]
    assert assigned["status"] == "ASSIGNED"
    assert assigned["phoneNumber"] == number
    assert assigned["requestId"] is None
    assert assigned["assignedAt"] is not None

    [upstream] = await eventually(
        lambda: upstream_subaccounts(sandbox, setup["id"]),
        lambda found: bool(found[0]["deliveries"]),
    )
    assert upstream["webhook_url"].startswith(deployment.process.base_url)
    assert [d["status_code"] for d in upstream["deliveries"]] == [200]


async def test_extra_lines_are_requested_from_the_provider_and_listed_oldest_first(
    deployment: Deployment, sandbox: httpx.AsyncClient
) -> None:
    api = deployment.api
    setup = (await create_setup(api))["setup"]

    second = (await api.data(REQUEST_LINE, {"input": {"setupId": setup["id"]}}))[
        "requestImessagePhoneLine"
    ]
    assert second["userErrors"] == []
    assert second["phoneLine"]["status"] == "PENDING"
    assert second["phoneLine"]["requestId"]

    await configure_sandbox(sandbox, assign_immediately=True)
    third = (await api.data(REQUEST_LINE, {"input": {"setupId": setup["id"]}}))[
        "requestImessagePhoneLine"
    ]
    assert third["userErrors"] == []
    assert third["phoneLine"]["status"] == "ASSIGNED"
    assert E164.fullmatch(third["phoneLine"]["phoneNumber"])

    shown = await detail(api, setup["id"])
    assert shown is not None
    assert shown["status"] == "ACTIVE"
    assert shown["phoneLineCount"] == 3
    assert [line["id"] for line in shown["phoneLines"]] == [
        setup["phoneLines"][0]["id"],
        second["phoneLine"]["id"],
        third["phoneLine"]["id"],
    ]
    assert [line["status"] for line in shown["phoneLines"]] == ["PENDING", "PENDING", "ASSIGNED"]

    [upstream] = await upstream_subaccounts(sandbox, setup["id"])
    assert len(upstream["lines"]) == 3

    placed = await sandbox.post(
        f"/sandbox/line-requests/{second['phoneLine']['requestId']}/assign", json={}
    )
    assert placed.status_code == 200, placed.text
    shown = await eventually(
        lambda: detail(api, setup["id"]),
        lambda s: s is not None and s["phoneLines"][1]["status"] == "ASSIGNED",
    )
    assert shown is not None
    assert shown["phoneLines"][1]["phoneNumber"] == placed.json()["phone_number"]
    assert shown["phoneLines"][0]["status"] == "PENDING"


async def test_setups_are_listed_newest_first_in_pages(
    deployment: Deployment, sandbox: httpx.AsyncClient
) -> None:
    api = deployment.api
    created = []
    for n in range(5):
        result = await create_setup(api, name=f"Clinic {n}")
        assert result["userErrors"] == []
        created.append(result["setup"]["id"])

    seen: list[str] = []
    pages: list[int] = []
    after: str | None = None
    while True:
        page = await list_setups(api, first=2, after=after)
        assert page["totalCount"] == 5
        pages.append(len(page["edges"]))
        seen.extend(edge["node"]["id"] for edge in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
        assert after == page["edges"][-1]["cursor"]
        assert len(pages) < 5, "pagination does not end"
    assert pages == [2, 2, 1]
    assert seen == list(reversed(created))

    too_many = await api.graphql(LIST, {"first": 101})
    assert too_many.get("errors"), too_many


async def test_workspaces_never_see_each_others_setups(
    deployment: Deployment, sandbox: httpx.AsyncClient
) -> None:
    key_a = mint_key(deployment.env, "clinic-a", deployment.cwd)
    key_b = mint_key(deployment.env, "clinic-b", deployment.cwd)
    assert key_a != key_b
    clinic_a = Api(deployment.process.base_url, key_a)
    clinic_b = Api(deployment.process.base_url, key_b)
    try:
        mine = (await create_setup(clinic_a, name="Clinic A"))["setup"]
        theirs = (await create_setup(clinic_b, name="Clinic B"))["setup"]

        listed_a = await list_setups(clinic_a)
        assert [edge["node"]["id"] for edge in listed_a["edges"]] == [mine["id"]]
        assert listed_a["totalCount"] == 1
        listed_b = await list_setups(clinic_b)
        assert [edge["node"]["id"] for edge in listed_b["edges"]] == [theirs["id"]]

        assert await detail(clinic_b, mine["id"]) is None
        assert (await clinic_b.data(NODE, {"id": mine["id"]}))["node"] is None
        assert (await clinic_b.data(NODE, {"id": mine["phoneLines"][0]["id"]}))["node"] is None
        foreign = (await clinic_b.data(REQUEST_LINE, {"input": {"setupId": mine["id"]}}))[
            "requestImessagePhoneLine"
        ]
        missing = (await clinic_b.data(REQUEST_LINE, {"input": {"setupId": "ims_missing"}}))[
            "requestImessagePhoneLine"
        ]
        assert foreign["phoneLine"] is None
        assert [e["code"] for e in foreign["userErrors"]] == ["NOT_FOUND"]
        assert foreign["userErrors"] == missing["userErrors"]

        shown = await detail(clinic_a, mine["id"])
        assert shown is not None
        assert shown["phoneLineCount"] == 1

        default_workspace = await list_setups(deployment.api)
        assert default_workspace["totalCount"] == 0
    finally:
        await clinic_a.http.aclose()
        await clinic_b.http.aclose()


async def test_provider_down_fails_creation_cleanly_and_leaves_nothing_behind(
    deployment: Deployment, sandbox: httpx.AsyncClient
) -> None:
    api = deployment.api
    existing = (await create_setup(api, name="Before the outage"))["setup"]
    upstream_before = len(await upstream_subaccounts(sandbox))

    await configure_sandbox(sandbox, failure_rate=1)
    result = await create_setup(api, name="During the outage")
    assert result["setup"] is None
    assert [e["code"] for e in result["userErrors"]] == ["PROVIDER_UNAVAILABLE"]
    more = (await api.data(REQUEST_LINE, {"input": {"setupId": existing["id"]}}))[
        "requestImessagePhoneLine"
    ]
    assert more["phoneLine"] is None
    assert [e["code"] for e in more["userErrors"]] == ["PROVIDER_UNAVAILABLE"]

    listed = await list_setups(api)
    assert [edge["node"]["id"] for edge in listed["edges"]] == [existing["id"]]
    assert listed["totalCount"] == 1
    assert listed["edges"][0]["node"]["phoneLineCount"] == 1
    assert len(await upstream_subaccounts(sandbox)) == upstream_before


async def test_provider_failing_half_its_calls_is_retried_so_most_creations_succeed(
    deployment: Deployment, sandbox: httpx.AsyncClient
) -> None:
    # With three attempts a create fails 1 time in 8; 20 of 30 bounds a false
    # alarm below 0.1 % while a client without retries would usually fall short.
    api = deployment.api
    upstream_before = len(await upstream_subaccounts(sandbox))
    await configure_sandbox(sandbox, failure_rate=0.5)
    succeeded: list[str] = []
    for n in range(30):
        result = await create_setup(api, name=f"Flaky {n}")
        if result["setup"] is None:
            assert [e["code"] for e in result["userErrors"]] == ["PROVIDER_UNAVAILABLE"]
        else:
            assert result["userErrors"] == []
            succeeded.append(result["setup"]["id"])
    await configure_sandbox(sandbox)

    assert len(succeeded) >= 20, f"only {len(succeeded)} of 30 creations succeeded"
    listed = await list_setups(api, first=100)
    assert sorted(edge["node"]["id"] for edge in listed["edges"]) == sorted(succeeded)
    assert len(await upstream_subaccounts(sandbox)) == upstream_before + len(succeeded)


async def test_create_repeated_with_an_idempotency_key_returns_the_first_setup(
    deployment: Deployment, sandbox: httpx.AsyncClient
) -> None:
    api = deployment.api
    first = await create_setup(api, idempotencyKey="order-1")
    again = await create_setup(api, idempotencyKey="order-1")
    assert first["userErrors"] == again["userErrors"] == []
    assert again["setup"]["id"] == first["setup"]["id"]
    assert again["setup"]["phoneLines"] == first["setup"]["phoneLines"]

    reused = await create_setup(api, name="Someone else", idempotencyKey="order-1")
    assert reused["setup"] is None
    assert [e["code"] for e in reused["userErrors"]] == ["IDEMPOTENCY_KEY_REUSED"]

    assert len(await upstream_subaccounts(sandbox, first["setup"]["id"])) == 1
    listed = await list_setups(api)
    assert [edge["node"]["id"] for edge in listed["edges"]] == [first["setup"]["id"]]


async def test_create_retried_after_a_client_timeout_returns_the_same_setup(
    deployment: Deployment, sandbox: httpx.AsyncClient
) -> None:
    api = deployment.api
    upstream_before = len(await upstream_subaccounts(sandbox))
    await configure_sandbox(sandbox, latency_ms=1500)
    variables = {"input": {"businessName": "Slow Dental", "label": "Desk", "idempotencyKey": "k1"}}
    with pytest.raises(httpx.TimeoutException):
        await api.http.post(
            "/graphql",
            json={"query": CREATE, "variables": variables},
            headers={"Authorization": f"Bearer {api.key}"},
            timeout=0.5,
        )
    retried = (await api.data(CREATE, variables))["createImessageSetup"]
    assert retried["userErrors"] == []
    setup_id = retried["setup"]["id"]
    await configure_sandbox(sandbox)

    again = (await api.data(CREATE, variables))["createImessageSetup"]
    assert again["setup"]["id"] == setup_id
    listed = await list_setups(api)
    assert [edge["node"]["id"] for edge in listed["edges"]] == [setup_id]
    assert listed["edges"][0]["node"]["phoneLineCount"] == 1
    assert len(await upstream_subaccounts(sandbox, setup_id)) == 1
    assert len(await upstream_subaccounts(sandbox)) == upstream_before + 1


# ------------------------------------------------------------------- re-delivery


async def test_redelivered_webhook_is_acknowledged_again_and_changes_nothing(
    deployment: Deployment, sandbox: httpx.AsyncClient
) -> None:
    api = deployment.api
    setup = (await create_setup(api))["setup"]
    request_id = setup["phoneLines"][0]["requestId"]
    placed = await sandbox.post(f"/sandbox/line-requests/{request_id}/assign", json={})
    assert placed.status_code == 200, placed.text
    before = await wait_active(api, setup["id"])
    [upstream] = await eventually(
        lambda: upstream_subaccounts(sandbox, setup["id"]),
        lambda found: bool(found[0]["deliveries"]),
    )
    [delivered] = upstream["deliveries"]
    assert delivered["status_code"] == 200

    redelivered = await sandbox.post(f"/sandbox/line-requests/{request_id}/redeliver")
    assert redelivered.status_code == 202, redelivered.text
    assert redelivered.json()["webhook_id"] == delivered["webhook_id"]

    [upstream] = await eventually(
        lambda: upstream_subaccounts(sandbox, setup["id"]),
        lambda found: len(found[0]["deliveries"]) >= 2,
    )
    last = upstream["deliveries"][-1]
    assert last["webhook_id"] == delivered["webhook_id"]
    assert last["status_code"] == 200, upstream["deliveries"]
    assert len(upstream["deliveries"]) == 2

    assert await detail(api, setup["id"]) == before


# ------------------------------------------------------------------ crash recovery


async def start_create_and_crash(deployment: Deployment, sandbox: httpx.AsyncClient) -> str:
    """Send a create, kill the API with SIGKILL once the provider has made the subaccount
    (its answer is held back), and return the id of the interrupted setup."""
    known = {s["id"] for s in await upstream_subaccounts(sandbox)}
    await configure_sandbox(sandbox, latency_ms=2500)
    pending = asyncio.create_task(create_setup(deployment.api, name="Interrupted Dental"))
    fresh = await eventually(
        lambda: upstream_subaccounts(sandbox),
        lambda found: any(s["id"] not in known for s in found),
        timeout_s=5,
        interval_s=0.05,
    )
    deployment.process.kill_hard()
    with pytest.raises(httpx.TransportError):
        await pending
    await configure_sandbox(sandbox)
    [created] = [s for s in fresh if s["id"] not in known]
    setup_id: str = created["external_id"]
    return setup_id


async def test_setup_interrupted_by_a_crash_is_completed_when_the_api_restarts(
    deployment: Deployment, sandbox: httpx.AsyncClient
) -> None:
    upstream_before = len(await upstream_subaccounts(sandbox))
    setup_id = await start_create_and_crash(deployment, sandbox)

    deployment.restart(BLUELINE_RECONCILE_MIN_AGE_S="0")
    listed = await eventually(
        lambda: list_setups(deployment.api),
        lambda page: [edge["node"]["id"] for edge in page["edges"]] == [setup_id],
        timeout_s=10,
    )
    assert listed["totalCount"] == 1

    [upstream] = await upstream_subaccounts(sandbox, setup_id)
    assert len(await upstream_subaccounts(sandbox)) == upstream_before + 1
    recovered = await detail(deployment.api, setup_id)
    assert recovered is not None
    assert recovered["businessName"] == "Interrupted Dental"
    [line] = recovered["phoneLines"]
    assert line["status"] == "PENDING"
    assert line["requestId"] == upstream["lines"][0]["request_id"]

    placed = await sandbox.post(f"/sandbox/line-requests/{line['requestId']}/assign", json={})
    assert placed.status_code == 200, placed.text
    active = await wait_active(deployment.api, setup_id)
    assert active["phoneLines"][0]["phoneNumber"] == placed.json()["phone_number"]


async def test_reconcile_command_completes_a_setup_interrupted_by_a_crash(
    deployment: Deployment, sandbox: httpx.AsyncClient
) -> None:
    setup_id = await start_create_and_crash(deployment, sandbox)

    reconcile = deployment.cli("reconcile", "--min-age", "0")
    assert reconcile.returncode == 0, reconcile.describe()
    summary = RECONCILE_SUMMARY.search(reconcile.stdout().strip().splitlines()[-1])
    assert summary is not None, reconcile.describe()
    assert summary.group(1) == "1", reconcile.stdout()

    again = deployment.cli("reconcile", "--min-age", "0")
    assert again.returncode == 0, again.describe()
    assert "setups completed: 0" in again.stdout(), again.describe()

    deployment.restart()
    listed = await list_setups(deployment.api)
    assert [edge["node"]["id"] for edge in listed["edges"]] == [setup_id]
    assert len(await upstream_subaccounts(sandbox, setup_id)) == 1


async def test_reconcile_command_assigns_a_line_whose_webhook_was_lost(
    deployment: Deployment, sandbox: httpx.AsyncClient
) -> None:
    api = deployment.api
    setup = (await create_setup(api))["setup"]
    request_id = setup["phoneLines"][0]["requestId"]
    await configure_sandbox(sandbox, deliver_webhooks=False)
    placed = await sandbox.post(f"/sandbox/line-requests/{request_id}/assign", json={})
    assert placed.status_code == 200, placed.text
    await asyncio.sleep(0.3)
    still = await detail(api, setup["id"])
    assert still is not None
    assert still["status"] == "PENDING"

    reconcile = deployment.cli("reconcile", "--min-age", "0")
    assert reconcile.returncode == 0, reconcile.describe()
    summary = RECONCILE_SUMMARY.search(reconcile.stdout())
    assert summary is not None, reconcile.describe()
    assert summary.group(5) == "1", reconcile.stdout()

    active = await wait_active(api, setup["id"], timeout_s=5)
    assert active["phoneLines"][0]["phoneNumber"] == placed.json()["phone_number"]


# ------------------------------------------------------------------ production mode

PRODUCTION_VARIABLES = {
    "BLUELINE_ENCRYPTION_KEYS": keyring_spec("prod1"),
    "BLUELINE_PROVIDER_URL": "http://127.0.0.1:9",
    "BLUELINE_PUBLIC_BASE_URL": "https://blueline.example.com",
}


@pytest.mark.parametrize("missing", sorted(PRODUCTION_VARIABLES))
def test_production_refuses_to_start_without_required_configuration(
    procs: ProcessGroup, tmp_path: Path, missing: str
) -> None:
    env = clean_env(
        BLUELINE_ENV="production",
        **{name: value for name, value in PRODUCTION_VARIABLES.items() if name != missing},
    )
    started = time.monotonic()
    process = procs.start("serve", ["serve", "--port", str(free_port())], env=env, cwd=tmp_path)
    status = process.wait(timeout_s=20)
    elapsed = time.monotonic() - started

    assert status != 0, process.describe()
    assert elapsed < 15, f"took {elapsed:.1f} s to refuse"
    assert missing in process.stderr(), process.describe()
    assert "API key" not in process.stdout()
    assert not [p for p in tmp_path.iterdir() if p.name != "logs"], "left files behind"


async def test_production_with_full_configuration_serves_without_graphiql(
    procs: ProcessGroup, sandbox_process: BluelineProcess, tmp_path: Path
) -> None:
    port = free_port()
    env = clean_env(
        BLUELINE_ENV="production",
        BLUELINE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'prod.db'}",
        BLUELINE_ENCRYPTION_KEYS=keyring_spec("prod1"),
        BLUELINE_PROVIDER_URL=sandbox_process.base_url,
        BLUELINE_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        BLUELINE_RECONCILE_INTERVAL_S="0",
    )
    process = procs.serve(port=port, env=env, cwd=tmp_path)
    key = printed_api_key(process.stdout())
    assert key is not None, process.describe()
    async with http_client(process.base_url, timeout=10) as http:
        page = await http.get("/graphql", headers={"Accept": "text/html"})
        assert not page.headers.get("content-type", "").startswith("text/html")
        via_get = await http.get(
            "/graphql",
            params={"query": "{ imessageSetups { totalCount } }"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert via_get.status_code != 200 or "data" not in via_get.json()
    leftovers = [p.name for p in tmp_path.iterdir() if not p.name.startswith(("logs", "prod.db"))]
    assert leftovers == [], "a keyring was generated despite BLUELINE_ENCRYPTION_KEYS"
