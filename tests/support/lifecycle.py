"""A frontend's and an operator's view of a setup's lifecycle: the GraphQL documents, the
mutations by name, what the provider holds (through the sandbox's inspection view) and
what the database holds (events and audit records, counted by SQL)."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url

from blueline.persistence.database import Database
from tests.conftest import Api
from tests.support.waiting import eventually as eventually  # re-exported for the tests
from tests.support.ws import GraphQLSocket

LINE = "id status phoneNumber requestId requestedAt assignedAt releasedAt"
SETUP = (
    "id businessName label status phoneLineCount createdAt updatedAt suspendedAt closedAt "
    f"phoneLines {{ {LINE} }} allLines: phoneLines(includeReleased: true) {{ {LINE} }}"
)

CREATE = f"""
mutation Create($input: CreateImessageSetupInput!) {{
  createImessageSetup(input: $input) {{ setup {{ {SETUP} }} userErrors {{ field message code }} }}
}}"""

DETAIL = f"query Detail($id: ID!) {{ imessageSetup(id: $id) {{ {SETUP} }} }}"

LIST = """
query List($status: IMessageSetupStatus) {
  imessageSetups(first: 100, status: $status) { totalCount edges { node { id status } } }
}"""

AUDIT = """
query Audit($first: Int, $after: String, $setupId: ID) {
  auditEvents(first: $first, after: $after, setupId: $setupId) {
    edges { cursor node { id occurredAt action actor setupId phoneLineId requestId changes } }
    pageInfo { hasNextPage endCursor }
  }
}"""

# name -> (mutation field, input type, payload field)
MUTATIONS: dict[str, tuple[str, str, str]] = {
    "update": ("updateImessageSetup", "UpdateImessageSetupInput", "setup"),
    "suspend": ("suspendImessageSetup", "SuspendImessageSetupInput", "setup"),
    "reactivate": ("reactivateImessageSetup", "ReactivateImessageSetupInput", "setup"),
    "close": ("closeImessageSetup", "CloseImessageSetupInput", "setup"),
    "release": ("releaseImessagePhoneLine", "ReleaseImessagePhoneLineInput", "phoneLine"),
    "request_line": ("requestImessagePhoneLine", "RequestImessagePhoneLineInput", "phoneLine"),
}


def mutation_document(name: str) -> str:
    field, input_type, result = MUTATIONS[name]
    selection = SETUP if result == "setup" else LINE
    return (
        f"mutation M($input: {input_type}!) {{ {field}(input: $input) {{ "
        f"{result} {{ {selection} }} userErrors {{ field message code }} }} }}"
    )


async def graphql(
    api: Api,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    key: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The response's ``data`` (a GraphQL error fails the test)."""
    headers = {"Authorization": f"Bearer {key or api.key}"}
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    response = await api.http.post(
        "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


async def mutate(
    api: Api, name: str, key: str | None = None, request_id: str | None = None, **fields: Any
) -> dict[str, Any]:
    """``{setup|phoneLine, userErrors}`` of one mutation."""
    data = await graphql(
        api, mutation_document(name), {"input": fields}, key=key, request_id=request_id
    )
    payload: dict[str, Any] = data[MUTATIONS[name][0]]
    return payload


def codes(payload: dict[str, Any]) -> list[str]:
    return [error["code"] for error in payload["userErrors"]]


async def create_setup(
    api: Api,
    name: str = "Acme Dental",
    label: str = "Front desk",
    *,
    key: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    data = await graphql(
        api,
        CREATE,
        {"input": {"businessName": name, "label": label}},
        key=key,
        request_id=request_id,
    )
    payload = data["createImessageSetup"]
    assert payload["userErrors"] == [], payload
    setup: dict[str, Any] = payload["setup"]
    return setup


async def detail(api: Api, setup_id: str, key: str | None = None) -> dict[str, Any] | None:
    found: dict[str, Any] | None = (await graphql(api, DETAIL, {"id": setup_id}, key=key))[
        "imessageSetup"
    ]
    return found


async def current(api: Api, setup_id: str) -> dict[str, Any]:
    found = await detail(api, setup_id)
    assert found is not None, setup_id
    return found


async def listed(api: Api, status: str | None = None) -> list[str]:
    data = await graphql(api, LIST, {"status": status})
    return [edge["node"]["id"] for edge in data["imessageSetups"]["edges"]]


async def audit_page(
    api: Api,
    *,
    first: int = 100,
    after: str | None = None,
    setup_id: str | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    data = await graphql(api, AUDIT, {"first": first, "after": after, "setupId": setup_id}, key=key)
    page: dict[str, Any] = data["auditEvents"]
    return page


async def audit_records(
    api: Api, setup_id: str | None = None, key: str | None = None
) -> list[dict[str, Any]]:
    """Every audit record the caller sees (newest first), through the API."""
    page = await audit_page(api, setup_id=setup_id, key=key)
    assert not page["pageInfo"]["hasNextPage"]
    return [edge["node"] for edge in page["edges"]]


# -- live updates

SNAPSHOT = (
    "id businessName label status phoneLineCount suspendedAt closedAt "
    "phoneLines(includeReleased: true) { id status phoneNumber }"
)
SETUP_UPDATES = f"""
subscription SetupUpdates($setupId: ID, $after: String) {{
  imessageSetupUpdates(setupId: $setupId, after: $after) {{
    eventId change setup {{ {SNAPSHOT} }}
  }}
}}"""
LINE_UPDATES = """
subscription LineUpdates($setupId: ID, $after: String) {
  phoneLineUpdates(setupId: $setupId, after: $after) {
    eventId setup { id status } phoneLine { id status phoneNumber releasedAt }
  }
}"""
SNAPSHOT_NOW = f"query Now($id: ID!) {{ imessageSetup(id: $id) {{ {SNAPSHOT} }} }}"


async def live(
    api: Api, ws: GraphQLSocket, op: str, setup_id: str, prefix: str = "Live check"
) -> str:
    """Relabel ``setup_id`` until an ``imessageSetupUpdates`` subscription delivers the
    change live; the eventId of the newest relabelling. Relabellings made before the
    subscription listened are lost, and any that arrive late are skipped."""
    loop = asyncio.get_running_loop()
    for attempt in range(20):
        label = f"{prefix} {attempt}"
        changed = await mutate(api, "update", setupId=setup_id, label=label)
        assert changed["userErrors"] == [], changed
        deadline = loop.time() + 1.0
        while (left := deadline - loop.time()) > 0:
            try:
                update = (await ws.next_data(op, timeout=left))["imessageSetupUpdates"]
            except TimeoutError:
                break
            if update["setup"]["id"] == setup_id and update["setup"]["label"] == label:
                return str(update["eventId"])
    raise AssertionError("the subscription never delivered a live update")


async def updates_of(
    ws: GraphQLSocket, op: str, setup_id: str, count: int, root: str = "imessageSetupUpdates"
) -> list[dict[str, Any]]:
    """The next ``count`` updates about ``setup_id`` (others are skipped)."""
    found: list[dict[str, Any]] = []
    while len(found) < count:
        update: dict[str, Any] = (await ws.next_data(op))[root]
        if update["setup"]["id"] == setup_id:
            found.append(update)
    return found


# -- the provider's side


async def upstream(sandbox: httpx.AsyncClient, setup_id: str) -> dict[str, Any]:
    """The setup's subaccount as the sandbox holds it (secrets and lines included)."""
    response = await sandbox.get("/sandbox/subaccounts", params={"external_id": setup_id})
    response.raise_for_status()
    [account] = response.json()["data"]
    return dict(account)


def upstream_lines(account: dict[str, Any]) -> dict[str, str]:
    """request id -> status upstream."""
    return {line["request_id"]: line["status"] for line in account["lines"]}


async def place(sandbox: httpx.AsyncClient, request_id: str) -> str:
    placed = await sandbox.post(f"/sandbox/line-requests/{request_id}/assign", json={})
    assert placed.status_code == 200, placed.text
    return str(placed.json()["phone_number"])


async def configure(sandbox: httpx.AsyncClient, **config: Any) -> None:
    """Replace the sandbox config; lines are never placed on their own unless asked."""
    config.setdefault("auto_assign_after_s", None)
    response = await sandbox.put("/sandbox/config", json=config)
    response.raise_for_status()


# -- what the database holds


async def scalar(db: Database, sql: str, **params: Any) -> Any:
    async with db.session() as session:
        return (await session.execute(text(sql), params)).scalar()


async def event_types(db: Database, setup_id: str) -> list[str]:
    """The setup's events in log order."""
    async with db.session() as session:
        rows = await session.execute(
            text("SELECT type FROM event WHERE setup_id = :s ORDER BY seq"), {"s": setup_id}
        )
        return [str(r[0]) for r in rows]


async def audit_actions(db: Database, setup_id: str) -> list[tuple[str, str | None, str]]:
    """``(action, line id, actor)`` of the setup's audit records in chain order."""
    async with db.session() as session:
        rows = await session.execute(
            text(
                "SELECT action, phone_line_id, actor FROM audit_event WHERE setup_id = :s "
                "ORDER BY seq"
            ),
            {"s": setup_id},
        )
        return [(str(r[0]), r[1], str(r[2])) for r in rows]


async def footprint(db: Database) -> tuple[int, int]:
    """How many events and audit records exist: a change that did not happen leaves
    both where they were."""
    async with db.session() as session:
        events = (await session.execute(text("SELECT count(*) FROM event"))).scalar()
        audits = (await session.execute(text("SELECT count(*) FROM audit_event"))).scalar()
    return int(events or 0), int(audits or 0)


async def every_text_value(db: Database) -> str:
    """Every value of every column of every table, as text: what a scan for a string
    anywhere in the database reads."""
    async with db.session() as session:
        if db.is_sqlite:
            listing = "SELECT name FROM sqlite_master WHERE type = 'table'"
        else:
            listing = (
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            )
        tables = [str(name) for name in (await session.execute(text(listing))).scalars()]
        chunks: list[str] = []
        for table in tables:
            rows = await session.execute(text(f'SELECT * FROM "{table}"'))
            chunks.extend(repr(value) for row in rows for value in row)
    assert "imessage_setup" in tables
    return "\n".join(chunks)


def sqlite_file_bytes(db: Database) -> bytes:
    """The SQLite database's files, after a checkpoint moved the log into the main file."""
    path = Path(make_url(db.url).database or "")
    with closing(sqlite3.connect(path)) as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0, "the checkpoint could not run to completion"
    files = [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-journal")]
    return b"".join(f.read_bytes() for f in files if f.exists())


class Intercepted:
    """The sandbox over HTTP, except for requests a rule answers itself: those never
    reach the provider (a fault, or an answer the provider did not give)."""

    def __init__(self) -> None:
        # (method, path) -> status answered instead of forwarding
        self.rules: dict[tuple[str, str], int] = {}
        # (method, path) -> released once set: the provider answered at once, the answer
        # reaches the caller only then (a slow network, a stale read).
        self.holds: dict[tuple[str, str], asyncio.Event] = {}
        # (method, path) -> set once a held request was answered upstream
        self.answered: dict[tuple[str, str], asyncio.Event] = {}
        self._upstream = httpx.AsyncClient(timeout=30)

    def hold(self, method: str, path: str) -> tuple[asyncio.Event, asyncio.Event]:
        """``(answered upstream, release to the caller)`` for the next such requests."""
        self.answered[(method, path)] = asyncio.Event()
        self.holds[(method, path)] = asyncio.Event()
        return self.answered[(method, path)], self.holds[(method, path)]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        key = (request.method, request.url.path)
        status = self.rules.get(key)
        if status is not None:
            return httpx.Response(status, json={"detail": "intercepted"} if status != 204 else None)
        response = await self._forward(request)
        if key in self.holds:
            self.answered[key].set()
            await self.holds[key].wait()
        return response

    async def _forward(self, request: httpx.Request) -> httpx.Response:
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
