"""A lean asyncio HTTP/1.1 load generator: pre-encoded requests on keep-alive connections.

A general-purpose client (httpx) spends more CPU per request than the server under test
does on a trivial route, which on two shared cores would cap the baseline and flatten
every ratio. Here a request is one ``write`` of prepared bytes and a response is read
with its ``content-length`` (or chunks), nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from bench.infra import HOST


def encode_request(
    method: str,
    path: str,
    port: int,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: {HOST}:{port}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True)
class Response:
    status: int
    head: bytes
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode() + b":"
        for line in self.head.split(b"\r\n")[1:]:
            if line.lower().startswith(wanted):
                return line[len(wanted) :].strip().decode("latin-1")
        return None

    def headers_without(self, *names: str) -> list[tuple[str, str]]:
        """Header lines, lower-cased and sorted, leaving out ``names``."""
        skip = {n.lower() for n in names}
        found = []
        for line in self.head.split(b"\r\n")[1:]:
            if not line:
                continue
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() not in skip:
                found.append((name.lower(), value.strip()))
        return sorted(found)


class ConnectionClosed(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection, one request in flight at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(HOST, self.port)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def request(self, raw: bytes) -> Response:
        if self._writer is None or self._reader is None:
            await self.open()
        assert self._writer is not None
        assert self._reader is not None
        self._writer.write(raw)
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise ConnectionClosed(str(exc)) from exc
        status = int(head[9:12])
        lower = head.lower()
        marker = lower.find(b"\r\ncontent-length:")
        if marker >= 0:
            end = lower.index(b"\r\n", marker + 2)
            length = int(lower[marker + 17 : end])
            body = await self._reader.readexactly(length) if length else b""
        elif b"transfer-encoding: chunked" in lower:
            body = await self._read_chunks()
        else:
            body = b""
        if b"\r\nconnection: close" in lower:
            await self.close()
        return Response(status, head, body)

    async def _read_chunks(self) -> bytes:
        assert self._reader is not None
        parts = []
        for _ in range(1_000_000):
            size = int((await self._reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                break
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)
        return b"".join(parts)


@dataclass
class LoadResult:
    """What a load phase produced: latencies of the answers that had the expected status."""

    latencies_ns: list[int] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    elapsed_s: float = 0.0
    exhausted: bool = False

    @property
    def ok(self) -> int:
        return len(self.latencies_ns)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def merge(self, other: LoadResult) -> LoadResult:
        return LoadResult(
            self.latencies_ns + other.latencies_ns,
            self.statuses + other.statuses,
            self.errors + other.errors,
            self.elapsed_s + other.elapsed_s,
            self.exhausted or other.exhausted,
        )


async def closed_loop(
    port: int,
    requests: Iterable[bytes],
    *,
    connections: int,
    duration_s: float,
    expect_status: int = 200,
) -> LoadResult:
    """``connections`` workers send the next request as soon as their last one is answered,
    until ``duration_s`` has passed or ``requests`` (which bounds the count) runs out."""
    source: Iterator[bytes] = iter(requests)
    result = LoadResult()
    conns = [Connection(port) for _ in range(connections)]
    await asyncio.gather(*(c.open() for c in conns))
    clock = time.perf_counter_ns
    deadline = clock() + int(duration_s * 1e9)

    async def worker(conn: Connection) -> None:
        while clock() < deadline:
            raw = next(source, None)
            if raw is None:
                result.exhausted = True
                return
            started = clock()
            try:
                response = await conn.request(raw)
            except (ConnectionClosed, OSError, asyncio.IncompleteReadError):
                result.errors += 1
                continue
            took = clock() - started
            result.statuses[response.status] += 1
            if response.status == expect_status:
                result.latencies_ns.append(took)

    started = clock()
    try:
        await asyncio.wait_for(asyncio.gather(*(worker(c) for c in conns)), timeout=duration_s + 60)
    finally:
        result.elapsed_s = (clock() - started) / 1e9
        await asyncio.gather(*(c.close() for c in conns))
    return result


async def timed(conn: Connection, raw: bytes) -> tuple[int, Response]:
    """One request on ``conn``; (nanoseconds, response)."""
    started = time.perf_counter_ns()
    response = await conn.request(raw)
    return time.perf_counter_ns() - started, response
