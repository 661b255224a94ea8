"""The chart: end-to-end rows/s per method, one panel per workload, log scale, every bar
labelled with its speed-up over native ORM in the same condition."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from bench._results import summarize

__all__ = ["chart"]

_COLORS = ("#1f5fa8", "#e07b28", "#3a9a4a", "#9b4dca")
_HATCH = ("", "//", "..", "xx")


def chart(data: dict[str, Any], path: Path) -> Path:
    rows = summarize(data)
    cases = data["cases"]
    conds = data["conditions"]
    labels = {m["key"]: m["label"] for m in data["methods"]}
    methods = [m["key"] for m in data["methods"]]
    by = {(r.case, r.condition, r.method): r for r in rows}

    ncols = 2 if len(cases) > 1 else 1
    nrows = math.ceil(len(cases) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(8.2 * ncols, 0.5 + 3.9 * nrows), squeeze=False)
    bar_h = 0.8 / max(1, len(conds))
    for idx, case in enumerate(cases):
        ax = axes[idx // ncols][idx % ncols]
        present = [m for m in methods if any((case["key"], c["key"], m) in by for c in conds)]
        top = 0.0
        for ci, cond in enumerate(conds):
            for mi, m in enumerate(present):
                r = by.get((case["key"], cond["key"], m))
                if r is None or r.error or not r.runs:
                    continue
                y = mi + (ci - (len(conds) - 1) / 2) * bar_h
                rate = r.rows_per_s
                top = max(top, rate)
                native = m == "native"
                ax.barh(
                    y,
                    rate,
                    height=bar_h * 0.92,
                    color="#9a9a9a" if native else _COLORS[ci % len(_COLORS)],
                    hatch=_HATCH[ci % len(_HATCH)],
                    edgecolor="white",
                    linewidth=0.3,
                )
                text = "native" if native else f"{r.speedup_e2e:.1f}\u00d7" if r.speedup_e2e else ""
                ax.text(rate * 1.06, y, text, va="center", fontsize=7)
        ax.set_yticks(range(len(present)), [labels.get(m, m) for m in present], fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(_rate_label))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if top > 0:
            ax.set_xlim(right=top * 4)
        ax.set_title(f"{case['title']} ({case['rows']:,} rows)", fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", which="both", alpha=0.25)
        ax.set_xlabel("rows/s end to end (log)", fontsize=7)
    for idx in range(len(cases), nrows * ncols):
        axes[idx // ncols][idx % ncols].set_visible(False)
    v = data["versions"]
    m = data["machine"]
    fig.suptitle(
        "async_batch benchmarks: rows/s end to end (build + add_all + flush + COMMIT); "
        "labels: speed-up over native ORM",
        fontsize=11,
        x=0.01,
        ha="left",
    )
    fig.text(
        0.01,
        0.005,
        f"{data['started_at'][:10]} · {m.get('cpu_count')} CPUs · {m.get('platform')} · "
        f"Python {v['python']} · SQLAlchemy {v['sqlalchemy']} · asyncpg {v['asyncpg']} · "
        f"PostgreSQL {v['postgresql']} · median of ≥{_min_runs(rows)} runs"
        + (" · QUICK RUN" if data.get("quick") else ""),
        fontsize=7,
        color="#555555",
    )
    fig.legend(
        handles=[
            Patch(
                facecolor=_COLORS[i % len(_COLORS)],
                hatch=_HATCH[i % len(_HATCH)],
                edgecolor="white",
                label=c["label"],
            )
            for i, c in enumerate(conds)
        ]
        + [Patch(facecolor="#9a9a9a", label="native ORM")],
        loc="upper right",
        fontsize=8,
        ncols=len(conds) + 1,
    )
    fig.tight_layout(rect=(0, 0.015, 1, 0.975))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _min_runs(rows: list[Any]) -> int:
    runs = [r.runs for r in rows if r.runs]
    return min(runs) if runs else 0


def _rate_label(x: float, _pos: int | None = None) -> str:
    if x >= 1e6:
        return f"{x / 1e6:g}M"
    if x >= 1e3:
        return f"{x / 1e3:g}k"
    return f"{x:g}"
