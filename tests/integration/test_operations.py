"""Operating the API: production mode, per-key limits, revocation, masked errors,
health and metrics."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from sqlalchemy import text

from blueline.access import create_api_key, list_api_keys, revoke_api_key
from blueline.persistence.database import Database
from blueline.settings import Settings
from tests.conftest import Api, make_settings
from tests.integration.test_graphql_setups import create
from tests.integration.test_subscriptions import UPDATES
from tests.support.waiting import eventually
from tests.support.ws import graphql_ws

LIST = "{ imessageSetups { totalCount } }"


async def _key_id(database_url: str) -> str:
    db = Database(database_url)
    try:
        [key] = await list_api_keys(db, "clinic-a")
        return key.id
    finally:
        await db.dispose()


async def _refused_within(api: Api, seconds: float) -> float:
    """How long after now HTTP requests with the key start answering 401."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < seconds:
        response = await api.http.post(
            "/graphql", json={"query": LIST}, headers={"Authorization": f"Bearer {api.key}"}
        )
        if response.status_code == 401:
            assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
            return loop.time() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"the revoked key still worked after {seconds} s")


async def test_revoked_key_is_refused_within_a_second_over_http_and_its_socket_closed(
    api: Api, server: tuple[str, Settings]
) -> None:
    _, settings = server
    assert "errors" not in await api.graphql(LIST)
    async with graphql_ws(api.base_url, api.key) as ws:
        await ws.subscribe(UPDATES)
        db = Database(settings.database_url.get_secret_value())
        try:
            await revoke_api_key(db, await _key_id(settings.database_url.get_secret_value()))
        finally:
            await db.dispose()
        assert await _refused_within(api, 1.0) < 1.0
        code, reason = await ws.closed(timeout=1.0)
        assert code == 4403
        assert "revoked" in reason


async def test_keys_record_when_they_were_last_used(api: Api, server: tuple[str, Settings]) -> None:
    _, settings = server
    await api.data(LIST)
    db = Database(settings.database_url.get_secret_value())
    try:
        # Recorded off the request path, so after the answer, not before it.
        [key] = await eventually(
            lambda: list_api_keys(db, "clinic-a"),
            lambda keys: keys[0].last_used_at is not None,
            what="the key's last use recorded",
        )
    finally:
        await db.dispose()
    assert key.revoked_at is None


async def test_unexpected_errors_are_masked_and_logged_with_the_request_id(
    api: Api, server: tuple[str, Settings], caplog: pytest.LogCaptureFixture
) -> None:
    _, settings = server
    await create(api)
    db = Database(settings.database_url.get_secret_value())
    try:
        async with db.transaction() as session:
            await session.execute(text("ALTER TABLE phone_line RENAME TO phone_line_gone"))
        with caplog.at_level(logging.ERROR, logger="blueline.graphql"):
            body = await api.graphql("{ imessageSetups { edges { node { id phoneLineCount } } } }")
        async with db.transaction() as session:
            await session.execute(text("ALTER TABLE phone_line_gone RENAME TO phone_line"))
    finally:
        await db.dispose()
    [error] = body["errors"]
    assert error["message"].startswith("Unexpected error")
    assert "phone_line" not in error["message"]
    request_id = error["extensions"]["requestId"]
    assert request_id
    assert any(
        request_id in record.getMessage() or getattr(record, "request_id", None) == request_id
        for record in caplog.records
    )


async def test_health_readiness_and_metrics(api: Api) -> None:
    assert (await api.http.get("/healthz")).json() == {"status": "ok"}
    ready = await api.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"database": "ok", "event_bus": "ok"}
    await api.data("query ListForMetrics " + LIST)
    metrics = await api.http.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text_body = metrics.text
    assert 'blueline_graphql_requests_total{operation="ListForMetrics",outcome="ok"}' in text_body
    for name in (
        "blueline_webhook_deliveries_total",
        "blueline_provider_call_seconds",
        "blueline_outbox_publish_delay_seconds",
        "blueline_subscribers",
    ):
        assert name in text_body


async def test_responses_carry_a_request_id(api: Api) -> None:
    response = await api.http.post(
        "/graphql",
        json={"query": LIST},
        headers={"Authorization": f"Bearer {api.key}", "X-Request-ID": "trace-0123456789"},
    )
    assert response.headers["x-request-id"] == "trace-0123456789"
    generated = await api.http.get("/healthz")
    assert generated.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize("path", ["/webhooks/imessage/ims_x", "//webhooks/imessage/ims_x"])
async def test_webhook_answers_carry_no_request_id_whatever_the_slashes(
    api: Api, path: str
) -> None:
    """Every rejection is the same bytes: a per-request header would tell them apart."""
    url = httpx.URL(api.base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {url.host}\r\nX-Request-ID: chosen-by-client\r\n"
            "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n"
            "\r\n{}".encode()
        )
        answer = (await reader.read()).lower()
    finally:
        writer.close()
    assert answer.startswith(b"http/1.1 401"), answer
    assert b"x-request-id" not in answer


class TestProductionMode:
    @pytest.fixture
    def settings(self, database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient) -> Settings:
        return make_settings(database_url, sandbox_url, env="production")

    async def test_no_graphiql_no_get_queries_no_introspection(self, api: Api) -> None:
        page = await api.http.get("/graphql", headers={"Accept": "text/html"})
        assert page.status_code >= 400
        assert "graphiql" not in page.text.lower()
        via_get = await api.http.get(
            "/graphql", params={"query": LIST}, headers={"Authorization": f"Bearer {api.key}"}
        )
        assert via_get.status_code >= 400
        body = await api.graphql("{ __schema { types { name } } }")
        assert body.get("errors")
        typo = await api.graphql("{ imessageSetupz { totalCount } }")
        assert "Did you mean" not in typo["errors"][0]["message"]
        assert "errors" not in await api.graphql(LIST)


class TestPerKeyRateLimit:
    @pytest.fixture
    def settings(self, database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient) -> Settings:
        return make_settings(database_url, sandbox_url, graphql_rate_per_key_per_s=1)

    async def test_a_key_over_its_rate_gets_429(self, api: Api) -> None:
        statuses = [
            (
                await api.http.post(
                    "/graphql",
                    json={"query": LIST},
                    headers={"Authorization": f"Bearer {api.key}"},
                )
            ).status_code
            for _ in range(6)
        ]
        assert statuses[:2] == [200, 200]
        assert 429 in statuses


class TestRevocationDuringAStream:
    async def test_a_running_subscription_delivers_nothing_once_its_key_is_revoked(
        self, api: Api, server: tuple[str, Settings]
    ) -> None:
        _, settings = server
        async with graphql_ws(api.base_url, api.key) as ws:
            op = await ws.subscribe(UPDATES)
            await asyncio.sleep(0.2)
            await create(api)
            assert (await ws.next_data(op))["phoneLineUpdates"]["phoneLine"]["status"]
            db = Database(settings.database_url.get_secret_value())
            try:
                await revoke_api_key(db, await _key_id(settings.database_url.get_secret_value()))
                await create_with_other_key(db, api)
            finally:
                await db.dispose()
            code, _reason = await ws.closed(timeout=1.5)
            assert code == 4403


async def create_with_other_key(db: Database, api: Api) -> None:
    """Another key of the same workspace makes a change the revoked stream would see."""
    other = await create_api_key(db, "clinic-a")
    body = await api.graphql(
        'mutation { createImessageSetup(input: {businessName: "B", label: "L"}) '
        "{ userErrors { code } } }",
        key=other,
    )
    assert "errors" not in body
