"""Alembic migrations: the migrated schema is exactly what the models describe, on
PostgreSQL and SQLite, and `blueline migrate` can run any number of times."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from blueline.persistence import models  # noqa: F401 - registers the tables
from blueline.persistence.database import create_engine
from blueline.persistence.migrate import alembic_config, upgrade
from tests.support.databases import PG_ADMIN_DSN, sqlalchemy_url

BLUELINE = Path(sys.executable).with_name("blueline")


def _compare(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, SQLModel.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def schema_differences(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_compare)
    finally:
        await engine.dispose()


async def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_tables)
    finally:
        await engine.dispose()


async def stamped_revisions(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
            return [str(r) for r in rows.scalars()]
    finally:
        await engine.dispose()


def head_revision(url: str) -> str:
    heads = ScriptDirectory.from_config(alembic_config(url)).get_heads()
    assert len(heads) == 1, f"migrations must have a single head, found {heads}"
    return heads[0]


async def run_migrate(url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert BLUELINE.exists(), BLUELINE
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUELINE_")}
    env["BLUELINE_DATABASE_URL"] = url
    return await asyncio.to_thread(
        subprocess.run,
        [str(BLUELINE), "migrate"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(params=["postgresql", "sqlite"])
async def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database with no tables at all, of each kind."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"blueline_migrate_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield sqlalchemy_url(f"{PG_ADMIN_DSN.rpartition('/')[0]}/{name}")
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_migrated_schema_matches_the_models(database_url: str) -> None:
    await asyncio.to_thread(upgrade, database_url)
    assert await schema_differences(database_url) == []
    expected = set(SQLModel.metadata.tables)
    assert expected <= await table_names(database_url)


def _predicate(sql: str) -> str:
    """An index's WHERE clause in a form both databases' renderings share."""
    clause = sql.partition(" WHERE ")[2]
    for noise in ("::text", "(", ")", " "):
        clause = clause.replace(noise, "")
    return clause.lower()


async def index_predicates(url: str) -> dict[str, str]:
    """Each index's WHERE clause, as the database itself records the index."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                rows = await connection.execute(
                    text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
                )
            else:
                rows = await connection.execute(
                    text(
                        "SELECT name, sql FROM sqlite_master "
                        "WHERE type = 'index' AND sql IS NOT NULL"
                    )
                )
            return {str(name): _predicate(str(sql)) for name, sql in rows}
    finally:
        await engine.dispose()


async def test_partial_indexes_cover_what_the_models_say(database_url: str) -> None:
    # Alembic's comparison above does not look at an index's predicate.
    await asyncio.to_thread(upgrade, database_url)
    dialect = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    expected = {
        str(index.name): _predicate(f" WHERE {index.dialect_options[dialect]['where']}")
        for table in SQLModel.metadata.tables.values()
        for index in table.indexes
        if index.dialect_options[dialect]["where"] is not None
    }
    assert expected, "the models declare partial indexes"
    found = await index_predicates(database_url)
    assert {name: found.get(name) for name in expected} == expected


async def test_migrated_database_is_stamped_with_the_single_head(database_url: str) -> None:
    assert await stamped_revisions(database_url) == [head_revision(database_url)]


async def test_upgrade_refuses_to_block_a_running_event_loop(database_url: str) -> None:
    with pytest.raises(RuntimeError, match="outside the event loop"):
        upgrade(database_url)


async def test_migrate_command_builds_the_schema_and_is_idempotent(
    empty_database_url: str, tmp_path: Path
) -> None:
    url = empty_database_url
    assert not (await table_names(url)) & set(SQLModel.metadata.tables)

    # Several processes starting at once on an empty database.
    racing = await asyncio.gather(*(run_migrate(url, tmp_path) for _ in range(3)))
    for result in racing:
        assert result.returncode == 0, result.stderr
        assert "database is at the latest migration" in result.stdout
    assert await schema_differences(url) == []
    assert await stamped_revisions(url) == [head_revision(url)]

    second = await run_migrate(url, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "database is at the latest migration" in second.stdout
    assert await schema_differences(url) == []
    assert await stamped_revisions(url) == [head_revision(url)]


async def test_downgrade_to_base_and_upgrade_again_restores_the_schema(
    empty_database_url: str,
) -> None:
    url = empty_database_url
    config = alembic_config(url)
    await asyncio.to_thread(upgrade, url)
    await asyncio.to_thread(command.downgrade, config, "base")
    assert not (await table_names(url)) & set(SQLModel.metadata.tables)
    assert await stamped_revisions(url) == []

    await asyncio.to_thread(upgrade, url)
    assert await schema_differences(url) == []
    assert await stamped_revisions(url) == [head_revision(url)]


async def _run(url: str, *statements: str) -> list[Any]:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            result: list[Any] = []
            for statement in statements:
                found = await connection.execute(text(statement))
                result = list(found) if found.returns_rows else []
            return result
    finally:
        await engine.dispose()


async def test_events_still_to_publish_move_to_the_outbox_and_back(
    empty_database_url: str,
) -> None:
    url = empty_database_url
    config = alembic_config(url)
    await asyncio.to_thread(command.upgrade, config, "0003")
    await _run(
        url,
        "INSERT INTO event (id, workspace_id, seq, setup_id, line_id, type, payload, "
        "created_at, published_at) VALUES "
        "('evt_sent', 'ws_a', 1, 'ims_a', NULL, 'SETUP_CREATED', '{}', "
        "'2026-12-01 10:00:00+00', '2026-12-01 10:00:01+00'), "
        "('evt_waiting', 'ws_a', 2, 'ims_a', NULL, 'SETUP_RENAMED', '{}', "
        "'2026-12-01 10:00:02+00', NULL)",
    )

    await asyncio.to_thread(upgrade, url)
    outbox = await _run(url, "SELECT event_id FROM event_outbox")
    assert [tuple(row) for row in outbox] == [("evt_waiting",)]

    await asyncio.to_thread(command.downgrade, config, "0003")
    flags = await _run(url, "SELECT id, published_at IS NULL FROM event ORDER BY seq")
    assert [(row[0], bool(row[1])) for row in flags] == [
        ("evt_sent", False),
        ("evt_waiting", True),
    ]
