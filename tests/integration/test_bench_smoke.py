"""The benchmarks still run: each scenario in smoke mode, as ``python -m bench`` runs it.

Only that a scenario completes and writes a well-formed result is checked here; whether
its targets are met is a measurement of the machine, not a test outcome.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench.peers import require_packages
from bench.scenarios import SCENARIOS

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 240


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def run_smoke(scenario: str, results_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUELINE_")}
    if "BLUELINE_TEST_PG_DSN" in os.environ:
        env.setdefault("BENCH_PG_DSN", os.environ["BLUELINE_TEST_PG_DSN"])
    return subprocess.run(
        [sys.executable, "-m", "bench", scenario, "--smoke", "--results-dir", str(results_dir)],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def test_peer_servers_are_installed() -> None:
    """``peers`` runs PostGraphile from ``bench/peers/node_modules``. Without it that
    scenario cannot measure anything, so this fails (never skips), naming the install
    command; ``make test`` installs them first."""
    require_packages()


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_smoke_run_writes_a_well_formed_result(scenario: str, tmp_path: Path) -> None:
    completed = run_smoke(scenario, tmp_path)
    output = (
        f"--- stdout ---\n{completed.stdout[-4000:]}\n--- stderr ---\n{completed.stderr[-4000:]}"
    )
    assert completed.returncode == 0, output
    assert f"== {scenario} (smoke)" in completed.stdout, output

    path = tmp_path / f"{scenario}.json"
    assert path.exists(), output
    document = json.loads(path.read_text(), parse_constant=_reject_constant)

    assert document["schema"] == 1
    assert document["scenario"] == scenario
    assert document["smoke"] is True
    assert document["elapsed_s"] > 0
    assert isinstance(document["machine"]["cpus"], int)
    assert isinstance(document["config"], dict)
    assert isinstance(document["details"], dict)

    rows = document["rows"]
    assert rows, "a scenario reports at least one figure"
    for row in rows:
        assert isinstance(row["metric"], str)
        assert row["metric"]
        for key in ("value", "baseline", "ratio"):
            figure = row[key]
            assert figure is None or (isinstance(figure, int | float) and math.isfinite(figure))
        assert row["met"] in (True, False, None)
        if row["baseline"] is not None and row["baseline"] != 0:
            assert row["ratio"] == pytest.approx(row["value"] / row["baseline"])

    targets = document["targets"]
    assert targets, "every scenario has at least one target"
    for target in targets:
        assert target["figure"] in ("ratio", "value")
        assert target["met"] in (True, False, None)
        assert isinstance(target["target"], str)

    if scenario == "soak":
        # Sampled over the run, and plotted.
        samples = document["details"]["samples"]
        assert len(samples) >= 3, samples
        for sample in samples:
            assert sample["rss_kib"] > 0
            assert sample["db_connections"] > 0
        plot = Path(document["details"]["plot"])
        assert plot.parent == tmp_path
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
