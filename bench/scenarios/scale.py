"""``scale``: does the work per request stay flat as the data grows?

A large database (100,000 setups, 300,000 lines, with the events and webhook deliveries
that history leaves) and an empty one, each behind its own server. Sequential requests,
interleaved so drift falls on both sides:

- the list: first page vs a deep page (keyset ``after`` near the end) on the large
  database; the first page with ``totalCount`` is reported too;
- webhook apply: one delivery at a time to the large database vs the empty one.
"""

from __future__ import annotations

import asyncio
import json
import random

from bench.clients import assignment, graphql_request
from bench.context import RunContext
from bench.infra import ServerSpec, keyring_spec, running_servers, throwaway_database
from bench.loadgen import Connection, timed
from bench.report import Row, ScenarioResult, Summary, Target
from bench.scenarios.common import serve_env
from bench.seed import scalar, seed

DESCRIPTION = "first vs deep list page, webhook apply on a large vs an empty database"
PAGE_QUERY = (
    "query Page($after: String) { imessageSetups(first: 50, after: $after) { edges { cursor "
    "node { id businessName label status phoneLineCount } } pageInfo { hasNextPage endCursor } } }"
)
COUNTED_QUERY = (
    "query { imessageSetups(first: 50) { totalCount edges { cursor "
    "node { id businessName label status phoneLineCount } } pageInfo { hasNextPage endCursor } } }"
)


def encode_cursor(setup_id: str) -> str:
    """The list's cursor format."""
    from blueline import readmodel
    from blueline.schema.arguments import encode_cursor as encode

    return encode(readmodel.SETUP_CONNECTION, setup_id)


async def run(ctx: RunContext) -> ScenarioResult:
    setups = ctx.pick(100_000, 2_000)
    lines_per_setup = 3
    requests = ctx.pick(300, 20)
    warmup = ctx.pick(30, 3)
    result = ScenarioResult(
        "scale",
        ctx.smoke,
        DESCRIPTION,
        config={
            "setups": setups,
            "lines": setups * lines_per_setup,
            "requests_per_kind": requests,
            "warmup_per_kind": warmup,
        },
    )
    keyring = keyring_spec()
    rng = random.Random(99)
    async with throwaway_database() as big_db, throwaway_database() as empty_db:
        big = await seed(
            big_db,
            keyring,
            setups=setups,
            lines_per_setup=lines_per_setup,
            assigned_per_setup=lines_per_setup - 1,
            history=True,
            progress=ctx.say if setups > 20_000 else lambda _m: None,
        )
        ctx.say(
            f"large database: {setups:,} setups, {setups * lines_per_setup:,} lines, "
            f"{big.events:,} events, {big.deliveries:,} deliveries in {big.seconds:.1f} s"
        )
        empty = await seed(empty_db, keyring, setups=requests + warmup + 5, lines_per_setup=1)
        table_mb = float(await scalar(big_db, "SELECT pg_database_size(current_database()) / 1e6"))
        # The deep page: the last full page of the keyset, newest first.
        deep_after = await scalar(
            big_db,
            "SELECT id FROM imessage_setup WHERE workspace_id = $1 AND state = 'ready' "
            "ORDER BY id DESC OFFSET $2 LIMIT 1",
            big.workspace_id,
            setups - 52,
        )
        specs: list[ServerSpec] = [
            ("api-large", serve_env(ctx, big_db, keyring), []),
            ("api-empty", serve_env(ctx, empty_db, keyring), []),
        ]
        async with running_servers(specs, ctx.log_dir) as [large, small]:
            first = graphql_request(large.port, big.api_key, PAGE_QUERY, {"after": None})
            deep = graphql_request(
                large.port, big.api_key, PAGE_QUERY, {"after": encode_cursor(str(deep_after))}
            )
            counted = graphql_request(large.port, big.api_key, COUNTED_QUERY)
            conn = Connection(large.port)
            for name, raw in (("first", first), ("deep", deep), ("counted", counted)):
                answer = json.loads((await conn.request(raw)).body)
                edges = answer.get("data", {}).get("imessageSetups", {}).get("edges", [])
                if len(edges) != 50:
                    raise RuntimeError(f"{name} page has {len(edges)} rows: {answer}")
            list_samples: dict[str, list[int]] = {"first": [], "deep": [], "counted": []}
            schedule = [("first", first), ("deep", deep), ("counted", counted)]
            for i in range(warmup + requests):
                rng.shuffle(schedule)
                for name, raw in schedule:
                    took, response = await timed(conn, raw)
                    if response.status != 200:
                        raise RuntimeError(f"{name} page answered {response.status}")
                    if i >= warmup:
                        list_samples[name].append(took)
            await conn.close()
            ctx.say("list pages measured")

            apply_samples: dict[str, list[int]] = {"large": [], "empty": []}
            targets = {
                "large": (
                    large,
                    Connection(large.port),
                    big,
                    rng.sample(big.pending, warmup + requests),
                ),
                "empty": (small, Connection(small.port), empty, empty.pending[: warmup + requests]),
            }
            order = ["large", "empty"]
            for i in range(warmup + requests):
                rng.shuffle(order)
                for name in order:
                    server, c, seeded, pending = targets[name]
                    raw = assignment(pending[i], seeded.secret, i).request(server.port)
                    took, response = await timed(c, raw)
                    if response.status != 200:
                        raise RuntimeError(f"apply on {name} answered {response.status}")
                    if i >= warmup:
                        apply_samples[name].append(took)
                    await asyncio.sleep(0.002)
            for _, c, _, _ in targets.values():
                await c.close()

    first_s, deep_s, counted_s = (
        Summary.of_ns(list_samples[k]) for k in ("first", "deep", "counted")
    )
    large_s, empty_s = Summary.of_ns(apply_samples["large"]), Summary.of_ns(apply_samples["empty"])
    result.add(
        Row(
            "list: deep page p50",
            deep_s.p50,
            "ms",
            baseline=first_s.p50,
            baseline_label="first page",
            target=Target("<=", 1.5),
        )
    )
    result.add(Row("list: deep page p99", deep_s.p99, "ms", baseline=first_s.p99))
    result.add(
        Row(
            "list: first page with totalCount p50",
            counted_s.p50,
            "ms",
            baseline=first_s.p50,
            baseline_label="first page",
        )
    )
    result.add(
        Row(
            "webhook apply p50, large database",
            large_s.p50,
            "ms",
            baseline=empty_s.p50,
            baseline_label="empty database",
            target=Target("<=", 1.5),
        )
    )
    result.add(Row("webhook apply p99, large database", large_s.p99, "ms", baseline=empty_s.p99))
    result.details = {
        "database_mb": round(table_mb, 1),
        "seed_seconds": round(big.seconds, 1),
        "events": big.events,
        "webhook_deliveries": big.deliveries,
        "list_ms": {
            "first": first_s.as_dict(),
            "deep": deep_s.as_dict(),
            "counted": counted_s.as_dict(),
        },
        "apply_ms": {"large": large_s.as_dict(), "empty": empty_s.as_dict()},
    }
    result.notes.append(
        "the webhook-apply bound (≤ 1.5 times the empty database) is this benchmark's own choice"
    )
    return result
