"""``blueline audit verify`` and ``blueline audit export``: the audit trail checked
against its hash chain, and written out as JSON lines."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from blueline.persistence.audit import AuditStore
from blueline.persistence.database import Database
from blueline.security.chain import GENESIS, Sealer
from blueline.security.vault import Vault
from blueline.wire import wire_datetime


@dataclass(frozen=True)
class Broken:
    workspace: str
    seq: int
    record_id: str | None
    reason: str

    def __str__(self) -> str:
        where = f"record {self.record_id} (seq {self.seq})" if self.record_id else f"seq {self.seq}"
        return f"workspace {self.workspace!r}: {where}: {self.reason}"


@dataclass(frozen=True)
class Verified:
    workspaces: int
    records: int
    broken: Broken | None


def _sealed_view(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "occurred_at": wire_datetime(record["occurred_at"])}


async def verify(db: Database, vault: Vault) -> Verified:
    """Recompute every workspace's chain; the first record that does not hold, if any.

    Detects an altered record (its hash no longer matches), a removed or reordered one
    (a gap in the numbers, or a link to the wrong predecessor) and a removed tail (the
    workspace's head and count no longer match the last record).
    """
    sealer = Sealer(vault)
    store = AuditStore(db)
    checked = 0
    workspaces = await store.workspaces()
    for workspace_id, name, count, head in workspaces:
        expected_seq, previous = 1, GENESIS
        async for record in store.records(workspace_id):
            checked += 1
            if record["seq"] != expected_seq:
                # Named by the record found in its place: the one a reader of the
                # chain meets first once it no longer holds.
                if record["seq"] < expected_seq:
                    reason = f"its number is out of order (seq {expected_seq} was expected)"
                elif record["seq"] == expected_seq + 1:
                    reason = f"the record before it (seq {expected_seq}) is missing"
                else:
                    reason = (
                        f"the records before it (seq {expected_seq} to {record['seq'] - 1}) "
                        "are missing"
                    )
                return Verified(
                    len(workspaces), checked, Broken(name, record["seq"], record["id"], reason)
                )
            if record["prev_hash"] != previous:
                return Verified(
                    len(workspaces),
                    checked,
                    Broken(
                        name,
                        record["seq"],
                        record["id"],
                        "its link to the record before it is broken",
                    ),
                )
            if not sealer.verifies(_sealed_view(record), record["key_id"], record["hash"]):
                return Verified(
                    len(workspaces),
                    checked,
                    Broken(
                        name,
                        record["seq"],
                        record["id"],
                        "its content does not match its hash (altered)",
                    ),
                )
            previous = record["hash"]
            expected_seq += 1
        if expected_seq - 1 != count or previous != head:
            return Verified(
                len(workspaces),
                checked,
                Broken(
                    name,
                    expected_seq,
                    None,
                    f"the chain ends at {expected_seq - 1} but the workspace recorded {count}: "
                    "records at the end were removed",
                ),
            )
    return Verified(len(workspaces), checked, None)


async def export(
    db: Database, *, since: datetime | None = None, workspace: str | None = None
) -> AsyncIterator[str]:
    """Records as JSON lines (the fields of ``auditEvents`` plus the chain's)."""
    store = AuditStore(db)
    for workspace_id, name, _count, _head in await store.workspaces():
        if workspace is not None and name != workspace:
            continue
        async for record in store.records(workspace_id):
            if since is not None and record["occurred_at"] < since:
                continue
            yield json.dumps(
                {
                    "workspace": name,
                    "seq": record["seq"],
                    "id": record["id"],
                    "occurredAt": wire_datetime(record["occurred_at"]),
                    "action": record["action"],
                    "actor": record["actor"],
                    "setupId": record["setup_id"],
                    "phoneLineId": record["phone_line_id"],
                    "requestId": record["request_id"],
                    "changes": json.loads(record["changes"]),
                    "prevHash": record["prev_hash"],
                    "hash": record["hash"],
                },
                separators=(",", ":"),
                ensure_ascii=False,
            )
