"""Views of a results file: rich tables for the console, markdown for the README."""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import groupby
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench._results import Row, summarize

__all__ = ["console_tables", "markdown", "notes", "regressions"]


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "\u2013"
    return fmt.format(x)


def _us(row: Row, med: float, lo: float, hi: float) -> str:
    return (
        f"{_num(row.us_per_row(med))} ({_num(row.us_per_row(lo))}\u2013{_num(row.us_per_row(hi))})"
    )


def _times(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "\u2013"
    return f"{x:.2f}\u00d7" if x < 10 else f"{x:.1f}\u00d7"


def _speedup_text(x: float | None) -> Text:
    s = _times(x)
    if x is None or math.isnan(x):
        return Text(s)
    if x >= 1.15:
        return Text(s, style="bold green")
    if x < 0.95:
        return Text(s, style="bold red")
    return Text(s)


def _rate(x: float) -> str:
    if math.isnan(x):
        return "\u2013"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def _rtt_text(data: dict[str, Any], key: str) -> str:
    for c in data["conditions"]:
        if c["key"] == key:
            m = c.get("measured_rtt_ms") or {}
            vals = [v for v in (m.get("start"), m.get("end")) if v is not None]
            if vals:
                return "measured RTT " + " / ".join(f"{v:.2f} ms" for v in vals)
    return ""


def console_tables(data: dict[str, Any], console: Console) -> None:
    rows = summarize(data)
    for cond_key, cond_rows_iter in groupby(
        sorted(rows, key=lambda r: [c["key"] for c in data["conditions"]].index(r.condition)),
        key=lambda r: r.condition,
    ):
        cond_rows = list(cond_rows_iter)
        label = cond_rows[0].condition_label
        table = Table(
            title=f"{label} ({_rtt_text(data, cond_key)})",
            box=box.SIMPLE_HEAVY,
            title_justify="left",
            header_style="bold",
            pad_edge=False,
        )
        table.add_column("scenario", overflow="fold", max_width=28)
        table.add_column("method", no_wrap=True)
        table.add_column("rows", justify="right")
        table.add_column("median s", justify="right")
        table.add_column("rows/s", justify="right")
        table.add_column("µs/row e2e (min\u2013max)", justify="right", no_wrap=True)
        table.add_column("µs/row commit (min\u2013max)", justify="right", no_wrap=True)
        table.add_column("round trips", justify="right")
        table.add_column("\u00d7 native e2e", justify="right")
        table.add_column("\u00d7 native commit", justify="right")
        table.add_column("t / asyncpg em", justify="right")
        table.add_column("t / COPY", justify="right")
        for _case, case_rows_iter in groupby(cond_rows, key=lambda r: r.case):
            case_rows = list(case_rows_iter)
            for i, r in enumerate(case_rows):
                name = r.case_title if i == 0 else ""
                if r.error or not r.runs:
                    table.add_row(
                        name,
                        r.method_label,
                        f"{r.rows:,}",
                        Text("ERROR", style="bold red"),
                        *([""] * 8),
                    )
                    continue
                table.add_row(
                    name,
                    r.method_label,
                    f"{r.rows:,}",
                    f"{r.e2e_median:.4f}",
                    _rate(r.rows_per_s),
                    _us(r, r.e2e_median, r.e2e_min, r.e2e_max),
                    _us(r, r.commit_median, r.commit_min, r.commit_max),
                    _num(r.round_trips, "{:,}"),
                    _speedup_text(r.speedup_e2e),
                    _speedup_text(r.speedup_commit),
                    _times(r.vs_executemany),
                    _times(r.vs_copy),
                    end_section=i == len(case_rows) - 1,
                )
        console.print(table)


def regressions(data: dict[str, Any]) -> list[str]:
    """Cases where an async_batch method is slower than native (a library bug to report)."""
    out = []
    for r in summarize(data):
        if not r.method.startswith("ab_") or r.error:
            continue
        for what, x in (("end to end", r.speedup_e2e), ("commit phase", r.speedup_commit)):
            if x is not None and x < 0.97:
                out.append(
                    f"{r.method_label} is slower than native ({what}, {_times(x)}) on "
                    f"{r.case_title} / {r.condition_label}"
                )
    return out


def notes(data: dict[str, Any]) -> list[str]:
    """What async_batch did per case, omitted methods, errors, slow spots."""
    out: list[str] = []
    rows = summarize(data)
    first_cond = data["conditions"][0]["key"] if data["conditions"] else None
    reports = {
        (r["case"], r["method"]): r.get("flush_report")
        for r in data["results"]
        if r["condition"] == first_cond
    }
    for case in data["cases"]:
        for r in rows:
            if r.case != case["key"] or r.condition != first_cond:
                continue
            if r.method == "ab_auto" and r.strategies:
                out.append(f"{case['title']} · async_batch auto wrote {r.strategies}")
            report = reports.get((r.case, r.method)) or {}
            if r.method.startswith("ab_") and r.method != "ab_prefetch":
                for fb in report.get("fallbacks") or []:
                    out.append(
                        f"{case['title']} · {r.method_label} left {fb.get('objects')} "
                        f"{fb.get('what')} objects native: {fb.get('reason')}"
                    )
        for key, why in (case.get("omitted") or {}).items():
            out.append(f"{case['title']} · {key} omitted: {why}")
    for res in data["results"]:
        if res["error"]:
            out.append(
                f"ERROR {res['case']} / {res['condition']} / {res['method']}: {res['error']}"
            )
    return out


# --------------------------------------------------------------------------------------------
# Markdown (README)
# --------------------------------------------------------------------------------------------


def _md_table(header: list[str], body: Iterable[list[str]], align: str) -> list[str]:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|")
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return lines


def markdown(data: dict[str, Any], command: str) -> str:
    rows = summarize(data)
    conds = data["conditions"]
    by = {(r.case, r.condition, r.method): r for r in rows}
    v = data["versions"]
    m = data["machine"]
    out: list[str] = []
    rtts = "; ".join(f"{c['label']}: {_rtt_text(data, c['key']) or 'n/a'}" for c in conds)
    out.append(
        f"Produced by `{command}` on {data['started_at'][:10]}: {m.get('cpu_count')} CPUs "
        f"({m.get('cpu_model') or m.get('arch')}), {m.get('platform')}; Python {v['python']}, "
        f"SQLAlchemy {v['sqlalchemy']}, asyncpg {v['asyncpg']}, PostgreSQL {v['postgresql']}, "
        f"async_batch {v['async_batch']}"
        + (f" ({v['async_batch_git']})" if v.get("async_batch_git") else "")
        + f". {rtts}."
    )
    if data.get("quick"):
        out.append("")
        out.append("**Quick run** (fewer repeats, smaller sizes): not for comparison.")
    out.append("")
    out.append(
        "Medians of the timed runs (after a warm-up); µs per row, end to end (build objects + "
        "add_all + flush + COMMIT) and commit phase (flush + COMMIT). Round trips are counted "
        "on the wire for flush + COMMIT."
    )
    out.append("")

    # headline: native vs async_batch auto vs raw COPY, per case, every condition
    header = ["workload", "rows", "round trips native → auto"]
    for c in conds:
        header += [
            f"{c['label']}: native µs/row",
            "async_batch µs/row",
            "speed-up e2e (commit)",
            "asyncpg COPY µs/row",
        ]
    body = []
    for case in data["cases"]:
        nat0 = by.get((case["key"], conds[0]["key"], "native")) if conds else None
        auto0 = by.get((case["key"], conds[0]["key"], "ab_auto")) if conds else None
        trips = (
            f"{_num(nat0.round_trips, '{:,}')} → {_num(auto0.round_trips, '{:,}')}"
            if nat0 and auto0
            else "\u2013"
        )
        cells = [case["title"], f"{case['rows']:,}", trips]
        for c in conds:
            nat = by.get((case["key"], c["key"], "native"))
            auto = by.get((case["key"], c["key"], "ab_auto"))
            copy = by.get((case["key"], c["key"], "asyncpg_copy"))
            cells += [
                _num(nat.us_per_row(nat.e2e_median)) if nat and nat.runs else "\u2013",
                _num(auto.us_per_row(auto.e2e_median)) if auto and auto.runs else "\u2013",
                (
                    f"**{_times(auto.speedup_e2e)}** ({_times(auto.speedup_commit)})"
                    if auto and auto.runs
                    else "\u2013"
                ),
                _num(copy.us_per_row(copy.e2e_median)) if copy and copy.runs else "\u2013",
            ]
        body.append(cells)
    out += _md_table(header, body, "lrr" + "rrrr" * len(conds))
    out.append("")

    for c in conds:
        out.append("<details>")
        out.append(f"<summary>Every method, {c['label']} ({_rtt_text(data, c['key'])})</summary>")
        out.append("")
        header = [
            "workload",
            "method",
            "µs/row e2e (min\u2013max)",
            "µs/row commit (min\u2013max)",
            "round trips",
            "\u00d7 native e2e",
            "\u00d7 native commit",
            "t / asyncpg em",
            "t / COPY",
        ]
        body = []
        for case in data["cases"]:
            first = True
            for r in rows:
                if r.case != case["key"] or r.condition != c["key"]:
                    continue
                name = case["title"] if first else ""
                first = False
                if r.error or not r.runs:
                    body.append([name, r.method_label, "error", "", "", "", "", "", ""])
                    continue
                body.append(
                    [
                        name,
                        r.method_label,
                        _us(r, r.e2e_median, r.e2e_min, r.e2e_max),
                        _us(r, r.commit_median, r.commit_min, r.commit_max),
                        _num(r.round_trips, "{:,}"),
                        _times(r.speedup_e2e),
                        _times(r.speedup_commit),
                        _times(r.vs_executemany),
                        _times(r.vs_copy),
                    ]
                )
        out += _md_table(header, body, "llrrrrrrr")
        out.append("")
        out.append("</details>")
        out.append("")
    omitted = [
        f"{case['title']}: {key} — {why}"
        for case in data["cases"]
        for key, why in (case.get("omitted") or {}).items()
    ]
    if omitted:
        out.append("Omitted: " + "; ".join(omitted) + ".")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
