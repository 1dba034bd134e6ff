"""The webhook endpoint under attack and under faults: verified, idempotent, forward-only,
and indistinguishable in its failures."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from sqlmodel import col

from blueline.persistence.database import Database
from blueline.persistence.models import Event, PhoneLine, WebhookDelivery
from blueline.webhooks.signature import generate_secret, sign
from tests.conftest import Api
from tests.integration.test_graphql_setups import create
from tests.support.webhooks import assignment_body, signed_headers, subaccount_of

NUMBER = "+14155550123"


class Pending:
    """A setup with one pending line, and what the provider knows about it."""

    def __init__(self, api: Api, setup_id: str, account: dict[str, Any]) -> None:
        self.api = api
        self.setup_id = setup_id
        self.subaccount_id: str = account["id"]
        self.secret: str = account["webhook_secret"]
        self.request_id: str = account["lines"][0]["request_id"]
        self.url = f"/webhooks/imessage/{setup_id}"

    def body(self, number: str = NUMBER, request_id: str | None = None) -> bytes:
        return assignment_body(self.subaccount_id, request_id or self.request_id, number)

    async def post(
        self, body: bytes, headers: dict[str, str], path: str | None = None
    ) -> httpx.Response:
        return await self.api.http.post(path or self.url, content=body, headers=headers)

    async def deliver(self, body: bytes | None = None, **kwargs: Any) -> httpx.Response:
        payload = body if body is not None else self.body()
        return await self.post(payload, signed_headers(self.secret, payload, **kwargs))


@pytest.fixture
async def pending(api: Api, sandbox: httpx.AsyncClient) -> Pending:
    result = await create(api)
    setup_id = result["setup"]["id"]
    return Pending(api, setup_id, await subaccount_of(sandbox, setup_id))


async def line_and_events(database_url: str, setup_id: str) -> tuple[PhoneLine, int]:
    db = Database(database_url)
    try:
        async with db.session() as session:
            line = (
                await session.execute(select(PhoneLine).where(col(PhoneLine.setup_id) == setup_id))
            ).scalar_one()
            assigned_events = (
                await session.execute(
                    select(func.count())
                    .select_from(Event)
                    .where(col(Event.setup_id) == setup_id)
                    .where(col(Event.type) == "LINE_ASSIGNED")
                )
            ).scalar_one()
        return line, int(assigned_events)
    finally:
        await db.dispose()


async def delivery_outcomes(database_url: str, setup_id: str) -> list[str]:
    db = Database(database_url)
    try:
        async with db.session() as session:
            rows = await session.execute(
                select(col(WebhookDelivery.outcome)).where(
                    col(WebhookDelivery.setup_id) == setup_id
                )
            )
            return sorted(rows.scalars())
    finally:
        await db.dispose()


async def test_verified_delivery_assigns_once_and_redelivery_is_acknowledged(
    pending: Pending, database_url: str
) -> None:
    first = await pending.deliver(msg_id="msg_once")
    assert first.status_code == 200
    again = await pending.deliver(msg_id="msg_once")
    assert again.status_code == 200
    same_number_new_id = await pending.deliver(msg_id="msg_other")
    assert same_number_new_id.status_code == 200

    line, events = await line_and_events(database_url, pending.setup_id)
    assert line.status == "ASSIGNED"
    assert line.phone_number == NUMBER
    assert events == 1
    assert await delivery_outcomes(database_url, pending.setup_id) == ["applied", "duplicate"]


async def test_a_different_number_for_an_assigned_line_is_refused_and_recorded(
    pending: Pending, database_url: str
) -> None:
    assert (await pending.deliver()).status_code == 200
    conflict = await pending.deliver(pending.body(number="+14155550199"))
    assert conflict.status_code == 409
    line, events = await line_and_events(database_url, pending.setup_id)
    assert line.phone_number == NUMBER
    assert events == 1
    assert "conflict" in await delivery_outcomes(database_url, pending.setup_id)


async def test_unknown_request_is_recorded_and_refused_without_change(
    pending: Pending, database_url: str
) -> None:
    response = await pending.deliver(pending.body(request_id="lr_unknown"))
    assert response.status_code == 404
    line, events = await line_and_events(database_url, pending.setup_id)
    assert line.status == "PENDING"
    assert events == 0
    assert await delivery_outcomes(database_url, pending.setup_id) == ["unknown_request"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"type": "line.assigned"}',
        b'{"type": "line.assigned", "data": {"subaccount_id": "x", "request_id": "y"}}',
        b'{"type": "line.assigned", "data": {"subaccount_id": "x", "request_id": "y", '
        b'"phone_number": "4155550123"}}',
        b"\xff\xfe",
    ],
)
async def test_verified_but_malformed_body_is_a_400(
    pending: Pending, database_url: str, body: bytes
) -> None:
    response = await pending.deliver(body)
    assert response.status_code == 400
    line, _ = await line_and_events(database_url, pending.setup_id)
    assert line.status == "PENDING"


async def test_assignment_naming_another_subaccount_is_a_400(pending: Pending) -> None:
    body = assignment_body("sa_someone_else", pending.request_id, NUMBER)
    assert (await pending.deliver(body)).status_code == 400


async def test_unknown_event_types_are_acknowledged_and_ignored(
    pending: Pending, database_url: str
) -> None:
    response = await pending.deliver(b'{"type": "subaccount.updated", "data": {}}')
    assert response.status_code == 200
    assert await delivery_outcomes(database_url, pending.setup_id) == ["ignored"]


def _rejections(pending: Pending) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    body = pending.body()
    good = signed_headers(pending.secret, body)
    now = int(time.time())
    # Well past the 300 s window: the request reaches the server a moment after `now`,
    # so a margin of one second would make the future case flaky.
    stale = signed_headers(pending.secret, body, timestamp=now - 310)
    future = signed_headers(pending.secret, body, timestamp=now + 310)
    wrong_secret = signed_headers(generate_secret(), body)
    unknown_path = "/webhooks/imessage/ims_01ZZZZZZZZZZZZZZZZZZZZZZZZ"
    return {
        "unknown setup": (unknown_path, body, good),
        "garbage setup id": ("/webhooks/imessage/" + "x" * 300, body, good),
        "wrong secret": (pending.url, body, wrong_secret),
        "tampered body": (pending.url, body + b" ", good),
        "stale timestamp": (pending.url, body, stale),
        "future timestamp": (pending.url, body, future),
        "missing signature": (
            pending.url,
            body,
            {k: v for k, v in good.items() if k != "webhook-signature"},
        ),
        "no headers": (pending.url, body, {}),
        "bad base64": (pending.url, body, {**good, "webhook-signature": "v1,@@@"}),
        "non-integer timestamp": (pending.url, body, {**good, "webhook-timestamp": "12.5"}),
    }


async def test_every_rejection_gets_a_byte_identical_answer(
    pending: Pending, database_url: str
) -> None:
    answers = {}
    for name, (path, body, headers) in _rejections(pending).items():
        response = await pending.post(body, headers, path=path)
        answers[name] = (
            response.status_code,
            sorted((k, v) for k, v in response.headers.items() if k != "date"),
            response.content,
        )
    reference = answers["unknown setup"]
    assert 400 <= reference[0] < 500
    for name, answer in answers.items():
        assert answer == reference, name
    line, events = await line_and_events(database_url, pending.setup_id)
    assert line.status == "PENDING"
    assert events == 0


async def test_duplicated_signature_headers_are_rejected_like_any_bad_signature(
    pending: Pending,
) -> None:
    body = pending.body()
    good = signed_headers(pending.secret, body)
    raw_headers = [(k.encode(), v.encode()) for k, v in good.items()]
    raw_headers.append((b"webhook-id", b"msg_second"))
    response = await pending.api.http.post(pending.url, content=body, headers=raw_headers)
    assert response.status_code == 401


async def test_any_one_matching_signature_is_enough(pending: Pending) -> None:
    body = pending.body()
    headers = signed_headers(pending.secret, body)
    stale = sign(generate_secret(), headers["webhook-id"], int(headers["webhook-timestamp"]), body)
    headers["webhook-signature"] = f"{stale} v1a,ignored {headers['webhook-signature']}"
    assert (await pending.post(body, headers)).status_code == 200


async def test_oversized_bodies_get_413_before_anything_else(pending: Pending) -> None:
    big = b"{" + b" " * (64 * 1024) + b"}"
    for path in (pending.url, "/webhooks/imessage/ims_unknown"):
        response = await pending.post(big, {"content-type": "application/json"}, path=path)
        assert response.status_code == 413


header_values = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"),
    max_size=200,
).map(str.strip)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.one_of(st.just(None), st.text(min_size=0, max_size=80)),
    headers=st.lists(
        st.tuples(
            st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature", "x-other"]),
            header_values,
        ),
        max_size=6,
    ),
    body=st.binary(max_size=2048),
)
async def test_random_input_never_gives_a_5xx_nor_an_assignment(
    pending: Pending,
    database_url: str,
    path: str | None,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    url = pending.url if path is None else "/webhooks/imessage/" + quote(path, safe="")
    raw = [(name.encode(), value.encode("latin-1")) for name, value in headers]
    response = await pending.api.http.post(url, content=body, headers=raw)
    assert response.status_code < 500
    line, events = await line_and_events(database_url, pending.setup_id)
    assert line.status == "PENDING"
    assert events == 0


TRIGGERS = {
    "postgresql": (
        [
            "CREATE FUNCTION refuse_line_update() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'storage unavailable'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_line_update BEFORE UPDATE ON phone_line "
            "FOR EACH ROW EXECUTE FUNCTION refuse_line_update()",
        ],
        [
            "DROP TRIGGER IF EXISTS refuse_line_update ON phone_line",
            "DROP FUNCTION IF EXISTS refuse_line_update()",
        ],
    ),
    "sqlite": (
        [
            "CREATE TRIGGER refuse_line_update BEFORE UPDATE ON phone_line "
            "BEGIN SELECT RAISE(ABORT, 'storage unavailable'); END"
        ],
        ["DROP TRIGGER IF EXISTS refuse_line_update"],
    ),
}


async def _run_ddl(database_url: str, statements: list[str]) -> None:
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            for statement in statements:
                await session.execute(text(statement))
    finally:
        await db.dispose()


async def test_database_failure_while_applying_is_a_5xx_and_nothing_is_half_applied(
    pending: Pending, database_url: str
) -> None:
    install, remove = TRIGGERS["sqlite" if database_url.startswith("sqlite") else "postgresql"]
    await _run_ddl(database_url, install)
    try:
        failed = await pending.deliver(msg_id="msg_retry")
        assert failed.status_code >= 500
        line, events = await line_and_events(database_url, pending.setup_id)
        assert line.status == "PENDING"
        assert events == 0
        assert await delivery_outcomes(database_url, pending.setup_id) == []
    finally:
        await _run_ddl(database_url, remove)
    retried = await pending.deliver(msg_id="msg_retry")
    assert retried.status_code == 200
    line, events = await line_and_events(database_url, pending.setup_id)
    assert line.status == "ASSIGNED"
    assert events == 1


async def test_fifty_concurrent_deliveries_assign_exactly_once(
    pending: Pending, database_url: str
) -> None:
    body = pending.body()
    same = [signed_headers(pending.secret, body, msg_id="msg_same") for _ in range(25)]
    different = [signed_headers(pending.secret, body) for _ in range(25)]
    responses = await asyncio.gather(*(pending.post(body, h) for h in same + different))
    assert {r.status_code for r in responses} <= {200, 409}
    assert sum(r.status_code == 200 for r in responses) >= 26
    line, events = await line_and_events(database_url, pending.setup_id)
    assert line.status == "ASSIGNED"
    assert events == 1
    outcomes = await delivery_outcomes(database_url, pending.setup_id)
    assert outcomes.count("applied") == 1
    assert len(outcomes) == 26
