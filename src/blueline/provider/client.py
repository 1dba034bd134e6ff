"""Client for the upstream iMessage provider (CONTRACT section 4), over an injected httpx client.

Calls that fail to connect, time out or get a 5xx are retried with exponential backoff
and full jitter, a few times within the caller's request. Creating a subaccount is
idempotent upstream (``external_id``), so retrying it is always safe.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from blueline.errors import ProviderRejected, ProviderUnavailable

logger = logging.getLogger(__name__)

# Answers that say "not now" rather than "no": retried like a 5xx.
_RETRYABLE = frozenset({408, 425, 429})
# Answers and failures after which the provider cannot have acted on the request.
_NOT_PROCESSED = frozenset({408, 425, 429, 503})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# How long an idle connection to the provider is kept for reuse: under the idle
# timeouts common servers close connections at (gunicorn 2 s, uvicorn and Node 5 s).
# A call sent on a connection the server is just closing is reset, and a call that is
# not idempotent cannot be retried after a reset (the provider may have acted on it).
KEEPALIVE_EXPIRY_S = 1.5


@dataclass(frozen=True)
class ProviderLine:
    request_id: str
    status: str  # "pending" | "assigned" | "released"
    phone_number: str | None

    @property
    def is_assigned(self) -> bool:
        return self.status == "assigned" and self.phone_number is not None

    @property
    def is_released(self) -> bool:
        return self.status == "released"


@dataclass(frozen=True)
class Subaccount:
    id: str
    business_name: str
    external_id: str
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)
    webhook_secret: str = field(repr=False)
    lines: list[ProviderLine]
    status: str = "active"  # "active" | "suspended" | "closed"


class SubaccountGone(ProviderRejected):
    """The provider no longer knows the subaccount (closed or deleted)."""

    code = "PROVIDER_SUBACCOUNT_GONE"
    user_facing = False


class SubaccountSuspended(ProviderRejected):
    """The provider refused a new line because the subaccount is suspended."""

    code = "PROVIDER_SUBACCOUNT_SUSPENDED"
    user_facing = False


class ProviderClient(Protocol):
    async def create_subaccount(
        self, *, business_name: str, external_id: str, webhook_url: str
    ) -> Subaccount: ...

    async def find_subaccount(self, external_id: str) -> Subaccount | None: ...

    async def request_line(self, subaccount_id: str) -> ProviderLine: ...

    async def list_lines(self, subaccount_id: str) -> list[ProviderLine]: ...

    async def close_subaccount(self, subaccount_id: str) -> None: ...

    async def rename_subaccount(self, subaccount_id: str, business_name: str) -> None: ...

    async def suspend_subaccount(self, subaccount_id: str) -> None: ...

    async def reactivate_subaccount(self, subaccount_id: str) -> None: ...

    async def release_line(self, subaccount_id: str, request_id: str) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    base_delay_s: float = 0.2
    max_delay_s: float = 2.0

    def delay(self, attempt: int) -> float:
        # Full jitter: spreads retries of many callers instead of synchronising them.
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**attempt))  # noqa: S311


ObserveCall = Callable[[str, str, float], None]


def _ignore(_op: str, _outcome: str, _seconds: float) -> None:
    return None


class HttpProviderClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        api_key: str,
        *,
        retry: RetryPolicy | None = None,
        timeout_s: float = 5.0,
        observe: ObserveCall = _ignore,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._retry = retry or RetryPolicy()
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 2.0))
        self._observe = observe
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"HttpProviderClient(base_url={self._base!r})"

    async def _call(
        self,
        op: str,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        *,
        idempotent: bool = True,
    ) -> httpx.Response:
        """Send with retries. A call that is not idempotent is retried only when the
        provider cannot have acted on it: the connection never opened, or it answered
        that it did not process the request; a timeout or a 502 might hide a success,
        and repeating it would create a second line."""
        loop = asyncio.get_running_loop()
        for attempt in range(self._retry.attempts):
            started = loop.time()
            try:
                response = await self._http.request(
                    method,
                    self._base + path,
                    json=body,
                    params=params,
                    headers=self._headers,
                    timeout=self._timeout,
                )
            except httpx.TransportError as exc:
                self._observe(op, "transport_error", loop.time() - started)
                logger.warning(
                    "provider %s attempt %d failed: %s", op, attempt + 1, type(exc).__name__
                )
                if not idempotent and not isinstance(exc, _NOT_SENT):
                    break
            else:
                elapsed = loop.time() - started
                self._observe(op, str(response.status_code), elapsed)
                status = response.status_code
                if status < 500 and status not in _RETRYABLE:
                    return response
                logger.warning("provider %s attempt %d answered %d", op, attempt + 1, status)
                if not idempotent and status not in _NOT_PROCESSED:
                    break
            if attempt + 1 < self._retry.attempts:
                await self._sleep(self._retry.delay(attempt))
        raise ProviderUnavailable("the iMessage provider is unavailable; try again shortly")

    @staticmethod
    def _json(response: httpx.Response, op: str) -> Any:
        if response.status_code == 404:
            raise SubaccountGone(f"the provider does not know this subaccount ({op})")
        if response.status_code == 409 and op == "request_line":
            raise SubaccountSuspended("the provider refused a line: the subaccount is suspended")
        if response.status_code >= 400:
            raise ProviderRejected(f"the provider refused {op} (HTTP {response.status_code})")
        try:
            return response.json()
        except ValueError:
            raise ProviderRejected(f"the provider answered {op} with invalid JSON") from None

    async def create_subaccount(
        self, *, business_name: str, external_id: str, webhook_url: str
    ) -> Subaccount:
        body = {
            "business_name": business_name,
            "external_id": external_id,
            "webhook_url": webhook_url,
        }
        response = await self._call("create_subaccount", "POST", "/v1/subaccounts", body)
        return _subaccount(self._json(response, "create_subaccount"))

    async def find_subaccount(self, external_id: str) -> Subaccount | None:
        response = await self._call(
            "find_subaccount", "GET", "/v1/subaccounts", params={"external_id": external_id}
        )
        data = self._json(response, "find_subaccount")
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise ProviderRejected("the provider answered find_subaccount without data")
        for item in items:
            account = _subaccount(item)
            if account.external_id == external_id:
                return account
        return None

    async def request_line(self, subaccount_id: str) -> ProviderLine:
        response = await self._call(
            "request_line",
            "POST",
            f"/v1/subaccounts/{_segment(subaccount_id)}/lines",
            idempotent=False,
        )
        return _line(self._json(response, "request_line"))

    async def list_lines(self, subaccount_id: str) -> list[ProviderLine]:
        response = await self._call(
            "list_lines", "GET", f"/v1/subaccounts/{_segment(subaccount_id)}/lines"
        )
        data = self._json(response, "list_lines")
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise ProviderRejected("the provider answered list_lines without data")
        return [_line(item) for item in items]

    async def close_subaccount(self, subaccount_id: str) -> None:
        """Idempotent: a subaccount already closed (404 afterwards) counts as closed."""
        response = await self._call(
            "close_subaccount", "DELETE", f"/v1/subaccounts/{_segment(subaccount_id)}"
        )
        if response.status_code not in (200, 204, 404):
            self._json(response, "close_subaccount")

    async def rename_subaccount(self, subaccount_id: str, business_name: str) -> None:
        response = await self._call(
            "rename_subaccount",
            "PATCH",
            f"/v1/subaccounts/{_segment(subaccount_id)}",
            {"business_name": business_name},
        )
        self._json(response, "rename_subaccount")

    async def suspend_subaccount(self, subaccount_id: str) -> None:
        response = await self._call(
            "suspend_subaccount", "POST", f"/v1/subaccounts/{_segment(subaccount_id)}/suspend"
        )
        self._json(response, "suspend_subaccount")

    async def reactivate_subaccount(self, subaccount_id: str) -> None:
        response = await self._call(
            "reactivate_subaccount",
            "POST",
            f"/v1/subaccounts/{_segment(subaccount_id)}/reactivate",
        )
        self._json(response, "reactivate_subaccount")

    async def release_line(self, subaccount_id: str, request_id: str) -> None:
        """Idempotent upstream: releasing a released line is 204 again."""
        response = await self._call(
            "release_line",
            "DELETE",
            f"/v1/subaccounts/{_segment(subaccount_id)}/lines/{_segment(request_id)}",
        )
        if response.status_code not in (200, 204):
            self._json(response, "release_line")


def _segment(value: str) -> str:
    """A path segment from provider-issued ids (never from client input), escaped anyway."""
    return quote(value, safe="")


def _line(raw: Any) -> ProviderLine:
    if not isinstance(raw, dict) or not isinstance(raw.get("request_id"), str):
        raise ProviderRejected("the provider sent a malformed line")
    status = raw.get("status")
    number = raw.get("phone_number")
    if status not in ("pending", "assigned", "released") or not (
        number is None or isinstance(number, str)
    ):
        raise ProviderRejected("the provider sent a malformed line")
    return ProviderLine(request_id=raw["request_id"], status=status, phone_number=number)


def _subaccount(raw: Any) -> Subaccount:
    try:
        credentials = raw["credentials"]
        return Subaccount(
            id=str(raw["id"]),
            business_name=str(raw["business_name"]),
            external_id=str(raw["external_id"]),
            api_key=str(credentials["api_key"]),
            api_secret=str(credentials["api_secret"]),
            webhook_secret=str(raw["webhook_secret"]),
            lines=[_line(item) for item in raw.get("lines") or []],
            status=str(raw.get("status") or "active"),
        )
    except (KeyError, TypeError):
        raise ProviderRejected("the provider sent a malformed subaccount") from None
