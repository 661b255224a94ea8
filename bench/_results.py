"""The results file (JSON) and the figures every view of it is computed from.

The JSON holds every run's raw figures; the console table, the README table and the chart are
all computed from it by `summarize`, so none of them is ever typed by hand. It names no host and
no path: the machine is described by CPU count, CPU model and platform.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench._harness import PROXY_SWITCH_INTERVAL_S, Condition, MethodResult

__all__ = [
    "FORMAT",
    "Row",
    "environment",
    "load",
    "result_dict",
    "summarize",
    "write",
]

FORMAT = "async_batch-bench/1"
REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git_revision() -> str | None:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "async_batch"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}+dirty" if dirty else rev


def environment(server_version: str, server_kind: str) -> dict[str, Any]:
    """Machine and versions, without hostnames or paths."""
    import asyncpg
    import sqlalchemy

    import async_batch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "platform": platform.platform(terse=True),
            "system": platform.system(),
            "release": platform.release(),
            "arch": platform.machine(),
            "loadavg_at_start": list(load) if load else None,
        },
        "versions": {
            "python": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "sqlalchemy": sqlalchemy.__version__,
            "asyncpg": asyncpg.__version__,
            "postgresql": server_version,
            "async_batch": async_batch.__version__,
            "async_batch_git": _git_revision(),
        },
        "server": {"kind": server_kind},
    }


def result_dict(res: MethodResult) -> dict[str, Any]:
    return {
        "case": res.case.key,
        "condition": res.condition.key,
        "method": res.method.key,
        "runs": [
            {
                "warmup": r.warmup,
                "e2e_s": r.e2e_s,
                "commit_s": r.commit_s,
                "round_trips": r.round_trips,
                "messages": r.messages,
            }
            for r in res.runs
        ],
        "round_trips": res.round_trips,
        "round_trips_from": res.round_trips_from,
        "flush_report": res.flush_report,
        "error": res.error,
        "error_trace": res.error_trace,
    }


def condition_dict(cond: Condition, rtt_ms: dict[str, float | None]) -> dict[str, Any]:
    return {
        "key": cond.key,
        "label": cond.label,
        "delay_ms_per_direction": cond.delay_ms,
        "configured_rtt_ms": 2 * cond.delay_ms,
        "proxied": cond.proxied,
        "timing_via": "ThreadedWireProxy" if cond.proxied else "direct connection",
        "gil_switch_interval_s": PROXY_SWITCH_INTERVAL_S if cond.proxied else None,
        "measured_rtt_ms": rtt_ms,
    }


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write(data: dict[str, Any], out_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write ``bench-<timestamp>.json`` and ``latest.json``; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = data["started_at"].replace("-", "").replace(":", "").replace("T", "-").rstrip("Z")
    path = out_dir / f"bench-{stamp}.json"
    text = json.dumps(data, indent=1, default=str) + "\n"
    path.write_text(text)
    latest = out_dir / "latest.json"
    latest.write_text(text)
    return path, latest


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path.name} is not a {FORMAT} results file")
    return data


def display_path(path: Path) -> str:
    """A path to print: relative to the current directory, never an absolute path."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path.name
    return path.name if rel.startswith("..") else rel


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    case_title: str
    scenario: str
    rows: int
    condition: str
    condition_label: str
    method: str
    method_label: str
    runs: int
    e2e_median: float
    e2e_min: float
    e2e_max: float
    commit_median: float
    commit_min: float
    commit_max: float
    round_trips: int | None
    speedup_e2e: float | None = None
    speedup_commit: float | None = None
    vs_executemany: float | None = None
    """This method's end-to-end time / raw asyncpg executemany's (>1: slower)."""
    vs_copy: float | None = None
    """This method's end-to-end time / raw asyncpg COPY's."""
    error: str | None = None
    strategies: str | None = None
    """For batched methods: what async_batch did (table: strategy), and fallbacks."""

    def us_per_row(self, seconds: float) -> float:
        return seconds / self.rows * 1e6 if self.rows else float("nan")

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.e2e_median if self.e2e_median > 0 else float("nan")


def _strategies(report: dict[str, Any] | None) -> str | None:
    if not report:
        return None
    parts = [
        f"{t['table']}:{t['strategy']}"
        for t in report.get("tables", [])
        if isinstance(t, dict) and "table" in t
    ]
    native = report.get("native") or 0
    if native:
        parts.append(f"{native} objs native")
    return ", ".join(parts) or None


def summarize(data: dict[str, Any]) -> list[Row]:
    """One row per case x condition x method, in run order, with the derived ratios."""
    cases = {c["key"]: c for c in data["cases"]}
    conds = {c["key"]: c for c in data["conditions"]}
    labels = {m["key"]: m["label"] for m in data["methods"]}
    method_order = [m["key"] for m in data["methods"]]
    rows: list[Row] = []
    # round trips measured in one condition hold for every condition (latency-independent)
    trips: dict[tuple[str, str], int] = {}
    for r in data["results"]:
        if r["round_trips"] is not None:
            trips.setdefault((r["case"], r["method"]), r["round_trips"])
    for r in data["results"]:
        case = cases[r["case"]]
        timed = [x for x in r["runs"] if not x["warmup"]]
        e2e = [x["e2e_s"] for x in timed] or [float("nan")]
        commit = [x["commit_s"] for x in timed] or [float("nan")]
        rows.append(
            Row(
                case=case["key"],
                case_title=case["title"],
                scenario=case["scenario"],
                rows=case["rows"],
                condition=r["condition"],
                condition_label=conds[r["condition"]]["label"],
                method=r["method"],
                method_label=labels.get(r["method"], r["method"]),
                runs=len(timed),
                e2e_median=statistics.median(e2e),
                e2e_min=min(e2e),
                e2e_max=max(e2e),
                commit_median=statistics.median(commit),
                commit_min=min(commit),
                commit_max=max(commit),
                round_trips=trips.get((r["case"], r["method"])),
                error=r["error"],
                strategies=_strategies(r.get("flush_report")),
            )
        )
    by_key = {(x.case, x.condition, x.method): x for x in rows}
    for x in rows:
        native = by_key.get((x.case, x.condition, "native"))
        em = by_key.get((x.case, x.condition, "asyncpg_executemany"))
        copy = by_key.get((x.case, x.condition, "asyncpg_copy"))
        if native and native.runs and x.runs:
            x.speedup_e2e = native.e2e_median / x.e2e_median
            x.speedup_commit = native.commit_median / x.commit_median
        if em and em.runs and x.runs:
            x.vs_executemany = x.e2e_median / em.e2e_median
        if copy and copy.runs and x.runs:
            x.vs_copy = x.e2e_median / copy.e2e_median
    case_order = list(cases)
    cond_order = list(conds)
    rows.sort(
        key=lambda x: (
            case_order.index(x.case),
            cond_order.index(x.condition),
            method_order.index(x.method) if x.method in method_order else 99,
        )
    )
    return rows
