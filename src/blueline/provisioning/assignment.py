"""Assigning placed numbers to pending lines: the one path for webhooks and
reconciliation, so both yield the same events, audit records and idempotency.

Works on a batch (the webhook intake applies concurrent deliveries together; a
reconciliation pass assigns one line at a time) with the same statements whatever its
size. Runs in the caller's transaction (the intake records the deliveries in the same
one); the caller publishes the returned events after commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from blueline.domain import AuditAction, LineStatus, Origin, SetupChange
from blueline.persistence.database import SqlConnection
from blueline.persistence.eventlog import LiveEvent
from blueline.persistence.journal import Audit, Change, Entry, Journal, Reserved
from blueline.persistence.setups import SetupStore


class AssignResult(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # already assigned to this number: nothing to do
    CONFLICT = "conflict"  # already assigned to another number: refused
    UNKNOWN_REQUEST = "unknown_request"
    # The line was released: acknowledged, nothing changes, and the number must be
    # released upstream again (the provider placed it after we gave the line back).
    RELEASED = "released"


@dataclass(frozen=True)
class Placement:
    workspace_id: str
    setup_id: str
    request_id: str
    phone_number: str
    origin: Origin


@dataclass
class Assigned:
    result: AssignResult
    events: list[LiveEvent] = field(default_factory=list)
    line_id: str | None = None


@dataclass
class Placed:
    """A batch's lines placed and their statuses recomputed, the journal's numbers
    reserved for them, its entries not yet written."""

    results: list[Assigned]
    entries: list[Entry]
    setups: list[str]
    reserved: list[Reserved]


# What each applied assignment journals (see ``_journaled``): its numbers are reserved
# in the statement that applies it.
_PER_ASSIGNMENT = (1, 1)


class Assigner:
    def __init__(self, store: SetupStore, journal: Journal) -> None:
        self._store = store
        self._journal = journal

    async def assign(
        self,
        conn: SqlConnection,
        *,
        workspace_id: str,
        setup_id: str,
        request_id: str,
        phone_number: str,
        origin: Origin,
        now: datetime,
    ) -> Assigned:
        placement = Placement(workspace_id, setup_id, request_id, phone_number, origin)
        placed = await self.place(conn, [placement], now)
        await self.finish(conn, placed, now)
        return placed.results[0]

    async def place(
        self, conn: SqlConnection, placements: list[Placement], now: datetime
    ) -> Placed:
        """Each placement's result, in order; :meth:`finish` journals the applied ones.
        At most one placement per setup: one event's snapshot shows its change only.

        Split in two so the caller can write what needs no workspace lock (the
        delivery log) before :meth:`finish` takes it, which it then holds to commit.
        """
        store = self._store
        applied, reserved = await store.assign_reserving(
            conn,
            [(p.setup_id, p.request_id, p.phone_number) for p in placements],
            now,
            _PER_ASSIGNMENT,
        )
        missing = [
            (p.setup_id, p.request_id)
            for p in placements
            if (p.setup_id, p.request_id) not in applied
        ]
        current = await store.lines_by_requests(conn, missing) if missing else {}
        results: list[Assigned] = []
        entries: list[Entry] = []
        for p in placements:
            key = (p.setup_id, p.request_id)
            line_id = applied.get(key)
            if line_id is not None:
                results.append(Assigned(AssignResult.APPLIED, line_id=line_id))
                entries.append(_journaled(p, line_id))
                continue
            line = current.get(key)
            if line is None:
                results.append(Assigned(AssignResult.UNKNOWN_REQUEST))
            elif line.status == LineStatus.RELEASED:
                results.append(Assigned(AssignResult.RELEASED, line_id=line.id))
            elif line.phone_number == p.phone_number:
                results.append(Assigned(AssignResult.DUPLICATE, line_id=line.id))
            else:
                results.append(Assigned(AssignResult.CONFLICT, line_id=line.id))
        setups = sorted({p.setup_id for p in placements if (p.setup_id, p.request_id) in applied})
        return Placed(results, entries, setups, reserved)

    async def finish(
        self,
        conn: SqlConnection,
        placed: Placed,
        now: datetime,
        along: Sequence[tuple[str, Sequence[Any]]] = (),
    ) -> None:
        """Journal the applied placements (``along``: see ``Journal.write``)."""
        live = iter(await self._journal.write(conn, placed.entries, placed.reserved, now, along))
        for assigned in placed.results:
            if assigned.result is AssignResult.APPLIED:
                assigned.events = next(live)


def _journaled(p: Placement, line_id: str) -> Entry:
    """One event and one audit record per applied assignment (``_PER_ASSIGNMENT``)."""
    return Entry(
        p.workspace_id,
        p.origin,
        [Change(SetupChange.LINE_ASSIGNED, p.setup_id, line_id)],
        [
            Audit(
                AuditAction.LINE_ASSIGNED,
                p.setup_id,
                line_id,
                {
                    "status": (LineStatus.PENDING.value, LineStatus.ASSIGNED.value),
                    "phoneNumber": (None, p.phone_number),
                },
            )
        ],
    )
