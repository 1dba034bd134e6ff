"""Rate limits on the webhook endpoint: forged deliveries spend their sender's budget,
never a setup's, and a client cannot pick its address by header."""

from __future__ import annotations

import httpx
import pytest

from blueline.settings import Settings
from tests.conftest import Api, make_settings
from tests.integration.test_graphql_setups import create
from tests.support.webhooks import assignment_body, signed_headers, subaccount_of

ATTACKER = "198.51.100.66"
PROVIDER = "203.0.113.10"


@pytest.fixture
def settings(database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient) -> Settings:
    # The test client plays a proxy on loopback that names each delivery's sender.
    return make_settings(
        database_url,
        sandbox_url,
        webhook_rate_per_client_per_s=2,
        webhook_rate_per_setup_per_s=2,
        trusted_proxies="127.0.0.1",
    )


async def _post(api: Api, path: str, body: bytes, headers: dict[str, str], sender: str) -> int:
    response = await api.http.post(
        path, content=body, headers={**headers, "X-Forwarded-For": sender}
    )
    return response.status_code


async def test_forged_deliveries_never_use_up_what_the_providers_need(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    setup_id = (await create(api))["setup"]["id"]
    account = await subaccount_of(sandbox, setup_id)
    path = f"/webhooks/imessage/{setup_id}"
    forged_body = assignment_body(account["id"], "lr_forged", "+14155550123")
    forged = signed_headers("whsec_" + "A" * 44, forged_body)

    attempts = [await _post(api, path, forged_body, forged, ATTACKER) for _ in range(30)]
    assert attempts[0] == 401
    assert attempts.count(429) >= 20  # the attacker's own rejection budget ran out

    request_id = account["lines"][0]["request_id"]
    body = assignment_body(account["id"], request_id, "+14155550177")
    genuine = signed_headers(account["webhook_secret"], body)
    assert await _post(api, path, body, genuine, PROVIDER) == 200


async def test_verified_deliveries_are_limited_per_setup(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    setup_id = (await create(api))["setup"]["id"]
    account = await subaccount_of(sandbox, setup_id)
    body = assignment_body(account["id"], "lr_unknown", "+14155550123")
    path = f"/webhooks/imessage/{setup_id}"
    statuses = [
        await _post(api, path, body, signed_headers(account["webhook_secret"], body), PROVIDER)
        for _ in range(12)
    ]
    assert statuses.count(429) >= 5
    assert set(statuses) == {404, 429}  # verified (an unknown request), then limited


async def test_forwarded_headers_from_untrusted_peers_are_ignored(
    database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient
) -> None:
    from blueline.app import create_app
    from tests.conftest import served_like
    from tests.support.asgi_server import serve_asgi

    settings = make_settings(database_url, sandbox_url, webhook_rate_per_client_per_s=2)
    path = "/webhooks/imessage/ims_01ZZZZZZZZZZZZZZZZZZZZZZZZ"
    body = b"{}"
    with serve_asgi(create_app(settings), port=settings.port, **served_like(settings)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            statuses = [
                (
                    await client.post(
                        path, content=body, headers={"X-Forwarded-For": f"192.0.2.{i}"}
                    )
                ).status_code
                for i in range(30)
            ]
    # Rotating the header does not make each request a new client.
    assert statuses.count(429) >= 20
