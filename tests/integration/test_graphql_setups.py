"""Creating, listing and inspecting setups through GraphQL over HTTP, on both databases."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import Api, configure_sandbox

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
  imessageSetup(id: $id) { id status phoneLineCount phoneLines { id status phoneNumber requestId } }
}"""


async def create(
    api: Api, name: str = "Acme Dental", label: str = "Front desk", **extra: str
) -> dict[str, Any]:
    data = await api.data(CREATE, {"input": {"businessName": name, "label": label, **extra}})
    payload: dict[str, Any] = data["createImessageSetup"]
    return payload


async def test_number_available_at_once_comes_back_in_the_create_response(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    await configure_sandbox(sandbox, assign_immediately=True)
    result = await create(api)
    assert result["userErrors"] == []
    setup = result["setup"]
    assert setup["status"] == "ACTIVE"
    assert setup["phoneLineCount"] == 1
    [line] = setup["phoneLines"]
    assert line["status"] == "ASSIGNED"
    assert line["phoneNumber"].startswith("+1")
    assert line["requestId"] is None
    assert line["assignedAt"] is not None


async def test_pending_line_goes_live_when_the_provider_places_a_number(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    result = await create(api)
    setup = result["setup"]
    assert setup["status"] == "PENDING"
    [line] = setup["phoneLines"]
    assert line["status"] == "PENDING"
    assert line["phoneNumber"] is None
    request_id = line["requestId"]
    assert request_id.startswith("lr_")

    placed = await sandbox.post(f"/sandbox/line-requests/{request_id}/assign", json={})
    assert placed.status_code == 200, placed.text

    for _ in range(100):
        detail = (await api.data(DETAIL, {"id": setup["id"]}))["imessageSetup"]
        if detail["status"] == "ACTIVE":
            break
        await asyncio.sleep(0.05)
    assert detail["status"] == "ACTIVE"
    [assigned] = detail["phoneLines"]
    assert assigned["id"] == line["id"]
    assert assigned["status"] == "ASSIGNED"
    assert assigned["phoneNumber"].startswith("+")
    assert assigned["requestId"] is None


async def test_total_count_is_counted_when_asked_through_a_fragment(api: Api) -> None:
    await create(api)
    await create(api, "Second")
    query = """
    query { imessageSetups(first: 1) { ...Counted edges { node { id } } } }
    fragment Counted on IMessageSetupConnection { totalCount pageInfo { hasNextPage } }
    """
    listing = (await api.data(query))["imessageSetups"]
    assert listing["totalCount"] == 2
    assert len(listing["edges"]) == 1
    assert listing["pageInfo"]["hasNextPage"] is True
