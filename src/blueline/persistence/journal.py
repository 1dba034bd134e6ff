"""What every change writes beside itself, in its own transaction: its events (with the
read-model snapshot they carry) and its audit records (sealed into the workspace's chain).

The workspace rows are locked and their counters advanced by one UPDATE, taken last in
the transaction so they are held only until commit. That lock orders a workspace's
events and audit records by commit: numbers never go backwards, replay ``after`` a
number never misses a later commit, and each audit record's predecessor is settled.

A whole batch of changes (the webhook intake applies deliveries in batches) is written
with the same four statements as a single change: advance the counters, insert the
events, insert the audit records, store the chains' new heads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from blueline import ids
from blueline import readmodel as rm
from blueline.domain import AuditAction, Origin, SetupChange
from blueline.persistence.database import SqlConnection, run_together
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


@dataclass(frozen=True)
class Entry:
    """One change's events and audit records, in one workspace, by one origin."""

    workspace_id: str
    origin: Origin
    events: Sequence[Change] = ()
    audits: Sequence[Audit] = ()


@dataclass
class _Pending:
    entry: Entry
    event_rows: list[dict[str, Any]] = field(default_factory=list)


def changes_text(changes: Mapping[str, tuple[Any, Any]] | None) -> str:
    return json.dumps(
        {k: [wire(before), wire(after)] for k, (before, after) in (changes or {}).items()},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def advance_sql(counts: str) -> str:
    """The UPDATE that locks the workspaces named by ``counts`` (a table ``c`` of ``id,
    events, audits``) and reserves that many event and audit numbers in each: the
    counters' new tops come back with the chain's head (see :meth:`Reserved.of`)."""
    return (
        "UPDATE workspace SET event_seq = workspace.event_seq + c.events, "
        f"audit_seq = workspace.audit_seq + c.audits FROM {counts} WHERE workspace.id = c.id "
        "RETURNING workspace.id, workspace.event_seq, workspace.audit_seq, workspace.audit_head"
    )


def advance_rows_sql(d: Dialect) -> str:
    """:func:`advance_sql` for counts bound as rows at parameter 1."""
    return advance_sql(d.rows(1, "c", (("id", "text"), ("events", "bigint"), ("audits", "bigint"))))


@dataclass(frozen=True)
class Reserved:
    """Numbers reserved in one workspace by :func:`advance_sql`, as its row came back."""

    workspace_id: str
    first_event: int
    first_audit: int
    head: str
    events: int
    audits: int

    @classmethod
    def of(cls, row: Sequence[Any], counts: Mapping[str, tuple[int, int]]) -> Reserved:
        """From a row :func:`advance_sql` returned, given the counts it reserved."""
        workspace_id, event_top, audit_top, head = row
        events, audits = counts[str(workspace_id)]
        return cls(
            workspace_id=str(workspace_id),
            first_event=int(event_top) - events + 1,
            first_audit=int(audit_top) - audits + 1,
            head=str(head),
            events=events,
            audits=audits,
        )


def counts_of(entries: Sequence[Entry]) -> dict[str, tuple[int, int]]:
    """Events and audit records per workspace, as the entries will write them."""
    counts: dict[str, tuple[int, int]] = {}
    for entry in entries:
        events, audits = counts.get(entry.workspace_id, (0, 0))
        counts[entry.workspace_id] = (events + len(entry.events), audits + len(entry.audits))
    return counts


_AUDIT_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("id", "text"),
    ("workspace_id", "text"),
    ("seq", "bigint"),
    ("action", "text"),
    ("actor", "text"),
    ("setup_id", "text"),
    ("phone_line_id", "text"),
    ("request_id", "text"),
    ("changes", "text"),
    ("prev_hash", "text"),
    ("hash", "text"),
    ("key_id", "text"),
)


class Journal:
    def __init__(self, dialect: Dialect, sealer: Sealer) -> None:
        self._dialect = d = dialect
        self._sealer = sealer
        p = d.placeholder
        self._advance = advance_rows_sql(d)
        b = SqlBuilder(d)
        line = b.alias()
        snapshot = (
            "'{\"setup\":' || " + record_sql(b, rm.SETUP, "s") + " || ',\"line\":' || "
            f"COALESCE((SELECT {record_sql(b, rm.PHONE_LINE, line)} FROM {rm.PHONE_LINE.table} "
            f"{line} WHERE {line}.id = e.line_id), 'null') || '}}'"
        )
        assert not b.slots(), "snapshots take no parameters"
        self._insert_events = (
            "INSERT INTO event (id, workspace_id, seq, setup_id, line_id, type, payload, "
            f"created_at) SELECT e.id, s.workspace_id, e.seq, s.id, e.line_id, e.change, "
            f"{snapshot}, {p(2, 'timestamptz')} FROM "
            + d.rows(
                1,
                "e",
                (
                    ("id", "text"),
                    ("seq", "bigint"),
                    ("setup_id", "text"),
                    ("line_id", "text"),
                    ("change", "text"),
                ),
            )
            # The setups named again as an array: PostgreSQL then reads them by key
            # rather than hashing the record set against a scan of every setup.
            + f" JOIN {rm.SETUP.table} s ON s.id = e.setup_id WHERE {d.member_of('s.id', 3)} "
            "RETURNING id, payload"
        )
        # Each event also waits in the outbox until it is published (`EventOutbox`).
        self._insert_outbox = (
            f"INSERT INTO event_outbox (event_id, created_at) SELECT o.id, {p(2, 'timestamptz')} "
            "FROM " + d.rows(1, "o", (("id", "text"),))
        )
        names = ", ".join(name for name, _ in _AUDIT_COLUMNS)
        picked = ", ".join(f"a.{name}" for name, _ in _AUDIT_COLUMNS)
        self._insert_audits = (
            f"INSERT INTO audit_event ({names}, occurred_at) SELECT {picked}, "
            f"{p(2, 'timestamptz')} FROM " + d.rows(1, "a", _AUDIT_COLUMNS)
        )
        self._heads = (
            "UPDATE workspace SET audit_head = h.head FROM "
            + d.rows(1, "h", (("id", "text"), ("head", "text")))
            + " WHERE workspace.id = h.id"
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
        """Record one change's ``events`` and ``audits`` in ``conn``'s transaction; the
        events to publish once it commits."""
        [live] = await self.append_many(conn, [Entry(workspace_id, origin, events, audits)], now)
        return live

    async def append_many(
        self,
        conn: SqlConnection,
        entries: Sequence[Entry],
        now: datetime,
        along: Sequence[tuple[str, Sequence[Any]]] = (),
    ) -> list[list[LiveEvent]]:
        """Record many changes at once; each entry's events to publish after commit.

        ``along``: statements of the caller that need no workspace lock, sent in the
        same round trip as the counters' advance (on PostgreSQL).
        """
        if not any(e.events or e.audits for e in entries):
            for sql, args in along:
                await conn.execute(sql, args)
            return [[] for _ in entries]
        d = self._dialect
        counts = counts_of(entries)
        # Sorted, so concurrent batches lock workspaces in one order.
        rows = [{"id": ws, "events": n[0], "audits": n[1]} for ws, n in sorted(counts.items())]
        returned = await run_together(conn, d, [*along, (self._advance, (d.rows_value(rows),))])
        return await self.write(conn, entries, [Reserved.of(row, counts) for row in returned], now)

    async def write(
        self,
        conn: SqlConnection,
        entries: Sequence[Entry],
        reserved: Sequence[Reserved],
        now: datetime,
        along: Sequence[tuple[str, Sequence[Any]]] = (),
    ) -> list[list[LiveEvent]]:
        """Write the entries with the numbers ``reserved`` for them in this transaction
        (by :func:`advance_sql`, whose workspace locks are held to commit); ``along``
        goes in the same round trip. Each entry's events to publish after commit."""
        d = self._dialect
        counts = counts_of([e for e in entries if e.events or e.audits])
        got = {r.workspace_id: r for r in reserved}
        if set(got) != set(counts):
            raise LookupError("a change named a workspace that does not exist")
        if any((got[ws].events, got[ws].audits) != n for ws, n in counts.items()):
            raise RuntimeError("the numbers reserved do not match the changes to write")
        next_event = {ws: r.first_event for ws, r in got.items()}
        next_audit = {ws: r.first_audit for ws, r in got.items()}
        heads = {ws: r.head for ws, r in got.items()}

        pending: list[_Pending] = []
        event_rows: list[dict[str, Any]] = []
        audit_rows: list[dict[str, Any]] = []
        occurred_at = wire_datetime(now)
        for entry in entries:
            item = _Pending(entry)
            pending.append(item)
            ws = entry.workspace_id
            for change in entry.events:
                row = {
                    "id": ids.new_id(ids.EVENT),
                    "seq": next_event[ws],
                    "setup_id": change.setup_id,
                    "line_id": change.line_id,
                    "change": change.change.value,
                }
                next_event[ws] += 1
                item.event_rows.append(row)
                event_rows.append(row)
            for audit in entry.audits:
                record: dict[str, Any] = {
                    "id": ids.new_id(ids.AUDIT_EVENT),
                    "workspace_id": ws,
                    "seq": next_audit[ws],
                    "occurred_at": occurred_at,
                    "action": audit.action.value,
                    "actor": entry.origin.actor,
                    "setup_id": audit.setup_id,
                    "phone_line_id": audit.line_id,
                    "request_id": entry.origin.request_id,
                    "changes": changes_text(audit.changes),
                    "prev_hash": heads[ws],
                }
                next_audit[ws] += 1
                kid, heads[ws] = self._sealer.seal(record)
                del record["occurred_at"]  # bound once for the batch, as `now`
                audit_rows.append({**record, "hash": heads[ws], "key_id": kid})

        # One round trip for the rest: audit records and heads, the outbox, then the
        # events (whose snapshots come back to be published).
        parts: list[tuple[str, Sequence[Any]]] = list(along)
        if audit_rows:
            changed = sorted(ws for ws, n in counts.items() if n[1])
            parts.append((self._insert_audits, (d.rows_value(audit_rows), d.timestamp(now))))
            parts.append(
                (self._heads, (d.rows_value([{"id": ws, "head": heads[ws]} for ws in changed]),))
            )
        if event_rows:
            setups = d.members(sorted({row["setup_id"] for row in event_rows}))
            waiting = d.rows_value([{"id": row["id"]} for row in event_rows])
            parts.append((self._insert_outbox, (waiting, d.timestamp(now))))
            parts.append(
                (self._insert_events, (d.rows_value(event_rows), d.timestamp(now), setups))
            )
        payloads: dict[str, str] = {}
        if not parts:
            return [[] for _ in entries]
        rows_back = await run_together(conn, d, parts)
        if event_rows:
            for row_id, payload in rows_back:
                payloads[str(row_id)] = str(payload)
        return [
            [
                LiveEvent(
                    workspace_id=item.entry.workspace_id,
                    seq=row["seq"],
                    row_id=row["id"],
                    setup_id=row["setup_id"],
                    line_id=row["line_id"],
                    change=row["change"],
                    payload=payloads[row["id"]],
                )
                for row in item.event_rows
            ]
            for item in pending
        ]
