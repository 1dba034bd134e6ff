"""Engine and session scopes. One :class:`Database` per process, owned by whoever runs.

``transaction()`` commits on success and rolls back on error; ``session()`` is for
reads. Both are short: nothing holds a connection between operations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

# Execution option marking a connection that only reads (SQLite then begins deferred).
READ_ONLY = "blueline_read_only"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    if not is_sqlite(url):
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        # No pre-ping: it costs a round trip on every checkout, on every request. A
        # connection broken by a database restart fails one request (webhooks are
        # retried by the provider) and is then replaced; recycling bounds their age.
        kwargs.setdefault("pool_recycle", 1800)
        return create_async_engine(url, **kwargs)
    engine = create_async_engine(url, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook below issue BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
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


class Database:
    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = create_engine(url, **engine_kwargs)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.url)

    @property
    def is_postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """For reads only: writes go through :meth:`transaction`."""
        async with self.sessionmaker() as session:
            await session.connection(execution_options={READ_ONLY: True})
            yield session

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncSession]:
        """A read session whose statements all see one snapshot (REPEATABLE READ on
        PostgreSQL; SQLite transactions already do)."""
        async with self.sessionmaker() as session:
            options: dict[str, Any] = {READ_ONLY: True}
            if self.is_postgresql:
                options["isolation_level"] = "REPEATABLE READ"
            await session.connection(execution_options=options)
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as session, session.begin():
            yield session

    @asynccontextmanager
    async def connect(self, *, read_only: bool = True) -> AsyncIterator[AsyncConnection]:
        """A Core connection, for hot paths that need no ORM. Call
        ``conn.execution_options(blueline_read_only=False)`` before writing on one
        opened read-only."""
        async with self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: read_only})
            yield conn

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
