"""The Litestar application: GraphQL over HTTP and WebSocket, webhooks, health; the
lifespan owns the runtime."""

from __future__ import annotations

import gc
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from litestar import Litestar, MediaType, Request, Response
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, NotAuthorizedException, TooManyRequestsException
from litestar.handlers.asgi_handlers import asgi
from litestar.middleware import DefineMiddleware
from litestar.types import Receive, Scope, Send

from blueline.api import responses
from blueline.api.auth import ApiKeyAuthentication
from blueline.api.connections import bounded_http_protocol
from blueline.api.direct import Direct
from blueline.api.http import (
    failure,
    graphql_handlers,
    internal,
    too_many,
    unauthorized,
    unavailable,
)
from blueline.api.live import Runner
from blueline.api.operations import healthz, prometheus_metrics, readyz
from blueline.api.schema import build_schema
from blueline.api.webhooks import receive_imessage_webhook
from blueline.api.websocket import Sockets
from blueline.errors import StorageUnavailable
from blueline.observability.request_id import current_request_id, request_id_middleware
from blueline.rate_limit import RateLimiter
from blueline.runtime import EMBEDDED_PROVIDER_PATH, Runtime, open_runtime
from blueline.settings import Settings, is_loopback_host
from blueline.webhooks.intake import MAX_BODY_BYTES as WEBHOOK_MAX_BODY_BYTES

logger = logging.getLogger(__name__)


def _runtime(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


def _runner(state: State) -> Runner:
    runner: Runner = state.runner
    return runner


# Headers a proxy adds when it relays a request: one on this machine (a tunnel, a dev
# proxy) makes every caller look local, but says so.
_RELAYED = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-real-ip"})


def _host_of(value: str) -> str | None:
    try:
        return urlsplit(f"//{value}").hostname
    except ValueError:
        return None


def from_this_machine(scope: Scope, own_host: str | None) -> bool:
    """Whether a request was made on this machine, directly, to this server's own name.

    The peer address alone is not enough: a proxy on loopback relays anyone's request,
    and a page elsewhere can rebind its DNS name to 127.0.0.1 and read the answers as its
    own, but its name stays in ``Host``."""
    client = scope.get("client")
    if not client or not is_loopback_host(str(client[0])):
        return False
    host = None
    for name, value in scope.get("headers", []):
        if name in _RELAYED:
            return False
        if name == b"host":
            host = value.decode("latin-1")
    if host is None:
        return True  # no browser sends a request without one
    hostname = _host_of(host)
    return hostname is not None and (is_loopback_host(hostname) or hostname == own_host)


def embedded_provider_route(settings: Settings) -> tuple[Any, Litestar]:
    from blueline_sandbox import create_sandbox_app

    sandbox = create_sandbox_app(
        settings.provider_api_key.get_secret_value(),
        auto_assign_after_s=settings.sandbox_auto_assign_after_s,
    )
    own_host = urlsplit(settings.base_url()).hostname

    @asgi(EMBEDDED_PROVIDER_PATH, is_mount=True, copy_scope=True)
    async def embedded_provider(scope: Scope, receive: Receive, send: Send) -> None:
        # The simulator shows every subaccount's secrets to whoever asks: only to this
        # machine (serve also refuses to listen beyond loopback with it embedded).
        if not from_this_machine(scope, own_host):
            response = Response(b"", status_code=404)
            await response.to_asgi_response(app=None, request=Request(scope))(scope, receive, send)
            return
        await sandbox(scope, receive, send)

    return embedded_provider, sandbox


def _is_graphql(request: Request[Any, Any, Any]) -> bool:
    return request.url.path.startswith("/graphql")


def _unauthorized(request: Request[Any, Any, Any], exc: NotAuthorizedException) -> Response[Any]:
    return unauthorized(str(exc.detail)).response()


def _too_many(request: Request[Any, Any, Any], exc: TooManyRequestsException) -> Response[Any]:
    return too_many(str(exc.detail)).response()


# Framework refusals under /graphql, by status; any other is a bad request.
_HTTP_CODES = {
    404: "NOT_FOUND",
    405: responses.METHOD_NOT_ALLOWED,
    413: responses.PAYLOAD_TOO_LARGE,
}


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if _is_graphql(request):
        code = _HTTP_CODES.get(exc.status_code, responses.BAD_REQUEST)
        return failure(exc.status_code, str(exc.detail), code)
    return Response(
        {"status_code": exc.status_code, "detail": exc.detail},
        status_code=exc.status_code,
        media_type=MediaType.JSON,
    )


def _storage_unavailable(request: Request[Any, Any, Any], exc: StorageUnavailable) -> Response[Any]:
    # Raised before a handler could map it (authenticating a key the cache no longer
    # holds): the request changed nothing, so the client is told to retry, not that
    # the server broke.
    if _is_graphql(request):
        return unavailable().response()
    return Response(
        {"error": "temporarily unavailable"},
        status_code=503,
        media_type=MediaType.JSON,
        headers={"Retry-After": "1"},
    )


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    logger.error("unexpected error answering %s", request.url.path, exc_info=exc)
    if _is_graphql(request):
        return internal().response()
    return responses.internal_plain(current_request_id()).response()


def cors_config(settings: Settings) -> CORSConfig | None:
    origins = list(settings.allowed_origins)
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["authorization", "content-type", "accept", "x-request-id"],
        expose_headers=["x-request-id", "retry-after"],
        allow_credentials=False,
        max_age=600,
    )


def create_app(settings: Settings) -> Litestar:
    schema = build_schema(
        production=settings.is_production, max_query_chars=settings.graphql_max_body_bytes
    )
    auth_failures = RateLimiter(
        settings.auth_failures_per_client_per_s,
        burst=max(settings.auth_failures_per_client_per_s * 2, 1),
    )
    # One budget of bad keys per address, whichever transport guesses them.
    sockets = Sockets(settings, auth_failures)
    authenticate = DefineMiddleware(
        ApiKeyAuthentication, failures=auth_failures, scopes={ScopeType.HTTP}
    )
    handlers: list[Any] = [
        *graphql_handlers(
            max_body_bytes=settings.graphql_max_body_bytes,
            production=settings.is_production,
            middleware=[authenticate],
            sockets=sockets,
        ),
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
            app.state.runtime = runtime
            app.state.runner = Runner(runtime, schema)
            runtime.authenticator.on_revoked(sockets.revoked)
            await runtime.start_background()
            try:
                if sandbox is not None:
                    async with sandbox.lifespan():
                        yield
                else:
                    yield
            finally:
                sockets.closing()
                await sockets.stop()

    cors = cors_config(settings)
    app = Litestar(
        route_handlers=handlers,
        lifespan=[lifespan],
        dependencies={
            "runtime": Provide(_runtime, sync_to_thread=False),
            "runner": Provide(_runner, sync_to_thread=False),
        },
        exception_handlers={
            NotAuthorizedException: _unauthorized,
            TooManyRequestsException: _too_many,
            HTTPException: _http_error,
            StorageUnavailable: _storage_unavailable,
            500: _internal,
        },
        cors_config=cors,
        debug=False,
        openapi_config=None,
        # Logging is configured once by the process (CLI), not reconfigured per app.
        logging_config=None,
    )
    # Outermost, so every answer (CORS preflights, errors from middleware) carries the
    # request id and every log line of the request names it.
    app.asgi_handler = request_id_middleware(
        Direct(
            app.asgi_handler,
            app,
            failures=auth_failures,
            max_body_bytes=settings.graphql_max_body_bytes,
            cors=cors,
            sockets=sockets,
            allowed_origins=settings.allowed_origins,
        )
    )
    app.state.sockets = sockets  # for Server.shutdown, which starts before the lifespan's
    return app


# Collector thresholds for a process that serves and nothing else (see Server.startup).
GC_THRESHOLDS = (10_000, 20, 20)


class Server(uvicorn.Server):
    """uvicorn as ``serve`` runs it.

    On a stop uvicorn waits for responses in flight before the lifespan's shutdown runs,
    so a multipart subscription (a response that never ends by itself) would hold the
    stop for the whole grace period and then be cut off. Streams and sockets are told
    first, and end with their resume hint while the server still answers."""

    def __init__(self, config: uvicorn.Config, *, owns_process: bool = False) -> None:
        super().__init__(config)
        self.owns_process = owns_process

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.owns_process:
            # What start-up built (modules, the schema, the runtime) lives as long as
            # the process: out of the collector's generations, a full collection under
            # load no longer walks it. One stalled every request for about 150 ms.
            # Not for servers sharing a process (tests): what is alive when one starts
            # would never be collected afterwards.
            gc.collect()
            gc.freeze()
            # Handshakes and requests in flight outlive the default young generation
            # (700 allocations) and reach the older ones, whose collections walk every
            # open socket. Opening 2,000
            # subscriptions spent 0.6 s collecting with the defaults, 0.2 s with these.
            gc.set_threshold(*GC_THRESHOLDS)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        registry = getattr(getattr(self.config.app, "state", None), "sockets", None)
        if isinstance(registry, Sockets):
            registry.closing()
        await super().shutdown(sockets=sockets)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How `serve` runs uvicorn (the benchmarks run the app the same way)."""
    proxies = settings.proxy_addresses
    for proxy in proxies:
        ipaddress.ip_network(proxy, strict=False)  # checked at start-up already
    return {
        "log_level": "warning",
        # Access lines are info, which warning drops, but uvicorn still formats each
        # one's arguments (quoting the path) on every request.
        "access_log": False,
        "ws": "websockets-sansio",
        # Line updates are small: compression costs more memory per socket (~34 KiB) and
        # CPU per frame than it saves.
        "ws_per_message_deflate": False,
        # uvicorn's own protocol buffers a head of any size and waits for a silent or
        # dribbling client forever.
        "http": bounded_http_protocol(
            head_timeout_s=settings.http_head_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
            max_body_bytes=max(settings.graphql_max_body_bytes, WEBHOOK_MAX_BODY_BYTES),
        ),
        # A GraphQL message over WebSocket has the same bound as a request body.
        "ws_max_size": settings.graphql_max_body_bytes,
        "timeout_graceful_shutdown": 10,
        # X-Forwarded-For is believed only from the configured proxies (uvicorn would
        # otherwise believe it from 127.0.0.1, letting any local client pick its address).
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": ",".join(proxies) if proxies else "",
    }
