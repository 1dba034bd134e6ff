"""``latency``: webhook in one process, subscriber on another.

Two ``blueline serve``-equivalent processes share PostgreSQL and Redis. A subscriber on
process B listens to ``phoneLineUpdates``; signed deliveries go to process A one at a
time, and each is timed from the moment it is sent until the subscriber has its
update (A commits, A's relay sequences and publishes to Redis, B's bus reader hands it
to the subscription). The baseline is a verify-only webhook round trip to process A,
interleaved with the events.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from bench.clients import VERIFY_BASELINE_PATH, Subscription, assignment, open_subscription
from bench.context import RunContext, poll_until
from bench.infra import ServerProcess, ServerSpec, keyring_spec, running_servers, throwaway_database
from bench.loadgen import Connection
from bench.report import Row, ScenarioResult, Summary, Target
from bench.scenarios.common import serve_env
from bench.seed import PendingLine, Seeded, seed

DESCRIPTION = "webhook on process A -> subscriber on process B (Redis between them)"
SUBSCRIPTION = (
    "subscription { phoneLineUpdates { eventId setup { id status phoneLineCount } "
    "phoneLine { id status phoneNumber assignedAt } } }"
)
RECEIVE_TIMEOUT_S = 5.0


async def wait_subscribers(server: ServerProcess, count: int, timeout_s: float = 30) -> None:
    async def probe() -> int:
        return int((await server.stats())["subscribers"])

    await poll_until(probe, lambda n: n >= count, timeout_s=timeout_s, what=f"{count} subscribers")


async def deliver_and_receive(
    conn: Connection, raw: bytes, sub: Subscription, line: PendingLine
) -> tuple[int, int]:
    """Send one delivery; (ns until the subscriber had the event, ns until the answer)."""
    clock = time.perf_counter_ns

    async def receive() -> int:
        payload = await sub.next_payload(RECEIVE_TIMEOUT_S)
        received = clock()
        got = payload["data"]["phoneLineUpdates"]["phoneLine"]["id"]
        if got != line.line_id:
            raise RuntimeError(f"expected an update of {line.line_id}, got {got}")
        return received

    waiter = asyncio.create_task(receive())
    started = clock()
    response = await conn.request(raw)
    answered = clock()
    if response.status != 200:
        waiter.cancel()
        raise RuntimeError(f"delivery answered {response.status}: {response.body[:200]!r}")
    received = await waiter
    return received - started, answered - started


async def measure_events(
    a: ServerProcess,
    sub: Subscription,
    seeded: Seeded,
    lines: list[PendingLine],
    first_number: int,
    *,
    with_baseline: bool,
) -> dict[str, list[int]]:
    rng = random.Random(7)
    conn = Connection(a.port)
    samples: dict[str, list[int]] = {"end_to_end": [], "webhook_answer": [], "baseline": []}
    try:
        for n, line in enumerate(lines):
            delivery = assignment(line, seeded.secret, first_number + n)
            if with_baseline:
                started = time.perf_counter_ns()
                base = await conn.request(delivery.request(a.port, VERIFY_BASELINE_PATH))
                if base.status != 200:
                    raise RuntimeError(f"baseline answered {base.status}")
                samples["baseline"].append(time.perf_counter_ns() - started)
            e2e, answer = await deliver_and_receive(conn, delivery.request(a.port), sub, line)
            samples["end_to_end"].append(e2e)
            samples["webhook_answer"].append(answer)
            # A little idle time between events, never in step with anything periodic.
            await asyncio.sleep(rng.uniform(0.001, 0.004))
    finally:
        await conn.close()
    return samples


async def run(ctx: RunContext) -> ScenarioResult:
    events = ctx.pick(200, 20)
    warmup = ctx.pick(20, 3)
    profiled = 100 if ctx.profile else 0
    result = ScenarioResult(
        "latency",
        ctx.smoke,
        DESCRIPTION,
        config={"events": events, "warmup_events": warmup, "processes": 2},
    )
    keyring = keyring_spec()
    async with throwaway_database() as database:
        seeded = await seed(
            database, keyring, setups=events + warmup + profiled + 5, lines_per_setup=1
        )
        extra = {"BENCH_BASELINE_SECRET": seeded.secret}
        specs: list[ServerSpec] = [
            ("api-a", serve_env(ctx, database, keyring, extra=extra), []),
            ("api-b", serve_env(ctx, database, keyring, extra=extra), []),
        ]
        async with running_servers(specs, ctx.log_dir) as [a, b]:
            sub = await open_subscription(b.base_url, seeded.api_key, SUBSCRIPTION)
            try:
                await wait_subscribers(b, 1)
                await asyncio.sleep(0.2)
                lines = seeded.pending
                await measure_events(a, sub, seeded, lines[:warmup], 0, with_baseline=True)
                samples = await measure_events(
                    a, sub, seeded, lines[warmup : warmup + events], warmup, with_baseline=True
                )
                profile: dict[str, Any] = {}
                if profiled:
                    async with ctx.profiling([a, b], "latency") as profile:
                        await measure_events(
                            a,
                            sub,
                            seeded,
                            lines[warmup + events : warmup + events + profiled],
                            warmup + events,
                            with_baseline=False,
                        )
            finally:
                await sub.ws.close()

    e2e = Summary.of_ns(samples["end_to_end"])
    answer = Summary.of_ns(samples["webhook_answer"])
    base = Summary.of_ns(samples["baseline"])
    result.add(
        Row(
            "webhook -> subscriber p50",
            e2e.p50,
            "ms",
            baseline=base.p50,
            baseline_label="verify-only round trip",
            target=Target("<=", 5),
            target_on="value",
        )
    )
    result.add(
        Row(
            "webhook -> subscriber p99",
            e2e.p99,
            "ms",
            baseline=base.p99,
            target=Target("<=", 15),
            target_on="value",
        )
    )
    result.add(Row("webhook -> subscriber max", e2e.max, "ms", baseline=base.max))
    result.add(Row("webhook answer p50", answer.p50, "ms", baseline=base.p50))
    result.details = {
        "end_to_end_ms": e2e.as_dict(),
        "webhook_answer_ms": answer.as_dict(),
        "baseline_ms": base.as_dict(),
        "profile": profile,
    }
    return result
