"""Assigning a placed number to a pending line: the hot path of webhook intake.

Statements are built once, with bind parameters, and run on the transaction's Core
connection: building a statement per call and going through the ORM session cost
several times the database round trips themselves.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from blueline.events import outbox
from blueline.persistence.models import IMessageSetup, LineStatus, PhoneLine, SetupStatus
from blueline.persistence.types import UTCDateTime, utcnow

_LINES = PhoneLine.__table__  # type: ignore[attr-defined]
_SETUPS = IMessageSetup.__table__  # type: ignore[attr-defined]


class AssignResult(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # already assigned to this number: nothing to do
    CONFLICT = "conflict"  # already assigned to another number: refused
    UNKNOWN_REQUEST = "unknown_request"


# The conditional UPDATE is the forward-only check and the lock at once: of two
# concurrent deliveries one updates the row, the other then finds it assigned.
_ASSIGN = (
    update(_LINES)
    .where(_LINES.c.setup_id == bindparam("a_setup"))
    .where(_LINES.c.request_id == bindparam("a_request"))
    .where(_LINES.c.status == LineStatus.PENDING.value)
    .values(
        status=LineStatus.ASSIGNED.value,
        phone_number=bindparam("a_number"),
        assigned_at=bindparam("a_now", type_=UTCDateTime()),
    )
    .returning(*_LINES.c)
)
_CURRENT_NUMBER = (
    select(_LINES.c.phone_number)
    .where(_LINES.c.setup_id == bindparam("a_setup"))
    .where(_LINES.c.request_id == bindparam("a_request"))
)
_ACTIVATE = (
    update(_SETUPS)
    .where(_SETUPS.c.id == bindparam("a_setup"))
    .values(status=SetupStatus.ACTIVE.value, updated_at=bindparam("a_now", type_=UTCDateTime()))
    .returning(
        *_SETUPS.c,
        select(func.count())
        .select_from(_LINES)
        .where(_LINES.c.setup_id == _SETUPS.c.id)
        .scalar_subquery()
        .label("line_count"),
    )
)


async def assign_line(
    conn: AsyncConnection, setup_id: str, request_id: str, phone_number: str
) -> AssignResult:
    """Move a pending line to ASSIGNED, forward only, and record its event.

    The one path for webhooks and reconciliation alike, so both yield the same events
    and the same idempotency. Runs in the caller's transaction.
    """
    params = {"a_setup": setup_id, "a_request": request_id, "a_number": phone_number}
    now = utcnow()
    line = (await conn.execute(_ASSIGN, {**params, "a_now": now})).first()
    if line is None:
        current = (await conn.execute(_CURRENT_NUMBER, params)).first()
        if current is None:
            return AssignResult.UNKNOWN_REQUEST
        if current.phone_number == phone_number:
            return AssignResult.DUPLICATE
        return AssignResult.CONFLICT
    setup = (await conn.execute(_ACTIVATE, {"a_setup": setup_id, "a_now": now})).one()
    await outbox.record(conn, outbox.LINE_ASSIGNED, setup, line, int(setup.line_count))
    return AssignResult.APPLIED
