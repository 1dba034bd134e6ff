"""What `serve` does once it listens: what start-up built is frozen out of the
collector's generations and the young generation is widened, and only where the server
owns its process."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Iterator

import pytest
import uvicorn

from blueline.app import GC_THRESHOLDS, Server


async def app(scope: dict[str, object], receive: object, send: object) -> None:
    if scope["type"] == "lifespan":
        return


@pytest.fixture
def unfrozen() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the suite shares this process
    gc.set_threshold(*thresholds)


@pytest.mark.parametrize("owns_process", [True, False])
async def test_only_a_server_owning_its_process_freezes_what_start_up_built(
    unfrozen: None, owns_process: bool
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    server = Server(config, owns_process=owns_process)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            assert not serving.done()
            await asyncio.sleep(0.01)
        assert (gc.get_freeze_count() > 0) is owns_process
        assert (gc.get_threshold() == GC_THRESHOLDS) is owns_process
    finally:
        server.should_exit = True
        await serving
        listener.close()
