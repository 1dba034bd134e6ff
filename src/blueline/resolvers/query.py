"""Read side: lists, one object by id, any node; all scoped to the caller's workspace."""

from __future__ import annotations

from typing import Any

import strawberry

from blueline import readmodel as rm
from blueline.resolvers.records import one, page
from blueline.schema.context import AppInfo
from blueline.schema.enums import IMessageSetupStatus
from blueline.schema.objects import (
    AuditEventConnection,
    IMessageSetup,
    IMessageSetupConnection,
    Node,
)
from blueline.schema.permissions import AUTHENTICATED


@strawberry.type
class Query:
    @strawberry.field(
        graphql_type=IMessageSetupConnection,
        permission_classes=AUTHENTICATED,
        description=rm.LIST_ROOTS["imessageSetups"].description,
    )
    async def imessage_setups(
        self,
        info: AppInfo,
        first: int | None = rm.DEFAULT_PAGE,
        after: str | None = None,
        status: IMessageSetupStatus | None = None,
    ) -> Any:
        return await page(info, "imessageSetups", first, after, {"status": status})

    @strawberry.field(
        graphql_type=IMessageSetup | None,
        permission_classes=AUTHENTICATED,
        description=rm.ONE_ROOTS["imessageSetup"].description,
    )
    async def imessage_setup(self, info: AppInfo, id: strawberry.ID) -> Any:
        return await one(info, "imessageSetup", str(id))

    @strawberry.field(
        permission_classes=AUTHENTICATED, description=rm.ONE_ROOTS["node"].description
    )
    async def node(self, info: AppInfo, id: strawberry.ID) -> Node | None:
        found: Any = await one(info, "node", str(id))
        return found  # type: ignore[no-any-return]

    @strawberry.field(
        graphql_type=AuditEventConnection,
        permission_classes=AUTHENTICATED,
        description=rm.LIST_ROOTS["auditEvents"].description,
    )
    async def audit_events(
        self,
        info: AppInfo,
        first: int | None = rm.DEFAULT_PAGE,
        after: str | None = None,
        setup_id: strawberry.ID | None = None,
    ) -> Any:
        return await page(info, "auditEvents", first, after, {"setupId": setup_id})
