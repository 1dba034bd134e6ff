"""Live line updates over real WebSockets, on the in-process bus and on Redis."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from blueline.access import create_api_key
from blueline.persistence.database import Database
from blueline.persistence.eventlog import parse_event_id
from blueline.settings import Settings
from tests.conftest import Api, make_settings
from tests.integration.test_graphql_setups import create
from tests.support.ws import LEGACY_WS, TRANSPORT_WS, GraphQLSocket, graphql_ws

UPDATES = """
subscription Updates($setupId: ID, $after: String) {
  phoneLineUpdates(setupId: $setupId, after: $after) {
    eventId
    setup { id status phoneLineCount }
    phoneLine { id status phoneNumber requestId }
  }
}"""

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["memory", "redis"])
def settings(
    request: pytest.FixtureRequest, database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient
) -> Settings:
    redis = REDIS_URL if request.param == "redis" else None
    return make_settings(database_url, sandbox_url, redis_url=redis)


async def assign(sandbox: httpx.AsyncClient, request_id: str) -> str:
    placed = await sandbox.post(f"/sandbox/line-requests/{request_id}/assign", json={})
    assert placed.status_code == 200, placed.text
    return str(placed.json()["phone_number"])


def update_of(data: dict[str, Any]) -> dict[str, Any]:
    update: dict[str, Any] = data["phoneLineUpdates"]
    return update


async def test_subscriber_sees_the_line_requested_then_going_live(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    async with graphql_ws(api.base_url, api.key) as ws:
        op = await ws.subscribe(UPDATES)
        await asyncio.sleep(0.2)
        setup = (await create(api))["setup"]
        requested = update_of(await ws.next_data(op))
        assert requested["setup"]["id"] == setup["id"]
        assert requested["phoneLine"]["status"] == "PENDING"
        assert requested["setup"]["status"] == "PENDING"

        number = await assign(sandbox, requested["phoneLine"]["requestId"])
        live = update_of(await ws.next_data(op))
        assert live["phoneLine"]["id"] == requested["phoneLine"]["id"]
        assert live["phoneLine"]["status"] == "ASSIGNED"
        assert live["phoneLine"]["phoneNumber"] == number
        assert live["setup"]["status"] == "ACTIVE"
        assert live["eventId"] > requested["eventId"]


async def test_redelivered_webhooks_produce_no_second_event(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    setup = (await create(api))["setup"]
    request_id = setup["phoneLines"][0]["requestId"]
    async with graphql_ws(api.base_url, api.key) as ws:
        op = await ws.subscribe(UPDATES, {"setupId": setup["id"]})
        await asyncio.sleep(0.2)
        await assign(sandbox, request_id)
        assert update_of(await ws.next_data(op))["phoneLine"]["status"] == "ASSIGNED"
        for _ in range(3):
            redelivered = await sandbox.post(f"/sandbox/line-requests/{request_id}/redeliver")
            assert redelivered.status_code < 300
        await ws.expect_silence(1.0)


async def test_legacy_graphql_ws_protocol_is_served(api: Api) -> None:
    async with graphql_ws(api.base_url, api.key, protocol=LEGACY_WS) as ws:
        op = await ws.subscribe(UPDATES)
        await asyncio.sleep(0.2)
        setup = (await create(api))["setup"]
        assert update_of(await ws.next_data(op))["setup"]["id"] == setup["id"]


@pytest.mark.parametrize("key", [None, "bl_live_not-a-real-key", "garbage"])
async def test_bad_or_missing_key_closes_with_4403(api: Api, key: str | None) -> None:
    async def connect_and_wait() -> None:
        async with graphql_ws(api.base_url, key, expect_ack=False) as ws:
            await ws.receive()

    with pytest.raises(ConnectionClosed) as closed:
        await connect_and_wait()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4403


async def test_subscribers_see_only_their_own_workspace(
    api: Api, server: tuple[str, Settings]
) -> None:
    _, settings = server
    db = Database(settings.database_url.get_secret_value())
    try:
        other_key = await create_api_key(db, "clinic-b")
    finally:
        await db.dispose()
    mine = (await create(api))["setup"]
    async with graphql_ws(api.base_url, other_key) as ws:
        everything = await ws.subscribe(UPDATES)
        foreign = await ws.subscribe(UPDATES, {"setupId": mine["id"]})
        missing = await ws.subscribe(UPDATES, {"setupId": "ims_01ZZZZZZZZZZZZZZZZZZZZZZZZ"})
        errors: dict[str, str] = {}
        while len(errors) < 2:
            message = await ws.receive()
            if message["type"] == "complete":
                continue
            payload = message["payload"]
            found = payload if isinstance(payload, list) else payload.get("errors")
            assert found, message
            errors[message["id"]] = found[0]["message"]
        assert set(errors) == {foreign, missing}
        assert errors[foreign] == errors[missing]
        await asyncio.sleep(0.2)
        await create(api)
        await ws.expect_silence(1.0)
        assert everything == "1"


async def test_resume_with_after_replays_missed_events_in_order_once_then_goes_live(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    async with graphql_ws(api.base_url, api.key) as ws:
        op = await ws.subscribe(UPDATES)
        await asyncio.sleep(0.2)
        first = (await create(api))["setup"]
        seen = update_of(await ws.next_data(op))
        assert seen["setup"]["id"] == first["id"]
    last_seen = seen["eventId"]

    # Offline: two creates and one assignment happen while nobody listens.
    second = (await create(api, "Second"))["setup"]
    third = (await create(api, "Third"))["setup"]
    await assign(sandbox, first["phoneLines"][0]["requestId"])
    await asyncio.sleep(0.5)

    async with graphql_ws(api.base_url, api.key) as ws:
        op = await ws.subscribe(UPDATES, {"after": last_seen})
        replayed = [update_of(await ws.next_data(op)) for _ in range(3)]
        assert [(u["setup"]["id"], u["phoneLine"]["status"]) for u in replayed] == [
            (second["id"], "PENDING"),
            (third["id"], "PENDING"),
            (first["id"], "ASSIGNED"),
        ]
        ids = [u["eventId"] for u in replayed]
        assert ids == sorted(ids)
        assert ids[0] > last_seen
        await ws.expect_silence(0.5)

        fourth = (await create(api, "Fourth"))["setup"]
        live = update_of(await ws.next_data(op))
        assert live["setup"]["id"] == fourth["id"]
        assert live["eventId"] > ids[-1]
        await ws.expect_silence(0.5)


@pytest.mark.parametrize(
    "after", ["evt_ZZZZZZZZZZZZZ", "evt_9999999999999999", "evt_0000000000000001", "nonsense"]
)
async def test_unknown_after_ends_the_subscription_with_an_error(api: Api, after: str) -> None:
    async with graphql_ws(api.base_url, api.key) as ws:
        op = await ws.subscribe(UPDATES, {"after": after})
        message = await ws.expect_error(op)
        assert "event id" in message


async def test_idle_subscriptions_hold_no_database_connection(
    api: Api, server: tuple[str, Settings]
) -> None:
    _, settings = server
    sockets = []
    try:
        for _ in range(10):
            ws_cm = graphql_ws(api.base_url, api.key)
            ws = await ws_cm.__aenter__()
            sockets.append(ws_cm)
            await ws.subscribe(UPDATES)
        await asyncio.sleep(0.5)
        if settings.database_url.get_secret_value().startswith("postgresql"):
            db = Database(settings.database_url.get_secret_value())
            try:
                async with db.session() as session:
                    from sqlalchemy import text

                    busy = (
                        await session.execute(
                            text(
                                "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                "current_database() AND state LIKE 'idle in transaction%'"
                            )
                        )
                    ).scalar_one()
            finally:
                await db.dispose()
            assert busy == 0
    finally:
        for ws_cm in sockets:
            await ws_cm.__aexit__(None, None, None)


async def test_transport_protocol_constant_is_the_modern_one() -> None:
    assert TRANSPORT_WS == "graphql-transport-ws"


SETUP_UPDATES = "subscription { imessageSetupUpdates { eventId setup { id } } }"


async def test_subscriptions_opened_together_while_changes_commit_see_no_gap(
    api: Api, sandbox: httpx.AsyncClient
) -> None:
    """Opens share one lookup of where the workspace stands: each subscription still
    starts at a seq no older than its own start, and misses nothing after it."""
    stop = asyncio.Event()

    async def keep_creating() -> None:
        n = 0
        while not stop.is_set():
            await create(api, f"Busy {n}")
            n += 1

    writer = asyncio.create_task(keep_creating())
    async with contextlib.AsyncExitStack() as stack:
        sockets = await asyncio.gather(
            *(stack.enter_async_context(graphql_ws(api.base_url, api.key)) for _ in range(20))
        )
        ops = await asyncio.gather(*(ws.subscribe(SETUP_UPDATES) for ws in sockets))
        await asyncio.sleep(0.5)
        stop.set()
        await writer
        final = (await create(api, "Last"))["setup"]["id"]

        async def received(ws: GraphQLSocket, op: str) -> list[int]:
            """Every seq until the final setup's events, and whatever follows them."""
            seqs: list[int] = []
            seen_final = False
            while True:
                try:
                    data = await ws.next_data(op, timeout=0.5 if seen_final else 10)
                except TimeoutError:
                    return seqs
                update = data["imessageSetupUpdates"]
                seq = parse_event_id(update["eventId"])
                assert seq is not None
                seqs.append(seq)
                seen_final = seen_final or update["setup"]["id"] == final

        streams = await asyncio.gather(
            *(received(ws, op) for ws, op in zip(sockets, ops, strict=True))
        )
    last = max(s[-1] for s in streams)
    for seqs in streams:
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no repeat
        assert seqs[-1] == last  # and nothing missed at the end
