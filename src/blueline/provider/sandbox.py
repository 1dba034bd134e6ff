"""Provider simulator: a fake upstream iMessage provider, as its own ASGI app.

It speaks the same HTTP API and signed webhooks as the real provider (contract section
4), so development, tests and the embedded default exercise Blueline's real client,
webhook route and recovery paths. Sandbox-only controls under ``/sandbox`` inject the
failures a real provider shows (errors, slow answers, lost webhooks) on demand.

All state lives in memory, in one :class:`SandboxState` per app (``app.state.sandbox``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import httpx
import msgspec
from litestar import Litestar, Request, Response, Router, delete, get, post, put
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.enums import ScopeType
from litestar.exceptions import (
    ClientException,
    NotAuthorizedException,
    NotFoundException,
    ServiceUnavailableException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.params import FromPath, FromQuery
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_202_ACCEPTED,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
)
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from blueline.webhooks.signature import generate_secret, sign

__all__ = ["SandboxConfig", "SandboxState", "create_sandbox_app", "sandbox_state"]

logger = logging.getLogger(__name__)

LineStatus = Literal["pending", "assigned"]
SubaccountStatus = Literal["active", "closed"]

# Real US area codes; with the 555-0100..0199 block every number is fictional.
_AREA_CODE_TABLE = """
    201 202 203 205 206 207 208 212 213 214 215 216 217 218 219 224 225 228 229 231
    234 239 240 248 251 252 253 254 256 260 262 267 269 270 276 281 301 302 303 304
    305 307 308 309 310 312 313 314 315 316 317 318 319 320 321 323 330 334 336 337
    347 352 360 361 385 401 402 404 405 406 407 408 409 410 412 413 414 415 417 419
    423 424 425 432 434 435 440 443 469 478 479 480 484 501 502 503 504 505 507 508
    509 510 512 513 515 516 517 518 520 530 540 541 559 561 562 563 570 571 573 574
    575 580 585 586 601 602 603 605 606 607 608 609 610 612 614 615 616 617 618 619
    620 623 626 630 631 636 641 646 650 651 660 661 662 678 701 702 703 704 706 707
    708 712 713 714 715 716 717 718 719 720 724 727 731 732 734 740 754 757 760 763
    765 770 772 773 774 775 781 785 786 801 802 803 804 805 806 808 810 812 813 814
    815 816 817 818 828 830 831 832 843 845 847 850 856 857 858 859 860 862 863 864
    865 870 901 903 904 906 907 908 909 910 912 913 914 915 916 917 918 919 920 925
    928 931 936 937 940 941 949 951 952 954 956 970 971 972 973 978 979 980 985 989
"""
_AREA_CODES = tuple(_AREA_CODE_TABLE.split())
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")

_T = TypeVar("_T")


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """How the sandbox behaves; replaced as a whole by ``PUT /sandbox/config``."""

    assign_immediately: bool = False
    auto_assign_after_s: float | None = 3.0
    failure_rate: float = 0.0
    deliver_webhooks: bool = True
    latency_ms: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "assign_immediately": self.assign_immediately,
            "auto_assign_after_s": self.auto_assign_after_s,
            "failure_rate": self.failure_rate,
            "deliver_webhooks": self.deliver_webhooks,
            "latency_ms": self.latency_ms,
        }


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One announcement; redeliveries reuse it verbatim so the receiver can dedupe by id."""

    webhook_id: str
    request_id: str
    body: bytes


@dataclass(slots=True)
class Line:
    request_id: str
    subaccount_id: str
    status: LineStatus = "pending"
    phone_number: str | None = None
    last_event: WebhookEvent | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "status": self.status,
            "phone_number": self.phone_number,
        }


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    webhook_id: str
    request_id: str
    attempt: int
    status_code: int | None
    error: str | None
    at: str

    def as_json(self) -> dict[str, Any]:
        return {
            "webhook_id": self.webhook_id,
            "request_id": self.request_id,
            "attempt": self.attempt,
            "status_code": self.status_code,
            "error": self.error,
            "at": self.at,
        }


@dataclass(slots=True)
class Subaccount:
    id: str
    business_name: str
    external_id: str
    webhook_url: str
    api_key: str
    api_secret: str
    webhook_secret: str
    status: SubaccountStatus = "active"
    lines: list[Line] = field(default_factory=list)
    deliveries: list[DeliveryAttempt] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The partner API view (what a real provider returns on create and lookup)."""
        return {
            "id": self.id,
            "business_name": self.business_name,
            "external_id": self.external_id,
            "status": self.status,
            "credentials": {"api_key": self.api_key, "api_secret": self.api_secret},
            "webhook_secret": self.webhook_secret,
            "lines": [line.as_json() for line in self.lines],
        }

    def as_sandbox_json(self) -> dict[str, Any]:
        """The inspection view: adds what only a simulator can show."""
        return {
            **self.as_json(),
            "webhook_url": self.webhook_url,
            "deliveries": [d.as_json() for d in self.deliveries],
        }


def _token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


class SandboxState:
    """The simulator's memory and background work (placements and webhook deliveries).

    Every mutation is synchronous, so a check-then-insert cannot interleave with another
    request on the event loop: overlapping creates for one ``external_id`` share a
    subaccount without any lock.
    """

    def __init__(
        self,
        partner_key: str,
        *,
        auto_assign_after_s: float | None = 3.0,
        webhook_client: httpx.AsyncClient | None = None,
        webhook_attempts: int = 6,
        webhook_backoff_s: float = 0.5,
        webhook_timeout_s: float = 5.0,
    ) -> None:
        if not partner_key:
            raise ValueError("partner_key must not be empty")
        if webhook_attempts < 1:
            raise ValueError("webhook_attempts must be at least 1")
        self._partner_key = partner_key.encode()
        self.defaults = SandboxConfig(auto_assign_after_s=auto_assign_after_s)
        self.config = self.defaults
        self._attempts = webhook_attempts
        self._backoff_s = webhook_backoff_s
        self._timeout_s = webhook_timeout_s
        self._client = webhook_client
        self._owns_client = webhook_client is None
        self._subaccounts: dict[str, Subaccount] = {}
        self._by_external_id: dict[str, Subaccount] = {}
        self._lines: dict[str, Line] = {}
        self._numbers_in_use: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._random = secrets.SystemRandom()

    # -- request gates

    def is_partner(self, authorization: str | None) -> bool:
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(key.strip().encode(), self._partner_key)

    def should_fail(self) -> bool:
        rate = self.config.failure_rate
        return rate > 0 and self._random.random() < rate

    # -- partner API

    def create_subaccount(
        self, business_name: str, external_id: str, webhook_url: str
    ) -> tuple[Subaccount, bool]:
        """The subaccount for ``external_id``, created with its first line if new."""
        existing = self._by_external_id.get(external_id)
        if existing is not None:
            return existing, False
        subaccount = Subaccount(
            id=_token("sa"),
            business_name=business_name,
            external_id=external_id,
            webhook_url=webhook_url,
            api_key=_token("ak"),
            api_secret=secrets.token_urlsafe(32),
            webhook_secret=generate_secret(),
        )
        self._subaccounts[subaccount.id] = subaccount
        self._by_external_id[external_id] = subaccount
        self.request_line(subaccount)
        return subaccount, True

    def subaccounts(self, external_id: str | None = None) -> list[Subaccount]:
        if external_id is None:
            return list(self._subaccounts.values())
        found = self._by_external_id.get(external_id)
        return [] if found is None else [found]

    def active_subaccount(self, subaccount_id: str) -> Subaccount:
        subaccount = self._subaccounts.get(subaccount_id)
        if subaccount is None or subaccount.status != "active":
            raise NotFoundException("no such subaccount")
        return subaccount

    def request_line(self, subaccount: Subaccount) -> Line:
        line = Line(request_id=_token("lr"), subaccount_id=subaccount.id)
        subaccount.lines.append(line)
        self._lines[line.request_id] = line
        config = self.config
        if config.assign_immediately:
            # Returned already assigned: the caller learns the number from the answer.
            self._place(subaccount, line, self._new_number(), announce=False)
        elif config.auto_assign_after_s is not None:
            self._spawn(self._auto_assign(line, config.auto_assign_after_s))
        return line

    def close(self, subaccount: Subaccount) -> None:
        subaccount.status = "closed"

    # -- sandbox controls

    def configure(self, config: SandboxConfig) -> None:
        self.config = config

    def assign(self, request_id: str, phone_number: str | None) -> Line:
        """Place a pending line now; repeating the same placement is a no-op."""
        line = self._lines.get(request_id)
        if line is None:
            raise NotFoundException("no such line request")
        subaccount = self._subaccounts[line.subaccount_id]
        if line.status == "assigned":
            if phone_number is None or phone_number == line.phone_number:
                return line
            raise ClientException(
                "line request is already assigned to another number",
                status_code=HTTP_409_CONFLICT,
            )
        if subaccount.status != "active":
            raise NotFoundException("the subaccount is closed")
        if phone_number is not None and phone_number in self._numbers_in_use:
            raise ClientException(
                "phone number is already assigned to another line",
                status_code=HTTP_409_CONFLICT,
            )
        number = phone_number if phone_number is not None else self._new_number()
        self._place(subaccount, line, number, announce=self.config.deliver_webhooks)
        return line

    def redeliver(self, request_id: str) -> WebhookEvent:
        """Send the last event of a request again, whatever ``deliver_webhooks`` says."""
        line = self._lines.get(request_id)
        if line is None or line.last_event is None:
            raise NotFoundException("no event for this line request")
        event = line.last_event
        self._spawn(self._deliver(self._subaccounts[line.subaccount_id], event))
        return event

    # -- lifecycle

    def start(self) -> None:
        self._stopping = False

    async def aclose(self) -> None:
        """Cancel background work and close an owned HTTP client (idempotent)."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    @property
    def pending_tasks(self) -> int:
        return len(self._tasks)

    # -- internals

    def _new_number(self) -> str:
        for _ in range(32):
            area = self._random.choice(_AREA_CODES)
            candidate = f"+1{area}55501{self._random.randrange(100):02d}"
            if candidate not in self._numbers_in_use:
                return candidate
        for area in _AREA_CODES:
            for suffix in range(100):
                candidate = f"+1{area}55501{suffix:02d}"
                if candidate not in self._numbers_in_use:
                    return candidate
        raise ServiceUnavailableException("the sandbox ran out of fictional numbers")

    def _place(self, subaccount: Subaccount, line: Line, number: str, *, announce: bool) -> None:
        line.status = "assigned"
        line.phone_number = number
        self._numbers_in_use.add(number)
        body = msgspec.json.encode(
            {
                "type": "line.assigned",
                "data": {
                    "subaccount_id": subaccount.id,
                    "request_id": line.request_id,
                    "phone_number": number,
                },
            }
        )
        # The event exists even when unannounced, so a lost delivery can be replayed.
        event = WebhookEvent(webhook_id=_token("msg"), request_id=line.request_id, body=body)
        line.last_event = event
        if announce:
            self._spawn(self._deliver(subaccount, event))

    async def _auto_assign(self, line: Line, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        subaccount = self._subaccounts[line.subaccount_id]
        if line.status != "pending" or subaccount.status != "active":
            return
        # A placement is announced according to the config at the time it happens.
        self._place(subaccount, line, self._new_number(), announce=self.config.deliver_webhooks)

    async def _deliver(self, subaccount: Subaccount, event: WebhookEvent) -> None:
        delay_s = self._backoff_s
        for attempt in range(1, self._attempts + 1):
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": event.webhook_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(
                    subaccount.webhook_secret, event.webhook_id, timestamp, event.body
                ),
            }
            status_code: int | None = None
            error: str | None = None
            try:
                response = await self._http().post(
                    subaccount.webhook_url,
                    content=event.body,
                    headers=headers,
                    timeout=self._timeout_s,
                )
                status_code = response.status_code
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                error = f"{type(exc).__name__}: {exc}"
            subaccount.deliveries.append(
                DeliveryAttempt(
                    webhook_id=event.webhook_id,
                    request_id=event.request_id,
                    attempt=attempt,
                    status_code=status_code,
                    error=error,
                    at=_now_iso(),
                )
            )
            if status_code is not None and 200 <= status_code < 300:
                return
            if attempt < self._attempts:
                await asyncio.sleep(delay_s)
                delay_s *= 2
        logger.warning(
            "sandbox webhook %s for %s gave up after %d attempts",
            event.webhook_id,
            event.request_id,
            self._attempts,
        )

    def _http(self) -> httpx.AsyncClient:
        # Created lazily so an app mounted without lifespan events still delivers.
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        return self._client

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._stopping:
            work.close()
            return
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("sandbox background task failed", exc_info=exc)


# ------------------------------------------------------------------- request bodies


class _CreateSubaccountBody(msgspec.Struct):
    business_name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    external_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    webhook_url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]


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


@post("/subaccounts/{subaccount_id:str}/lines")
async def request_line(
    subaccount_id: FromPath[str], sandbox: NamedDependency[SandboxState]
) -> dict[str, Any]:
    return sandbox.request_line(sandbox.active_subaccount(subaccount_id)).as_json()


@get("/subaccounts/{subaccount_id:str}/lines")
async def list_lines(
    subaccount_id: FromPath[str], sandbox: NamedDependency[SandboxState]
) -> dict[str, Any]:
    subaccount = sandbox.active_subaccount(subaccount_id)
    return {"data": [line.as_json() for line in subaccount.lines]}


@delete("/subaccounts/{subaccount_id:str}")
async def close_subaccount(
    subaccount_id: FromPath[str], sandbox: NamedDependency[SandboxState]
) -> None:
    sandbox.close(sandbox.active_subaccount(subaccount_id))


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
    if body.phone_number is not None and not _E164.fullmatch(body.phone_number):
        raise _unprocessable("phone_number must be in E.164 format")
    return sandbox.assign(request_id, body.phone_number).as_json()


@post("/line-requests/{request_id:str}/redeliver", status_code=HTTP_202_ACCEPTED)
async def redeliver_line_event(
    request_id: FromPath[str], sandbox: NamedDependency[SandboxState]
) -> dict[str, Any]:
    event = sandbox.redeliver(request_id)
    return {"webhook_id": event.webhook_id, "request_id": event.request_id}


@get("/subaccounts")
async def inspect_subaccounts(
    sandbox: NamedDependency[SandboxState], external_id: FromQuery[str | None] = None
) -> dict[str, Any]:
    return {"data": [s.as_sandbox_json() for s in sandbox.subaccounts(external_id)]}


# ----------------------------------------------------------------------------- app


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
            request_line,
            list_lines,
            close_subaccount,
        ],
    )
    controls = Router(
        path="/sandbox",
        route_handlers=[
            get_config,
            put_config,
            assign_line,
            redeliver_line_event,
            inspect_subaccounts,
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
        exception_handlers={HTTP_500_INTERNAL_SERVER_ERROR: _internal_error},
    )
