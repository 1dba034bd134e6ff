"""ORM queries of the cold paths: workspaces, API keys, the provisioning state of setups.

Functions take a session and flush at most; the caller owns the transaction.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from blueline.persistence.models import ApiKey, IMessageSetup, SetupState, Workspace
from blueline.persistence.types import utcnow


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


async def lock_setups_after(session: AsyncSession, last_id: str, limit: int) -> list[IMessageSetup]:
    """The next batch of setups by id, locked (for re-encrypting their secrets)."""
    query = (
        select(IMessageSetup)
        .where(col(IMessageSetup.id) > last_id)
        .order_by(col(IMessageSetup.id))
        .limit(limit)
        .with_for_update()
    )
    return list((await session.execute(query)).scalars())


async def mark_failed(session: AsyncSession, setup_id: str, reason: str) -> None:
    """A create the provider refused or never answered: the key is released so a retry
    with it starts afresh, and recovery closes whatever the provider made anyway."""
    await session.execute(
        update(IMessageSetup)
        .where(col(IMessageSetup.id) == setup_id)
        .where(col(IMessageSetup.state) == SetupState.PROVISIONING)
        .values(
            state=SetupState.FAILED,
            idempotency_key=None,
            failure_reason=reason,
            updated_at=utcnow(),
        )
    )


async def discard_failed(session: AsyncSession, setup_id: str) -> None:
    await session.execute(
        update(IMessageSetup)
        .where(col(IMessageSetup.id) == setup_id)
        .where(col(IMessageSetup.state) == SetupState.FAILED)
        .values(state=SetupState.DISCARDED, updated_at=utcnow())
    )


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


async def revoked_since(session: AsyncSession, since: datetime) -> list[tuple[str, datetime]]:
    query = (
        select(col(ApiKey.id), col(ApiKey.revoked_at))
        .where(col(ApiKey.revoked_at) > since)
        .order_by(col(ApiKey.revoked_at))
        .limit(1000)
    )
    return [
        (key_id, revoked_at)
        for key_id, revoked_at in (await session.execute(query)).all()
        if revoked_at is not None
    ]


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
