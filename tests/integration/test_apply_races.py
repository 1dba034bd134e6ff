"""Deliveries applied in batches while the same workspace changes in other ways.

A batch locks its setups, assigns their lines, recomputes their statuses and reserves
the workspace's event and audit numbers in one statement, then writes its journal. The
races that could open: a lock taken out of order (a deadlock with a lifecycle change of
one of its setups), numbers reserved for an assignment that did not apply (a gap), or
the audit chain read before another writer's commit (a fork). None may happen.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import text

from blueline.audit import verify
from blueline.persistence.database import Database
from blueline.runtime import load_vault
from blueline.settings import Settings
from tests.conftest import Api
from tests.support.lifecycle import create_setup, current, mutate
from tests.support.webhooks import assignment_body, signed_headers, subaccount_of

SETUPS = 6


async def numbers(db: Database, table: str) -> list[int]:
    async with db.session() as session:
        rows = await session.execute(
            text(
                f"SELECT t.seq FROM {table} t JOIN workspace w ON w.id = t.workspace_id "
                "WHERE w.name = 'clinic-a' ORDER BY t.seq"
            )
        )
        return [int(seq) for (seq,) in rows]


async def test_deliveries_racing_lifecycle_changes_keep_numbers_dense_and_the_chain_whole(
    api: Api, sandbox: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    setups = [await create_setup(api, name=f"Clinic {n}") for n in range(SETUPS)]
    accounts = [await subaccount_of(sandbox, setup["id"]) for setup in setups]

    async def deliver(n: int, number: str) -> httpx.Response:
        account = accounts[n]
        body = assignment_body(account["id"], account["lines"][0]["request_id"], number)
        headers = signed_headers(account["webhook_secret"], body)
        return await api.http.post(
            f"/webhooks/imessage/{setups[n]['id']}", content=body, headers=headers
        )

    async def change(n: int) -> list[dict[str, Any]]:
        setup_id = setups[n]["id"]
        return [
            await mutate(api, "update", setupId=setup_id, label=f"Desk {n}"),
            await mutate(api, "request_line", setupId=setup_id),
            await mutate(api, "suspend", setupId=setup_id),
            await mutate(api, "reactivate", setupId=setup_id),
        ]

    numbers_of = [f"+1415555{n:04d}" for n in range(SETUPS)]
    others = [f"+1650555{n:04d}" for n in range(SETUPS)]
    deliveries = [
        *(deliver(n, numbers_of[n]) for n in range(SETUPS)),
        # A re-delivery and a conflicting number: whichever comes second applies nothing
        # and must be numbered by nobody.
        *(deliver(n, numbers_of[n]) for n in range(SETUPS)),
        *(deliver(n, others[n]) for n in range(SETUPS)),
    ]
    answered, changed = await asyncio.wait_for(
        asyncio.gather(
            asyncio.gather(*deliveries), asyncio.gather(*(change(n) for n in range(SETUPS)))
        ),
        60,
    )
    statuses = [r.status_code for r in answered]
    assert all(status in (200, 409) for status in statuses), statuses
    for payloads in changed:
        assert all(payload["userErrors"] == [] for payload in payloads), payloads

    for n, setup in enumerate(setups):
        now = await current(api, setup["id"])
        # Reactivated last, with a line assigned while it was suspended or not.
        assert now["status"] == "ACTIVE", now
        first = next(line for line in now["phoneLines"] if line["status"] == "ASSIGNED")
        assert first["phoneNumber"] in (numbers_of[n], others[n])
    events = await numbers(db, "event")
    audits = await numbers(db, "audit_event")
    assert events == list(range(1, len(events) + 1))
    assert audits == list(range(1, len(audits) + 1))
    # Each setup: created, updated, suspended, line requested, reactivated, assigned.
    assert len(audits) >= SETUPS * 6
    checked = await verify(db, load_vault(settings))
    assert checked.broken is None, str(checked.broken)
    assert checked.records == len(audits)
