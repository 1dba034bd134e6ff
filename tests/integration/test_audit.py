"""The audit trail on both databases: one record per change, naming who made it and from
which request; `auditEvents` paging newest first inside the caller's workspace; and
`blueline audit verify` / `export` against the database as it is, and tampered with."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from blueline.access import create_api_key
from blueline.persistence.database import Database
from blueline.runtime import Runtime
from blueline.settings import Settings
from tests.conftest import Api
from tests.integration.test_recovery import cli_env
from tests.support.auth import authenticate
from tests.support.lifecycle import (
    audit_page,
    audit_records,
    configure,
    create_setup,
    eventually,
    mutate,
    place,
    upstream,
)

BLUELINE = Path(sys.executable).with_name("blueline")


async def key_id(db: Database, key: str) -> str:
    caller = await authenticate(db, f"Bearer {key}")
    assert caller is not None
    return caller.api_key_id


def record_view(record: dict[str, Any]) -> tuple[Any, ...]:
    return (
        record["action"],
        record["actor"],
        record["phoneLineId"],
        record["requestId"],
        json.loads(record["changes"]),
    )


async def test_every_change_writes_one_record_naming_who_and_which_request(
    api: Api, sandbox: httpx.AsyncClient, db: Database, runtime: Runtime
) -> None:
    me = f"api_key:{await key_id(db, api.key)}"
    setup = await create_setup(api, request_id="req_create_0001")
    setup_id = setup["id"]
    [first] = setup["phoneLines"]
    first_number = await place(sandbox, first["requestId"])
    await eventually(
        lambda: audit_records(api, setup_id), lambda found: found[0]["action"] == "line.assigned"
    )
    second = (await mutate(api, "request_line", request_id="req_line_0002", setupId=setup_id))[
        "phoneLine"
    ]
    await configure(sandbox, deliver_webhooks=False)
    second_number = await place(sandbox, second["requestId"])
    assert (await runtime.reconcile(0)).lines_assigned == 1
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("update", "req_update_0003", {"setupId": setup_id, "businessName": "B", "label": "L"}),
        ("suspend", "req_suspend_0004", {"setupId": setup_id}),
        ("reactivate", "req_reactivate_0005", {"setupId": setup_id}),
        ("release", "req_release_0006", {"phoneLineId": first["id"]}),
        ("close", "req_close_0007", {"setupId": setup_id}),
    ]
    for name, request_id, fields in steps:
        done = await mutate(api, name, request_id=request_id, **fields)
        assert done["userErrors"] == [], (name, done)

    records = await audit_records(api, setup_id)

    # A provider's delivery carries no request id of ours: its record is compared apart.
    views = [record_view(r)[: 3 if r["actor"] == "provider" else 5] for r in records]
    [provider] = [r for r in records if r["actor"] == "provider"]
    expected: list[tuple[Any, ...]] = [
        (
            "setup.created",
            me,
            None,
            "req_create_0001",
            {"businessName": [None, "Acme Dental"], "label": [None, "Front desk"]},
        ),
        ("line.requested", me, first["id"], "req_create_0001", {"status": [None, "PENDING"]}),
        ("line.assigned", "provider", first["id"]),
        ("line.requested", me, second["id"], "req_line_0002", {"status": [None, "PENDING"]}),
        (
            "line.assigned",
            "system:reconcile",
            second["id"],
            None,
            {"status": ["PENDING", "ASSIGNED"], "phoneNumber": [None, second_number]},
        ),
        (
            "setup.updated",
            me,
            None,
            "req_update_0003",
            {"businessName": ["Acme Dental", "B"], "label": ["Front desk", "L"]},
        ),
        ("setup.suspended", me, None, "req_suspend_0004", {"status": ["ACTIVE", "SUSPENDED"]}),
        (
            "setup.reactivated",
            me,
            None,
            "req_reactivate_0005",
            {"status": ["SUSPENDED", "ACTIVE"]},
        ),
        (
            "line.released",
            me,
            first["id"],
            "req_release_0006",
            {"status": ["ASSIGNED", "RELEASED"]},
        ),
        (
            "line.released",
            me,
            second["id"],
            "req_close_0007",
            {"status": ["ASSIGNED", "RELEASED"]},
        ),
        (
            "setup.closed",
            me,
            None,
            "req_close_0007",
            {"status": ["ACTIVE", "CLOSED"], "phoneLineCount": [1, 0]},
        ),
    ]
    assert views == expected[::-1]  # newest first
    assert json.loads(provider["changes"]) == {
        "status": ["PENDING", "ASSIGNED"],
        "phoneNumber": [None, first_number],
    }
    assert {r["setupId"] for r in records} == {setup_id}
    assert len({r["id"] for r in records}) == len(records)
    times = [r["occurredAt"] for r in records]
    assert times == sorted(times, reverse=True)

    # Never a secret, in any record.
    account = await upstream(sandbox, setup_id)
    trail = json.dumps(records)
    for secret in (
        account["credentials"]["api_key"],
        account["credentials"]["api_secret"],
        account["webhook_secret"].removeprefix("whsec_"),
    ):
        assert secret not in trail


async def test_audit_events_page_newest_first_inside_the_callers_workspace(
    api: Api, db: Database
) -> None:
    one = await create_setup(api, "One")
    two = await create_setup(api, "Two")
    for label in ("A", "B", "C"):
        assert (await mutate(api, "update", setupId=one["id"], label=label))["setup"]
    other_key = await create_api_key(db, "clinic-b")
    theirs = await create_setup(api, "Theirs", key=other_key)
    async with db.session() as session:
        newest_first = list(
            (
                await session.execute(
                    text(
                        "SELECT a.id FROM audit_event a JOIN workspace w ON w.id = a.workspace_id "
                        "WHERE w.name = 'clinic-a' ORDER BY a.seq DESC"
                    )
                )
            ).scalars()
        )
    assert len(newest_first) == 7

    paged: list[str] = []
    after = None
    while True:
        page = await audit_page(api, first=2, after=after)
        paged += [edge["node"]["id"] for edge in page["edges"]]
        assert [edge["cursor"] for edge in page["edges"]][-1:] == (
            [page["pageInfo"]["endCursor"]] if page["edges"] else []
        )
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert paged == newest_first

    only_one = await audit_records(api, one["id"])
    assert [r["id"] for r in only_one] == [
        i for i in newest_first if i in {r["id"] for r in only_one}
    ]
    assert {r["setupId"] for r in only_one} == {one["id"]}
    assert len(only_one) == 5
    assert [r["action"] for r in await audit_records(api, two["id"])] == [
        "line.requested",
        "setup.created",
    ]

    # Another workspace sees its own records only, whatever it asks for.
    assert {r["setupId"] for r in await audit_records(api, key=other_key)} == {theirs["id"]}
    assert await audit_records(api, one["id"], key=other_key) == []
    assert await audit_records(api, theirs["id"]) == []


# -- blueline audit verify / export


async def audit_cli(settings: Settings, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert BLUELINE.exists(), BLUELINE
    return await asyncio.to_thread(
        subprocess.run,
        [str(BLUELINE), "audit", *args],
        env=cli_env(settings),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def chain(db: Database, workspace: str = "clinic-a") -> list[dict[str, Any]]:
    """The workspace's audit rows as stored, in chain order."""
    async with db.session() as session:
        rows = await session.execute(
            text(
                "SELECT a.* FROM audit_event a JOIN workspace w ON w.id = a.workspace_id "
                "WHERE w.name = :w ORDER BY a.seq"
            ),
            {"w": workspace},
        )
        return [dict(row._mapping) for row in rows]


async def execute(db: Database, *statements: tuple[str, dict[str, Any]]) -> None:
    async with db.transaction() as session:
        for sql, params in statements:
            await session.execute(text(sql), params)


def insert_row(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    columns = ", ".join(row)
    values = ", ".join(f":{name}" for name in row)
    return f"INSERT INTO audit_event ({columns}) VALUES ({values})", row


async def test_audit_verify_names_the_first_record_altered_removed_or_reordered(
    api: Api, db: Database, settings: Settings, tmp_path: Path
) -> None:
    setup = await create_setup(api)
    for label in ("A", "B", "C"):
        assert (await mutate(api, "update", setupId=setup["id"], label=label))["setup"]
    await create_setup(api, "Theirs", key=await create_api_key(db, "clinic-b"))
    rows = await chain(db)
    assert [row["seq"] for row in rows] == [1, 2, 3, 4, 5]
    third, fourth, newest = rows[2], rows[3], rows[4]

    intact = await audit_cli(settings, tmp_path, "verify")
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "intact: 7 record(s) in 2 workspace(s)" in intact.stdout

    tampering: dict[str, tuple[list[tuple[str, dict[str, Any]]], str, list[Any]]] = {
        "an edited record": (
            [
                (
                    "UPDATE audit_event SET changes = :c WHERE id = :i",
                    {"c": '{"label":["Front desk","X"]}', "i": third["id"]},
                )
            ],
            third["id"],
            [
                (
                    "UPDATE audit_event SET changes = :c WHERE id = :i",
                    {"c": third["changes"], "i": third["id"]},
                )
            ],
        ),
        "a deleted record": (
            [("DELETE FROM audit_event WHERE id = :i", {"i": third["id"]})],
            fourth["id"],
            [insert_row(third)],
        ),
        "two records swapped": (
            [
                ("UPDATE audit_event SET seq = -1 WHERE id = :i", {"i": third["id"]}),
                ("UPDATE audit_event SET seq = 3 WHERE id = :i", {"i": fourth["id"]}),
                ("UPDATE audit_event SET seq = 4 WHERE id = :i", {"i": third["id"]}),
            ],
            fourth["id"],
            [
                ("UPDATE audit_event SET seq = -1 WHERE id = :i", {"i": fourth["id"]}),
                ("UPDATE audit_event SET seq = 3 WHERE id = :i", {"i": third["id"]}),
                ("UPDATE audit_event SET seq = 4 WHERE id = :i", {"i": fourth["id"]}),
            ],
        ),
        "the newest record deleted": (
            [("DELETE FROM audit_event WHERE id = :i", {"i": newest["id"]})],
            "seq 5",
            [insert_row(newest)],
        ),
    }
    for what, (tamper, named, undo) in tampering.items():
        await execute(db, *tamper)
        broken = await audit_cli(settings, tmp_path, "verify")
        assert broken.returncode == 1, (what, broken.stdout, broken.stderr)
        assert "audit chain broken: workspace 'clinic-a'" in broken.stdout, what
        assert named in broken.stdout, (what, broken.stdout)
        # Back to the rows that verified above.
        await execute(db, *undo)
        assert await chain(db) == rows


async def test_audit_export_writes_json_lines_by_time_and_workspace(
    api: Api, db: Database, settings: Settings, tmp_path: Path
) -> None:
    setup = await create_setup(api)
    await create_setup(api, "Theirs", key=await create_api_key(db, "clinic-b"))
    assert (await mutate(api, "update", setupId=setup["id"], label="Later"))["setup"]
    shown = {r["id"]: r for r in await audit_records(api)}

    everything, theirs, bad = await asyncio.gather(
        audit_cli(settings, tmp_path, "export"),
        audit_cli(settings, tmp_path, "export", "--workspace", "clinic-b"),
        audit_cli(settings, tmp_path, "export", "--since", "yesterday"),
    )

    assert everything.returncode == 0, everything.stderr
    exported = [json.loads(line) for line in everything.stdout.splitlines()]
    assert [(r["workspace"], r["seq"]) for r in exported] == [
        ("clinic-a", 1),
        ("clinic-a", 2),
        ("clinic-a", 3),
        ("clinic-b", 1),
        ("clinic-b", 2),
    ]
    for record in exported:
        if record["workspace"] == "clinic-a":
            api_view = shown[record["id"]]
            assert record["occurredAt"] == api_view["occurredAt"]
            assert (record["action"], record["actor"], record["setupId"]) == (
                api_view["action"],
                api_view["actor"],
                api_view["setupId"],
            )
            assert record["changes"] == json.loads(api_view["changes"])
        assert len(record["hash"]) == 64
    assert [r["prevHash"] for r in exported[1:3]] == [r["hash"] for r in exported[0:2]]
    assert theirs.returncode == 0, theirs.stderr
    assert [json.loads(line) for line in theirs.stdout.splitlines()] == exported[3:]

    latest = exported[2]
    assert latest["action"] == "setup.updated"
    recent = await audit_cli(settings, tmp_path, "export", "--since", latest["occurredAt"])
    assert recent.returncode == 0, recent.stderr
    assert [json.loads(line) for line in recent.stdout.splitlines()] == [latest]
    assert bad.returncode == 2
    assert "--since" in bad.stderr
