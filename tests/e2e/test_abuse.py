"""A hostile client against real ``blueline`` processes: the defences that depend on
how the process is started and configured (addresses, proxies, production mode, several
processes), and what it writes to its log."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import unicodedata
from pathlib import Path
from typing import Any

import httpx
import pytest

from blueline.access import create_api_key, list_api_keys
from blueline.persistence.database import Database
from blueline.settings import SANDBOX_PARTNER_KEY
from tests.conftest import Api, keyring_spec
from tests.e2e.support import (
    BluelineProcess,
    ProcessGroup,
    clean_env,
    printed_api_key,
    run_cli,
    serve_env,
)
from tests.integration.test_graphql_setups import create
from tests.integration.test_subscriptions import UPDATES
from tests.support.asgi_server import free_port
from tests.support.clients import http_client
from tests.support.webhooks import assignment_body, signed_headers, subaccount_of
from tests.support.ws import graphql_ws

pytestmark = pytest.mark.e2e

REDIS_URL = "redis://127.0.0.1:6379/0"
LIST = "{ imessageSetups { totalCount } }"
ATTACKER = "198.51.100.66"
PROVIDER = "203.0.113.10"


async def minted(env: dict[str, str], workspace: str) -> str:
    """A key for ``workspace``, minted on the process's database as the CLI would."""
    db = Database(env["BLUELINE_DATABASE_URL"])
    try:
        return await create_api_key(db, workspace)
    finally:
        await db.dispose()


def sqlite_url(directory: Path) -> str:
    return f"sqlite+aiosqlite:///{directory / 'blueline.db'}"


def serve_on(
    procs: ProcessGroup, workdir: Path, env: dict[str, str], *args: str
) -> BluelineProcess:
    [process] = serve_all(procs, [(workdir, env, list(args))])
    return process


def serve_all(
    procs: ProcessGroup, specs: list[tuple[Path, dict[str, str], list[str]]]
) -> list[BluelineProcess]:
    """``blueline serve`` for each (working directory, environment, extra arguments),
    started together, once every one answers ``/healthz``."""
    processes = []
    for workdir, env, args in specs:
        port = int(env["BLUELINE_PORT"])
        processes.append(
            procs.start(
                "serve", ["serve", "--port", str(port), *args], env=env, cwd=workdir, port=port
            )
        )
    for process in processes:
        process.wait_healthy()
    return processes


def provider_env(
    workdir: Path, sandbox_process: BluelineProcess, port: int, **extra: str | None
) -> dict[str, str]:
    return serve_env(
        database_url=sqlite_url(workdir),
        provider_url=sandbox_process.base_url,
        port=port,
        encryption_keys=keyring_spec(),
        BLUELINE_PORT=str(port),
        BLUELINE_PROVIDER_API_KEY=SANDBOX_PARTNER_KEY,
        **extra,
    )


# ------------------------------------------------- listening beyond loopback, proxies


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_serve_with_the_embedded_sandbox_refuses_to_listen_beyond_loopback(
    procs: ProcessGroup, tmp_path: Path, how: str
) -> None:
    port = str(free_port())
    if how == "flag":
        env = clean_env(BLUELINE_DATABASE_URL=sqlite_url(tmp_path))
        args = ["serve", "--host", "0.0.0.0", "--port", port]
    else:
        env = clean_env(BLUELINE_DATABASE_URL=sqlite_url(tmp_path), BLUELINE_HOST="192.0.2.1")
        args = ["serve", "--port", port]
    process = procs.run(args, env=env, cwd=tmp_path, timeout_s=30)
    assert process.returncode not in (0, None), process.describe()
    stderr = process.stderr()
    assert "refusing to start" in stderr
    assert "embedded sandbox provider" in stderr
    assert "BLUELINE_PROVIDER_URL" in stderr
    assert "API key" not in process.stdout()


@pytest.fixture
def open_server(
    procs: ProcessGroup, sandbox_process: BluelineProcess, tmp_path: Path
) -> tuple[BluelineProcess, str]:
    """``serve --host 0.0.0.0`` with a real provider, behind a proxy on loopback that
    names each request's sender, and small webhook budgets."""
    port = free_port()
    env = provider_env(
        tmp_path,
        sandbox_process,
        port,
        BLUELINE_TRUSTED_PROXIES="127.0.0.1",
        BLUELINE_WEBHOOK_RATE_PER_CLIENT_PER_S="2",
        BLUELINE_WEBHOOK_RATE_PER_SETUP_PER_S="2",
    )
    process = serve_on(procs, tmp_path, env, "--host", "0.0.0.0")
    key = printed_api_key(process.stdout())
    assert key is not None, process.describe()
    return process, key


async def test_forged_webhooks_from_a_forwarded_address_never_starve_the_provider(
    open_server: tuple[BluelineProcess, str], sandbox: httpx.AsyncClient
) -> None:
    process, key = open_server
    api = Api(process.base_url, key)
    try:
        setup_id = (await create(api))["setup"]["id"]
        account = await subaccount_of(sandbox, setup_id)
        path = f"/webhooks/imessage/{setup_id}"
        forged_body = assignment_body(account["id"], "lr_forged", "+14155550123")
        forged = signed_headers("whsec_" + "A" * 44, forged_body)

        async def post(body: bytes, headers: dict[str, str], sender: str) -> int:
            response = await api.http.post(
                path, content=body, headers={**headers, "X-Forwarded-For": sender}
            )
            return response.status_code

        attempts = [await post(forged_body, forged, ATTACKER) for _ in range(30)]
        assert attempts[0] == 401
        assert attempts.count(429) >= 20  # the attacker's own budget ran out

        request_id = account["lines"][0]["request_id"]
        body = assignment_body(account["id"], request_id, "+14155550177")
        genuine = signed_headers(account["webhook_secret"], body)
        assert await post(body, genuine, PROVIDER) == 200
    finally:
        await api.http.aclose()


# -------------------------------------------------------------- the embedded sandbox


async def test_the_embedded_sandbox_answers_this_machine_only(
    procs: ProcessGroup, tmp_path: Path
) -> None:
    port = free_port()
    env = clean_env(
        BLUELINE_DATABASE_URL=sqlite_url(tmp_path),
        BLUELINE_PORT=str(port),
        BLUELINE_RECONCILE_INTERVAL_S="0",
        BLUELINE_SANDBOX_AUTO_ASSIGN_AFTER_S="null",
        BLUELINE_TRUSTED_PROXIES="127.0.0.1",
    )
    process = serve_on(procs, tmp_path, env)
    key = printed_api_key(process.stdout())
    assert key is not None, process.describe()
    api = Api(process.base_url, key)
    inspect = "/_sandbox-provider/sandbox/subaccounts"
    try:
        setup_id = (await create(api))["setup"]["id"]
        local = await api.http.get(inspect)
        assert local.status_code == 200  # Blueline's own calls and this machine's tools
        [account] = [a for a in local.json()["data"] if a["external_id"] == setup_id]
        secret = account["webhook_secret"]

        others = {
            # A client elsewhere, as the trusted proxy reports it.
            "another address": {"X-Forwarded-For": "203.0.113.5"},
            # A page elsewhere whose name now resolves to 127.0.0.1 (DNS rebinding).
            "another name": {"Host": f"attacker.example:{port}"},
            # A proxy on this machine relaying a request (a tunnel): from loopback, but
            # it says it relayed it.
            "relayed": {"X-Forwarded-For": "127.0.0.1"},
            "relayed, Forwarded": {"Forwarded": "for=198.51.100.7"},
        }
        for case, headers in others.items():
            for path in (inspect, "/_sandbox-provider/sandbox/config"):
                refused = await api.http.get(path, headers=headers)
                assert refused.status_code == 404, (case, path)
                assert refused.content == b"", case
                assert secret not in refused.text
    finally:
        await api.http.aclose()


# -------------------------------------------------------- failures in the server's log

FAILURES: dict[str, tuple[str, str, dict[str, str], bytes | None, int, str]] = {
    # case: (method, query string, headers, body, status, code)
    "invalid UTF-8": (
        "POST",
        "",
        {"Content-Type": "application/json"},
        b'{"query": "\xff"}',
        400,
        "BAD_REQUEST",
    ),
    "JSON nested 2,000 deep": (
        "POST",
        "",
        {"Content-Type": "application/json"},
        b'{"query": ' + b"[" * 2000 + b"]" * 2000 + b"}",
        400,
        "BAD_REQUEST",
    ),
    "a JSON array": (
        "POST",
        "",
        {"Content-Type": "application/json"},
        b'[{"query": "{ __typename }"}]',
        400,
        "BAD_REQUEST",
    ),
    "a subscription without the multipart Accept": (
        "POST",
        "",
        {"Content-Type": "application/json"},
        json.dumps({"query": "subscription { phoneLineUpdates { eventId } }"}).encode(),
        400,
        "SUBSCRIPTION_TRANSPORT_REQUIRED",
    ),
    "a wrong content type": (
        "POST",
        "",
        {"Content-Type": "text/plain"},
        b'{"query": "{ __typename }"}',
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    ),
    "GET with variables that are not JSON": (
        "GET",
        "?query=%7B__typename%7D&variables=%7B%22a%22",
        {},
        None,
        400,
        "BAD_REQUEST",
    ),
    "GET with variables that are not an object": (
        "GET",
        "?query=%7B__typename%7D&variables=%5B1%5D",
        {},
        None,
        400,
        "BAD_REQUEST",
    ),
}


async def test_refused_requests_are_4xx_logged_once_with_their_request_id(
    procs: ProcessGroup, sandbox_process: BluelineProcess, tmp_path: Path
) -> None:
    process = serve_on(procs, tmp_path, provider_env(tmp_path, sandbox_process, free_port()))
    key = printed_api_key(process.stdout())
    assert key is not None, process.describe()
    sent: dict[str, str] = {}
    async with http_client(process.base_url, timeout=30) as http:
        for n, (case, (method, query, headers, body, status, code)) in enumerate(FAILURES.items()):
            request_id = f"abuse-{n:02d}-{secrets.token_hex(6)}"
            response = await http.request(
                method,
                "/graphql" + query,
                content=body,
                headers={**headers, "Authorization": f"Bearer {key}", "X-Request-ID": request_id},
            )
            assert response.status_code == status, (case, response.text)
            [error] = response.json()["errors"]
            assert error["extensions"] == {"code": code, "requestId": request_id}, case
            assert error["message"], case
            sent[case] = request_id
        # A request that fails nothing, so the log has been written up to here.
        assert (await http.get("/healthz")).status_code == 200
    await asyncio.sleep(0.3)
    log = process.stderr()
    assert "Traceback" not in log
    assert "error" not in [level.strip() for level in re.findall(r"\[(\w+)\s*\]", log)]
    for case, request_id in sent.items():
        lines = [line for line in log.splitlines() if request_id in line]
        assert len(lines) == 1, (case, lines)
        assert "refused" in lines[0], case


# ------------------------------------------------------------------ workspace names


async def test_workspace_names_follow_the_setup_name_rule(
    procs: ProcessGroup, tmp_path: Path
) -> None:
    env = clean_env(
        BLUELINE_DATABASE_URL=sqlite_url(tmp_path), BLUELINE_ENCRYPTION_KEYS=keyring_spec()
    )
    for name in ("Acme\u200fDental", "\u3164\u3164"):
        refused = run_cli(["api-keys", "create", "--workspace", name], env, tmp_path)
        assert refused.returncode == 1, refused.stdout
        assert "Workspace name must" in refused.stderr
        assert "bl_live_" not in refused.stdout

    decomposed = "Cafe\u0301 \U0001f469\u200d\u2695\ufe0f"
    composed = unicodedata.normalize("NFC", decomposed)
    accepted = run_cli(["api-keys", "create", "--workspace", decomposed], env, tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.strip().splitlines()[-1].startswith("bl_live_")
    db = Database(env["BLUELINE_DATABASE_URL"])
    try:
        workspaces = {key.workspace for key in await list_api_keys(db)}
    finally:
        await db.dispose()
    assert workspaces == {composed}


# ---------------------------------------------------------- revocation, two processes


async def test_a_revoked_key_stops_on_every_process_at_once(
    procs: ProcessGroup,
    pg_url: str,
    sandbox_process: BluelineProcess,
    sandbox: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    keys = keyring_spec()
    specs: list[tuple[Path, dict[str, str], list[str]]] = []
    env: dict[str, str] = {}
    for name in ("first", "second"):
        port = free_port()
        workdir = tmp_path / name
        workdir.mkdir()
        env = serve_env(
            database_url=pg_url,
            provider_url=sandbox_process.base_url,
            port=port,
            encryption_keys=keys,
            redis_url=REDIS_URL,
            BLUELINE_PORT=str(port),
            BLUELINE_PROVIDER_API_KEY=SANDBOX_PARTNER_KEY,
            # Only the announcement on Redis can be this quick: the database poll waits.
            BLUELINE_REVOCATION_POLL_INTERVAL_S="60",
        )
        specs.append((workdir, env, []))
    servers = serve_all(procs, specs)
    key = printed_api_key(servers[0].stdout()) or printed_api_key(servers[1].stdout())
    assert key is not None, servers[0].describe()
    db = Database(pg_url)
    try:
        [key_id] = [k.id for k in await list_api_keys(db) if key.startswith(k.display_prefix)]
    finally:
        await db.dispose()

    async with (
        graphql_ws(servers[0].base_url, key) as first,
        graphql_ws(servers[1].base_url, key) as second,
        httpx.AsyncClient(timeout=10) as http,
    ):
        for ws in (first, second):
            await ws.subscribe(UPDATES)
        for server in servers:
            allowed = await http.post(
                f"{server.base_url}/graphql",
                json={"query": LIST},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert allowed.status_code == 200
        revoked = await asyncio.to_thread(run_cli, ["api-keys", "revoke", key_id], env, tmp_path)
        assert revoked.returncode == 0, revoked.stderr
        closes = await asyncio.gather(first.closed(timeout=1.0), second.closed(timeout=1.0))
        assert [code for code, _ in closes] == [4403, 4403]
        assert all("revoked" in reason for _, reason in closes)
        for server in servers:
            refused = await http.post(
                f"{server.base_url}/graphql",
                json={"query": LIST},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert refused.status_code == 401
            body: dict[str, Any] = refused.json()
            assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
