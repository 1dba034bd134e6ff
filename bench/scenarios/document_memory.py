"""``document-memory``: a flood of distinct documents at the size cap.

Every request is a new document of exactly ``BLUELINE_GRAPHQL_MAX_BODY_BYTES`` (64 KiB):
``#<padding>\\n{ __typename }``, the padding numbered so no two share a digest. None is
answered from the document cache, and each is parsed (lexing the comment is the work).
The cache keeps each one's verdict under a byte budget, so after a warm-up that fills
the budget the server's memory should stay where it was:

- **RSS** of the server process before the flood (after the warm-up) and after it, as
  a ratio (target ≤ 1.1);
- **responsiveness**: a ``/healthz`` probe every 20 ms on its own connection during the
  flood, against the same probes with the server idle, as a ratio of medians (the
  flood is several connections sending back to back; the probe waits for the event
  loop like everything else).

The rate limits are out of reach (as in every scenario), so the flood is not throttled.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

from bench.context import RunContext
from bench.infra import keyring_spec, running_servers, throwaway_database
from bench.loadgen import Connection, closed_loop, encode_request, timed
from bench.report import Row, ScenarioResult, Summary, Target
from bench.scenarios.common import serve_env
from bench.seed import workspace_with_key

DESCRIPTION = "server memory and loop responsiveness under 1,000 distinct documents at the cap"
MAX_BODY = 64 * 1024
PROBE_INTERVAL_S = 0.02


def padded_body(n: int, size: int = MAX_BODY) -> bytes:
    """The JSON request body of document ``n``, exactly ``size`` bytes."""
    tag = f"{n:08d}"
    overhead = len(json.dumps({"query": "#" + tag + "\n{ __typename }"}))
    query = "#" + tag + "x" * (size - overhead) + "\n{ __typename }"
    body = json.dumps({"query": query}).encode()
    assert len(body) == size
    return body


def documents(port: int, api_key: str, first: int, count: int) -> Iterator[bytes]:
    headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
    for n in range(first, first + count):
        yield encode_request("POST", "/graphql", port, headers, padded_body(n))


async def probe(port: int, stop: asyncio.Event | None, count: int) -> list[int]:
    """``/healthz`` round trips every PROBE_INTERVAL_S on one connection, until ``stop``
    is set (or ``count`` of them without one)."""
    conn = Connection(port)
    raw = encode_request("GET", "/healthz", port)
    samples: list[int] = []
    try:
        while (stop is None and len(samples) < count) or (stop is not None and not stop.is_set()):
            took, response = await timed(conn, raw)
            if response.status != 200:
                raise RuntimeError(f"/healthz answered {response.status}")
            samples.append(took)
            await asyncio.sleep(PROBE_INTERVAL_S)
    finally:
        await conn.close()
    return samples


async def run(ctx: RunContext) -> ScenarioResult:
    flood = ctx.pick(1000, 60)
    warmup = ctx.pick(500, 30)
    connections = ctx.pick(4, 2)
    idle_probes = ctx.pick(100, 10)
    result = ScenarioResult(
        "document-memory",
        ctx.smoke,
        DESCRIPTION,
        config={
            "documents": flood,
            "warmup_documents": warmup,
            "body_bytes": MAX_BODY,
            "connections": connections,
            "probe_interval_s": PROBE_INTERVAL_S,
        },
    )
    keyring = keyring_spec()
    async with throwaway_database() as database:
        _, api_key = await workspace_with_key(database)
        env = serve_env(ctx, database, keyring)
        async with running_servers([("api", env, [])], ctx.log_dir) as [server]:
            port = server.port

            async def send(first: int, count: int) -> tuple[int, float]:
                load = await closed_loop(
                    port,
                    documents(port, api_key, first, count),
                    connections=connections,
                    duration_s=600,
                )
                if load.ok != count:
                    raise RuntimeError(f"{count - load.ok} documents failed: {load.statuses}")
                return load.ok, load.elapsed_s

            ctx.say(f"warm-up: {warmup} documents")
            await send(0, warmup)
            stats = await server.stats()
            rss_before = server.rss_kib()
            idle = await probe(port, None, idle_probes)

            ctx.say(f"flood: {flood} documents on {connections} connections")
            stop = asyncio.Event()
            probing = asyncio.create_task(probe(port, stop, 0))
            try:
                sent, seconds = await send(warmup, flood)
            finally:
                stop.set()
            during = await probing
            rss_after = server.rss_kib()
            after_stats = await server.stats()

    idle_summary, flood_summary = Summary.of_ns(idle), Summary.of_ns(during)
    result.add(
        Row(
            "RSS after the flood",
            rss_after / 1024,
            "MiB",
            baseline=rss_before / 1024,
            baseline_label="after the warm-up",
            target=Target("<=", 1.1),
        )
    )
    result.add(
        Row(
            "/healthz p50 during the flood",
            flood_summary.p50,
            "ms",
            baseline=idle_summary.p50,
            baseline_label="idle",
        )
    )
    result.add(
        Row(
            "/healthz p90 during the flood",
            flood_summary.p90,
            "ms",
            baseline=idle_summary.p90,
            baseline_label="idle",
        )
    )
    result.add(Row("documents per second", sent / seconds if seconds else float("nan"), "/s"))
    result.details = {
        "rss_kib": {"after_warmup": rss_before, "after_flood": rss_after},
        "document_cache": {
            "after_warmup": stats.get("documents"),
            "after_flood": after_stats.get("documents"),
        },
        "healthz_ms": {"idle": idle_summary.as_dict(), "flood": flood_summary.as_dict()},
        "flood_seconds": round(seconds, 3),
    }
    return result
