"""Per-request (HTTP) or per-connection (WebSocket) GraphQL context.

The context holds no database session: each resolver opens a short one, so a socket
that idles holds no connection. Loaders do not cache, because on a WebSocket one
context serves every operation of the connection.
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLError
from litestar.datastructures import State
from strawberry.dataloader import DataLoader
from strawberry.litestar import BaseContext
from strawberry.types import Info

from blueline.persistence import queries
from blueline.persistence.models import PhoneLine
from blueline.runtime import Runtime
from blueline.security.access import Caller, still_active


class Context(BaseContext, kw_only=True):
    runtime: Runtime
    caller: Caller | None = None
    connection_params: dict[str, Any] | None = None
    lines_loader: DataLoader[str, list[PhoneLine]] | None = None

    async def authorize(self) -> str:
        """The caller's workspace, checked for this operation.

        HTTP requests were authenticated and rate limited by the route guard. A
        WebSocket authenticated once at connection_init, so each operation re-checks
        that its key is still active and within its rate.
        """
        if self.websocket is not None and self.caller is not None:
            if not await still_active(self.runtime.db, self.caller):
                raise GraphQLError("This API key has been revoked")
            if not self.runtime.api_key_limits.allow(self.caller.api_key_id):
                raise GraphQLError("Too many requests for this API key; slow down")
        return self.workspace_id()

    async def recheck(self) -> None:
        """Between events of a long-running stream: is the key still active?"""
        if self.caller is not None and not await self.runtime.key_status.active(self.caller):
            raise GraphQLError("This API key has been revoked")

    def workspace_id(self) -> str:
        caller = self.caller
        if caller is None and self.request is not None:
            caller = self.request.scope.get("state", {}).get("caller")
        if caller is None:
            # The HTTP guard and the WebSocket handshake both authenticate first; this
            # is a programming error, never a client's.
            raise PermissionError("unauthenticated")
        return caller.workspace_id

    def lines(self) -> DataLoader[str, list[PhoneLine]]:
        if self.lines_loader is None:
            runtime, workspace_id = self.runtime, self.workspace_id()

            async def load(setup_ids: list[str]) -> list[list[PhoneLine]]:
                async with runtime.db.session() as session:
                    grouped = await queries.lines_for_setups(session, workspace_id, setup_ids)
                return [grouped.get(setup_id, []) for setup_id in setup_ids]

            self.lines_loader = DataLoader(load_fn=load, cache=False)
        return self.lines_loader


async def get_context(state: State) -> Context:
    return Context(runtime=state["runtime"])


AppInfo = Info[Context, None]
