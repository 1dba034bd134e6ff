"""Blueline as a frontend on another origin meets it: ``blueline serve`` (production, on
PostgreSQL) and a separate ``blueline sandbox-provider``, driven by the JS clients
frontends use (Apollo Client 4, graphql-ws, GraphQL Code Generator) in Node and in
headless Chromium, with pages served from origins of their own.

One production server serves most of the module. A second one is started exactly as
README.md's frontend guide says, on the embedded defaults, as a developer first meets
it: GraphiQL is checked on it, and every snippet of the guide (shell, GraphQL, the
Apollo Client modules, the codegen config and command) is run against it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
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
from blueline.api import documents, responses, websocket
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
from tests.support.clients import http_client
from tests.support.databases import sqlalchemy_url, truncate_pg
from tests.support.multipart import multipart_subscription
from tests.support.node import NODE_DIR, ensure_node_modules, node_path, run_node

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
    async with http_client(sandbox_process.base_url, timeout=10) as sandbox:
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


README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
README_BASE = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Snippet:
    lang: str
    text: str
    line: int

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def guide_snippets(kind: str | None = None) -> list[Snippet]:
    """The fenced blocks of README.md's frontend guide (of one kind)."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## For frontend developers\n")
    end = text.index("\n## ", start + 1)
    found = [
        Snippet(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
        for m in FENCE.finditer(text, start, end)
    ]
    chosen = [snippet for snippet in found if kind is None or snippet_kind(snippet) == kind]
    assert chosen, f"the guide has no {kind} snippet"
    return chosen


def snippet_kind(snippet: Snippet) -> str:
    """Which test runs a snippet; a snippet of no kind fails the guide's test."""
    first = snippet.text.splitlines()[0]
    if snippet.lang == "sh" and "BLUELINE_CORS_ORIGINS=" in first:
        return "server"
    if snippet.lang == "sh" and first.startswith("curl "):
        return "curl"
    if snippet.lang == "sh" and snippet.text.strip() == "npx graphql-codegen":
        return "codegen"
    if snippet.lang == "ts" and first == "// codegen.ts":
        return "codegen-config"
    if snippet.lang == "js" and re.fullmatch(r"// src/[\w.-]+\.js", first):
        return "js"
    if snippet.lang in ("graphql", "json"):
        return snippet.lang
    raise AssertionError(f"{snippet} is run by no test: give it a kind")


@dataclass
class DevServer:
    """``blueline serve`` started as the guide says, on its embedded defaults."""

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
    [snippet] = guide_snippets("server")
    words = shlex.split(snippet.text)
    env = dict(word.split("=", 1) for word in words if re.fullmatch(r"BLUELINE_\w+=.*", word))
    command = [word for word in words if not re.fullmatch(r"BLUELINE_\w+=.*", word)]
    assert command == [".venv/bin/blueline", "serve"], snippet
    workdir = tmp_path_factory.mktemp("dev-serve")
    group = ProcessGroup(workdir / "logs")
    try:
        process = group.serve(port=free_port(), env=clean_env(**env), cwd=workdir)
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
    async with http_client(dev_server.url, timeout=30) as http:
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


# -- the README's frontend guide, snippet by snippet


def test_every_snippet_of_the_guide_is_run_by_a_test() -> None:
    kinds = {snippet_kind(snippet) for snippet in guide_snippets()}

    assert kinds == {"server", "curl", "json", "js", "graphql", "codegen-config", "codegen"}


def test_guide_names_every_error_code_the_server_has() -> None:
    text = README.read_text(encoding="utf-8")
    guide = text[text.index("## For frontend developers") :]
    request_codes = {
        value
        for name, value in vars(responses).items()
        if name.isupper() and isinstance(value, str) and value.isupper()
    } | {documents.PARSE_FAILED, documents.VALIDATION_FAILED, documents.BAD_USER_INPUT}
    enum = re.search(r"enum UserErrorCode \{([^}]*)\}", SCHEMA.read_text())
    assert enum is not None
    user_codes = set(enum[1].split())
    close_codes = {
        str(value) for name, value in vars(websocket).items() if name.startswith("CLOSE_")
    } | {"4500"}

    for code in sorted(request_codes | user_codes):
        assert f"| `{code}` |" in guide, code
    for close in sorted(close_codes):
        assert f"| `{close}` |" in guide, close


def _shell(snippet: Snippet, base: str) -> str:
    return snippet.text.replace(README_BASE, base)


async def test_the_guides_curl_commands_answer_as_it_says(dev_server: DevServer) -> None:
    env = {**os.environ, "KEY": dev_server.key}
    [expected_refusal] = guide_snippets("json")
    async with http_client(dev_server.url, timeout=30) as http:
        for snippet in guide_snippets("curl"):
            command = _shell(snippet, dev_server.url)
            if "multipart/mixed" in command:
                output = await _streamed_curl(command, env, dev_server, http)
                assert "--graphql" in output, output
                assert '"status":"ASSIGNED","phoneNumber":"+14155550177"' in output, output
                continue
            done = await asyncio.to_thread(
                subprocess.run,
                ["bash", "-euo", "pipefail", "-c", command],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 0, (snippet, done.stderr)
            if "-X OPTIONS" in command:
                assert "access-control-allow-origin: http://localhost:5173" in done.stdout.lower()
                assert "access-control-allow-headers:" in done.stdout.lower()
            elif "$KEY" in command:
                answer = json.loads(done.stdout)
                assert "errors" not in answer, (snippet, answer)
                assert isinstance(answer["data"]["imessageSetups"]["totalCount"], int)
            else:
                masked = re.sub(r'"requestId":"[^"]+"', '"requestId":"req_…"', done.stdout)
                assert json.loads(masked) == json.loads(expected_refusal.text), snippet


async def _streamed_curl(
    command: str, env: dict[str, str], dev_server: DevServer, http: httpx.AsyncClient
) -> str:
    """Run a streaming curl until a setup created meanwhile shows in its output."""
    baseline = await subscribers(http)
    curl = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        await _until_subscribed(http, baseline=baseline)
        setup = await dev_server.create(http, "Curl Dental")
        await dev_server.place(http, setup, "+14155550177")
        assert curl.stdout is not None
        output = ""
        while "+14155550177" not in output:
            line = await asyncio.wait_for(asyncio.to_thread(curl.stdout.readline), 20)
            assert line, output
            output += line
        return output
    finally:
        os.killpg(curl.pid, signal.SIGTERM)
        curl.communicate()


async def test_the_guides_operations_run(dev_server: DevServer) -> None:
    """Each operation of the guide in its order, on the setup and line the create made:
    rename, suspend, reactivate, release, close all succeed."""
    headers = {"Authorization": f"Bearer {dev_server.key}"}
    ids: dict[str, str] = {}
    async with http_client(dev_server.url, timeout=30) as http:
        for snippet in guide_snippets("graphql"):
            if snippet.text.lstrip().startswith("subscription"):
                async with multipart_subscription(
                    http, snippet.text, key=dev_server.key, variables=ids
                ) as sub:
                    assert sub.response.status_code == 200, snippet
                continue
            answer = await http.post(
                "/graphql", json={"query": snippet.text, "variables": ids}, headers=headers
            )
            assert answer.status_code == 200, (snippet, answer.text)
            assert "errors" not in answer.json(), (snippet, answer.text)
            data = answer.json()["data"]
            for payload in data.values():
                if isinstance(payload, dict) and "userErrors" in payload:
                    assert payload["userErrors"] == [], (snippet, payload)
            if "createImessageSetup" in data:
                setup = data["createImessageSetup"]["setup"]
                ids = {"setupId": setup["id"], "phoneLineId": setup["phoneLines"][0]["id"]}
    closed = await http_get_setup(dev_server, ids["setupId"])
    assert closed["status"] == "CLOSED", closed


async def http_get_setup(dev_server: DevServer, setup_id: str) -> dict[str, Any]:
    async with http_client(dev_server.url, timeout=30) as http:
        answer = await http.post(
            "/graphql",
            json={
                "query": "query($id: ID!) { imessageSetup(id: $id) { status } }",
                "variables": {"id": setup_id},
            },
            headers={"Authorization": f"Bearer {dev_server.key}"},
        )
    setup: dict[str, Any] = answer.json()["data"]["imessageSetup"]
    return setup


def frontend_project(directory: Path) -> Path:
    """An app's directory as the guide's snippets expect it: the schema copied in, and
    tests/js's packages as its own."""
    (directory / "src").mkdir(parents=True)
    shutil.copyfile(SCHEMA, directory / "schema.graphql")
    (directory / "node_modules").symlink_to(NODE_DIR / "node_modules")
    (directory / "package.json").write_text('{"type": "module", "private": true}\n')
    return directory


@pytest.mark.usefixtures("node_modules")
async def test_the_guides_javascript_runs_against_the_server(
    dev_server: DevServer, tmp_path: Path
) -> None:
    project = frontend_project(tmp_path / "app")
    for snippet in guide_snippets("js"):
        (project / snippet.text.splitlines()[0].removeprefix("// ")).write_text(snippet.text)
    result = await asyncio.to_thread(
        run_node,
        NODE_DIR / "readme_snippets.mjs",
        {
            "projectDir": str(project),
            "graphqlUrl": f"{dev_server.url}/graphql",
            "apiKey": dev_server.key,
            "sandboxUrl": f"{dev_server.url}{EMBEDDED_PROVIDER_PATH}",
        },
        NODE_TIMEOUT_S,
    )

    print(json.dumps(result, indent=1))  # shown when an assertion below fails
    assert isinstance(result["list"]["totalCount"], int)
    assert result["invalid"]["setup"] is None
    assert [e["code"] for e in result["invalid"]["userErrors"]] == ["INVALID_INPUT"]
    for name, setup in (("live", result["first"]), ("overHttp", result["fourth"])):
        watched = result[name]
        ours = [u for u in watched["updates"] if u["setup"]["id"] == setup["id"]]
        assert ours[-1]["phoneLine"]["status"] == "ASSIGNED", (name, watched)
        assert ours[-1]["setup"]["status"] == "ACTIVE"
        assert watched["refetched"] == 0
        assert watched["stopped"] is None
    # Resuming replays what came after the last update seen (the sandbox may place other
    # setups' numbers meanwhile), in order, nothing twice.
    resumed = result["resumed"]
    replayed = [u["eventId"] for u in resumed["updates"]]
    assert replayed == sorted(set(replayed))
    assert replayed[0] > result["live"]["lastEventId"]
    assert [u["setup"]["id"] for u in resumed["updates"]].count(result["second"]["id"]) == 1
    assert resumed["refetched"] == 0
    assert result["tooOld"]["refetched"] == 1
    assert result["tooOld"]["stopped"] is None
    assert "4403" in result["refusedWs"]["stopped"]
    assert "401" in result["refusedHttp"]["stopped"]
    for refused in ("refusedWs", "refusedHttp"):
        assert result[refused]["updates"] == []


@pytest.mark.usefixtures("node_modules")
def test_the_guides_codegen_command_types_its_operations(tmp_path: Path) -> None:
    project = frontend_project(tmp_path / "app")
    [config] = guide_snippets("codegen-config")
    (project / "codegen.ts").write_text(config.text)
    documents = "\n".join(snippet.text for snippet in guide_snippets("graphql"))
    (project / "src" / "guide.graphql").write_text(documents)
    (project / "src" / "app.graphql").write_text(APP_DOCUMENTS)
    (project / "src" / "use.ts").write_text(USES_TYPES)
    [command] = guide_snippets("codegen")
    npx = shutil.which("npx", path=str(Path(node_path()).parent)) or "npx"

    generated = subprocess.run(
        [npx, *shlex.split(command.text)[1:]],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
        env={**os.environ, "npm_config_offline": "true"},
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    types = (project / "src" / "gql" / "types.ts").read_text()
    checked = subprocess.run(
        [
            node_path(),
            str(NODE_DIR / "node_modules" / "typescript" / "bin" / "tsc"),
            "--noEmit",
            "--strict",
            # The generated file and its use are checked; the packages' own .d.ts are not ours.
            "--skipLibCheck",
            "--module",
            "esnext",
            "--moduleResolution",
            "bundler",
            "src/use.ts",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "export type UserErrorCode =" in types
    assert "export type CreateAcmeMutation = " in types
    assert "export type LinesSubscription = " in types


# Beyond the guide's own: fragments, enums, every root type, a page of audit events.
APP_DOCUMENTS = """
fragment SetupCard on IMessageSetup {
  id businessName label status phoneLineCount createdAt updatedAt suspendedAt closedAt
}

query SetupPage($first: Int, $after: String, $status: IMessageSetupStatus) {
  imessageSetups(first: $first, after: $after, status: $status) {
    totalCount
    edges { cursor node { ...SetupCard } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}

query SetupDetail($id: ID!) {
  imessageSetup(id: $id) {
    ...SetupCard
    phoneLines(includeReleased: true) {
      id status phoneNumber requestId requestedAt assignedAt releasedAt
    }
  }
  node(id: $id) { id }
}

query Audit($setupId: ID) {
  auditEvents(first: 50, setupId: $setupId) {
    edges { node { id occurredAt action actor setupId phoneLineId requestId changes } }
    pageInfo { hasNextPage endCursor }
  }
}

mutation Suspend($id: ID!) {
  suspendImessageSetup(input: { setupId: $id }) {
    setup { ...SetupCard }
    userErrors { field message code }
  }
}

subscription SetupChanges($after: String) {
  imessageSetupUpdates(after: $after) { eventId change setup { ...SetupCard } }
}
"""

USES_TYPES = """
import type {
  CreateAcmeMutation,
  LinesSubscription,
  SetupPageQuery,
  SuspendMutation,
  UserErrorCode,
} from "./gql/types";

export function firstCode(answer: CreateAcmeMutation): UserErrorCode | undefined {
  return answer.createImessageSetup.userErrors[0]?.code;
}

export function hasPreviousPage(page: SetupPageQuery): boolean {
  return page.imessageSetups.pageInfo.hasPreviousPage;
}

export function liveNumber(update: LinesSubscription): string | null | undefined {
  return update.phoneLineUpdates.phoneLine.phoneNumber;
}

export function suspendedAt(answer: SuspendMutation): string | null | undefined {
  return answer.suspendImessageSetup.setup?.suspendedAt;
}

const wire: UserErrorCode = "PROVIDER_UNAVAILABLE";
export { wire };
"""
