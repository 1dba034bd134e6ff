"""The GraphiQL page works in a real Chromium with every non-local request blocked.

A toy Strawberry schema on Litestar stands in for the API, authenticating like it does
(Bearer key on HTTP, the same header in connection_init on the WebSocket), so what is
tested is the page, its shipped assets and the Node harness.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import strawberry
from litestar import Litestar, MediaType, Request, Response, get
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException, NotFoundException
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath
from strawberry.exceptions import ConnectionRejectionError
from strawberry.litestar import make_graphql_controller
from strawberry.types.unset import UnsetType

from blueline.graphiql import ASSET_PATH, CONTENT_SECURITY_POLICY, asset, render_page
from tests.support.asgi_server import serve_asgi
from tests.support.node import NODE_DIR, ensure_node_modules, run_node

API_KEY = "bl_test_graphiql_offline_key"
BROWSER_TIMEOUT_S = 90


@strawberry.type
class Query:
    @strawberry.field
    def hello(self) -> str:
        return "world"


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def ticks(self) -> AsyncGenerator[str, None]:
        for n in (1, 2):
            await asyncio.sleep(0.05)
            yield f"tick {n}"


@dataclass
class Seen:
    """What reached the server, to check the browser sent the key where it should."""

    authorizations: list[str | None] = field(default_factory=list)
    connection_params: list[dict[str, Any]] = field(default_factory=list)


def toy_app(seen: Seen) -> Litestar:
    async def require_key(
        connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
    ) -> None:
        if connection.scope["type"] == ScopeType.WEBSOCKET:
            return
        if connection.scope.get("method") == "GET" and "query" not in connection.query_params:
            return  # the page itself
        seen.authorizations.append(connection.headers.get("authorization"))
        if connection.headers.get("authorization") != f"Bearer {API_KEY}":
            raise NotAuthorizedException("A valid API key is required")

    base = make_graphql_controller(
        strawberry.Schema(query=Query, subscription=Subscription), path="/graphql"
    )

    class GraphQLController(base):  # type: ignore[valid-type,misc]
        guards = [require_key]

        async def render_graphql_ide(self, request: Request[Any, Any, Any]) -> Response[str]:
            return Response(
                render_page("/graphql"),
                media_type=MediaType.HTML,
                headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY},
            )

        async def on_ws_connect(
            self, context: dict[str, Any]
        ) -> UnsetType | dict[str, object] | None:
            params = context.get("connection_params") or {}
            seen.connection_params.append(params)
            if params.get("Authorization") != f"Bearer {API_KEY}":
                raise ConnectionRejectionError({"message": "A valid API key is required"})
            return await super().on_ws_connect(context)  # type: ignore[no-any-return]

    @get(f"{ASSET_PATH}/{{name:str}}")
    async def graphiql_asset(name: FromPath[str]) -> Response[bytes]:
        found = asset(name)
        if found is None:
            raise NotFoundException()
        body, media_type = found
        return Response(body, media_type=media_type)

    # No CSP here: the harness itself must catch a page reaching out.
    @get("/leaky", media_type=MediaType.HTML)
    async def leaky() -> str:
        return (
            '<script src="https://cdn.invalid/react.js"></script>'
            '<img src="http://203.0.113.9/pixel.png">'
            "<script>fetch('https://api.invalid/x').catch(() => {});"
            "new WebSocket('wss://ws.invalid/socket');</script>"
        )

    return Litestar([GraphQLController, graphiql_asset, leaky], debug=False)


@pytest.fixture(scope="module")
def node_modules() -> None:
    ensure_node_modules()


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def server(seen: Seen) -> Iterator[str]:
    with serve_asgi(toy_app(seen)) as base_url:
        yield base_url


@pytest.mark.usefixtures("node_modules")
def test_subscription_runs_from_graphiql_with_the_network_off(server: str, seen: Seen) -> None:
    result = run_node(
        NODE_DIR / "graphiql_offline.mjs",
        {
            "base": server,
            "apiKey": API_KEY,
            "operation": "subscription Ticks {\n  ticks\n}\n",
            "expect": "tick 2",
            "timeoutMs": (BROWSER_TIMEOUT_S - 15) * 1000,
        },
        timeout_s=BROWSER_TIMEOUT_S,
    )

    assert result["ok"] is True
    assert result["blocked"] == []
    assert result["consoleErrors"] == []
    assert '"ticks": "tick 2"' in result["result"]
    assert result["rootTypes"] == ["query", "subscription"]
    # The placeholder never went out; the typed key went to HTTP and WebSocket alike.
    assert seen.authorizations
    assert set(seen.authorizations) == {f"Bearer {API_KEY}"}
    assert seen.connection_params == [{"Authorization": f"Bearer {API_KEY}"}]


@pytest.mark.usefixtures("node_modules")
def test_harness_blocks_and_reports_every_request_to_another_host(server: str) -> None:
    result = run_node(
        NODE_DIR / "external_requests.mjs",
        {"url": f"{server}/leaky", "settleMs": 500},
        timeout_s=BROWSER_TIMEOUT_S,
    )

    assert sorted(result["blocked"]) == [
        "http://203.0.113.9/pixel.png",
        "https://api.invalid/x",
        "https://cdn.invalid/react.js",
        "wss://ws.invalid/socket",
    ]
