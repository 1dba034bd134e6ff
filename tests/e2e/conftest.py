"""Fixtures for tests that run ``blueline`` as real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.support import BluelineProcess, ProcessGroup, clean_env
from tests.support.asgi_server import free_port


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
    async with httpx.AsyncClient(base_url=sandbox_process.base_url, timeout=10) as client:
        await configure_sandbox(client)
        yield client
        await configure_sandbox(client)
