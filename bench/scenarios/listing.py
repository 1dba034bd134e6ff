"""``list``: the list view over GraphQL against a plain JSON route running the same SQL.

GraphQL: ``imessageSetups(first: 50) { edges { node { id businessName label status
phoneLineCount } } }`` with an API key. Baseline: ``GET /bench/list`` in the same server,
which authenticates the same key and runs ``queries.list_setups`` (the resolver's
query), answering the same JSON. Both answers are compared before the load starts.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from bench.clients import graphql_request
from bench.context import RunContext
from bench.infra import keyring_spec, running_servers, throwaway_database
from bench.loadgen import Connection, LoadResult, closed_loop, encode_request
from bench.report import Row, ScenarioResult, Target
from bench.scenarios.common import alternate, serve_env
from bench.seed import seed, workspace_with_key

DESCRIPTION = "GraphQL list of 50 setups vs a plain JSON route running the same SQL"
LIST_QUERY = (
    "query { imessageSetups(first: 50) { edges { node "
    "{ id businessName label status phoneLineCount } } } }"
)
GRAPHQL_ROUTE = "/graphql"
BASELINE_ROUTE = "/bench/list"


async def statements_per_request(
    conn: Connection, raw: bytes, route: str, count: int, stats: Callable[[], Awaitable[Any]]
) -> tuple[float, float]:
    """(SQL statements, pool checkouts) per request of ``route``, one at a time."""

    async def one_by_one() -> None:
        for _ in range(count):
            response = await conn.request(raw)
            if response.status != 200:
                raise RuntimeError(f"{route} answered {response.status}: {response.body[:200]!r}")

    return await statements_while(one_by_one(), route, stats)


async def statements_while(
    load: Awaitable[Any], route: str, stats: Callable[[], Awaitable[Any]]
) -> tuple[float, float]:
    """(SQL statements, pool checkouts) per request of ``route`` while ``load`` runs."""
    before = await stats()
    await load
    after = await stats()
    requests = after["requests"].get(route, 0) - before["requests"].get(route, 0)
    if not requests:
        return float("nan"), float("nan")
    statements = after["statements"].get(route, 0) - before["statements"].get(route, 0)
    checkouts = after["checkouts"].get(route, 0) - before["checkouts"].get(route, 0)
    return statements / requests, checkouts / requests


async def run(ctx: RunContext) -> ScenarioResult:
    setups = ctx.pick(300, 60)
    connections = ctx.pick(16, 4)
    rounds = ctx.pick(2, 1)
    phase_s = ctx.pick(6.0, 0.5)
    warmup_s = ctx.pick(1.0, 0.2)
    sql_sample = ctx.pick(50, 5)
    result = ScenarioResult(
        "list",
        ctx.smoke,
        DESCRIPTION,
        config={
            "setups": setups,
            "page": 50,
            "connections": connections,
            "rounds": rounds,
            "phase_s": phase_s,
            "query": LIST_QUERY,
        },
    )
    keyring = keyring_spec()
    async with throwaway_database() as database:
        workspace = await workspace_with_key(database)
        # Half pending with one line, half active with three (one assigned).
        await seed(database, keyring, setups=setups // 2, lines_per_setup=1, workspace=workspace)
        await seed(
            database,
            keyring,
            setups=setups - setups // 2,
            lines_per_setup=3,
            assigned_per_setup=1,
            workspace=workspace,
        )
        api_key = workspace[1]
        env = serve_env(ctx, database, keyring)
        async with running_servers([("api", env, [])], ctx.log_dir) as [server]:
            port = server.port
            gql = graphql_request(port, api_key, LIST_QUERY)
            plain = encode_request(
                "GET", BASELINE_ROUTE + "?first=50", port, {"authorization": f"Bearer {api_key}"}
            )
            conn = Connection(port)
            gql_answer = json.loads((await conn.request(gql)).body)
            plain_answer = json.loads((await conn.request(plain)).body)
            if gql_answer != plain_answer:
                raise RuntimeError("the baseline does not answer what GraphQL answers")
            rows_returned = len(gql_answer["data"]["imessageSetups"]["edges"])
            sql_graphql = await statements_per_request(
                conn, gql, GRAPHQL_ROUTE, sql_sample, server.stats
            )
            sql_plain = await statements_per_request(
                conn, plain, BASELINE_ROUTE, sql_sample, server.stats
            )
            await conn.close()
            cap = int(60_000 * max(phase_s, warmup_s))

            def phase(raw: bytes, seconds: float) -> Callable[[], Awaitable[LoadResult]]:
                async def go() -> LoadResult:
                    return await closed_loop(
                        port,
                        itertools.repeat(raw, cap),
                        connections=connections,
                        duration_s=seconds,
                    )

                return go

            measured = await alternate(
                ctx,
                {"graphql": phase(gql, phase_s), "baseline": phase(plain, phase_s)},
                rounds=rounds,
                server=server,
                warmup={"baseline": phase(plain, warmup_s), "graphql": phase(gql, warmup_s)},
            )
            profile: dict[str, Any] = {}
            if ctx.profile:
                async with ctx.profiling([server], "list") as profile:
                    await phase(gql, phase_s)()

    real, base = measured["graphql"], measured["baseline"]
    result.add(
        Row(
            "requests/s",
            real.load.rate,
            "/s",
            baseline=base.load.rate,
            baseline_label="same SQL, plain JSON",
            target=Target(">=", 0.5),
        )
    )
    result.add(Row("latency p50", real.latency.p50, "ms", baseline=base.latency.p50))
    result.add(Row("latency p99", real.latency.p99, "ms", baseline=base.latency.p99))
    result.add(Row("SQL statements/request", sql_graphql[0], "", baseline=sql_plain[0]))
    result.add(Row("pool checkouts/request", sql_graphql[1], "", baseline=sql_plain[1]))
    result.add(
        Row("server CPU", real.cpu_mean("server"), "cores", baseline=base.cpu_mean("server"))
    )
    result.add(
        Row(
            "server CPU ms/request",
            1000 * real.cpu_mean("server") / real.load.rate if real.load.rate else float("nan"),
            "ms",
            baseline=1000 * base.cpu_mean("server") / base.load.rate
            if base.load.rate
            else float("nan"),
        )
    )
    result.details = {
        "graphql": real.details(),
        "baseline": base.details(),
        "rows_per_answer": rows_returned,
        "profile": profile,
    }
    return result
