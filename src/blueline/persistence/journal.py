"""What every change writes beside itself, in its own transaction: its events (with the
read-model snapshot they carry) and its audit records (sealed into the workspace's chain).

The workspace row is locked and its counters advanced by one UPDATE, taken last in the
transaction so it is held only until commit. That lock orders the workspace's events
and audit records by commit: numbers never go backwards, replay ``after`` a number
never misses a later commit, and each audit record's predecessor is settled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from blueline import ids
from blueline import readmodel as rm
from blueline.domain import AuditAction, Origin, SetupChange
from blueline.persistence.database import SqlConnection
from blueline.persistence.dialect import Dialect
from blueline.persistence.eventlog import LiveEvent
from blueline.persistence.reads import SqlBuilder, record_sql
from blueline.security.chain import Sealer
from blueline.wire import wire, wire_datetime


@dataclass(frozen=True)
class Change:
    """An event to record: the snapshot is read from the rows as the change left them."""

    change: SetupChange
    setup_id: str
    line_id: str | None = None


@dataclass(frozen=True)
class Audit:
    action: AuditAction
    setup_id: str
    line_id: str | None = None
    # {field: (before, after)}; never a secret.
    changes: Mapping[str, tuple[Any, Any]] | None = None


def changes_text(changes: Mapping[str, tuple[Any, Any]] | None) -> str:
    return json.dumps(
        {k: [wire(before), wire(after)] for k, (before, after) in (changes or {}).items()},
        separators=(",", ":"),
        ensure_ascii=False,
    )


class Journal:
    def __init__(self, dialect: Dialect, sealer: Sealer) -> None:
        self._dialect = dialect
        self._sealer = sealer
        p = dialect.placeholder
        self._advance = (
            f"UPDATE workspace SET event_seq = event_seq + {p(2, 'bigint')}, "
            f"audit_seq = audit_seq + {p(3, 'bigint')} WHERE id = {p(1, 'text')} "
            "RETURNING event_seq, audit_seq, audit_head"
        )
        self._head = f"UPDATE workspace SET audit_head = {p(2, 'text')} WHERE id = {p(1, 'text')}"
        b = SqlBuilder(dialect)
        line = b.alias()
        snapshot = (
            "'{\"setup\":' || " + record_sql(b, rm.SETUP, "s") + " || ',\"line\":' || "
            f"COALESCE((SELECT {record_sql(b, rm.PHONE_LINE, line)} FROM {rm.PHONE_LINE.table} "
            f"{line} WHERE {line}.id = {b.param('line_id', 'text')}), 'null') || '}}'"
        )
        self._insert_event = (
            "INSERT INTO event (id, workspace_id, seq, setup_id, line_id, type, payload, "
            f"created_at) SELECT {b.param('event_id', 'text')}, s.workspace_id, "
            f"{b.param('seq', 'bigint')}, s.id, {b.param('line_id', 'text')}, "
            f"{b.param('change', 'text')}, {snapshot}, {b.param('now', 'timestamptz')} "
            f"FROM {rm.SETUP.table} s WHERE s.id = {b.param('setup_id', 'text')} RETURNING payload"
        )
        self._event_slots = b.slots()
        audit_columns = (
            "id",
            "workspace_id",
            "seq",
            "occurred_at",
            "action",
            "actor",
            "setup_id",
            "phone_line_id",
            "request_id",
            "changes",
            "prev_hash",
            "hash",
            "key_id",
        )
        self._audit_columns = audit_columns
        kinds = {"seq": "bigint", "occurred_at": "timestamptz"}
        self._insert_audit = (
            f"INSERT INTO audit_event ({', '.join(audit_columns)}) VALUES ("
            + ", ".join(p(i + 1, kinds.get(c, "text")) for i, c in enumerate(audit_columns))  # type: ignore[arg-type]
            + ")"
        )

    async def append(
        self,
        conn: SqlConnection,
        workspace_id: str,
        origin: Origin,
        events: Sequence[Change],
        audits: Sequence[Audit],
        now: datetime,
    ) -> list[LiveEvent]:
        """Record ``events`` and ``audits`` in ``conn``'s transaction; the events to
        publish once it commits."""
        if not events and not audits:
            return []
        row = await conn.fetchrow(self._advance, (workspace_id, len(events), len(audits)))
        if row is None:
            raise LookupError(f"no workspace {workspace_id}")
        event_top, audit_top, head = int(row[0]), int(row[1]), str(row[2])
        live: list[LiveEvent] = []
        for offset, change in enumerate(events):
            seq = event_top - len(events) + offset + 1
            row_id = ids.new_id(ids.EVENT)
            values = {
                "event_id": row_id,
                "seq": seq,
                "line_id": change.line_id,
                "change": change.change.value,
                "now": self._dialect.timestamp(now),
                "setup_id": change.setup_id,
            }
            payload = await conn.fetchval(
                self._insert_event, tuple(values[s] for s in self._event_slots)
            )
            live.append(
                LiveEvent(
                    workspace_id=workspace_id,
                    seq=seq,
                    row_id=row_id,
                    setup_id=change.setup_id,
                    line_id=change.line_id,
                    change=change.change.value,
                    payload=str(payload),
                )
            )
        for offset, audit in enumerate(audits):
            record: dict[str, Any] = {
                "id": ids.new_id(ids.AUDIT_EVENT),
                "workspace_id": workspace_id,
                "seq": audit_top - len(audits) + offset + 1,
                "occurred_at": wire_datetime(now),
                "action": audit.action.value,
                "actor": origin.actor,
                "setup_id": audit.setup_id,
                "phone_line_id": audit.line_id,
                "request_id": origin.request_id,
                "changes": changes_text(audit.changes),
                "prev_hash": head,
            }
            kid, head = self._sealer.seal(record)
            stored = {
                **record,
                "occurred_at": self._dialect.timestamp(now),
                "hash": head,
                "key_id": kid,
            }
            await conn.execute(self._insert_audit, tuple(stored[c] for c in self._audit_columns))
        if audits:
            await conn.execute(self._head, (workspace_id, head))
        return live
