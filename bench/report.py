"""Statistics, the printed table and the JSON document of one scenario."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


@dataclass(frozen=True)
class Summary:
    """Latency summary in milliseconds."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of_ns(cls, samples_ns: Sequence[int]) -> Summary:
        values = sorted(s / 1e6 for s in samples_ns)
        mean = sum(values) / len(values) if values else math.nan
        return cls(
            count=len(values),
            p50=percentile(values, 50),
            p90=percentile(values, 90),
            p99=percentile(values, 99),
            max=values[-1] if values else math.nan,
            mean=mean,
        )

    def as_dict(self) -> dict[str, float | int]:
        return {k: _clean(v) for k, v in asdict(self).items()}


def ratio(value: float, baseline: float) -> float:
    if baseline == 0 or math.isnan(baseline) or math.isnan(value):
        return math.nan
    return value / baseline


def _clean(value: Any) -> Any:
    """JSON has no NaN: missing figures become null."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


@dataclass(frozen=True)
class Target:
    """A goal on one figure: ``value <op> bound``."""

    op: str  # "<=", ">=", "<"
    bound: float

    def met(self, value: float) -> bool | None:
        if math.isnan(value):
            return None
        if self.op == "<=":
            return value <= self.bound
        if self.op == ">=":
            return value >= self.bound
        if self.op == "<":
            return value < self.bound
        raise ValueError(f"unknown operator {self.op}")

    def __str__(self) -> str:
        symbol = {"<=": "≤", ">=": "≥", "<": "<"}[self.op]
        return f"{symbol} {self.bound:g}"


@dataclass
class Row:
    """One line of the table: a figure, its baseline in the same run and their ratio.

    When a target is set it applies to ``ratio`` if ``target_on`` is "ratio", else to
    ``value``.
    """

    metric: str
    value: float
    unit: str = ""
    baseline: float | None = None
    baseline_label: str = ""
    ratio: float | None = None
    target: Target | None = None
    target_on: str = "ratio"

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline is not None:
            self.ratio = ratio(self.value, self.baseline)

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        figure = self.ratio if self.target_on == "ratio" else self.value
        return None if figure is None else self.target.met(figure)

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": _clean(self.value),
            "unit": self.unit,
            "baseline": _clean(self.baseline),
            "baseline_label": self.baseline_label,
            "ratio": _clean(self.ratio),
            "target": str(self.target) if self.target else None,
            "target_on": self.target_on if self.target else None,
            "met": self.met,
        }


@dataclass
class ScenarioResult:
    scenario: str
    smoke: bool
    description: str
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    elapsed_s: float = 0.0

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def document(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "scenario": self.scenario,
            "smoke": self.smoke,
            "description": self.description,
            "started_at": self.started_at,
            "elapsed_s": round(self.elapsed_s, 3),
            "machine": machine(),
            "config": self.config,
            "rows": [row.as_dict() for row in self.rows],
            "targets": [
                {
                    "metric": row.metric,
                    "figure": row.target_on,
                    "value": _clean(row.ratio if row.target_on == "ratio" else row.value),
                    "target": str(row.target),
                    "met": row.met,
                }
                for row in self.rows
                if row.target is not None
            ],
            "details": _deep_clean(self.details),
            "notes": self.notes,
        }

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.scenario}.json"
        text = json.dumps(self.document(), indent=2, allow_nan=False) + "\n"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return path


def _deep_clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _deep_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_deep_clean(v) for v in value]
    return _clean(value)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "shared": True,
        "source": source_revision(),
    }


def source_revision() -> dict[str, Any]:
    """The commit measured, and whether ``src`` had uncommitted changes (read-only git)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--", "src")
    return {"commit": git("rev-parse", "--short", "HEAD"), "src_modified": bool(status)}


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    if unit in ("/s", "") and magnitude >= 100:
        text = f"{value:,.0f}"
    elif magnitude >= 100:
        text = f"{value:,.1f}"
    elif magnitude >= 10:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}".rstrip() if unit else text


def render_table(result: ScenarioResult) -> str:
    header = ["metric", "value", "baseline", "ratio", "target", "met"]
    lines: list[list[str]] = []
    for row in result.rows:
        met = row.met
        lines.append(
            [
                row.metric,
                _fmt(row.value, row.unit),
                _fmt(row.baseline, row.unit)
                + (f" ({row.baseline_label})" if row.baseline_label else "")
                if row.baseline is not None
                else "-",
                _fmt(row.ratio) if row.ratio is not None else "-",
                (str(row.target) + (" (value)" if row.target_on == "value" else ""))
                if row.target
                else "",
                "" if met is None else ("yes" if met else "NO"),
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = [f"== {result.scenario}{' (smoke)' if result.smoke else ''}: {result.description}"]
    out.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    out.append("  ".join("-" * w for w in widths))
    for line in lines:
        cells = [line[0].ljust(widths[0])] + [
            cell.rjust(w) if i < 4 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line[1:], widths[1:], strict=True), start=1)
        ]
        out.append("  ".join(cells).rstrip())
    for note in result.notes:
        out.append(f"  note: {note}")
    out.append(f"  ({result.elapsed_s:.1f} s)")
    return "\n".join(out)
