"""A client for GraphQL subscriptions over HTTP multipart (``multipart/mixed`` with
``subscriptionSpec=1.0``, the protocol Apollo Client's HttpLink speaks), reading the
stream part by part as a browser would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

# What Apollo Client 4 sends for a subscription over HttpLink.
APOLLO_ACCEPT = (
    "multipart/mixed;boundary=graphql;subscriptionSpec=1.0,"
    "application/graphql-response+json,application/json;q=0.9"
)


class StreamCompleted(AssertionError):
    """The server ended the stream where the test expected another part."""


class MultipartSubscription:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = response.aiter_text()
        self._buffer = ""
        self._boundary = "\r\n--" + _boundary(response.headers.get("content-type", ""))
        self.completed = False

    async def _part(self) -> dict[str, Any] | None:
        """The next part's JSON, or None once the closing boundary has come."""
        while True:
            at = self._buffer.find(self._boundary)
            if at >= 0:
                part, self._buffer = (
                    self._buffer[:at],
                    self._buffer[at + len(self._boundary) :],
                )
                _, _, body = part.partition("\r\n\r\n")
                if body.strip():
                    value: dict[str, Any] = json.loads(body)
                    return value
                continue
            if self._buffer.startswith("--"):
                self.completed = True
                return None
            try:
                self._buffer += await anext(self._chunks)
            except StopAsyncIteration:
                self.completed = True
                return None

    async def next_message(self, timeout: float = 10) -> dict[str, Any]:
        """The next part that is not a heartbeat (``{}``): ``{"payload": …}`` with data
        or errors, or a transport-level ``{"payload": null, "errors": …}``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # One deadline for the message: heartbeats keep coming meanwhile.
            try:
                part = await asyncio.wait_for(self._part(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                raise AssertionError(f"no message within {timeout} s") from None
            if part is None:
                raise StreamCompleted("the stream completed")
            if part:
                return part

    async def next_data(self, timeout: float = 10) -> dict[str, Any]:
        message = await self.next_message(timeout)
        payload = message.get("payload")
        assert isinstance(payload, dict), message
        assert "errors" not in payload, message
        data: dict[str, Any] = payload["data"]
        return data

    async def expect_errors(self, timeout: float = 10) -> list[dict[str, Any]]:
        """The errors the stream ends with, then its completion."""
        message = await self.next_message(timeout)
        errors = message.get("errors") or (message.get("payload") or {}).get("errors")
        assert errors, message
        assert await asyncio.wait_for(self._part(), timeout) is None, "not completed"
        return list(errors)


def _boundary(content_type: str) -> str:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "boundary":
            return value.split(",")[0].strip().strip('"')
    return "-"


@asynccontextmanager
async def multipart_subscription(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    key: str | None,
    accept: str = APOLLO_ACCEPT,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[MultipartSubscription]:
    """POST the subscription; the response is open (status and headers readable) for
    the block, and closed after it."""
    sent = {"Accept": accept, "Content-Type": "application/json", **(headers or {})}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    body = {"query": query, "variables": variables or {}}
    async with client.stream("POST", "/graphql", json=body, headers=sent) as response:
        yield MultipartSubscription(response)
