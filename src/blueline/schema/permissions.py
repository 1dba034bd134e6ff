"""Every root field needs a caller with a live key (the transports authenticate; this
states the rule where the fields are declared, and holds on every transport)."""

from __future__ import annotations

from typing import Any

from strawberry.permission import BasePermission
from strawberry.types import Info

from blueline.schema.context import UNAUTHENTICATED, Context


class Authenticated(BasePermission):
    message = "A valid API key is required: send `Authorization: Bearer <key>`"
    error_extensions = {"code": UNAUTHENTICATED}

    def has_permission(self, source: Any, info: Info[Context, Any], **kwargs: Any) -> bool:
        context = info.context
        caller = context.caller
        return caller is not None and context.runtime.authenticator.still_active(caller)


AUTHENTICATED: list[type[BasePermission]] = [Authenticated]
