"""What a benchmark scenario is: its tables, its cases (sizes), and one function per method.

A scenario writes the same rows with every method. The harness times two windows of each run:

* end to end: from just after the session/connection is opened (``phase.begin()``) to COMMIT
  done. It includes reading pre-existing rows when the workload needs them, building the ORM
  objects or the records, and writing them.
* the commit phase (``with phase.commit():``): from the first write to COMMIT done. For the ORM
  that is ``session.commit()`` (flush + COMMIT); for bulk/Core/raw methods it is the INSERTs (and
  any id prefetch they need) + COMMIT. Wire round trips are counted over this window.

ORM methods (native and every async_batch variant) share one code path: the scenario only says
which objects to ``add_all``. Bulk, Core and raw asyncpg are written per scenario, the way an
application would write them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import asyncpg
from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from async_batch.testing import ThreadedWireProxy

__all__ = [
    "Case",
    "Phase",
    "Scenario",
    "nextvals",
    "nextvals_sa",
    "raw_transaction",
    "serial_sequence",
]


@dataclass(frozen=True)
class Case:
    """One size of one scenario: what a row of the results table is about."""

    scenario: str
    key: str
    """Unique across all scenarios, e.g. ``single_table_10k``."""
    title: str
    rows: int
    """Rows inserted per run, all tables together."""
    size: int
    """The scenario's own size parameter (objects, parents...)."""
    repeats: int
    """Default number of timed runs (after one warm-up)."""
    warmup_size: int | None = None
    """A smaller size for the warm-up run of a big case (it executes the same SQL statements,
    so it warms the same caches); ``None``: warm up at full size."""

    def warmup_case(self) -> Case:
        if self.warmup_size is None or self.warmup_size >= self.size:
            return self
        return replace(
            self,
            size=self.warmup_size,
            rows=self.rows * self.warmup_size // self.size,
            title=f"{self.title} (warm-up)",
        )


class PhaseError(RuntimeError):
    """A method forgot to mark its phases."""


class Phase:
    """Times one run (end to end and commit phase) and counts the commit phase's round trips."""

    def __init__(self, proxy: ThreadedWireProxy | None) -> None:
        self._proxy = proxy
        self.t_begin: float | None = None
        self.t_commit: float | None = None
        self.t_end: float | None = None
        self.round_trips: int | None = None
        self.messages: dict[str, int] | None = None

    def begin(self) -> None:
        """Start of the end-to-end window (after the session/connection is opened)."""
        self.t_begin = time.perf_counter()

    @contextlib.contextmanager
    def commit(self) -> Iterator[None]:
        """The commit phase: from the first write to COMMIT done."""
        if self.t_begin is None:
            raise PhaseError("phase.commit() before phase.begin()")
        if self._proxy is None:
            self.t_commit = time.perf_counter()
            yield
            self.t_end = time.perf_counter()
            return
        with self._proxy.count() as window:
            self.t_commit = time.perf_counter()
            yield
            self.t_end = time.perf_counter()
        self.round_trips = window.round_trips
        self.messages = dict(window.messages)

    @property
    def e2e_s(self) -> float:
        if self.t_begin is None or self.t_end is None:
            raise PhaseError("the run did not go through phase.begin() and phase.commit()")
        return self.t_end - self.t_begin

    @property
    def commit_s(self) -> float:
        if self.t_commit is None or self.t_end is None:
            raise PhaseError("the run did not go through phase.commit()")
        return self.t_end - self.t_commit


async def nextvals(con: asyncpg.Connection, sequence: str, n: int) -> list[int]:
    """``n`` ids from ``sequence`` in one round trip (raw asyncpg)."""
    rows = await con.fetch(
        "SELECT nextval($1::regclass) FROM generate_series(1, $2::int)", sequence, n
    )
    return [r[0] for r in rows]


async def nextvals_sa(conn: AsyncSession | AsyncConnection, sequence: str, n: int) -> list[int]:
    """``n`` ids from ``sequence`` in one round trip (through SQLAlchemy)."""
    result = await conn.execute(
        text("SELECT nextval(CAST(:seq AS regclass)) FROM generate_series(1, :n)"),
        {"seq": sequence, "n": n},
    )
    return [r[0] for r in result]


class Scenario:
    """Base class of a scenario. Subclasses set the class attributes and the methods they
    support; a method key listed in ``omitted`` is skipped, with the reason shown."""

    name: ClassVar[str]
    """The file name, e.g. ``single_table``; ``--scenario`` matches it."""
    title: ClassVar[str]
    description: ClassVar[str]
    metadata: ClassVar[MetaData]
    written_tables: ClassVar[tuple[str, ...]]
    """Emptied (TRUNCATE ... RESTART IDENTITY, untimed) before every run."""
    omitted: ClassVar[Mapping[str, str]] = {}
    """Method key -> why the scenario does not implement it."""

    def cases(self, quick: bool) -> list[Case]:
        raise NotImplementedError

    async def prepare(self, con: asyncpg.Connection, case: Case) -> None:
        """Once per case, untimed, after every table of the scenario was emptied: insert the
        rows the workload expects to exist, build the input data, look up sequence names."""

    def expected_rows(self, case: Case) -> dict[str, int]:
        """Rows each written table must hold after a run (checked untimed after every run)."""
        raise NotImplementedError

    async def orm_objects(self, session: AsyncSession, case: Case) -> Sequence[Any]:
        """Build (and, if the workload needs it, load) the objects to ``add_all``."""
        raise NotImplementedError

    async def orm_bulk(self, session: AsyncSession, case: Case, phase: Phase) -> None:
        raise NotImplementedError

    async def core(self, conn: AsyncConnection, case: Case, phase: Phase) -> None:
        raise NotImplementedError

    async def asyncpg_executemany(self, con: asyncpg.Connection, case: Case, phase: Phase) -> None:
        raise NotImplementedError

    async def asyncpg_copy(self, con: asyncpg.Connection, case: Case, phase: Phase) -> None:
        raise NotImplementedError


async def serial_sequence(con: asyncpg.Connection, table: str, column: str = "id") -> str:
    """The sequence behind ``table.column``, from the catalog (never a guessed name)."""
    name = await con.fetchval("SELECT pg_get_serial_sequence($1, $2)", table, column)
    if name is None:
        raise RuntimeError(f"{table}.{column} has no sequence")
    return str(name)


@contextlib.asynccontextmanager
async def raw_transaction(con: asyncpg.Connection) -> AsyncIterator[Any]:
    """A transaction the caller commits explicitly (``await tr.commit()``) inside its commit
    phase; rolled back if the block raises before that."""
    tr = con.transaction()
    await tr.start()
    try:
        yield tr
    except BaseException:
        with contextlib.suppress(Exception):
            await tr.rollback()
        raise
