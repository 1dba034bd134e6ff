"""What a frontend relies on from the GraphQL API, over real HTTP, on both databases:
input rules, idempotent creates, provider failures, extra lines, pagination, node
lookups, workspace isolation, authentication, query counts and secret hygiene."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from blueline import ids
from blueline.access import create_api_key
from blueline.persistence.database import Database, observing_statements
from blueline.settings import Settings
from tests.conftest import Api, configure_sandbox

LINE_FIELDS = "id status phoneNumber requestId requestedAt assignedAt"
SETUP_SCALARS = "id businessName label status phoneLineCount createdAt updatedAt"
SETUP_FIELDS = f"{SETUP_SCALARS} phoneLines {{ {LINE_FIELDS} }}"

CREATE = f"""
mutation Create($input: CreateImessageSetupInput!) {{
  createImessageSetup(input: $input) {{
    setup {{ {SETUP_FIELDS} }}
    userErrors {{ field message code }}
  }}
}}"""

REQUEST_LINE = f"""
mutation RequestLine($input: RequestImessagePhoneLineInput!) {{
  requestImessagePhoneLine(input: $input) {{
    phoneLine {{ {LINE_FIELDS} }}
    userErrors {{ field message code }}
  }}
}}"""

DETAIL = f"""
query Detail($id: ID!) {{
  imessageSetup(id: $id) {{ {SETUP_FIELDS} }}
}}"""

LIST = """
query List($first: Int, $after: String, $status: IMessageSetupStatus) {
  imessageSetups(first: $first, after: $after, status: $status) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges { cursor node { id businessName status phoneLineCount } }
  }
}"""

NODE = """
query Node($id: ID!) {
  node(id: $id) {
    __typename
    id
    ... on IMessageSetup { businessName }
    ... on PhoneLine { status }
  }
}"""

INTROSPECTION = """
{ __schema { types { name fields { name } inputFields { name } } } }
"""

SECRET_WORDS = re.compile(r"secret|credential|apikey|api_key|password|token", re.IGNORECASE)


# ---------------------------------------------------------------------- factories


def unique_name(prefix: str = "Acme Dental") -> str:
    return f"{prefix} {uuid.uuid4().hex[:10]}"


def setup_input(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"businessName": unique_name(), "label": "Front desk"}
    values.update(overrides)
    return values


async def create_setup(api: Api, **overrides: Any) -> dict[str, Any]:
    data = await api.data(CREATE, {"input": setup_input(**overrides)})
    payload: dict[str, Any] = data["createImessageSetup"]
    return payload


async def create_ok(api: Api, **overrides: Any) -> dict[str, Any]:
    payload = await create_setup(api, **overrides)
    assert payload["userErrors"] == [], payload
    setup: dict[str, Any] = payload["setup"]
    return setup


async def request_line(api: Api, setup_id: str) -> dict[str, Any]:
    data = await api.data(REQUEST_LINE, {"input": {"setupId": setup_id}})
    payload: dict[str, Any] = data["requestImessagePhoneLine"]
    return payload


async def detail(api: Api, setup_id: str) -> dict[str, Any] | None:
    setup: dict[str, Any] | None = (await api.data(DETAIL, {"id": setup_id}))["imessageSetup"]
    return setup


async def list_setups(api: Api, **variables: Any) -> dict[str, Any]:
    connection: dict[str, Any] = (await api.data(LIST, variables))["imessageSetups"]
    return connection


async def sandbox_subaccounts(
    sandbox: httpx.AsyncClient, *, business_name: str | None = None, external_id: str | None = None
) -> list[dict[str, Any]]:
    params = {"external_id": external_id} if external_id is not None else None
    response = await sandbox.get("/sandbox/subaccounts", params=params)
    response.raise_for_status()
    accounts: list[dict[str, Any]] = response.json()["data"]
    if business_name is not None:
        accounts = [a for a in accounts if a["business_name"] == business_name]
    return accounts


async def new_api_for(server: tuple[str, Settings], workspace: str) -> Api:
    url, settings = server
    db = Database(settings.database_url.get_secret_value())
    try:
        key = await create_api_key(db, workspace)
    finally:
        await db.dispose()
    return Api(url, key)


@contextmanager
def setup_and_line_statements() -> Iterator[list[str]]:
    """Every SQL statement touching setups or lines, from any engine in this process."""
    seen: list[str] = []

    def record(
        _conn: Any, _cursor: Any, statement: str, _params: Any, _ctx: Any, _many: bool
    ) -> None:
        lowered = statement.lower()
        if "imessage_setup" in lowered or "phone_line" in lowered:
            seen.append(statement)

    def record_raw(statement: str) -> None:
        record(None, None, statement, None, None, False)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        with observing_statements(record_raw):
            yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


@pytest.fixture
async def other_api(server: tuple[str, Settings]) -> AsyncIterator[Api]:
    """A second workspace on the same server."""
    client = await new_api_for(server, "clinic-b")
    yield client
    await client.http.aclose()


# ---------------------------------------------------------------- input validation

BAD_TEXT = {
    "empty": "",
    "whitespace only": " \t  ",
    "newline only": "\n",
    "129 characters": "x" * 129,
    "129 characters inside padding": "  " + "y" * 129 + "  ",
    "bell character": "\u0007",
    "bell inside": "Acme\u0007Dental",
    "newline inside": "Acme\nDental",
    "tab inside": "Acme\tDental",
    "escape inside": "Acme\u001b[31mDental",
    "nul inside": "Acme\u0000Dental",
    "delete inside": "Acme\u007fDental",
    "right-to-left override": "Acme\u202eDental",
}


async def test_invalid_input_is_a_user_error_per_field_naming_it(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    valid_names = []
    for case, bad in BAD_TEXT.items():
        for field in ("businessName", "label"):
            values = setup_input(**{field: bad})
            if field == "label":
                valid_names.append(values["businessName"])
            payload = (await api.data(CREATE, {"input": values}))["createImessageSetup"]
            assert payload["setup"] is None, (case, field)
            [error] = payload["userErrors"]
            assert error["field"] == ["input", field], (case, field)
            assert error["code"] == "INVALID_INPUT", (case, field)
            assert error["message"], (case, field)
    assert (await list_setups(api))["totalCount"] == 0
    reached = {a["business_name"] for a in await sandbox_subaccounts(sandbox)}
    assert reached.isdisjoint(valid_names)

    raw = json.dumps({"query": CREATE, "variables": {"input": setup_input(label="A\ud800B")}})
    response = await api.http.post(
        "/graphql",
        content=raw,
        headers={"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    payload = response.json()["data"]["createImessageSetup"]
    assert payload["setup"] is None
    assert [(e["field"], e["code"]) for e in payload["userErrors"]] == [
        (["input", "label"], "INVALID_INPUT")
    ]

    payload = await create_setup(api, businessName="   ", label="a" * 200)
    assert payload["setup"] is None
    errors = payload["userErrors"]
    assert len(errors) == 2
    assert sorted(tuple(e["field"]) for e in errors) == [
        ("input", "businessName"),
        ("input", "label"),
    ]
    assert {e["code"] for e in errors} == {"INVALID_INPUT"}
    assert all(e["message"] for e in errors)
    assert errors[0]["message"] != errors[1]["message"]

    for key in ("", " padded ", "k" * 256, "tab\tkey"):
        payload = await create_setup(api, idempotencyKey=key)
        assert payload["setup"] is None, key
        assert [(e["field"], e["code"]) for e in payload["userErrors"]] == [
            (["input", "idempotencyKey"], "INVALID_INPUT")
        ], key


async def test_names_with_emoji_sequences_and_joiners_are_accepted(api: Api) -> None:
    zero_width_joiner, zero_width_non_joiner = "\u200d", "\u200c"
    for name in (
        f"Dr. Lee \U0001f469{zero_width_joiner}\u2695\ufe0f Dental",
        f"کلینیک دندان{zero_width_non_joiner}پزشکی",
    ):
        payload = await create_setup(api, businessName=name, label=name)
        assert payload["userErrors"] == [], name
        assert payload["setup"]["businessName"] == name
        assert payload["setup"]["label"] == name


async def test_names_are_stored_trimmed_and_128_characters_are_accepted(api: Api) -> None:
    tag = uuid.uuid4().hex[:6]
    setup = await create_ok(api, businessName=f"  Acme {tag} ", label="\tFront desk  ")
    assert setup["businessName"] == f"Acme {tag}"
    assert setup["label"] == "Front desk"
    stored = await detail(api, setup["id"])
    assert stored is not None
    assert (stored["businessName"], stored["label"]) == (f"Acme {tag}", "Front desk")

    longest = await create_ok(api, businessName="  " + "ü" * 128 + " ", label="L" * 128)
    assert longest["businessName"] == "ü" * 128
    assert longest["label"] == "L" * 128


# ---------------------------------------------------------------- idempotency


async def test_repeating_a_create_with_its_key_returns_the_same_setup_and_one_subaccount(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    values = setup_input(idempotencyKey=f"create-{uuid.uuid4()}")
    first = await create_setup(api, **values)
    second = await create_setup(api, **values)
    assert first["userErrors"] == []
    assert second["userErrors"] == []
    assert second["setup"]["id"] == first["setup"]["id"]
    assert second["setup"]["phoneLineCount"] == 1
    assert [line["id"] for line in second["setup"]["phoneLines"]] == [
        line["id"] for line in first["setup"]["phoneLines"]
    ]
    assert len(await sandbox_subaccounts(sandbox, business_name=values["businessName"])) == 1
    assert (await list_setups(api))["totalCount"] == 1


async def test_reusing_a_key_with_different_input_is_rejected(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    key = f"create-{uuid.uuid4()}"
    original = await create_ok(api, **setup_input(idempotencyKey=key))
    for changed in (
        {"businessName": unique_name()},
        {"businessName": original["businessName"], "label": "Back office"},
    ):
        payload = await create_setup(api, **{"idempotencyKey": key, **changed})
        assert payload["setup"] is None
        [error] = payload["userErrors"]
        assert error["code"] == "IDEMPOTENCY_KEY_REUSED"
        assert error["field"] == ["input", "idempotencyKey"]
        assert error["message"]
    connection = await list_setups(api)
    assert [edge["node"]["id"] for edge in connection["edges"]] == [original["id"]]
    assert len(await sandbox_subaccounts(sandbox, business_name=original["businessName"])) == 1


async def test_the_same_key_in_another_workspace_creates_its_own_setup(
    api: Api, other_api: Api, sandbox: httpx.AsyncClient
) -> None:
    values = setup_input(idempotencyKey="shared-key-1")
    mine = await create_ok(api, **values)
    theirs = await create_ok(other_api, **values)
    assert theirs["id"] != mine["id"]
    assert len(await sandbox_subaccounts(sandbox, business_name=values["businessName"])) == 2

    changed = await create_setup(other_api, **{**values, "label": "Other label"})
    assert changed["userErrors"][0]["code"] == "IDEMPOTENCY_KEY_REUSED"
    again = await create_ok(api, **values)
    assert again["id"] == mine["id"]


async def test_concurrent_duplicate_creates_with_one_key_make_one_setup(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    values = setup_input(idempotencyKey=f"burst-{uuid.uuid4()}")
    payloads = await asyncio.gather(*(create_setup(api, **values) for _ in range(5)))
    assert [p["userErrors"] for p in payloads] == [[]] * 5
    assert len({p["setup"]["id"] for p in payloads}) == 1
    assert {p["setup"]["phoneLineCount"] for p in payloads} == {1}
    assert len(await sandbox_subaccounts(sandbox, business_name=values["businessName"])) == 1
    connection = await list_setups(api)
    assert connection["totalCount"] == 1
    assert connection["edges"][0]["node"]["id"] == payloads[0]["setup"]["id"]


# ---------------------------------------------------------------- provider failures


async def test_provider_down_is_a_user_error_and_leaves_nothing_visible(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    existing = await create_ok(api)
    await configure_sandbox(sandbox, failure_rate=1)
    payload = await create_setup(api)
    assert payload["setup"] is None
    [error] = payload["userErrors"]
    assert error["code"] == "PROVIDER_UNAVAILABLE"
    assert error["message"]
    for status in (None, "PENDING"):
        connection = await list_setups(api, status=status)
        assert connection["totalCount"] == 1
        assert [edge["node"]["id"] for edge in connection["edges"]] == [existing["id"]]
    assert (await list_setups(api, status="ACTIVE"))["totalCount"] == 0

    line_payload = await request_line(api, existing["id"])
    assert line_payload["phoneLine"] is None
    assert [e["code"] for e in line_payload["userErrors"]] == ["PROVIDER_UNAVAILABLE"]
    after = await detail(api, existing["id"])
    assert after is not None
    assert after["phoneLineCount"] == 1


async def test_a_create_that_failed_upstream_can_be_retried_with_the_same_key(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    values = setup_input(idempotencyKey=f"retry-{uuid.uuid4()}")
    await configure_sandbox(sandbox, failure_rate=1)
    failed = await create_setup(api, **values)
    assert failed["userErrors"][0]["code"] == "PROVIDER_UNAVAILABLE"

    await configure_sandbox(sandbox)
    retried = await create_setup(api, **values)
    assert retried["userErrors"] == []
    connection = await list_setups(api)
    assert [edge["node"]["id"] for edge in connection["edges"]] == [retried["setup"]["id"]]


async def test_flaky_provider_is_retried_within_the_request(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    # With 3 attempts at a 50% failure rate a create fails 1 time in 8; without retries
    # it would fail 1 time in 2. Forty creates keep both outcomes far from the bound.
    await configure_sandbox(sandbox, failure_rate=0.5)
    payloads: list[dict[str, Any]] = []
    for _ in range(5):
        payloads.extend(await asyncio.gather(*(create_setup(api) for _ in range(8))))
    await configure_sandbox(sandbox)

    created = [p["setup"]["id"] for p in payloads if p["setup"] is not None]
    failed = [p for p in payloads if p["setup"] is None]
    assert len(created) >= 28, f"only {len(created)} of 40 creates succeeded"
    for payload in failed:
        assert [e["code"] for e in payload["userErrors"]] == ["PROVIDER_UNAVAILABLE"]
    for payload in payloads:
        if payload["setup"] is not None:
            assert payload["userErrors"] == []
    connection = await list_setups(api, first=100)
    assert connection["totalCount"] == len(created)
    assert {edge["node"]["id"] for edge in connection["edges"]} == set(created)


# ---------------------------------------------------------------- more phone lines


async def test_requesting_a_line_adds_a_second_pending_line(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    setup = await create_ok(api)
    [first_line] = setup["phoneLines"]

    payload = await request_line(api, setup["id"])
    assert payload["userErrors"] == []
    line = payload["phoneLine"]
    assert line["status"] == "PENDING"
    assert line["phoneNumber"] is None
    assert line["requestId"].startswith("lr_")
    assert line["requestId"] != first_line["requestId"]
    assert line["assignedAt"] is None

    after = await detail(api, setup["id"])
    assert after is not None
    assert after["status"] == "PENDING"
    assert after["phoneLineCount"] == 2
    assert [x["id"] for x in after["phoneLines"]] == [first_line["id"], line["id"]]
    assert after["phoneLines"][0]["requestedAt"] <= after["phoneLines"][1]["requestedAt"]
    [account] = await sandbox_subaccounts(sandbox, external_id=setup["id"])
    assert [x["request_id"] for x in account["lines"]] == [
        first_line["requestId"],
        line["requestId"],
    ]


async def test_a_line_placed_at_once_activates_the_setup(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    setup = await create_ok(api)
    assert setup["status"] == "PENDING"

    await configure_sandbox(sandbox, assign_immediately=True)
    payload = await request_line(api, setup["id"])
    assert payload["userErrors"] == []
    line = payload["phoneLine"]
    assert line["status"] == "ASSIGNED"
    assert re.fullmatch(r"\+[1-9]\d{6,14}", line["phoneNumber"])
    assert line["requestId"] is None
    assert line["assignedAt"] is not None

    after = await detail(api, setup["id"])
    assert after is not None
    assert after["status"] == "ACTIVE"
    assert after["phoneLineCount"] == 2
    assert [x["status"] for x in after["phoneLines"]] == ["PENDING", "ASSIGNED"]
    active = await list_setups(api, status="ACTIVE")
    assert [edge["node"]["id"] for edge in active["edges"]] == [setup["id"]]
    assert (await list_setups(api, status="PENDING"))["totalCount"] == 0


async def test_line_request_for_missing_malformed_or_foreign_setup_is_the_same_not_found(
    api: Api, other_api: Api, sandbox: httpx.AsyncClient
) -> None:
    foreign = await create_ok(other_api)
    mine = await create_ok(api)
    candidates = {
        "unknown": ids.new_id(ids.SETUP),
        "malformed": "not-an-id",
        "a phone line id": mine["phoneLines"][0]["id"],
        "another workspace's": foreign["id"],
    }
    answers = {}
    for case, setup_id in candidates.items():
        payload = await request_line(api, setup_id)
        assert payload["phoneLine"] is None, case
        answers[case] = payload["userErrors"]
    [reference] = answers["unknown"]
    assert reference["code"] == "NOT_FOUND"
    assert reference["message"]
    for case, errors in answers.items():
        assert errors == [reference], case

    [account] = await sandbox_subaccounts(sandbox, external_id=foreign["id"])
    assert len(account["lines"]) == 1
    foreign_after = await detail(other_api, foreign["id"])
    assert foreign_after is not None
    assert foreign_after["phoneLineCount"] == 1


# ---------------------------------------------------------------- listing


async def test_list_pages_newest_first_without_gaps_or_duplicates(api: Api) -> None:
    created = [(await create_ok(api))["id"] for _ in range(5)]
    newest_first = list(reversed(created))

    seen: list[str] = []
    after = None
    pages = []
    for _ in range(3):
        page = await list_setups(api, first=2, after=after)
        assert page["totalCount"] == 5
        ids_on_page = [edge["node"]["id"] for edge in page["edges"]]
        assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
        pages.append((ids_on_page, page["pageInfo"]["hasNextPage"]))
        seen.extend(ids_on_page)
        after = page["pageInfo"]["endCursor"]

    assert [has_next for _, has_next in pages] == [True, True, False]
    assert [len(page_ids) for page_ids, _ in pages] == [2, 2, 1]
    assert seen == newest_first

    beyond = await list_setups(api, first=2, after=after)
    assert beyond["edges"] == []
    assert beyond["pageInfo"] == {"hasNextPage": False, "endCursor": None}

    everything = await list_setups(api)
    assert [edge["node"]["id"] for edge in everything["edges"]] == newest_first
    assert everything["pageInfo"]["hasNextPage"] is False


async def test_first_is_bounded_and_zero_is_allowed(api: Api) -> None:
    await create_ok(api)
    for first in (101, 1000, -1):
        body = await api.graphql(LIST, {"first": first})
        assert body.get("errors"), first
        assert "first" in body["errors"][0]["message"], first
        assert body.get("data") is None, first

    empty = await list_setups(api, first=0)
    assert empty["edges"] == []
    assert empty["totalCount"] == 1
    assert empty["pageInfo"]["endCursor"] is None

    full = await list_setups(api, first=100)
    assert len(full["edges"]) == 1


async def test_invalid_cursor_is_a_graphql_error(api: Api) -> None:
    setup = await create_ok(api)
    line_id = setup["phoneLines"][0]["id"]
    line_cursor = base64.urlsafe_b64encode(f"c1:{line_id}".encode()).decode()
    for cursor in ("not a cursor", "%%%", "Zm9vYmFy", line_cursor, ""):
        body = await api.graphql(LIST, {"first": 2, "after": cursor})
        assert body.get("errors"), cursor
        assert body.get("data") is None, cursor


async def test_status_filter_applies_to_edges_and_total_count(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    pending = [(await create_ok(api))["id"] for _ in range(2)]
    await configure_sandbox(sandbox, assign_immediately=True)
    active = [(await create_ok(api))["id"] for _ in range(3)]
    await configure_sandbox(sandbox)

    only_active = await list_setups(api, status="ACTIVE")
    assert only_active["totalCount"] == 3
    assert [edge["node"]["id"] for edge in only_active["edges"]] == list(reversed(active))
    assert {edge["node"]["status"] for edge in only_active["edges"]} == {"ACTIVE"}

    only_pending = await list_setups(api, status="PENDING")
    assert only_pending["totalCount"] == 2
    assert [edge["node"]["id"] for edge in only_pending["edges"]] == list(reversed(pending))

    assert (await list_setups(api))["totalCount"] == 5

    first_page = await list_setups(api, status="ACTIVE", first=2)
    assert first_page["pageInfo"]["hasNextPage"] is True
    second_page = await list_setups(
        api, status="ACTIVE", first=2, after=first_page["pageInfo"]["endCursor"]
    )
    assert second_page["pageInfo"]["hasNextPage"] is False
    assert [edge["node"]["id"] for edge in second_page["edges"]] == [active[0]]


# ---------------------------------------------------------------- detail and node


async def test_detail_returns_every_line_record(api: Api, sandbox: httpx.AsyncClient) -> None:
    setup = await create_ok(api, businessName="Detail Dental", label="Reception")
    await configure_sandbox(sandbox, assign_immediately=True)
    added = (await request_line(api, setup["id"]))["phoneLine"]

    found = await detail(api, setup["id"])
    assert found is not None
    assert found["id"] == setup["id"]
    assert (found["businessName"], found["label"]) == ("Detail Dental", "Reception")
    assert found["status"] == "ACTIVE"
    assert found["createdAt"] == setup["createdAt"]
    assert found["updatedAt"] >= setup["updatedAt"]
    assert found["phoneLineCount"] == 2
    pending, assigned = found["phoneLines"]
    assert pending == setup["phoneLines"][0]
    assert pending["status"] == "PENDING"
    assert pending["requestId"].startswith("lr_")
    assert pending["phoneNumber"] is None
    assert pending["assignedAt"] is None
    assert assigned == added
    assert assigned["phoneNumber"].startswith("+")
    assert assigned["requestedAt"] is not None


async def test_node_resolves_own_setups_and_lines_and_nothing_else(
    api: Api, other_api: Api
) -> None:
    setup = await create_ok(api, businessName="Node Dental")
    line_id = setup["phoneLines"][0]["id"]

    as_setup = (await api.data(NODE, {"id": setup["id"]}))["node"]
    assert as_setup == {
        "__typename": "IMessageSetup",
        "id": setup["id"],
        "businessName": "Node Dental",
    }

    as_line = (await api.data(NODE, {"id": line_id}))["node"]
    assert as_line == {"__typename": "PhoneLine", "id": line_id, "status": "PENDING"}

    foreign = await create_ok(other_api)
    missing = {
        "unknown setup": ids.new_id(ids.SETUP),
        "unknown line": ids.new_id(ids.PHONE_LINE),
        "malformed": "hello",
        "empty": "",
        "foreign setup": foreign["id"],
        "foreign line": foreign["phoneLines"][0]["id"],
    }
    for case, node_id in missing.items():
        node_body = await api.graphql(NODE, {"id": node_id})
        assert node_body == {"data": {"node": None}}, case
        detail_body = await api.graphql(DETAIL, {"id": node_id})
        assert detail_body == {"data": {"imessageSetup": None}}, case

    line_as_setup = await api.graphql(DETAIL, {"id": line_id})
    assert line_as_setup == {"data": {"imessageSetup": None}}
    assert (await api.data(NODE, {"id": foreign["id"]}))["node"] is None
    assert (await other_api.data(NODE, {"id": foreign["id"]}))["node"]["id"] == foreign["id"]

    connection = await list_setups(api)
    assert connection["totalCount"] == 1
    assert [edge["node"]["id"] for edge in connection["edges"]] == [setup["id"]]


# ---------------------------------------------------------------- authentication


async def test_graphql_requires_a_valid_api_key_except_for_the_graphiql_page(api: Api) -> None:
    await create_ok(api)
    body = {"query": "{ imessageSetups { totalCount } }"}
    unknown_key = "bl_live_" + "A" * 43
    for headers in (
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {api.key}"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Bearer {api.key}x"},
        {"Authorization": f"Bearer {unknown_key}"},
    ):
        response = await api.http.post("/graphql", json=body, headers=headers)
        assert response.status_code == 401, headers
        assert "data" not in response.json(), headers
        assert "totalCount" not in response.text, headers

    via_get = await api.http.get("/graphql", params={"query": "{ imessageSetups { totalCount } }"})
    assert via_get.status_code == 401
    assert "data" not in via_get.json()

    page = await api.http.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "graphiql" in page.text.lower()


# ---------------------------------------------------------------- query counts


async def test_list_issues_the_same_number_of_queries_for_one_or_many_setups(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    setups = list(await asyncio.gather(*(create_ok(api) for _ in range(12))))
    extra = await asyncio.gather(*(request_line(api, setup["id"]) for setup in setups[::3]))
    assert [payload["userErrors"] for payload in extra] == [[]] * 4

    shapes = {
        "count only": "id phoneLineCount",
        "with lines": "id phoneLineCount phoneLines { id }",
    }
    for name, fields in shapes.items():
        for with_total in (False, True):
            total = "totalCount" if with_total else ""
            query = (
                "query($first: Int) { imessageSetups(first: $first) { "
                f"{total} edges {{ node {{ {fields} }} }} }} }}"
            )
            counts = {}
            for first in (1, 100):
                with setup_and_line_statements() as statements:
                    data = await api.data(query, {"first": first})
                counts[first] = len(statements)
                assert len(data["imessageSetups"]["edges"]) == min(first, 12)
            assert counts[1] > 0, (name, with_total)
            assert counts[1] == counts[100], (name, with_total, counts)
            assert counts[100] <= 3, (name, with_total, counts)

    data = await api.data(
        "{ imessageSetups(first: 100) { edges { node { id phoneLineCount phoneLines { id } } } } }"
    )
    by_id = {edge["node"]["id"]: edge["node"] for edge in data["imessageSetups"]["edges"]}
    for index, setup in enumerate(setups):
        expected = 2 if index % 3 == 0 else 1
        node = by_id[setup["id"]]
        assert node["phoneLineCount"] == expected
        assert len(node["phoneLines"]) == expected
        assert node["phoneLines"][0]["id"] == setup["phoneLines"][0]["id"]


async def test_reads_in_flight_together_each_get_their_own_answer(api: Api, other_api: Api) -> None:
    """Concurrent runs of one compiled read (which PostgreSQL may answer in shared
    statements): each caller gets the answer for its own values and workspace,
    including none for a setup of another workspace or an id that names nothing."""
    mine = await asyncio.gather(*(create_ok(api, businessName=f"Mine {i}") for i in range(3)))
    theirs = await asyncio.gather(
        *(create_ok(other_api, businessName=f"Theirs {i}") for i in range(3))
    )
    asks = [(client, setup["id"]) for client in (api, other_api) for setup in mine + theirs]
    alone = [await detail(client, setup_id) for client, setup_id in asks]
    assert sum(answer is not None for answer in alone) == 6  # each sees only its own

    rounds = 6
    together = await asyncio.gather(
        *(detail(client, setup_id) for _ in range(rounds) for client, setup_id in asks)
    )
    bad = await asyncio.gather(
        *(api.graphql(DETAIL, {"id": "x" * 2000}) for _ in range(4)),
        *(detail(api, setup["id"]) for setup in mine),
    )
    assert together == alone * rounds
    assert bad[:4] == [{"data": {"imessageSetup": None}}] * 4
    assert bad[4:] == alone[:3]


# ---------------------------------------------------------------- secrets


async def test_no_field_exposes_credentials_or_the_webhook_secret(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    schema = (await api.data(INTROSPECTION))["__schema"]
    names = [
        f"{t['name']}.{f['name']}"
        for t in schema["types"]
        for f in (t["fields"] or []) + (t["inputFields"] or [])
    ]
    assert "IMessageSetup.businessName" in names
    assert [n for n in names if SECRET_WORDS.search(n)] == []
    assert [t["name"] for t in schema["types"] if SECRET_WORDS.search(t["name"])] == []

    created = await create_ok(api)
    await configure_sandbox(sandbox, assign_immediately=True)
    added = await request_line(api, created["id"])
    [account] = await sandbox_subaccounts(sandbox, external_id=created["id"])
    secret_values = {
        account["webhook_secret"],
        account["webhook_secret"].removeprefix("whsec_"),
        account["credentials"]["api_key"],
        account["credentials"]["api_secret"],
    }
    assert all(len(s) >= 8 for s in secret_values)

    bodies = [
        json.dumps(created),
        json.dumps(added),
        json.dumps(await api.graphql(DETAIL, {"id": created["id"]})),
        json.dumps(await api.graphql(NODE, {"id": created["id"]})),
        json.dumps(await api.graphql(LIST, {"first": 100})),
        json.dumps(await api.graphql(CREATE, {"input": setup_input()})),
    ]
    for body in bodies:
        for secret in secret_values:
            assert secret not in body
