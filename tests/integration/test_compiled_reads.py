"""Compiled reads answer byte for byte what ordinary execution answers.

Two servers share one database: one compiles query documents to SQL (the default), the
other executes every field through Strawberry (``compiled_reads=False``). Every document
here, fixed or generated over the whole read schema (aliases, fragments, directives,
variables, nested lines, errors), must get identical bytes from both.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blueline.access import create_api_key
from blueline.persistence.database import Database, observing_statements
from tests.conftest import configure_sandbox
from tests.support.paths import compiled_and_ordinary


@dataclass
class Pair:
    compiled: str
    ordinary: str
    key: str
    ids: dict[str, str]

    def answers(self, query: str, variables: dict[str, Any] | None = None) -> tuple[bytes, bytes]:
        body = {"query": query, "variables": variables or {}}
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(timeout=30) as client:
            a = client.post(self.compiled + "/graphql", json=body, headers=headers)
            b = client.post(self.ordinary + "/graphql", json=body, headers=headers)
        assert a.status_code == b.status_code, (query, a.text, b.text)
        return a.content, b.content


CREATE = """mutation($n: String!) { createImessageSetup(input: {businessName: $n, label: "Desk"})
  { setup { id phoneLines { id requestId } } userErrors { code } } }"""


async def _gql(client: httpx.AsyncClient, key: str, query: str, **variables: Any) -> Any:
    response = await client.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {key}"},
    )
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


async def _seed(url: str, key: str, sandbox: httpx.AsyncClient) -> dict[str, str]:
    """Setups in every status, lines in every status, audit records."""
    ids: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        made = []
        for name in ("Active Dental", "Suspended Clinic", 'Closed "Quotes"', "Pending é 日本"):
            data = await _gql(client, key, CREATE, n=name)
            made.append(data["createImessageSetup"]["setup"])
        active, suspended, closed, pending = made
        extra = await _gql(
            client,
            key,
            "mutation($s: ID!) { requestImessagePhoneLine(input: {setupId: $s}) "
            "{ phoneLine { id requestId } } }",
            s=active["id"],
        )
        extra_line = extra["requestImessagePhoneLine"]["phoneLine"]
        for request_id in (active["phoneLines"][0]["requestId"], extra_line["requestId"]):
            placed = await sandbox.post(f"/sandbox/line-requests/{request_id}/assign", json={})
            placed.raise_for_status()
        await asyncio.sleep(1.0)  # the webhooks land
        await _gql(
            client,
            key,
            "mutation($l: ID!) { releaseImessagePhoneLine(input: {phoneLineId: $l}) "
            "{ userErrors { code } } }",
            l=extra_line["id"],
        )
        await _gql(
            client,
            key,
            "mutation($s: ID!) { suspendImessageSetup(input: {setupId: $s}) "
            "{ userErrors { code } } }",
            s=suspended["id"],
        )
        await _gql(
            client,
            key,
            "mutation($s: ID!) { closeImessageSetup(input: {setupId: $s}) "
            "{ userErrors { code } } }",
            s=closed["id"],
        )
        audit = await _gql(client, key, "{ auditEvents(first: 1) { edges { node { id } } } }")
    ids.update(
        active=active["id"],
        suspended=suspended["id"],
        closed=closed["id"],
        pending=pending["id"],
        line=active["phoneLines"][0]["id"],
        released=extra_line["id"],
        audit=audit["auditEvents"]["edges"][0]["node"]["id"],
    )
    return ids


@pytest.fixture
async def pair(
    database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient
) -> AsyncIterator[Pair]:
    await configure_sandbox(sandbox, auto_assign_after_s=None)
    db = Database(database_url)
    try:
        key = await create_api_key(db, "clinic-a")
        other = await create_api_key(db, "clinic-b")
    finally:
        await db.dispose()
    with compiled_and_ordinary(database_url, sandbox_url) as ((a, _), (b, _)):
        ids = await _seed(a, key, sandbox)
        # Another workspace's objects must stay invisible on both paths.
        async with httpx.AsyncClient(base_url=a, timeout=30) as client:
            foreign = await _gql(client, other, CREATE, n="Someone Else")
        ids["foreign"] = foreign["createImessageSetup"]["setup"]["id"]
        yield Pair(a, b, key, ids)


SETUP_FIELDS = (
    "id businessName label status phoneLineCount createdAt updatedAt suspendedAt closedAt"
)
LINE_FIELDS = "id status phoneNumber requestId requestedAt assignedAt releasedAt"
AUDIT_FIELDS = "id occurredAt action actor setupId phoneLineId requestId changes"

FIXED: list[tuple[str, dict[str, Any]]] = [
    ("{ imessageSetups { edges { node { " + SETUP_FIELDS + " __typename } } } }", {}),
    (
        "query Page($first: Int, $after: String) { imessageSetups(first: $first, after: $after)"
        " { __typename totalCount edges { __typename cursor node { id } }"
        " pageInfo { __typename hasNextPage hasPreviousPage startCursor endCursor } } }",
        {"first": 2},
    ),
    ("{ list: imessageSetups(first: 3) { all: totalCount e: edges { n: node { i: id } } } }", {}),
    ("{ imessageSetups(status: ACTIVE) { totalCount edges { node { id status } } } }", {}),
    ("{ imessageSetups(status: CLOSED) { totalCount edges { node { id closedAt } } } }", {}),
    (
        "query S($s: IMessageSetupStatus = SUSPENDED) { imessageSetups(status: $s)"
        " { totalCount edges { node { id suspendedAt } } } }",
        {},
    ),
    ("query S($s: IMessageSetupStatus) { imessageSetups(status: $s) { totalCount } }", {"s": None}),
    ("{ imessageSetups(first: 0) { totalCount pageInfo { hasNextPage endCursor } } }", {}),
    ("{ imessageSetups { ...C } } fragment C on IMessageSetupConnection { totalCount }", {}),
    (
        "{ imessageSetups { edges { node { id phoneLines { " + LINE_FIELDS + " } "
        "all: phoneLines(includeReleased: true) { id status releasedAt } } } } }",
        {},
    ),
    (
        "query Q($x: Boolean!, $r: Boolean) { imessageSetups { totalCount @include(if: $x) "
        "edges { node { phoneLines(includeReleased: $r) { id } } } } }",
        {"x": True, "r": True},
    ),
    ("{ imessageSetups(first: 101) { totalCount } }", {}),
    ('{ imessageSetups(after: "bm9wZQ") { totalCount } }', {}),
    ("query Q($f: Int) { imessageSetups(first: $f) { totalCount } }", {"f": "ten"}),
    ('{ imessageSetups { totalCount } imessageSetup(id: "ims_x") { id } }', {}),
    ("{ imessageSetups { edges { node { id id ... on Node { id } } } } }", {}),
    ("query Q($f: Int!) { imessageSetups(first: $f) { totalCount } }", {}),
    (
        "{ auditEvents(first: 3) { edges { cursor node { " + AUDIT_FIELDS + " } } "
        "pageInfo { hasNextPage endCursor } } }",
        {},
    ),
    ('{ auditEvents(after: "a1:2") { edges { node { action } } } }', {}),
    ('{ auditEvents(after: "c1:nope") { edges { node { action } } } }', {}),
    ("{ __typename }", {}),
]


def _by_id(pair: Pair) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, object_id in pair.ids.items():
        yield (
            "query N($id: ID!) { node(id: $id) { __typename id ... on IMessageSetup { "
            + SETUP_FIELDS
            + " phoneLines(includeReleased: true) { id status } } ... on PhoneLine { "
            + LINE_FIELDS
            + " } ... on AuditEvent { "
            + AUDIT_FIELDS
            + " } } one: imessageSetup(id: $id) { id label } }",
            {"id": object_id, "_case": name},
        )


def test_fixed_documents_answer_identically(pair: Pair) -> None:
    for query, variables in [*FIXED, *_by_id(pair)]:
        variables = {k: v for k, v in variables.items() if not k.startswith("_")}
        compiled, ordinary = pair.answers(query, variables)
        assert compiled == ordinary, query
    # Setups of the other workspace are missing, not forbidden, on both.
    compiled, _ = pair.answers(
        "query N($id: ID!) { node(id: $id) { id } }", {"id": pair.ids["foreign"]}
    )
    assert json.loads(compiled) == {"data": {"node": None}}


def test_a_compiled_document_is_one_statement_whatever_it_nests(pair: Pair) -> None:
    query = (
        "{ imessageSetups { totalCount edges { node { id phoneLines { id } } } } "
        "auditEvents { edges { node { id } } } imessageSetup(id: $id) { id } }"
    ).replace("{ imessageSetups", "query Q($id: ID!) { imessageSetups", 1)
    body = {"query": query, "variables": {"id": pair.ids["active"]}}
    headers = {"Authorization": f"Bearer {pair.key}"}
    with httpx.Client(timeout=30) as client:
        client.post(pair.compiled + "/graphql", json=body, headers=headers)  # key cached
        seen: list[str] = []
        with observing_statements(seen.append):
            answer = client.post(pair.compiled + "/graphql", json=body, headers=headers)
    assert "errors" not in answer.json()
    touching = [
        s for s in seen if any(t in s for t in ("imessage_setup", "phone_line", "audit_event"))
    ]
    assert len(touching) == 1, touching


# ----------------------------------------------------------------------- generated

_SETUP = [
    "id",
    "businessName",
    "label",
    "status",
    "phoneLineCount",
    "createdAt",
    "updatedAt",
    "suspendedAt",
    "closedAt",
    "__typename",
]
_LINE = [
    "id",
    "status",
    "phoneNumber",
    "requestId",
    "requestedAt",
    "assignedAt",
    "releasedAt",
    "__typename",
]
_AUDIT = [
    "id",
    "occurredAt",
    "action",
    "actor",
    "setupId",
    "phoneLineId",
    "requestId",
    "changes",
    "__typename",
]
_DIRECTIVES = [
    "",
    "",
    "",
    " @skip(if: true)",
    " @include(if: true)",
    " @include(if: $flag)",
    " @skip(if: $flag)",
]
# An alias names one field only (a_id is always id), so repeated keys merge rather
# than conflict; conflicts are covered by the fixed documents' validation errors.
_ALIASES = [None, None, None, "a_", "b_"]


@st.composite
def _fields(draw: st.DrawFn, names: list[str], lines: bool) -> str:
    parts = []
    for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=5)):
        prefix = draw(st.sampled_from(_ALIASES))
        alias = f"{prefix}{name.strip('_')}: " if prefix else ""
        directive = draw(st.sampled_from(_DIRECTIVES))
        parts.append(f"{alias}{name}{directive}")
    if lines and draw(st.booleans()):
        argument = draw(
            st.sampled_from(
                [
                    "",
                    "(includeReleased: true)",
                    "(includeReleased: false)",
                    "(includeReleased: $released)",
                ]
            )
        )
        inner = draw(_fields(_LINE, lines=False))
        parts.append(f"phoneLines{argument} {{ {inner} }}")
    if draw(st.booleans()):
        parts.append("... on Node { id }")
    return " ".join(parts)


@st.composite
def documents(draw: st.DrawFn) -> str:
    roots = []
    for position in range(draw(st.integers(1, 3))):
        alias = f"r{position}: "
        kind = draw(st.sampled_from(["list", "one", "node", "audit", "typename"]))
        if kind == "list":
            args = draw(
                st.sampled_from(
                    [
                        "",
                        "(first: 2)",
                        "(first: $first)",
                        "(status: ACTIVE)",
                        "(status: $status)",
                        "(first: 1, after: $after)",
                    ]
                )
            )
            node = draw(_fields(_SETUP, lines=True))
            page = draw(
                st.sampled_from(
                    [
                        "",
                        "pageInfo { hasNextPage endCursor }",
                        "pageInfo { hasPreviousPage startCursor __typename }",
                    ]
                )
            )
            total = draw(st.sampled_from(["", "totalCount", "totalCount @include(if: $flag)"]))
            roots.append(
                f"{alias}imessageSetups{args} {{ {total} edges {{ cursor node {{ {node} }} }} "
                f"{page} }}"
            )
        elif kind == "one":
            roots.append(f"{alias}imessageSetup(id: $id) {{ {draw(_fields(_SETUP, lines=True))} }}")
        elif kind == "node":
            setup = draw(_fields(_SETUP, lines=True))
            line = draw(_fields(_LINE, lines=False))
            roots.append(
                f"{alias}node(id: $id) {{ __typename ... on IMessageSetup {{ {setup} }} "
                f"...L{position} }}"
            )
            roots.append(f"fragment L{position} on PhoneLine {{ {line} }}")
        elif kind == "audit":
            audit = draw(_fields(_AUDIT, lines=False))
            roots.append(f"{alias}auditEvents(first: 2) {{ edges {{ node {{ {audit} }} }} }}")
        else:
            roots.append(f"{alias}__typename")
    fragments = [r for r in roots if r.startswith("fragment ")]
    body = " ".join(r for r in roots if not r.startswith("fragment "))
    used = {
        name
        for name in ("flag", "first", "status", "after", "released", "id")
        if f"${name}" in body + " ".join(fragments)
    }
    types = {
        "flag": "Boolean!",
        "first": "Int",
        "status": "IMessageSetupStatus",
        "after": "String",
        "released": "Boolean",
        "id": "ID!",
    }
    declared = ", ".join(f"${n}: {types[n]}" for n in sorted(used))
    head = f"query Q({declared})" if declared else "query Q"
    return f"{head} {{ {body} }} {' '.join(dict.fromkeys(fragments))}"


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    document=documents(),
    flag=st.booleans(),
    first=st.sampled_from([None, 0, 1, 3, 100]),
    status=st.sampled_from([None, "ACTIVE", "PENDING", "SUSPENDED", "CLOSED"]),
    released=st.sampled_from([None, True, False]),
    target=st.sampled_from(
        ["active", "suspended", "closed", "line", "released", "audit", "foreign", "missing"]
    ),
)
def test_generated_documents_answer_identically(
    pair: Pair,
    document: str,
    flag: bool,
    first: int | None,
    status: str | None,
    released: bool | None,
    target: str,
) -> None:
    variables = {
        "flag": flag,
        "first": first,
        "status": status,
        "released": released,
        "id": pair.ids.get(target, "ims_01ZZZZZZZZZZZZZZZZZZZZZZZZ"),
        "after": f"c1:{pair.ids['suspended']}",
    }
    used = {k: v for k, v in variables.items() if f"${k}" in document}
    compiled, ordinary = pair.answers(document, used)
    assert compiled == ordinary, document
