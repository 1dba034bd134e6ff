"""Fixtures for tests that run ``blueline`` as real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from blueline.settings import SANDBOX_PARTNER_KEY
from tests.conftest import Api, keyring_spec
from tests.e2e.support import (
    BluelineProcess,
    ProcessGroup,
    clean_env,
    printed_api_key,
    serve_env,
)
from tests.support.asgi_server import free_port
from tests.support.clients import http_client


async def configure_sandbox(sandbox: httpx.AsyncClient, **config: Any) -> dict[str, Any]:
    """Replace the sandbox config; lines are never placed on their own unless asked."""
    config.setdefault("auto_assign_after_s", None)
    response = await sandbox.put("/sandbox/config", json=config)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessGroup]:
    """Every process a test starts; all are stopped at the end, even after a failure."""
    group = ProcessGroup(tmp_path / "logs")
    try:
        yield group
    finally:
        group.stop_all()
        # Shown by pytest only when the test failed.
        print(group.report())


@pytest.fixture(scope="module")
def sandbox_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BluelineProcess]:
    """One provider simulator for the module; each test resets its config."""
    workdir = tmp_path_factory.mktemp("sandbox-provider")
    group = ProcessGroup(workdir / "logs")
    try:
        yield group.sandbox_provider(port=free_port(), env=clean_env(), cwd=workdir)
    finally:
        group.stop_all()


@pytest.fixture
async def sandbox(sandbox_process: BluelineProcess) -> AsyncIterator[httpx.AsyncClient]:
    """The simulator's control API, with its defaults restored before and after a test."""
    async with http_client(sandbox_process.base_url, timeout=10) as client:
        await configure_sandbox(client)
        yield client
        await configure_sandbox(client)


@dataclass
class Deployment:
    """``blueline serve`` on PostgreSQL, pointed at the sandbox-provider process."""

    procs: ProcessGroup
    env: dict[str, str]
    port: int
    cwd: Path
    process: BluelineProcess
    api: Api

    def restart(self, **extra_env: str) -> BluelineProcess:
        """Start the API again on the same port and database (stopping it first if alive)."""
        self.process.stop()
        self.process = self.procs.serve(port=self.port, env={**self.env, **extra_env}, cwd=self.cwd)
        return self.process

    def cli(self, *args: str) -> BluelineProcess:
        return self.procs.run(list(args), env=self.env, cwd=self.cwd)


@pytest.fixture
async def deployment(
    procs: ProcessGroup,
    pg_url: str,
    sandbox_process: BluelineProcess,
    sandbox: httpx.AsyncClient,
    tmp_path: Path,
) -> AsyncIterator[Deployment]:
    port = free_port()
    workdir = tmp_path / "serve"
    workdir.mkdir()
    env = serve_env(
        database_url=pg_url,
        provider_url=sandbox_process.base_url,
        port=port,
        encryption_keys=keyring_spec(),
        BLUELINE_PROVIDER_API_KEY=SANDBOX_PARTNER_KEY,
    )
    process = procs.serve(port=port, env=env, cwd=workdir)
    key = printed_api_key(process.stdout())
    assert key is not None, process.describe()
    api = Api(process.base_url, key)
    try:
        yield Deployment(procs, env, port, workdir, process, api)
    finally:
        await api.http.aclose()
