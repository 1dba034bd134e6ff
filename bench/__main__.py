"""``python -m bench [scenario ...] [--smoke]``: run scenarios, print tables, write JSON.

Each scenario starts its own servers (``python -m bench.server``) on a throwaway
PostgreSQL database and a private Redis, drives them from this process, prints a table
and writes ``<results-dir>/<scenario>.json``. Exit status 1 when a scenario failed to
run (a target that was missed is a result, not a failure).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import traceback
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from bench.context import RunContext
from bench.infra import raise_fd_limit, redis_for_run
from bench.report import ScenarioResult, render_table
from bench.scenarios import ON_REQUEST, SCENARIOS

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="scenario",
        help=f"any of: {', '.join(SCENARIOS)} (default: all, in that order; "
        f"{', '.join(sorted(ON_REQUEST))} only when named or with --smoke)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, short phases")
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="how long soak runs (default 30; --smoke: a few seconds)",
    )
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument(
        "--redis-url", default=None, help="use this Redis instead of a private redis-server"
    )
    parser.add_argument(
        "--server-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="run every Blueline server with BLUELINE_NAME=VALUE (repeatable), e.g. DB_POOL_SIZE=4",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also sample the servers with py-spy in an extra phase (needs py-spy)",
    )
    return parser


def server_settings(pairs: list[str]) -> dict[str, str]:
    settings: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--server-setting wants NAME=VALUE, got {pair!r}")
        settings["BLUELINE_" + name.upper().removeprefix("BLUELINE_")] = value
    return settings


async def run_one(name: str, ctx: RunContext) -> ScenarioResult:
    started = time.perf_counter()
    result = await SCENARIOS[name](ctx)
    result.elapsed_s = time.perf_counter() - started
    if ctx.server_settings:
        result.config["server_settings"] = dict(ctx.server_settings)
    return result


def summary_table(results: list[ScenarioResult]) -> str:
    lines = ["== targets"]
    for result in results:
        for row in result.rows:
            if row.target is None:
                continue
            figure = row.ratio if row.target_on == "ratio" else row.value
            shown = "-" if figure is None else f"{figure:.3g}"
            verdict = {True: "met", False: "MISSED", None: "n/a"}[row.met]
            lines.append(
                f"  {result.scenario:<15} {row.metric:<48} {shown:>9} {row.target!s:<8} {verdict}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
        return 2
    if args.minutes is not None and args.minutes <= 0:
        print("--minutes must be positive")
        return 2
    names = args.scenarios or [n for n in SCENARIOS if args.smoke or n not in ON_REQUEST]
    raise_fd_limit()
    results: list[ScenarioResult] = []
    failed: list[str] = []
    with redis_for_run(args.redis_url) as redis_url:
        for name in names:
            ctx = RunContext(
                smoke=args.smoke,
                results_dir=args.results_dir,
                redis_url=redis_url,
                profile=args.profile,
                minutes=args.minutes,
                server_settings=server_settings(args.server_setting),
            )
            print(f"-- {name}{' (smoke)' if args.smoke else ''}", flush=True)
            try:
                result = _run_loop(run_one(name, ctx))
            except Exception:
                traceback.print_exc()
                failed.append(name)
                continue
            path = result.write(args.results_dir)
            print(render_table(result), flush=True)
            print(f"  wrote {path}", flush=True)
            results.append(result)
    if results:
        print(summary_table(results))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _run_loop(coro: Coroutine[Any, Any, ScenarioResult]) -> ScenarioResult:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


if __name__ == "__main__":
    raise SystemExit(main())
