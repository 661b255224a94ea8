"""Start a server, run the selected cases under every condition, return the results data."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import create_async_engine

from async_batch.testing import PostgresServer, ThreadedWireProxy, postgres_server, sqlalchemy_url
from bench._harness import METHOD_BY_KEY, METHODS, Condition, Harness, Method, MethodResult
from bench._results import (
    FORMAT,
    condition_dict,
    environment,
    now_iso,
    result_dict,
)
from bench._scenario import Case, Scenario
from bench.scenarios import SCENARIO_NAMES, load_all

__all__ = ["BenchOptions", "run"]

QUICK_REPEATS = 3


@dataclass
class BenchOptions:
    scenarios: Sequence[str] = SCENARIO_NAMES
    """Scenario names (file names) or case keys."""
    repeat: int | None = None
    quick: bool = False
    rtt_ms: Sequence[float] = (3.0,)
    methods: Sequence[str] | None = None
    command: str = "python -m bench"


def select_cases(options: BenchOptions) -> list[tuple[Scenario, Case]]:
    wanted = list(options.scenarios)
    pairs = [(s, c) for s in load_all(SCENARIO_NAMES) for c in s.cases(options.quick)]
    keys = [c.key for _, c in pairs]
    unknown = [w for w in wanted if w not in SCENARIO_NAMES and w not in keys]
    if unknown:
        raise SystemExit(
            f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIO_NAMES)}"
            f" (or one case of them: {', '.join(keys)})"
        )
    return [(s, c) for s, c in pairs if s.name in wanted or c.key in wanted]


def select_methods(options: BenchOptions) -> list[Method]:
    if not options.methods:
        return list(METHODS)
    unknown = [m for m in options.methods if m not in METHOD_BY_KEY]
    if unknown:
        raise SystemExit(
            f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHOD_BY_KEY)}"
        )
    keys = set(options.methods)
    return [m for m in METHODS if m.key in keys]


def conditions_for(options: BenchOptions) -> list[Condition]:
    return [Condition.loopback()] + [Condition.rtt(x) for x in options.rtt_ms if x > 0]


def repeats_for(case: Case, options: BenchOptions) -> int:
    if options.repeat is not None:
        return max(1, options.repeat)
    return min(case.repeats, QUICK_REPEATS) if options.quick else case.repeats


def run(options: BenchOptions, console: Console) -> dict[str, Any]:
    """Run the benchmark; returns the results data (see `bench._results`)."""
    pairs = select_cases(options)
    methods = select_methods(options)
    conditions = conditions_for(options)
    started = now_iso()
    t0 = time.perf_counter()
    console.print("[dim]starting PostgreSQL…[/dim]")
    with postgres_server() as server:
        db = f"bench_{uuid.uuid4().hex[:12]}"
        dsn = server.create_database(db)
        try:
            env = environment(server.server_version(), server.kind)
            with contextlib.ExitStack() as stack:
                proxies: dict[str, ThreadedWireProxy] = {}
                for cond in conditions:
                    if cond.proxied:
                        proxies[cond.key] = stack.enter_context(
                            ThreadedWireProxy.for_dsn(dsn, cond.delay_ms)
                        )
                if not proxies:
                    proxies["count"] = stack.enter_context(ThreadedWireProxy.for_dsn(dsn, 0.0))
                data = asyncio.run(
                    _run_async(server, dsn, pairs, methods, conditions, proxies, options, console)
                )
        finally:
            server.drop_database(db)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    env["machine"]["loadavg_at_end"] = list(load) if load else None
    scenario_set = {s.name for s, _ in pairs}
    return {
        "format": FORMAT,
        "started_at": started,
        "finished_at": now_iso(),
        "wall_s": round(time.perf_counter() - t0, 1),
        "command": options.command,
        "quick": options.quick,
        "complete": (
            scenario_set == set(SCENARIO_NAMES)
            and len(methods) == len(METHODS)
            and not options.quick
        ),
        **env,
        **data,
    }


async def _create_tables(dsn: str, admin: asyncpg.Connection, scenarios: list[Scenario]) -> None:
    metadatas: list[MetaData] = []
    for s in scenarios:
        if all(s.metadata is not m for m in metadatas):
            metadatas.append(s.metadata)
    engine = create_async_engine(sqlalchemy_url(dsn))
    try:
        async with engine.begin() as conn:
            for md in metadatas:
                await conn.run_sync(md.create_all)
    finally:
        await engine.dispose()
    # Autovacuum waking up mid-run is noise; these tables are truncated between runs anyway.
    for md in metadatas:
        for table in md.sorted_tables:
            await admin.execute(f"ALTER TABLE {table.name} SET (autovacuum_enabled = false)")


async def _rtts(
    dsn: str, conditions: list[Condition], proxies: dict[str, ThreadedWireProxy]
) -> dict[str, float]:
    from bench._harness import measure_rtt

    out: dict[str, float] = {}
    for cond in conditions:
        if cond.proxied:
            out[cond.key] = await proxies[cond.key].measure_rtt(dsn=dsn)
        else:
            out[cond.key] = await measure_rtt(dsn)
    return out


async def _run_async(
    server: PostgresServer,
    dsn: str,
    pairs: list[tuple[Scenario, Case]],
    methods: list[Method],
    conditions: list[Condition],
    proxies: dict[str, ThreadedWireProxy],
    options: BenchOptions,
    console: Console,
) -> dict[str, Any]:
    admin = await asyncpg.connect(dsn)
    try:
        scenarios: list[Scenario] = []
        for s, _ in pairs:
            if s not in scenarios:
                scenarios.append(s)
        await _create_tables(dsn, admin, scenarios)
        settings = {
            name: await admin.fetchval(f"SHOW {name}")
            for name in ("fsync", "synchronous_commit", "full_page_writes", "jit", "shared_buffers")
        }
        rtt_start = await _rtts(dsn, conditions, proxies)
        for cond in conditions:
            console.print(
                f"[bold]{cond.label}[/bold]: measured RTT {rtt_start[cond.key]:.3f} ms"
                + (
                    f" (proxy delay {cond.delay_ms:g} ms per direction)"
                    if cond.proxied
                    else " (direct connection)"
                )
            )

        results: list[MethodResult] = []
        counting = not any(c.proxied for c in conditions)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        ) as progress:
            steps_per_case = {}
            for s, case in pairs:
                applicable = [m for m in methods if m.key not in s.omitted]
                n = len(applicable) * (repeats_for(case, options) + 1) * len(conditions)
                if counting:
                    n += 2 * len(applicable)
                steps_per_case[case.key] = n
            overall = progress.add_task("[bold]all cases", total=sum(steps_per_case.values()))
            current: dict[str, TaskID] = {}

            def step(msg: str) -> None:
                progress.update(current["case"], advance=1, description=msg)
                progress.advance(overall)

            harness = Harness(dsn, admin, proxies, methods, on_step=step)
            for s, case in pairs:
                current["case"] = progress.add_task(case.key, total=steps_per_case[case.key])
                await harness.prepare(s, case)
                case_results: list[MethodResult] = []
                for cond in conditions:
                    case_results += await harness.run_condition(
                        s, case, cond, repeats_for(case, options)
                    )
                if counting:
                    await harness.count_round_trips(s, case, case_results)
                else:
                    _share_round_trips(case_results)
                progress.update(current["case"], description=f"[green]{case.key} done")
                results += case_results
        rtt_end = await _rtts(dsn, conditions, proxies)
    finally:
        await admin.close()

    return {
        "server_settings": settings,
        "conditions": [
            condition_dict(c, {"start": rtt_start[c.key], "end": rtt_end[c.key]})
            for c in conditions
        ],
        "methods": [
            {"key": m.key, "label": m.label, "family": m.family, "options": m.options}
            for m in methods
        ],
        "cases": [
            {
                "key": c.key,
                "scenario": s.name,
                "title": c.title,
                "description": s.description,
                "rows": c.rows,
                "size": c.size,
                "repeats": repeats_for(c, options),
                "omitted": dict(s.omitted),
            }
            for s, c in pairs
        ],
        "results": [result_dict(r) for r in results],
    }


def _share_round_trips(results: list[MethodResult]) -> None:
    """Round trips do not depend on latency: give unproxied rows the proxied count."""
    counted = {
        r.method.key: r for r in results if r.condition.proxied and r.round_trips is not None
    }
    for r in results:
        if r.round_trips is None and r.method.key in counted:
            src = counted[r.method.key]
            r.round_trips = src.round_trips
            r.round_trips_from = src.condition.key
