"""``soak``: mixed load for a long time, sampled as it goes, to show what drifts.

One server process on PostgreSQL and Redis, with the provider simulator in a process
of its own (``blueline sandbox-provider``: its in-memory state would otherwise count in
the server's RSS), under, all at once and paced:

- signed ``line.assigned`` deliveries for seeded pending lines;
- list queries (``imessageSetups(first: 50)``);
- a create every few seconds (the simulator places its number about 3 s later, with a
  signed webhook of its own);
- 200 ``phoneLineUpdates`` subscribers, one WebSocket each. One of them times every
  delivery from its send to its arrival (event lag); the others count what they get.

Every sample: the server's RSS, the database's open connections (``pg_stat_activity``,
by state), event lag since the last sample, errors (non-2xx answers, transport errors,
create ``userErrors``, subscriptions the server closed), requests done and events not
yet published. The figures are the least-squares slopes of RSS and of connections over
the second half of the run (the first half holds warm-up: pools filling, caches), with
the samples in the JSON and plotted to ``soak.png``.

30 minutes by default; ``--minutes N`` for another length, ``--smoke`` for seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from websockets.exceptions import ConnectionClosed

from bench.clients import Subscription, assignment, graphql_request, open_subscription
from bench.context import RunContext, poll_until
from bench.infra import (
    HOST,
    REPO_ROOT,
    STARTUP_TIMEOUT_S,
    BenchDatabase,
    ServerProcess,
    free_port,
    keyring_spec,
    running_servers,
    throwaway_database,
)
from bench.loadgen import Connection
from bench.loadgen import ConnectionClosed as HttpConnectionClosed
from bench.report import Row, ScenarioResult, Summary, Target
from bench.scenarios.common import serve_env
from bench.scenarios.latency import wait_subscribers
from bench.seed import PendingLine, scalar, seed

DESCRIPTION = "mixed load for a long time: RSS, DB connections, event lag and errors over time"
LIST_QUERY = "{ imessageSetups(first: 50) { edges { node { id businessName status } } } }"
CREATE = (
    "mutation Create($input: CreateImessageSetupInput!) { createImessageSetup(input: $input) "
    "{ setup { id } userErrors { code } } }"
)
PROBE = "subscription { phoneLineUpdates { eventId phoneLine { id status } } }"
OPEN_CONCURRENCY = 50

# Ends that count as "flat" for a run of this length: under a 2 MiB drift of RSS, and
# under one connection, per hour.
RSS_SLOPE_KIB_PER_MIN = 2048 / 60
CONNECTION_SLOPE_PER_MIN = 1 / 60


@dataclass
class Rates:
    webhooks_per_s: float
    lists_per_s: float
    create_every_s: float
    subscribers: int
    sample_s: float


@dataclass
class Tally:
    """What happened since the last sample (and in total)."""

    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    lags_ms: list[float] = field(default_factory=list)
    total_requests: Counter[str] = field(default_factory=Counter)
    total_errors: Counter[str] = field(default_factory=Counter)
    all_lags_ms: list[float] = field(default_factory=list)

    def ok(self, kind: str) -> None:
        self.requests[kind] += 1
        self.total_requests[kind] += 1

    def error(self, kind: str) -> None:
        self.errors[kind] += 1
        self.total_errors[kind] += 1

    def lag(self, ms: float) -> None:
        self.lags_ms.append(ms)
        self.all_lags_ms.append(ms)

    def take(self) -> tuple[Counter[str], Counter[str], list[float]]:
        taken = (self.requests, self.errors, self.lags_ms)
        self.requests, self.errors, self.lags_ms = Counter(), Counter(), []
        return taken


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute; NaN when too few."""
    if len(points) < 3:
        return math.nan
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return math.nan
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


ANSWER_TIMEOUT_S = 30.0


async def paced(rate_per_s: float, deadline: float, action: Callable[[], Awaitable[bool]]) -> None:
    """Call ``action`` ``rate_per_s`` times a second until ``deadline`` (loop time) or
    until it returns False; falling behind does not cause a burst to catch up."""
    loop = asyncio.get_running_loop()
    interval = 1 / rate_per_s
    next_at = loop.time()
    while loop.time() < deadline:
        if not await action():
            return
        next_at += interval
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            next_at = loop.time()


class SandboxProcess:
    """``blueline sandbox-provider`` on a free port, its output in the run's logs."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"sandbox-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLUELINE_")}
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from blueline.cli import main; main()",
                    "sandbox-provider",
                    "--port",
                    str(self.port),
                ],
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        async with httpx.AsyncClient(base_url=self.url, timeout=2, trust_env=False) as client:
            while True:
                if self.popen.poll() is not None:
                    raise RuntimeError(f"sandbox exited early:\n{self.log_path.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/sandbox/config")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError("sandbox provider not ready")
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        self.popen.wait()


class Crowd:
    """Subscribers that only count what they receive; one closed by the server is
    counted as an error and opened again."""

    def __init__(self, base_url: str, api_key: str, tally: Tally) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.tally = tally
        self.received = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self, count: int) -> None:
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def one() -> Subscription:
            async with gate:
                return await open_subscription(self.base_url, self.api_key, PROBE)

        subs = await asyncio.gather(*(one() for _ in range(count)))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._drain(sub)) for sub in subs]

    async def _drain(self, sub: Subscription) -> None:
        while True:
            try:
                message = await sub.ws.recv()
            except ConnectionClosed:
                self.tally.error("subscriber_closed")
                sub = await open_subscription(self.base_url, self.api_key, PROBE)
                continue
            head = message[:40] if isinstance(message, str) else ""
            if '"ping"' in head:
                await sub.ws.send('{"type":"pong"}')
            elif '"next"' in head:
                self.received += 1

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def probe_arrivals(sub: Subscription, sent: dict[str, float], tally: Tally) -> None:
    """The timed subscriber: each delivery's lag from its send to its arrival here."""
    while True:
        try:
            payload = await sub.next_payload(3600)
        except ConnectionClosed:
            tally.error("probe_closed")
            return
        line = payload["data"]["phoneLineUpdates"]["phoneLine"]
        started = sent.pop(line["id"], None) if line["status"] == "ASSIGNED" else None
        if started is not None:
            tally.lag((time.perf_counter() - started) * 1000)


async def run(ctx: RunContext) -> ScenarioResult:
    duration_s = 60 * ctx.minutes if ctx.minutes else ctx.pick(30 * 60.0, 8.0)
    rates = Rates(
        webhooks_per_s=8,
        lists_per_s=20,
        create_every_s=ctx.pick(3.0, 1.0),
        subscribers=ctx.pick(200, 20),
        sample_s=ctx.pick(10.0, 0.5) if not ctx.minutes else max(1.0, min(10.0, duration_s / 120)),
    )
    lines_per_setup = 12
    setups = math.ceil(rates.webhooks_per_s * duration_s / lines_per_setup) + 10
    result = ScenarioResult(
        "soak",
        ctx.smoke,
        DESCRIPTION,
        config={
            "duration_s": duration_s,
            "webhooks_per_s": rates.webhooks_per_s,
            "lists_per_s": rates.lists_per_s,
            "create_every_s": rates.create_every_s,
            "subscribers": rates.subscribers,
            "sample_s": rates.sample_s,
            "seeded_setups": setups,
            "pending_lines": setups * lines_per_setup,
            "provider": "blueline sandbox-provider, its own process (numbers placed after 3 s)",
        },
    )
    keyring = keyring_spec()
    sandbox = SandboxProcess(ctx.log_dir)
    try:
        await sandbox.wait_ready()
        async with throwaway_database() as database:
            seeded = await seed(database, keyring, setups=setups, lines_per_setup=lines_per_setup)
            ctx.say(f"seeded {len(seeded.pending):,} pending lines in {seeded.seconds:.1f} s")
            env = serve_env(ctx, database, keyring, extra={"BLUELINE_PROVIDER_URL": sandbox.url})
            async with running_servers([("api", env, [])], ctx.log_dir) as [server]:
                samples, tally, crowd_received = await soak(
                    ctx,
                    server,
                    database,
                    seeded.api_key,
                    seeded.secret,
                    seeded.pending,
                    rates,
                    duration_s,
                )
                drained = await poll_until(
                    lambda: scalar(database, "SELECT count(*) FROM event_outbox"),
                    lambda n: int(n) == 0,
                    timeout_s=30,
                    what="outbox drained",
                )
                final_stats = await server.stats()
    finally:
        sandbox.stop()
    report(ctx, result, samples, tally, crowd_received, int(drained), final_stats)
    return result


async def soak(
    ctx: RunContext,
    server: ServerProcess,
    database: BenchDatabase,
    api_key: str,
    secret: str,
    pending: list[PendingLine],
    rates: Rates,
    duration_s: float,
) -> tuple[list[dict[str, Any]], Tally, int]:
    tally = Tally()
    sent: dict[str, float] = {}
    port = server.port
    probe = await open_subscription(server.base_url, api_key, PROBE)
    crowd = Crowd(server.base_url, api_key, tally)
    await crowd.open(rates.subscribers - 1)
    await wait_subscribers(server, rates.subscribers, timeout_s=120)
    ctx.say(f"{rates.subscribers} subscribers open; soaking for {duration_s / 60:.1f} min")
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + duration_s
    lines = iter(pending)
    webhook_conn, list_conn, create_conn = Connection(port), Connection(port), Connection(port)
    counter = iter(range(10**9))

    async def send(conn: Connection, kind: str, raw: bytes) -> bytes | None:
        try:
            # Bounded, so an answer that never comes is counted as an error of its kind
            # instead of stalling the run.
            response = await asyncio.wait_for(conn.request(raw), ANSWER_TIMEOUT_S)
        except TimeoutError:
            tally.error(f"{kind}_timeout")
            await conn.close()
            return None
        except (HttpConnectionClosed, OSError, asyncio.IncompleteReadError):
            tally.error(f"{kind}_transport")
            return None
        if response.status != 200:
            tally.error(f"{kind}_{response.status}")
            return None
        tally.ok(kind)
        return response.body

    async def webhook() -> bool:
        line = next(lines, None)
        if line is None:
            return False
        # Signed at send time: the whole run is far longer than the timestamp tolerance.
        delivery = assignment(line, secret, next(counter))
        sent[line.line_id] = time.perf_counter()
        await send(webhook_conn, "webhook", delivery.request(port))
        return True

    async def listing() -> bool:
        await send(list_conn, "list", graphql_request(port, api_key, LIST_QUERY))
        return True

    async def create() -> bool:
        n = next(counter)
        variables = {"input": {"businessName": f"Soak {n}", "label": "Front desk"}}
        body = await send(create_conn, "create", graphql_request(port, api_key, CREATE, variables))
        if body is not None and json.loads(body)["data"]["createImessageSetup"]["userErrors"]:
            tally.error("create_user_error")
        return True

    samples: list[dict[str, Any]] = []

    async def sample_forever(conn: asyncpg.Connection) -> None:
        while True:
            await asyncio.sleep(rates.sample_s)
            requests, errors, lags = tally.take()
            rows = await conn.fetch(
                "SELECT state, count(*) AS n FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY state"
            )
            by_state = {str(row["state"]): int(row["n"]) for row in rows}
            lag = Summary.of_ns([int(ms * 1e6) for ms in lags])
            samples.append(
                {
                    "t_s": round(loop.time() - started, 2),
                    "rss_kib": server.rss_kib(),
                    "db_connections": sum(by_state.values()),
                    "db_connections_by_state": by_state,
                    "lag_p50_ms": lag.p50,
                    "lag_p99_ms": lag.p99,
                    "lag_max_ms": lag.max,
                    "requests": dict(requests),
                    "errors": dict(errors),
                    "unpublished": int(await conn.fetchval("SELECT count(*) FROM event_outbox")),
                    "waiting_for_arrival": len(sent),
                }
            )

    sampler_conn = await asyncpg.connect(database.dsn)
    probe_task = loop.create_task(probe_arrivals(probe, sent, tally))
    sampler = loop.create_task(sample_forever(sampler_conn))
    last_report = started
    try:
        loads = [
            loop.create_task(paced(rates.webhooks_per_s, deadline, webhook)),
            loop.create_task(paced(rates.lists_per_s, deadline, listing)),
            loop.create_task(paced(1 / rates.create_every_s, deadline, create)),
        ]
        while not all(task.done() for task in loads):
            await asyncio.sleep(min(1.0, rates.sample_s))
            if loop.time() - last_report >= 60 and samples:
                last_report = loop.time()
                s = samples[-1]
                ctx.say(
                    f"{s['t_s'] / 60:5.1f} min: RSS {s['rss_kib'] / 1024:.1f} MiB, "
                    f"{s['db_connections']} DB connections, lag p99 {s['lag_p99_ms']:.1f} ms, "
                    f"errors so far {sum(tally.total_errors.values())}"
                )
        for task in loads:
            task.result()
        sampler.cancel()
        # Arrivals of the last deliveries.
        await asyncio.sleep(2.0)
    finally:
        sampler.cancel()
        probe_task.cancel()
        for task in (sampler, probe_task):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await sampler_conn.close()
        await crowd.close()
        await probe.ws.close()
        for conn in (webhook_conn, list_conn, create_conn):
            await conn.close()
    tally.total_errors["lost_arrivals"] += len(sent)
    return samples, tally, crowd.received


def report(
    ctx: RunContext,
    result: ScenarioResult,
    samples: list[dict[str, Any]],
    tally: Tally,
    crowd_received: int,
    unpublished_at_end: int,
    final_stats: dict[str, Any],
) -> None:
    half = samples[len(samples) // 2 :]
    rss_slope = slope_per_minute([(s["t_s"], s["rss_kib"]) for s in half])
    conn_slope = slope_per_minute([(s["t_s"], s["db_connections"]) for s in half])
    lags = Summary.of_ns([int(ms * 1e6) for ms in tally.all_lags_ms])
    errors = sum(tally.total_errors.values())
    rss = [s["rss_kib"] for s in samples] or [math.nan]
    connections = [s["db_connections"] for s in samples] or [math.nan]
    result.add(
        Row(
            "RSS slope, second half",
            rss_slope,
            "KiB/min",
            target=Target("<=", round(RSS_SLOPE_KIB_PER_MIN, 1)),
            target_on="value",
        )
    )
    result.add(
        Row(
            "DB connections slope, second half",
            conn_slope,
            "/min",
            target=Target("<=", round(CONNECTION_SLOPE_PER_MIN, 3)),
            target_on="value",
        )
    )
    result.add(Row("errors", errors, "", target=Target("<=", 0), target_on="value"))
    result.add(Row("RSS at start", rss[0] / 1024, "MiB"))
    result.add(Row("RSS at end", rss[-1] / 1024, "MiB"))
    result.add(Row("DB connections, most", max(connections), ""))
    result.add(Row("DB connections at end", connections[-1], ""))
    result.add(Row("event lag p50", lags.p50, "ms"))
    result.add(Row("event lag p99", lags.p99, "ms"))
    result.add(Row("event lag max", lags.max, "ms"))
    result.add(Row("requests", sum(tally.total_requests.values()), ""))
    plot = ctx.results_dir / "soak.png"
    plot_samples(samples, plot, rss_slope, conn_slope, smoke=ctx.smoke)
    result.details = {
        "plot": str(plot),
        "samples": samples,
        "requests": dict(tally.total_requests),
        "errors": dict(tally.total_errors),
        "lag_ms": lags.as_dict(),
        "updates_received_by_other_subscribers": crowd_received,
        "unpublished_at_end": unpublished_at_end,
        "server_stats_at_end": {k: final_stats.get(k) for k in ("rss_kib", "subscribers")},
    }


def plot_samples(
    samples: list[dict[str, Any]], path: Path, rss_slope: float, conn_slope: float, *, smoke: bool
) -> None:
    # Optional extra (`pip install -e '.[bench]'`, part of `dev`); Agg needs no display.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["t_s"] / 60 for s in samples]
    figure, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    rss_ax, conn_ax, lag_ax, load_ax = axes
    rss_ax.plot(minutes, [s["rss_kib"] / 1024 for s in samples], color="tab:blue")
    rss_ax.set_ylabel("server RSS (MiB)")
    rss_ax.set_title(f"RSS slope (second half): {rss_slope:+.1f} KiB/min")
    conn_ax.plot(minutes, [s["db_connections"] for s in samples], label="all", color="tab:green")
    conn_ax.plot(
        minutes,
        [
            sum(n for state, n in s["db_connections_by_state"].items() if state != "idle")
            for s in samples
        ],
        label="not idle",
        color="tab:olive",
    )
    conn_ax.set_ylabel("DB connections")
    conn_ax.set_title(f"connections slope (second half): {conn_slope:+.3f}/min")
    conn_ax.legend(loc="upper left")
    lag_ax.plot(minutes, [s["lag_p50_ms"] for s in samples], label="p50", color="tab:purple")
    lag_ax.plot(minutes, [s["lag_p99_ms"] for s in samples], label="p99", color="tab:red")
    lag_ax.set_ylabel("event lag (ms)")
    lag_ax.set_yscale("log")
    lag_ax.legend(loc="upper left")
    intervals = [
        (samples[i]["t_s"] - (samples[i - 1]["t_s"] if i else 0.0)) or 1.0
        for i in range(len(samples))
    ]
    load_ax.plot(
        minutes,
        [sum(s["requests"].values()) / dt for s, dt in zip(samples, intervals, strict=True)],
        label="requests/s",
        color="tab:gray",
    )
    load_ax.set_ylabel("requests/s")
    errors_ax = load_ax.twinx()
    errors_ax.bar(
        minutes,
        [sum(s["errors"].values()) for s in samples],
        width=(minutes[-1] / max(len(minutes), 1)) * 0.8 if minutes else 0.1,
        color="tab:red",
        alpha=0.6,
        label="errors",
    )
    errors_ax.set_ylabel("errors per sample")
    errors_ax.set_ylim(bottom=0, top=max(1, *(sum(s["errors"].values()) for s in samples)))
    load_ax.set_xlabel("minutes")
    figure.suptitle(f"soak{' (smoke)' if smoke else ''}: {len(samples)} samples")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
