"""The server under test: ``create_app(settings)`` on one uvicorn worker, as ``blueline
serve`` runs it, plus bench-only routes registered on the same app.

    python -m bench.server [--no-extras]

Settings come from the ``BLUELINE_*`` environment like ``blueline serve``. Extra routes,
all under ``/bench/``:

- ``POST /bench/webhook-verify/{setup_id}``: the webhook baseline; verifies the Standard
  Webhooks signature with ``signature.verify`` against ``BENCH_BASELINE_SECRET``, parses
  the JSON body and answers, without touching the database;
- ``GET /bench/list``: the list baseline, a plain Litestar + asyncpg endpoint:
  authenticates the bearer key (the same cached check GraphQL uses), fetches the page's
  rows with one statement and encodes the JSON a GraphQL
  ``imessageSetups(first: 50) { edges { node { … } } }`` query answers;
- ``GET /bench/ws-idle``: a bare WebSocket that stays open (memory baseline);
- ``GET /bench/stats``: SQL statements and requests per route, the hub's subscriber
  count, the document cache's entries and estimated bytes, this process's id and RSS.

SQL statements are counted with a ``before_cursor_execute`` listener (SQLAlchemy) and
the persistence layer's statement observer (prebuilt statements on raw connections),
and SQLAlchemy pool checkouts with a ``checkout`` listener, attributed to the route
whose request ran them (a context variable set around each ASGI call); background work
(the publish sweep, revocation polls) is counted under ``background``. Transaction
control (BEGIN, COMMIT, ROLLBACK) is not in the statement count.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import os
import time
from collections import Counter
from typing import Any

import uvicorn
from litestar import Litestar, Request, Response, WebSocket, get, post, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromPath
from litestar.types import ASGIApp, Receive, Scope, Send
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from bench.infra import raise_fd_limit, rss_kib
from blueline.app import Server, create_app, uvicorn_options
from blueline.persistence.database import STATEMENT_OBSERVERS
from blueline.runtime import Runtime
from blueline.settings import Settings
from blueline.webhooks import signature

_route: contextvars.ContextVar[str] = contextvars.ContextVar("bench_route", default="background")
statements: Counter[str] = Counter()
checkouts: Counter[str] = Counter()
requests: Counter[str] = Counter()


def route_label(path: str) -> str:
    """``/webhooks/imessage/ims_…`` -> ``/webhooks/imessage``: ids out of the label."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] in ("webhooks", "bench"):
        parts = parts[:2]
    return "/" + "/".join(parts[:2])


def _count_statement(*_args: Any) -> None:
    statements[_route.get()] += 1


def _count_checkout(*_args: Any) -> None:
    checkouts[_route.get()] += 1


def counting(app: ASGIApp) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await app(scope, receive, send)
            return
        label = route_label(scope["path"])
        requests[label] += 1
        token = _route.set(label)
        try:
            await app(scope, receive, send)
        finally:
            _route.reset(token)

    return wrapped


def _runtime(request: Request[Any, Any, Any]) -> Runtime:
    runtime: Runtime = request.app.state["runtime"]
    return runtime


LIST_SQL = (
    "SELECT s.id, s.business_name, s.label, s.status, (SELECT count(*) FROM phone_line l "
    "WHERE l.setup_id = s.id AND l.status <> 'RELEASED') FROM imessage_setup s "
    "WHERE s.workspace_id = $1 AND s.state = 'ready' ORDER BY s.id DESC LIMIT $2"
)


def baseline_routes(secret: str) -> list[Any]:
    rejected = {"error": "unauthorized"}
    accepted = {"status": "accepted"}

    @post("/bench/webhook-verify/{setup_id:str}", include_in_schema=False)
    async def webhook_verify(
        setup_id: FromPath[str], request: Request[Any, Any, Any]
    ) -> Response[dict[str, str]]:
        body = await request.body()
        headers = request.headers
        ok = signature.verify(
            [secret],
            headers.get("webhook-id"),
            headers.get("webhook-timestamp"),
            headers.get("webhook-signature"),
            body,
            time.time(),
        )
        if not ok:
            return Response(rejected, status_code=401)
        event_body = json.loads(body)
        if not isinstance(event_body, dict) or not setup_id:
            return Response({"error": "malformed event"}, status_code=400)
        return Response(accepted, status_code=200)

    @get("/bench/list", include_in_schema=False)
    async def list_baseline(
        request: Request[Any, Any, Any], first: int = 50
    ) -> Response[dict[str, Any]]:
        runtime = _runtime(request)
        caller = await runtime.authenticator.authenticate(request.headers.get("authorization"))
        if caller is None:
            return Response(rejected, status_code=401)
        async with runtime.db.read() as conn:
            rows = await conn.fetch(LIST_SQL, (caller.workspace_id, first))
        edges = [
            {
                "node": {
                    "id": row[0],
                    "businessName": row[1],
                    "label": row[2],
                    "status": row[3],
                    "phoneLineCount": row[4],
                }
            }
            for row in rows
        ]
        return Response({"data": {"imessageSetups": {"edges": edges}}})

    @websocket("/bench/ws-idle")
    async def ws_idle(socket: WebSocket[Any, Any, Any]) -> None:
        await socket.accept()
        try:
            while True:
                await socket.receive_data(mode="text")
        except WebSocketDisconnect:
            return

    @get("/bench/stats", include_in_schema=False)
    async def stats(request: Request[Any, Any, Any]) -> dict[str, Any]:
        runtime = _runtime(request)
        documents = request.app.state["runner"].documents
        return {
            "pid": os.getpid(),
            "rss_kib": rss_kib(os.getpid()),
            "documents": {"entries": len(documents), "held_bytes": documents.held_bytes},
            "subscribers": runtime.bus.hub.subscriber_count,
            "statements": dict(statements),
            "checkouts": dict(checkouts),
            "requests": dict(requests),
        }

    return [webhook_verify, list_baseline, ws_idle, stats]


def build(settings: Settings, *, extras: bool) -> ASGIApp:
    app: Litestar = create_app(settings)
    if not extras:
        return app
    for handler in baseline_routes(os.environ.get("BENCH_BASELINE_SECRET", "")):
        app.register(handler)
    event.listen(Engine, "before_cursor_execute", _count_statement)
    STATEMENT_OBSERVERS.append(_count_statement)
    event.listen(Pool, "checkout", _count_checkout)
    return counting(app)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__)
    parser.add_argument(
        "--no-extras", action="store_true", help="serve the product app alone, no bench routes"
    )
    args = parser.parse_args()
    raise_fd_limit()
    settings = Settings()
    options: dict[str, Any] = {**uvicorn_options(settings), "timeout_graceful_shutdown": 5}
    config = uvicorn.Config(
        build(settings, extras=not args.no_extras),
        host=settings.host,
        port=settings.port,
        backlog=4096,
        **options,  # as `blueline serve` runs it
    )
    Server(config, owns_process=True).run()


if __name__ == "__main__":
    main()
