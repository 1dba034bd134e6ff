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
from blueline.persistence.journal import Audit, Change, Entry, Journal
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
    """A batch's lines placed, its journal entries not yet written."""

    results: list[Assigned]
    entries: list[Entry]
    setups: list[str]
    # Sent with the journal's first round trip: the statuses the assignments moved.
    along: list[tuple[str, Sequence[Any]]] = field(default_factory=list)


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
        applied = await store.assign_many(
            conn, [(p.setup_id, p.request_id, p.phone_number) for p in placements], now
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
                entries.append(
                    Entry(
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
                )
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
        along: list[tuple[str, Sequence[Any]]] = []
        if setups:
            along.append(store.statuses_update(setups, now))
        return Placed(results, entries, setups, along)

    async def finish(
        self,
        conn: SqlConnection,
        placed: Placed,
        now: datetime,
        along: Sequence[tuple[str, Sequence[Any]]] = (),
    ) -> None:
        """Journal the applied placements (``along``: see ``Journal.append_many``)."""
        live = iter(
            await self._journal.append_many(conn, placed.entries, now, [*placed.along, *along])
        )
        for assigned in placed.results:
            if assigned.result is AssignResult.APPLIED:
                assigned.events = next(live)
