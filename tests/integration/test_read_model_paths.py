"""Every field of IMessageSetup and PhoneLine answers the same through every path.

The fields come from the served schema itself (introspection), so a field added to the
read model is covered here without touching this file. The setup is driven through a
life that gives every nullable field a value somewhere: a line placed at once, one
placed later by a signed webhook, one released, and a suspension. Then the same
records are read through the list, the detail, ``node``, a mutation payload, both
subscriptions live, and both subscriptions replayed with ``after``; each path must
answer exactly the same JSON.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from blueline.settings import Settings
from tests.conftest import Api, configure_sandbox, make_settings
from tests.support.ws import GraphQLSocket, graphql_ws

INTROSPECT = """
query Fields($name: String!) {
  __type(name: $name) {
    fields { name args { name } type { kind name ofType { kind name ofType { kind name } } } }
  }
}"""


@pytest.fixture(params=[True, False], ids=["compiled", "executed"])
def settings(
    request: pytest.FixtureRequest, database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient
) -> Settings:
    return make_settings(database_url, sandbox_url, compiled_reads=request.param)


def leaf_kind(type_ref: dict[str, Any]) -> str:
    while type_ref.get("ofType"):
        type_ref = type_ref["ofType"]
    return str(type_ref["kind"])


async def leaf_fields(api: Api, type_name: str) -> list[str]:
    data = await api.data(INTROSPECT, {"name": type_name})
    return sorted(
        field["name"]
        for field in data["__type"]["fields"]
        if leaf_kind(field["type"]) in ("SCALAR", "ENUM")
    )


async def selections(api: Api) -> tuple[str, str]:
    """(every setup field with every line field nested, every line field)."""
    line = " ".join(await leaf_fields(api, "PhoneLine"))
    setup = " ".join(await leaf_fields(api, "IMessageSetup"))
    return f"{setup} phoneLines(includeReleased: true) {{ {line} }}", line


async def mutate(api: Api, field: str, input_type: str, selection: str, **values: Any) -> Any:
    document = (
        f"mutation($input: {input_type}!) {{ {field}(input: $input) "
        f"{{ {selection} userErrors {{ code message }} }} }}"
    )
    payload = (await api.data(document, {"input": values}))[field]
    assert payload["userErrors"] == [], payload
    return payload


async def updates(ws: GraphQLSocket, op: str, count: int) -> list[dict[str, Any]]:
    received = []
    for _ in range(count):
        data = await ws.next_data(op)
        [update] = data.values()
        received.append(update)
    return received


async def test_every_field_is_the_same_through_every_path(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    setup_fields, line_fields = await selections(api)
    for expected in ("businessName", "phoneLineCount", "suspendedAt", "closedAt"):
        assert expected in setup_fields
    for expected in ("phoneNumber", "requestId", "assignedAt", "releasedAt"):
        assert expected in line_fields
    line_updates = (
        "subscription($after: String) { phoneLineUpdates(after: $after) "
        f"{{ eventId setup {{ {setup_fields} }} phoneLine {{ {line_fields} }} }} }}"
    )
    setup_updates = (
        "subscription($after: String) { imessageSetupUpdates(after: $after) "
        f"{{ eventId change setup {{ {setup_fields} }} }} }}"
    )

    # One socket per subscription: each reads its own operation's messages in order.
    async with (
        graphql_ws(api.base_url, api.key) as ws,
        graphql_ws(api.base_url, api.key) as setup_ws,
    ):
        live_lines = await ws.subscribe(line_updates)
        live_setups = await setup_ws.subscribe(setup_updates)
        await asyncio.sleep(0.2)

        created = await mutate(
            api,
            "createImessageSetup",
            "CreateImessageSetupInput",
            f"setup {{ {setup_fields} }}",
            businessName="Paths Dental",
            label="Front desk",
        )
        setup_id = created["setup"]["id"]
        [later] = created["setup"]["phoneLines"]
        await configure_sandbox(sandbox, assign_immediately=True)
        placed = await mutate(
            api,
            "requestImessagePhoneLine",
            "RequestImessagePhoneLineInput",
            f"phoneLine {{ {line_fields} }}",
            setupId=setup_id,
        )
        released = await mutate(
            api,
            "requestImessagePhoneLine",
            "RequestImessagePhoneLineInput",
            f"phoneLine {{ {line_fields} }}",
            setupId=setup_id,
        )
        await mutate(
            api,
            "releaseImessagePhoneLine",
            "ReleaseImessagePhoneLineInput",
            f"phoneLine {{ {line_fields} }}",
            phoneLineId=released["phoneLine"]["id"],
        )
        await configure_sandbox(sandbox)
        answer = await sandbox.post(f"/sandbox/line-requests/{later['requestId']}/assign", json={})
        assert answer.status_code == 200, answer.text
        # The webhook lands: the line's last event, seen live.
        line_events = await updates(ws, live_lines, 5)
        assert line_events[-1]["phoneLine"]["id"] == later["id"]
        assert line_events[-1]["phoneLine"]["status"] == "ASSIGNED"
        suspended = await mutate(
            api,
            "suspendImessageSetup",
            "SuspendImessageSetupInput",
            f"setup {{ {setup_fields} }}",
            setupId=setup_id,
        )
        setup_events: list[dict[str, Any]] = []
        while not setup_events or setup_events[-1]["change"] != "SUSPENDED":
            setup_events += await updates(setup_ws, live_setups, 1)
            assert len(setup_events) <= 10, setup_events
        assert setup_events[0]["change"] == "CREATED"

    current = suspended["setup"]
    assert current["status"] == "SUSPENDED"
    assert current["suspendedAt"] is not None
    lines = {line["id"]: line for line in current["phoneLines"]}
    assert {line["status"] for line in lines.values()} == {"ASSIGNED", "RELEASED"}
    assert lines[released["phoneLine"]["id"]]["releasedAt"] is not None
    assert lines[placed["phoneLine"]["id"]] == placed["phoneLine"]

    listed = await api.data(
        f"{{ imessageSetups(first: 5) {{ edges {{ node {{ {setup_fields} }} }} }} }}"
    )
    detail = await api.data(
        f"query($id: ID!) {{ imessageSetup(id: $id) {{ {setup_fields} }} }}", {"id": setup_id}
    )
    by_node = await api.data(
        f"query($id: ID!) {{ node(id: $id) {{ ... on IMessageSetup {{ {setup_fields} }} }} }}",
        {"id": setup_id},
    )
    assert listed["imessageSetups"]["edges"] == [{"node": current}]
    assert detail["imessageSetup"] == current
    assert by_node["node"] == current
    for line_id, line in lines.items():
        node = await api.data(
            f"query($id: ID!) {{ node(id: $id) {{ ... on PhoneLine {{ {line_fields} }} }} }}",
            {"id": line_id},
        )
        assert node["node"] == line

    # The last event of each line carries that line as it is now; the last setup event
    # carries the setup as it is now; a replay answers exactly what was sent live.
    last_of_line = {event["phoneLine"]["id"]: event["phoneLine"] for event in line_events}
    assert last_of_line == lines
    assert setup_events[-1]["setup"] == current
    async with graphql_ws(api.base_url, api.key) as ws:
        replay_lines = await ws.subscribe(line_updates, {"after": line_events[0]["eventId"]})
        assert await updates(ws, replay_lines, 4) == line_events[1:]
    async with graphql_ws(api.base_url, api.key) as ws:
        replay_setups = await ws.subscribe(setup_updates, {"after": setup_events[0]["eventId"]})
        replayed = await updates(ws, replay_setups, len(setup_events) - 1)
        assert replayed == setup_events[1:]
