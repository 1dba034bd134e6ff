"""``webhook``: verified line assignments per second, end to end, against a route in the
same server that only verifies the signature.

Every delivery is a distinct ``line.assigned`` for a pending line (its own request id
and webhook id), so each one really goes through verify, dedupe, apply and the outbox.
The baseline (``/bench/webhook-verify``) receives the same signed bodies and runs
``signature.verify`` and ``json.loads`` only.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.clients import VERIFY_BASELINE_PATH, assignment, interleave_by_setup
from bench.context import RunContext, poll_until
from bench.infra import keyring_spec, running_servers, throwaway_database
from bench.loadgen import LoadResult, closed_loop
from bench.report import Row, ScenarioResult, Target
from bench.scenarios.common import alternate, serve_env
from bench.seed import scalar, seed

DESCRIPTION = "verified webhook deliveries/s end to end vs a verify-only route"
WEBHOOK_ROUTE = "/webhooks/imessage"


def per_delivery(
    before: dict[str, Any], after: dict[str, Any], kind: str = "statements"
) -> tuple[float, float]:
    """Statements per webhook request, and background (relay) statements per request.

    The background count also holds the relay's idle polls during baseline phases (a few
    statements every ``relay_poll_interval_s``), a small overcount.
    """

    def delta(kind: str, label: str) -> int:
        return int(after[kind].get(label, 0)) - int(before[kind].get(label, 0))

    requests = delta("requests", WEBHOOK_ROUTE)
    if not requests:
        return float("nan"), float("nan")
    return (
        delta(kind, WEBHOOK_ROUTE) / requests,
        delta(kind, "background") / requests,
    )


async def run(ctx: RunContext) -> ScenarioResult:
    # Enough pending lines for 3,000 deliveries/s through every phase, the profiled one
    # included: a phase that runs out measures less than its full length.
    setups = ctx.pick(7_500 if ctx.profile else 5_000, 40)
    lines_per_setup = ctx.pick(12, 6)
    connections = ctx.pick(16, 4)
    rounds = ctx.pick(2, 1)
    phase_s = ctx.pick(8.0, 0.5)
    warmup_s = ctx.pick(1.5, 0.2)
    result = ScenarioResult(
        "webhook",
        ctx.smoke,
        DESCRIPTION,
        config={
            "pending_lines": setups * lines_per_setup,
            "setups": setups,
            "connections": connections,
            "rounds": rounds,
            "phase_s": phase_s,
            "warmup_s": warmup_s,
            "rate_limits": "on, at 1e9/s (never reached)",
        },
    )
    keyring = keyring_spec()
    async with throwaway_database() as database:
        seeded = await seed(database, keyring, setups=setups, lines_per_setup=lines_per_setup)
        ctx.say(f"seeded {len(seeded.pending):,} pending lines in {seeded.seconds:.1f} s")
        env = serve_env(
            ctx,
            database,
            keyring,
            extra={"BENCH_BASELINE_SECRET": seeded.secret},
        )
        async with running_servers([("api", env, [])], ctx.log_dir) as [server]:
            port = server.port
            # Signed now: the whole run stays well inside the 300 s tolerance.
            deliveries = [
                assignment(line, seeded.secret, n)
                for n, line in enumerate(interleave_by_setup(seeded.pending))
            ]
            real_source = iter([d.request(port) for d in deliveries])
            baseline_requests = [d.request(port, VERIFY_BASELINE_PATH) for d in deliveries[:2000]]
            # At most this many baseline requests per phase (bounds the loop by count).
            baseline_cap = int(60_000 * max(phase_s, warmup_s))

            def phase(kind: str, seconds: float) -> Callable[[], Awaitable[LoadResult]]:
                async def go() -> LoadResult:
                    source = (
                        real_source
                        if kind == "blueline"
                        else itertools.islice(itertools.cycle(baseline_requests), baseline_cap)
                    )
                    return await closed_loop(
                        port, source, connections=connections, duration_s=seconds
                    )

                return go

            stats_before = await server.stats()
            measured = await alternate(
                ctx,
                {"blueline": phase("blueline", phase_s), "baseline": phase("baseline", phase_s)},
                rounds=rounds,
                server=server,
                warmup={
                    "baseline": phase("baseline", warmup_s),
                    "blueline": phase("blueline", warmup_s),
                },
            )
            stats_after = await server.stats()
            end_of_load = time.perf_counter()
            unpublished_at_end = int(await scalar(database, "SELECT count(*) FROM event_outbox"))
            drained = await poll_until(
                lambda: scalar(database, "SELECT count(*) FROM event_outbox"),
                lambda n: int(n) == 0,
                timeout_s=30,
                what="outbox drained",
            )
            drain_s = time.perf_counter() - end_of_load
            profile: dict[str, object] = {}
            if ctx.profile:
                async with ctx.profiling([server], "webhook") as profile:
                    await phase("blueline", phase_s)()
                    await asyncio.sleep(0.2)
            assigned = int(
                await scalar(database, "SELECT count(*) FROM phone_line WHERE status = 'ASSIGNED'")
            )
            events = int(await scalar(database, "SELECT count(*) FROM event"))
            deliveries_recorded = int(
                await scalar(database, "SELECT count(*) FROM webhook_delivery")
            )

    real, base = measured["blueline"], measured["baseline"]
    result.add(
        Row(
            "deliveries/s",
            real.load.rate,
            "/s",
            baseline=base.load.rate,
            baseline_label="verify only",
            target=Target(">=", 0.35),
        )
    )
    real_lat, base_lat = real.latency, base.latency
    result.add(Row("latency p50", real_lat.p50, "ms", baseline=base_lat.p50))
    result.add(Row("latency p99", real_lat.p99, "ms", baseline=base_lat.p99))
    result.add(
        Row("server CPU", real.cpu_mean("server"), "cores", baseline=base.cpu_mean("server"))
    )
    result.add(
        Row(
            "server CPU per request",
            real.cpu_ms_per_request(),
            "ms",
            baseline=base.cpu_ms_per_request(),
        )
    )
    result.add(
        Row(
            "database CPU per request",
            real.cpu_ms_per_request("database"),
            "ms",
            baseline=base.cpu_ms_per_request("database"),
        )
    )
    in_request, in_background = per_delivery(stats_before, stats_after)
    result.add(Row("SQL statements/delivery, in the request", in_request, ""))
    result.add(Row("SQL statements/delivery, in the relay", in_background, ""))
    in_request, in_background = per_delivery(stats_before, stats_after, "checkouts")
    result.add(Row("pool checkouts/delivery, in the request", in_request, ""))
    result.add(Row("pool checkouts/delivery, in the relay", in_background, ""))
    result.add(
        Row("client CPU", real.cpu_mean("client"), "cores", baseline=base.cpu_mean("client"))
    )
    result.details = {
        "blueline": real.details(),
        "baseline": base.details(),
        "database_after": {
            "lines_assigned": assigned,
            "events": events,
            "webhook_deliveries": deliveries_recorded,
            "unpublished_events_at_end_of_load": unpublished_at_end,
            "outbox_drain_s": round(drain_s, 3),
            "unpublished_after_drain": int(drained),
        },
        "profile": profile,
    }
    if real.load.exhausted:
        result.notes.append("pending lines ran out during a phase: seed more for this machine")
    non_ok = sum(v for k, v in real.load.statuses.items() if k != 200) + real.load.errors
    if non_ok:
        result.notes.append(f"{non_ok} deliveries were not answered 200")
    return result
