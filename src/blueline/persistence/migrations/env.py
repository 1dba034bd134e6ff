"""Alembic environment: runs migrations over the async engine of the configured URL."""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import context
from sqlalchemy import make_url, text
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from blueline.persistence import models  # noqa: F401 - registers the tables
from blueline.persistence.database import create_engine

target_metadata = SQLModel.metadata


# Serialises concurrent `migrate` runs (several processes starting at once).
_MIGRATION_LOCK_KEY = 0x426C6D6967726174


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


@contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    """Serialises migrations of one SQLite file across processes. SQLite runs DDL
    outside the driver's implicit transactions, so two processes migrating an empty
    file at once would each see the other's half-applied steps."""
    database = make_url(url).database
    if not url.startswith("sqlite") or not database or database == ":memory:":
        yield
        return
    # flock, not the POSIX record locks SQLite itself takes: the two never conflict.
    with Path(database).open("ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def _run_async() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = create_engine(url)
    try:
        with _sqlite_file_lock(url):
            async with engine.connect() as connection:
                await connection.run_sync(_run)
                await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `blueline migrate`")
asyncio.run(_run_async())
