"""The HTTP protocol's own cost per request: uvicorn's httptools protocol against the
bounded one ``blueline serve`` runs (``api/connections.py``), in one loop.

    python -m bench.protocol_cost [--requests N] [--rounds R]

Each round feeds one keep-alive request N times to each protocol on a stub transport
(no socket, no application work beyond a two-byte answer) and prints microseconds per
request; rounds alternate the two so the machine's drift falls on both.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from blueline.api.connections import bounded_http_protocol

REQUEST = (
    b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: python-httpx/0.28\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip\r\nConnection: keep-alive\r\n"
    b"Authorization: Bearer bl_live_" + b"x" * 43 + b"\r\n"
    b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
)


async def _answer(_scope: Any, _receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closing = False
        self.writes = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def write(self, data: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


async def per_request_us(protocol: type[HttpToolsProtocol], requests: int) -> float:
    config = Config(_answer, log_level="warning")
    config.load()
    served = protocol(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    served.connection_made(transport)
    started = time.perf_counter()
    for _ in range(requests):
        served.data_received(REQUEST)
        # Two turns of the loop: the application's task runs, then its answer is sent.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    # Start line and body for each request: every one was answered.
    assert transport.writes == 2 * requests, transport.writes
    return elapsed / requests * 1e6


async def main(requests: int, rounds: int) -> None:
    bounded = bounded_http_protocol(
        head_timeout_s=20.0, body_timeout_s=60.0, max_body_bytes=64 * 1024
    )
    ratios = []
    for n in range(rounds):
        stock = await per_request_us(HttpToolsProtocol, requests)
        ours = await per_request_us(bounded, requests)
        ratios.append(ours / stock)
        print(
            f"round {n + 1}: uvicorn {stock:.1f} us/request, bounded {ours:.1f} us/request "
            f"({ours / stock:.2f}x)"
        )
    print(f"median ratio over {rounds} rounds: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds))
