"""HTTP clients for tests that talk to servers run by uvicorn."""

from __future__ import annotations

import httpx

# uvicorn closes a connection idle for 5 s, and httpx keeps an idle one for 5 s by
# default: a request sent on a connection the server is just closing ends in a reset
# (httpx.ReadError), more often on a loaded machine. Letting go sooner on this side
# closes that window.
KEEPALIVE_EXPIRY_S = 2.0


def http_client(base_url: str, *, timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=timeout,
        limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S),
    )
