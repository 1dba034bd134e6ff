"""The direct path for the setups list answers exactly what ordinary execution would."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from blueline.persistence.database import Database
from blueline.runtime import Runtime
from blueline.schema import build_schema
from blueline.schema.context import Context
from blueline.schema.fast_paths import SetupListFastPath
from blueline.security.access import authenticate, create_api_key
from tests.conftest import configure_sandbox

FAST = build_schema()
ORDINARY = build_schema(fast_paths=False)

FIELDS = "id businessName label status phoneLineCount createdAt updatedAt __typename"

HOT = [
    ("{ imessageSetups { edges { node { " + FIELDS + " } } } }", {}),
    (
        "query Page($first: Int, $after: String) { imessageSetups(first: $first, after: $after)"
        " { __typename totalCount edges { __typename cursor node { id } }"
        " pageInfo { __typename hasNextPage endCursor } } }",
        {"first": 2},
    ),
    ("{ list: imessageSetups(first: 3) { all: totalCount e: edges { n: node { i: id } } } }", {}),
    ("{ imessageSetups(status: ACTIVE) { totalCount edges { node { id status } } } }", {}),
    (
        "query S($s: IMessageSetupStatus = PENDING) { imessageSetups(status: $s)"
        " { totalCount edges { node { id } } } }",
        {},
    ),
    ("query S($s: IMessageSetupStatus) { imessageSetups(status: $s) { totalCount } }", {"s": None}),
    ("{ imessageSetups(first: 0) { totalCount pageInfo { hasNextPage endCursor } } }", {}),
    (
        "query F($first: Int) { imessageSetups(first: $first) { edges { cursor } } }",
        {"first": None},
    ),
]

NOT_HOT = [
    ("{ imessageSetups { ...C } } fragment C on IMessageSetupConnection { totalCount }", {}),
    ("{ imessageSetups { edges { node { id phoneLines { id } } } } }", {}),
    ("query Q($x: Boolean!) { imessageSetups { totalCount @include(if: $x) } }", {"x": True}),
    ("{ imessageSetups(first: 101) { totalCount } }", {}),
    ('{ imessageSetups(after: "bm9wZQ") { totalCount } }', {}),
    ("query Q($f: Int) { imessageSetups(first: $f) { totalCount } }", {"f": "ten"}),
    ('{ imessageSetups { totalCount } imessageSetup(id: "ims_x") { id } }', {}),
    ("{ imessageSetups { edges { node { id id } } } }", {}),
    ("query Q($f: Int!) { imessageSetups(first: $f) { totalCount } }", {}),
    ("query Q($a: String!) { imessageSetups(after: $a) { totalCount } }", {"a": None}),
]


async def _context(runtime: Runtime) -> Context:
    key = await create_api_key(runtime.db, "clinic-a")
    caller = await authenticate(runtime.db, f"Bearer {key}")
    assert caller is not None
    return Context(runtime=runtime, caller=caller)


async def _populate(runtime: Runtime, workspace_id: str, sandbox: httpx.AsyncClient) -> None:
    for i in range(5):
        await configure_sandbox(sandbox, assign_immediately=i % 2 == 0)
        row = await runtime.provisioning.create_setup(workspace_id, f"Clinic {i}", f"Desk {i}")
        if i == 1:
            await runtime.provisioning.request_line(workspace_id, row.setup.id)


async def _both(context: Context, query: str, variables: dict[str, Any]) -> tuple[Any, Any]:
    fast = await FAST.execute(query, variable_values=variables, context_value=context)
    ordinary = await ORDINARY.execute(query, variable_values=variables, context_value=context)
    return fast, ordinary


def _plain(result: Any) -> dict[str, Any]:
    return {
        "data": result.data,
        "errors": [e.formatted for e in result.errors or []],
    }


@pytest.mark.parametrize(("query", "variables"), HOT)
async def test_hot_list_queries_take_the_direct_path_with_identical_answers(
    runtime: Runtime, sandbox: httpx.AsyncClient, query: str, variables: dict[str, Any]
) -> None:
    context = await _context(runtime)
    await _populate(runtime, context.workspace_id(), sandbox)
    fast, ordinary = await _both(context, query, variables)
    assert _plain(fast) == _plain(ordinary)
    assert fast.errors is None
    assert any(plan is not None for key, plan in SetupListFastPath._plans.items() if query in key)


@pytest.mark.parametrize(("query", "variables"), NOT_HOT)
async def test_other_shapes_and_bad_input_take_the_ordinary_path(
    runtime: Runtime, sandbox: httpx.AsyncClient, query: str, variables: dict[str, Any]
) -> None:
    context = await _context(runtime)
    await _populate(runtime, context.workspace_id(), sandbox)
    fast, ordinary = await _both(context, query, variables)
    assert _plain(fast) == _plain(ordinary)


async def test_paging_through_the_direct_path_matches_ordinary_paging(
    runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    context = await _context(runtime)
    await _populate(runtime, context.workspace_id(), sandbox)
    query = HOT[1][0]
    after: str | None = None
    for _ in range(4):
        fast, ordinary = await _both(context, query, {"first": 2, "after": after})
        assert _plain(fast) == _plain(ordinary)
        assert fast.data is not None
        after = fast.data["imessageSetups"]["pageInfo"]["endCursor"]
        if after is None:
            break


async def test_other_workspaces_stay_invisible_on_the_direct_path(
    runtime: Runtime, sandbox: httpx.AsyncClient, database_url: str
) -> None:
    context = await _context(runtime)
    await _populate(runtime, context.workspace_id(), sandbox)
    db = Database(database_url)
    try:
        other_key = await create_api_key(db, "clinic-b")
        other = await authenticate(db, f"Bearer {other_key}")
    finally:
        await db.dispose()
    assert other is not None
    stranger = Context(runtime=runtime, caller=other)
    result = await FAST.execute(HOT[1][0], variable_values={}, context_value=stranger)
    assert result.data == {
        "imessageSetups": {
            "__typename": "IMessageSetupConnection",
            "totalCount": 0,
            "edges": [],
            "pageInfo": {"__typename": "PageInfo", "hasNextPage": False, "endCursor": None},
        }
    }
