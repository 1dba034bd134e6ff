"""The simulator as an ASGI app: the partner API under ``/v1``, controls under ``/sandbox``.

``/v1`` needs the partner key and is subject to the injected failures and latency of
the current config; ``/sandbox`` is open and never fails on purpose.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Annotated, Any, Literal, TypeVar

import httpx
import msgspec
from litestar import Litestar, Request, Response, Router, delete, get, patch, post, put
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.enums import ScopeType
from litestar.exceptions import (
    ClientException,
    NotAuthorizedException,
    ServiceUnavailableException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.params import FromPath, FromQuery
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_202_ACCEPTED,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
)
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from blueline_sandbox.errors import SandboxError
from blueline_sandbox.phone_numbers import E164
from blueline_sandbox.state import SandboxState

__all__ = ["create_sandbox_app", "sandbox_state"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# ------------------------------------------------------------------- request bodies

_BusinessName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class _CreateSubaccountBody(msgspec.Struct):
    business_name: _BusinessName
    external_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    webhook_url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]


class _RenameBody(msgspec.Struct):
    business_name: _BusinessName


class _ConfigBody(msgspec.Struct, forbid_unknown_fields=True):
    assign_immediately: bool = False
    # UNSET means "left out": reset to the default this app was built with.
    auto_assign_after_s: (
        Annotated[float, msgspec.Meta(ge=0, le=86_400)] | msgspec.UnsetType | None
    ) = msgspec.UNSET
    failure_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    deliver_webhooks: bool = True
    latency_ms: Annotated[float, msgspec.Meta(ge=0, le=60_000)] = 0.0


class _AssignBody(msgspec.Struct, forbid_unknown_fields=True):
    phone_number: str | None = None


class _StatusBody(msgspec.Struct, forbid_unknown_fields=True):
    status: Literal["active", "suspended", "closed"]


def _unprocessable(detail: str) -> ClientException:
    return ClientException(detail, status_code=HTTP_422_UNPROCESSABLE_ENTITY)


async def _decode(request: Request[Any, Any, Any], type_: type[_T]) -> _T:
    """Strict JSON decoding with a 422 for any bad input (an empty body counts as ``{}``)."""
    raw = await request.body()
    try:
        return msgspec.json.decode(raw.strip() or b"{}", type=type_, strict=True)
    except msgspec.ValidationError as exc:
        raise _unprocessable(str(exc)) from None
    except msgspec.DecodeError:
        raise _unprocessable("body is not valid JSON") from None


def _valid_webhook_url(value: str) -> bool:
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, ValueError):
        return False
    return url.scheme in {"http", "https"} and bool(url.host)


# ------------------------------------------------------------- wiring: gates, DI


def sandbox_state(app: Litestar) -> SandboxState:
    """The state behind a sandbox app (for inspection and shutdown by an embedding app)."""
    state = app.state.get("sandbox")
    if not isinstance(state, SandboxState):
        raise LookupError("not a sandbox app")
    return state


def _provide_sandbox(state: State) -> SandboxState:
    sandbox = state.get("sandbox")
    if not isinstance(sandbox, SandboxState):
        raise LookupError("not a sandbox app")
    return sandbox


def _require_partner(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if not sandbox_state(connection.app).is_partner(connection.headers.get("authorization")):
        raise NotAuthorizedException(
            "missing or invalid partner key", headers={"WWW-Authenticate": "Bearer"}
        )


def _inject_failure(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    # A guard runs before the body is read and before the handler: no side effect yet.
    if sandbox_state(connection.app).should_fail():
        raise ServiceUnavailableException("sandbox: injected failure")


class _AnswerLatency(ASGIMiddleware):
    """Holds back the start of every ``/v1`` answer, after the handler took full effect.

    A caller that times out meanwhile has still caused the effect, as with a slow real
    provider. The delay is the one configured when the request arrived. The state is
    looked up per request, not held: Litestar deep-copies routers (and so their
    middleware instances) on registration.
    """

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        delay_s = sandbox_state(scope["litestar_app"]).config.latency_ms / 1000
        if delay_s <= 0:
            await next_app(scope, receive, send)
            return

        async def delayed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                await asyncio.sleep(delay_s)
            await send(message)

        await next_app(scope, receive, delayed_send)


# ---------------------------------------------------------------- partner API (/v1)


@post("/subaccounts")
async def create_subaccount(
    request: Request[Any, Any, Any], sandbox: NamedDependency[SandboxState]
) -> Response[dict[str, Any]]:
    body = await _decode(request, _CreateSubaccountBody)
    if not body.business_name.strip() or not body.external_id.strip():
        raise _unprocessable("business_name and external_id must not be blank")
    if not _valid_webhook_url(body.webhook_url):
        raise _unprocessable("webhook_url must be an absolute http(s) URL")
    subaccount, created = sandbox.create_subaccount(
        body.business_name, body.external_id, body.webhook_url
    )
    return Response(subaccount.as_json(), status_code=HTTP_201_CREATED if created else HTTP_200_OK)


@get("/subaccounts")
async def find_subaccounts(
    sandbox: NamedDependency[SandboxState], external_id: FromQuery[str | None] = None
) -> dict[str, Any]:
    return {"data": [s.as_json() for s in sandbox.subaccounts(external_id)]}


@patch("/subaccounts/{subaccount_id:str}")
async def rename_subaccount(
    subaccount_id: FromPath[str],
    request: Request[Any, Any, Any],
    sandbox: NamedDependency[SandboxState],
) -> dict[str, Any]:
    subaccount = sandbox.open_subaccount(subaccount_id)
    body = await _decode(request, _RenameBody)
    if not body.business_name.strip():
        raise _unprocessable("business_name must not be blank")
    return sandbox.rename(subaccount, body.business_name).as_json()


@delete("/subaccounts/{subaccount_id:str}")
async def close_subaccount(
    subaccount_id: FromPath[str], sandbox: NamedDependency[SandboxState]
) -> None:
    sandbox.close(sandbox.open_subaccount(subaccount_id))


@post("/subaccounts/{subaccount_id:str}/suspend", status_code=HTTP_200_OK)
async def suspend_subaccount(
    subaccount_id: FromPath[str], sandbox: NamedDependency[SandboxState]
) -> dict[str, Any]:
    return sandbox.suspend(sandbox.open_subaccount(subaccount_id)).as_json()


@post("/subaccounts/{subaccount_id:str}/reactivate", status_code=HTTP_200_OK)
async def reactivate_subaccount(
    subaccount_id: FromPath[str], sandbox: NamedDependency[SandboxState]
) -> dict[str, Any]:
    return sandbox.reactivate(sandbox.open_subaccount(subaccount_id)).as_json()


@post("/subaccounts/{subaccount_id:str}/lines")
async def request_line(
    subaccount_id: FromPath[str], sandbox: NamedDependency[SandboxState]
) -> dict[str, Any]:
    return sandbox.request_line(sandbox.open_subaccount(subaccount_id)).as_json()


@get("/subaccounts/{subaccount_id:str}/lines")
async def list_lines(
    subaccount_id: FromPath[str], sandbox: NamedDependency[SandboxState]
) -> dict[str, Any]:
    subaccount = sandbox.open_subaccount(subaccount_id)
    return {"data": [line.as_json() for line in subaccount.lines]}


@delete("/subaccounts/{subaccount_id:str}/lines/{request_id:str}")
async def release_line(
    subaccount_id: FromPath[str], request_id: FromPath[str], sandbox: NamedDependency[SandboxState]
) -> None:
    sandbox.release_line(sandbox.open_subaccount(subaccount_id), request_id)


# ------------------------------------------------------- sandbox controls (/sandbox)


@get("/config")
async def get_config(sandbox: NamedDependency[SandboxState]) -> dict[str, Any]:
    return sandbox.config.as_json()


@put("/config")
async def put_config(
    request: Request[Any, Any, Any], sandbox: NamedDependency[SandboxState]
) -> dict[str, Any]:
    body = await _decode(request, _ConfigBody)
    config = replace(
        sandbox.defaults,
        assign_immediately=body.assign_immediately,
        failure_rate=body.failure_rate,
        deliver_webhooks=body.deliver_webhooks,
        latency_ms=body.latency_ms,
    )
    if not isinstance(body.auto_assign_after_s, msgspec.UnsetType):
        config = replace(config, auto_assign_after_s=body.auto_assign_after_s)
    sandbox.configure(config)
    return config.as_json()


@post("/line-requests/{request_id:str}/assign", status_code=HTTP_200_OK)
async def assign_line(
    request_id: FromPath[str],
    request: Request[Any, Any, Any],
    sandbox: NamedDependency[SandboxState],
) -> dict[str, Any]:
    body = await _decode(request, _AssignBody)
    if body.phone_number is not None and not E164.fullmatch(body.phone_number):
        raise _unprocessable("phone_number must be in E.164 format")
    return sandbox.assign(request_id, body.phone_number).as_json()


@post("/line-requests/{request_id:str}/redeliver", status_code=HTTP_202_ACCEPTED)
async def redeliver_line_event(
    request_id: FromPath[str], sandbox: NamedDependency[SandboxState]
) -> dict[str, Any]:
    event = sandbox.redeliver(request_id)
    return {"webhook_id": event.webhook_id, "request_id": event.request_id}


@post("/line-requests/{request_id:str}/release", status_code=HTTP_200_OK)
async def force_release_line(
    request_id: FromPath[str], sandbox: NamedDependency[SandboxState]
) -> dict[str, Any]:
    return sandbox.force_release(request_id).as_json()


@get("/subaccounts")
async def inspect_subaccounts(
    sandbox: NamedDependency[SandboxState], external_id: FromQuery[str | None] = None
) -> dict[str, Any]:
    return {"data": [s.as_sandbox_json() for s in sandbox.subaccounts(external_id)]}


@post("/subaccounts/{subaccount_id:str}/status", status_code=HTTP_200_OK)
async def force_subaccount_status(
    subaccount_id: FromPath[str],
    request: Request[Any, Any, Any],
    sandbox: NamedDependency[SandboxState],
) -> dict[str, Any]:
    body = await _decode(request, _StatusBody)
    return sandbox.force_status(subaccount_id, body.status).as_sandbox_json()


@post("/subaccounts/{subaccount_id:str}/lines")
async def inject_line(
    subaccount_id: FromPath[str], sandbox: NamedDependency[SandboxState]
) -> dict[str, Any]:
    return sandbox.inject_line(subaccount_id).as_json()


# ----------------------------------------------------------------------------- app


def _refused(_: Request[Any, Any, Any], exc: SandboxError) -> Response[dict[str, Any]]:
    return Response(exc.body(), status_code=exc.status_code)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    # Logged here because the app runs without Litestar's logging config (see below).
    logger.error("sandbox: %s %s failed", request.method, request.url.path, exc_info=exc)
    return Response(
        {"status_code": HTTP_500_INTERNAL_SERVER_ERROR, "detail": "Internal Server Error"},
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
    )


@asynccontextmanager
async def _lifespan(app: Litestar) -> AsyncIterator[None]:
    sandbox = sandbox_state(app)
    sandbox.start()
    try:
        yield
    finally:
        await sandbox.aclose()


def create_sandbox_app(
    partner_key: str,
    *,
    auto_assign_after_s: float | None = 3.0,
    webhook_client: httpx.AsyncClient | None = None,
    webhook_attempts: int = 6,
    webhook_backoff_s: float = 0.5,
    webhook_timeout_s: float = 5.0,
) -> Litestar:
    """The simulator app; its :class:`SandboxState` is ``sandbox_state(app)``.

    An injected ``webhook_client`` stays open on shutdown; an owned one is closed.
    """
    sandbox = SandboxState(
        partner_key,
        auto_assign_after_s=auto_assign_after_s,
        webhook_client=webhook_client,
        webhook_attempts=webhook_attempts,
        webhook_backoff_s=webhook_backoff_s,
        webhook_timeout_s=webhook_timeout_s,
    )
    partner_api = Router(
        path="/v1",
        guards=[_require_partner, _inject_failure],
        middleware=[_AnswerLatency()],
        route_handlers=[
            create_subaccount,
            find_subaccounts,
            rename_subaccount,
            close_subaccount,
            suspend_subaccount,
            reactivate_subaccount,
            request_line,
            list_lines,
            release_line,
        ],
    )
    controls = Router(
        path="/sandbox",
        route_handlers=[
            get_config,
            put_config,
            assign_line,
            redeliver_line_event,
            force_release_line,
            inspect_subaccounts,
            force_subaccount_status,
            inject_line,
        ],
    )
    return Litestar(
        route_handlers=[partner_api, controls],
        dependencies={"sandbox": Provide(_provide_sandbox, sync_to_thread=False)},
        state=State({"sandbox": sandbox}),
        lifespan=[_lifespan],
        openapi_config=None,
        # Litestar's default logging config reconfigures the root logger; an embedded
        # simulator must leave the host process's logging alone.
        logging_config=None,
        exception_handlers={
            SandboxError: _refused,
            HTTP_500_INTERNAL_SERVER_ERROR: _internal_error,
        },
    )
