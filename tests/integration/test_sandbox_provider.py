"""The provider simulator over real HTTP: partner API, placements, webhooks and controls.

Signatures are checked with the ``standardwebhooks`` reference library, not with
Blueline's own verifier: these tests pin the sandbox to the standard itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from litestar import Litestar, Request, Response, post
from litestar.params import FromPath
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from blueline_sandbox import create_sandbox_app, sandbox_state
from tests.support.asgi_server import free_port, serve_asgi
from tests.support.clients import http_client

PARTNER_KEY = "test-partner-key"
AUTH = {"Authorization": f"Bearer {PARTNER_KEY}"}


# ---------------------------------------------------------------- webhook receiver


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    """Records deliveries per hook name; can answer 500 a set number of times first."""

    base_url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _deliveries: dict[str, list[Delivery]] = field(default_factory=dict)
    _failures_left: dict[str, int] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"{self.base_url}/hooks/{name}"

    def fail_next(self, name: str, times: int) -> None:
        with self._lock:
            self._failures_left[name] = times

    def record(self, name: str, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            left = self._failures_left.get(name, 0)
            status = 500 if left > 0 else 204
            self._failures_left[name] = max(left - 1, 0)
            self._deliveries.setdefault(name, []).append(Delivery(headers, body, status))
            return status

    def deliveries(self, name: str) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries.get(name, []))


def _receiver_app(receiver: Receiver) -> Litestar:
    @post("/hooks/{name:str}", status_code=204)
    async def hook(name: FromPath[str], request: Request[Any, Any, Any]) -> Response[None]:
        status = receiver.record(name, dict(request.headers), await request.body())
        return Response(None, status_code=status)

    return Litestar(route_handlers=[hook], openapi_config=None)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    recorder = Receiver()
    with serve_asgi(_receiver_app(recorder)) as base_url:
        recorder.base_url = base_url
        yield recorder


# ------------------------------------------------------------------------- helpers


@pytest.fixture
def sandbox_url() -> Iterator[str]:
    """A fresh sandbox: no automatic placement unless a test configures it."""
    app = create_sandbox_app(PARTNER_KEY, auto_assign_after_s=None, webhook_backoff_s=0.05)
    with serve_asgi(app) as base_url:
        yield base_url


@pytest.fixture
async def client(sandbox_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(sandbox_url, timeout=5) as http:
        yield http


async def _configure(client: httpx.AsyncClient, **config: Any) -> dict[str, Any]:
    response = await client.put("/sandbox/config", json=config)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def _create(
    client: httpx.AsyncClient, external_id: str, webhook_url: str = "http://127.0.0.1:9/x"
) -> httpx.Response:
    return await client.post(
        "/v1/subaccounts",
        headers=AUTH,
        json={
            "business_name": "Dental Co",
            "external_id": external_id,
            "webhook_url": webhook_url,
        },
    )


async def _inspect(client: httpx.AsyncClient, external_id: str) -> dict[str, Any]:
    response = await client.get("/sandbox/subaccounts", params={"external_id": external_id})
    assert response.status_code == 200
    data: list[dict[str, Any]] = response.json()["data"]
    assert len(data) == 1
    return data[0]


async def _eventually(check: Callable[[], Any], timeout_s: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _verified(delivery: Delivery, secret: str) -> bool:
    try:
        Webhook(secret).verify(delivery.body, delivery.headers)
    except WebhookVerificationError:
        return False
    return True


# --------------------------------------------------------------------------- tests


async def test_partner_auth_is_required_on_v1(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": PARTNER_KEY}):
        response = await client.get("/v1/subaccounts", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/json")
    assert (await client.get("/v1/subaccounts", headers=AUTH)).status_code == 200
    # Sandbox controls are open.
    assert (await client.get("/sandbox/config")).status_code == 200


async def test_create_returns_subaccount_with_first_pending_line(
    client: httpx.AsyncClient,
) -> None:
    response = await _create(client, "ims_1")
    assert response.status_code == 201
    body = response.json()
    assert body["id"].startswith("sa_")
    assert body["business_name"] == "Dental Co"
    assert body["external_id"] == "ims_1"
    assert body["credentials"]["api_key"]
    assert body["credentials"]["api_secret"]
    assert body["webhook_secret"].startswith("whsec_")
    [line] = body["lines"]
    assert line["request_id"].startswith("lr_")
    assert line == {"request_id": line["request_id"], "status": "pending", "phone_number": None}

    found = await client.get("/v1/subaccounts", params={"external_id": "ims_1"}, headers=AUTH)
    assert found.json() == {"data": [body]}
    missing = await client.get("/v1/subaccounts", params={"external_id": "nope"}, headers=AUTH)
    assert missing.json() == {"data": []}


BAD_CREATE_BODIES: list[Any] = [
    {},
    {"business_name": "A", "external_id": "x"},
    {"business_name": "", "external_id": "x", "webhook_url": "http://h/"},
    {"business_name": "A", "external_id": " ", "webhook_url": "http://h/"},
    {"business_name": "A", "external_id": "x", "webhook_url": "ftp://h/"},
    {"business_name": "A", "external_id": "x", "webhook_url": "not a url"},
    {"business_name": 3, "external_id": "x", "webhook_url": "http://h/"},
    [],
]


async def test_create_rejects_bad_input(client: httpx.AsyncClient) -> None:
    for payload in BAD_CREATE_BODIES:
        response = await client.post("/v1/subaccounts", headers=AUTH, json=payload)
        assert response.status_code == 422, payload
        assert response.json()["status_code"] == 422
    bad_json = await client.post(
        "/v1/subaccounts",
        headers={**AUTH, "content-type": "application/json"},
        content=b"{nope",
    )
    assert bad_json.status_code == 422
    assert (await client.get("/sandbox/subaccounts")).json() == {"data": []}


async def test_create_is_idempotent_on_external_id_even_when_overlapping(
    client: httpx.AsyncClient,
) -> None:
    await _configure(client, latency_ms=100)
    responses = await asyncio.gather(*(_create(client, "ims_same") for _ in range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 19 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert len({json.dumps(r.json(), sort_keys=True) for r in responses}) == 1
    subaccount = await _inspect(client, "ims_same")
    assert len(subaccount["lines"]) == 1

    again = await _create(client, "ims_same")
    assert again.status_code == 200
    assert again.json()["id"] == subaccount["id"]


async def test_line_requests_and_listing(client: httpx.AsyncClient) -> None:
    sub = (await _create(client, "ims_lines")).json()
    created = await client.post(f"/v1/subaccounts/{sub['id']}/lines", headers=AUTH)
    assert created.status_code == 201
    line = created.json()
    assert line["status"] == "pending"
    assert line["request_id"] != sub["lines"][0]["request_id"]
    listed = await client.get(f"/v1/subaccounts/{sub['id']}/lines", headers=AUTH)
    assert listed.status_code == 200
    assert listed.json() == {"data": [sub["lines"][0], line]}
    unknown = await client.get("/v1/subaccounts/sa_unknown/lines", headers=AUTH)
    assert unknown.status_code == 404


async def test_assign_immediately_returns_assigned_line_without_webhook(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    await _configure(client, assign_immediately=True)
    sub = (await _create(client, "ims_now", receiver.url("now"))).json()
    [line] = sub["lines"]
    assert line["status"] == "assigned"
    assert re.fullmatch(r"\+1[2-9][0-9]{2}55501[0-9]{2}", line["phone_number"])
    second = (await client.post(f"/v1/subaccounts/{sub['id']}/lines", headers=AUTH)).json()
    assert second["status"] == "assigned"
    assert second["phone_number"] != line["phone_number"]
    await asyncio.sleep(0.2)
    assert receiver.deliveries("now") == []
    assert (await _inspect(client, "ims_now"))["deliveries"] == []


async def test_auto_assign_delivers_signed_webhook(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    await _configure(client, auto_assign_after_s=0.2)
    sub = (await _create(client, "ims_auto", receiver.url("auto"))).json()
    request_id = sub["lines"][0]["request_id"]
    assert sub["lines"][0]["status"] == "pending"

    [delivery] = await _eventually(lambda: receiver.deliveries("auto"))
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["webhook-id"].startswith("msg_")
    assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 5
    assert _verified(delivery, sub["webhook_secret"])
    assert not _verified(delivery, "whsec_" + "A" * 44)
    event = json.loads(delivery.body)
    lines = (await client.get(f"/v1/subaccounts/{sub['id']}/lines", headers=AUTH)).json()
    [line] = lines["data"]
    assert line["status"] == "assigned"
    assert event == {
        "type": "line.assigned",
        "data": {
            "subaccount_id": sub["id"],
            "request_id": request_id,
            "phone_number": line["phone_number"],
        },
    }
    assert b" " not in delivery.body  # compact JSON

    log = (await _inspect(client, "ims_auto"))["deliveries"]
    assert [(d["webhook_id"], d["attempt"], d["status_code"]) for d in log] == [
        (delivery.headers["webhook-id"], 1, 204)
    ]


async def test_failed_deliveries_are_retried_under_the_same_webhook_id(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.fail_next("retry", 2)
    sub = (await _create(client, "ims_retry", receiver.url("retry"))).json()
    request_id = sub["lines"][0]["request_id"]
    assigned = await client.post(f"/sandbox/line-requests/{request_id}/assign", json={})
    assert assigned.status_code == 200

    deliveries = await _eventually(lambda: (d := receiver.deliveries("retry"))[2:] and d)
    assert [d.answered for d in deliveries] == [500, 500, 204]
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    assert len({d.body for d in deliveries}) == 1
    assert all(_verified(d, sub["webhook_secret"]) for d in deliveries)
    await asyncio.sleep(0.2)
    assert len(receiver.deliveries("retry")) == 3
    log = (await _inspect(client, "ims_retry"))["deliveries"]
    assert [(d["attempt"], d["status_code"]) for d in log] == [(1, 500), (2, 500), (3, 204)]


async def test_connection_errors_are_logged_and_retried(client: httpx.AsyncClient) -> None:
    sub = (await _create(client, "ims_down", f"http://127.0.0.1:{free_port()}/hook")).json()
    request_id = sub["lines"][0]["request_id"]
    await client.post(f"/sandbox/line-requests/{request_id}/assign")

    async def attempts() -> list[dict[str, Any]]:
        log: list[dict[str, Any]] = (await _inspect(client, "ims_down"))["deliveries"]
        return log

    deadline = time.monotonic() + 3
    while len(log := await attempts()) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert [d["attempt"] for d in log][:2] == [1, 2]
    assert all(d["status_code"] is None and d["error"] for d in log)
    assert len({d["webhook_id"] for d in log}) == 1


async def test_manual_assign_rules(client: httpx.AsyncClient, receiver: Receiver) -> None:
    sub = (await _create(client, "ims_assign", receiver.url("assign"))).json()
    first = sub["lines"][0]["request_id"]
    second = (await client.post(f"/v1/subaccounts/{sub['id']}/lines", headers=AUTH)).json()

    number = "+14155550123"
    done = await client.post(
        f"/sandbox/line-requests/{first}/assign", json={"phone_number": number}
    )
    assert done.json() == {"request_id": first, "status": "assigned", "phone_number": number}
    same = await client.post(
        f"/sandbox/line-requests/{first}/assign", json={"phone_number": number}
    )
    assert same.status_code == 200
    other = await client.post(
        f"/sandbox/line-requests/{first}/assign", json={"phone_number": "+14155550124"}
    )
    assert other.status_code == 409
    taken = await client.post(
        f"/sandbox/line-requests/{second['request_id']}/assign", json={"phone_number": number}
    )
    assert taken.status_code == 409
    bad = await client.post(
        f"/sandbox/line-requests/{second['request_id']}/assign", json={"phone_number": "555"}
    )
    assert bad.status_code == 422
    assert (await client.post("/sandbox/line-requests/lr_nope/assign")).status_code == 404

    [delivery] = await _eventually(lambda: receiver.deliveries("assign"))
    assert json.loads(delivery.body)["data"]["phone_number"] == number


async def test_redeliver_resends_the_same_event(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    sub = (await _create(client, "ims_redeliver", receiver.url("redeliver"))).json()
    request_id = sub["lines"][0]["request_id"]
    assert (await client.post(f"/sandbox/line-requests/{request_id}/redeliver")).status_code == 404
    await client.post(f"/sandbox/line-requests/{request_id}/assign")
    [original] = await _eventually(lambda: receiver.deliveries("redeliver"))

    response = await client.post(f"/sandbox/line-requests/{request_id}/redeliver")
    assert response.status_code == 202
    assert response.json()["webhook_id"] == original.headers["webhook-id"]
    deliveries = await _eventually(lambda: (d := receiver.deliveries("redeliver"))[1:] and d)
    assert deliveries[1].headers["webhook-id"] == original.headers["webhook-id"]
    assert deliveries[1].body == original.body
    assert _verified(deliveries[1], sub["webhook_secret"])
    assert (await client.post("/sandbox/line-requests/lr_nope/redeliver")).status_code == 404


async def test_deliver_webhooks_false_loses_the_announcement_for_good(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    await _configure(client, deliver_webhooks=False, auto_assign_after_s=0.1)
    sub = (await _create(client, "ims_quiet", receiver.url("quiet"))).json()
    request_id = sub["lines"][0]["request_id"]

    async def placed() -> bool:
        lines = await client.get(f"/v1/subaccounts/{sub['id']}/lines", headers=AUTH)
        return bool(lines.json()["data"][0]["status"] == "assigned")

    deadline = time.monotonic() + 3
    while not await placed():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await _configure(client)  # webhooks back on: the old placement stays unannounced
    await asyncio.sleep(0.2)
    assert receiver.deliveries("quiet") == []

    await _configure(client, deliver_webhooks=False)
    response = await client.post(f"/sandbox/line-requests/{request_id}/redeliver")
    assert response.status_code == 202
    [delivery] = await _eventually(lambda: receiver.deliveries("quiet"))
    assert delivery.headers["webhook-id"] == response.json()["webhook_id"]
    assert _verified(delivery, sub["webhook_secret"])


async def test_failure_rate_one_answers_503_without_side_effect(client: httpx.AsyncClient) -> None:
    sub = (await _create(client, "ims_existing")).json()
    await _configure(client, failure_rate=1)
    assert (await _create(client, "ims_failed")).status_code == 503
    assert (
        await client.post(f"/v1/subaccounts/{sub['id']}/lines", headers=AUTH)
    ).status_code == 503
    assert (await client.delete(f"/v1/subaccounts/{sub['id']}", headers=AUTH)).status_code == 503
    await _configure(client)
    assert (
        await client.get("/sandbox/subaccounts", params={"external_id": "ims_failed"})
    ).json() == {"data": []}
    state = await _inspect(client, "ims_existing")
    assert state["status"] == "active"
    assert len(state["lines"]) == 1


async def test_latency_delays_the_answer_but_not_the_effect(client: httpx.AsyncClient) -> None:
    await _configure(client, latency_ms=300)
    started = time.monotonic()
    assert (await client.get("/v1/subaccounts", headers=AUTH)).status_code == 200
    assert time.monotonic() - started >= 0.3

    await _configure(client, latency_ms=600)
    with pytest.raises(httpx.ReadTimeout):
        await client.post(
            "/v1/subaccounts",
            headers=AUTH,
            json={
                "business_name": "Slow",
                "external_id": "ims_slow",
                "webhook_url": "http://127.0.0.1:9/x",
            },
            timeout=0.2,
        )
    await _configure(client)
    found = await client.get("/v1/subaccounts", params={"external_id": "ims_slow"}, headers=AUTH)
    assert [s["business_name"] for s in found.json()["data"]] == ["Slow"]


async def test_close_makes_later_calls_404(client: httpx.AsyncClient) -> None:
    sub = (await _create(client, "ims_close")).json()
    path = f"/v1/subaccounts/{sub['id']}"
    request_id = sub["lines"][0]["request_id"]
    closed = await client.delete(path, headers=AUTH)
    assert closed.status_code == 204
    assert closed.content == b""
    after_close = [
        ("GET", f"{path}/lines", None),
        ("POST", f"{path}/lines", None),
        ("DELETE", path, None),
        ("PATCH", path, {"business_name": "Renamed"}),
        ("POST", f"{path}/suspend", None),
        ("POST", f"{path}/reactivate", None),
        ("DELETE", f"{path}/lines/{request_id}", None),
    ]
    for method, url, payload in after_close:
        response = await client.request(method, url, headers=AUTH, json=payload)
        assert response.status_code == 404, (method, url)
    assert (await client.delete("/v1/subaccounts/sa_unknown", headers=AUTH)).status_code == 404
    # The external id still maps to it: a retried create gets the closed one back.
    again = await _create(client, "ims_close")
    assert again.status_code == 200
    assert again.json()["id"] == sub["id"]
    assert again.json()["status"] == "closed"
    assert again.json()["business_name"] == "Dental Co"
    found = await client.get("/v1/subaccounts", params={"external_id": "ims_close"}, headers=AUTH)
    assert found.json() == {"data": [again.json()]}
    assert (await _inspect(client, "ims_close"))["status"] == "closed"


async def test_close_releases_every_line_and_frees_its_number(
    client: httpx.AsyncClient,
) -> None:
    sub = (await _create(client, "ims_close_lines")).json()
    pending = sub["lines"][0]["request_id"]
    placed = (await client.post(f"/v1/subaccounts/{sub['id']}/lines", headers=AUTH)).json()
    number = "+14155550142"
    await client.post(
        f"/sandbox/line-requests/{placed['request_id']}/assign", json={"phone_number": number}
    )
    assert (await client.delete(f"/v1/subaccounts/{sub['id']}", headers=AUTH)).status_code == 204

    [closed] = (
        await client.get("/v1/subaccounts", params={"external_id": "ims_close_lines"}, headers=AUTH)
    ).json()["data"]
    assert closed["status"] == "closed"
    assert closed["lines"] == [
        {"request_id": pending, "status": "released", "phone_number": None},
        {"request_id": placed["request_id"], "status": "released", "phone_number": number},
    ]
    # Freed: another subaccount's line can be given the same number.
    other = (await _create(client, "ims_after_close")).json()
    reused = await client.post(
        f"/sandbox/line-requests/{other['lines'][0]['request_id']}/assign",
        json={"phone_number": number},
    )
    assert reused.status_code == 200


async def test_config_fields_left_out_reset_to_defaults(client: httpx.AsyncClient) -> None:
    defaults = (await client.get("/sandbox/config")).json()
    assert defaults == {
        "assign_immediately": False,
        "auto_assign_after_s": None,  # this app's constructor default
        "failure_rate": 0.0,
        "deliver_webhooks": True,
        "latency_ms": 0.0,
    }
    changed = await _configure(client, failure_rate=0.5, latency_ms=10, auto_assign_after_s=1)
    assert changed == {**defaults, "failure_rate": 0.5, "latency_ms": 10, "auto_assign_after_s": 1}
    assert (await client.get("/sandbox/config")).json() == changed
    assert await _configure(client, deliver_webhooks=False) == {
        **defaults,
        "deliver_webhooks": False,
    }
    assert await _configure(client) == defaults
    empty = await client.put("/sandbox/config", content=b"")
    assert empty.status_code == 200
    assert empty.json() == defaults


BAD_CONFIG_BODIES: list[Any] = [
    {"failure_rate": 1.5},
    {"failure_rate": -0.1},
    {"latency_ms": -1},
    {"auto_assign_after_s": -1},
    {"auto_assign_after_s": "soon"},
    {"assign_immediately": "yes"},
    {"deliver_webhooks": 1},
    {"unknown_field": True},
    [],
]


async def test_config_rejects_bad_values(client: httpx.AsyncClient) -> None:
    await _configure(client, latency_ms=5)
    for payload in BAD_CONFIG_BODIES:
        response = await client.put("/sandbox/config", json=payload)
        assert response.status_code == 422, payload
    assert (await client.get("/sandbox/config")).json()["latency_ms"] == 5


def test_constructor_default_for_auto_assign() -> None:
    app = create_sandbox_app(PARTNER_KEY)
    with serve_asgi(app) as base_url:
        assert httpx.get(f"{base_url}/sandbox/config").json()["auto_assign_after_s"] == 3.0
        assert httpx.put(f"{base_url}/sandbox/config", json={}).json()["auto_assign_after_s"] == 3.0


def test_shutdown_cancels_background_work(receiver: Receiver) -> None:
    app = create_sandbox_app(PARTNER_KEY, auto_assign_after_s=30)
    with serve_asgi(app) as base_url:
        response = httpx.post(
            f"{base_url}/v1/subaccounts",
            headers=AUTH,
            json={"business_name": "A", "external_id": "x", "webhook_url": receiver.url("off")},
        )
        assert response.status_code == 201
        assert sandbox_state(app).pending_tasks == 1
    assert sandbox_state(app).pending_tasks == 0
    assert receiver.deliveries("off") == []


# ------------------------------------------------------------------ lifecycle API


async def _lines(client: httpx.AsyncClient, subaccount_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/subaccounts/{subaccount_id}/lines", headers=AUTH)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def test_new_calls_require_the_partner_key(client: httpx.AsyncClient) -> None:
    sub = (await _create(client, "ims_auth")).json()
    path = f"/v1/subaccounts/{sub['id']}"
    calls = [
        ("PATCH", path, {"business_name": "X"}),
        ("POST", f"{path}/suspend", None),
        ("POST", f"{path}/reactivate", None),
        ("DELETE", f"{path}/lines/{sub['lines'][0]['request_id']}", None),
    ]
    for method, url, payload in calls:
        response = await client.request(method, url, json=payload)
        assert response.status_code == 401, (method, url)
    state = await _inspect(client, "ims_auth")
    assert state["business_name"] == "Dental Co"
    assert state["status"] == "active"
    assert state["lines"][0]["status"] == "pending"


async def test_suspend_and_reactivate_are_idempotent(client: httpx.AsyncClient) -> None:
    sub = (await _create(client, "ims_suspend")).json()
    path = f"/v1/subaccounts/{sub['id']}"
    for _ in range(2):
        suspended = await client.post(f"{path}/suspend", headers=AUTH)
        assert suspended.status_code == 200
        assert suspended.json() == {**sub, "status": "suspended"}
    found = await client.get("/v1/subaccounts", params={"external_id": "ims_suspend"}, headers=AUTH)
    assert found.json()["data"][0]["status"] == "suspended"
    # A suspended subaccount is still readable.
    assert await _lines(client, sub["id"]) == sub["lines"]
    for _ in range(2):
        reactivated = await client.post(f"{path}/reactivate", headers=AUTH)
        assert reactivated.status_code == 200
        assert reactivated.json() == sub
    unknown = await client.post("/v1/subaccounts/sa_unknown/suspend", headers=AUTH)
    assert unknown.status_code == 404


async def test_line_request_on_a_suspended_subaccount_is_409(client: httpx.AsyncClient) -> None:
    sub = (await _create(client, "ims_no_lines")).json()
    path = f"/v1/subaccounts/{sub['id']}"
    await client.post(f"{path}/suspend", headers=AUTH)
    refused = await client.post(f"{path}/lines", headers=AUTH)
    assert refused.status_code == 409
    assert refused.json() == {"error": "subaccount is suspended"}
    assert await _lines(client, sub["id"]) == sub["lines"]

    await client.post(f"{path}/reactivate", headers=AUTH)
    assert (await client.post(f"{path}/lines", headers=AUTH)).status_code == 201
    assert len(await _lines(client, sub["id"])) == 2


async def test_a_suspended_subaccount_can_be_closed(client: httpx.AsyncClient) -> None:
    sub = (await _create(client, "ims_suspend_close")).json()
    path = f"/v1/subaccounts/{sub['id']}"
    await client.post(f"{path}/suspend", headers=AUTH)
    assert (await client.delete(path, headers=AUTH)).status_code == 204
    state = await _inspect(client, "ims_suspend_close")
    assert state["status"] == "closed"
    assert [line["status"] for line in state["lines"]] == ["released"]


async def test_placements_are_still_announced_while_suspended(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    await _configure(client, auto_assign_after_s=0.2)
    sub = (await _create(client, "ims_suspended_auto", receiver.url("suspended"))).json()
    automatic = sub["lines"][0]["request_id"]
    await _configure(client)  # the next line is left to the manual placement below
    manual = (await client.post(f"/v1/subaccounts/{sub['id']}/lines", headers=AUTH)).json()
    suspended = (await client.post(f"/v1/subaccounts/{sub['id']}/suspend", headers=AUTH)).json()
    assert suspended["lines"][0]["status"] == "pending"  # suspended before the placement

    [first] = await _eventually(lambda: receiver.deliveries("suspended"))
    assert _verified(first, sub["webhook_secret"])
    assert json.loads(first.body)["data"]["request_id"] == automatic

    assigned = await client.post(f"/sandbox/line-requests/{manual['request_id']}/assign")
    assert assigned.status_code == 200
    deliveries = await _eventually(lambda: (d := receiver.deliveries("suspended"))[1:] and d)
    assert _verified(deliveries[1], sub["webhook_secret"])
    assert json.loads(deliveries[1].body)["data"]["request_id"] == manual["request_id"]
    assert [line["status"] for line in await _lines(client, sub["id"])] == ["assigned"] * 2
    assert (await _inspect(client, "ims_suspended_auto"))["status"] == "suspended"


async def test_release_cancels_a_pending_request_and_frees_an_assigned_number(
    client: httpx.AsyncClient,
) -> None:
    sub = (await _create(client, "ims_release")).json()
    path = f"/v1/subaccounts/{sub['id']}"
    pending = sub["lines"][0]["request_id"]
    assigned = (await client.post(f"{path}/lines", headers=AUTH)).json()["request_id"]
    kept = (await client.post(f"{path}/lines", headers=AUTH)).json()["request_id"]
    number = "+12125550177"
    await client.post(f"/sandbox/line-requests/{assigned}/assign", json={"phone_number": number})

    for _ in range(2):  # releasing a released line answers the same
        for request_id in (pending, assigned):
            released = await client.delete(f"{path}/lines/{request_id}", headers=AUTH)
            assert released.status_code == 204
            assert released.content == b""
    assert await _lines(client, sub["id"]) == [
        {"request_id": pending, "status": "released", "phone_number": None},
        {"request_id": assigned, "status": "released", "phone_number": number},
        {"request_id": kept, "status": "pending", "phone_number": None},
    ]
    # The number went back to the pool.
    reused = await client.post(
        f"/sandbox/line-requests/{kept}/assign", json={"phone_number": number}
    )
    assert reused.status_code == 200


async def test_release_of_an_unknown_request_is_404(client: httpx.AsyncClient) -> None:
    sub = (await _create(client, "ims_release_404")).json()
    other = (await _create(client, "ims_release_other")).json()
    path = f"/v1/subaccounts/{sub['id']}"
    assert (await client.delete(f"{path}/lines/lr_unknown", headers=AUTH)).status_code == 404
    foreign = other["lines"][0]["request_id"]
    assert (await client.delete(f"{path}/lines/{foreign}", headers=AUTH)).status_code == 404
    assert (await _inspect(client, "ims_release_other"))["lines"][0]["status"] == "pending"
    missing = await client.delete(f"/v1/subaccounts/sa_unknown/lines/{foreign}", headers=AUTH)
    assert missing.status_code == 404


async def test_a_released_line_is_never_placed(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    await _configure(client, auto_assign_after_s=0.2)
    sub = (await _create(client, "ims_never", receiver.url("never"))).json()
    request_id = sub["lines"][0]["request_id"]
    released = await client.delete(f"/v1/subaccounts/{sub['id']}/lines/{request_id}", headers=AUTH)
    assert released.status_code == 204
    await asyncio.sleep(0.4)
    assert await _lines(client, sub["id"]) == [
        {"request_id": request_id, "status": "released", "phone_number": None}
    ]
    assert receiver.deliveries("never") == []

    for payload in ({}, {"phone_number": "+13125550101"}):
        manual = await client.post(f"/sandbox/line-requests/{request_id}/assign", json=payload)
        assert manual.status_code == 409
    assert (await _lines(client, sub["id"]))[0]["status"] == "released"


async def test_rename_changes_the_business_name(client: httpx.AsyncClient) -> None:
    sub = (await _create(client, "ims_rename")).json()
    path = f"/v1/subaccounts/{sub['id']}"
    renamed = await client.patch(path, headers=AUTH, json={"business_name": "Smile Dental"})
    assert renamed.status_code == 200
    assert renamed.json() == {**sub, "business_name": "Smile Dental"}
    longest = "x" * 256
    assert (await client.patch(path, headers=AUTH, json={"business_name": longest})).json()[
        "business_name"
    ] == longest
    await client.post(f"{path}/suspend", headers=AUTH)
    suspended = await client.patch(path, headers=AUTH, json={"business_name": "Paused Co"})
    assert suspended.status_code == 200
    assert suspended.json()["status"] == "suspended"
    unknown = await client.patch(
        "/v1/subaccounts/sa_unknown", headers=AUTH, json={"business_name": "A"}
    )
    assert unknown.status_code == 404


BAD_RENAME_BODIES: list[Any] = [
    {},
    {"business_name": ""},
    {"business_name": "   "},
    {"business_name": "x" * 257},
    {"business_name": None},
    {"business_name": 7},
    {"name": "Smile Dental"},
    [],
]


async def test_rename_rejects_bad_input(client: httpx.AsyncClient) -> None:
    sub = (await _create(client, "ims_rename_bad")).json()
    path = f"/v1/subaccounts/{sub['id']}"
    for payload in BAD_RENAME_BODIES:
        response = await client.patch(path, headers=AUTH, json=payload)
        assert response.status_code == 422, payload
        assert response.json()["status_code"] == 422
    bad_json = await client.patch(
        path, headers={**AUTH, "content-type": "application/json"}, content=b"{nope"
    )
    assert bad_json.status_code == 422
    assert (await _inspect(client, "ims_rename_bad"))["business_name"] == "Dental Co"


async def test_failure_rate_gates_the_lifecycle_calls_before_any_effect(
    client: httpx.AsyncClient,
) -> None:
    sub = (await _create(client, "ims_gate")).json()
    path = f"/v1/subaccounts/{sub['id']}"
    request_id = sub["lines"][0]["request_id"]
    await _configure(client, failure_rate=1)
    calls = [
        ("PATCH", path, {"business_name": "Never"}),
        ("POST", f"{path}/suspend", None),
        ("POST", f"{path}/reactivate", None),
        ("DELETE", f"{path}/lines/{request_id}", None),
        ("GET", f"{path}/lines", None),
        ("GET", "/v1/subaccounts", None),
        ("DELETE", path, None),
    ]
    for method, url, payload in calls:
        response = await client.request(method, url, headers=AUTH, json=payload)
        assert response.status_code == 503, (method, url)
    await _configure(client)
    state = await _inspect(client, "ims_gate")
    assert (state["business_name"], state["status"]) == ("Dental Co", "active")
    assert state["lines"][0]["status"] == "pending"

    # A suspended subaccount's refusal also comes after the gate, not instead of it.
    await client.post(f"{path}/suspend", headers=AUTH)
    await _configure(client, failure_rate=1)
    assert (await client.post(f"{path}/lines", headers=AUTH)).status_code == 503


async def test_latency_delays_lifecycle_answers_but_not_their_effect(
    client: httpx.AsyncClient,
) -> None:
    sub = (await _create(client, "ims_slow_lifecycle")).json()
    path = f"/v1/subaccounts/{sub['id']}"
    request_id = sub["lines"][0]["request_id"]
    await _configure(client, latency_ms=600)
    calls = [
        ("PATCH", path, {"business_name": "Slow Dental"}),
        ("POST", f"{path}/suspend", None),
        ("DELETE", f"{path}/lines/{request_id}", None),
    ]
    for method, url, payload in calls:
        with pytest.raises(httpx.ReadTimeout):
            await client.request(method, url, headers=AUTH, json=payload, timeout=0.2)
    await _configure(client, latency_ms=300)
    started = time.monotonic()
    refused = await client.post(f"{path}/lines", headers=AUTH)
    assert refused.status_code == 409  # refusals wait as long as successes
    assert time.monotonic() - started >= 0.3
    await _configure(client)
    state = await _inspect(client, "ims_slow_lifecycle")
    assert (state["business_name"], state["status"]) == ("Slow Dental", "suspended")
    assert [line["status"] for line in state["lines"]] == ["released"]


# -------------------------------------------------------- upstream-only controls


async def test_sandbox_status_control_changes_status_without_telling_anyone(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    sub = (await _create(client, "ims_forced", receiver.url("forced"))).json()
    control = f"/sandbox/subaccounts/{sub['id']}/status"

    suspended = await client.post(control, json={"status": "suspended"})
    assert suspended.status_code == 200
    view = suspended.json()
    assert view["status"] == "suspended"
    assert view["webhook_url"] == receiver.url("forced")
    assert view["deliveries"] == []
    assert (await client.post(control, json={"status": "suspended"})).status_code == 200
    refused = await client.post(f"/v1/subaccounts/{sub['id']}/lines", headers=AUTH)
    assert refused.json() == {"error": "subaccount is suspended"}

    active = await client.post(control, json={"status": "active"})
    assert active.json()["status"] == "active"
    assert (
        await client.post(f"/v1/subaccounts/{sub['id']}/lines", headers=AUTH)
    ).status_code == 201

    closed = await client.post(control, json={"status": "closed"})
    assert closed.status_code == 200
    assert closed.json()["status"] == "closed"
    assert [line["status"] for line in closed.json()["lines"]] == ["released", "released"]
    assert (await client.get(f"/v1/subaccounts/{sub['id']}/lines", headers=AUTH)).status_code == 404
    assert (await client.post(control, json={"status": "closed"})).status_code == 200
    reopen = await client.post(control, json={"status": "active"})
    assert reopen.status_code == 409

    await asyncio.sleep(0.2)
    assert receiver.deliveries("forced") == []
    assert (await _inspect(client, "ims_forced"))["deliveries"] == []


async def test_sandbox_status_control_frees_numbers_on_close(client: httpx.AsyncClient) -> None:
    sub = (await _create(client, "ims_forced_close")).json()
    number = "+16175550111"
    await client.post(
        f"/sandbox/line-requests/{sub['lines'][0]['request_id']}/assign",
        json={"phone_number": number},
    )
    await client.post(f"/sandbox/subaccounts/{sub['id']}/status", json={"status": "closed"})
    other = (await _create(client, "ims_forced_close_next")).json()
    reused = await client.post(
        f"/sandbox/line-requests/{other['lines'][0]['request_id']}/assign",
        json={"phone_number": number},
    )
    assert reused.status_code == 200


BAD_STATUS_BODIES: list[Any] = [
    {},
    {"status": "paused"},
    {"status": None},
    {"status": "active", "reason": "unknown fields are refused"},
    [],
]


async def test_sandbox_status_control_rejects_bad_input(client: httpx.AsyncClient) -> None:
    sub = (await _create(client, "ims_forced_bad")).json()
    control = f"/sandbox/subaccounts/{sub['id']}/status"
    for payload in BAD_STATUS_BODIES:
        response = await client.post(control, json=payload)
        assert response.status_code == 422, payload
    unknown = await client.post("/sandbox/subaccounts/sa_unknown/status", json={"status": "active"})
    assert unknown.status_code == 404
    assert (await _inspect(client, "ims_forced_bad"))["status"] == "active"


async def test_sandbox_release_control(client: httpx.AsyncClient, receiver: Receiver) -> None:
    await _configure(client, auto_assign_after_s=0.2)
    sub = (await _create(client, "ims_forced_release", receiver.url("forced_release"))).json()
    request_id = sub["lines"][0]["request_id"]
    for _ in range(2):
        released = await client.post(f"/sandbox/line-requests/{request_id}/release")
        assert released.status_code == 200
        assert released.json() == {
            "request_id": request_id,
            "status": "released",
            "phone_number": None,
        }
    await asyncio.sleep(0.4)  # past the automatic placement it would have had
    assert (await _lines(client, sub["id"]))[0]["status"] == "released"
    assert receiver.deliveries("forced_release") == []
    assert (await client.post("/sandbox/line-requests/lr_unknown/release")).status_code == 404


async def test_sandbox_release_control_keeps_the_number_on_show(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    await _configure(client, assign_immediately=True)
    sub = (await _create(client, "ims_forced_release_number", receiver.url("frn"))).json()
    [line] = sub["lines"]
    released = await client.post(f"/sandbox/line-requests/{line['request_id']}/release")
    assert released.json() == {**line, "status": "released"}
    await _configure(client)
    other = (await _create(client, "ims_forced_release_next")).json()
    reused = await client.post(
        f"/sandbox/line-requests/{other['lines'][0]['request_id']}/assign",
        json={"phone_number": line["phone_number"]},
    )
    assert reused.status_code == 200
    await asyncio.sleep(0.2)
    assert receiver.deliveries("frn") == []


async def test_sandbox_line_control_adds_a_request_the_client_never_made(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    sub = (await _create(client, "ims_injected", receiver.url("injected"))).json()
    await _configure(client, auto_assign_after_s=0.2)
    injected = await client.post(f"/sandbox/subaccounts/{sub['id']}/lines")
    assert injected.status_code == 201
    line = injected.json()
    assert line == {"request_id": line["request_id"], "status": "pending", "phone_number": None}
    assert [entry["request_id"] for entry in await _lines(client, sub["id"])] == [
        sub["lines"][0]["request_id"],
        line["request_id"],
    ]
    # It is then placed and announced like any other request.
    [delivery] = await _eventually(lambda: receiver.deliveries("injected"))
    assert json.loads(delivery.body)["data"]["request_id"] == line["request_id"]
    assert _verified(delivery, sub["webhook_secret"])


async def test_sandbox_line_control_works_while_suspended_but_not_closed(
    client: httpx.AsyncClient,
) -> None:
    sub = (await _create(client, "ims_injected_suspended")).json()
    control = f"/sandbox/subaccounts/{sub['id']}/lines"
    await client.post(f"/v1/subaccounts/{sub['id']}/suspend", headers=AUTH)
    assert (await client.post(control)).status_code == 201
    assert len(await _lines(client, sub["id"])) == 2
    await client.delete(f"/v1/subaccounts/{sub['id']}", headers=AUTH)
    assert (await client.post(control)).status_code == 409
    assert len((await _inspect(client, "ims_injected_suspended"))["lines"]) == 2
    assert (await client.post("/sandbox/subaccounts/sa_unknown/lines")).status_code == 404


async def test_sandbox_controls_ignore_failure_rate_and_latency(client: httpx.AsyncClient) -> None:
    sub = (await _create(client, "ims_controls_open")).json()
    await _configure(client, failure_rate=1, latency_ms=2_000)
    started = time.monotonic()
    injected = await client.post(f"/sandbox/subaccounts/{sub['id']}/lines")
    assert injected.status_code == 201
    released = await client.post(f"/sandbox/line-requests/{injected.json()['request_id']}/release")
    assert released.status_code == 200
    forced = await client.post(
        f"/sandbox/subaccounts/{sub['id']}/status", json={"status": "suspended"}
    )
    assert forced.status_code == 200
    assert time.monotonic() - started < 1.5


def test_generated_webhook_secrets_follow_the_standard_format(receiver: Receiver) -> None:
    app = create_sandbox_app(PARTNER_KEY, auto_assign_after_s=None)
    with serve_asgi(app) as base_url:
        secrets_seen = set()
        for n in range(5):
            response = httpx.post(
                f"{base_url}/v1/subaccounts",
                headers=AUTH,
                json={
                    "business_name": "A",
                    "external_id": f"ims_secret_{n}",
                    "webhook_url": receiver.url("unused"),
                },
            )
            secret = response.json()["webhook_secret"]
            assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret)
            assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
            secrets_seen.add(secret)
        assert len(secrets_seen) == 5
