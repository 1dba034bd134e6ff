"""Live updates of the caller's workspace, optionally of one setup."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

import strawberry

from blueline.events.stream import CLOSE_FORBIDDEN, REVOKED, StreamEnded
from blueline.events.updates import line_updates, setup_updates, update_record
from blueline.persistence.eventlog import LiveEvent
from blueline.schema.context import AppInfo
from blueline.schema.payloads import IMessageSetupUpdate, PhoneLineUpdate
from blueline.schema.permissions import AUTHENTICATED


async def updates(
    info: AppInfo,
    wanted: Callable[[LiveEvent], bool],
    setup_id: strawberry.ID | None,
    after: str | None,
) -> AsyncGenerator[dict[str, Any], None]:
    """Expected endings (a bad argument, a slow consumer, a restart) are raised as
    :class:`~blueline.errors.BluelineError`; transports word them and close sockets."""
    context = info.context
    runtime = context.runtime
    caller = context.caller
    assert caller is not None  # the permission checked it
    events = await runtime.updates.open(
        caller.workspace_id,
        wanted=wanted,
        setup_id=None if setup_id is None else str(setup_id),
        after=after,
    )
    async for event in events:
        if not runtime.authenticator.still_active(caller):
            raise StreamEnded(REVOKED, CLOSE_FORBIDDEN)
        yield update_record(event)


@strawberry.type
class Subscription:
    @strawberry.subscription(
        graphql_type=PhoneLineUpdate,
        permission_classes=AUTHENTICATED,
        description="Every line created, assigned or released in your workspace (or one "
        "setup); `after` replays what was missed since that event id, then goes live",
    )
    async def phone_line_updates(
        self, info: AppInfo, setup_id: strawberry.ID | None = None, after: str | None = None
    ) -> AsyncGenerator[Any, None]:
        async for update in updates(info, line_updates, setup_id, after):
            yield update

    @strawberry.subscription(
        graphql_type=IMessageSetupUpdate,
        permission_classes=AUTHENTICATED,
        description="Every change to your workspace's setups (or one setup), on the same "
        "event log as phoneLineUpdates: an eventId from either is accepted by both",
    )
    async def imessage_setup_updates(
        self, info: AppInfo, setup_id: strawberry.ID | None = None, after: str | None = None
    ) -> AsyncGenerator[Any, None]:
        async for update in updates(info, setup_updates, setup_id, after):
            yield update
