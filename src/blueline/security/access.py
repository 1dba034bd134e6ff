"""Workspaces and their API keys: mint, authenticate, bootstrap the default workspace."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError

from blueline import ids
from blueline.errors import InvalidInput, NotFound
from blueline.persistence import queries
from blueline.persistence.database import Database
from blueline.persistence.models import ApiKey, Workspace
from blueline.persistence.types import utcnow
from blueline.security import api_keys

DEFAULT_WORKSPACE = "default"
LAST_USED_GRANULARITY = timedelta(minutes=1)


@dataclass(frozen=True)
class Caller:
    workspace_id: str
    api_key_id: str


def _check_name(name: str) -> str:
    cleaned = name.strip()
    if not cleaned or len(cleaned) > 128 or not cleaned.isprintable():
        raise InvalidInput("workspace names are 1-128 printable characters")
    return cleaned


async def create_api_key(db: Database, workspace_name: str) -> str:
    """Create the workspace if needed and mint a key for it; the key is returned once."""
    name = _check_name(workspace_name)
    for _ in range(2):
        try:
            async with db.transaction() as session:
                workspace = await queries.workspace_by_name(session, name)
                if workspace is None:
                    workspace = Workspace(id=ids.new_id(ids.WORKSPACE), name=name)
                    session.add(workspace)
                    await session.flush()
                key = api_keys.mint()
                session.add(
                    ApiKey(
                        id=ids.new_id(ids.API_KEY),
                        workspace_id=workspace.id,
                        display_prefix=api_keys.display_prefix(key),
                        key_hash=api_keys.digest(key),
                    )
                )
            return key
        except IntegrityError:
            continue  # the workspace was created concurrently; use it
    raise RuntimeError("could not create the API key")


async def bootstrap_default_workspace(db: Database) -> str | None:
    """On an empty database, create the ``default`` workspace and return its first key."""
    async with db.session() as session:
        if await queries.count_workspaces(session) > 0:
            return None
    return await create_api_key(db, DEFAULT_WORKSPACE)


async def authenticate(db: Database, authorization: str | None) -> Caller | None:
    """The caller behind a bearer key; None for a missing, unknown or revoked key."""
    key = api_keys.parse_bearer(authorization)
    if key is None:
        return None
    async with db.session() as session:
        found = await queries.api_key_by_hash(session, api_keys.digest(key))
    if found is None:
        return None
    now = utcnow()
    if found.last_used_at is None or now - found.last_used_at > LAST_USED_GRANULARITY:
        # Written at most once a minute per key: operators need "recently", not "exactly".
        async with db.transaction() as session:
            await queries.touch_api_key(session, found.id)
    return Caller(workspace_id=found.workspace_id, api_key_id=found.id)


async def still_active(db: Database, caller: Caller) -> bool:
    """Re-checked for each WebSocket operation, so a revoked key stops at once."""
    async with db.session() as session:
        return await queries.api_key_active(session, caller.api_key_id)


class KeyStatus:
    """Whether keys are still active, asked of the database at most once per interval
    per key, however many streams of that key ask: 2,000 subscriptions re-checking
    one key must cost one query, not 2,000."""

    def __init__(self, db: Database, interval_s: float) -> None:
        self._db = db
        self._interval_s = interval_s
        self._known: dict[str, tuple[float, bool]] = {}
        self._pending: dict[str, asyncio.Future[bool]] = {}

    async def active(self, caller: Caller) -> bool:
        loop = asyncio.get_running_loop()
        key_id = caller.api_key_id
        known = self._known.get(key_id)
        if known is not None and loop.time() - known[0] < self._interval_s:
            return known[1]
        pending = self._pending.get(key_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bool] = loop.create_future()
        self._pending[key_id] = future
        try:
            result = await still_active(self._db, caller)
            if len(self._known) > 10_000:
                self._known.clear()
            self._known[key_id] = (loop.time(), result)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._pending[key_id]


@dataclass(frozen=True)
class ApiKeyInfo:
    id: str
    workspace: str
    display_prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


async def list_api_keys(db: Database, workspace_name: str | None = None) -> list[ApiKeyInfo]:
    async with db.session() as session:
        rows = await queries.api_keys_with_workspace(session, workspace_name)
    return [
        ApiKeyInfo(
            id=key.id,
            workspace=workspace.name,
            display_prefix=key.display_prefix,
            created_at=key.created_at,
            last_used_at=key.last_used_at,
            revoked_at=key.revoked_at,
        )
        for key, workspace in rows
    ]


async def revoke_api_key(db: Database, key_id: str) -> None:
    async with db.transaction() as session:
        if not await queries.revoke_api_key(session, key_id):
            raise NotFound(f"no active API key with id {key_id!r}")
