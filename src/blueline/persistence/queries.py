"""Read and write queries, scoped to a workspace wherever a client is behind them.

Functions take a session and flush at most; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import ScalarSelect, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from sqlmodel import col

from blueline.persistence.models import (
    ApiKey,
    IMessageSetup,
    LineStatus,
    PhoneLine,
    SetupState,
    SetupStatus,
    Workspace,
)
from blueline.persistence.types import utcnow


class SetupView(Protocol):
    """The public fields of a setup: a model instance or a plain result row."""

    @property
    def id(self) -> str: ...
    @property
    def workspace_id(self) -> str: ...
    @property
    def business_name(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def subaccount_id(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...


@dataclass(frozen=True)
class SetupRow:
    """A visible setup with its line count, as the list and detail views need it."""

    setup: SetupView
    phone_line_count: int


@dataclass(frozen=True)
class SetupPage:
    rows: list[SetupRow]
    has_next_page: bool


# Read views never need the sealed secrets: leave them in the database.
_WITHOUT_SECRETS = tuple(
    defer(getattr(IMessageSetup, name))
    for name in ("credentials_enc", "webhook_secret_enc", "input_fingerprint", "failure_reason")
)


_PUBLIC_SETUP_COLUMNS = tuple(
    getattr(IMessageSetup, name)
    for name in (
        "id",
        "workspace_id",
        "business_name",
        "label",
        "status",
        "subaccount_id",
        "created_at",
        "updated_at",
    )
)


def _line_count() -> ScalarSelect[int]:
    return (
        select(func.count(col(PhoneLine.id)))
        .where(col(PhoneLine.setup_id) == col(IMessageSetup.id))
        .correlate(IMessageSetup)
        .scalar_subquery()
    )


async def list_setups(
    session: AsyncSession,
    workspace_id: str,
    *,
    first: int,
    after_id: str | None,
    status: SetupStatus | None,
) -> SetupPage:
    """One statement: a keyset page, newest first, with each setup's line count.

    Plain rows rather than model instances: building 50 ORM objects per page cost more
    than the query.
    """
    query = (
        select(*_PUBLIC_SETUP_COLUMNS, _line_count().label("line_count"))
        .where(col(IMessageSetup.workspace_id) == workspace_id)
        .where(col(IMessageSetup.state) == SetupState.READY)
        .order_by(col(IMessageSetup.id).desc())
        .limit(first + 1)
    )
    if status is not None:
        query = query.where(col(IMessageSetup.status) == status)
    if after_id is not None:
        query = query.where(col(IMessageSetup.id) < after_id)
    result = await session.execute(query)
    rows = [SetupRow(row, int(row.line_count)) for row in result.all()]
    return SetupPage(rows=rows[:first], has_next_page=len(rows) > first)


async def count_setups(session: AsyncSession, workspace_id: str, status: SetupStatus | None) -> int:
    query = (
        select(func.count())
        .select_from(IMessageSetup)
        .where(col(IMessageSetup.workspace_id) == workspace_id)
        .where(col(IMessageSetup.state) == SetupState.READY)
    )
    if status is not None:
        query = query.where(col(IMessageSetup.status) == status)
    return int((await session.execute(query)).scalar_one())


async def get_setup_row(session: AsyncSession, workspace_id: str, setup_id: str) -> SetupRow | None:
    query = (
        select(IMessageSetup, _line_count())
        .options(*_WITHOUT_SECRETS)
        .where(col(IMessageSetup.id) == setup_id)
        .where(col(IMessageSetup.workspace_id) == workspace_id)
        .where(col(IMessageSetup.state) == SetupState.READY)
    )
    found = (await session.execute(query)).first()
    return SetupRow(found[0], int(found[1])) if found else None


async def lines_for_setups(
    session: AsyncSession, workspace_id: str, setup_ids: Sequence[str]
) -> dict[str, list[PhoneLine]]:
    query = (
        select(PhoneLine)
        .where(col(PhoneLine.setup_id).in_(setup_ids))
        .where(col(PhoneLine.workspace_id) == workspace_id)
        .order_by(col(PhoneLine.setup_id), col(PhoneLine.id))
    )
    grouped: dict[str, list[PhoneLine]] = {setup_id: [] for setup_id in setup_ids}
    for line in (await session.execute(query)).scalars():
        grouped[line.setup_id].append(line)
    return grouped


async def get_line(session: AsyncSession, workspace_id: str, line_id: str) -> PhoneLine | None:
    query = (
        select(PhoneLine)
        .join(IMessageSetup, col(IMessageSetup.id) == col(PhoneLine.setup_id))
        .where(col(PhoneLine.id) == line_id)
        .where(col(PhoneLine.workspace_id) == workspace_id)
        .where(col(IMessageSetup.state) == SetupState.READY)
    )
    return (await session.execute(query)).scalars().first()


async def count_lines(session: AsyncSession, setup_id: str) -> int:
    query = select(func.count()).select_from(PhoneLine).where(col(PhoneLine.setup_id) == setup_id)
    return int((await session.execute(query)).scalar_one())


async def lock_setup(session: AsyncSession, setup_id: str) -> IMessageSetup | None:
    """The setup row, locked for the rest of the transaction (a no-op lock on SQLite,
    where BEGIN IMMEDIATE already serialises writers)."""
    query = select(IMessageSetup).where(col(IMessageSetup.id) == setup_id).with_for_update()
    return (await session.execute(query)).scalars().first()


async def find_by_idempotency_key(
    session: AsyncSession, workspace_id: str, key: str
) -> IMessageSetup | None:
    query = (
        select(IMessageSetup)
        .where(col(IMessageSetup.workspace_id) == workspace_id)
        .where(col(IMessageSetup.idempotency_key) == key)
    )
    return (await session.execute(query)).scalars().first()


async def setups_in_state(
    session: AsyncSession, state: SetupState, older_than: datetime, limit: int = 100
) -> list[IMessageSetup]:
    query = (
        select(IMessageSetup)
        .where(col(IMessageSetup.state) == state)
        .where(col(IMessageSetup.created_at) <= older_than)
        .order_by(col(IMessageSetup.id))
        .limit(limit)
    )
    return list((await session.execute(query)).scalars())


async def pending_lines(
    session: AsyncSession, older_than: datetime, limit: int = 500
) -> list[tuple[PhoneLine, IMessageSetup]]:
    query = (
        select(PhoneLine, IMessageSetup)
        .join(IMessageSetup, col(IMessageSetup.id) == col(PhoneLine.setup_id))
        .where(col(PhoneLine.status) == LineStatus.PENDING)
        .where(col(PhoneLine.requested_at) <= older_than)
        .where(col(IMessageSetup.state) == SetupState.READY)
        .order_by(col(PhoneLine.requested_at))
        .limit(limit)
    )
    return [(line, setup) for line, setup in (await session.execute(query)).all()]


async def workspace_by_name(session: AsyncSession, name: str) -> Workspace | None:
    query = select(Workspace).where(col(Workspace.name) == name)
    return (await session.execute(query)).scalars().first()


async def count_workspaces(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(Workspace))).scalar_one())


async def api_key_by_hash(session: AsyncSession, key_hash: str) -> ApiKey | None:
    query = (
        select(ApiKey)
        .where(col(ApiKey.key_hash) == key_hash)
        .where(col(ApiKey.revoked_at).is_(None))
    )
    return (await session.execute(query)).scalars().first()


async def touch_api_key(session: AsyncSession, key_id: str) -> None:
    await session.execute(
        update(ApiKey).where(col(ApiKey.id) == key_id).values(last_used_at=utcnow())
    )


async def api_key_active(session: AsyncSession, key_id: str) -> bool:
    query = (
        select(col(ApiKey.id))
        .where(col(ApiKey.id) == key_id)
        .where(col(ApiKey.revoked_at).is_(None))
    )
    return (await session.execute(query)).first() is not None


async def api_keys_with_workspace(
    session: AsyncSession, workspace_name: str | None
) -> list[tuple[ApiKey, Workspace]]:
    query = (
        select(ApiKey, Workspace)
        .join(Workspace, col(Workspace.id) == col(ApiKey.workspace_id))
        .order_by(col(Workspace.name), col(ApiKey.id))
    )
    if workspace_name is not None:
        query = query.where(col(Workspace.name) == workspace_name)
    return [(key, workspace) for key, workspace in (await session.execute(query)).all()]


async def revoke_api_key(session: AsyncSession, key_id: str) -> bool:
    result = await session.execute(
        update(ApiKey)
        .where(col(ApiKey.id) == key_id)
        .where(col(ApiKey.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(getattr(result, "rowcount", 0))
