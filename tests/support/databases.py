"""Real databases for tests: one migrated PostgreSQL database per test session (tables
emptied between tests) and SQLite files copied from a migrated template."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import asyncpg
from sqlmodel import SQLModel

from blueline.persistence import models  # noqa: F401 - registers the tables
from blueline.persistence.migrate import upgrade

T = TypeVar("T")

PG_ADMIN_DSN = os.environ.get(
    "BLUELINE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _pg_dsn(name: str) -> str:
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    return f"{base}/{name}"


def sqlalchemy_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _off_loop(fn: Callable[[], T]) -> T:
    """Run blocking set-up in a worker thread: fixtures may be built inside the test loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


def create_pg_database() -> str:
    """A new migrated database; returns its asyncpg DSN. Fails loudly when unreachable."""
    name = f"blueline_test_{uuid.uuid4().hex[:12]}"
    dsn = _pg_dsn(name)

    def create() -> None:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
        upgrade(sqlalchemy_url(dsn))

    _off_loop(create)
    return dsn


def drop_pg_database(dsn: str) -> None:
    name = dsn.rpartition("/")[2]
    _off_loop(lambda: asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')))


# Children first, so TRUNCATE needs no CASCADE surprises.
TABLES = [t.name for t in reversed(SQLModel.metadata.sorted_tables)]


async def truncate_pg(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)}")
    finally:
        await conn.close()


def create_sqlite_template(directory: Path) -> Path:
    path = directory / "template.db"
    _off_loop(lambda: upgrade(f"sqlite+aiosqlite:///{path}"))
    return path


def fresh_sqlite(template: Path, directory: Path) -> str:
    target = directory / f"blueline-{uuid.uuid4().hex[:8]}.db"
    shutil.copyfile(template, target)
    return f"sqlite+aiosqlite:///{target}"
