"""Failure drills: real ``blueline serve`` processes on a private PostgreSQL (and a
private Redis) that the test crashes, stops and restarts under load, while the
``sandbox-provider`` process delivers assignments and clients query and subscribe.

Each drill checks a guarantee of ``docs/operations.md``:

- nothing is lost or applied twice: every placement ends as one assigned line and one
  event, every subscriber receives every event once and in order (resuming with
  ``after`` whenever the server ends its stream);
- every wait is bounded: while a dependency is down, requests answer 503 with
  ``Retry-After`` within the configured timeouts (plus a margin for a loaded machine),
  and readiness names what is down;
- the service comes back by itself: no restart of Blueline is needed once the database
  or Redis returns.

Timeouts are set short through the ``BLUELINE_*`` settings, so the drills fit the
suite's budget; the bounds they check are computed from the same settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest

from blueline.events.bus import REDIS_TIMEOUT_S
from blueline.persistence.eventlog import format_event_id
from blueline.settings import SANDBOX_PARTNER_KEY
from tests.conftest import Api, keyring_spec
from tests.e2e.conftest import configure_sandbox
from tests.e2e.support import BluelineProcess, ProcessGroup, printed_api_key, serve_env
from tests.support.asgi_server import free_port
from tests.support.clients import http_client
from tests.support.followers import Follower
from tests.support.pg_cluster import PrivateCluster, private_cluster
from tests.support.redis_server import PrivateRedis
from tests.support.tcp_proxy import ResettingProxy
from tests.support.waiting import eventually
from tests.support.ws import graphql_ws

pytestmark = pytest.mark.e2e

T = TypeVar("T")

CONNECT_TIMEOUT_S = 1.0
POOL_TIMEOUT_S = 1.0
STATEMENT_TIMEOUT_S = 2.0
# What a loaded two-core machine may add to a bounded wait before the answer is out.
MARGIN_S = 2.0
# Every request while the database refuses connections (docs/operations.md).
OUTAGE_BOUND_S = CONNECT_TIMEOUT_S + POOL_TIMEOUT_S + MARGIN_S
# How long the database stays down in the first drill.
OUTAGE_S = 3.0

DRILL_SETTINGS = {
    "BLUELINE_DB_CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S),
    "BLUELINE_DB_POOL_TIMEOUT_S": str(POOL_TIMEOUT_S),
    "BLUELINE_DB_STATEMENT_TIMEOUT_S": str(STATEMENT_TIMEOUT_S),
    "BLUELINE_RELAY_POLL_INTERVAL_S": "0.2",
    "BLUELINE_PUBLISH_GRACE_S": "0.5",
    # Shorter than any outage here, so requests during one need the database to
    # authenticate (as they would after a longer outage with the default).
    "BLUELINE_API_KEY_CACHE_TTL_S": "0.5",
    "BLUELINE_GRAPHQL_RATE_PER_KEY_PER_S": "0",
    "BLUELINE_WEBHOOK_RATE_PER_SETUP_PER_S": "0",
}

CREATE = """
mutation Create($input: CreateImessageSetupInput!) {
  createImessageSetup(input: $input) {
    setup { id status phoneLines { id status requestId } }
    userErrors { code message }
  }
}"""

LIST = """
query List { imessageSetups(first: 50) { totalCount edges { node { id status phoneLineCount } } } }
"""

DETAIL = """
query Detail($id: ID!) { imessageSetup(id: $id) { id status phoneLines { id status } } }
"""


# ------------------------------------------------------------------------ helpers


async def within(work: Awaitable[T], seconds: float, what: str) -> T:
    """``work``'s result, or a failure once ``seconds`` passed (where the test itself
    holds what the work waits for, waiting longer would wait forever)."""
    try:
        return await asyncio.wait_for(work, seconds)
    except TimeoutError:
        pytest.fail(f"{what}: no answer within {seconds} s")


@dataclass
class Answer:
    """One HTTP answer a client got, and how long it waited for it."""

    what: str
    started: float
    elapsed_s: float
    status: int | None
    retry_after: str | None = None
    body: Any = None
    error: str | None = None

    @property
    def code(self) -> str | None:
        if not isinstance(self.body, dict):
            return None
        errors = self.body.get("errors") or [{}]
        code: str | None = (errors[0].get("extensions") or {}).get("code")
        return code


def check_graphql_answers(answers: list[Answer], bound_s: float) -> dict[int | None, int]:
    """Every answer is a success or a well-formed 503 within ``bound_s``; the counts."""
    counts: dict[int | None, int] = {}
    for answer in answers:
        counts[answer.status] = counts.get(answer.status, 0) + 1
        assert answer.error is None, answer
        assert answer.elapsed_s <= bound_s, f"waited {answer.elapsed_s:.2f} s > {bound_s}: {answer}"
        if answer.status == 200:
            assert "errors" not in answer.body, answer
        else:
            assert answer.status == 503, answer
            assert answer.retry_after is not None, answer
            assert answer.code == "UNAVAILABLE", answer
            assert answer.body.get("data") is None, answer
    return counts


class QueryLoad:
    """Clients reading all the time: the list, and one setup's detail, in turns."""

    def __init__(self, api: Api, setup_ids: list[str], *, workers: int = 2) -> None:
        self.api = api
        self.setup_ids = setup_ids
        self.workers = workers
        self.answers: list[Answer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._http = http_client(api.base_url, timeout=60)

    def start(self) -> QueryLoad:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work(n)) for n in range(self.workers)]
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._http.aclose()

    def since(self, moment: float) -> list[Answer]:
        return [a for a in self.answers if a.started >= moment]

    async def _work(self, worker: int) -> None:
        n = worker
        while True:
            n += 1
            payload: dict[str, Any] = {"query": LIST}
            what = "list"
            if n % 2 == 0 and self.setup_ids:
                setup_id = self.setup_ids[n % len(self.setup_ids)]
                what = "detail"
                payload = {"query": DETAIL, "variables": {"id": setup_id}}
            self.answers.append(await graphql_answer(self._http, self.api.key, what, payload))
            await asyncio.sleep(0.05)


async def graphql_answer(
    http: httpx.AsyncClient, key: str, what: str, payload: dict[str, Any]
) -> Answer:
    started = time.monotonic()
    try:
        response = await http.post(
            "/graphql", json=payload, headers={"Authorization": f"Bearer {key}"}
        )
    except httpx.HTTPError as exc:
        return Answer(what, started, time.monotonic() - started, None, error=repr(exc))
    elapsed = time.monotonic() - started
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return Answer(
        what, started, elapsed, response.status_code, response.headers.get("retry-after"), body
    )


@dataclass
class Drill:
    """A fresh database on the module's private cluster, the provider simulator, and
    the ``blueline serve`` processes a drill starts on them."""

    cluster: PrivateCluster
    database: str
    procs: ProcessGroup
    provider_url: str
    sandbox: httpx.AsyncClient
    workdir: Path
    keyring: str = field(default_factory=keyring_spec)
    key: str | None = None
    _apis: list[Api] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(self.database)

    def env(self, port: int, *, redis_url: str | None = None, **extra: str) -> dict[str, str]:
        provider_url = extra.pop("BLUELINE_PROVIDER_URL", self.provider_url)
        return serve_env(
            database_url=self.cluster.url(self.database),
            provider_url=provider_url,
            port=port,
            encryption_keys=self.keyring,
            redis_url=redis_url,
            BLUELINE_PROVIDER_API_KEY=SANDBOX_PARTNER_KEY,
            **{**DRILL_SETTINGS, **extra},
        )

    def serve(
        self, name: str, *, port: int | None = None, redis_url: str | None = None, **extra: str
    ) -> BluelineProcess:
        port = port or free_port()
        cwd = self.workdir / name
        cwd.mkdir(parents=True, exist_ok=True)
        env = self.env(port, redis_url=redis_url, **extra)
        process = self.procs.serve(port=port, env=env, cwd=cwd)
        if self.key is None:
            self.key = printed_api_key(process.stdout())
            assert self.key is not None, process.describe()
        return process

    def api(self, process: BluelineProcess) -> Api:
        assert self.key is not None
        api = Api(process.base_url, self.key)
        self._apis.append(api)
        return api

    async def close(self) -> None:
        for api in self._apis:
            await api.http.aclose()

    # -- the database, as the test sees it (its own connection)

    @contextlib.asynccontextmanager
    async def sql(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await asyncpg.connect(self.dsn, timeout=5)
        try:
            yield conn
        finally:
            await conn.close()

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.sql() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.sql() as conn:
            return await conn.fetchval(query, *args)

    async def workspace_seq(self) -> tuple[str, int]:
        [row] = await self.fetch("SELECT id, event_seq FROM workspace WHERE name = 'default'")
        return str(row["id"]), int(row["event_seq"] or 0)

    async def event_ids_after(self, seq: int) -> list[str]:
        rows = await self.fetch("SELECT seq FROM event WHERE seq > $1 ORDER BY seq", seq)
        return [format_event_id(int(row["seq"])) for row in rows]

    async def follow(self, process: BluelineProcess, name: str) -> tuple[Follower, int]:
        """A subscriber on ``process`` from the current end of the log; and that seq."""
        _, seq = await self.workspace_seq()
        assert seq > 0, "follow after something happened, so `after` names an event"
        assert self.key is not None
        return Follower(process.base_url, self.key, format_event_id(seq), name).start(), seq

    # -- the provider

    async def assign(self, request_id: str) -> str:
        """The provider places a number and delivers the signed webhook (retrying it)."""
        placed = await self.sandbox.post(f"/sandbox/line-requests/{request_id}/assign", json={})
        assert placed.status_code == 200, placed.text
        number: str = placed.json()["phone_number"]
        return number

    async def attempts(self) -> dict[str, list[dict[str, Any]]]:
        """Every delivery attempt (status code or transport error), by request id."""
        response = await self.sandbox.get("/sandbox/subaccounts")
        response.raise_for_status()
        found: dict[str, list[dict[str, Any]]] = {}
        for account in response.json()["data"]:
            for attempt in account["deliveries"]:
                found.setdefault(attempt["request_id"], []).append(attempt)
        return found

    async def deliveries(self) -> dict[str, list[int | None]]:
        """Status codes of every delivery attempt (None: a transport error), by request id."""
        return {
            request_id: [attempt["status_code"] for attempt in tries]
            for request_id, tries in (await self.attempts()).items()
        }


async def create_setups(api: Api, count: int, prefix: str) -> list[dict[str, Any]]:
    setups = []
    for n in range(count):
        data = await api.data(CREATE, {"input": {"businessName": f"{prefix} {n}", "label": "Desk"}})
        result = data["createImessageSetup"]
        assert result["userErrors"] == [], result
        setups.append(result["setup"])
    return setups


async def check_applied_once(drill: Drill, placed: dict[str, str]) -> None:
    """Each placement (request id -> number) is one assigned line and one event."""
    rows = await drill.fetch(
        "SELECT l.id, l.request_id, l.status, l.phone_number, "
        "(SELECT count(*) FROM event e WHERE e.line_id = l.id AND e.type = 'LINE_ASSIGNED') AS n "
        "FROM phone_line l"
    )
    by_request = {row["request_id"]: row for row in rows}
    for request_id, number in placed.items():
        row = by_request[request_id]
        assert (row["status"], row["phone_number"]) == ("ASSIGNED", number), dict(row)
        assert row["n"] == 1, dict(row)
    duplicates = await drill.fetchval(
        "SELECT count(*) FROM (SELECT setup_id, webhook_id FROM webhook_delivery "
        "GROUP BY setup_id, webhook_id HAVING count(*) > 1) AS d"
    )
    assert duplicates == 0


async def all_assigned(drill: Drill, request_ids: list[str]) -> int:
    return int(
        await drill.fetchval(
            "SELECT count(*) FROM phone_line WHERE status = 'ASSIGNED' "
            "AND request_id = ANY($1::text[])",
            request_ids,
        )
    )


async def readyz(http: httpx.AsyncClient) -> tuple[int, dict[str, str]]:
    response = await http.get("/readyz")
    body: dict[str, str] = response.json()
    return response.status_code, body


async def readiness_until(
    http: httpx.AsyncClient,
    done: Callable[[tuple[int, dict[str, str]]], bool],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
) -> dict[str, str]:
    """Poll ``/readyz`` until ``done`` holds for (status, checks); the checks."""
    _, checks = await eventually(
        lambda: readyz(http), done, timeout_s=timeout_s, what=what, interval_s=interval_s
    )
    return checks


def check_followed(follower: Follower, expected: list[str]) -> None:
    """Every event once, in order, and nothing else."""
    assert follower.errors == [], follower.errors
    assert follower.event_ids == expected, (
        f"missing {sorted(set(expected) - set(follower.event_ids))}, endings {follower.endings}"
    )


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with private_cluster() as started:
        yield started


@pytest.fixture
async def drill(
    cluster: PrivateCluster,
    procs: ProcessGroup,
    sandbox_process: BluelineProcess,
    sandbox: httpx.AsyncClient,
    tmp_path: Path,
) -> AsyncIterator[Drill]:
    # A drill before this one may have failed with the cluster down or frozen.
    if cluster.running:
        await asyncio.to_thread(cluster.thaw)
    else:
        await asyncio.to_thread(cluster.start)
    database = await cluster.create_database()
    found = Drill(cluster, database, procs, sandbox_process.base_url, sandbox, tmp_path)
    try:
        yield found
    finally:
        await found.close()
        # Shown by pytest only when the test failed.
        print(f"--- {cluster} log ---\n{cluster.log_tail()}")


# -------------------------------------------------------------- 1. database down


async def test_database_outage_answers_503_in_bounded_time_and_loses_nothing(
    drill: Drill,
) -> None:
    process = drill.serve("api")
    api = drill.api(process)
    setups = await create_setups(api, 9, "Outage")
    request_ids = [s["phoneLines"][0]["requestId"] for s in setups]
    before, during, after = request_ids[:3], request_ids[3:6], request_ids[6:]
    follower, start_seq = await drill.follow(process, "subscriber")
    assert drill.key is not None
    # One more subscriber that only connects once the database is down.
    late = Follower(process.base_url, drill.key, format_event_id(start_seq), "late")
    load = QueryLoad(api, [s["id"] for s in setups]).start()
    placed: dict[str, str] = {}
    try:
        for request_id in before:
            placed[request_id] = await drill.assign(request_id)
        await eventually(
            lambda: all_assigned(drill, before), lambda n: n == 3, timeout_s=10, what="before"
        )

        outage_started = time.monotonic()
        await asyncio.to_thread(drill.cluster.crash)
        late.start()
        for request_id in during:
            placed[request_id] = await drill.assign(request_id)
        async with http_client(process.base_url, timeout=30) as http:
            _, checks = await eventually(
                lambda: readyz(http),
                lambda r: r[0] == 503,
                timeout_s=OUTAGE_BOUND_S,
                what="readiness during the outage",
            )
            assert checks["database"] != "ok", checks
            assert checks["event_bus"] == "ok", checks
            # The provider has been told 503 at least once for each delivery.
            await eventually(
                drill.deliveries,
                lambda d: all(503 in d.get(r, []) for r in during),
                timeout_s=10,
                what="webhooks refused with 503",
            )
            # Long enough for every cached key to expire: requests then need the
            # database even to authenticate.
            await asyncio.sleep(max(0.0, outage_started + OUTAGE_S - time.monotonic()))
            assert sum(a.status == 503 for a in load.since(outage_started)) >= 10

            await asyncio.to_thread(drill.cluster.restart)
            back = time.monotonic()
            await eventually(
                lambda: readyz(http),
                lambda r: r[0] == 200,
                timeout_s=2.0,
                what="readiness after the database came back",
                interval_s=0.05,
            )
            ready_after_s = time.monotonic() - back
        for request_id in after:
            placed[request_id] = await drill.assign(request_id)
        # The provider's retries (0.5, 1, 2, 4 and 8 s apart) bring the refused ones.
        await eventually(
            lambda: all_assigned(drill, request_ids),
            lambda n: n == len(request_ids),
            timeout_s=20,
            what="every placement applied",
        )
        expected = await drill.event_ids_after(start_seq)
        await follower.wait_for(expected, timeout_s=10)
        await late.wait_for(expected, timeout_s=10)
    finally:
        await load.stop()
        await follower.stop()
        await late.stop()
        print("deliveries:", await drill.deliveries())

    counts = check_graphql_answers(load.answers, OUTAGE_BOUND_S)
    assert counts.get(200, 0) > 0, counts
    await check_applied_once(drill, placed)
    assert len(expected) == len(request_ids), expected
    check_followed(follower, expected)
    check_followed(late, expected)
    print(
        f"ready {ready_after_s:.2f} s after the database; answers {counts}; "
        f"longest {max(a.elapsed_s for a in load.answers):.2f} s; "
        f"endings {follower.endings} / late {late.endings}"
    )


# A hung database (the server frozen: connections open, nothing answers) exercises the
# client-side bounds the refusing one never reaches: connecting (the handshake never
# completes), each statement (asyncpg's command timeout, the statement timeout plus
# 1 s, since the server's own timeout cannot fire), and the cancel request sent after
# it (bounded by the same timeout).
HUNG_STATEMENT_TIMEOUT_S = 1.0
HUNG_BOUND_S = POOL_TIMEOUT_S + 2 * (HUNG_STATEMENT_TIMEOUT_S + 1) + MARGIN_S
# Longer than the bound, so a request that waited for the database to come back
# would show it.
HUNG_FOR_S = HUNG_BOUND_S + 2


async def test_hung_database_answers_503_within_the_client_side_timeouts(drill: Drill) -> None:
    process = drill.serve("api", BLUELINE_DB_STATEMENT_TIMEOUT_S=str(HUNG_STATEMENT_TIMEOUT_S))
    api = drill.api(process)
    setups = await create_setups(api, 4, "Hung")
    request_ids = [s["phoneLines"][0]["requestId"] for s in setups]
    follower, start_seq = await drill.follow(process, "subscriber")
    load = QueryLoad(api, [s["id"] for s in setups]).start()
    placed: dict[str, str] = {}
    try:
        placed[request_ids[0]] = await drill.assign(request_ids[0])
        await eventually(
            lambda: all_assigned(drill, request_ids[:1]),
            lambda n: n == 1,
            timeout_s=10,
            what="before",
        )
        try:
            await asyncio.to_thread(drill.cluster.freeze)
            # Taken once every process is stopped: a query sent while the signals were
            # still going out may well have been answered.
            frozen = time.monotonic()
            for request_id in request_ids[1:3]:
                placed[request_id] = await drill.assign(request_id)
            async with http_client(process.base_url, timeout=60) as http:
                started = time.monotonic()
                # Asked at once, on connections of their own: the load's clients may
                # all be waiting on requests sent just before the freeze.
                (status, checks), listed, detailed = await asyncio.gather(
                    readyz(http),
                    graphql_answer(http, api.key, "list", {"query": LIST}),
                    graphql_answer(
                        http,
                        api.key,
                        "detail",
                        {"query": DETAIL, "variables": {"id": setups[0]["id"]}},
                    ),
                )
                probe_s = time.monotonic() - started
                asked = [listed, detailed]
            await asyncio.sleep(max(0.0, frozen + HUNG_FOR_S - time.monotonic()))
        finally:
            await asyncio.to_thread(drill.cluster.thaw)
        thawed = time.monotonic()
        async with http_client(process.base_url, timeout=30) as http:
            await readiness_until(
                http,
                lambda r: r[0] == 200,
                timeout_s=2.0,
                what="readiness once the database answers again",
                interval_s=0.05,
            )
        placed[request_ids[3]] = await drill.assign(request_ids[3])
        await eventually(
            lambda: all_assigned(drill, request_ids),
            lambda n: n == len(request_ids),
            timeout_s=20,
            what="every placement applied",
        )
        expected = await drill.event_ids_after(start_seq)
        await follower.wait_for(expected, timeout_s=10)
    finally:
        await load.stop()
        await follower.stop()

    assert status == 503, checks
    assert checks["database"] != "ok", checks
    assert probe_s <= HUNG_BOUND_S, probe_s
    during = [a for a in load.answers if frozen <= a.started < thawed]
    counts = check_graphql_answers(load.answers, HUNG_BOUND_S)
    # Everything asked while the server was frozen was answered 503 (none waited for
    # it to thaw): the requests sent at the freeze, and whatever the load sent early
    # enough that its bound ended before the thaw.
    check_graphql_answers(asked, HUNG_BOUND_S)
    assert [a.status for a in asked] == [503, 503], asked
    assert {a.status for a in during if a.started < thawed - HUNG_BOUND_S} <= {503}, during
    assert counts.get(200, 0) > 0, counts
    await check_applied_once(drill, placed)
    check_followed(follower, expected)
    print(
        f"answers {counts}, longest {max(a.elapsed_s for a in during):.2f} s; "
        f"readiness answered in {probe_s:.2f} s"
    )


# ------------------------------------------------ 2. Redis down, then Redis and database


async def wait_ready(http: httpx.AsyncClient, what: str, timeout_s: float = 10.0) -> None:
    await readiness_until(http, lambda r: r[0] == 200, timeout_s=timeout_s, what=what)


async def test_redis_outage_alone_and_with_the_database_delays_events_never_loses_them(
    drill: Drill, private_redis: PrivateRedis
) -> None:
    first = drill.serve("first", redis_url=private_redis.url)
    second = drill.serve("second", redis_url=private_redis.url)
    api = drill.api(first)
    setups = await create_setups(api, 12, "Bus")
    request_ids = [s["phoneLines"][0]["requestId"] for s in setups]
    phases = [request_ids[n : n + 3] for n in range(0, 12, 3)]
    # Webhooks reach the first process (it created the setups); the followers listen on
    # the other one, and on the first.
    remote, start_seq = await drill.follow(second, "on-second")
    local, _ = await drill.follow(first, "on-first")
    loads = [
        QueryLoad(api, [s["id"] for s in setups], workers=1).start(),
        QueryLoad(drill.api(second), [s["id"] for s in setups], workers=1).start(),
    ]
    placed: dict[str, str] = {}
    http = [http_client(p.base_url, timeout=30) for p in (first, second)]
    try:
        # Redis alone: reads and webhooks go on, events wait for the bus.
        redis_down = time.monotonic()
        await asyncio.to_thread(private_redis.stop)
        for client in http:
            checks = await readiness_until(
                client, lambda r: r[0] == 503, timeout_s=10, what="readiness without Redis"
            )
            assert checks["database"] == "ok", checks
            assert checks["event_bus"] != "ok", checks
        for request_id in phases[0]:
            placed[request_id] = await drill.assign(request_id)
        await eventually(
            lambda: all_assigned(drill, phases[0]),
            lambda n: n == 3,
            timeout_s=10,
            what="placements applied while Redis is down",
        )
        # Down long enough for the listeners' reconnect backoff to reach its 2 s cap;
        # placed the moment Redis is back, these are published (and marked) while the
        # listeners still wait to reconnect: only re-reading the log once they have
        # gets them to the subscribers.
        await asyncio.sleep(max(0.0, redis_down + 3.5 - time.monotonic()))
        await asyncio.to_thread(private_redis.start)
        for request_id in phases[1]:
            placed[request_id] = await drill.assign(request_id)
        for client in http:
            await wait_ready(client, "readiness once Redis is back")
        await eventually(
            lambda: all_assigned(drill, phases[1]),
            lambda n: n == 3,
            timeout_s=10,
            what="placements applied as Redis came back",
        )
        # Before anything else happens: a later event would fill the gap anyway.
        so_far = await drill.event_ids_after(start_seq)
        for follower in (remote, local):
            await follower.wait_for(so_far, timeout_s=10)
            check_followed(follower, so_far)

        # Redis and the database together; Redis comes back first, so the processes
        # re-read the log while the database still refuses.
        outage_started = time.monotonic()
        await asyncio.to_thread(private_redis.stop)
        await asyncio.to_thread(drill.cluster.crash)
        for request_id in phases[2]:
            placed[request_id] = await drill.assign(request_id)
        for client in http:
            await readiness_until(
                client,
                lambda r: r[0] == 503 and "ok" not in r[1].values(),
                timeout_s=OUTAGE_BOUND_S,
                what="readiness naming both",
            )
        await asyncio.sleep(max(0.0, outage_started + 1.5 - time.monotonic()))
        await asyncio.to_thread(private_redis.start)
        for client in http:
            await readiness_until(
                client,
                lambda r: r[1]["event_bus"] == "ok" and r[1]["database"] != "ok",
                timeout_s=10,
                what="the bus listening again while the database is down",
            )
        await asyncio.to_thread(drill.cluster.restart)
        back = time.monotonic()
        for client in http:
            await wait_ready(client, "readiness once both are back", timeout_s=4.0)
        ready_after_s = time.monotonic() - back
        for request_id in phases[3]:
            placed[request_id] = await drill.assign(request_id)

        await eventually(
            lambda: all_assigned(drill, request_ids),
            lambda n: n == len(request_ids),
            timeout_s=20,
            what="every placement applied",
        )
        expected = await drill.event_ids_after(start_seq)
        await remote.wait_for(expected, timeout_s=10)
        await local.wait_for(expected, timeout_s=10)
        unpublished = await eventually(
            lambda: drill.fetchval("SELECT count(*) FROM event_outbox"),
            lambda n: n == 0,
            timeout_s=10,
            what="every event published",
        )
    finally:
        for load in loads:
            await load.stop()
        await remote.stop()
        await local.stop()
        for client in http:
            await client.aclose()
        print("deliveries:", await drill.deliveries())

    assert unpublished == 0
    for load in loads:
        check_graphql_answers(load.answers, OUTAGE_BOUND_S)
    await check_applied_once(drill, placed)
    assert len(expected) == len(request_ids), expected
    check_followed(remote, expected)
    check_followed(local, expected)
    print(
        f"ready {ready_after_s:.2f} s after both came back; "
        f"endings on second {remote.endings}, on first {local.endings}"
    )


async def test_hung_redis_holds_no_request_and_loses_no_event(
    drill: Drill, private_redis: PrivateRedis
) -> None:
    process = drill.serve("api", redis_url=private_redis.url)
    api = drill.api(process)
    setups = await create_setups(api, 3, "Hung bus")
    request_ids = [s["phoneLines"][0]["requestId"] for s in setups]
    follower, start_seq = await drill.follow(process, "subscriber")
    bound_s = REDIS_TIMEOUT_S + MARGIN_S
    placed: dict[str, str] = {}
    try:
        private_redis.freeze()
        try:
            for request_id in request_ids[:2]:
                placed[request_id] = await drill.assign(request_id)
            created = await graphql_answer(
                api.http,
                api.key,
                "create",
                {"query": CREATE, "variables": {"input": {"businessName": "New", "label": "D"}}},
            )
            async with http_client(process.base_url, timeout=30) as http:
                started = time.monotonic()
                status, checks = await readyz(http)
                probe_s = time.monotonic() - started
            await eventually(
                lambda: all_assigned(drill, request_ids[:2]),
                lambda n: n == 2,
                timeout_s=10,
                what="placements applied while Redis hangs",
            )
        finally:
            private_redis.thaw()
        placed[request_ids[2]] = await drill.assign(request_ids[2])
        await eventually(
            lambda: all_assigned(drill, request_ids),
            lambda n: n == len(request_ids),
            timeout_s=10,
            what="every placement applied",
        )
        expected = await drill.event_ids_after(start_seq)
        await follower.wait_for(expected, timeout_s=15)
        unpublished = await eventually(
            lambda: drill.fetchval("SELECT count(*) FROM event_outbox"),
            lambda n: n == 0,
            timeout_s=15,
            what="every event published",
        )
    finally:
        await follower.stop()

    # The commit is not held up by the bus: the create answered in time, and the
    # provider (which gives up on a delivery after 5 s) never had to retry one.
    assert created.status == 200, created
    assert created.elapsed_s <= bound_s, created
    attempts = await drill.attempts()
    assert all(len(attempts[r]) == 1 for r in request_ids), attempts
    assert status == 503, checks
    assert checks == {"database": "ok", "event_bus": checks["event_bus"]}, checks
    assert checks["event_bus"] != "ok", checks
    assert probe_s <= bound_s, probe_s
    assert unpublished == 0
    await check_applied_once(drill, placed)
    check_followed(follower, expected)
    print(f"create answered in {created.elapsed_s:.2f} s, readiness in {probe_s:.2f} s")


# ------------------------------------------------------------ 3. a process killed


async def test_process_killed_mid_delivery_loses_and_repeats_nothing(
    drill: Drill, private_redis: PrivateRedis
) -> None:
    first = drill.serve("first", redis_url=private_redis.url)
    second = drill.serve("second", redis_url=private_redis.url)
    api = drill.api(first)
    setups = await create_setups(api, 40, "Crash")
    request_ids = [s["phoneLines"][0]["requestId"] for s in setups]
    remote, start_seq = await drill.follow(second, "on-second")
    # This one's process is the one killed: it must resume on the restarted process.
    local, _ = await drill.follow(first, "on-first")
    placed: dict[str, str] = {}
    try:
        # Placements one after another, then a burst the provider delivers at once
        # with the kill right behind it: it lands on requests in flight, commits not
        # yet published and events not yet marked; the rest find the process gone.
        spaced, burst, late = request_ids[:16], request_ids[16:28], request_ids[28:]
        for request_id in spaced:
            placed[request_id] = await drill.assign(request_id)
            await asyncio.sleep(0.01)
        numbers = await asyncio.gather(*(drill.assign(r) for r in burst))
        placed.update(zip(burst, numbers, strict=True))
        await asyncio.sleep(0.01)
        first.kill_hard()
        killed_at, killed_wall = time.monotonic(), time.time()
        for request_id in late:
            placed[request_id] = await drill.assign(request_id)
        first = drill.serve("first", port=first.port, redis_url=private_redis.url)
        restart_s = time.monotonic() - killed_at
        await eventually(
            lambda: all_assigned(drill, request_ids),
            lambda n: n == len(request_ids),
            timeout_s=20,
            what="every placement applied (the provider retries)",
        )
        expected = await drill.event_ids_after(start_seq)
        await remote.wait_for(expected, timeout_s=10)
        await local.wait_for(expected, timeout_s=10)
        unpublished = await eventually(
            lambda: drill.fetchval("SELECT count(*) FROM event_outbox"),
            lambda n: n == 0,
            timeout_s=10,
            what="every event published",
        )
    finally:
        await remote.stop()
        await local.stop()
        attempts = await drill.attempts()

    assert unpublished == 0
    await check_applied_once(drill, placed)
    assert len(expected) == len(request_ids), expected
    check_followed(remote, expected)
    check_followed(local, expected)
    first_tries = [tries[0] for tries in attempts.values()]
    cut = [t for t in first_tries if t["error"] and not t["error"].startswith("Connect")]
    refused = [t for t in first_tries if t["error"] and t["error"].startswith("Connect")]
    committed_unanswered = await drill.fetchval(
        "SELECT count(*) FROM phone_line WHERE request_id = ANY($1::text[]) "
        "AND assigned_at < to_timestamp($2)",
        [t["request_id"] for t in cut],
        killed_wall,
    )
    print(
        f"{len(first_tries) - len(cut) - len(refused)} deliveries answered before the kill, "
        f"{len(cut)} cut by it ({committed_unanswered} of them committed: their retry was "
        f"a duplicate), {len(refused)} refused while down; "
        f"restart took {restart_s:.1f} s; endings {local.endings} / {remote.endings}"
    )


async def test_websocket_opened_while_the_database_is_down_is_told_to_try_again(
    drill: Drill,
) -> None:
    process = drill.serve("api")
    assert drill.key is not None
    await asyncio.to_thread(drill.cluster.crash)
    try:
        # Past the key cache's lifetime, so connection_init needs the database.
        await asyncio.sleep(1.0)
        async with graphql_ws(process.base_url, drill.key, expect_ack=False) as ws:
            code, _reason = await ws.closed(timeout=OUTAGE_BOUND_S)
    finally:
        await asyncio.to_thread(drill.cluster.restart)
    assert code == 1013


# ------------------------------------------------------- 4. a slow, flapping provider

REQUEST_LINE = """
mutation RequestLine($input: RequestImessagePhoneLineInput!) {
  requestImessagePhoneLine(input: $input) { phoneLine { id status } userErrors { code message } }
}"""

RENAME = """
mutation Rename($input: UpdateImessageSetupInput!) {
  updateImessageSetup(input: $input) { setup { id businessName } userErrors { code message } }
}"""

NAME = """query Name($id: ID!) { imessageSetup(id: $id) { businessName } }"""

PROVIDER_LATENCY_MS = 2500
PROVIDER_TIMEOUT_S = 4.0
PROVIDER_ATTEMPTS = 3
# A connection that stays in a transaction (or one statement) this long is held across
# something other than the database: with the provider answering after 2.5 s, one
# held during the call shows up in several samples.
HELD_S = 1.0


def create_input(n: int) -> dict[str, Any]:
    return {"input": {"businessName": f"Flaky {n}", "label": "Desk", "idempotencyKey": f"k{n}"}}


class ConnectionWatch:
    """Samples ``pg_stat_activity`` of the drill's database: Blueline's connections that
    are in a transaction, or running one statement, for longer than ``HELD_S``."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.samples = 0
        self.held: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> ConnectionWatch:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.dsn, timeout=5)
        try:
            while True:
                rows = await conn.fetch(
                    "SELECT pid, state, query, extract(epoch FROM now() - "
                    "coalesce(xact_start, query_start)) AS held_s FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend' AND state <> 'idle' "
                    "AND now() - coalesce(xact_start, query_start) > $1 * interval '1 second'",
                    HELD_S,
                )
                self.samples += 1
                self.held.extend(dict(row) for row in rows)
                await asyncio.sleep(0.1)
        finally:
            await conn.close()


@pytest.fixture
async def provider_proxy(sandbox_process: BluelineProcess) -> AsyncIterator[ResettingProxy]:
    """Blueline's way to the provider, through a proxy that can reset connections."""
    assert sandbox_process.port is not None
    proxy = await ResettingProxy(sandbox_process.port, seed=4).start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_slow_flapping_provider_fails_cleanly_and_holds_no_connection(
    drill: Drill, provider_proxy: ResettingProxy
) -> None:
    process = drill.serve(
        "api",
        BLUELINE_PROVIDER_URL=provider_proxy.url,
        BLUELINE_PROVIDER_TIMEOUT_S=str(PROVIDER_TIMEOUT_S),
        BLUELINE_PROVIDER_ATTEMPTS=str(PROVIDER_ATTEMPTS),
    )
    api = drill.api(process)
    [existing] = await create_setups(api, 1, "Steady")
    creates = 8

    async def send(what: str, query: str, variables: dict[str, Any]) -> Answer:
        return await graphql_answer(
            api.http, api.key, what, {"query": query, "variables": variables}
        )

    await configure_sandbox(drill.sandbox, latency_ms=PROVIDER_LATENCY_MS, failure_rate=0.5)
    provider_proxy.reset_rate = 0.2
    watch = ConnectionWatch(drill.dsn).start()
    try:
        answers = await asyncio.gather(
            *(send("create", CREATE, create_input(n)) for n in range(creates)),
            *(send("line", REQUEST_LINE, {"input": {"setupId": existing["id"]}}) for _ in range(4)),
            send("rename", RENAME, {"input": {"setupId": existing["id"], "businessName": "New"}}),
        )
    finally:
        await watch.stop()
        provider_proxy.reset_rate = 0.0
        await configure_sandbox(drill.sandbox)

    # Every attempt is bounded by the provider timeout; backoff is 0.01 s here.
    bound_s = PROVIDER_ATTEMPTS * (PROVIDER_TIMEOUT_S + 0.05) + MARGIN_S
    outcomes: dict[str, list[str]] = {"create": [], "line": [], "rename": []}
    created: dict[int, str] = {}
    new_lines: list[str] = []
    for n, answer in enumerate(answers):
        assert answer.error is None, answer
        assert answer.status == 200, answer
        assert answer.elapsed_s <= bound_s, answer
        assert "errors" not in answer.body, answer
        payload = next(iter(answer.body["data"].values()))
        codes = [e["code"] for e in payload["userErrors"]]
        made = payload.get("setup") or payload.get("phoneLine")
        if made is None:
            assert codes == ["PROVIDER_UNAVAILABLE"], answer
            outcomes[answer.what].append("unavailable")
            continue
        assert codes == [], answer
        outcomes[answer.what].append("ok")
        if answer.what == "create":
            created[n] = made["id"]
        elif answer.what == "line":
            new_lines.append(made["id"])
    # Three attempts against 50 % failures and 20 % resets: about 3 creates in 4 succeed
    # (all 8 failing has odds near 1 in 100,000); without retries it would be 2 in 5.
    assert outcomes["create"].count("ok") >= 1, outcomes

    # Nothing half-made is visible: exactly what succeeded, each setup complete.
    listed = await api.data(LIST)
    visible = {edge["node"]["id"]: edge["node"] for edge in listed["imessageSetups"]["edges"]}
    assert set(visible) == {existing["id"], *created.values()}, (visible, created)
    assert all(node["phoneLineCount"] >= 1 for node in visible.values()), visible
    shown = await api.data(DETAIL, {"id": existing["id"]})
    line_ids = [line["id"] for line in shown["imessageSetup"]["phoneLines"]]
    assert sorted(line_ids) == sorted([existing["phoneLines"][0]["id"], *new_lines])
    # A rename the provider did not confirm changed nothing here.
    name = (await api.data(NAME, {"id": existing["id"]}))["imessageSetup"]["businessName"]
    assert name == ("New" if outcomes["rename"] == ["ok"] else "Steady 0"), (name, outcomes)
    states = await drill.fetch("SELECT state, count(*) AS n FROM imessage_setup GROUP BY state")
    assert {row["state"] for row in states} <= {"ready", "failed"}, states
    incomplete = await drill.fetchval(
        "SELECT count(*) FROM imessage_setup WHERE state = 'ready' AND "
        "(subaccount_id IS NULL OR credentials_enc IS NULL OR webhook_secret_enc IS NULL)"
    )
    assert incomplete == 0

    # No connection held while the provider was waited on.
    assert watch.samples >= 10, watch.samples
    assert watch.held == [], watch.held

    # A client retrying with its idempotency key, once the provider is well, gets its
    # setup; one that already succeeded gets the same setup again, not a second.
    for n in range(creates):
        again = (await api.data(CREATE, create_input(n)))["createImessageSetup"]
        assert again["userErrors"] == [], again
        assert created.setdefault(n, again["setup"]["id"]) == again["setup"]["id"]
    listed = await api.data(LIST)
    assert listed["imessageSetups"]["totalCount"] == 1 + creates
    print(
        f"outcomes {outcomes}; proxy resets {dict(provider_proxy.resets)}; {watch.samples} samples"
    )


# ------------------------------------------------ 5. pool exhaustion and slow queries

UPDATE_LABEL = """
mutation Relabel($input: UpdateImessageSetupInput!) {
  updateImessageSetup(input: $input) { setup { id label } userErrors { code } }
}"""


async def lock_waiters(drill: Drill) -> int:
    """Blueline's statements waiting for a lock the test holds."""
    return int(
        await drill.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
    )


async def test_exhausted_pool_and_slow_statements_answer_503_in_bounded_time(
    drill: Drill,
) -> None:
    process = drill.serve("api", BLUELINE_DB_POOL_SIZE="2")
    api = drill.api(process)
    slow_setup, other, _ = await create_setups(api, 3, "Pool")
    http = api.http

    # More readers than connections, and every statement stuck behind a table lock:
    # two wait for their statement timeout, the rest for a pooled connection.
    async with drill.sql() as conn, conn.transaction():
        await conn.execute("LOCK TABLE imessage_setup IN ACCESS EXCLUSIVE MODE")
        crowd = await within(
            asyncio.gather(
                *(graphql_answer(http, api.key, "list", {"query": LIST}) for _ in range(8))
            ),
            POOL_TIMEOUT_S + STATEMENT_TIMEOUT_S + MARGIN_S,
            "reads behind a table lock",
        )
    counts = check_graphql_answers(crowd, POOL_TIMEOUT_S + STATEMENT_TIMEOUT_S + MARGIN_S)
    assert counts == {503: 8}, counts
    # The connections whose statements were cancelled serve the next requests.
    after = await graphql_answer(http, api.key, "list", {"query": LIST})
    assert after.status == 200, after

    # One client stuck on one row's lock: its request ends at the statement timeout,
    # while requests about other rows, a webhook included, go on meanwhile.
    slow_line = slow_setup["phoneLines"][0]["requestId"]
    other_line = other["phoneLines"][0]["requestId"]
    async with drill.sql() as conn, conn.transaction():
        await conn.execute(
            "SELECT 1 FROM imessage_setup WHERE id = $1 FOR UPDATE", slow_setup["id"]
        )
        relabel = {"input": {"setupId": slow_setup["id"], "label": "Renamed"}}
        slow = asyncio.create_task(
            graphql_answer(http, api.key, "relabel", {"query": UPDATE_LABEL, "variables": relabel})
        )
        await eventually(
            lambda: lock_waiters(drill), lambda n: n >= 1, timeout_s=5, what="a blocked update"
        )
        placed = {other_line: await drill.assign(other_line)}
        meanwhile = [
            await graphql_answer(
                http, api.key, "detail", {"query": DETAIL, "variables": {"id": other["id"]}}
            ),
            await graphql_answer(http, api.key, "list", {"query": LIST}),
        ]
        await eventually(
            lambda: all_assigned(drill, [other_line]),
            lambda n: n == 1,
            timeout_s=STATEMENT_TIMEOUT_S + MARGIN_S,
            what="the other setup's webhook applied while one row is locked",
        )
        assert {a.status for a in meanwhile} == {200}, meanwhile
        stuck = await within(slow, STATEMENT_TIMEOUT_S + MARGIN_S, "a mutation on a locked row")
        # Its webhook too (the lock is held until it was refused: statement timeout).
        placed[slow_line] = await drill.assign(slow_line)
        await eventually(
            drill.deliveries,
            lambda d: 503 in d.get(slow_line, []),
            timeout_s=STATEMENT_TIMEOUT_S + MARGIN_S,
            what="the locked setup's webhook refused with 503",
        )
    check_graphql_answers([stuck], STATEMENT_TIMEOUT_S + MARGIN_S)
    assert stuck.status == 503, stuck
    # The provider's retry applies the refused one.
    await eventually(
        lambda: all_assigned(drill, [slow_line]),
        lambda n: n == 1,
        timeout_s=20,
        what="the locked setup's webhook applied once the lock is gone",
    )
    await check_applied_once(drill, placed)
    shown = await api.data(DETAIL, {"id": slow_setup["id"]})
    assert shown["imessageSetup"] is not None
