"""Run scenarios x methods x network conditions and collect every run's figures.

How a case is measured (the README's "Method" section says the same):

* One PostgreSQL server for the whole run (``async_batch.testing.postgres_server``), one database.
* Per case and condition: a new engine (so each case starts with an empty statement cache),
  one ``async_sessionmaker`` per ORM method (batching enabled on the batched ones only) and a
  one-connection asyncpg pool for the raw methods.
* One warm-up run of every method (recorded, not counted in the figures), then ``repeats``
  repetitions. Each repetition runs every method once, interleaved (A B C ... A B C ...), and
  starts one method later than the previous one, so drift and position effects spread evenly.
* Before every run, untimed: ``TRUNCATE <written tables> RESTART IDENTITY`` and ``gc.collect()``.
  After every run, untimed: the written tables' row counts are checked.
* Loopback timings use a direct connection: the counting proxy runs in this process and would
  spend GIL time parsing every message, which taxes per-row protocols (executemany) more than
  others. Simulated-latency conditions go through a `ThreadedWireProxy` with ``delay_ms`` per
  direction, and there every run's commit phase is counted on the wire. Round trips do not
  depend on latency, so the loopback rows show the counts from the proxied condition; a run
  with no proxied condition adds one counted run per method through a zero-delay proxy.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Literal

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from async_batch import disable_async_batching, enable_async_batching, last_flush
from async_batch.testing import ThreadedWireProxy, sqlalchemy_url
from bench._scenario import Case, Phase, Scenario

__all__ = [
    "METHODS",
    "Condition",
    "Harness",
    "Method",
    "MethodResult",
    "Run",
    "measure_rtt",
]

Family = Literal["orm", "bulk", "core", "raw"]


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    family: Family
    options: dict[str, Any] | None = None
    """``enable_async_batching`` options; ``None`` for methods without batching."""

    @property
    def batched(self) -> bool:
        return self.options is not None


METHODS: tuple[Method, ...] = (
    Method("native", "native ORM", "orm"),
    Method("ab_auto", "async_batch auto", "orm", {"strategy": "auto"}),
    Method("ab_copy", "async_batch copy", "orm", {"strategy": "copy"}),
    Method("ab_unnest", "async_batch unnest", "orm", {"strategy": "unnest"}),
    Method("ab_executemany", "async_batch executemany", "orm", {"strategy": "executemany"}),
    Method("ab_prefetch", "async_batch prefetch-only", "orm", {"fast_path": False}),
    Method("orm_bulk", "ORM bulk insert()", "bulk"),
    Method("core", "Core executemany", "core"),
    Method("asyncpg_executemany", "asyncpg executemany", "raw"),
    Method("asyncpg_copy", "asyncpg COPY", "raw"),
)
METHOD_BY_KEY = {m.key: m for m in METHODS}


@dataclass(frozen=True)
class Condition:
    key: str
    label: str
    delay_ms: float
    """Added latency per direction (the RTT grows by twice this)."""
    proxied: bool

    @classmethod
    def loopback(cls) -> Condition:
        return cls("loopback", "loopback", 0.0, False)

    @classmethod
    def rtt(cls, rtt_ms: float) -> Condition:
        text = f"{rtt_ms:g}"
        return cls(f"rtt{text}ms", f"{text} ms RTT", rtt_ms / 2.0, True)


@dataclass
class Run:
    warmup: bool
    e2e_s: float
    commit_s: float
    round_trips: int | None
    messages: dict[str, int] | None = None


@dataclass
class MethodResult:
    case: Case
    condition: Condition
    method: Method
    runs: list[Run] = field(default_factory=list)
    round_trips: int | None = None
    round_trips_from: str | None = None
    """The condition whose counted runs gave ``round_trips``."""
    flush_report: dict[str, Any] | None = None
    """async_batch's report of the last timed run (batched methods only)."""
    error: str | None = None
    error_trace: str | None = None

    @property
    def timed(self) -> list[Run]:
        return [r for r in self.runs if not r.warmup]

    def counted_round_trips(self) -> list[int]:
        return [r.round_trips for r in self.timed if r.round_trips is not None]


def _report_dict(report: Any) -> dict[str, Any] | None:
    if report is None:
        return None
    data: dict[str, Any] = (
        asdict(report) if is_dataclass(report) and not isinstance(report, type) else {}
    )
    data["summary"] = report.summary()
    return data


async def measure_rtt(dsn: str, n: int = 20) -> float:
    """Median ms of ``SELECT 1`` on a warm, dedicated asyncpg connection (not counted by a
    proxy: it uses the probe application name)."""
    from async_batch.testing import PROBE_APPLICATION_NAME

    conn = await asyncpg.connect(dsn, server_settings={"application_name": PROBE_APPLICATION_NAME})
    try:
        await conn.fetchval("SELECT 1")
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            await conn.fetchval("SELECT 1")
            samples.append(time.perf_counter() - t0)
    finally:
        await conn.close()
    return statistics.median(samples) * 1000.0


PROXY_SWITCH_INTERVAL_S = 0.0005
"""GIL switch interval while a proxy thread is in use.

The proxy thread spins (``asyncio.sleep(0)``) through the last 1.5 ms before each delayed
delivery, releasing the GIL only for an instant at each poll. With CPython's default 5 ms switch
interval the benchmark thread, whenever it has work while a chunk is in flight (pipelined
executemany, COPY streaming, encoding the next batch), waits up to 5 ms per hand-over: measured
on single_table 10k at 3 ms RTT, native ORM went from 59 to 84 us/row. 0.5 ms bounds that wait;
it changes nothing when no other thread wants the GIL (the loopback condition)."""


@contextlib.asynccontextmanager
async def _switch_interval(active: bool) -> AsyncIterator[None]:
    if not active:
        yield
        return
    old = sys.getswitchinterval()
    sys.setswitchinterval(PROXY_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


ProgressHook = Callable[[str], None]
"""Called after each run with a short description of the next step."""


class _Target:
    """Where one condition's runs go: an engine, session makers and a raw pool."""

    def __init__(
        self,
        engine: AsyncEngine,
        makers: dict[str, async_sessionmaker[Any]],
        pool: asyncpg.Pool,
        proxy: ThreadedWireProxy | None,
    ) -> None:
        self.engine = engine
        self.makers = makers
        self.pool = pool
        self.proxy = proxy


class Harness:
    def __init__(
        self,
        dsn: str,
        admin: asyncpg.Connection,
        proxies: dict[str, ThreadedWireProxy],
        methods: Sequence[Method] = METHODS,
        on_step: ProgressHook | None = None,
    ) -> None:
        self.dsn = dsn
        self.admin = admin
        self.proxies = proxies
        """Condition key -> its proxy (proxied conditions), plus ``"count"`` -> a zero-delay
        proxy when round trips must be counted apart from the timed runs."""
        self.methods = list(methods)
        self.on_step = on_step or (lambda _msg: None)

    # -- plumbing -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _target(self, proxy: ThreadedWireProxy | None) -> AsyncIterator[_Target]:
        dsn = proxy.dsn_for(self.dsn) if proxy is not None else self.dsn
        engine = create_async_engine(sqlalchemy_url(dsn), pool_size=2, max_overflow=2)
        makers: dict[str, async_sessionmaker[Any]] = {}
        for m in self.methods:
            if m.family in ("orm", "bulk"):
                maker = async_sessionmaker(engine)
                if m.options is not None:
                    enable_async_batching(maker, **m.options)
                makers[m.key] = maker
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=1, max_inactive_connection_lifetime=0
        )
        try:
            yield _Target(engine, makers, pool, proxy)
        finally:
            for m in self.methods:
                if m.options is not None and m.key in makers:
                    disable_async_batching(makers[m.key])
            await pool.close()
            await engine.dispose()

    async def _reset(self, scenario: Scenario) -> None:
        await self.admin.execute(f"TRUNCATE {', '.join(scenario.written_tables)} RESTART IDENTITY")

    async def _check(self, scenario: Scenario, case: Case) -> None:
        for table, expected in scenario.expected_rows(case).items():
            got = await self.admin.fetchval(f"SELECT count(*) FROM {table}")
            if got != expected:
                raise AssertionError(f"{table} holds {got} rows after the run, expected {expected}")

    async def _run_once(
        self, scenario: Scenario, case: Case, method: Method, target: _Target
    ) -> tuple[Phase, Any]:
        await self._reset(scenario)
        gc.collect()
        phase = Phase(target.proxy)
        report: Any = None
        if method.family == "orm":
            async with target.makers[method.key]() as session:
                phase.begin()
                objects = await scenario.orm_objects(session, case)
                session.add_all(objects)
                with phase.commit():
                    await session.commit()
                if method.batched:
                    report = last_flush(session)
                    if report is None:
                        raise AssertionError("batching is enabled but async_batch did not run")
                del objects
        elif method.family == "bulk":
            async with target.makers[method.key]() as session:
                phase.begin()
                await scenario.orm_bulk(session, case, phase)
        elif method.family == "core":
            async with target.engine.connect() as conn:
                phase.begin()
                await scenario.core(conn, case, phase)
        else:
            async with target.pool.acquire() as con:
                phase.begin()
                await getattr(scenario, method.key)(con, case, phase)
        await self._check(scenario, case)
        return phase, report

    # -- cases ----------------------------------------------------------------------------

    def applicable(self, scenario: Scenario) -> list[Method]:
        return [m for m in self.methods if m.key not in scenario.omitted]

    async def prepare(self, scenario: Scenario, case: Case) -> None:
        tables = ", ".join(t.name for t in scenario.metadata.sorted_tables)
        await self.admin.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        await scenario.prepare(self.admin, case)

    async def run_condition(
        self,
        scenario: Scenario,
        case: Case,
        condition: Condition,
        repeats: int,
    ) -> list[MethodResult]:
        """Warm-up + ``repeats`` interleaved repetitions of every applicable method."""
        methods = self.applicable(scenario)
        results = {m.key: MethodResult(case, condition, m) for m in methods}
        proxy = self.proxies.get(condition.key) if condition.proxied else None
        async with self._target(proxy) as target, _switch_interval(condition.proxied):
            for rep in range(-1, repeats):
                shift = max(rep, 0) % len(methods)
                for m in methods[shift:] + methods[:shift]:
                    res = results[m.key]
                    if res.error is not None:
                        self.on_step(f"{case.key} {condition.label}: {m.label} (skipped)")
                        continue
                    run_case = case.warmup_case() if rep < 0 else case
                    await self._one(scenario, run_case, m, target, res, warmup=rep < 0)
        for res in results.values():
            counts = res.counted_round_trips()
            if counts:
                res.round_trips = int(statistics.median(counts))
                res.round_trips_from = condition.key
        return list(results.values())

    async def count_round_trips(
        self, scenario: Scenario, case: Case, results: list[MethodResult]
    ) -> None:
        """For a run without a proxied condition: a warm-up and one counted run per method
        through the zero-delay proxy."""
        proxy = self.proxies["count"]
        async with self._target(proxy) as target, _switch_interval(True):
            for res in results:
                if res.error is not None:
                    continue
                scratch = MethodResult(case, res.condition, res.method)
                await self._one(scenario, case, res.method, target, scratch, warmup=True)
                await self._one(scenario, case, res.method, target, scratch, warmup=False)
                counts = scratch.counted_round_trips()
                if scratch.error is not None:
                    res.error = scratch.error
                elif counts:
                    res.round_trips = counts[0]
                    res.round_trips_from = "count"

    async def _one(
        self,
        scenario: Scenario,
        case: Case,
        m: Method,
        target: _Target,
        res: MethodResult,
        *,
        warmup: bool,
    ) -> None:
        try:
            phase, report = await self._run_once(scenario, case, m, target)
        except Exception as exc:
            res.error = f"{type(exc).__name__}: {exc}"
            res.error_trace = traceback.format_exc()
        else:
            res.runs.append(
                Run(
                    warmup=warmup,
                    e2e_s=phase.e2e_s,
                    commit_s=phase.commit_s,
                    round_trips=phase.round_trips,
                    messages=phase.messages,
                )
            )
            if report is not None and not warmup:
                res.flush_report = _report_dict(report)
        self.on_step(f"{case.key} · {res.condition.label} · {m.label}")
