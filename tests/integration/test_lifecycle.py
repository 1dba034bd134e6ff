"""A setup's life after its creation, through GraphQL on both databases: rename,
suspend, reactivate, close, release lines; each kept in step with the provider,
idempotent, unchanged while the provider is down, and refused to other workspaces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from blueline.access import create_api_key
from blueline.app import create_app
from blueline.domain import Origin
from blueline.errors import ProviderRejected
from blueline.persistence.database import Database
from blueline.runtime import Runtime, open_runtime
from blueline.settings import Settings
from blueline.webhooks.intake import Outcome
from tests.conftest import Api, served_like
from tests.integration.test_recovery import run_reconcile
from tests.support.asgi_server import serve_asgi
from tests.support.auth import authenticate
from tests.support.lifecycle import (
    LINE_UPDATES,
    SETUP_UPDATES,
    SNAPSHOT_NOW,
    Intercepted,
    audit_actions,
    audit_records,
    codes,
    configure,
    create_setup,
    current,
    detail,
    event_types,
    eventually,
    every_text_value,
    footprint,
    graphql,
    listed,
    live,
    mutate,
    place,
    scalar,
    sqlite_file_bytes,
    updates_of,
    upstream,
    upstream_lines,
)
from tests.support.webhooks import assignment_body, signed_headers
from tests.support.ws import graphql_ws

UNKNOWN_SETUP = "ims_01ZZZZZZZZZZZZZZZZZZZZZZZZ"


async def assigned_setup(api: Api, sandbox: httpx.AsyncClient, name: str = "Acme Dental") -> Any:
    """A setup whose first line the provider placed (announced by webhook)."""
    setup = await create_setup(api, name)
    await place(sandbox, setup["phoneLines"][0]["requestId"])
    return await eventually(lambda: current(api, setup["id"]), lambda d: d["status"] == "ACTIVE")


async def more_lines(api: Api, setup_id: str, count: int) -> list[dict[str, Any]]:
    lines = []
    for _ in range(count):
        requested = await mutate(api, "request_line", setupId=setup_id)
        assert requested["userErrors"] == [], requested
        lines.append(requested["phoneLine"])
    return lines


def fragments(value: str, size: int = 16) -> list[str]:
    """Every run of ``size`` characters of a secret, past a key-id prefix (``kid:``)."""
    body = value.partition(":")[2] or value
    return [body[i : i + size] for i in range(len(body) - size + 1)]


def without_deliveries(account: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in account.items() if k != "deliveries"}


# -- update


BAD_NAMES = {
    "empty": "",
    "only spaces": "   ",
    "129 characters": "x" * 129,
    "a control character": "Acme\u0007Dental",
    "a line break": "Acme\nDental",
    "a zero-width space": "Acme\u200bDental",
    "a bidi override": "Acme\u202eDental",
    "only a filler": "\u3164",
}


async def test_update_renames_at_the_provider_relabels_locally_and_follows_the_create_rules(
    api: Api, sandbox: httpx.AsyncClient, db: Database
) -> None:
    setup = await create_setup(api)
    setup_id = setup["id"]

    renamed = await mutate(
        api, "update", setupId=setup_id, businessName="  Cafe\u0301 Dental ", label="Reception"
    )
    assert renamed["userErrors"] == []
    # NFC-normalised and trimmed, here and upstream.
    assert (renamed["setup"]["businessName"], renamed["setup"]["label"]) == (
        "Caf\u00e9 Dental",
        "Reception",
    )
    assert renamed["setup"]["updatedAt"] > setup["updatedAt"]
    assert await current(api, setup_id) == renamed["setup"]
    assert (await upstream(sandbox, setup_id))["business_name"] == "Caf\u00e9 Dental"

    # The label is Blueline's own: changing it does not need the provider at all.
    await configure(sandbox, failure_rate=1)
    relabelled = await mutate(api, "update", setupId=setup_id, label=" Back office ")
    assert relabelled["userErrors"] == []
    assert relabelled["setup"]["label"] == "Back office"
    assert relabelled["setup"]["businessName"] == "Caf\u00e9 Dental"

    # A new name does, and nothing changes (not even the label sent with it) until the
    # provider accepts it.
    before, counts = await current(api, setup_id), await footprint(db)
    refused = await mutate(api, "update", setupId=setup_id, businessName="Other", label="Lobby")
    assert codes(refused) == ["PROVIDER_UNAVAILABLE"]
    assert refused["setup"] is None
    assert await current(api, setup_id) == before
    assert await footprint(db) == counts
    await configure(sandbox)
    assert (await upstream(sandbox, setup_id))["business_name"] == "Caf\u00e9 Dental"

    for field in ("businessName", "label"):
        for why, bad in BAD_NAMES.items():
            result = await mutate(api, "update", setupId=setup_id, **{field: bad})
            assert codes(result) == ["INVALID_INPUT"], (field, why, result)
            assert result["userErrors"][0]["field"] == ["input", field], (field, why)
    nothing = await mutate(api, "update", setupId=setup_id)
    assert codes(nothing) == ["INVALID_INPUT"]
    assert await current(api, setup_id) == before
    assert await footprint(db) == counts
    assert (await upstream(sandbox, setup_id))["business_name"] == "Caf\u00e9 Dental"

    # The limits themselves are allowed: 128 characters, joiners inside an emoji.
    longest = "n" * 128
    accepted = await mutate(
        api, "update", setupId=setup_id, businessName=longest, label="\U0001f469\u200d\u2695 Desk"
    )
    assert accepted["userErrors"] == []
    assert accepted["setup"]["businessName"] == longest
    assert accepted["setup"]["label"] == "\U0001f469\u200d\u2695 Desk"
    assert (await upstream(sandbox, setup_id))["business_name"] == longest


@pytest.fixture
async def intercepted() -> AsyncIterator[Intercepted]:
    provider = Intercepted()
    yield provider
    await provider.aclose()


@pytest.fixture
async def intercepted_runtime(
    settings: Settings, intercepted: Intercepted
) -> AsyncIterator[Runtime]:
    """The domain in-process, its provider calls going through ``intercepted``."""
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(intercepted.handle)) as http,
        open_runtime(settings, http=http) as rt,
    ):
        yield rt


async def test_a_name_the_provider_refuses_changes_nothing(
    intercepted_runtime: Runtime, intercepted: Intercepted, sandbox: httpx.AsyncClient
) -> None:
    runtime = intercepted_runtime
    caller = await authenticate(runtime.db, f"Bearer {await create_api_key(runtime.db, 'c')}")
    assert caller is not None
    origin = Origin("api_key:" + caller.api_key_id)
    setup_id = await runtime.provisioning.create_setup(
        caller.workspace_id, origin, "Acme Dental", "Front desk"
    )
    account = await upstream(sandbox, setup_id)
    intercepted.rules[("PATCH", f"/v1/subaccounts/{account['id']}")] = 422
    counts = await footprint(runtime.db)

    with pytest.raises(ProviderRejected):
        await runtime.lifecycle.update(
            caller.workspace_id, origin, setup_id, "Renamed", "Reception"
        )

    row = await scalar(
        runtime.db,
        "SELECT business_name || '/' || label FROM imessage_setup WHERE id = :s",
        s=setup_id,
    )
    assert row == "Acme Dental/Front desk"
    assert await footprint(runtime.db) == counts
    assert (await upstream(sandbox, setup_id))["business_name"] == "Acme Dental"


# -- suspend and reactivate


async def test_suspended_setup_takes_no_new_line_but_still_gets_its_placements(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    setup = await create_setup(api)
    setup_id = setup["id"]
    [line] = setup["phoneLines"]

    suspended = await mutate(api, "suspend", setupId=setup_id)
    assert suspended["userErrors"] == []
    assert suspended["setup"]["status"] == "SUSPENDED"
    assert suspended["setup"]["suspendedAt"] is not None
    assert (await upstream(sandbox, setup_id))["status"] == "suspended"

    refused = await mutate(api, "request_line", setupId=setup_id)
    assert codes(refused) == ["SETUP_SUSPENDED"]
    assert refused["phoneLine"] is None
    assert len((await upstream(sandbox, setup_id))["lines"]) == 1

    number = await place(sandbox, line["requestId"])
    placed = await eventually(
        lambda: current(api, setup_id), lambda d: d["phoneLines"][0]["status"] == "ASSIGNED"
    )
    assert placed["phoneLines"][0]["phoneNumber"] == number
    assert placed["status"] == "SUSPENDED"

    reactivated = await mutate(api, "reactivate", setupId=setup_id)
    assert reactivated["userErrors"] == []
    assert reactivated["setup"]["status"] == "ACTIVE"
    assert reactivated["setup"]["suspendedAt"] is None
    assert (await upstream(sandbox, setup_id))["status"] == "active"

    requested = await mutate(api, "request_line", setupId=setup_id)
    assert requested["userErrors"] == []
    assert requested["phoneLine"]["status"] == "PENDING"
    assert len((await upstream(sandbox, setup_id))["lines"]) == 2


# -- close


async def test_closed_setup_is_released_everywhere_forgets_its_secrets_and_refuses_changes(
    api: Api, sandbox: httpx.AsyncClient, db: Database
) -> None:
    setup = await assigned_setup(api, sandbox)
    setup_id = setup["id"]
    [pending] = await more_lines(api, setup_id, 1)
    other = await create_setup(api, "Still Open")
    account = await upstream(sandbox, setup_id)
    secrets = [
        account["credentials"]["api_key"],
        account["credentials"]["api_secret"],
        account["webhook_secret"],
        account["webhook_secret"].removeprefix("whsec_"),
    ]
    async with db.session() as session:
        ciphertexts = list(
            (
                await session.execute(
                    text(
                        "SELECT credentials_enc, webhook_secret_enc FROM imessage_setup "
                        "WHERE id = :s"
                    ),
                    {"s": setup_id},
                )
            ).one()
        )
    assert all(ciphertexts)

    closed = await mutate(api, "close", setupId=setup_id)

    assert closed["userErrors"] == []
    result = closed["setup"]
    assert result["status"] == "CLOSED"
    assert result["closedAt"] is not None
    assert result["phoneLineCount"] == 0
    assert result["phoneLines"] == []
    assert [line["id"] for line in result["allLines"]] == [
        setup["phoneLines"][0]["id"],
        pending["id"],
    ]
    assert {line["status"] for line in result["allLines"]} == {"RELEASED"}
    assert all(line["releasedAt"] for line in result["allLines"])
    account = await upstream(sandbox, setup_id)
    assert account["status"] == "closed"
    assert set(upstream_lines(account).values()) == {"released"}

    # The secrets are gone: the columns are empty and nothing anywhere holds them.
    stored = await scalar(
        db,
        "SELECT count(*) FROM imessage_setup WHERE id = :s AND credentials_enc IS NULL "
        "AND webhook_secret_enc IS NULL",
        s=setup_id,
    )
    assert stored == 1
    # Not even a piece of them: freed space still holding part of a ciphertext would
    # show as one of these.
    pieces = {piece for value in [*secrets, *ciphertexts] for piece in fragments(value)}
    everything = await every_text_value(db)
    assert setup_id in everything  # the scan sees the rows
    assert other["id"] in everything
    assert [piece for piece in pieces if piece in everything] == []
    if db.is_sqlite:
        raw = sqlite_file_bytes(db)
        assert setup_id.encode() in raw
        assert [piece for piece in pieces if piece.encode() in raw] == []

    # Still visible, as CLOSED.
    assert await current(api, setup_id) == result
    assert await listed(api, "CLOSED") == [setup_id]
    assert setup_id in await listed(api)
    assert setup_id not in await listed(api, "ACTIVE")
    assert await listed(api, "PENDING") == [other["id"]]

    # It takes no more changes; closing again is answered with what it is.
    counts = await footprint(db)
    for name, fields in [
        ("update", {"businessName": "Reopened"}),
        ("update", {"label": "Reopened"}),
        ("suspend", {}),
        ("reactivate", {}),
        ("request_line", {}),
    ]:
        refused = await mutate(api, name, setupId=setup_id, **fields)
        assert codes(refused) == ["SETUP_CLOSED"], (name, refused)
    again = await mutate(api, "close", setupId=setup_id)
    assert again == {"setup": result, "userErrors": []}
    released = await mutate(api, "release", phoneLineId=pending["id"])
    assert released["userErrors"] == []
    assert released["phoneLine"] == result["allLines"][1]
    assert await current(api, setup_id) == result
    assert await footprint(db) == counts
    assert len((await upstream(sandbox, setup_id))["lines"]) == 2

    # Its webhooks, even correctly signed with its old secret, meet the unknown-setup answer.
    body = assignment_body(account["id"], pending["requestId"], "+14155550199")
    answers = []
    for path_id in (setup_id, UNKNOWN_SETUP):
        response = await api.http.post(
            f"/webhooks/imessage/{path_id}",
            content=body,
            headers=signed_headers(account["webhook_secret"], body),
        )
        answers.append(
            (
                response.status_code,
                sorted((k, v) for k, v in response.headers.items() if k != "date"),
                response.content,
            )
        )
    assert answers[0][0] == 401
    assert answers[0] == answers[1]


# -- release


async def test_released_lines_are_given_back_final_and_left_out_unless_asked_for(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    setup = await assigned_setup(api, sandbox)
    setup_id = setup["id"]
    [assigned] = setup["phoneLines"]
    pending, kept = await more_lines(api, setup_id, 2)
    request_ids = [assigned["requestId"], pending["requestId"], kept["requestId"]]
    assert request_ids[0] is None  # shown only while pending
    request_ids[0] = (await upstream(sandbox, setup_id))["lines"][0]["request_id"]

    given_back = await mutate(api, "release", phoneLineId=assigned["id"])
    assert given_back["userErrors"] == []
    line = given_back["phoneLine"]
    assert (line["id"], line["status"]) == (assigned["id"], "RELEASED")
    assert line["releasedAt"] is not None
    assert line["requestId"] is None
    assert upstream_lines(await upstream(sandbox, setup_id)) == {
        request_ids[0]: "released",
        request_ids[1]: "pending",
        request_ids[2]: "pending",
    }

    cancelled = await mutate(api, "release", phoneLineId=pending["id"])
    assert cancelled["userErrors"] == []
    assert cancelled["phoneLine"]["status"] == "RELEASED"
    assert cancelled["phoneLine"]["requestId"] is None
    assert upstream_lines(await upstream(sandbox, setup_id)) == {
        request_ids[0]: "released",
        request_ids[1]: "released",
        request_ids[2]: "pending",
    }

    shown = await current(api, setup_id)
    assert shown["status"] == "PENDING"  # no assigned line left
    assert shown["phoneLineCount"] == 1
    assert [line["id"] for line in shown["phoneLines"]] == [kept["id"]]
    assert [(line["id"], line["status"]) for line in shown["allLines"]] == [
        (assigned["id"], "RELEASED"),
        (pending["id"], "RELEASED"),
        (kept["id"], "PENDING"),
    ]
    assert await listed(api, "PENDING") == [setup_id]

    # RELEASED is final: releasing again answers with the line as it is.
    await configure(sandbox, failure_rate=1)
    again = await mutate(api, "release", phoneLineId=assigned["id"])
    assert again == given_back
    await configure(sandbox)


async def test_late_placement_of_a_released_line_is_acknowledged_and_changes_nothing(
    api: Api, sandbox: httpx.AsyncClient, db: Database
) -> None:
    """The provider placed the number, its webhook came only after the line was released
    (which gave the number back): the delivery is acknowledged and ignored."""
    setup = await create_setup(api)
    setup_id = setup["id"]
    [line] = setup["phoneLines"]
    await configure(sandbox, deliver_webhooks=False)
    await place(sandbox, line["requestId"])
    released = await mutate(api, "release", phoneLineId=line["id"])
    assert released["userErrors"] == []
    before, counts = await current(api, setup_id), await footprint(db)

    redelivered = await sandbox.post(f"/sandbox/line-requests/{line['requestId']}/redeliver")
    assert redelivered.status_code == 202, redelivered.text
    account = await eventually(
        lambda: upstream(sandbox, setup_id), lambda found: bool(found["deliveries"])
    )

    assert [d["status_code"] for d in account["deliveries"]] == [200]
    assert upstream_lines(account) == {line["requestId"]: "released"}
    assert await current(api, setup_id) == before
    assert await footprint(db) == counts


async def test_late_placement_of_a_released_line_gives_the_number_back_again(
    intercepted_runtime: Runtime, intercepted: Intercepted, sandbox: httpx.AsyncClient
) -> None:
    """The provider answered the cancellation of a pending request, then placed it anyway:
    the late `line.assigned` is acknowledged and the number released upstream again."""
    runtime = intercepted_runtime
    caller = await authenticate(runtime.db, f"Bearer {await create_api_key(runtime.db, 'c')}")
    assert caller is not None
    origin = Origin("api_key:" + caller.api_key_id)
    await configure(sandbox, deliver_webhooks=False)
    setup_id = await runtime.provisioning.create_setup(
        caller.workspace_id, origin, "Acme Dental", "Front desk"
    )
    account = await upstream(sandbox, setup_id)
    [request_id] = upstream_lines(account)
    line_id = await scalar(
        runtime.db, "SELECT id FROM phone_line WHERE request_id = :r", r=request_id
    )
    cancel = ("DELETE", f"/v1/subaccounts/{account['id']}/lines/{request_id}")
    intercepted.rules[cancel] = 204
    await runtime.lifecycle.release_line(caller.workspace_id, origin, line_id)
    del intercepted.rules[cancel]
    number = await place(sandbox, request_id)
    counts = await footprint(runtime.db)

    body = assignment_body(account["id"], request_id, number)
    for _ in range(2):  # the late delivery, then the provider's retry of it
        headers = signed_headers(account["webhook_secret"], body, msg_id="msg_late_placement")
        outcome = await runtime.intake.handle(setup_id, headers, body, "127.0.0.1")
        assert outcome is Outcome.RELEASED  # answered 200, like any accepted delivery
        await runtime.lifecycle.wait_background()

    assert upstream_lines(await upstream(sandbox, setup_id)) == {request_id: "released"}
    status = await scalar(runtime.db, "SELECT status FROM phone_line WHERE id = :l", l=line_id)
    assert status == "RELEASED"
    assert await footprint(runtime.db) == counts
    pending = await scalar(runtime.db, "SELECT count(*) FROM operation WHERE state = 'pending'")
    assert pending == 0


# -- idempotent, and nothing while the provider is down


async def test_every_mutation_changes_nothing_while_the_provider_is_down_and_is_idempotent(
    api: Api, sandbox: httpx.AsyncClient, db: Database
) -> None:
    setup = await create_setup(api)
    setup_id = setup["id"]
    [first] = setup["phoneLines"]
    await more_lines(api, setup_id, 1)
    steps: list[tuple[str, dict[str, Any], int]] = [
        ("update", {"setupId": setup_id, "businessName": "Renamed", "label": "Lobby"}, 1),
        ("suspend", {"setupId": setup_id}, 1),
        ("reactivate", {"setupId": setup_id}, 1),
        ("release", {"phoneLineId": first["id"]}, 1),
        # The setup's close, and the release of its one open line.
        ("close", {"setupId": setup_id}, 2),
    ]
    for name, fields, audits in steps:
        result = "phoneLine" if name == "release" else "setup"
        before = await current(api, setup_id)
        account = without_deliveries(await upstream(sandbox, setup_id))
        events, records = await footprint(db)

        await configure(sandbox, failure_rate=1)
        down = await mutate(api, name, **fields)
        assert codes(down) == ["PROVIDER_UNAVAILABLE"], name
        assert down[result] is None
        assert await current(api, setup_id) == before, name
        assert await footprint(db) == (events, records), name
        assert without_deliveries(await upstream(sandbox, setup_id)) == account, name

        await configure(sandbox)
        done = await mutate(api, name, **fields)
        assert done["userErrors"] == [], name
        after = await current(api, setup_id)
        assert after != before, name
        changed = await footprint(db)
        assert changed[1] == records + audits, name

        # Repeated, even with the provider down: it is answered without asking it.
        await configure(sandbox, failure_rate=1)
        again = await mutate(api, name, **fields)
        assert again == done, name
        assert await current(api, setup_id) == after, name
        assert await footprint(db) == changed, name
        await configure(sandbox)
    assert (await upstream(sandbox, setup_id))["status"] == "closed"


# -- close racing releases


async def test_close_racing_the_release_of_every_line_ends_in_one_consistent_outcome(
    api: Api, sandbox: httpx.AsyncClient, db: Database
) -> None:
    setups = []
    for name in ("Close First", "Releases First"):
        setup = await assigned_setup(api, sandbox, name)
        lines = [setup["phoneLines"][0], *await more_lines(api, setup["id"], 2)]
        setups.append((setup["id"], [line["id"] for line in lines]))
    (first_id, first_lines), (second_id, second_lines) = setups
    # Every provider answer is held back, so all the calls are in flight together.
    await configure(sandbox, latency_ms=300)

    # New lines are asked for meanwhile: each is refused, or released with the rest.
    first, second = await asyncio.gather(
        asyncio.gather(
            mutate(api, "close", setupId=first_id),
            *(mutate(api, "release", phoneLineId=line_id) for line_id in first_lines),
            mutate(api, "request_line", setupId=first_id),
        ),
        asyncio.gather(
            mutate(api, "request_line", setupId=second_id),
            *(mutate(api, "release", phoneLineId=line_id) for line_id in second_lines),
            mutate(api, "close", setupId=second_id),
        ),
    )
    await configure(sandbox)

    requested = [first.pop(), second.pop(0)]
    for result in [*first, *second]:
        assert result["userErrors"] == [], result
    for result in requested:
        assert result["userErrors"] == [] or codes(result) == ["SETUP_CLOSED"], result
    for result, line_ids in zip(requested, (first_lines, second_lines), strict=True):
        if result["phoneLine"] is not None:
            line_ids.append(result["phoneLine"]["id"])
    for setup_id, line_ids in setups:
        shown = await current(api, setup_id)
        assert shown["status"] == "CLOSED"
        assert [(line["id"], line["status"]) for line in shown["allLines"]] == [
            (line_id, "RELEASED") for line_id in line_ids
        ]
        # Upstream, nothing is left open: no line Blueline gave up on stays placed.
        account = await upstream(sandbox, setup_id)
        assert account["status"] == "closed"
        assert set(upstream_lines(account).values()) == {"released"}
        events = await event_types(db, setup_id)
        assert events.count("CLOSED") == 1
        assert events.count("LINE_RELEASED") == len(line_ids)
        actions = await audit_actions(db, setup_id)
        released = sorted(str(line) for action, line, _ in actions if action == "line.released")
        assert released == sorted(line_ids)
        assert [action for action, _, _ in actions].count("setup.closed") == 1
        pending = await scalar(
            db,
            "SELECT count(*) FROM operation WHERE setup_id = :s AND state = 'pending'",
            s=setup_id,
        )
        assert pending == 0


# -- other workspaces


async def test_another_workspace_can_change_nothing_and_sees_nothing(
    api: Api, sandbox: httpx.AsyncClient, db: Database
) -> None:
    setup = await create_setup(api)
    setup_id = setup["id"]
    [line] = setup["phoneLines"]
    other_key = await create_api_key(db, "clinic-b")
    theirs = await create_setup(api, "Their Dental", key=other_key)
    before = await current(api, setup_id)
    account = without_deliveries(await upstream(sandbox, setup_id))
    counts = await footprint(db)

    for name, fields in [
        ("update", {"setupId": setup_id, "businessName": "Hijacked"}),
        ("update", {"setupId": setup_id, "label": "Hijacked"}),
        ("suspend", {"setupId": setup_id}),
        ("reactivate", {"setupId": setup_id}),
        ("close", {"setupId": setup_id}),
        ("request_line", {"setupId": setup_id}),
        ("release", {"phoneLineId": line["id"]}),
    ]:
        foreign = await mutate(api, name, key=other_key, **fields)
        field = next(iter(fields))
        missing_id = UNKNOWN_SETUP if field == "setupId" else "pl_01ZZZZZZZZZZZZZZZZZZZZZZZZ"
        missing = await mutate(api, name, key=other_key, **{**fields, field: missing_id})
        assert codes(foreign) == ["NOT_FOUND"], (name, foreign)
        assert foreign["userErrors"] == missing["userErrors"], name

    assert await current(api, setup_id) == before
    assert without_deliveries(await upstream(sandbox, setup_id)) == account
    assert await footprint(db) == counts
    assert await detail(api, setup_id, key=other_key) is None

    mine = await audit_records(api)
    assert mine
    assert {r["setupId"] for r in mine} == {setup_id}
    seen = await audit_records(api, key=other_key)
    assert seen
    assert {r["setupId"] for r in seen} == {theirs["id"]}
    assert await audit_records(api, setup_id=setup_id, key=other_key) == []
    assert await audit_records(api, setup_id=theirs["id"]) == []
    node = "query($id: ID!) { node(id: $id) { id } }"
    assert (await graphql(api, node, {"id": mine[0]["id"]}))["node"] == {"id": mine[0]["id"]}
    assert (await graphql(api, node, {"id": mine[0]["id"]}, key=other_key))["node"] is None

    updates = "subscription($s: ID) { imessageSetupUpdates(setupId: $s) { eventId } }"
    async with graphql_ws(api.base_url, other_key) as ws:
        foreign_op = await ws.subscribe(updates, {"s": setup_id})
        foreign_error = await ws.expect_error(foreign_op)
        missing_op = await ws.subscribe(updates, {"s": UNKNOWN_SETUP})
        missing_error = await ws.expect_error(missing_op)
    assert foreign_error == missing_error


# -- live updates


async def test_setup_updates_carry_every_change_once_in_order_across_a_reconnect(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    warm_up = await create_setup(api, "Warm Up")
    seen: list[dict[str, Any]] = []
    async with (
        graphql_ws(api.base_url, api.key) as lines_ws,
        graphql_ws(api.base_url, api.key) as ws,
    ):
        op = await ws.subscribe(SETUP_UPDATES)
        start = await live(api, ws, op, warm_up["id"])
        # Both streams read the same log: an id from one starts the other.
        lines_op = await lines_ws.subscribe(LINE_UPDATES, {"after": start})

        setup = await create_setup(api)
        setup_id = setup["id"]
        [first] = setup["phoneLines"]
        seen += await updates_of(ws, op, setup_id, 2)
        await place(sandbox, first["requestId"])
        seen += await updates_of(ws, op, setup_id, 1)
        assert (await mutate(api, "update", setupId=setup_id, businessName="Renamed"))["setup"]
        seen += await updates_of(ws, op, setup_id, 1)
        assert (await mutate(api, "suspend", setupId=setup_id))["setup"]
        seen += await updates_of(ws, op, setup_id, 1)
        await ws.ws.close()

        # Offline: these are replayed after the reconnect.
        assert (await mutate(api, "reactivate", setupId=setup_id))["setup"]
        [second] = await more_lines(api, setup_id, 1)
        async with graphql_ws(api.base_url, api.key) as again:
            resumed = await again.subscribe(SETUP_UPDATES, {"after": seen[-1]["eventId"]})
            seen += await updates_of(again, resumed, setup_id, 2)
            assert (await mutate(api, "release", phoneLineId=first["id"]))["phoneLine"]
            seen += await updates_of(again, resumed, setup_id, 1)
            assert (await mutate(api, "close", setupId=setup_id))["setup"]
            seen += await updates_of(again, resumed, setup_id, 2)
            await again.expect_silence(0.3)
        line_updates = await updates_of(lines_ws, lines_op, setup_id, 5, "phoneLineUpdates")

    assert [u["change"] for u in seen] == [
        "CREATED",
        "LINE_ADDED",
        "LINE_ASSIGNED",
        "UPDATED",
        "SUSPENDED",
        "REACTIVATED",
        "LINE_ADDED",
        "LINE_RELEASED",
        "LINE_RELEASED",
        "CLOSED",
    ]
    event_ids = [u["eventId"] for u in seen]
    assert event_ids == sorted(set(event_ids))
    assert event_ids[0] > start
    # Each update shows the setup as that change left it.
    states = [(u["setup"]["status"], u["setup"]["phoneLineCount"]) for u in seen]
    assert states == [
        ("PENDING", 1),
        ("PENDING", 1),
        ("ACTIVE", 1),
        ("ACTIVE", 1),
        ("SUSPENDED", 1),
        ("ACTIVE", 1),
        ("ACTIVE", 2),
        ("PENDING", 1),
        ("CLOSED", 0),
        ("CLOSED", 0),
    ]
    assert [u["setup"]["businessName"] for u in seen[:4]] == ["Acme Dental"] * 3 + ["Renamed"]
    assert seen[4]["setup"]["suspendedAt"] is not None
    assert seen[5]["setup"]["suspendedAt"] is None
    # Applied in order, they end at the current state.
    now = (await graphql(api, SNAPSHOT_NOW, {"id": setup_id}))["imessageSetup"]
    assert seen[-1]["setup"] == now

    # The line stream carried the line changes, with the same ids, releases included.
    line_changes = [u for u in seen if u["change"].startswith("LINE_")]
    assert [u["eventId"] for u in line_updates] == [u["eventId"] for u in line_changes]
    assert [(u["phoneLine"]["id"], u["phoneLine"]["status"]) for u in line_updates] == [
        (first["id"], "PENDING"),
        (first["id"], "ASSIGNED"),
        (second["id"], "PENDING"),
        (first["id"], "RELEASED"),
        (second["id"], "RELEASED"),
    ]
    assert all(u["phoneLine"]["releasedAt"] for u in line_updates[3:])

    # Replayed later, for this setup only, it is the same history, each update as it was
    # then (SUSPENDED still shows SUSPENDED though the setup is CLOSED now); ids from the
    # line stream start the setup stream and the other way round.
    async with graphql_ws(api.base_url, api.key) as ws:
        op = await ws.subscribe(SETUP_UPDATES, {"setupId": setup_id, "after": start})
        assert await updates_of(ws, op, setup_id, len(seen)) == seen
        assigned_id = line_updates[1]["eventId"]
        op = await ws.subscribe(SETUP_UPDATES, {"setupId": setup_id, "after": assigned_id})
        assert await updates_of(ws, op, setup_id, 7) == seen[3:]
        op = await ws.subscribe(LINE_UPDATES, {"after": seen[3]["eventId"]})
        assert await updates_of(ws, op, setup_id, 3, "phoneLineUpdates") == line_updates[2:]
        await ws.expect_silence(0.3)


# -- reconciliation


async def silently(sandbox: httpx.AsyncClient, path: str, **body: Any) -> dict[str, Any]:
    """A sandbox control that changes something upstream without telling Blueline."""
    response = await sandbox.post(path, json=body or None)
    assert response.status_code in (200, 201), response.text
    found: dict[str, Any] = response.json()
    return found


async def history(db: Database, setup_ids: list[str]) -> dict[str, tuple[list[str], list[Any]]]:
    return {s: (await event_types(db, s), await audit_actions(db, s)) for s in setup_ids}


def since(
    before: dict[str, tuple[list[str], list[Any]]], after: dict[str, tuple[list[str], list[Any]]]
) -> dict[str, tuple[list[str], list[Any]]]:
    """What each setup's events and audit records gained (the earlier ones stay as they were)."""
    gained = {}
    for setup_id, (events, audits) in after.items():
        old_events, old_audits = before[setup_id]
        assert events[: len(old_events)] == old_events
        assert audits[: len(old_audits)] == old_audits
        gained[setup_id] = (events[len(old_events) :], audits[len(old_audits) :])
    return gained


async def test_reconcile_command_applies_what_changed_upstream_without_blueline(
    api: Api, sandbox: httpx.AsyncClient, db: Database, settings: Settings, tmp_path: Path
) -> None:
    closed = await assigned_setup(api, sandbox, "Closed Upstream")
    suspended = await create_setup(api, "Suspended Upstream")
    released = await assigned_setup(api, sandbox, "Released Upstream")
    unannounced = await create_setup(api, "Webhook Lost")
    unknown = await create_setup(api, "Line Unknown")
    setup_ids = [s["id"] for s in (closed, suspended, released, unannounced, unknown)]
    accounts = {s: await upstream(sandbox, s) for s in setup_ids}
    await configure(sandbox, deliver_webhooks=False)
    path = "/sandbox/subaccounts/{}/status"
    await silently(sandbox, path.format(accounts[closed["id"]]["id"]), status="closed")
    await silently(sandbox, path.format(accounts[suspended["id"]]["id"]), status="suspended")
    [given_back] = upstream_lines(accounts[released["id"]])
    await silently(sandbox, f"/sandbox/line-requests/{given_back}/release")
    number = await place(sandbox, unannounced["phoneLines"][0]["requestId"])
    # Placed while suspended: reconciliation sees both changes at once.
    await place(sandbox, suspended["phoneLines"][0]["requestId"])
    injected = await silently(
        sandbox, f"/sandbox/subaccounts/{accounts[unknown['id']]['id']}/lines"
    )
    before = await history(db, setup_ids)

    result = await run_reconcile(settings, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == (
        "setups completed: 0, failed: 0, discarded: 0, deferred: 0; lines assigned: 2, "
        "adopted: 1, released: 1; setups synced: 2; operations finished: 0"
    )
    now = {s: await current(api, s) for s in setup_ids}
    assert now[closed["id"]]["status"] == "CLOSED"
    assert {line["status"] for line in now[closed["id"]]["allLines"]} == {"RELEASED"}
    destroyed = await scalar(
        db,
        "SELECT count(*) FROM imessage_setup WHERE id = :s AND credentials_enc IS NULL "
        "AND webhook_secret_enc IS NULL",
        s=closed["id"],
    )
    assert destroyed == 1
    assert now[suspended["id"]]["status"] == "SUSPENDED"
    assert now[released["id"]]["status"] == "PENDING"
    assert [line["status"] for line in now[released["id"]]["allLines"]] == ["RELEASED"]
    assert now[unannounced["id"]]["status"] == "ACTIVE"
    [placed] = now[unannounced["id"]]["phoneLines"]
    assert (placed["status"], placed["phoneNumber"]) == ("ASSIGNED", number)
    assert [(line["status"], line["requestId"]) for line in now[unknown["id"]]["phoneLines"]] == [
        ("PENDING", unknown["phoneLines"][0]["requestId"]),
        ("PENDING", injected["request_id"]),
    ]

    reconciler = "system:reconcile"
    closed_lines = [line["id"] for line in now[closed["id"]]["allLines"]]
    assert since(before, await history(db, setup_ids)) == {
        closed["id"]: (
            ["LINE_RELEASED", "CLOSED"],
            [
                ("line.released", closed_lines[0], reconciler),
                ("setup.closed", None, reconciler),
            ],
        ),
        # In the order they were applied, so each event's snapshot is the state then.
        suspended["id"]: (
            ["SUSPENDED", "LINE_ASSIGNED"],
            [
                ("setup.suspended", None, reconciler),
                ("line.assigned", suspended["phoneLines"][0]["id"], reconciler),
            ],
        ),
        released["id"]: (
            ["LINE_RELEASED"],
            [("line.released", released["phoneLines"][0]["id"], reconciler)],
        ),
        unannounced["id"]: (["LINE_ASSIGNED"], [("line.assigned", placed["id"], reconciler)]),
        unknown["id"]: (
            ["LINE_ADDED"],
            [("line.requested", now[unknown["id"]]["phoneLines"][1]["id"], reconciler)],
        ),
    }

    settled = await history(db, setup_ids)
    again = await run_reconcile(settings, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "lines assigned: 0, adopted: 0, released: 0; setups synced: 0" in again.stdout
    assert await history(db, setup_ids) == settled
    assert {s: await current(api, s) for s in setup_ids} == now


@pytest.fixture
async def reconciling_api(settings: Settings) -> AsyncIterator[Api]:
    """An API process whose periodic pass compares every setup with the provider."""
    periodic = settings.model_copy(update={"reconcile_interval_s": 0.2, "reconcile_min_age_s": 0.0})
    with serve_asgi(create_app(periodic), port=periodic.port, **served_like(periodic)) as url:
        db = Database(settings.database_url.get_secret_value())
        try:
            key = await create_api_key(db, "clinic-a")
        finally:
            await db.dispose()
        client = Api(url, key)
        yield client
        await client.http.aclose()


async def test_periodic_pass_of_the_api_process_follows_the_provider(
    reconciling_api: Api, sandbox: httpx.AsyncClient, db: Database
) -> None:
    api = reconciling_api
    toggled = await create_setup(api, "Suspended Upstream")
    closed = await create_setup(api, "Closed Upstream")
    unknown = await create_setup(api, "Line Unknown")
    accounts = {s["id"]: await upstream(sandbox, s["id"]) for s in (toggled, closed, unknown)}
    path = "/sandbox/subaccounts/{}/status"

    await silently(sandbox, path.format(accounts[toggled["id"]]["id"]), status="suspended")
    await silently(sandbox, path.format(accounts[closed["id"]]["id"]), status="closed")
    injected = await silently(
        sandbox, f"/sandbox/subaccounts/{accounts[unknown['id']]['id']}/lines"
    )

    await eventually(lambda: current(api, toggled["id"]), lambda d: d["status"] == "SUSPENDED")
    await eventually(lambda: current(api, closed["id"]), lambda d: d["status"] == "CLOSED")
    adopted = await eventually(
        lambda: current(api, unknown["id"]), lambda d: d["phoneLineCount"] == 2
    )
    assert adopted["phoneLines"][1]["requestId"] == injected["request_id"]

    await silently(sandbox, path.format(accounts[toggled["id"]]["id"]), status="active")
    await eventually(lambda: current(api, toggled["id"]), lambda d: d["status"] == "PENDING")

    reconciler = "system:reconcile"
    assert (await audit_actions(db, toggled["id"]))[-2:] == [
        ("setup.suspended", None, reconciler),
        ("setup.reactivated", None, reconciler),
    ]
    assert (await event_types(db, toggled["id"]))[-2:] == ["SUSPENDED", "REACTIVATED"]
    assert (await audit_actions(db, closed["id"]))[-1] == ("setup.closed", None, reconciler)
    assert (await event_types(db, closed["id"]))[-2:] == ["LINE_RELEASED", "CLOSED"]
    assert (await audit_actions(db, unknown["id"]))[-1] == (
        "line.requested",
        adopted["phoneLines"][1]["id"],
        reconciler,
    )
    assert (await event_types(db, unknown["id"]))[-1] == "LINE_ADDED"


# -- recovery of changes a crash interrupted


async def test_changes_cut_off_after_the_provider_took_them_are_finished_by_recovery(
    runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    """In-process stand-in for a crash: the change is cancelled while the provider's answer
    is held back, after the provider acted. Recovery repeats the provider call and
    applies the change once, as ``system:recovery``, with the original request id."""
    db = runtime.db
    caller = await authenticate(db, f"Bearer {await create_api_key(db, 'clinic-a')}")
    assert caller is not None
    workspace_id = caller.workspace_id
    setup_id = await runtime.provisioning.create_setup(
        workspace_id, Origin("api_key:" + caller.api_key_id), "Acme Dental", "Front desk"
    )
    lifecycle = runtime.lifecycle
    steps: list[
        tuple[str, Callable[[Origin], Coroutine[Any, Any, str]], Callable[[Any], bool], str]
    ] = [
        (
            "setup.updated",
            lambda o: lifecycle.update(workspace_id, o, setup_id, "Renamed", "Lobby"),
            lambda account: account["business_name"] == "Renamed",
            "SELECT business_name || '/' || label FROM imessage_setup WHERE id = :s",
        ),
        (
            "setup.suspended",
            lambda o: lifecycle.suspend(workspace_id, o, setup_id),
            lambda account: account["status"] == "suspended",
            "SELECT status FROM imessage_setup WHERE id = :s",
        ),
        (
            "setup.reactivated",
            lambda o: lifecycle.reactivate(workspace_id, o, setup_id),
            lambda account: account["status"] == "active",
            "SELECT status FROM imessage_setup WHERE id = :s",
        ),
        # Never repeated (it would make a second line): recovery adopts what it made.
        (
            "line.requested",
            lambda o: runtime.provisioning.request_line(workspace_id, o, setup_id),
            lambda account: len(account["lines"]) == 2,
            "SELECT count(*) FROM phone_line WHERE setup_id = :s",
        ),
    ]
    for index, (action, change, took_effect, probe) in enumerate(steps):
        origin = Origin("api_key:" + caller.api_key_id, f"req_cut_off_{index:04d}")
        before = await scalar(db, probe, s=setup_id)
        await configure(sandbox, latency_ms=2000)
        cut_off = asyncio.create_task(change(origin))
        await eventually(lambda: upstream(sandbox, setup_id), took_effect, timeout_s=5)
        cut_off.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cut_off
        await configure(sandbox)
        assert await scalar(db, probe, s=setup_id) == before, action
        counts = await footprint(db)

        report = await runtime.reconcile(0)

        assert report.operations_finished == 1, action
        assert await scalar(db, probe, s=setup_id) != before, action
        assert await footprint(db) == (counts[0] + 1, counts[1] + 1), action
        async with db.session() as session:
            newest = (
                await session.execute(
                    text(
                        "SELECT action, actor, request_id FROM audit_event WHERE setup_id = :s "
                        "ORDER BY seq DESC LIMIT 1"
                    ),
                    {"s": setup_id},
                )
            ).one()
        assert tuple(newest) == (action, "system:recovery", origin.request_id)
        again = await runtime.reconcile(0)
        assert again.operations_finished == 0, action
        assert await footprint(db) == (counts[0] + 1, counts[1] + 1), action
    assert await scalar(db, steps[0][3], s=setup_id) == "Renamed/Lobby"
    assert len((await upstream(sandbox, setup_id))["lines"]) == 2


async def test_reconciliation_does_not_undo_a_change_made_while_it_asked_the_provider(
    intercepted_runtime: Runtime, intercepted: Intercepted, sandbox: httpx.AsyncClient
) -> None:
    """A pass reads the subaccount (still suspended), a reactivation completes meanwhile:
    the pass must not apply what it read, which is no longer true upstream."""
    runtime = intercepted_runtime
    db = runtime.db
    caller = await authenticate(db, f"Bearer {await create_api_key(db, 'clinic-a')}")
    assert caller is not None
    origin = Origin("api_key:" + caller.api_key_id)
    setup_id = await runtime.provisioning.create_setup(
        caller.workspace_id, origin, "Acme Dental", "Front desk"
    )
    await runtime.lifecycle.suspend(caller.workspace_id, origin, setup_id)
    answered, release = intercepted.hold("GET", "/v1/subaccounts")

    reading = asyncio.create_task(runtime.reconcile(0))
    await asyncio.wait_for(answered.wait(), 10)
    await runtime.lifecycle.reactivate(caller.workspace_id, origin, setup_id)
    release.set()
    await reading

    assert (await upstream(sandbox, setup_id))["status"] == "active"
    status = await scalar(db, "SELECT status FROM imessage_setup WHERE id = :s", s=setup_id)
    assert status == "PENDING"
    assert (await event_types(db, setup_id))[-2:] == ["SUSPENDED", "REACTIVATED"]
    assert [a[0] for a in await audit_actions(db, setup_id)][-2:] == [
        "setup.suspended",
        "setup.reactivated",
    ]

    # The next pass sees the setup as it is, and finds nothing to change.
    del intercepted.holds[("GET", "/v1/subaccounts")]
    counts = await footprint(db)
    await runtime.reconcile(0)
    assert await footprint(db) == counts
