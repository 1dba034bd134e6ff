"""Assigning a placed number to a pending line: the one path for webhooks and
reconciliation, so both yield the same events, audit records and idempotency.

Runs in the caller's transaction (the webhook intake records the delivery in the same
one); the caller publishes the returned events after commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from blueline.domain import AuditAction, LineStatus, Origin, SetupChange
from blueline.persistence.database import SqlConnection
from blueline.persistence.eventlog import LiveEvent
from blueline.persistence.journal import Audit, Change, Journal
from blueline.persistence.setups import SetupStore


class AssignResult(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # already assigned to this number: nothing to do
    CONFLICT = "conflict"  # already assigned to another number: refused
    UNKNOWN_REQUEST = "unknown_request"
    # The line was released: acknowledged, nothing changes, and the number must be
    # released upstream again (the provider placed it after we gave the line back).
    RELEASED = "released"


@dataclass
class Assigned:
    result: AssignResult
    events: list[LiveEvent] = field(default_factory=list)
    line_id: str | None = None


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
        store = self._store
        line_id = await store.assign(conn, setup_id, request_id, phone_number, now)
        if line_id is None:
            current = await store.line_by_request(conn, setup_id, request_id)
            if current is None:
                return Assigned(AssignResult.UNKNOWN_REQUEST)
            if current.status == LineStatus.RELEASED:
                return Assigned(AssignResult.RELEASED, line_id=current.id)
            if current.phone_number == phone_number:
                return Assigned(AssignResult.DUPLICATE, line_id=current.id)
            return Assigned(AssignResult.CONFLICT, line_id=current.id)
        await store.refresh_status(conn, setup_id, now)
        events = await self._journal.append(
            conn,
            workspace_id,
            origin,
            [Change(SetupChange.LINE_ASSIGNED, setup_id, line_id)],
            [
                Audit(
                    AuditAction.LINE_ASSIGNED,
                    setup_id,
                    line_id,
                    {
                        "status": (LineStatus.PENDING.value, LineStatus.ASSIGNED.value),
                        "phoneNumber": (None, phone_number),
                    },
                )
            ],
            now,
        )
        return Assigned(AssignResult.APPLIED, events, line_id)
