"""Shared fixtures: real PostgreSQL and SQLite, the sandbox provider over HTTP, and the
Blueline API served by uvicorn on a real port."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from blueline.access import create_api_key
from blueline.app import create_app, uvicorn_options
from blueline.persistence.database import Database
from blueline.runtime import Runtime, open_runtime
from blueline.settings import SANDBOX_PARTNER_KEY, Settings
from blueline_sandbox import create_sandbox_app
from tests.support.asgi_server import free_port, serve_asgi
from tests.support.clients import http_client
from tests.support.databases import (
    create_pg_database,
    create_sqlite_template,
    drop_pg_database,
    fresh_sqlite,
    sqlalchemy_url,
    truncate_pg,
)
from tests.support.redis_server import PrivateRedis


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of the test's own, which it may stop and start."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def keyring_spec(kid: str = "test1") -> str:
    return f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    dsn = create_pg_database()
    yield dsn
    drop_pg_database(dsn)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_sqlite_template(tmp_path_factory.mktemp("sqlite-template"))


@pytest.fixture(params=["postgresql", "sqlite"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test runs on an empty, migrated database of both kinds."""
    if request.param == "postgresql":
        dsn = request.getfixturevalue("pg_dsn")
        await truncate_pg(dsn)
        yield sqlalchemy_url(dsn)
    else:
        yield fresh_sqlite(request.getfixturevalue("sqlite_template"), tmp_path)


@pytest.fixture
async def pg_url(pg_dsn: str) -> str:
    await truncate_pg(pg_dsn)
    return sqlalchemy_url(pg_dsn)


@pytest.fixture(scope="session")
def sandbox_url() -> Iterator[str]:
    with serve_asgi(create_sandbox_app(SANDBOX_PARTNER_KEY, auto_assign_after_s=None)) as url:
        yield url


@pytest.fixture
async def sandbox(sandbox_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client on the sandbox's control endpoints, reset before and after each test."""
    async with http_client(sandbox_url, timeout=10) as client:
        await configure_sandbox(client, auto_assign_after_s=None)
        yield client
        await configure_sandbox(client, auto_assign_after_s=None)


async def configure_sandbox(client: httpx.AsyncClient, **config: Any) -> None:
    response = await client.put("/sandbox/config", json=config)
    response.raise_for_status()


def make_settings(database_url: str, provider_url: str, **overrides: Any) -> Settings:
    port = overrides.pop("port", None) or free_port()
    values: dict[str, Any] = {
        "database_url": database_url,
        "provider_url": provider_url,
        "provider_api_key": SANDBOX_PARTNER_KEY,
        "encryption_keys": keyring_spec(),
        "port": port,
        "public_base_url": f"http://127.0.0.1:{port}",
        "reconcile_interval_s": 0,
        "provider_backoff_s": 0.01,
        "relay_poll_interval_s": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient) -> Settings:
    return make_settings(database_url, sandbox_url)


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """The domain wired to a real database and the sandbox over HTTP, without a server."""
    async with open_runtime(settings) as rt:
        yield rt


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


class Api:
    """A frontend's view of a running Blueline: GraphQL over HTTP with an API key."""

    def __init__(self, base_url: str, key: str) -> None:
        self.base_url = base_url
        self.key = key
        self.http = http_client(base_url, timeout=30)

    async def graphql(
        self, query: str, variables: dict[str, Any] | None = None, *, key: str | None = None
    ) -> dict[str, Any]:
        response = await self.http.post(
            "/graphql",
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {key or self.key}"},
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def data(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = await self.graphql(query, variables)
        assert "errors" not in body, body
        data: dict[str, Any] = body["data"]
        return data


def served_like(settings: Settings) -> dict[str, Any]:
    """uvicorn options as `blueline serve` sets them (frame limits, proxy headers)."""
    options = uvicorn_options(settings)
    options.pop("log_level")
    options.pop("timeout_graceful_shutdown")
    return options


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[tuple[str, Settings]]:
    """Blueline's API on a real port (uvicorn in a thread), pointed at the sandbox."""
    with serve_asgi(create_app(settings), port=settings.port, **served_like(settings)) as url:
        yield url, settings


@pytest.fixture
async def api(server: tuple[str, Settings]) -> AsyncIterator[Api]:
    url, settings = server
    db = Database(settings.database_url.get_secret_value())
    try:
        key = await create_api_key(db, "clinic-a")
    finally:
        await db.dispose()
    client = Api(url, key)
    yield client
    await client.http.aclose()
