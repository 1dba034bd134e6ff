"""``create``: what ``createImessageSetup`` costs beyond the provider's own answer.

The provider simulator runs in a process of its own (``blueline sandbox-provider``), as
a real provider would, and one Blueline server is configured against it. Each round
sends, in alternating order on keep-alive connections, one ``createImessageSetup``
mutation to Blueline and the same ``POST /v1/subaccounts`` Blueline itself makes,
straight to the provider. The difference of the medians is Blueline's own time: the
write-ahead claim, the completion with its encrypted credentials, journal, audit and
publish, GraphQL parsing and the answer.

Two of those writes must be durable before the answer: the claim (before the provider
is called, so recovery can finish a create a crash interrupted) and the completion
(before the client is told). Each round also times one durable commit of a one-row
insert on the same PostgreSQL, so the report can say how much of the overhead is the
disk's flush and how much is Blueline.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import asyncpg
import httpx

from bench.clients import graphql_request
from bench.context import RunContext
from bench.infra import (
    HOST,
    SandboxProcess,
    ServerSpec,
    cpu_seconds,
    free_port,
    keyring_spec,
    running_servers,
    sandbox_env,
    throwaway_database,
)
from bench.loadgen import Connection, encode_request
from bench.report import Row, ScenarioResult, Summary, Target
from bench.scenarios.common import serve_env
from bench.seed import workspace_with_key
from blueline.settings import SANDBOX_PARTNER_KEY

DURABLE_COMMITS = 2  # the claim and the completion
DESCRIPTION = "createImessageSetup beyond the provider's own answer (provider in its own process)"
MUTATION = (
    "mutation($input: CreateImessageSetupInput!) { createImessageSetup(input: $input) "
    "{ setup { id status phoneLineCount phoneLines { id status phoneNumber } } "
    "userErrors { code message } } }"
)


def provider_request(port: int, webhook_base: str) -> bytes:
    external_id = f"ims_{uuid.uuid4().hex[:26]}"
    body = json.dumps(
        {
            "business_name": "Northwind Dental",
            "external_id": external_id,
            "webhook_url": f"{webhook_base}/webhooks/imessage/{external_id}",
        }
    ).encode()
    headers = {
        "authorization": f"Bearer {SANDBOX_PARTNER_KEY}",
        "content-type": "application/json",
        "accept": "application/json",
    }
    return encode_request("POST", "/v1/subaccounts", port, headers, body)


async def timed(conn: Connection, raw: bytes, expect: int) -> int:
    started = time.perf_counter_ns()
    response = await conn.request(raw)
    elapsed = time.perf_counter_ns() - started
    if response.status != expect:
        raise RuntimeError(f"answered {response.status}: {response.body[:300]!r}")
    return elapsed


async def durable_commit(conn: asyncpg.Connection) -> int:
    started = time.perf_counter_ns()
    async with conn.transaction():
        await conn.execute("INSERT INTO bench_commit_probe VALUES (1)")
    return time.perf_counter_ns() - started


async def run(ctx: RunContext) -> ScenarioResult:
    rounds = ctx.pick(300, 10)
    warmup = ctx.pick(30, 3)
    result = ScenarioResult("create", ctx.smoke, DESCRIPTION, config={"rounds": rounds})
    keyring = keyring_spec()
    profile: dict[str, Any] = {}
    sandbox_port = free_port()
    async with throwaway_database() as database:
        _workspace, api_key = await workspace_with_key(database)
        async with running_servers(
            [("sandbox", sandbox_env(sandbox_port), [])], ctx.log_dir, SandboxProcess
        ):
            async with httpx.AsyncClient(trust_env=False) as client:
                # Lines stay pending: no webhook traffic competes with the creations.
                configured = await client.put(
                    f"http://{HOST}:{sandbox_port}/sandbox/config",
                    json={"deliver_webhooks": False, "auto_assign_after_s": None},
                )
                configured.raise_for_status()
            extra = {"BLUELINE_PROVIDER_URL": f"http://{HOST}:{sandbox_port}"}
            specs: list[ServerSpec] = [("api", serve_env(ctx, database, keyring, extra=extra), [])]
            async with running_servers(specs, ctx.log_dir) as [api]:
                blueline = Connection(api.port)
                provider = Connection(sandbox_port)
                probe = await asyncpg.connect(database.dsn)
                await probe.execute("CREATE TABLE bench_commit_probe (x int)")
                samples: dict[str, list[int]] = {"create": [], "provider": [], "commit": []}
                profiled = 200 if ctx.profile else 0
                try:
                    for n in range(warmup + rounds + profiled):
                        if n == warmup:
                            cpu_started = cpu_seconds(api.pid)
                        if n == warmup + rounds:
                            server_cpu_s = cpu_seconds(api.pid) - cpu_started
                            profiling = ctx.profiling([api], "create")
                            profile = await profiling.__aenter__()
                        create = graphql_request(
                            api.port,
                            api_key,
                            MUTATION,
                            {"input": {"businessName": "Northwind Dental", "label": f"site {n}"}},
                        )
                        direct = provider_request(sandbox_port, api.base_url)
                        pair = [
                            ("create", blueline, create, 200),
                            ("provider", provider, direct, 201),
                        ]
                        for name, conn, raw, status in pair if n % 2 == 0 else reversed(pair):
                            elapsed = await timed(conn, raw, status)
                            if warmup <= n < warmup + rounds:
                                samples[name].append(elapsed)
                        commit = await durable_commit(probe)
                        if warmup <= n < warmup + rounds:
                            samples["commit"].append(commit)
                    if profiled:
                        await profiling.__aexit__(None, None, None)
                    else:
                        server_cpu_s = cpu_seconds(api.pid) - cpu_started
                    # Every creation really went through: a failed one would answer 200
                    # with a user error, and be as fast as a refusal.
                    check = await blueline.request(
                        graphql_request(
                            api.port, api_key, "{ imessageSetups(first: 1) { totalCount } }"
                        )
                    )
                    total = json.loads(check.body)["data"]["imessageSetups"]["totalCount"]
                    if total != warmup + rounds + profiled:
                        raise RuntimeError(f"{total} setups for {warmup + rounds} creations")
                finally:
                    await blueline.close()
                    await provider.close()
                    await probe.close()

    create_ms = Summary.of_ns(samples["create"])
    provider_ms = Summary.of_ns(samples["provider"])
    commit_ms = Summary.of_ns(samples["commit"])
    beyond = create_ms.p50 - provider_ms.p50
    result.add(
        Row(
            "createImessageSetup beyond the provider, p50",
            beyond,
            "ms",
            baseline=provider_ms.p50,
            baseline_label="provider's own answer p50",
            target=Target("<=", 5),
            target_on="value",
        )
    )
    result.add(
        Row(
            f"  of which {DURABLE_COMMITS} durable commits (p50 each)",
            DURABLE_COMMITS * commit_ms.p50,
            "ms",
            baseline=commit_ms.p50,
            baseline_label="one-row durable commit p50",
        )
    )
    result.add(
        Row(
            "  beyond the provider and the durable commits",
            beyond - DURABLE_COMMITS * commit_ms.p50,
            "ms",
        )
    )
    result.add(
        Row(
            "server CPU per createImessageSetup",
            server_cpu_s / rounds * 1000,
            "ms",
        )
    )
    result.add(Row("createImessageSetup p50", create_ms.p50, "ms", baseline=provider_ms.p50))
    result.add(Row("createImessageSetup p99", create_ms.p99, "ms", baseline=provider_ms.p99))
    result.details = {
        "create_ms": create_ms.as_dict(),
        "provider_ms": provider_ms.as_dict(),
        "durable_commit_ms": commit_ms.as_dict(),
        "profile": profile,
    }
    return result
