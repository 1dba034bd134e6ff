"""GraphQL over WebSocket: ``graphql-transport-ws`` and the legacy ``graphql-ws``, with
the same rules on both.

- The handshake is refused (403) for a page on an origin not in ``CORS_ORIGINS``;
  sockets beyond the per-process or per-address cap are closed at once with 1013
  (multipart subscriptions over HTTP count against the same caps).
- ``connection_init`` must arrive within ``ws_init_timeout_s`` (else 4408) and only
  once (else 4429). Its payload carries the key as ``Authorization``, ``authorization``
  or ``headers.Authorization``; a refused key closes with 4403 and says what to send,
  and is charged to the address's budget for bad keys, shared with HTTP (once it is
  spent, initialisations from there close with 1013 before any lookup).
- Messages are bounded by the server (``ws_max_size``); operations per socket are
  bounded; each operation is charged to the key's rate limit.
- A revoked key closes its sockets with 4403 wherever they are; shutdown closes with
  1012 and a slow consumer with 4500 (both: reconnect with ``after``).
- Pings come from one ticker for every socket, not a task per socket, and every task a
  socket starts ends with it.

Sockets are served straight on ASGI (:func:`serve`, called below Litestar): Litestar's
routing, dependency resolution and connection wrapper were about a seventh of the
server's CPU per socket opened, and the wrapper added a call to every frame sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from graphql import OperationType
from litestar.types import Receive, Scope, Send

from blueline.api import responses
from blueline.api.auth import TOO_MANY_FAILURES
from blueline.api.live import LiveEnd, Operation, Runner
from blueline.domain import Caller
from blueline.errors import StorageUnavailable
from blueline.observability.metrics import record_operation
from blueline.observability.request_id import current_request_id
from blueline.rate_limit import RateLimiter
from blueline.settings import Settings, normalize_origin

logger = logging.getLogger("blueline.ws")

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
PROTOCOLS = (TRANSPORT_WS, LEGACY_WS)

CLOSE_TRY_AGAIN = 1013
CLOSE_BAD_MESSAGE = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_SUBPROTOCOL = 4406
CLOSE_INIT_TIMEOUT = 4408
CLOSE_DUPLICATE_ID = 4409
CLOSE_TOO_MANY_INITS = 4429
CLOSE_RESTART = 1012

# Close reasons are at most 123 bytes.
FORBIDDEN_REASON = (
    'Forbidden: send connection_init with payload {"Authorization": "Bearer <api key>"}'
)
MAX_OPERATION_ID = 128


def key_from(payload: Any) -> str | None:
    """The bearer value in a connection_init payload, wherever clients put it."""
    if not isinstance(payload, dict):
        return None
    for candidate in (
        payload.get("Authorization"),
        payload.get("authorization"),
        (payload.get("headers") or {}).get("Authorization")
        if isinstance(payload.get("headers"), dict)
        else None,
        (payload.get("headers") or {}).get("authorization")
        if isinstance(payload.get("headers"), dict)
        else None,
    ):
        if isinstance(candidate, str):
            return candidate
    return None


class Live(Protocol):
    """A connection holding subscriptions: a socket, or a multipart stream over HTTP."""

    @property
    def client(self) -> str: ...

    @property
    def caller(self) -> Caller | None: ...

    def close_soon(self, code: int, reason: str) -> None: ...

    def ping_soon(self) -> None: ...


class Sockets:
    """Every GraphQL socket and multipart stream of the process: caps, the ping ticker,
    revocation. Both count toward the same caps, so neither is a way around them."""

    def __init__(self, settings: Settings, auth_failures: RateLimiter | None = None) -> None:
        self._settings = settings
        # Bad keys at connection_init spend the same per-address budget as over HTTP.
        self.auth_failures = auth_failures
        self._sessions: set[Live] = set()
        self._per_client: dict[str, int] = {}
        self._ticker: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def admit(self, session: Live) -> bool:
        s = self._settings
        client = session.client
        if (
            len(self._sessions) >= s.ws_max_connections
            or self._per_client.get(client, 0) >= s.ws_max_connections_per_client
        ):
            return False
        self._sessions.add(session)
        self._per_client[client] = self._per_client.get(client, 0) + 1
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(
                self._ping_forever(), name="blueline-ws-pings"
            )
        return True

    def leave(self, session: Live) -> None:
        if session not in self._sessions:
            return
        self._sessions.discard(session)
        left = self._per_client.get(session.client, 1) - 1
        if left:
            self._per_client[session.client] = left
        else:
            self._per_client.pop(session.client, None)

    def revoked(self, key_id: str) -> None:
        for session in tuple(self._sessions):
            if session.caller is not None and session.caller.api_key_id == key_id:
                session.close_soon(CLOSE_FORBIDDEN, "Forbidden: this API key has been revoked")

    def closing(self) -> None:
        for session in tuple(self._sessions):
            session.close_soon(CLOSE_RESTART, "The server is restarting; reconnect with `after`")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None

    async def _ping_forever(self) -> None:
        interval = self._settings.ws_keep_alive_interval_s
        while True:
            await asyncio.sleep(interval)
            for session in tuple(self._sessions):
                session.ping_soon()


class Disconnected(Exception):
    """The peer has gone: nothing more can be received or sent."""


class Socket:
    """One WebSocket on ASGI: accept, receive text, send text, close."""

    __slots__ = ("_gone", "_receive", "_send")

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._gone = False

    async def accept(self, subprotocol: str | None) -> None:
        if (await self._receive())["type"] != "websocket.connect":
            self._gone = True
            raise Disconnected
        await self._send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": []})

    async def receive_text(self) -> str:
        """The next message's text; empty for a binary one."""
        if self._gone:
            raise Disconnected
        message: Any = await self._receive()
        if message["type"] != "websocket.receive":
            self._gone = True
            raise Disconnected
        text = message.get("text")
        return text if isinstance(text, str) else ""

    async def send_text(self, text: str) -> None:
        if self._gone:
            raise Disconnected
        await self._send({"type": "websocket.send", "bytes": None, "text": text})

    async def close(self, code: int, reason: str = "") -> None:
        """Before ``accept`` this refuses the handshake (403)."""
        if self._gone:
            raise Disconnected
        await self._send({"type": "websocket.close", "code": code, "reason": reason})


class Session:
    """One socket: its protocol, its caller once initialised, its operations."""

    def __init__(
        self, socket: Socket, client: str, protocol: str, runner: Runner, sockets: Sockets
    ) -> None:
        self.socket = socket
        self.protocol = protocol
        self.runner = runner
        self.sockets = sockets
        self.settings = runner.runtime.settings
        self.client = client
        self.caller: Caller | None = None
        self.request_id = current_request_id()
        self._initialised = False
        self._operations: dict[str, asyncio.Task[object]] = {}
        self._closed = False
        self._background: set[asyncio.Task[object]] = set()

    # -- sending

    async def _send(self, text: str) -> bool:
        if self._closed:
            return False
        try:
            await self.socket.send_text(text)
            return True
        except (Disconnected, RuntimeError, OSError):
            self._closed = True
            return False

    async def _send_json(self, message: dict[str, Any]) -> bool:
        return await self._send(json.dumps(message, separators=(",", ":")))

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self.socket.close(code=code, reason=reason[:123])

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def close_soon(self, code: int, reason: str) -> None:
        self._spawn(self.close(code, reason))

    def ping_soon(self) -> None:
        if not self._initialised or self._closed:
            return
        message = {"type": "ping"} if self.protocol == TRANSPORT_WS else {"type": "ka"}
        self._spawn(self._send_json(message))

    # -- receiving

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.ws_init_timeout_s
        try:
            while not self._closed:
                try:
                    if self._initialised:
                        raw = await self.socket.receive_text()
                    else:
                        # A timer on this task, not a task per message as wait_for makes.
                        async with asyncio.timeout_at(deadline):
                            raw = await self.socket.receive_text()
                except TimeoutError:
                    await self.close(CLOSE_INIT_TIMEOUT, "Connection initialisation timeout")
                    return
                if not raw:
                    await self.close(CLOSE_BAD_MESSAGE, "Messages must be JSON text")
                    return
                try:
                    message = json.loads(raw)
                except (ValueError, RecursionError):
                    await self.close(CLOSE_BAD_MESSAGE, "Messages must be JSON objects")
                    return
                if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                    await self.close(CLOSE_BAD_MESSAGE, "Messages need a string `type`")
                    return
                await self._handle(message)
        except Disconnected:
            self._closed = True
        finally:
            for task in tuple(self._operations.values()):
                task.cancel()
            pending = [*self._operations.values(), *self._background]
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._operations.clear()

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        legacy = self.protocol == LEGACY_WS
        if kind == "connection_init":
            await self._init(message.get("payload"))
        elif kind == "ping" and not legacy:
            pong: dict[str, Any] = {"type": "pong"}
            if isinstance(message.get("payload"), dict):
                pong["payload"] = message["payload"]
            await self._send_json(pong)
        elif kind == "pong" and not legacy:
            return
        elif kind == ("start" if legacy else "subscribe"):
            await self._start(message)
        elif kind == ("stop" if legacy else "complete"):
            op_id = message.get("id")
            task = self._operations.pop(op_id, None) if isinstance(op_id, str) else None
            if task is not None:
                task.cancel()
        elif kind == "connection_terminate" and legacy:
            await self.close(1000, "")
        else:
            await self.close(CLOSE_BAD_MESSAGE, f"Unknown message type {kind[:40]!r}")

    async def _init(self, payload: Any) -> None:
        if self._initialised:
            await self.close(CLOSE_TOO_MANY_INITS, "Too many initialisation requests")
            return
        failures = self.sockets.auth_failures
        if failures is not None and not failures.has_tokens(self.client):
            await self.close(CLOSE_TRY_AGAIN, TOO_MANY_FAILURES)
            return
        try:
            caller = await self.runner.runtime.authenticator.authenticate(key_from(payload))
        except StorageUnavailable:
            # The key could not be checked (not cached, database unreachable): the client
            # should come back, not give up.
            await self.close(CLOSE_TRY_AGAIN, "The service is briefly unavailable; retry shortly")
            return
        if caller is None:
            if failures is not None:
                failures.allow(self.client)
            await self.close(CLOSE_FORBIDDEN, FORBIDDEN_REASON)
            return
        self.caller = caller
        self._initialised = True
        await self._send_json({"type": "connection_ack"})
        if self.protocol == LEGACY_WS:
            await self._send_json({"type": "ka"})

    async def _start(self, message: dict[str, Any]) -> None:
        if not self._initialised or self.caller is None:
            await self.close(CLOSE_UNAUTHORIZED, "Unauthorized")
            return
        op_id = message.get("id")
        payload = message.get("payload")
        if not isinstance(op_id, str) or not 0 < len(op_id) <= MAX_OPERATION_ID:
            await self.close(CLOSE_BAD_MESSAGE, "Operations need a string `id`")
            return
        if op_id in self._operations:
            await self.close(CLOSE_DUPLICATE_ID, f"Subscriber for {op_id[:64]} already exists")
            return
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            await self.close(CLOSE_BAD_MESSAGE, "`payload.query` must be a string")
            return
        if len(self._operations) >= self.settings.ws_max_operations:
            await self._error(
                op_id,
                [responses.error("Too many operations on this socket", responses.RATE_LIMITED)],
            )
            return
        limits = self.runner.runtime.api_key_limits
        key_id = self.caller.api_key_id
        # As over HTTP: an exhausted key is refused before its document is parsed, and
        # every document parsed is paid for, refused or not.
        if not limits.has_tokens(key_id):
            await self._error(op_id, [_rate_limited()])
            return
        variables = payload.get("variables")
        name = payload.get("operationName")
        if not isinstance(variables, dict | None) or not isinstance(name, str | None):
            await self._error(
                op_id,
                [
                    responses.error(
                        "`variables` must be an object, `operationName` a string",
                        responses.BAD_REQUEST,
                    )
                ],
            )
            return
        prepared = self.runner.prepare(payload["query"], name, variables)
        if not isinstance(prepared, Operation):
            limits.allow(key_id)
            record_operation(key_id, name, "error")
            await self._error(op_id, prepared)
            return
        runtime = self.runner.runtime
        if not runtime.authenticator.still_active(self.caller):
            await self.close(CLOSE_FORBIDDEN, "Forbidden: this API key has been revoked")
            return
        if not limits.allow(key_id, prepared.cost):
            await self._error(op_id, [_rate_limited()])
            return
        record_operation(key_id, prepared.label, "ok")
        task = asyncio.get_running_loop().create_task(self._operate(op_id, prepared))
        self._operations[op_id] = task
        task.add_done_callback(functools.partial(self._done, op_id))

    def _done(self, op_id: str, task: asyncio.Task[object]) -> None:
        if self._operations.get(op_id) is task:
            del self._operations[op_id]

    def _frame(self, op_id: str, payload_text: str) -> str:
        kind = "next" if self.protocol == TRANSPORT_WS else "data"
        return (
            '{"id":' + json.dumps(op_id) + ',"type":"' + kind + '","payload":' + payload_text + "}"
        )

    async def _error(self, op_id: str, errors: list[dict[str, Any]]) -> None:
        if self.protocol == TRANSPORT_WS:
            await self._send_json({"id": op_id, "type": "error", "payload": errors})
        else:
            await self._send_json(
                {"id": op_id, "type": "error", "payload": errors[0] if errors else {}}
            )

    async def _complete(self, op_id: str) -> None:
        await self._send_json({"id": op_id, "type": "complete"})

    async def _operate(self, op_id: str, op: Operation) -> None:
        assert self.caller is not None
        try:
            if op.kind != OperationType.SUBSCRIPTION:
                body, _unavailable = await self.runner.execute(
                    op, self.caller, self.request_id, "ws"
                )
                if await self._send(self._frame(op_id, body.decode())):
                    await self._complete(op_id)
                return
            async for text in self.runner.subscribe(op, self.caller, self.request_id, "ws"):
                if not await self._send(self._frame(op_id, text)):
                    return
            await self._complete(op_id)
        except LiveEnd as ended:
            if ended.close_code is not None:
                await self.close(
                    ended.close_code, ended.errors[0]["message"] if ended.errors else ""
                )
                return
            await self._error(op_id, ended.errors)
        except asyncio.CancelledError:
            raise
        except Exception:
            request_id = self.request_id or ""
            logger.exception("unexpected error in a WebSocket operation")
            await self._error(
                op_id,
                [
                    responses.error(
                        "Unexpected error. Quote the requestId when you report it.",
                        responses.INTERNAL,
                        requestId=request_id,
                    )
                ],
            )


def _rate_limited() -> dict[str, Any]:
    return responses.error("Too many requests for this API key; slow down", responses.RATE_LIMITED)


def _origin_allowed(origin: str | None, host: str, allowed: tuple[str, ...]) -> bool:
    if origin is None:
        return True  # not a browser: no ambient credentials to abuse
    normalized = normalize_origin(origin)
    if normalized is None:
        return False
    if normalized in allowed:
        return True
    return normalized.split("://", 1)[1] == host.lower()


async def serve(
    scope: Scope,
    receive: Receive,
    send: Send,
    runner: Runner,
    allowed_origins: tuple[str, ...],
    sockets: Sockets,
) -> None:
    """Serve one ``/graphql`` WebSocket from its handshake to its close."""
    ws: Any = scope
    origin: str | None = None
    host = ""
    for name, value in ws["headers"]:
        if name == b"origin" and origin is None:
            origin = value.decode("latin-1")
        elif name == b"host" and not host:
            host = value.decode("latin-1")
    socket = Socket(receive, send)
    try:
        if not _origin_allowed(origin, host, allowed_origins):
            logger.info("refused a WebSocket from an origin not in BLUELINE_CORS_ORIGINS")
            await socket.close(1008)  # before accept: the handshake answers 403
            return
        offered = ws.get("subprotocols") or []
        protocol = next((p for p in PROTOCOLS if p in offered), None)
        await socket.accept(protocol)
        if protocol is None:
            await socket.close(CLOSE_SUBPROTOCOL, "Subprotocol not acceptable")
            return
        peer = ws.get("client")
        client = str(peer[0]) if peer else "unknown"
        session = Session(socket, client, protocol, runner, sockets)
        if not sockets.admit(session):
            await session.close(CLOSE_TRY_AGAIN, "Too many connections; try again later")
            return
        try:
            await session.run()
        except Exception:
            logger.exception("unexpected error on a WebSocket")
            await session.close(1011, "Unexpected error; reconnect")
        finally:
            sockets.leave(session)
            await session.close(1000, "")
    except (Disconnected, OSError):
        return  # gone during the handshake
