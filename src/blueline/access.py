"""Workspaces and their API keys: mint, authenticate, revoke, bootstrap ``default``.

:class:`Authenticator` is the one key check, for HTTP requests and WebSocket
connections alike. A key's answer is cached in the process (by the key's hash) for at
most ``ttl_s``, so a request costs no database round trip for its key. Revocation does
not wait for that: ``blueline api-keys revoke`` announces it on the bus, and every
process also polls for revocations every ``poll_interval_s``, so a revoked key stops
everywhere within about a second, running WebSocket streams included (listeners
registered with :meth:`Authenticator.on_revoked` close them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError

from blueline import ids
from blueline.domain import Caller
from blueline.errors import InvalidInput, NotFound
from blueline.persistence import queries
from blueline.persistence.database import Database
from blueline.persistence.models import ApiKey, Workspace
from blueline.persistence.types import utcnow
from blueline.provisioning.validation import clean_name
from blueline.security import api_keys

logger = logging.getLogger(__name__)

DEFAULT_WORKSPACE = "default"
LAST_USED_GRANULARITY = timedelta(minutes=1)
REVOKED_MESSAGE = "revoked_api_key"

__all__ = ["Authenticator", "Caller", "create_api_key", "list_api_keys", "revoke_api_key"]


def _check_name(name: str) -> str:
    cleaned, error = clean_name(name, "workspace", "Workspace name")
    if error is not None:
        raise InvalidInput(error.message)
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


@dataclass
class _Known:
    caller: Caller
    checked_at: float
    last_used_at: datetime | None


class Authenticator:
    def __init__(
        self,
        db: Database,
        *,
        ttl_s: float = 30.0,
        poll_interval_s: float = 0.5,
        max_entries: int = 10_000,
    ) -> None:
        self._db = db
        self._ttl_s = ttl_s
        self._poll_interval_s = poll_interval_s
        self._max = max_entries
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._revoked: set[str] = set()
        self._listeners: list[Callable[[str], None]] = []
        self._poller: asyncio.Task[None] | None = None
        self._touching: set[asyncio.Task[None]] = set()
        self._since = utcnow()

    async def authenticate(self, authorization: str | None) -> Caller | None:
        """The caller behind a bearer key; None for a missing, unknown or revoked key."""
        key = api_keys.parse_bearer(authorization)
        if key is None:
            return None
        digest = api_keys.digest(key)
        loop = asyncio.get_running_loop()
        known = self._known.get(digest)
        if known is not None and loop.time() - known.checked_at < self._ttl_s:
            if known.caller.api_key_id in self._revoked:
                return None
            self._known.move_to_end(digest)
            self._touch_later(known)
            return known.caller
        async with self._db.session() as session:
            found = await queries.api_key_by_hash(session, digest)
        if found is None or found.id in self._revoked:
            self._known.pop(digest, None)
            return None
        known = _Known(Caller(found.workspace_id, found.id), loop.time(), found.last_used_at)
        self._known[digest] = known
        if len(self._known) > self._max:
            self._known.popitem(last=False)
        self._touch_later(known)
        return known.caller

    def still_active(self, caller: Caller) -> bool:
        return caller.api_key_id not in self._revoked

    def on_revoked(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def revoked(self, key_id: str) -> None:
        """A key was revoked (announced on the bus, or found by the poll)."""
        if key_id in self._revoked:
            return
        self._revoked.add(key_id)
        for digest, known in list(self._known.items()):
            if known.caller.api_key_id == key_id:
                del self._known[digest]
        for listener in self._listeners:
            try:
                listener(key_id)
            except Exception:  # one listener must not keep the others from hearing it
                logger.exception("a revocation listener failed")

    def handle_control(self, message: dict[str, object]) -> None:
        if message.get("type") == REVOKED_MESSAGE and isinstance(message.get("key_id"), str):
            self.revoked(str(message["key_id"]))

    def _touch_later(self, known: _Known) -> None:
        now = utcnow()
        if known.last_used_at is not None and now - known.last_used_at < LAST_USED_GRANULARITY:
            return
        # Recorded at most once a minute per key, off the request path: operators need
        # "recently", not "exactly".
        known.last_used_at = now
        task = asyncio.get_running_loop().create_task(self._touch(known.caller.api_key_id))
        self._touching.add(task)
        task.add_done_callback(self._touching.discard)

    async def _touch(self, key_id: str) -> None:
        try:
            async with self._db.transaction() as session:
                await queries.touch_api_key(session, key_id)
        except Exception as exc:  # a missed "last used" is not worth a failed request
            logger.warning("could not record a key's last use (%s)", type(exc).__name__)

    # -- revocation poll

    async def start(self) -> None:
        self._since = utcnow() - timedelta(seconds=1)
        self._poller = asyncio.create_task(self._poll_forever(), name="blueline-revocations")

    async def stop(self) -> None:
        tasks = [t for t in (self._poller, *self._touching) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._poller = None

    async def poll_once(self) -> None:
        async with self._db.session() as session:
            found = await queries.revoked_since(session, self._since)
        for key_id, revoked_at in found:
            self._since = max(self._since, revoked_at)
            self.revoked(key_id)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                await self.poll_once()
            except Exception as exc:  # the database may be away; the next poll catches up
                logger.debug("revocation poll failed (%s)", type(exc).__name__)


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
