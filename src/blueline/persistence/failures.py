"""Which exceptions mean "the database cannot answer now" (rather than a bug).

Those become :class:`~blueline.errors.StorageUnavailable`, which the boundaries answer
with 503 and ``Retry-After``: the request changed nothing and may be repeated.
"""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg
from sqlalchemy import exc as sa_exc

_ASYNCPG_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout
    asyncpg.exceptions.LockNotAvailableError,
)


def unavailable(exc: BaseException) -> bool:
    for error in _chain(exc):
        if isinstance(error, TimeoutError | asyncio.TimeoutError | ConnectionError | OSError):
            return True
        if isinstance(error, _ASYNCPG_UNAVAILABLE):
            return True
        if isinstance(error, sa_exc.TimeoutError):  # waiting for a pooled connection
            return True
        if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
            return True
    return False


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
