"""A TCP proxy on 127.0.0.1 that resets some of the requests passing through it.

For each chunk a client sends (with HTTP/1.1 keep-alive, about one request), it rolls
a seeded die: within ``reset_rate`` the client's connection is reset (RST, not a
polite close), half the time before the chunk reaches the server (nothing happened
there) and half the time after (the server acts, and its answer never arrives) — the
two ways a flaky network loses a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import Counter

from tests.support.asgi_server import HOST


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ResettingProxy:
    def __init__(self, target_port: int, *, reset_rate: float = 0.0, seed: int = 0) -> None:
        self.target_port = target_port
        self.reset_rate = reset_rate
        self.resets: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._clients: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> ResettingProxy:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            # Ending the connections ends their handlers (cancelling a stream handler
            # makes asyncio log it as an error).
            for writer in tuple(self._clients):
                writer.transport.abort()
            if self._handlers:
                await asyncio.wait(tuple(self._handlers), timeout=5)
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._clients.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        pump: asyncio.Task[None] | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(HOST, self.target_port)
            pump = asyncio.create_task(self._copy(upstream_reader, writer))
            while data := await reader.read(65536):
                roll = self._random.random()
                if roll < self.reset_rate / 2:
                    self.resets["before"] += 1
                    _reset(writer)
                    return
                upstream_writer.write(data)
                await upstream_writer.drain()
                if roll < self.reset_rate:
                    self.resets["after"] += 1
                    pump.cancel()
                    # Time for the server to take the request in and act on it.
                    await asyncio.sleep(0.2)
                    _reset(writer)
                    return
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await pump
            if upstream_writer is not None:
                upstream_writer.close()
            if not writer.transport.is_closing():
                writer.close()
            self._handlers.discard(task)
            self._clients.discard(writer)

    @staticmethod
    async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        with contextlib.suppress(OSError):
            sink.close()
