"""A request id for every HTTP request and WebSocket connection, bound to every log line
it causes and echoed in ``X-Request-ID`` (except on webhook answers)."""

from __future__ import annotations

import re
import secrets
from typing import Any

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9_\-]{8,64}$")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(8)


def current_request_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("request_id")
    return value if isinstance(value, str) else None


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in (ScopeType.HTTP, ScopeType.WEBSOCKET):
            await app(scope, receive, send)
            return
        incoming = dict(scope.get("headers", [])).get(HEADER, b"").decode("latin-1")
        request_id = incoming if _ACCEPTABLE.match(incoming) else new_request_id()
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)

        # Webhook answers stay byte-identical across outcomes: a per-request header would
        # be one more thing to compare, so the id is only logged there.
        # Routers fold repeated slashes, so `//webhooks/…` is a webhook too.
        echo = not str(scope.get("path", "")).lstrip("/").startswith("webhooks/")

        async def send_with_id(message: Message) -> None:
            if echo and message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                headers.append((HEADER, request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            # WebSocket frames go straight through: wrapping every frame of every
            # subscriber costs a call per message for a header nobody reads there.
            await app(scope, receive, send_with_id if scope["type"] == ScopeType.HTTP else send)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    return middleware
