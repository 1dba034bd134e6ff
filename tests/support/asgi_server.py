"""Run an ASGI app under a real uvicorn server, in a background thread with its own loop.

Tests then talk to it over real sockets, exactly like an outside client would.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from blueline.app import Server

HOST = "127.0.0.1"


def free_port() -> int:
    """A port that was free a moment ago (prefer ``serve_asgi``: it keeps its socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _bound_socket(port: int) -> socket.socket:
    # An explicit IPPROTO_TCP matters: asyncio only turns Nagle off (TCP_NODELAY) on
    # accepted sockets whose proto says TCP, else every keep-alive answer waits ~40 ms.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


@contextmanager
def serve_asgi(
    app: Any,
    *,
    port: int = 0,
    startup_timeout_s: float = 10.0,
    shutdown_timeout_s: float = 10.0,
    **config: Any,
) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 and yield its base URL (``http://127.0.0.1:PORT``).

    The listening socket is bound here before the server starts, so the port cannot be
    taken in between. Extra keyword arguments go to :class:`uvicorn.Config`. On exit the
    server finishes its lifespan shutdown before this returns.
    """
    sock = _bound_socket(port)
    actual_port = int(sock.getsockname()[1])
    options: dict[str, Any] = {
        "log_level": "warning",
        "lifespan": "on",
        "loop": "asyncio",
        "timeout_graceful_shutdown": 5,
    }
    options.update(config)
    # Blueline's own server class, as `blueline serve` runs: streams hear of a stop first.
    server = Server(uvicorn.Config(app, host=HOST, port=actual_port, **options))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn-{actual_port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not (server.started and _accepts_connections(actual_port)):
            if not thread.is_alive():
                raise RuntimeError(f"server on port {actual_port} failed to start") from (
                    failure[0] if failure else None
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on port {actual_port} did not start in time")
            time.sleep(0.01)
        yield f"http://{HOST}:{actual_port}"
    finally:
        server.should_exit = True
        thread.join(shutdown_timeout_s)
        sock.close()
        if thread.is_alive():
            raise RuntimeError(f"server on port {actual_port} did not shut down in time")
        if failure:
            raise RuntimeError(f"server on port {actual_port} crashed") from failure[0]
