"""What every scenario gets: sizes for full or smoke runs, where to write, how to report
progress, and optional profiling of a server process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.infra import Profiler, ServerProcess, summarize_profile

T = TypeVar("T")


@dataclass
class RunContext:
    smoke: bool
    results_dir: Path
    redis_url: str
    profile: bool = False
    # How long the soak runs, when not its default.
    minutes: float | None = None
    # Extra server settings for every Blueline server of the run (``BLUELINE_…``).
    server_settings: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def log_dir(self) -> Path:
        return self.results_dir / "logs"

    @property
    def profile_dir(self) -> Path:
        return self.results_dir / "profiles"

    def pick(self, full: T, smoke: T) -> T:
        return smoke if self.smoke else full

    def say(self, message: str) -> None:
        print(f"  [{time.perf_counter() - self.started:6.1f}s] {message}", flush=True)

    @asynccontextmanager
    async def profiling(
        self, servers: list[ServerProcess], label: str
    ) -> AsyncIterator[dict[str, Any]]:
        """Sample ``servers`` with py-spy while the block runs (only with ``--profile``);
        the yielded dict receives one summary per server afterwards."""
        summaries: dict[str, Any] = {}
        if not self.profile:
            yield summaries
            return
        profilers = [
            (
                server,
                Profiler(server.pid, self.profile_dir / f"{label}-{server.name}.txt"),
            )
            for server in servers
        ]
        await asyncio.sleep(0.5)  # py-spy attaches
        try:
            yield summaries
        finally:
            for server, profiler in profilers:
                profiler.stop()
                summaries[server.name] = summarize_profile(profiler.output)


async def poll_until(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    timeout_s: float,
    interval_s: float = 0.05,
    what: str = "condition",
) -> T:
    """Call ``probe`` until ``done`` holds; bounded by ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s} s (last: {value!r})")
        await asyncio.sleep(interval_s)
