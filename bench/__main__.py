"""``python -m bench``: run the benchmark scenarios and report.

Examples::

    python -m bench                          # everything: loopback + 3 ms RTT
    python -m bench --quick                  # smoke run: 3 repeats, no 100,000-row cases
    python -m bench --scenario single_table --repeat 9
    python -m bench --scenario benchling_import,mixed_keys --rtt-ms 10
    python -m bench --rtt-ms 0               # loopback only
    python -m bench.readme                   # README table + docs/bench.png from latest.json

Each scenario is also runnable alone: ``python -m bench.scenarios.<name> [flags]``.
Writes ``bench/results/bench-<timestamp>.json`` (+ ``latest.json``) and a chart next to it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from bench._harness import METHODS
from bench._results import RESULTS_DIR, display_path, write
from bench._runner import BenchOptions, run
from bench.scenarios import SCENARIO_NAMES, load_all


def _split(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out += [x.strip() for x in v.split(",") if x.strip()]
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="async_batch benchmarks: native ORM vs async_batch vs bulk/Core/raw asyncpg.",
    )
    p.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help=f"scenario (file) name or case key, repeatable or comma-separated; "
        f"default: all ({', '.join(SCENARIO_NAMES)})",
    )
    p.add_argument(
        "--method",
        action="append",
        metavar="KEY",
        help=f"only these methods ({', '.join(m.key for m in METHODS)}); default: all",
    )
    p.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="timed runs per method and condition (after one warm-up); default per case, >= 5",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 repeats, no 100,000-row cases (figures not for comparison)",
    )
    p.add_argument(
        "--rtt-ms",
        action="append",
        type=float,
        metavar="MS",
        help="simulated round-trip latency through the proxy, repeatable (default 3; "
        "0 = loopback only). Loopback is always measured.",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    p.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    p.add_argument("--list", action="store_true", help="list scenarios, cases and methods")
    return p


def _console() -> Console:
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=230)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(args_list)
    console = _console()
    if args.list:
        wanted = _split(args.scenario)
        for s in load_all():
            if wanted and s.name not in wanted:
                continue
            console.print(f"[bold]{s.name}[/bold]: {s.description}")
            for c in s.cases(args.quick):
                console.print(f"  {c.key}: {c.title} ({c.rows:,} rows, {c.repeats} repeats)")
        console.print("methods: " + ", ".join(f"{m.key} ({m.label})" for m in METHODS))
        return 0
    options = BenchOptions(
        scenarios=_split(args.scenario) or list(SCENARIO_NAMES),
        repeat=args.repeat,
        quick=args.quick,
        rtt_ms=args.rtt_ms if args.rtt_ms else [3.0],
        methods=_split(args.method) or None,
        command=" ".join(["python -m bench", *args_list]),
    )
    data = run(options, console)
    report(data, console)
    path, latest = write(data, args.out)
    console.print(f"results: {display_path(path)} (and {latest.name})")
    if not args.no_chart:
        from bench._chart import chart

        png = chart(data, path.with_suffix(".png"))
        shutil.copyfile(png, png.parent / "latest.png")
        console.print(f"chart: {display_path(png)} (README: python -m bench.readme)")
    console.print(f"wall time: {data['wall_s']:.0f} s")
    errors = [r for r in data["results"] if r["error"]]
    return 1 if errors else 0


def report(data: dict[str, Any], console: Console) -> None:
    from bench._render import console_tables, notes, regressions

    console_tables(data, console)
    for line in notes(data):
        console.print(f"[dim]•[/dim] {line}", highlight=False)
    for line in regressions(data):
        console.print(f"[bold red]slower than native:[/bold red] {line}", highlight=False)


def run_scenario_module(name: str) -> None:
    """What ``python -m bench.scenarios.<name>`` runs."""
    raise SystemExit(main(["--scenario", name, *sys.argv[1:]]))


if __name__ == "__main__":
    raise SystemExit(main())
