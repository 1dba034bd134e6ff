"""graphql-transport-ws with server pings.

Strawberry sends keep-alives only on the legacy protocol. Idle subscriptions behind
proxies and load balancers get cut after a minute or so of silence, and a dead client
is only noticed when something is written to it, so the server pings on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)


class PingingTransportWSHandler(BaseGraphQLTransportWSHandler[Any, Any]):
    ping_interval_s: float = 15.0

    async def handle(self) -> None:
        pinger = asyncio.create_task(self._ping_forever())
        try:
            await super().handle()
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger

    async def _ping_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            if not self.connection_acknowledged:
                continue
            try:
                await self.send_message({"type": "ping"})
            except Exception:  # the socket is gone; handle() is finishing
                return


def pinging_handler(interval_s: float) -> type[PingingTransportWSHandler]:
    return type("PingingHandler", (PingingTransportWSHandler,), {"ping_interval_s": interval_s})
