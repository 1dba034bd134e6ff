"""Live line updates for the caller's workspace, optionally one setup."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import strawberry
from graphql import GraphQLError

from blueline import ids
from blueline.events.outbox import parse_event_id
from blueline.events.replay import StreamEnded, stream
from blueline.persistence import queries
from blueline.provisioning.service import SETUP_NOT_FOUND
from blueline.schema.context import AppInfo
from blueline.schema.types import IMessageSetupType, PhoneLineType, PhoneLineUpdate


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="Every line created or assigned in your workspace (or one setup); "
        "`after` replays what was missed since that event id, then goes live"
    )
    async def phone_line_updates(
        self, info: AppInfo, setup_id: strawberry.ID | None = None, after: str | None = None
    ) -> AsyncGenerator[PhoneLineUpdate, None]:
        context = info.context
        runtime, workspace_id = context.runtime, await context.authorize()
        wanted_setup = str(setup_id) if setup_id is not None else None
        if wanted_setup is not None:
            row = None
            if ids.prefix_of(wanted_setup) == ids.SETUP:
                async with runtime.db.session() as session:
                    row = await queries.get_setup_row(session, workspace_id, wanted_setup)
            if row is None:
                raise GraphQLError(SETUP_NOT_FOUND)
        after_seq = None
        if after is not None:
            after_seq = parse_event_id(after)
            if after_seq is None:
                raise GraphQLError("`after` is not a valid event id")
        loop = asyncio.get_running_loop()
        checked_at = loop.time()
        try:
            async for event in stream(
                runtime.db,
                runtime.bus.hub,
                workspace_id,
                setup_id=wanted_setup,
                after_seq=after_seq,
            ):
                if loop.time() - checked_at >= runtime.settings.api_key_recheck_interval_s:
                    # Answered from a per-key cache, so a burst of events to many
                    # streams of one key costs one query.
                    # A stream can run for days: a key revoked meanwhile stops it.
                    await context.recheck()
                    checked_at = loop.time()
                yield PhoneLineUpdate(
                    event_id=event.event_id,
                    setup=IMessageSetupType.from_snapshot(event.payload["setup"]),
                    phone_line=PhoneLineType.from_snapshot(event.payload["line"]),
                )
        except StreamEnded as ended:
            socket = context.websocket
            if ended.close_code is not None and socket is not None:
                await socket.close(code=ended.close_code, reason=str(ended)[:120])
                return
            raise GraphQLError(str(ended)) from None
