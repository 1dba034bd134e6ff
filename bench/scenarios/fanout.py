"""``fanout``: many idle subscribers on one process, one event to all of them.

Process B holds N ``phoneLineUpdates`` subscriptions (one WebSocket each, as browsers
open them, permessage-deflate offered). One signed delivery to B then has to reach every
subscriber: the figure is the time from sending it to the last subscriber's receipt
(an upper bound: this one client process decodes all N frames itself). Baselines:

- time: the same path to a single subscriber (p50 over a few events, same process);
- memory: RSS growth per idle bare WebSocket (``/bench/ws-idle``, no GraphQL) on a
  twin process A, against RSS growth per idle subscription on B.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection

from bench.clients import Subscription, assignment, open_idle_socket, open_subscription
from bench.context import RunContext
from bench.infra import (
    ServerProcess,
    ServerSpec,
    cpu_seconds,
    keyring_spec,
    running_servers,
    throwaway_database,
)
from bench.loadgen import Connection
from bench.report import Row, ScenarioResult, Summary, Target
from bench.scenarios.common import serve_env
from bench.scenarios.latency import SUBSCRIPTION, measure_events, wait_subscribers
from bench.seed import seed

DESCRIPTION = "one event to N idle WebSocket subscribers on one process; memory per subscriber"
OPEN_CONCURRENCY = 50
SETTLE_S = 1.5
T = TypeVar("T")


async def open_many(count: int, opener: Callable[[], Awaitable[T]]) -> list[T]:
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one() -> T:
        async with gate:
            return await opener()

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def close_many(sockets: list[ClientConnection]) -> None:
    gate = asyncio.Semaphore(200)

    async def one(ws: ClientConnection) -> None:
        async with gate:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)

    await asyncio.gather(*(one(ws) for ws in sockets))


async def settled_rss(server: ServerProcess) -> int:
    await asyncio.sleep(SETTLE_S)
    return server.rss_kib()


async def run(ctx: RunContext) -> ScenarioResult:
    subscribers = ctx.pick(2_000, 50)
    events = ctx.pick(3, 2)
    probe_events = ctx.pick(20, 4)
    result = ScenarioResult(
        "fanout",
        ctx.smoke,
        DESCRIPTION,
        config={
            "subscribers": subscribers,
            "events": events,
            "probe_events": probe_events,
            "compression": "permessage-deflate offered by the client",
        },
    )
    keyring = keyring_spec()
    async with throwaway_database() as database:
        seeded = await seed(database, keyring, setups=events + probe_events + 8, lines_per_setup=1)
        specs: list[ServerSpec] = [
            ("api-a", serve_env(ctx, database, keyring), []),
            ("api-b", serve_env(ctx, database, keyring), []),
        ]
        async with running_servers(specs, ctx.log_dir) as [a, b]:
            # Memory baseline: bare WebSockets on A.
            bare_before = await settled_rss(a)
            bare_started = time.perf_counter()
            bare = await open_many(subscribers, lambda: open_idle_socket(a.base_url))
            bare_open_s = time.perf_counter() - bare_started
            bare_after = await settled_rss(a)
            await close_many(bare)
            ctx.say(
                f"bare WebSockets on A: {(bare_after - bare_before) / subscribers:.1f} KiB each"
            )

            # Time baseline: one subscriber on B.
            subs: list[Subscription] = []
            try:
                subs.append(await open_subscription(b.base_url, seeded.api_key, SUBSCRIPTION))
                await wait_subscribers(b, 1)
                await asyncio.sleep(0.2)
                lines = seeded.pending
                probe = await measure_events(
                    b, subs[0], seeded, lines[:probe_events], 0, with_baseline=False
                )
                probe_summary = Summary.of_ns(probe["end_to_end"])
                ctx.say(f"single subscriber p50 {probe_summary.p50:.2f} ms")

                crowd_before = await settled_rss(b)
                opened_at = time.perf_counter()
                open_cpu_before = cpu_seconds(b.pid)
                subs.extend(
                    await open_many(
                        subscribers - 1,
                        lambda: open_subscription(b.base_url, seeded.api_key, SUBSCRIPTION),
                    )
                )
                await wait_subscribers(b, subscribers, timeout_s=120)
                open_s = time.perf_counter() - opened_at
                open_cpu_ms = 1000 * (cpu_seconds(b.pid) - open_cpu_before) / (subscribers - 1)
                crowd_after = await settled_rss(b)
                ctx.say(f"{subscribers} subscribers open in {open_s:.1f} s")

                fanouts = []
                profile: dict[str, Any] = {}
                conn = Connection(b.port)
                try:
                    for n, line in enumerate(lines[probe_events : probe_events + events]):
                        raw = assignment(line, seeded.secret, probe_events + n).request(b.port)
                        cpu_before = {"server": cpu_seconds(b.pid), "client": time.process_time()}
                        fanouts.append(await fan_out_once(conn, raw, subs, line.line_id))
                        fanouts[-1]["cpu_ms"] = {
                            "server": 1000 * (cpu_seconds(b.pid) - cpu_before["server"]),
                            "client": 1000 * (time.process_time() - cpu_before["client"]),
                        }
                        ctx.say(
                            f"event {n + 1}: {fanouts[-1]['received']}/{subscribers} in "
                            f"{fanouts[-1]['last_ms']:.1f} ms, cpu {fanouts[-1]['cpu_ms']}"
                        )
                    if ctx.profile:
                        extra = lines[probe_events + events : probe_events + events + 2]
                        async with ctx.profiling([b], "fanout") as profile:
                            for n, line in enumerate(extra):
                                raw = assignment(line, seeded.secret, 10_000 + n).request(b.port)
                                await fan_out_once(conn, raw, subs, line.line_id)
                        # Opening is measured above; sample it separately, on sockets
                        # that are closed again at once.
                        async with ctx.profiling([b], "fanout-open") as open_profile:
                            more = await open_many(
                                subscribers // 4,
                                lambda: open_subscription(b.base_url, seeded.api_key, SUBSCRIPTION),
                            )
                        await close_many([s.ws for s in more])
                        profile = {"event": profile, "opening": open_profile}
                finally:
                    await conn.close()
            finally:
                await close_many([s.ws for s in subs])

    last_ms = sorted(f["last_ms"] for f in fanouts)
    median_last = last_ms[len(last_ms) // 2]
    delivered = min(f["received"] for f in fanouts) / subscribers
    bare_per = (bare_after - bare_before) / subscribers
    sub_per = (crowd_after - crowd_before) / (subscribers - 1)
    result.add(
        Row(
            f"time to last of {subscribers} deliveries (median of {events})",
            median_last,
            "ms",
            baseline=probe_summary.p50,
            baseline_label="1 subscriber p50",
            target=Target("<=", 500),
            target_on="value",
        )
    )
    result.add(Row("share of subscribers reached", delivered, ""))
    server_ms = sorted(f["cpu_ms"]["server"] for f in fanouts)[len(fanouts) // 2]
    client_ms = sorted(f["cpu_ms"]["client"] for f in fanouts)[len(fanouts) // 2]
    result.add(
        Row(
            "server CPU per event (median)",
            server_ms,
            "ms",
            baseline=client_ms,
            baseline_label="client CPU",
        )
    )
    result.add(Row("server CPU per subscriber update", 1000 * server_ms / subscribers, "µs"))
    result.add(
        Row(
            "RSS per idle subscriber",
            sub_per,
            "KiB",
            baseline=bare_per,
            baseline_label="bare WebSocket",
            target=Target("<=", 1.5),
            target_on="ratio",
        )
    )
    result.add(
        Row(
            f"time to open {subscribers} subscriptions, {OPEN_CONCURRENCY} in flight",
            open_s,
            "s",
            baseline=bare_open_s,
            baseline_label="bare WebSockets, same client",
            target=Target("<=", 3),
            target_on="value",
        )
    )
    result.add(Row("server CPU per subscription opened", open_cpu_ms, "ms"))
    details: dict[str, Any] = {
        "events": fanouts,
        "profile": profile,
        "single_subscriber_ms": probe_summary.as_dict(),
        "rss_kib": {
            "bare_before": bare_before,
            "bare_after": bare_after,
            "subscriptions_before": crowd_before,
            "subscriptions_after": crowd_after,
        },
    }
    result.details = details
    return result


async def fan_out_once(
    conn: Connection, raw: bytes, subs: list[Subscription], line_id: str
) -> dict[str, Any]:
    clock = time.perf_counter_ns

    async def receive(sub: Subscription) -> int | None:
        try:
            payload = await sub.next_payload(10.0)
        except (TimeoutError, RuntimeError):
            return None
        if payload["data"]["phoneLineUpdates"]["phoneLine"]["id"] != line_id:
            return None
        return clock()

    waiters = [asyncio.create_task(receive(sub)) for sub in subs]
    await asyncio.sleep(0)
    started = clock()
    response = await conn.request(raw)
    if response.status != 200:
        for waiter in waiters:
            waiter.cancel()
        raise RuntimeError(f"delivery answered {response.status}")
    arrivals = [t for t in await asyncio.gather(*waiters) if t is not None]
    spans = sorted((t - started) / 1e6 for t in arrivals)
    return {
        "received": len(arrivals),
        "first_ms": spans[0] if spans else None,
        "median_ms": spans[len(spans) // 2] if spans else None,
        "last_ms": spans[-1] if spans else float("nan"),
    }
