"""What a frontend on another origin relies on, checked over real sockets on both
databases: CORS and the WebSocket origin rule, subscriptions over HTTP multipart with
the WebSocket's rules, GraphQL-shaped errors, and the schema's promises (Relay page
info, the user error enum, RFC 3339 timestamps in UTC, updates as of their event).

One server pair per database serves the whole module: the default one (compiled reads,
browser origins listed) and one that executes every field through Strawberry, on the
same database. Each test works in a workspace of its own.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from blueline.access import create_api_key, revoke_api_key
from blueline.app import cors_config, create_app
from blueline.persistence.database import Database
from blueline.settings import Settings
from blueline.webhooks.intake import MAX_BODY_BYTES
from tests.conftest import Api, make_settings, served_like
from tests.support.asgi_server import serve_asgi
from tests.support.auth import authenticate
from tests.support.databases import fresh_sqlite, sqlalchemy_url, truncate_pg
from tests.support.multipart import APOLLO_ACCEPT, MultipartSubscription, multipart_subscription
from tests.support.ws import TRANSPORT_WS, graphql_ws

# A Vite dev server and a deployed app; both listed.
APP_ORIGIN = "http://localhost:5173"
DEPLOYED_ORIGIN = "https://app.example.com"
UNLISTED_ORIGINS = [
    "http://localhost:5174",  # another port
    "https://localhost:5173",  # another scheme
    "http://127.0.0.1:5173",  # another host for the same machine
    "https://app.example.com.evil.example",  # the listed one as a prefix
    "https://evil.example",
    "null",  # sandboxed iframes, file:// pages
]

LINES = """
subscription Lines($setupId: ID, $after: String) {
  phoneLineUpdates(setupId: $setupId, after: $after) {
    eventId
    setup { id status phoneLineCount }
    phoneLine { id status phoneNumber requestId }
  }
}"""

CREATE = """
mutation Create($name: String!) {
  createImessageSetup(input: {businessName: $name, label: "Front desk"}) {
    setup { id status phoneLines { id requestId } }
    userErrors { field message code }
  }
}"""


@dataclass
class Contract:
    """The module's servers and the database they share."""

    url: str
    ordinary_url: str
    settings: Settings
    apps: dict[str, Litestar]
    db: Database

    async def workspace(self, *, ordinary: bool = False) -> Api:
        """A key for a new, empty workspace, on the default or the executing server."""
        key = await create_api_key(self.db, f"ws-{uuid.uuid4().hex[:12]}")
        return Api(self.ordinary_url if ordinary else self.url, key)

    async def wait_for_subscribers(self, api: Api, count: int) -> None:
        """Until ``count`` streams of the key's workspace are registered for live events
        (a stream without ``after`` sees only what commits after that)."""
        caller = await authenticate(self.db, f"Bearer {api.key}")
        assert caller is not None
        app = self.apps["ordinary" if api.base_url == self.ordinary_url else "default"]
        hub = app.state.runtime.bus.hub
        for _ in range(500):
            if len(hub._by_workspace.get(caller.workspace_id, ())) >= count:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"fewer than {count} subscribers registered")


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
async def contract(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sandbox_url: str
) -> AsyncIterator[Contract]:
    if request.param == "postgresql":
        dsn = request.getfixturevalue("pg_dsn")
        await truncate_pg(dsn)
        url = sqlalchemy_url(dsn)
    else:
        template: Path = request.getfixturevalue("sqlite_template")
        url = fresh_sqlite(template, tmp_path_factory.mktemp("contract"))
    settings = make_settings(url, sandbox_url, cors_origins=f"{APP_ORIGIN}, {DEPLOYED_ORIGIN}/")
    ordinary_settings = make_settings(url, sandbox_url, compiled_reads=False)
    apps = {"default": create_app(settings), "ordinary": create_app(ordinary_settings)}
    db = Database(url)
    try:
        with (
            serve_asgi(apps["default"], port=settings.port, **served_like(settings)) as base,
            serve_asgi(
                apps["ordinary"], port=ordinary_settings.port, **served_like(ordinary_settings)
            ) as ordinary,
        ):
            yield Contract(base, ordinary, settings, apps, db)
    finally:
        await db.dispose()


@pytest.fixture
async def api(contract: Contract) -> AsyncIterator[Api]:
    api = await contract.workspace()
    yield api
    await api.http.aclose()


@pytest.fixture
async def anonymous(contract: Contract) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=contract.url, timeout=30) as client:
        yield client


async def create(api: Api, name: str = "Acme Dental") -> dict[str, Any]:
    payload: dict[str, Any] = (await api.data(CREATE, {"name": name}))["createImessageSetup"]
    assert payload["userErrors"] == [], payload
    setup: dict[str, Any] = payload["setup"]
    return setup


async def assign(sandbox: httpx.AsyncClient, request_id: str) -> str:
    placed = await sandbox.post(f"/sandbox/line-requests/{request_id}/assign", json={})
    assert placed.status_code == 200, placed.text
    return str(placed.json()["phone_number"])


async def until_active(api: Api, setup_id: str) -> None:
    """Until the placement the sandbox delivers (by webhook, on its own time) is applied."""
    for _ in range(400):
        found = await api.data(
            "query($id: ID!) { imessageSetup(id: $id) { status } }", {"id": setup_id}
        )
        if found["imessageSetup"]["status"] == "ACTIVE":
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{setup_id} did not become ACTIVE")


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://", 1) + "/graphql"


async def handshake(base: str, origin: str | None) -> int:
    """The HTTP status the WebSocket handshake gets (101 when it is accepted)."""
    try:
        async with connect(
            ws_url(base),
            origin=origin,  # type: ignore[arg-type]
            subprotocols=[TRANSPORT_WS],  # type: ignore[list-item]
        ):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


def preflight_headers(origin: str) -> dict[str, str]:
    # What Chromium sends before a POST with a key and a JSON body.
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }


def graphql_error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"errors"}, body
    [error] = body["errors"]
    assert isinstance(error["message"], str), body
    assert error["message"], body
    return dict(error)


# -- browser origins


@pytest.mark.parametrize("origin", [APP_ORIGIN, DEPLOYED_ORIGIN])
async def test_preflight_from_a_listed_origin_is_answered_without_a_key(
    anonymous: httpx.AsyncClient, origin: str
) -> None:
    response = await anonymous.options("/graphql", headers=preflight_headers(origin))

    assert 200 <= response.status_code < 300, response.text
    assert response.headers["access-control-allow-origin"] == origin
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "content-type", "accept"} <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "origin" in response.headers["vary"].lower()
    assert int(response.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in response.headers


async def test_answers_to_a_listed_origin_carry_it_whatever_the_outcome(
    contract: Contract, api: Api
) -> None:
    headers = {"Origin": APP_ORIGIN, "Authorization": f"Bearer {api.key}"}
    ok = await api.http.post("/graphql", json={"query": "{ __typename }"}, headers=headers)
    no_key = await api.http.post(
        "/graphql", json={"query": "{ __typename }"}, headers={"Origin": APP_ORIGIN}
    )
    not_json = await api.http.post(
        "/graphql", content=b"{", headers={**headers, "Content-Type": "application/json"}
    )
    async with multipart_subscription(
        api.http, LINES, key=api.key, headers={"Origin": APP_ORIGIN}
    ) as stream:
        streamed = stream.response

    for response, status in ((ok, 200), (no_key, 401), (not_json, 400), (streamed, 200)):
        assert response.status_code == status, response.text
        assert response.headers["access-control-allow-origin"] == APP_ORIGIN
        assert "origin" in response.headers["vary"].lower()
        # Read by clients to quote a request id and honour Retry-After.
        exposed = response.headers["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed
        assert "retry-after" in exposed


def _as_sent(response: httpx.Response) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers in order and body, with what differs per request made equal."""
    request_id = response.headers.get("x-request-id", "")
    headers = [
        (name.lower(), b"-" if name.lower() in (b"date", b"x-request-id") else value)
        for name, value in response.headers.raw
    ]
    body = (
        response.content.replace(request_id.encode(), b"req_") if request_id else response.content
    )
    headers = [
        (name, str(len(body)).encode() if name == b"content-length" else value)
        for name, value in headers
    ]
    return response.status_code, headers, body


@pytest.mark.parametrize("origin", [None, APP_ORIGIN, "https://evil.example"])
async def test_answers_made_below_litestar_match_litestars_own_byte_for_byte(
    api: Api, origin: str | None
) -> None:
    """``POST /graphql`` and webhook deliveries are answered below Litestar; a query
    whose Accept also lists multipart, and a delivery to the path with a trailing
    slash, still go through Litestar's handlers, so each pair must agree."""
    key = {"Authorization": f"Bearer {api.key}"}
    json_body = {"Content-Type": "application/json"}
    cases: list[tuple[dict[str, str], bytes]] = [
        (key | json_body, b'{"query":"{ imessageSetups(first: 2) { totalCount } }"}'),
        (key | json_body, b'{"query":"{ imessageSetup(id: \\"nope\\") { id } }"}'),
        (key | json_body, b'{"query":"{ nothing }"}'),
        (key | json_body, b"{"),
        (key | json_body, b'{"query":""}'),
        (key | {"Content-Type": "text/plain"}, b'{"query":"{ __typename }"}'),
        (json_body, b'{"query":"{ __typename }"}'),
        ({"Authorization": "Bearer bl_wrong"} | json_body, b'{"query":"{ __typename }"}'),
    ]
    common = {"Origin": origin} if origin else {}
    for headers, content in cases:
        sent = common | headers
        direct = await api.http.post("/graphql", content=content, headers=sent)
        litestar = await api.http.post(
            "/graphql",
            content=content,
            headers=sent | {"Accept": "multipart/mixed;subscriptionSpec=1.0, application/json"},
        )
        assert _as_sent(direct) == _as_sent(litestar), content

    delivery = {"webhook-id": "msg_1", "webhook-timestamp": "1", "webhook-signature": "v1,x"}
    oversized = b"{" + b" " * MAX_BODY_BYTES + b"}"
    for headers, content in (({}, b"{}"), (delivery, b"{}"), (delivery, oversized)):
        sent = common | headers | json_body
        direct = await api.http.post("/webhooks/imessage/set_x", content=content, headers=sent)
        litestar = await api.http.post("/webhooks/imessage/set_x/", content=content, headers=sent)
        assert _as_sent(direct) == _as_sent(litestar), headers


@pytest.mark.parametrize("origin", UNLISTED_ORIGINS)
async def test_every_other_origin_is_refused_the_same_way_on_http_and_websocket(
    contract: Contract, api: Api, anonymous: httpx.AsyncClient, origin: str
) -> None:
    preflight = await anonymous.options("/graphql", headers=preflight_headers(origin))
    posted = await api.http.post(
        "/graphql",
        json={"query": "{ __typename }"},
        headers={"Origin": origin, "Authorization": f"Bearer {api.key}"},
    )

    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code >= 400
    assert "access-control-allow-origin" not in posted.headers
    assert await handshake(contract.url, origin) == 403


async def test_websocket_from_a_listed_origin_is_accepted_and_authenticated(
    contract: Contract, api: Api
) -> None:
    for origin in (APP_ORIGIN, DEPLOYED_ORIGIN):
        async with connect(
            ws_url(contract.url),
            origin=origin,  # type: ignore[arg-type]
            subprotocols=[TRANSPORT_WS],  # type: ignore[list-item]
        ) as ws:
            await ws.send(
                '{"type":"connection_init","payload":{"Authorization":"Bearer ' + api.key + '"}}'
            )
            assert await ws.recv() == '{"type":"connection_ack"}'


async def test_the_socket_path_takes_a_trailing_slash_and_only_json_text(
    contract: Contract, api: Api
) -> None:
    async with connect(
        ws_url(contract.url) + "/",
        subprotocols=[TRANSPORT_WS],  # type: ignore[list-item]
    ) as ws:
        await ws.send(
            '{"type":"connection_init","payload":{"Authorization":"Bearer ' + api.key + '"}}'
        )
        assert await ws.recv() == '{"type":"connection_ack"}'
        await ws.send(b'{"type":"ping"}')
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4400
        assert ws.close_reason == "Messages must be JSON text"


async def test_clients_that_are_not_browsers_need_no_origin(contract: Contract) -> None:
    assert await handshake(contract.url, None) == 101


async def test_a_dev_proxy_that_rewrites_host_works_once_the_app_origin_is_listed(
    contract: Contract, api: Api
) -> None:
    # A dev server's proxy with changeOrigin (Vite, webpack) forwards with Host set to
    # the API's and Origin left as the app's: what reaches the API is a cross-origin
    # request from the app, however same-origin it looked to the browser.
    api_host = contract.url.removeprefix("http://")
    for origin, listed in ((APP_ORIGIN, True), ("http://localhost:5174", False)):
        headers = {"Host": api_host, "Origin": origin, "Authorization": f"Bearer {api.key}"}
        posted = await api.http.post("/graphql", json={"query": "{ __typename }"}, headers=headers)
        assert posted.status_code == 200
        assert posted.headers.get("access-control-allow-origin") == (origin if listed else None)
        assert await handshake(contract.url, origin) == (101 if listed else 403)


async def test_a_page_served_by_the_api_itself_needs_no_listing(contract: Contract) -> None:
    # GraphiQL at /graphql opens its WebSocket from the API's own origin.
    assert await handshake(contract.url, contract.url) == 101


@pytest.mark.parametrize(
    "origins",
    [
        "*",
        "https://app.example.com, *",
        "https://*",
        "https://*.example.com",
        "http://localhost:*",
        "http://local*:5173",
    ],
)
def test_wildcards_are_refused_and_never_reach_the_cors_answers(origins: str) -> None:
    settings = Settings(cors_origins=origins)

    assert any("allowed" in problem for problem in settings.problems()), settings.problems()
    assert "*" not in "".join(settings.allowed_origins)
    config = cors_config(settings)
    assert config is None or not any(
        config.is_origin_allowed(origin) for origin in ("https://evil.example", "http://x:5173")
    )


@pytest.mark.parametrize(
    ("listed", "sent"),
    [
        ("HTTPS://App.Example.COM:443/", "https://app.example.com"),
        ("http://[0:0::1]:5173", "http://[::1]:5173"),
        ("https://bücher.example", "https://xn--bcher-kva.example"),
    ],
)
def test_origins_are_listed_as_browsers_send_them(listed: str, sent: str) -> None:
    settings = Settings(cors_origins=listed)

    assert settings.problems() == []
    assert settings.allowed_origins == (sent,)
    config = cors_config(settings)
    assert config is not None
    assert config.is_origin_allowed(sent)


@pytest.mark.parametrize(
    ("origin", "refused"),
    [
        ("http://app.example.com", True),
        ("http://10.0.0.5:5173", True),
        ("https://app.example.com", False),
        ("http://localhost:5173", False),
        ("http://127.0.0.1:5173", False),
        ("http://[::1]:5173", False),
    ],
)
def test_production_takes_plain_http_origins_only_on_loopback(origin: str, refused: bool) -> None:
    production = Settings(
        env="production",
        cors_origins=origin,
        encryption_keys="k1:" + "A" * 43 + "=",
        provider_url="https://provider.example",
        public_base_url="https://api.example.com",
    )

    problems = production.problems()
    assert bool(problems) is refused, problems
    assert all("https://" in problem for problem in problems)


# -- subscriptions over HTTP multipart


@pytest.mark.parametrize(
    "accept", [None, "application/json", "application/graphql-response+json", "multipart/mixed"]
)
async def test_a_subscription_posted_without_a_stream_is_refused_naming_both_ways(
    api: Api, accept: str | None
) -> None:
    headers = {"Authorization": f"Bearer {api.key}"}
    if accept is not None:
        headers["Accept"] = accept
    response = await api.http.post("/graphql", json={"query": LINES}, headers=headers)

    assert 400 <= response.status_code < 500
    error = graphql_error(response)
    assert error["extensions"]["code"] == "SUBSCRIPTION_TRANSPORT_REQUIRED"
    assert "WebSocket" in error["message"]
    assert "multipart/mixed;subscriptionSpec=1.0" in error["message"]


@pytest.mark.parametrize(
    "accept",
    [
        APOLLO_ACCEPT,
        'multipart/mixed; boundary="graphql"; subscriptionSpec="1.0", application/json',
        "multipart/mixed;subscriptionSpec=1.0",
        # Accept is a list in any order (RFC 9110), and media types are case-insensitive.
        "application/json;q=0.9, multipart/mixed;subscriptionSpec=1.0",
        "application/graphql-response+json, Multipart/Mixed;subscriptionSpec=1.0",
    ],
)
async def test_multipart_is_chosen_wherever_the_client_lists_it(api: Api, accept: str) -> None:
    async with multipart_subscription(api.http, LINES, key=api.key, accept=accept) as stream:
        assert stream.response.status_code == 200
        content_type = stream.response.headers["content-type"]
        assert content_type.startswith("multipart/mixed")
        assert "boundary=graphql" in content_type


@pytest.mark.parametrize("key", [None, "bl_live_not-a-real-key"])
async def test_multipart_needs_the_same_key_as_everything_else(api: Api, key: str | None) -> None:
    async with multipart_subscription(api.http, LINES, key=key) as stream:
        await stream.response.aread()
        response = stream.response

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert graphql_error(response)["extensions"]["code"] == "UNAUTHENTICATED"


async def test_multipart_streams_a_workspace_its_own_updates_only(
    contract: Contract, api: Api, sandbox: httpx.AsyncClient
) -> None:
    other = await contract.workspace()
    theirs = await create(other, "Theirs")
    async with multipart_subscription(api.http, LINES, key=api.key) as mine:
        await contract.wait_for_subscribers(api, 1)
        # Their changes come first: had they reached this stream, they would come first.
        await assign(sandbox, theirs["phoneLines"][0]["requestId"])
        await until_active(other, theirs["id"])
        setup = await create(api)
        requested = (await mine.next_data())["phoneLineUpdates"]
        number = await assign(sandbox, setup["phoneLines"][0]["requestId"])
        assigned = (await mine.next_data())["phoneLineUpdates"]

    assert requested["setup"] == {"id": setup["id"], "status": "PENDING", "phoneLineCount": 1}
    assert requested["phoneLine"]["status"] == "PENDING"
    assert assigned["setup"]["status"] == "ACTIVE"
    assert assigned["phoneLine"] == {
        "id": requested["phoneLine"]["id"],
        "status": "ASSIGNED",
        "phoneNumber": number,
        "requestId": None,
    }
    assert assigned["eventId"] > requested["eventId"]


async def test_multipart_refuses_another_workspaces_setup_like_a_missing_one(
    contract: Contract, api: Api
) -> None:
    theirs = await create(await contract.workspace(), "Theirs")
    errors = []
    for setup_id in (theirs["id"], "ims_01ZZZZZZZZZZZZZZZZZZZZZZZZ"):
        async with multipart_subscription(
            api.http, LINES, {"setupId": setup_id}, key=api.key
        ) as stream:
            errors.append(await stream.expect_errors())
    over_ws = []
    async with graphql_ws(api.base_url, api.key) as ws:
        for setup_id in (theirs["id"], "ims_01ZZZZZZZZZZZZZZZZZZZZZZZZ"):
            over_ws.append(await ws.expect_error(await ws.subscribe(LINES, {"setupId": setup_id})))

    assert errors[0] == errors[1]
    assert [e[0]["message"] for e in errors] == over_ws


async def test_multipart_after_replays_what_was_missed_then_goes_live(
    contract: Contract, api: Api, sandbox: httpx.AsyncClient
) -> None:
    async with multipart_subscription(api.http, LINES, key=api.key) as stream:
        await contract.wait_for_subscribers(api, 1)
        first = await create(api, "First")
        seen = (await stream.next_data())["phoneLineUpdates"]
    second = await create(api, "Second")
    await assign(sandbox, first["phoneLines"][0]["requestId"])

    async with multipart_subscription(
        api.http, LINES, {"after": seen["eventId"]}, key=api.key
    ) as stream:
        replayed = [(await stream.next_data())["phoneLineUpdates"] for _ in range(2)]
        third = await create(api, "Third")
        live = (await stream.next_data())["phoneLineUpdates"]

    assert [(u["setup"]["id"], u["phoneLine"]["status"]) for u in replayed] == [
        (second["id"], "PENDING"),
        (first["id"], "ASSIGNED"),
    ]
    assert live["setup"]["id"] == third["id"]
    ids = [seen["eventId"], *(u["eventId"] for u in replayed), live["eventId"]]
    assert ids == sorted(set(ids))


@pytest.mark.parametrize("after", ["evt_ZZZZZZZZZZZZZ", "evt_0000000000001", "nonsense"])
async def test_multipart_ends_an_unknown_after_with_the_websockets_error(
    api: Api, after: str
) -> None:
    async with multipart_subscription(api.http, LINES, {"after": after}, key=api.key) as stream:
        [error] = await stream.expect_errors()
    async with graphql_ws(api.base_url, api.key) as ws:
        over_ws = await ws.expect_error(await ws.subscribe(LINES, {"after": after}))

    assert "event id" in error["message"]
    assert error["message"] == over_ws


async def test_multipart_applies_the_documents_bounds_like_the_websocket(api: Api) -> None:
    nested = "setup { " * 11 + "id" + " }" * 11
    deep = "subscription { phoneLineUpdates { " + nested + " } }"
    response = await api.http.post(
        "/graphql",
        json={"query": deep},
        headers={"Authorization": f"Bearer {api.key}", "Accept": APOLLO_ACCEPT},
    )
    async with graphql_ws(api.base_url, api.key) as ws:
        over_ws = await ws.expect_error(await ws.subscribe(deep))

    assert response.status_code == 200
    [error] = response.json()["errors"]
    assert error["message"] == over_ws


async def test_revoking_a_key_ends_its_multipart_streams_like_its_sockets(
    contract: Contract, api: Api
) -> None:
    caller = await authenticate(contract.db, f"Bearer {api.key}")
    assert caller is not None
    async with (
        multipart_subscription(api.http, LINES, key=api.key) as stream,
        graphql_ws(api.base_url, api.key) as ws,
    ):
        await ws.subscribe(LINES)
        await contract.wait_for_subscribers(api, 2)
        await revoke_api_key(contract.db, caller.api_key_id)
        [error] = await stream.expect_errors()
        code, reason = await ws.closed()

    assert code == 4403
    assert "revoked" in error["message"]
    assert "revoked" in reason
    assert error["extensions"]["code"] == "UNAUTHENTICATED"


async def test_multipart_streams_count_toward_the_connection_caps(contract: Contract) -> None:
    settings = make_settings(
        contract.settings.database_url.get_secret_value(),
        contract.settings.provider_url or "",
        ws_max_connections_per_client=2,
    )
    key = await create_api_key(contract.db, f"ws-{uuid.uuid4().hex[:12]}")
    with serve_asgi(create_app(settings), port=settings.port, **served_like(settings)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client, graphql_ws(url, key):
            async with multipart_subscription(client, LINES, key=key) as first:
                assert first.response.status_code == 200
                async with multipart_subscription(client, LINES, key=key) as refused:
                    assert refused.response.status_code == 503
                    await refused.response.aread()
                async with connect(
                    ws_url(url),
                    subprotocols=[TRANSPORT_WS],  # type: ignore[list-item]
                ) as third:
                    await asyncio.wait_for(third.wait_closed(), 10)
            # A stream that ends gives its place back.
            for _ in range(100):
                async with multipart_subscription(client, LINES, key=key) as again:
                    if again.response.status_code == 200:
                        break
                await asyncio.sleep(0.05)

    assert refused.response.headers["retry-after"]
    assert graphql_error(refused.response)["extensions"]["code"] == "UNAVAILABLE"
    assert third.close_code == 1013
    assert again.response.status_code == 200


async def test_stopping_the_server_completes_multipart_streams_for_a_resume(
    contract: Contract,
) -> None:
    settings = make_settings(
        contract.settings.database_url.get_secret_value(), contract.settings.provider_url or ""
    )
    key = await create_api_key(contract.db, f"ws-{uuid.uuid4().hex[:12]}")
    options = {**served_like(settings), "timeout_graceful_shutdown": 1}
    server = serve_asgi(create_app(settings), port=settings.port, **options)
    url = server.__enter__()
    stopping = None
    try:
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as client,
            multipart_subscription(client, LINES, key=key) as stream,
        ):
            assert stream.response.status_code == 200
            stopping = asyncio.get_running_loop().run_in_executor(
                None, server.__exit__, None, None, None
            )
            try:
                errors = await stream.expect_errors(timeout=30)
            except (httpx.HTTPError, AssertionError) as cut:
                raise AssertionError(f"the stream was cut off: {cut!r}") from None
    finally:
        if stopping is None:
            server.__exit__(None, None, None)
        else:
            await stopping

    assert "after" in errors[0]["message"]


# -- request-level errors


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer bl_live_not-a-real-key", "Basic dXNlcjpwYXNz"]
)
async def test_a_missing_or_bad_key_is_a_401_in_graphql_shape(
    anonymous: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await anonymous.post("/graphql", json={"query": "{ __typename }"}, headers=headers)

    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["www-authenticate"] == "Bearer"
    error = graphql_error(response)
    assert error["extensions"]["code"] == "UNAUTHENTICATED"
    assert "Authorization: Bearer" in error["message"]
    assert error["extensions"]["requestId"] == response.headers["x-request-id"]


# -- the schema


PAGE = """
query Page($after: String) {
  imessageSetups(first: 2, after: $after) {
    edges { cursor node { id } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}"""

AUDIT_PAGE = """
query Audit($after: String) {
  auditEvents(first: 2, after: $after) {
    edges { cursor node { id } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}"""


@pytest.mark.parametrize("ordinary", [False, True], ids=["compiled", "executed"])
async def test_page_info_is_right_on_every_page_paging_forward(
    contract: Contract, ordinary: bool
) -> None:
    api = await contract.workspace(ordinary=ordinary)
    for n in range(5):
        await create(api, f"Clinic {n}")
    # Five setups; each create is audited twice (the setup and its line request).
    for query, root, count in ((PAGE, "imessageSetups", 5), (AUDIT_PAGE, "auditEvents", 10)):
        after = None
        pages: list[dict[str, Any]] = []
        while len(pages) <= count:
            connection = (await api.data(query, {"after": after}))[root]
            pages.append(connection)
            if not connection["pageInfo"]["hasNextPage"]:
                break
            after = connection["pageInfo"]["endCursor"]
        ids = [edge["node"]["id"] for page in pages for edge in page["edges"]]
        assert len(ids) == len(set(ids)) == count
        for number, page in enumerate(pages):
            info, cursors = page["pageInfo"], [edge["cursor"] for edge in page["edges"]]
            assert info["hasPreviousPage"] is (number > 0), (root, number, info)
            assert info["startCursor"] == cursors[0]
            assert info["endCursor"] == cursors[-1]
            assert info["hasNextPage"] is (number < len(pages) - 1)
    empty = (await (await contract.workspace(ordinary=ordinary)).data(PAGE))["imessageSetups"]
    assert empty["pageInfo"] == {
        "hasNextPage": False,
        "hasPreviousPage": False,
        "startCursor": None,
        "endCursor": None,
    }


async def test_user_error_codes_are_an_enum_with_the_same_wire_values(api: Api) -> None:
    bad = await api.data(
        'mutation { createImessageSetup(input: {businessName: " ", label: "Desk"}) '
        "{ userErrors { field code } } }"
    )
    missing = await api.data(
        'mutation { suspendImessageSetup(input: {setupId: "ims_01ZZZZZZZZZZZZZZZZZZZZZZZZ"}) '
        "{ userErrors { code } } }"
    )
    schema = await api.data(
        '{ t: __type(name: "UserError") { fields { name type { kind ofType { kind name } } } }'
        ' e: __type(name: "UserErrorCode") { kind enumValues { name } } }'
    )

    assert bad["createImessageSetup"]["userErrors"] == [
        {"field": ["input", "businessName"], "code": "INVALID_INPUT"}
    ]
    assert missing["suspendImessageSetup"]["userErrors"] == [{"code": "NOT_FOUND"}]
    [code] = [f for f in schema["t"]["fields"] if f["name"] == "code"]
    assert code["type"] == {"kind": "NON_NULL", "ofType": {"kind": "ENUM", "name": "UserErrorCode"}}
    assert schema["e"]["kind"] == "ENUM"
    assert {"INVALID_INPUT", "NOT_FOUND", "IDEMPOTENCY_KEY_REUSED", "PROVIDER_UNAVAILABLE"} <= {
        v["name"] for v in schema["e"]["enumValues"]
    }


async def test_date_time_is_documented_as_rfc_3339(api: Api) -> None:
    scalar = (await api.data('{ __type(name: "DateTime") { kind specifiedByURL } }'))["__type"]

    assert scalar == {
        "kind": "SCALAR",
        "specifiedByURL": "https://datatracker.ietf.org/doc/html/rfc3339",
    }


RFC_3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")
SETUP_TIMES = "createdAt updatedAt suspendedAt closedAt"
LINE_TIMES = "requestedAt assignedAt releasedAt"
SETUP_FIELDS = (
    f"id status {SETUP_TIMES} "
    f"phoneLines(includeReleased: true) {{ id status requestId {LINE_TIMES} }}"
)
TIMES = {*SETUP_TIMES.split(), *LINE_TIMES.split(), "occurredAt"}


def times_in(value: Any, found: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Every value of a DateTime field anywhere in a response, by field name."""
    if isinstance(value, dict):
        for name, child in value.items():
            if name in TIMES:
                found.setdefault(name, []).append(child)
            else:
                times_in(child, found)
    elif isinstance(value, list):
        for child in value:
            times_in(child, found)
    return found


def mutation(name: str, input_field: str, selection: str) -> str:
    return (
        f"mutation($id: ID!) {{ {name}(input: {{{input_field}: $id}}) "
        f"{{ {selection} userErrors {{ code }} }} }}"
    )


SETUP_UPDATES = (
    "subscription($after: String) { imessageSetupUpdates(after: $after) { eventId change "
    f"setup {{ {SETUP_FIELDS} }} }} }}"
)
LINE_UPDATES = (
    "subscription($after: String) { phoneLineUpdates(after: $after) { eventId "
    f"setup {{ {SETUP_FIELDS} }} phoneLine {{ id {LINE_TIMES} }} }} }}"
)


@pytest.mark.parametrize("ordinary", [False, True], ids=["compiled", "executed"])
async def test_every_date_time_on_every_path_is_rfc_3339_in_utc(
    contract: Contract, sandbox: httpx.AsyncClient, ordinary: bool
) -> None:
    api = await contract.workspace(ordinary=ordinary)
    answers: list[Any] = []
    async with (
        multipart_subscription(api.http, SETUP_UPDATES, key=api.key) as over_http,
        graphql_ws(api.base_url, api.key) as ws,
    ):
        over_ws = await ws.subscribe(SETUP_UPDATES)
        await contract.wait_for_subscribers(api, 2)

        created = await api.data(
            'mutation { createImessageSetup(input: {businessName: "Acme", label: "Desk"}) '
            f"{{ setup {{ {SETUP_FIELDS} }} userErrors {{ code }} }} }}"
        )
        answers.append(created)
        setup = created["createImessageSetup"]["setup"]
        await assign(sandbox, setup["phoneLines"][0]["requestId"])
        await until_active(api, setup["id"])
        line = "phoneLine { id requestId " + LINE_TIMES + " }"
        extra = await api.data(
            mutation("requestImessagePhoneLine", "setupId", line), {"id": setup["id"]}
        )
        answers.append(extra)
        extra_id = extra["requestImessagePhoneLine"]["phoneLine"]["id"]
        answers.append(
            await api.data(
                mutation("releaseImessagePhoneLine", "phoneLineId", line), {"id": extra_id}
            )
        )
        for name in ("suspendImessageSetup", "reactivateImessageSetup", "closeImessageSetup"):
            answers.append(
                await api.data(
                    mutation(name, "setupId", f"setup {{ {SETUP_FIELDS} }}"), {"id": setup["id"]}
                )
            )
        # created, line added, assigned, line added, released, suspended, reactivated,
        # closed (with the assigned line released)
        streamed = [await over_http.next_data() for _ in range(8)]
        socketed = [await ws.next_data(over_ws) for _ in range(8)]
        answers += streamed + socketed

    first_event = streamed[0]["imessageSetupUpdates"]["eventId"]
    async with multipart_subscription(
        api.http, LINE_UPDATES, {"after": first_event}, key=api.key
    ) as replay:
        answers += [await replay.next_data() for _ in range(4)]
    everything = (
        "id status " + SETUP_TIMES + " phoneLines(includeReleased: true) { " + LINE_TIMES + " }"
    )
    answers.append(
        await api.data(f"{{ imessageSetups {{ edges {{ node {{ {everything} }} }} }} }}")
    )
    answers.append(
        await api.data(
            "query($id: ID!) { node(id: $id) { ... on IMessageSetup { " + everything + " } } }",
            {"id": setup["id"]},
        )
    )
    # Introspection alongside: the whole document is executed, not compiled.
    answers.append(
        await api.data(
            "query($id: ID!) { __schema { queryType { name } } "
            f"imessageSetup(id: $id) {{ {everything} }} }}",
            {"id": setup["id"]},
        )
    )
    answers.append(await api.data("{ auditEvents(first: 50) { edges { node { occurredAt } } } }"))

    found = times_in(answers, {})
    assert set(found) == TIMES
    for name, values in found.items():
        present = [v for v in values if v is not None]
        assert present, f"{name} was never set"
        bad = [v for v in present if not RFC_3339_UTC.fullmatch(v)]
        assert not bad, (name, bad)


async def test_a_replayed_update_shows_the_setup_as_it_was_at_that_event(
    contract: Contract, sandbox: httpx.AsyncClient
) -> None:
    for ordinary in (False, True):
        api = await contract.workspace(ordinary=ordinary)
        async with multipart_subscription(api.http, SETUP_UPDATES, key=api.key) as stream:
            await contract.wait_for_subscribers(api, 1)
            setup = await create(api)
            created = (await stream.next_data())["imessageSetupUpdates"]
        await assign(sandbox, setup["phoneLines"][0]["requestId"])
        await until_active(api, setup["id"])
        for name in ("suspendImessageSetup", "reactivateImessageSetup"):
            await api.data(mutation(name, "setupId", "setup { id }"), {"id": setup["id"]})

        async with multipart_subscription(
            api.http, SETUP_UPDATES, {"after": created["eventId"]}, key=api.key
        ) as stream:
            replayed = [await _setup_update(stream) for _ in range(4)]

        assert created["setup"]["status"] == "PENDING"
        assert [(u["change"], u["setup"]["status"]) for u in replayed] == [
            ("LINE_ADDED", "PENDING"),
            ("LINE_ASSIGNED", "ACTIVE"),
            ("SUSPENDED", "SUSPENDED"),
            ("REACTIVATED", "ACTIVE"),
        ], ordinary
        assert replayed[0]["setup"]["phoneLines"][0]["assignedAt"] is None
        assert replayed[1]["setup"]["phoneLines"][0]["assignedAt"] is not None
        assert replayed[1]["setup"]["suspendedAt"] is None
        assert replayed[2]["setup"]["suspendedAt"] is not None
        assert replayed[3]["setup"]["suspendedAt"] is None


async def _setup_update(stream: MultipartSubscription) -> dict[str, Any]:
    update: dict[str, Any] = (await stream.next_data())["imessageSetupUpdates"]
    return update
