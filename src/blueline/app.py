"""The Litestar application: GraphQL, webhooks, health; the lifespan owns the runtime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from litestar import Litestar, MediaType, Request, Response, get
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException, TooManyRequestsException
from litestar.handlers import BaseRouteHandler
from litestar.handlers.asgi_handlers import asgi
from litestar.types import Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from strawberry.exceptions import ConnectionRejectionError
from strawberry.litestar import make_graphql_controller
from strawberry.types.unset import UnsetType

from blueline.observability.metrics import metrics
from blueline.observability.request_id import request_id_middleware
from blueline.runtime import EMBEDDED_PROVIDER_PATH, Runtime, open_runtime
from blueline.schema import build_schema
from blueline.schema.context import Context, get_context
from blueline.schema.websocket import pinging_handler
from blueline.security.access import authenticate
from blueline.settings import Settings
from blueline.webhooks.routes import receive_imessage_webhook
from blueline_sandbox import create_sandbox_app

logger = logging.getLogger(__name__)

UNAUTHORIZED = "A valid API key is required: send `Authorization: Bearer <key>`"


async def require_api_key(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Authenticate every GraphQL HTTP request (WebSockets authenticate in connection_init)."""
    if connection.scope["type"] == ScopeType.WEBSOCKET:
        return
    if connection.scope.get("method") == "GET" and "query" not in connection.query_params:
        return  # the GraphiQL page itself; its queries carry the header
    runtime: Runtime = connection.app.state["runtime"]
    caller = await authenticate(runtime.db, connection.headers.get("authorization"))
    if caller is None:
        raise NotAuthorizedException(UNAUTHORIZED)
    if not runtime.api_key_limits.allow(caller.api_key_id):
        raise TooManyRequestsException("Too many requests for this API key; slow down")
    cast(dict[str, Any], connection.scope).setdefault("state", {})["caller"] = caller


def graphql_controller(settings: Settings) -> type:
    base = make_graphql_controller(
        build_schema(production=settings.is_production),
        path="/graphql",
        context_getter=get_context,
        graphql_ide=None if settings.is_production else "graphiql",
        allow_queries_via_get=not settings.is_production,
        # Legacy graphql-ws keep-alives; graphql-transport-ws pings come from the handler.
        keep_alive=True,
        keep_alive_interval=settings.ws_keep_alive_interval_s,
    )

    class GraphQLController(base):  # type: ignore[valid-type,misc]
        guards = [require_api_key]
        graphql_transport_ws_handler_class = pinging_handler(settings.ws_keep_alive_interval_s)

        async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
            params = context.connection_params or {}
            header = params.get("Authorization") or params.get("authorization")
            caller = await authenticate(
                context.runtime.db, header if isinstance(header, str) else None
            )
            if caller is None:
                raise ConnectionRejectionError({"message": UNAUTHORIZED})
            context.caller = caller
            return await super().on_ws_connect(context)  # type: ignore[no-any-return]

    return GraphQLController


@get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", include_in_schema=False)
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, str]]:
    runtime: Runtime = request.app.state["runtime"]
    checks: dict[str, str] = {}
    for name, probe in (("database", runtime.db.ping), ("event_bus", runtime.bus.ping)):
        try:
            await probe()
            checks[name] = "ok"
        except Exception as exc:  # readiness reports any failure, it never raises
            checks[name] = f"unavailable ({type(exc).__name__})"
    ready = all(v == "ok" for v in checks.values())
    return Response(checks, status_code=200 if ready else 503)


@get("/metrics", include_in_schema=False, media_type=MediaType.TEXT)
async def prometheus_metrics() -> Response[bytes]:
    return Response(generate_latest(metrics().registry), media_type=CONTENT_TYPE_LATEST)


def embedded_provider_route(settings: Settings) -> Any:
    sandbox = create_sandbox_app(
        settings.provider_api_key.get_secret_value(),
        auto_assign_after_s=settings.sandbox_auto_assign_after_s,
    )

    @asgi(EMBEDDED_PROVIDER_PATH, is_mount=True, copy_scope=True)
    async def embedded_provider(scope: Scope, receive: Receive, send: Send) -> None:
        await sandbox(scope, receive, send)

    return embedded_provider, sandbox


def create_app(settings: Settings) -> Litestar:
    handlers: list[Any] = [
        graphql_controller(settings),
        receive_imessage_webhook,
        healthz,
        readyz,
        prometheus_metrics,
    ]
    sandbox: Litestar | None = None
    if settings.uses_embedded_provider:
        route, sandbox = embedded_provider_route(settings)
        handlers.append(route)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_runtime(settings) as runtime:
            app.state["runtime"] = runtime
            await runtime.start_background()
            if sandbox is not None:
                async with sandbox.lifespan():
                    yield
            else:
                yield

    return Litestar(
        route_handlers=handlers,
        lifespan=[lifespan],
        middleware=[request_id_middleware],
        debug=False,
        openapi_config=None,
        # Logging is configured once by the process (CLI), not reconfigured per app.
        logging_config=None,
    )
