"""A minimal GraphQL-over-WebSocket client (graphql-transport-ws and legacy graphql-ws)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"


class GraphQLSocket:
    def __init__(self, ws: ClientConnection, protocol: str) -> None:
        self.ws = ws
        self.protocol = protocol
        self._ids = itertools.count(1)

    async def receive(self, timeout: float = 10) -> dict[str, Any]:
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            # Keep-alives of either protocol carry nothing for the test.
            if message.get("type") in ("ping", "pong", "ka"):
                if message["type"] == "ping":
                    await self.ws.send(json.dumps({"type": "pong"}))
                continue
            return dict(message)

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None) -> str:
        op_id = str(next(self._ids))
        kind = "subscribe" if self.protocol == TRANSPORT_WS else "start"
        payload = {"query": query, "variables": variables or {}}
        await self.ws.send(json.dumps({"id": op_id, "type": kind, "payload": payload}))
        return op_id

    async def next_data(self, op_id: str, timeout: float = 10) -> dict[str, Any]:
        message = await self.receive(timeout)
        assert message.get("id") == op_id, message
        assert message["type"] in ("next", "data"), message
        assert "errors" not in message["payload"], message
        data: dict[str, Any] = message["payload"]["data"]
        return data

    async def expect_error(self, op_id: str, timeout: float = 10) -> str:
        message = await self.receive(timeout)
        assert message.get("id") == op_id, message
        if message["type"] == "error":
            payload = message["payload"]
            errors = payload if isinstance(payload, list) else [payload]
        else:
            assert message["type"] in ("next", "data"), message
            errors = message["payload"]["errors"]
        return str(errors[0]["message"])

    async def closed(self, timeout: float = 10) -> tuple[int, str]:
        """The close code and reason the server ends the socket with (messages before it
        are skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await asyncio.wait_for(self.ws.recv(), max(deadline - loop.time(), 0.001))
            except ConnectionClosed as closed:
                frame = closed.rcvd
                return (frame.code, frame.reason) if frame is not None else (1006, "")
            except TimeoutError:
                raise AssertionError(f"the socket was still open after {timeout} s") from None

    async def expect_silence(self, seconds: float) -> None:
        """No data for ``seconds`` (completions of ended operations are not data)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                message = await self.receive(timeout=left)
            except TimeoutError:
                return
            if message.get("type") != "complete":
                raise AssertionError(f"expected nothing, got {message}")


@asynccontextmanager
async def graphql_ws(
    http_url: str,
    key: str | None,
    *,
    protocol: str = TRANSPORT_WS,
    expect_ack: bool = True,
) -> AsyncIterator[GraphQLSocket]:
    url = http_url.replace("http://", "ws://", 1).rstrip("/") + "/graphql"
    async with connect(url, subprotocols=[protocol], max_size=2**22) as ws:  # type: ignore[list-item]
        payload = {"Authorization": f"Bearer {key}"} if key is not None else {}
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        socket = GraphQLSocket(ws, protocol)
        if expect_ack:
            ack = await socket.receive()
            assert ack["type"] == "connection_ack", ack
        yield socket
