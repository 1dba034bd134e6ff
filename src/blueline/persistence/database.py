"""Engine, pools and connection scopes. One :class:`Database` per process, owned by
whoever runs.

Two ways in, both short-lived (nothing holds a connection between operations):

- SQLAlchemy sessions and connections (``session()``, ``transaction()``, ``connect()``)
  for the ORM-shaped code: provisioning, recovery, the CLI;
- :class:`SqlConnection` (``read()``, ``write()``) for hot paths that run prebuilt SQL
  text: on PostgreSQL a raw asyncpg pool (SQLAlchemy's asyncio layer cost several times
  the round trip per statement) reached through a :class:`~blueline.persistence.lane.Lane`,
  on SQLite the same SQLAlchemy connections.

Every wait is bounded: connecting, waiting for a pooled connection, and each statement
(``statement_timeout`` on the server, a command timeout on the client). A database
that cannot answer in time surfaces as :class:`~blueline.errors.StorageUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from blueline.errors import StorageUnavailable
from blueline.persistence.dialect import POSTGRESQL, SQLITE, Dialect
from blueline.persistence.failures import unavailable
from blueline.persistence.lane import Lane
from blueline.settings import is_loopback_host

logger = logging.getLogger(__name__)

# Execution option marking a connection that only reads (SQLite then begins deferred).
READ_ONLY = "blueline_read_only"


@dataclass(frozen=True)
class Limits:
    """Bounds on every wait on the database (seconds) and on connections held."""

    connect_timeout_s: float = 2.0
    pool_timeout_s: float = 2.0
    statement_timeout_s: float = 5.0
    pool_size: int = 10
    raw_pool_size: int = 10


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def plain_on_loopback(url: str) -> dict[str, Any]:
    """``{"ssl": False}`` for a database on this machine whose URL says nothing about TLS.

    asyncpg's default (``prefer``) first asks for TLS on every connection it opens,
    including the one that carries a statement's cancellation; against a server without
    TLS that is a wasted round trip, and a failure asyncpg has been seen to leave
    unretrieved (MagicStack/asyncpg#1310). TLS to loopback protects nothing, so it is
    not asked for there; a URL naming ``ssl`` or ``sslmode`` decides for itself."""
    parsed = make_url(url)
    if {"ssl", "sslmode"} & set(parsed.query) or not is_loopback_host(parsed.host or ""):
        return {}
    return {"ssl": False}


def create_engine(url: str, limits: Limits | None = None, **kwargs: Any) -> AsyncEngine:
    limits = limits or Limits()
    if not is_sqlite(url):
        kwargs.setdefault("pool_size", limits.pool_size)
        kwargs.setdefault("max_overflow", limits.pool_size)
        kwargs.setdefault("pool_timeout", limits.pool_timeout_s)
        # No pre-ping: it costs a round trip on every checkout, on every request. A
        # connection broken by a database restart fails one request (webhooks are
        # retried by the provider) and is then replaced; recycling bounds their age.
        kwargs.setdefault("pool_recycle", 1800)
        connect_args = kwargs.setdefault("connect_args", {})
        for name, value in plain_on_loopback(url).items():
            connect_args.setdefault(name, value)
        connect_args.setdefault("timeout", limits.connect_timeout_s)
        connect_args.setdefault("command_timeout", limits.statement_timeout_s + 1)
        connect_args.setdefault(
            "server_settings",
            {"statement_timeout": str(int(limits.statement_timeout_s * 1000))},
        )
        return create_async_engine(url, **kwargs)
    engine = create_async_engine(url, **kwargs)
    busy_ms = int(limits.statement_timeout_s * 1000)

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook below issue BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Freed pages are zeroed, so a closed setup's destroyed ciphertexts do not
        # linger in the file.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        # A deferred transaction that later writes fails at once with "database is
        # locked" when another writer got in first; IMMEDIATE waits for busy_timeout.
        # Reads stay deferred, so they never queue behind the single write lock.
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class SqlConnection(Protocol):
    """Prebuilt SQL text (placeholders from :mod:`~blueline.persistence.dialect`)."""

    async def fetchval(self, sql: str, args: Sequence[Any] = ()) -> Any: ...

    async def fetchrow(self, sql: str, args: Sequence[Any] = ()) -> Sequence[Any] | None: ...

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]: ...

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None: ...


# Called with every prebuilt statement sent through a SqlConnection (ORM statements are
# seen by SQLAlchemy's own `before_cursor_execute` event). For tests and benchmarks
# that count round trips; empty in production.
STATEMENT_OBSERVERS: list[Callable[[str], None]] = []


@contextmanager
def observing_statements(observer: Callable[[str], None]) -> Iterator[None]:
    STATEMENT_OBSERVERS.append(observer)
    try:
        yield
    finally:
        STATEMENT_OBSERVERS.remove(observer)


def _observe(sql: str) -> None:
    for observer in STATEMENT_OBSERVERS:
        observer(sql)


class AsyncpgConnection:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetchval(self, sql: str, args: Sequence[Any] = ()) -> Any:
        if STATEMENT_OBSERVERS:
            _observe(sql)
        return await self._conn.fetchval(sql, *args)

    async def fetchrow(self, sql: str, args: Sequence[Any] = ()) -> Sequence[Any] | None:
        if STATEMENT_OBSERVERS:
            _observe(sql)
        row = await self._conn.fetchrow(sql, *args)
        return None if row is None else tuple(row)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        if STATEMENT_OBSERVERS:
            _observe(sql)
        return [tuple(row) for row in await self._conn.fetch(sql, *args)]

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        if STATEMENT_OBSERVERS:
            _observe(sql)
        await self._conn.execute(sql, *args)


class AlchemyConnection:
    """The same interface over a SQLAlchemy connection (SQLite, and PostgreSQL inside an
    ORM transaction), so code that mixes both writes in one transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def _run(self, sql: str, args: Sequence[Any]) -> Any:
        if STATEMENT_OBSERVERS:
            _observe(sql)
        return await self._conn.exec_driver_sql(sql, tuple(args))

    async def fetchval(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return (await self._run(sql, args)).scalar()

    async def fetchrow(self, sql: str, args: Sequence[Any] = ()) -> Sequence[Any] | None:
        row = (await self._run(sql, args)).first()
        return None if row is None else tuple(row)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return [tuple(row) for row in (await self._run(sql, args)).all()]

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        await self._run(sql, args)


# Sent as one round trip. Every statement of a write transaction is prebuilt and keyed
# by ids (arrays of them, JSON record sets), so its plan does not depend on the values:
# PostgreSQL would otherwise plan most of them anew on every call (custom plans, about
# a third of a webhook apply's time in the database). Reads keep the default, since the
# compiled list's plan does depend on whether a cursor was given.
_BEGIN_WRITE = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan"
_CLOSE_TIMEOUT_S = 5.0


class Database:
    def __init__(self, url: str, limits: Limits | None = None, **engine_kwargs: Any) -> None:
        self.url = url
        self.limits = limits or Limits()
        self.engine = create_engine(url, self.limits, **engine_kwargs)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self.dialect: Dialect = SQLITE if is_sqlite(url) else POSTGRESQL
        self._raw_pool: asyncpg.Pool | None = None
        self._lane: Lane | None = None
        self._raw_lock = asyncio.Lock()

    def __repr__(self) -> str:
        # The URL may carry a password: never shown.
        return f"Database(dialect={self.dialect.name!r})"

    @property
    def is_sqlite(self) -> bool:
        return not self.dialect.is_postgresql

    @property
    def is_postgresql(self) -> bool:
        return self.dialect.is_postgresql

    # -- SQLAlchemy scopes

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """For reads only: writes go through :meth:`transaction`."""
        async with _mapped_failures(), self.sessionmaker() as session:
            await session.connection(execution_options={READ_ONLY: True})
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with _mapped_failures(), self.sessionmaker() as session, session.begin():
            yield session

    @asynccontextmanager
    async def connect(self, *, read_only: bool = True) -> AsyncIterator[AsyncConnection]:
        """A Core connection. Call ``conn.execution_options(blueline_read_only=False)``
        before writing on one opened read-only."""
        async with _mapped_failures(), self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: read_only})
            yield conn

    # -- prebuilt SQL

    async def _lane_of_pool(self) -> Lane:
        if self._lane is None:
            await self._pool()
        assert self._lane is not None
        return self._lane

    async def _pool(self) -> asyncpg.Pool:
        if self._raw_pool is None:
            async with self._raw_lock:
                if self._raw_pool is None:
                    dsn = make_url(self.url).set(drivername="postgresql")
                    limits = self.limits
                    self._raw_pool = await asyncpg.create_pool(
                        dsn.render_as_string(hide_password=False),
                        # The default reset sends RESET ALL, UNLISTEN … on every
                        # release: a round trip per request. Nothing here sets session
                        # state (no SET, LISTEN or session-level advisory lock), and an
                        # open transaction is still rolled back by asyncpg itself.
                        reset=_keep_session,
                        max_cacheable_statement_size=CACHEABLE_STATEMENT_CHARS,
                        **plain_on_loopback(self.url),
                        min_size=1,
                        max_size=limits.raw_pool_size,
                        timeout=limits.connect_timeout_s,
                        command_timeout=limits.statement_timeout_s + 1,
                        server_settings={
                            "statement_timeout": str(int(limits.statement_timeout_s * 1000))
                        },
                    )
                    self._lane = Lane(
                        self._raw_pool,
                        limits.raw_pool_size,
                        acquire_timeout_s=limits.pool_timeout_s,
                    )
        return self._raw_pool

    @asynccontextmanager
    async def read(self) -> AsyncIterator[SqlConnection]:
        """Statements outside a transaction (each one sees its own snapshot)."""
        async with _mapped_failures():
            if self.is_postgresql:
                lane = await self._lane_of_pool()
                async with lane.connection() as conn:
                    yield AsyncpgConnection(conn)
            else:
                async with self.engine.connect() as conn:
                    await conn.execution_options(**{READ_ONLY: True})
                    yield AlchemyConnection(conn)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[SqlConnection]:
        """One transaction: committed when the block ends, rolled back on error."""
        async with _mapped_failures():
            if self.is_postgresql:
                lane = await self._lane_of_pool()
                async with lane.connection() as conn:
                    await conn.execute(_BEGIN_WRITE)
                    try:
                        yield AsyncpgConnection(conn)
                    except BaseException:
                        # A connection that cannot roll back is still in its transaction
                        # (or closed), and the lane hands it back to the pool to reset.
                        with contextlib.suppress(Exception):
                            await conn.execute("ROLLBACK")
                        raise
                    await conn.execute("COMMIT")
            else:
                async with self.engine.begin() as conn:
                    yield AlchemyConnection(conn)

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[SqlConnection]:
        """Statements each committed on its own as it completes: for a write that is one
        statement, whose commit then costs no round trips of its own."""
        if self.is_postgresql:
            # A read's connection: outside a transaction, each statement commits itself.
            async with self.read() as conn:
                yield conn
        else:
            async with _mapped_failures(), self.engine.begin() as sqlite:
                yield AlchemyConnection(sqlite)

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.fetchval("SELECT 1")

    async def dispose(self) -> None:
        if self._raw_pool is not None:
            pool, self._raw_pool = self._raw_pool, None
            if self._lane is not None:
                lane, self._lane = self._lane, None
                await lane.close()
            try:
                # close() waits for every connection to come back: bounded, so a
                # connection something still holds cannot keep the process from ending.
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await pool.close()
            except TimeoutError:
                logger.warning("database connections still in use at shutdown: closed")
                pool.terminate()
        await self.engine.dispose()


UNAVAILABLE = "the database is unavailable; try again shortly"

# asyncpg's own default, named because `Reads` sizes statements to stay under it: a
# longer statement is parsed, described and planned anew on every call.
CACHEABLE_STATEMENT_CHARS = 15 * 1024

_PLACEHOLDER = re.compile(r"\$(\d+)")


async def run_together(
    conn: SqlConnection, dialect: Dialect, parts: Sequence[tuple[str, Sequence[Any]]]
) -> list[Sequence[Any]]:
    """Run statements in order and return the last one's rows: on PostgreSQL as one
    statement (data-modifying CTEs, one round trip), on SQLite one after the other.

    The statements must not depend on each other's effects (in one PostgreSQL
    statement they all see the snapshot from before it).
    """
    if not dialect.is_postgresql:
        rows: list[Sequence[Any]] = []
        for sql, args in parts:
            if "RETURNING" in sql:
                rows = await conn.fetch(sql, args)
            else:
                await conn.execute(sql, args)
                rows = []
        return rows
    pieces: list[str] = []
    arguments: list[Any] = []
    for position, (sql, args) in enumerate(parts):
        renumbered = _PLACEHOLDER.sub(functools.partial(_shifted, offset=len(arguments)), sql)
        pieces.append(f"g{position} AS ({renumbered})")
        arguments.extend(args)
    last = len(parts) - 1
    returns = "RETURNING" in parts[last][0]
    select = f"SELECT * FROM g{last}" if returns else "SELECT 1"
    return await conn.fetch(f"WITH {', '.join(pieces)} {select}", arguments)


def _shifted(match: re.Match[str], *, offset: int) -> str:
    return f"${int(match.group(1)) + offset}"


async def _keep_session(_conn: asyncpg.Connection) -> None:
    return None


@asynccontextmanager
async def _mapped_failures() -> AsyncIterator[None]:
    try:
        yield
    except StorageUnavailable:
        raise
    except Exception as exc:
        if unavailable(exc):
            raise StorageUnavailable(UNAVAILABLE) from exc
        raise
