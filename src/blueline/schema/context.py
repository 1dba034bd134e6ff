"""The GraphQL context: who is asking, through what, on behalf of which request.

One per HTTP request, and one per WebSocket *operation* (never shared between
operations, and holding no database session: resolvers open short ones, so an idle
subscription holds no connection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from graphql import GraphQLError
from strawberry.types import Info

from blueline.domain import Caller, Origin, api_key_actor

if TYPE_CHECKING:
    from blueline.runtime import Runtime

UNAUTHENTICATED = "UNAUTHENTICATED"


@dataclass
class Context:
    runtime: Runtime
    caller: Caller | None
    request_id: str | None = None
    transport: str = "http"

    @property
    def workspace_id(self) -> str:
        if self.caller is None:
            # The transports authenticate first; the permission below refuses otherwise.
            raise GraphQLError("A valid API key is required", extensions={"code": UNAUTHENTICATED})
        return self.caller.workspace_id

    @property
    def origin(self) -> Origin:
        actor = api_key_actor(self.caller.api_key_id) if self.caller else "anonymous"
        return Origin(actor, self.request_id)


AppInfo = Info[Context, Any]
