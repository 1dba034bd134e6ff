"""What the provider and the frontends send: signed webhook deliveries, GraphQL requests
over HTTP, and subscriptions over ``graphql-transport-ws``."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bench.infra import HOST
from bench.loadgen import encode_request
from bench.seed import PendingLine, phone_number
from blueline.webhooks.signature import sign

WEBHOOK_PATH = "/webhooks/imessage/"
VERIFY_BASELINE_PATH = "/bench/webhook-verify/"


def assignment_body(subaccount_id: str, request_id: str, number: str) -> bytes:
    event = {
        "type": "line.assigned",
        "data": {"subaccount_id": subaccount_id, "request_id": request_id, "phone_number": number},
    }
    return json.dumps(event, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Delivery:
    setup_id: str
    line_id: str
    headers: dict[str, str]
    body: bytes

    def request(self, port: int, path_prefix: str = WEBHOOK_PATH) -> bytes:
        return encode_request("POST", path_prefix + self.setup_id, port, self.headers, self.body)


def signed(
    secret: str,
    body: bytes,
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{secrets.token_hex(8)}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def assignment(line: PendingLine, secret: str, number_seed: int) -> Delivery:
    """A fresh signed ``line.assigned`` delivery placing a number on a pending line."""
    body = assignment_body(line.subaccount_id, line.request_id, phone_number(900_000 + number_seed))
    return Delivery(line.setup_id, line.line_id, signed(secret, body), body)


def interleave_by_setup(lines: list[PendingLine]) -> list[PendingLine]:
    """Order lines so consecutive deliveries go to different setups (a provider places
    numbers for many subaccounts at once; same-setup deliveries serialise on its row)."""
    by_setup: dict[str, list[PendingLine]] = {}
    for line in lines:
        by_setup.setdefault(line.setup_id, []).append(line)
    columns = list(by_setup.values())
    ordered: list[PendingLine] = []
    for depth in range(max((len(c) for c in columns), default=0)):
        ordered.extend(c[depth] for c in columns if depth < len(c))
    return ordered


# ----------------------------------------------------------------------- GraphQL


def graphql_request(
    port: int, api_key: str, query: str, variables: dict[str, Any] | None = None
) -> bytes:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
    return encode_request("POST", "/graphql", port, headers, body)


TRANSPORT_WS = Subprotocol("graphql-transport-ws")


class Subscription:
    """One ``graphql-transport-ws`` connection running one subscription."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.op_id = "1"

    async def next_payload(self, within_s: float) -> dict[str, Any]:
        """The next ``next`` message's payload; pings are answered, other frames fail."""
        deadline = time.monotonic() + within_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no subscription data in time")
            message = json.loads(await asyncio.wait_for(self.ws.recv(), left))
            kind = message.get("type")
            if kind == "ping":
                await self.ws.send(json.dumps({"type": "pong"}))
                continue
            if kind == "pong":
                continue
            if kind != "next" or "errors" in message.get("payload", {}):
                raise RuntimeError(f"unexpected subscription message: {message}")
            payload: dict[str, Any] = message["payload"]
            return payload


async def open_subscription(
    base_url: str, api_key: str, query: str, *, compression: str | None = "deflate"
) -> Subscription:
    url = base_url.replace("http://", "ws://", 1) + "/graphql"
    ws = await connect(
        url,
        subprotocols=[TRANSPORT_WS],
        compression=compression,
        proxy=None,
        ping_interval=None,
        open_timeout=30,
        max_size=2**22,
    )
    try:
        await ws.send(
            json.dumps(
                {"type": "connection_init", "payload": {"Authorization": f"Bearer {api_key}"}}
            )
        )
        ack = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if ack.get("type") != "connection_ack":
            raise RuntimeError(f"subscription not acknowledged: {ack}")
        await ws.send(
            json.dumps(
                {"id": "1", "type": "subscribe", "payload": {"query": query, "variables": {}}}
            )
        )
    except BaseException:
        await ws.close()
        raise
    return Subscription(ws)


async def open_idle_socket(
    base_url: str, *, compression: str | None = "deflate"
) -> ClientConnection:
    url = base_url.replace("http://", "ws://", 1) + "/bench/ws-idle"
    return await connect(
        url, compression=compression, proxy=None, ping_interval=None, open_timeout=30
    )


@asynccontextmanager
async def subscription(base_url: str, api_key: str, query: str) -> AsyncIterator[Subscription]:
    sub = await open_subscription(base_url, api_key, query)
    try:
        yield sub
    finally:
        await sub.ws.close()


def ws_base(port: int) -> str:
    return f"http://{HOST}:{port}"
