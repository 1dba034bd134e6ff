"""Compiled mutations answer what ordinary execution answers, byte for byte once the
values that differ by nature (ids, times, the provider's request ids) are masked.

Two servers share one database: one answers mutations through the compiled path (the
default), the other executes them through Strawberry (``compiled_reads=False``). Each
document runs on each server against objects of its own in the same state: a setup
made for it, a line of that setup, an unknown id, input that fails validation.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from litestar import Litestar

from blueline.access import create_api_key
from blueline.api.live import Runner
from blueline.api.planning import MutationPlan
from blueline.persistence.database import Database
from tests.conftest import configure_sandbox
from tests.support.paths import compiled_and_ordinary

MASKED = re.compile(
    r"\b(?:ims|pl|lr|aud|evt)_[0-9A-Za-z]+\b|\d{4}-\d\d-\d\dT[0-9:.]+(?:Z|[+-]\d\d:\d\d)?"
    r'|(?<="requestId":")[^"]+'
)

SETUP = (
    "id businessName label status phoneLineCount createdAt updatedAt suspendedAt closedAt "
    "phoneLines { id status phoneNumber requestId requestedAt assignedAt releasedAt } "
    "all: phoneLines(includeReleased: true) { id status }"
)
ERRORS = "userErrors { __typename field message code }"


@dataclass
class Server:
    url: str
    app: Litestar


@dataclass
class Pair:
    compiled: Server
    ordinary: Server
    key: str

    async def one(
        self,
        server: Server,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        key: str | None = "",
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.key}"} if key is not None else {}
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await client.post(
                "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
            )

    async def each(
        self, query: str, variables: dict[str, Any] | None = None, *, key: str | None = ""
    ) -> list[bytes]:
        """The same document on both servers (compiled first)."""
        return [
            (await self.one(server, query, variables, key=key)).content
            for server in (self.compiled, self.ordinary)
        ]

    async def apart(self, query: str, ids: list[str]) -> list[bytes]:
        """The document on each server, against that server's own object (``$id``)."""
        return [
            (await self.one(server, query, {"id": object_id})).content
            for server, object_id in zip((self.compiled, self.ordinary), ids, strict=True)
        ]

    async def setups(self) -> list[str]:
        """A fresh setup for each server, with one pending line."""
        query = (
            'mutation { createImessageSetup(input: {businessName: "Made", label: "Desk"}) '
            "{ setup { id } } }"
        )
        made = []
        for server in (self.compiled, self.ordinary):
            response = await self.one(server, query)
            made.append(response.json()["data"]["createImessageSetup"]["setup"]["id"])
        return made

    async def lines(self, setups: list[str]) -> list[str]:
        query = "query($id: ID!) { imessageSetup(id: $id) { phoneLines { id } } }"
        found = []
        for setup_id in setups:
            response = await self.one(self.compiled, query, {"id": setup_id})
            found.append(response.json()["data"]["imessageSetup"]["phoneLines"][0]["id"])
        return found


@pytest.fixture
async def pair(
    database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient
) -> AsyncIterator[Pair]:
    await configure_sandbox(sandbox, auto_assign_after_s=None)
    db = Database(database_url)
    try:
        key = await create_api_key(db, "clinic-a")
    finally:
        await db.dispose()
    with compiled_and_ordinary(database_url, sandbox_url) as (compiled, ordinary):
        yield Pair(Server(*compiled), Server(*ordinary), key)


def masked(answer: bytes) -> str:
    return MASKED.sub("…", answer.decode())


def compiled_plans(server: Server, query: str) -> list[MutationPlan]:
    runner: Runner = server.app.state.runner
    plans = runner.documents.prepare(query).plans.values()
    return [plan for plan in plans if isinstance(plan, MutationPlan)]


CREATES: list[tuple[str, dict[str, Any]]] = [
    (
        "mutation($input: CreateImessageSetupInput!) { createImessageSetup(input: $input) "
        "{ __typename setup { " + SETUP + " __typename } " + ERRORS + " } }",
        {"input": {"businessName": "Northwind Dental", "label": "Front desk"}},
    ),
    (
        "mutation M($n: String!) { t: __typename made: createImessageSetup(input: "
        '{businessName: $n, label: "é 日本 \\"q\\""}) { e: userErrors { m: message } '
        "s: setup { ...S } } } fragment S on IMessageSetup { n: businessName l: label }",
        {"n": 'Quoted "Clinic" ✓'},
    ),
    (
        "mutation($skip: Boolean!) { createImessageSetup(input: "
        '{businessName: "Skipped", label: "x"}) { setup @skip(if: $skip) { id } '
        "userErrors @include(if: $skip) { code } } }",
        {"skip": True},
    ),
    # Input the service refuses: userErrors, no setup.
    (
        'mutation { createImessageSetup(input: {businessName: "   ", label: ""}) '
        "{ setup { id } " + ERRORS + " } }",
        {},
    ),
    (
        "mutation($input: CreateImessageSetupInput!) { createImessageSetup(input: $input) "
        "{ setup { id } " + ERRORS + " } }",
        {"input": {"businessName": "x" * 300, "label": "Desk"}},
    ),
]


@pytest.mark.parametrize(("query", "variables"), CREATES)
async def test_creates_answer_as_ordinary_execution_does(
    pair: Pair, query: str, variables: dict[str, Any]
) -> None:
    compiled, ordinary = await pair.each(query, variables)

    assert masked(compiled) == masked(ordinary)
    assert compiled.startswith(b'{"data":{'), compiled
    assert compiled_plans(pair.compiled, query), "the compiled path did not answer"
    assert not compiled_plans(pair.ordinary, query)


async def test_a_retried_create_with_other_input_answers_as_ordinary_execution_does(
    pair: Pair,
) -> None:
    query = (
        "mutation($n: String!, $k: String) { createImessageSetup(input: "
        '{businessName: $n, label: "Desk", idempotencyKey: $k}) { setup { id } ' + ERRORS + " } }"
    )
    servers = ((pair.compiled, "retry-a"), (pair.ordinary, "retry-b"))
    for server, key in servers:
        first = await pair.one(server, query, {"n": "First", "k": key})
        assert first.json()["data"]["createImessageSetup"]["userErrors"] == []
    compiled, ordinary = [
        (await pair.one(server, query, {"n": "Other", "k": key})).content for server, key in servers
    ]
    assert b"IDEMPOTENCY" in compiled
    assert masked(compiled) == masked(ordinary)


SETUP_CHANGES = [
    ("updateImessageSetup", 'businessName: "Renamed", label: "Back office"'),
    ("suspendImessageSetup", ""),
    ("closeImessageSetup", ""),
]


@pytest.mark.parametrize(("field", "extra"), SETUP_CHANGES)
async def test_setup_changes_answer_as_ordinary_execution_does(
    pair: Pair, field: str, extra: str
) -> None:
    query = (
        f"mutation($id: ID!) {{ {field}(input: {{setupId: $id {extra}}}) "
        f"{{ __typename setup {{ {SETUP} }} {ERRORS} }} }}"
    )
    setups = await pair.setups()
    compiled, ordinary = await pair.apart(query, setups)
    assert masked(compiled) == masked(ordinary)
    assert b'"userErrors":[]' in compiled, compiled
    # Again on the same setups: closed or suspended now, the change is refused alike.
    compiled, ordinary = await pair.apart(query, setups)
    assert masked(compiled) == masked(ordinary)
    assert compiled_plans(pair.compiled, query)


async def test_line_changes_and_unknown_ids_answer_as_ordinary_execution_does(
    pair: Pair,
) -> None:
    setups = await pair.setups()
    request = (
        "mutation($id: ID!) { requestImessagePhoneLine(input: {setupId: $id}) "
        "{ phoneLine { __typename id status phoneNumber requestId requestedAt } " + ERRORS + " } }"
    )
    release = (
        "mutation($id: ID!) { releaseImessagePhoneLine(input: {phoneLineId: $id}) "
        "{ phoneLine { id status releasedAt } " + ERRORS + " } }"
    )
    lines = await pair.lines(setups)
    for query, ids in ((request, setups), (release, lines), (release, lines)):
        compiled, ordinary = await pair.apart(query, ids)
        assert masked(compiled) == masked(ordinary), query
        assert compiled.startswith(b'{"data":{'), compiled
    for query in (request, release):
        compiled, ordinary = await pair.each(query, {"id": "ims_01ZZZZZZZZZZZZZZZZZZZZZZZZ"})
        assert masked(compiled) == masked(ordinary)
        assert compiled_plans(pair.compiled, query)


async def test_without_a_key_and_with_bad_variables_both_paths_refuse_alike(
    pair: Pair,
) -> None:
    query = (
        "mutation($input: CreateImessageSetupInput!) { createImessageSetup(input: $input) "
        "{ setup { id } } }"
    )
    for variables in ({"input": {"businessName": 3}}, {"input": None}, {}):
        compiled, ordinary = await pair.each(query, variables)
        assert masked(compiled) == masked(ordinary)
        assert b"errors" in compiled
    good = {"input": {"businessName": "Keyless", "label": "x"}}
    for key in (None, "bl_not-a-key"):
        compiled, ordinary = await pair.each(query, good, key=key)
        assert masked(compiled) == masked(ordinary)
        assert b"errors" in compiled
