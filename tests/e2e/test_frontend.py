"""Blueline as a frontend on another origin meets it: ``blueline serve`` (production, on
PostgreSQL) and a separate ``blueline sandbox-provider``, driven by the JS clients
frontends use (Apollo Client 4, graphql-ws, GraphQL Code Generator) in Node and in
headless Chromium, with pages served from origins of their own.

One production server serves most of the module; GraphiQL is checked on a second one,
with no configuration at all, as a developer first meets it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from blueline.access import create_api_key
from blueline.persistence.database import Database
from blueline.runtime import EMBEDDED_PROVIDER_PATH
from tests.conftest import keyring_spec
from tests.e2e.conftest import configure_sandbox
from tests.e2e.support import (
    BluelineProcess,
    ProcessGroup,
    clean_env,
    printed_api_key,
    run_cli,
    serve_env,
)
from tests.support.asgi_server import HOST, free_port
from tests.support.databases import sqlalchemy_url, truncate_pg
from tests.support.node import NODE_DIR, ensure_node_modules, run_node

pytestmark = pytest.mark.e2e

NODE_TIMEOUT_S = 90
SCHEMA = Path(__file__).resolve().parents[2] / "schema.graphql"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Each request would be a line on stderr, in every failure's report."""


@dataclass
class StaticSite:
    """A directory served over HTTP on a port of its own: an origin for a page."""

    url: str
    server: ThreadingHTTPServer


@pytest.fixture(scope="module")
def page_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("frontend-page")


def _serve_directory(directory: Path) -> Iterator[StaticSite]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer((HOST, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield StaticSite(f"http://{HOST}:{server.server_address[1]}", server)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def app_site(page_dir: Path) -> Iterator[StaticSite]:
    """The frontend's origin, listed in BLUELINE_CORS_ORIGINS."""
    yield from _serve_directory(page_dir)


@pytest.fixture(scope="module")
def stranger_site(page_dir: Path) -> Iterator[StaticSite]:
    """The same page on an origin that is not listed."""
    yield from _serve_directory(page_dir)


@dataclass
class Frontend:
    """The module's deployment as a frontend sees it."""

    process: BluelineProcess
    key: str
    metrics_token: str
    sandbox_url: str
    database_url: str

    @property
    def graphql_url(self) -> str:
        return f"{self.process.base_url}/graphql"

    async def new_key(self) -> str:
        """A key for a new, empty workspace."""
        db = Database(self.database_url)
        try:
            return await create_api_key(db, f"frontend-{uuid.uuid4().hex[:12]}")
        finally:
            await db.dispose()

    def node_args(self, **extra: Any) -> dict[str, Any]:
        return {
            "graphqlUrl": self.graphql_url,
            "apiKey": self.key,
            "sandboxUrl": self.sandbox_url,
            "metricsToken": self.metrics_token,
            **extra,
        }


@pytest.fixture(scope="module")
async def frontend(
    pg_dsn: str,
    sandbox_process: BluelineProcess,
    app_site: StaticSite,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Frontend]:
    await truncate_pg(pg_dsn)
    async with httpx.AsyncClient(base_url=sandbox_process.base_url, timeout=10) as sandbox:
        await configure_sandbox(sandbox)  # numbers are placed when a test says so
    workdir = tmp_path_factory.mktemp("frontend-serve")
    port = free_port()
    token = secrets.token_urlsafe(16)
    env = serve_env(
        database_url=sqlalchemy_url(pg_dsn),
        provider_url=sandbox_process.base_url,
        port=port,
        encryption_keys=keyring_spec(),
        BLUELINE_ENV="production",
        # Plain http is accepted in production on loopback only: this is loopback.
        BLUELINE_CORS_ORIGINS=app_site.url,
        BLUELINE_METRICS_TOKEN=token,
    )
    group = ProcessGroup(workdir / "logs")
    try:
        process = group.serve(port=port, env=env, cwd=workdir)
        key = printed_api_key(process.stdout())
        assert key is not None, process.describe()
        yield Frontend(process, key, token, sandbox_process.base_url, sqlalchemy_url(pg_dsn))
    finally:
        group.stop_all()
        print(group.report())
    # Whatever the clients did, the server logged no error of its own.
    assert '"level": "error"' not in process.stderr(), process.describe()


@pytest.fixture(scope="module")
def node_modules() -> None:
    ensure_node_modules()


@dataclass
class DevServer:
    """``blueline serve`` with no configuration: the embedded defaults."""

    process: BluelineProcess
    key: str

    @property
    def url(self) -> str:
        return self.process.base_url

    async def create(self, http: httpx.AsyncClient, name: str) -> dict[str, Any]:
        answer = await http.post(
            "/graphql",
            json={
                "query": "mutation($name: String!) { createImessageSetup(input: "
                '{businessName: $name, label: "Desk"}) { setup { id phoneLines { requestId } } '
                "userErrors { code } } }",
                "variables": {"name": name},
            },
            headers={"Authorization": f"Bearer {self.key}"},
        )
        payload = answer.json()["data"]["createImessageSetup"]
        assert payload["userErrors"] == [], payload
        setup: dict[str, Any] = payload["setup"]
        return setup

    async def place(
        self, http: httpx.AsyncClient, setup: dict[str, Any], number: str | None = None
    ) -> None:
        """The embedded sandbox places the setup's first line now."""
        request_id = setup["phoneLines"][0]["requestId"]
        placed = await http.post(
            f"{EMBEDDED_PROVIDER_PATH}/sandbox/line-requests/{request_id}/assign",
            json={"phone_number": number} if number else {},
        )
        assert placed.status_code == 200, placed.text


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    workdir = tmp_path_factory.mktemp("dev-serve")
    group = ProcessGroup(workdir / "logs")
    try:
        process = group.serve(port=free_port(), env=clean_env(), cwd=workdir)
        key = printed_api_key(process.stdout())
        assert key is not None, process.describe()
        yield DevServer(process, key)
    finally:
        group.stop_all()
        print(group.report())
    assert "Traceback" not in process.stderr(), process.describe()


# -- a page on another origin, in Chromium


@pytest.mark.usefixtures("node_modules")
def test_a_page_on_a_listed_origin_runs_apollo_over_both_transports_and_a_stranger_cannot(
    frontend: Frontend, app_site: StaticSite, stranger_site: StaticSite, page_dir: Path
) -> None:
    result = run_node(
        NODE_DIR / "apollo_browser.mjs",
        frontend.node_args(
            pageDir=str(page_dir),
            appUrl=app_site.url,
            strangerUrl=stranger_site.url,
            timeoutMs=(NODE_TIMEOUT_S - 20) * 1000,
        ),
        timeout_s=NODE_TIMEOUT_S,
    )

    allowed, stranger = result["allowed"], result["stranger"]
    assert result["consoleErrors"] == [], result
    assert result["blocked"] == []
    assert allowed["before"]["ok"] is True, allowed
    for mode in ("ws", "http"):
        seen = allowed[mode]
        assert seen["errors"] == [], (mode, seen)
        ours = [e for e in seen["events"] if e["setup"]["id"] == seen["created"]["id"]]
        assert ours[-1]["phoneLine"] == {
            "__typename": "PhoneLine",
            "id": ours[-1]["phoneLine"]["id"],
            "status": "ASSIGNED",
            "phoneNumber": seen["number"],
        }
        assert ours[-1]["setup"]["status"] == "ACTIVE"
        assert seen["cached"] == "ACTIVE", (mode, seen)
    listed = {edge["node"]["id"] for edge in allowed["after"]["data"]["imessageSetups"]["edges"]}
    assert {allowed["ws"]["created"]["id"], allowed["http"]["created"]["id"]} <= listed

    # The stranger's page: the preflight is refused, so no request with the key is sent;
    # the socket is refused at the handshake.
    assert stranger["list"]["ok"] is False
    assert stranger["list"]["error"]["message"] == "Failed to fetch", stranger
    assert stranger["http"]["events"] == []
    assert stranger["http"]["errors"][0]["message"] == "Failed to fetch", stranger
    assert stranger["ws"]["events"] == []
    # graphql-ws reports the failed handshake as an error event, which Apollo wraps.
    assert stranger["ws"]["errors"], stranger
    cors = [e for e in stranger["consoleErrors"] if "blocked by CORS policy" in e]
    assert len(cors) == 2, stranger["consoleErrors"]
    assert all(f"from origin '{stranger_site.url}'" in e for e in cors)
    assert any(
        "WebSocket handshake: Unexpected response code: 403" in e for e in stranger["consoleErrors"]
    ), stranger["consoleErrors"]
    assert stranger["subscribers"] == result["baseline"]


# -- JS clients in Node


@pytest.mark.usefixtures("node_modules")
def test_js_clients_authenticate_and_are_refused_in_ways_they_understand(
    frontend: Frontend,
) -> None:
    result = run_node(
        NODE_DIR / "graphql_clients.mjs", frontend.node_args(), timeout_s=NODE_TIMEOUT_S
    )

    for refused in ("missing", "bad"):
        error = result["http"][refused]
        assert error["isServerError"] is True, error
        assert error["statusCode"] == 401
        [body] = error["body"]["errors"]
        assert body["extensions"]["code"] == "UNAUTHENTICATED"
        assert "Authorization: Bearer" in body["message"]
    assert isinstance(result["http"]["good"]["data"]["imessageSetups"]["totalCount"], int)
    for place in ("Authorization", "authorization", "headers"):
        answer = result["ws"][place]
        assert "totalCount" in answer["result"]["data"]["imessageSetups"], (place, answer)
    for refused in ("bad", "missing", "bare"):
        closed = result["refused"][refused]["closed"]
        assert closed["code"] == 4403, (refused, closed)
        assert '"Authorization": "Bearer <api key>"' in closed["reason"]
    assert result["legacy"]["protocol"] == "graphql-ws"
    assert result["legacy"]["code"] == 4403
    assert "connection_init" in result["legacy"]["reason"]


@pytest.mark.usefixtures("node_modules")
async def test_apollo_cache_follows_the_true_history_while_a_subscription_replays(
    frontend: Frontend,
) -> None:
    args = frontend.node_args(apiKey=await frontend.new_key())
    result = await asyncio.to_thread(
        run_node, NODE_DIR / "apollo_cache_replay.mjs", args, NODE_TIMEOUT_S
    )

    assert [(r["update"]["change"], r["cached"]) for r in result["live"]] == [
        ("CREATED", "PENDING"),
        ("LINE_ADDED", "PENDING"),
        ("LINE_ASSIGNED", "ACTIVE"),
    ]
    setup_updates = result["resumed"]["imessageSetupUpdates"]
    assert [(r["update"]["change"], r["update"]["setup"]["status"]) for r in setup_updates] == [
        ("LINE_ADDED", "ACTIVE"),  # a pending second line leaves a live setup live
        ("SUSPENDED", "SUSPENDED"),
        ("REACTIVATED", "ACTIVE"),
    ]
    assert [r["cached"] for r in setup_updates] == ["ACTIVE", "SUSPENDED", "ACTIVE"]
    assert [r["update"]["setup"]["phoneLineCount"] for r in setup_updates] == [2, 2, 2]
    [line_update] = result["resumed"]["phoneLineUpdates"]
    assert line_update["update"]["phoneLine"]["status"] == "PENDING"
    assert line_update["cached"] == "ACTIVE"
    assert result["cachedAtEnd"] == result["current"] == "ACTIVE"


# -- GraphiQL


def test_production_serves_no_graphiql(frontend: Frontend) -> None:
    with httpx.Client(base_url=frontend.process.base_url, timeout=10) as client:
        page = client.get("/graphql", headers={"Accept": "text/html"})
        asset = client.get("/_graphiql/graphiql.min.js")

    assert page.status_code == 405
    assert "text/html" not in page.headers["content-type"]
    assert page.json()["errors"][0]["extensions"]["code"] == "METHOD_NOT_ALLOWED"
    assert asset.status_code == 404


@pytest.mark.usefixtures("node_modules")
async def test_graphiql_works_offline_against_blueline_serve(dev_server: DevServer) -> None:
    async with httpx.AsyncClient(base_url=dev_server.url, timeout=30) as http:
        browsing = asyncio.create_task(
            asyncio.to_thread(
                run_node,
                NODE_DIR / "graphiql_offline.mjs",
                {
                    "base": dev_server.url,
                    "apiKey": dev_server.key,
                    "operation": "subscription Live {\n  phoneLineUpdates {\n    eventId\n"
                    "    phoneLine { status phoneNumber }\n  }\n}\n",
                    "expect": "+14155550142",
                    "timeoutMs": (NODE_TIMEOUT_S - 15) * 1000,
                },
                NODE_TIMEOUT_S,
            )
        )
        await _until_subscribed(http, browsing)
        # Meanwhile, a setup whose number the embedded sandbox is told to place now.
        setup = await dev_server.create(http, "GraphiQL Dental")
        await dev_server.place(http, setup, "+14155550142")
        result = await browsing

    assert result["blocked"] == []
    assert result["consoleErrors"] == []
    assert json.loads(result["initialHeaders"]) == {"Authorization": "Bearer <your key>"}
    assert json.loads(result["headers"]) == {"Authorization": f"Bearer {dev_server.key}"}
    assert '"status": "ASSIGNED"' in result["result"]
    assert result["rootTypes"] == ["query", "mutation", "subscription"]


async def subscribers(http: httpx.AsyncClient) -> float:
    """The server's count of registered subscription streams (development: no token)."""
    metrics = (await http.get("/metrics")).text
    [value] = re.findall(r"^blueline_subscribers (\S+)$", metrics, re.M)
    return float(value)


async def _until_subscribed(
    http: httpx.AsyncClient, running: asyncio.Task[Any] | None = None, baseline: float = 0
) -> None:
    """Until a stream more than ``baseline`` is registered (``running`` may fail first)."""
    for _ in range(1200):
        if running is not None and running.done():
            running.result()
            raise AssertionError("the client finished before subscribing")
        if await subscribers(http) > baseline:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("no subscription registered")


# -- start-up refusals


@pytest.mark.parametrize(
    ("origins", "production", "reason"),
    [
        ("*", False, "'*' is never allowed"),
        ("https://*.example.com", False, "wildcards are never allowed"),
        ("http://app.example.com", True, "production allows only https://"),
    ],
)
def test_serve_refuses_origins_it_must_not_trust(
    tmp_path: Path, origins: str, production: bool, reason: str
) -> None:
    extra = {"BLUELINE_CORS_ORIGINS": origins}
    if production:
        extra |= {
            "BLUELINE_ENV": "production",
            "BLUELINE_ENCRYPTION_KEYS": keyring_spec(),
            "BLUELINE_PROVIDER_URL": "https://provider.example",
            "BLUELINE_PUBLIC_BASE_URL": "https://api.example.com",
        }
    result = run_cli(["serve", "--port", str(free_port())], clean_env(**extra), cwd=tmp_path)

    assert result.returncode != 0
    assert reason in result.stderr
    assert "API key" not in result.stdout
