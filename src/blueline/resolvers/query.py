"""Read side: list, detail and node lookups, all scoped to the caller's workspace."""

from __future__ import annotations

import strawberry

from blueline import ids
from blueline.persistence import queries
from blueline.resolvers.common import check_first, decode_cursor, encode_cursor, selects_child
from blueline.schema.context import AppInfo
from blueline.schema.types import (
    IMessageSetupConnection,
    IMessageSetupEdge,
    IMessageSetupStatusEnum,
    IMessageSetupType,
    Node,
    PageInfo,
    PhoneLineType,
    setup_status,
)


async def _setup(info: AppInfo, setup_id: str) -> IMessageSetupType | None:
    if ids.prefix_of(setup_id) != ids.SETUP:
        return None
    context = info.context
    workspace_id = await context.authorize()
    async with context.runtime.db.session() as session:
        row = await queries.get_setup_row(session, workspace_id, setup_id)
    return IMessageSetupType.from_row(row) if row else None


@strawberry.type
class Query:
    @strawberry.field(description="Setups of your workspace, newest first")
    async def imessage_setups(
        self,
        info: AppInfo,
        first: int | None = 20,
        after: str | None = None,
        status: IMessageSetupStatusEnum | None = None,
    ) -> IMessageSetupConnection:
        limit = check_first(20 if first is None else first)
        after_id = decode_cursor(after) if after is not None else None
        context = info.context
        db, workspace_id = context.runtime.db, await context.authorize()
        wanted = setup_status(status)
        # The page and the count come from one snapshot, so they never disagree.
        async with db.snapshot() as session:
            page = await queries.list_setups(
                session, workspace_id, first=limit, after_id=after_id, status=wanted
            )
            total = (
                await queries.count_setups(session, workspace_id, wanted)
                if selects_child(info, "totalCount")
                else None
            )
        edges = [
            IMessageSetupEdge(
                cursor=encode_cursor(row.setup.id), node=IMessageSetupType.from_row(row)
            )
            for row in page.rows
        ]
        return IMessageSetupConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=page.has_next_page,
                end_cursor=edges[-1].cursor if edges else None,
            ),
            _total=total,
        )

    @strawberry.field(description="One setup; null when missing or not yours")
    async def imessage_setup(self, info: AppInfo, id: strawberry.ID) -> IMessageSetupType | None:
        return await _setup(info, str(id))

    @strawberry.field
    async def node(self, info: AppInfo, id: strawberry.ID) -> Node | None:
        node_id = str(id)
        kind = ids.prefix_of(node_id)
        if kind == ids.SETUP:
            return await _setup(info, node_id)
        if kind == ids.PHONE_LINE:
            context = info.context
            workspace_id = await context.authorize()
            async with context.runtime.db.session() as session:
                line = await queries.get_line(session, workspace_id, node_id)
            return PhoneLineType.from_row(line) if line else None
        return None
