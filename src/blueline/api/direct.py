"""The hottest routes, answered below Litestar: ``POST /graphql``, a provider's
``POST /webhooks/imessage/{id}``, and the ``/graphql`` WebSocket.

Litestar's routing, middleware stack, dependency resolution and response objects cost
more per request than a compiled query or a batched webhook apply does. These two
routes are answered here from the same functions Litestar's handlers call
(authentication, the refusals, ``answer_post``, ``deliver``) and with the headers
Litestar would send (CORS included); sockets are served by :func:`websocket.serve`.
A multipart subscription goes on to Litestar, and so does every other route."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.exceptions import NotAuthorizedException, TooManyRequestsException
from litestar.types import ASGIApp, Receive, Scope, Send

from blueline.api import webhooks, websocket
from blueline.api.auth import identify
from blueline.api.http import (
    GRAPHQL_PATH,
    accepts_multipart_subscription,
    answer_post,
    before_body,
    internal,
    too_large,
    too_many,
    unauthorized,
    unavailable,
)
from blueline.api.live import Runner
from blueline.api.responses import Answer, internal_plain
from blueline.errors import StorageUnavailable
from blueline.observability.request_id import current_request_id
from blueline.rate_limit import RateLimiter
from blueline.runtime import Runtime
from blueline.webhooks.intake import MAX_BODY_BYTES, Outcome

logger = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]

# Litestar's router took the socket with a trailing slash too.
_SOCKET_PATHS = (GRAPHQL_PATH, GRAPHQL_PATH + "/")


class _Gone(Exception):
    """The client disconnected before its body arrived."""


def cors_headers(config: CORSConfig | None) -> tuple[Headers, Headers]:
    """The headers Litestar's CORS middleware adds to an answer to a request with an
    ``Origin``: for an allowed origin (``Access-Control-Allow-Origin`` is then set per
    request), and for any other."""
    if config is None:
        return [], []
    simple = [
        (name.lower().encode(), value.encode()) for name, value in config.simple_headers.items()
    ]
    rest = [
        (b"access-control-allow-headers", ", ".join(sorted(set(config.allow_headers))).encode()),
        (b"access-control-allow-methods", ", ".join(sorted(set(config.allow_methods))).encode()),
    ]
    return simple, rest


class Direct:
    def __init__(
        self,
        app: ASGIApp,
        litestar: Litestar,
        *,
        failures: RateLimiter,
        max_body_bytes: int,
        cors: CORSConfig | None,
        sockets: websocket.Sockets,
        allowed_origins: tuple[str, ...],
    ) -> None:
        self._app = app
        self._state = litestar.state
        self._failures = failures
        self._max_body_bytes = max_body_bytes
        self._cors = cors
        self._cors_simple, self._cors_rest = cors_headers(cors)
        self._sockets = sockets
        self._allowed_origins = allowed_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        http: Any = scope
        if http["type"] == "http" and http["method"] == "POST":
            path: str = scope["path"]
            runtime: Runtime | None = getattr(self._state, "runtime", None)
            if runtime is not None:
                if path == GRAPHQL_PATH:
                    if await self._graphql(runtime, scope, receive, send):
                        return
                elif path.startswith(webhooks.PATH_PREFIX):
                    setup_id = path[len(webhooks.PATH_PREFIX) :]
                    if setup_id and "/" not in setup_id:
                        await self._webhook(runtime, setup_id, scope, receive, send)
                        return
        elif http["type"] == "websocket" and scope["path"] in _SOCKET_PATHS:
            runner: Runner | None = getattr(self._state, "runner", None)
            if runner is not None:
                await websocket.serve(
                    scope, receive, send, runner, self._allowed_origins, self._sockets
                )
                return
        await self._app(scope, receive, send)

    async def _graphql(self, runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> bool:
        headers = _first_values(scope)
        accept = headers.get(b"accept", "")
        runner: Runner | None = getattr(self._state, "runner", None)
        if runner is None or accepts_multipart_subscription(accept):
            return False  # a stream: Litestar's handler
        try:
            answer = await self._graphql_answer(runtime, runner, scope, receive, headers, accept)
        except _Gone:
            return True
        except NotAuthorizedException as exc:
            answer = unauthorized(str(exc.detail))
        except TooManyRequestsException as exc:
            answer = too_many(str(exc.detail))
        except StorageUnavailable:
            answer = unavailable()
        except Exception:
            logger.exception("unexpected error answering %s", GRAPHQL_PATH)
            answer = internal()
        await self._send(send, answer, headers.get(b"origin", ""))
        return True

    async def _graphql_answer(
        self,
        runtime: Runtime,
        runner: Runner,
        scope: Scope,
        receive: Receive,
        headers: dict[bytes, str],
        accept: str,
    ) -> Answer:
        caller = await identify(
            runtime, self._failures, _client(scope), headers.get(b"authorization")
        )
        refused = before_body(
            headers.get(b"content-type", ""),
            headers.get(b"content-length", ""),
            self._max_body_bytes,
        )
        if refused is not None:
            return refused
        body = await _body(receive, self._max_body_bytes)
        if body is None:
            return too_large(self._max_body_bytes)
        result = await answer_post(runner, caller, body, accept)
        # Only a request that asked for a stream is given one, and those went to Litestar.
        assert isinstance(result, Answer)
        return result

    async def _webhook(
        self, runtime: Runtime, setup_id: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        raw: list[tuple[bytes, bytes]] = list(scope["headers"])
        try:
            answer = webhooks.too_large(_value(raw, b"content-length"))
            if answer is None:
                body = await _body(receive, MAX_BODY_BYTES)
                if body is None:
                    answer = webhooks.answer(Outcome.TOO_LARGE)
                else:
                    signed = webhooks.signed_headers(lambda name: _values(raw, name.encode()))
                    answer = await webhooks.deliver(runtime, setup_id, signed, body, _client(scope))
        except _Gone:
            return
        except Exception:
            logger.exception("unexpected error answering a webhook")
            answer = internal_plain(current_request_id())
        await self._send(send, answer, _value(raw, b"origin"))

    async def _send(self, send: Send, answer: Answer, origin: str) -> None:
        body = answer.body
        out: Headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in (answer.headers or {}).items()
        ]
        out.append((b"content-type", b"application/json"))
        out.append((b"content-length", str(len(body)).encode()))
        if origin and self._cors is not None:
            out.extend(self._cors_simple)
            if self._cors.is_origin_allowed(origin):
                out.append((b"access-control-allow-origin", origin.encode("latin-1")))
                out.append((b"vary", b"Origin"))
            out.extend(self._cors_rest)
        await send({"type": "http.response.start", "status": answer.status, "headers": out})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _first_values(scope: Scope) -> dict[bytes, str]:
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name not in found:
            found[name] = value.decode("latin-1")
    return found


def _values(raw: list[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in raw if key == name]


def _value(raw: list[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in raw:
        if key == name:
            return value.decode("latin-1")
    return ""


def _client(scope: Scope) -> str:
    client: Any = scope.get("client")
    return str(client[0]) if client else "unknown"


async def _body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it is over ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Any = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
