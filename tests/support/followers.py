"""A subscriber that behaves like a well-written frontend: whenever its stream ends (the
server closed the socket with 1012, 1013 or 4500, the process died, an operation
ended with an error), it reconnects and subscribes again with ``after`` set to the last
event id it received, for as long as it runs.

What it received, in order, is what a test compares with the event log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

SETUP_UPDATES = """
subscription Follow($after: String) {
  imessageSetupUpdates(after: $after) { eventId change setup { id } }
}"""

RECONNECT_PAUSE_S = 0.2


@dataclass
class Follower:
    """Follows every change of the key's workspace after ``after`` (an event id)."""

    base_url: str
    key: str
    after: str
    name: str = "follower"
    received: list[dict[str, Any]] = field(default_factory=list)
    # How each stream ended: a close code, or what went wrong connecting.
    endings: list[str] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)
    connects: int = 0
    _task: asyncio.Task[None] | None = None

    @property
    def event_ids(self) -> list[str]:
        return [update["eventId"] for update in self.received]

    @property
    def last(self) -> str:
        return self.received[-1]["eventId"] if self.received else self.after

    def start(self) -> Follower:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_for(self, event_ids: list[str], timeout_s: float) -> None:
        """Until every id in ``event_ids`` was received (or the time is up: the test's
        assertions then say what is missing)."""
        wanted = set(event_ids)
        deadline = time.monotonic() + timeout_s
        while not wanted <= set(self.event_ids) and time.monotonic() < deadline:
            if self._task is not None and self._task.done():
                self._task.result()  # a failure of the follower itself
                return
            await asyncio.sleep(0.05)

    async def _run(self) -> None:
        url = self.base_url.replace("http://", "ws://", 1).rstrip("/") + "/graphql"
        while True:
            try:
                await self._follow(url)
            except ConnectionClosed as closed:
                frame = closed.rcvd
                self.endings.append(str(frame.code) if frame is not None else "1006")
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                self.endings.append(type(exc).__name__)
            await asyncio.sleep(RECONNECT_PAUSE_S)

    async def _follow(self, url: str) -> None:
        async with connect(
            url,
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            open_timeout=5,
            max_size=2**22,
        ) as ws:
            init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {self.key}"}}
            await ws.send(json.dumps(init))
            self.connects += 1
            subscribed = False
            while True:
                message = json.loads(await ws.recv())
                kind = message.get("type")
                if kind == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                elif kind == "connection_ack" and not subscribed:
                    subscribed = True
                    payload = {"query": SETUP_UPDATES, "variables": {"after": self.last}}
                    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
                elif kind == "next":
                    body = message["payload"]
                    if "errors" in body:
                        self._ended_with(body["errors"])
                        return
                    update = body["data"]["imessageSetupUpdates"]
                    self.received.append(
                        {
                            "eventId": update["eventId"],
                            "change": update["change"],
                            "setupId": update["setup"]["id"],
                        }
                    )
                elif kind == "error":
                    self._ended_with(message["payload"])
                    return
                elif kind == "complete":
                    self.endings.append("complete")
                    return

    def _ended_with(self, errors: list[dict[str, Any]]) -> None:
        codes = [(e.get("extensions") or {}).get("code") for e in errors]
        self.endings.append(f"error {codes}")
        # Only "try again later" is expected; anything else is reported by the test.
        if codes != ["UNAVAILABLE"]:
            self.errors.append(errors)
