"""Helpers shared by scenarios: alternating load phases and the baseline server config."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.context import RunContext
from bench.infra import BenchDatabase, CpuMeter, ServerProcess, free_port, server_env
from bench.loadgen import LoadResult
from bench.report import Summary

Phase = Callable[[], Awaitable[LoadResult]]


@dataclass
class Measured:
    """One kind of load summed over its phases, with the CPU it took."""

    load: LoadResult = field(default_factory=LoadResult)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def add(self, result: LoadResult, cpu: dict[str, float]) -> None:
        self.load = self.load.merge(result)
        for name, share in cpu.items():
            self.cpu.setdefault(name, []).append(share)

    def cpu_mean(self, name: str) -> float:
        shares = self.cpu.get(name, [])
        return sum(shares) / len(shares) if shares else float("nan")

    def cpu_ms_per_request(self, name: str = "server") -> float:
        rate = self.load.rate
        return 1000 * self.cpu_mean(name) / rate if rate else float("nan")

    @property
    def latency(self) -> Summary:
        return Summary.of_ns(self.load.latencies_ns)

    def details(self) -> dict[str, Any]:
        return {
            "requests_ok": self.load.ok,
            "statuses": {str(k): v for k, v in sorted(self.load.statuses.items())},
            "errors": self.load.errors,
            "seconds": round(self.load.elapsed_s, 3),
            "rate_per_s": round(self.load.rate, 1),
            "exhausted": self.load.exhausted,
            "latency_ms": self.latency.as_dict(),
            "cpu_cores": {k: [round(v, 3) for v in vs] for k, vs in self.cpu.items()},
        }


async def alternate(
    ctx: RunContext,
    phases: dict[str, Phase],
    *,
    rounds: int,
    server: ServerProcess,
    warmup: dict[str, Phase] | None = None,
) -> dict[str, Measured]:
    """Run every phase once per round, in alternating order (ABBA...), so drift of a
    shared machine falls on both sides; warm-up phases first, results discarded."""
    for name, phase in (warmup or {}).items():
        ctx.say(f"warm-up: {name}")
        await phase()
    measured = {name: Measured() for name in phases}
    order = list(phases)
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            meter = CpuMeter({"server": server.pid, "client": os.getpid()}, database=True)
            meter.start()
            result = await phases[name]()
            cpu = meter.stop()
            measured[name].add(result, cpu)
            ctx.say(
                f"round {r + 1}/{rounds} {name}: {result.rate:,.0f}/s, "
                f"p50 {Summary.of_ns(result.latencies_ns).p50:.2f} ms, "
                f"statuses {dict(result.statuses)}, cpu {cpu}"
            )
    return measured


def serve_env(
    ctx: RunContext,
    database: BenchDatabase,
    keyring: str,
    *,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    return server_env(
        database_url=database.url,
        redis_url=ctx.redis_url,
        port=free_port(),
        encryption_keys=keyring,
        extra={**ctx.server_settings, **(extra or {})},
    )


NO_RATE_LIMITS = {
    "BLUELINE_WEBHOOK_RATE_PER_CLIENT_PER_S": "0",
    "BLUELINE_WEBHOOK_RATE_PER_SETUP_PER_S": "0",
}
