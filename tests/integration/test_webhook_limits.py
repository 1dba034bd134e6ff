"""Rate limits on the webhook endpoint treat real and unknown setups alike."""

from __future__ import annotations

import httpx
import pytest

from blueline.settings import Settings
from tests.conftest import Api, make_settings
from tests.integration.test_graphql_setups import create
from tests.support.webhooks import assignment_body, signed_headers, subaccount_of


@pytest.fixture
def settings(database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient) -> Settings:
    return make_settings(
        database_url,
        sandbox_url,
        webhook_rate_per_client_per_s=0,
        webhook_rate_per_setup_per_s=2,
    )


async def _statuses(api: Api, path: str, body: bytes, headers: dict[str, str]) -> list[int]:
    return [
        (await api.http.post(path, content=body, headers=headers)).status_code for _ in range(10)
    ]


async def test_per_setup_limit_answers_429_for_real_and_unknown_setups_alike(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    setup_id = (await create(api))["setup"]["id"]
    account = await subaccount_of(sandbox, setup_id)
    body = assignment_body(account["id"], "lr_unknown", "+14155550123")
    headers = signed_headers("whsec_" + "A" * 44, body)

    real = await _statuses(api, f"/webhooks/imessage/{setup_id}", body, headers)
    unknown = await _statuses(
        api, "/webhooks/imessage/ims_01ZZZZZZZZZZZZZZZZZZZZZZZZ", body, headers
    )

    assert real.count(429) >= 5
    assert unknown.count(429) >= 5
    assert set(real) == set(unknown) == {401, 429}
