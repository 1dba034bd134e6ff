"""Authentication of GraphQL HTTP requests: the API key check as Litestar middleware,
setting ``connection.auth`` to the caller (WebSockets authenticate at connection_init,
through the same :class:`~blueline.access.Authenticator`).

A client sending bad keys spends its own budget (per address), so guessing keys or
flooding with garbage cannot make every request a database lookup.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, TooManyRequestsException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp

from blueline.domain import Caller
from blueline.rate_limit import RateLimiter
from blueline.runtime import Runtime

UNAUTHORIZED = "A valid API key is required: send `Authorization: Bearer <key>`"
TOO_MANY_FAILURES = "Too many requests with a missing or invalid API key from this address"


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    return connection.client.host if connection.client else "unknown"


async def identify(
    runtime: Runtime, failures: RateLimiter, address: str, authorization: str | None
) -> Caller:
    """The caller behind ``authorization``; raises what the client is refused with."""
    if not failures.has_tokens(address):
        raise TooManyRequestsException(TOO_MANY_FAILURES)
    caller = await runtime.authenticator.authenticate(authorization)
    if caller is None:
        failures.allow(address)
        raise NotAuthorizedException(UNAUTHORIZED)
    return caller


class ApiKeyAuthentication(AbstractAuthenticationMiddleware):
    def __init__(self, app: ASGIApp, failures: RateLimiter, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._failures = failures

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        if connection.scope.get("method") == "GET" and "query" not in connection.query_params:
            return AuthenticationResult(user=None, auth=None)  # the GraphiQL page itself
        runtime: Runtime = connection.app.state.runtime
        caller = await identify(
            runtime,
            self._failures,
            client_address(connection),
            connection.headers.get("authorization"),
        )
        return AuthenticationResult(user=caller, auth=caller)
