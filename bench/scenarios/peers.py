"""``peers``: Blueline's reads against PostGraphile v4 and v5 serving the same tables.

One database, one workspace of READY setups, one of them with 10 lines. Three servers
read it: Blueline (``python -m bench.server``, one uvicorn worker, with an API key) and
PostGraphile v4 and v5 (``bench.peers``, one Node process each, no authentication).
Each answers three queries, written for each server to read the same rows and columns:

- ``list``: the 50 newest setups of the workspace with their line counts;
- ``detail``: one setup by primary key, its 10 lines and their count;
- ``node``: the same setup through the Node interface's global id.

Every answer is checked against the rows read straight from PostgreSQL before any
load. Then, per query, closed loops against each server in alternating order (A B C
C B A …) after a warm-up of each; Blueline's rate is reported as a ratio to the faster
peer's.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from bench.clients import graphql_request
from bench.context import RunContext
from bench.infra import BenchDatabase, CpuMeter, keyring_spec, running_servers, throwaway_database
from bench.loadgen import Connection, LoadResult, Response, closed_loop, encode_request
from bench.peers import PEERS, require_packages, running_peers, versions
from bench.report import Row, ScenarioResult, Summary, Target
from bench.scenarios.common import Measured, serve_env
from bench.scenarios.listing import statements_per_request, statements_while
from bench.seed import seed, workspace_with_key

DESCRIPTION = "Blueline's list, detail and node reads vs PostGraphile v4 and v5 on the same tables"
QUERIES = ("list", "detail", "node")
BLUELINE = "blueline"
PAGE = 50
DETAIL_LINES = 10
GRAPHQL_ROUTE = "/graphql"

BLUELINE_QUERIES = {
    "list": (
        "query { imessageSetups(first: 50) { edges { node "
        "{ id businessName label status phoneLineCount } } } }"
    ),
    "detail": (
        "query($id: ID!) { imessageSetup(id: $id) { id businessName label status "
        "phoneLineCount phoneLines { id status phoneNumber requestId requestedAt assignedAt } } }"
    ),
    "node": (
        "query($id: ID!) { node(id: $id) { id "
        "... on IMessageSetup { businessName label status } } }"
    ),
}


@dataclass(frozen=True)
class PeerDialect:
    """How one PostGraphile release spells the same reads.

    v5's amber preset renames an ``id`` column to ``rowId`` (``id`` is the global node
    id there), where v4 keeps ``id`` and calls the global id ``nodeId``.
    """

    row_id: str
    node_id: str
    order_desc: str
    line_order: str
    by_pk: str
    node_arg: str

    def list_query(self) -> str:
        return (
            f"query($ws: String!) {{ allImessageSetups(first: {PAGE}, orderBy: {self.order_desc}, "
            'condition: {workspaceId: $ws, state: "ready"}) { edges { node '
            f"{{ {self.row_id} businessName label status "
            "phoneLinesBySetupId { totalCount } } } } }"
        )

    def detail_query(self) -> str:
        return (
            f"query($id: String!) {{ {self.by_pk}({self.row_id}: $id) {{ {self.row_id} "
            f"businessName label status phoneLinesBySetupId(orderBy: {self.line_order}) "
            f"{{ totalCount nodes {{ {self.row_id} status phoneNumber requestId requestedAt "
            "assignedAt } } } }"
        )

    def node_id_query(self) -> str:
        return f"query($id: String!) {{ {self.by_pk}({self.row_id}: $id) {{ {self.node_id} }} }}"

    def node_query(self) -> str:
        return (
            f"query($id: ID!) {{ node({self.node_arg}: $id) {{ {self.node_id} "
            "... on ImessageSetup { businessName label status } } }"
        )


DIALECTS = {
    "v4": PeerDialect(
        row_id="id",
        node_id="nodeId",
        order_desc="ID_DESC",
        line_order="ID_ASC",
        by_pk="imessageSetupById",
        node_arg="nodeId",
    ),
    "v5": PeerDialect(
        row_id="rowId",
        node_id="id",
        order_desc="ROW_ID_DESC",
        line_order="ROW_ID_ASC",
        by_pk="imessageSetupByRowId",
        node_arg="id",
    ),
}


# ----------------------------------------------------------------------- expected rows


def _line(
    row_id: Any,
    status: Any,
    number: Any,
    request_id: Any,
    requested: Any,
    assigned: Any,
) -> tuple[Any, ...]:
    # Blueline shows a line's request id only while it is pending; the peers show the
    # column as stored. The row read is the same.
    return (
        row_id,
        status,
        number,
        request_id if status == "PENDING" else None,
        _instant(requested),
        _instant(assigned),
    )


def _instant(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


async def expected_rows(
    database: BenchDatabase, workspace_id: str, detail_id: str
) -> dict[str, Any]:
    conn = await asyncpg.connect(database.dsn)
    try:
        listed = await conn.fetch(
            "SELECT s.id, s.business_name, s.label, s.status,"
            " (SELECT count(*) FROM phone_line l WHERE l.setup_id = s.id) AS n"
            " FROM imessage_setup s WHERE s.workspace_id = $1 AND s.state = 'ready'"
            " ORDER BY s.id DESC LIMIT $2",
            workspace_id,
            PAGE,
        )
        setup = await conn.fetchrow(
            "SELECT id, business_name, label, status FROM imessage_setup WHERE id = $1", detail_id
        )
        lines = await conn.fetch(
            "SELECT id, status, phone_number, request_id, requested_at, assigned_at"
            " FROM phone_line WHERE setup_id = $1 ORDER BY id",
            detail_id,
        )
    finally:
        await conn.close()
    head = (setup["id"], setup["business_name"], setup["label"], setup["status"])
    return {
        "list": [tuple(r) for r in listed],
        "detail": (*head, len(lines), [_line(*line) for line in lines]),
        "node": head,
    }


def _data(response: Response, who: str, query: str) -> dict[str, Any]:
    if response.status != 200:
        raise RuntimeError(f"{who} {query}: HTTP {response.status}: {response.body[:300]!r}")
    document = json.loads(response.body)
    if document.get("errors") or not isinstance(document.get("data"), dict):
        raise RuntimeError(f"{who} {query}: {json.dumps(document)[:500]}")
    data: dict[str, Any] = document["data"]
    return data


def _decoded_node_id(node_id: str) -> str:
    """The row id inside a PostGraphile global id (base64 of ``["Type", id]``)."""
    try:
        decoded = json.loads(base64.b64decode(node_id))
    except (binascii.Error, ValueError) as exc:
        raise RuntimeError(f"not a PostGraphile node id: {node_id!r}") from exc
    return str(decoded[-1])


def blueline_rows(query: str, data: dict[str, Any]) -> Any:
    if query == "list":
        return [
            (n["id"], n["businessName"], n["label"], n["status"], n["phoneLineCount"])
            for n in (e["node"] for e in data["imessageSetups"]["edges"])
        ]
    if query == "detail":
        s = data["imessageSetup"]
        lines = [
            _line(
                x["id"],
                x["status"],
                x["phoneNumber"],
                x["requestId"],
                x["requestedAt"],
                x["assignedAt"],
            )
            for x in s["phoneLines"]
        ]
        return (s["id"], s["businessName"], s["label"], s["status"], s["phoneLineCount"], lines)
    n = data["node"]
    return (n["id"], n["businessName"], n["label"], n["status"])


def peer_rows(dialect: PeerDialect, query: str, data: dict[str, Any]) -> Any:
    rid = dialect.row_id
    if query == "list":
        return [
            (
                n[rid],
                n["businessName"],
                n["label"],
                n["status"],
                n["phoneLinesBySetupId"]["totalCount"],
            )
            for n in (e["node"] for e in data["allImessageSetups"]["edges"])
        ]
    if query == "detail":
        s = data[dialect.by_pk]
        related = s["phoneLinesBySetupId"]
        lines = [
            _line(
                x[rid],
                x["status"],
                x["phoneNumber"],
                x["requestId"],
                x["requestedAt"],
                x["assignedAt"],
            )
            for x in related["nodes"]
        ]
        return (s[rid], s["businessName"], s["label"], s["status"], related["totalCount"], lines)
    n = data["node"]
    return (_decoded_node_id(n[dialect.node_id]), n["businessName"], n["label"], n["status"])


# ----------------------------------------------------------------------- requests


def peer_request(port: int, query: str, variables: dict[str, Any]) -> bytes:
    body = json.dumps({"query": query, "variables": variables}).encode()
    return encode_request("POST", "/graphql", port, {"content-type": "application/json"}, body)


@dataclass
class Server:
    """One server under load: its display name, process, and the request per query."""

    label: str
    pid: int
    port: int
    requests: dict[str, bytes]


async def _fetch(port: int, raw: bytes) -> Response:
    conn = Connection(port)
    try:
        return await conn.request(raw)
    finally:
        await conn.close()


# ----------------------------------------------------------------------- load


Phase = Callable[[], Awaitable[LoadResult]]


async def alternate_servers(
    ctx: RunContext,
    query: str,
    phases: dict[str, tuple[Phase, int]],
    warmups: dict[str, Phase],
    *,
    rounds: int,
) -> dict[str, Measured]:
    """``common.alternate`` for phases that each load a different process: every phase
    meters the CPU of its own server. Warm-ups first (discarded), then the servers in
    A B C, C B A, … order, so drift on a shared machine falls on all of them."""
    for name, warm in warmups.items():
        ctx.say(f"{query} warm-up: {name}")
        await warm()
    measured = {name: Measured() for name in phases}
    order = list(phases)
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            phase, pid = phases[name]
            meter = CpuMeter({"server": pid, "client": os.getpid()}, database=True)
            meter.start()
            result = await phase()
            cpu = meter.stop()
            measured[name].add(result, cpu)
            ctx.say(
                f"{query} round {r + 1}/{rounds} {name}: {result.rate:,.0f}/s, "
                f"p50 {Summary.of_ns(result.latencies_ns).p50:.2f} ms, "
                f"statuses {dict(result.statuses)}, cpu {cpu}"
            )
    return measured


async def run(ctx: RunContext) -> ScenarioResult:
    versions_found = require_packages()  # before a database is made for nothing
    setups = ctx.pick(200, 60)
    connections = ctx.pick(16, 4)
    rounds = ctx.pick(4, 1)
    phase_s = ctx.pick(3.0, 0.4)
    warmup_s = ctx.pick(2.0, 0.25)
    sql_sample = ctx.pick(50, 5)
    peer_versions = dict(versions())
    result = ScenarioResult(
        "peers",
        ctx.smoke,
        DESCRIPTION,
        config={
            "setups": setups,
            "detail_lines": DETAIL_LINES,
            "page": PAGE,
            "connections": connections,
            "rounds": rounds,
            "phase_s": phase_s,
            "warmup_s": warmup_s,
            "peer_pool_max": connections,
            "versions": peer_versions,
            "packages": versions_found,
            "queries": {
                BLUELINE: BLUELINE_QUERIES,
                **{
                    key: {
                        "list": d.list_query(),
                        "detail": d.detail_query(),
                        "node": d.node_query(),
                    }
                    for key, d in DIALECTS.items()
                },
            },
        },
    )
    keyring = keyring_spec()
    async with throwaway_database() as database:
        workspace_id, api_key = workspace = await workspace_with_key(database)
        await seed(
            database,
            keyring,
            setups=setups - 1,
            lines_per_setup=2,
            assigned_per_setup=1,
            workspace=workspace,
        )
        # Seeded last, so it is the newest and also heads the list.
        detail = await seed(
            database,
            keyring,
            setups=1,
            lines_per_setup=DETAIL_LINES,
            assigned_per_setup=DETAIL_LINES // 2,
            workspace=workspace,
        )
        detail_id = detail.setup_ids[0]
        expected = await expected_rows(database, workspace_id, detail_id)
        if len(expected["list"]) != PAGE or len(expected["detail"][5]) != DETAIL_LINES:
            raise RuntimeError("the seeded rows are not what the scenario reads")

        env = serve_env(ctx, database, keyring)
        async with (
            running_servers([("api", env, [])], ctx.log_dir) as [server],
            running_peers(database.dsn, ctx.log_dir, pool_max=connections) as peers,
        ):
            targets: dict[str, Server] = {
                BLUELINE: Server(
                    "Blueline",
                    server.pid,
                    server.port,
                    {
                        "list": graphql_request(server.port, api_key, BLUELINE_QUERIES["list"]),
                        "detail": graphql_request(
                            server.port, api_key, BLUELINE_QUERIES["detail"], {"id": detail_id}
                        ),
                        "node": graphql_request(
                            server.port, api_key, BLUELINE_QUERIES["node"], {"id": detail_id}
                        ),
                    },
                )
            }
            for key, peer in peers.items():
                dialect = DIALECTS[key]
                lookup = _data(
                    await _fetch(
                        peer.port,
                        peer_request(peer.port, dialect.node_id_query(), {"id": detail_id}),
                    ),
                    peer.name,
                    "node id",
                )
                node_id = lookup[dialect.by_pk][dialect.node_id]
                targets[key] = Server(
                    PEERS[key].label,
                    peer.pid,
                    peer.port,
                    {
                        "list": peer_request(peer.port, dialect.list_query(), {"ws": workspace_id}),
                        "detail": peer_request(
                            peer.port, dialect.detail_query(), {"id": detail_id}
                        ),
                        "node": peer_request(peer.port, dialect.node_query(), {"id": node_id}),
                    },
                )

            answer_bytes: dict[str, dict[str, int]] = {}
            for name, target in targets.items():
                answer_bytes[name] = {}
                for query in QUERIES:
                    response = await _fetch(target.port, target.requests[query])
                    data = _data(response, target.label, query)
                    rows = (
                        blueline_rows(query, data)
                        if name == BLUELINE
                        else peer_rows(DIALECTS[name], query, data)
                    )
                    if rows != expected[query]:
                        raise RuntimeError(
                            f"{target.label} {query} does not answer the seeded rows:\n"
                            f"  got      {rows!r:.600}\n  expected {expected[query]!r:.600}"
                        )
                    answer_bytes[name][query] = len(response.body)

            conn = Connection(server.port)
            sql: dict[str, tuple[float, float]] = {}
            for query in QUERIES:
                sql[query] = await statements_per_request(
                    conn, targets[BLUELINE].requests[query], GRAPHQL_ROUTE, sql_sample, server.stats
                )
            await conn.close()

            cap = int(60_000 * max(phase_s, warmup_s))
            # Reads in flight together share statements, so the count under load is
            # Blueline's own figure beside the one-at-a-time one.
            sql_loaded: dict[str, float] = {}
            for query in QUERIES:
                load = closed_loop(
                    server.port,
                    itertools.repeat(targets[BLUELINE].requests[query], cap),
                    connections=connections,
                    duration_s=warmup_s,
                )
                loaded = await statements_while(load, GRAPHQL_ROUTE, server.stats)
                sql_loaded[query] = loaded[0]

            def phase(target: Server, query: str, seconds: float) -> Phase:
                raw = target.requests[query]

                async def go() -> LoadResult:
                    return await closed_loop(
                        target.port,
                        itertools.repeat(raw, cap),
                        connections=connections,
                        duration_s=seconds,
                    )

                return go

            measured: dict[str, dict[str, Measured]] = {}
            for query in QUERIES:
                measured[query] = await alternate_servers(
                    ctx,
                    query,
                    {n: (phase(t, query, phase_s), t.pid) for n, t in targets.items()},
                    {n: phase(t, query, warmup_s) for n, t in targets.items()},
                    rounds=rounds,
                )
            # py-spy samples Python only: with --profile, Blueline's phases, not the peers'.
            profiles: dict[str, Any] = {}
            if ctx.profile:
                for query in QUERIES:
                    async with ctx.profiling([server], f"peers-{query}") as profile:
                        await phase(targets[BLUELINE], query, phase_s)()
                    profiles[query] = profile
            rss = {
                BLUELINE: server.rss_kib(),
                **{key: peer.rss_kib() for key, peer in peers.items()},
            }

    for query in QUERIES:
        add_rows(result, query, measured[query], sql[query][0], sql_loaded[query], connections)
    result.details = {
        "measured": {
            query: {name: m.details() for name, m in by_server.items()}
            for query, by_server in measured.items()
        },
        "answer_bytes": answer_bytes,
        "sql_per_request": {
            q: {"statements": s, "checkouts": c, "statements_in_flight": sql_loaded[q]}
            for q, (s, c) in sql.items()
        },
        "rss_kib_after": rss,
        "profile": profiles,
    }
    result.notes.append(
        "peers: "
        + ", ".join(f"{label} {v}" for label, v in peer_versions.items() if label != "node")
        + f" on Node {peer_versions['node']}, without authentication; Blueline checks an API key"
    )
    return result


def add_rows(
    result: ScenarioResult,
    query: str,
    by_server: dict[str, Measured],
    sql: float,
    sql_loaded: float,
    connections: int,
) -> None:
    blueline = by_server[BLUELINE]
    peer_keys = [key for key in by_server if key != BLUELINE]
    faster = max(peer_keys, key=lambda key: by_server[key].load.rate)
    best = by_server[faster]
    label = PEERS[faster].label
    rate, best_rate = blueline.load.rate, best.load.rate
    result.add(
        Row(
            f"{query}: Blueline req/s",
            rate,
            "/s",
            baseline=best_rate,
            baseline_label=label,
            target=Target(">=", 1.0),
        )
    )
    result.add(
        Row(
            f"{query}: Blueline req/s (aim)",
            rate,
            "/s",
            baseline=best_rate,
            baseline_label=label,
            target=Target(">=", 1.5),
        )
    )
    for key in peer_keys:
        result.add(Row(f"{query}: {PEERS[key].label} req/s", by_server[key].load.rate, "/s"))
    for pct in ("p50", "p99"):
        result.add(
            Row(
                f"{query}: Blueline latency {pct}",
                getattr(blueline.latency, pct),
                "ms",
                baseline=getattr(best.latency, pct),
                baseline_label=label,
            )
        )
    for key in peer_keys:
        lat = by_server[key].latency
        result.add(Row(f"{query}: {PEERS[key].label} latency p50", lat.p50, "ms"))
        result.add(Row(f"{query}: {PEERS[key].label} latency p99", lat.p99, "ms"))
    result.add(
        Row(
            f"{query}: Blueline p99/p50",
            blueline.latency.p99,
            "ms",
            baseline=blueline.latency.p50,
            baseline_label="its p50",
        )
    )
    result.add(Row(f"{query}: Blueline SQL statements/request", sql))
    result.add(
        Row(f"{query}: Blueline SQL statements/request, {connections} in flight", sql_loaded)
    )
    result.add(
        Row(
            f"{query}: server CPU ms/request",
            blueline.cpu_ms_per_request(),
            "ms",
            baseline=best.cpu_ms_per_request(),
            baseline_label=label,
        )
    )
    result.add(
        Row(
            f"{query}: database CPU ms/request",
            blueline.cpu_ms_per_request("database"),
            "ms",
            baseline=best.cpu_ms_per_request("database"),
            baseline_label=label,
        )
    )
