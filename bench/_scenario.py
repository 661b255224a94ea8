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
application would write them; the two raw methods share one function per scenario
(``Scenario.raw``), given the write (``executemany`` or COPY) to use. ``SingleTableScenario``
writes every method of a one-table scenario from its model, table and rows.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import asyncpg
from sqlalchemy import MetaData, Table, insert, text
from sqlalchemy.dialects.postgresql.base import RESERVED_WORDS
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from async_batch.testing import ThreadedWireProxy

__all__ = [
    "Case",
    "Phase",
    "RawTable",
    "RawWrite",
    "Scenario",
    "SingleTableScenario",
    "nextvals",
    "nextvals_sa",
    "raw_commit",
    "raw_transaction",
    "serial_sequence",
    "write_copy",
    "write_executemany",
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


def _quote(column: str) -> str:
    """A lower-case column name as PostgreSQL SQL needs it: double-quoted if a reserved word."""
    return f'"{column}"' if column in RESERVED_WORDS else column


@dataclass(frozen=True)
class RawTable:
    """A table as raw asyncpg writes it: the COPY target and the executemany INSERT of
    ``columns`` (reserved words quoted: ``INSERT INTO t (a, "check") VALUES ($1, $2)``)."""

    name: str
    columns: tuple[str, ...]
    insert_sql: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = ", ".join(_quote(c) for c in self.columns)
        params = ", ".join(f"${i}" for i in range(1, len(self.columns) + 1))
        object.__setattr__(
            self, "insert_sql", f"INSERT INTO {self.name} ({names}) VALUES ({params})"
        )


RawWrite = Callable[[asyncpg.Connection, RawTable, Sequence[tuple[Any, ...]]], Awaitable[None]]
"""How a raw method writes records into a table: ``write_executemany`` or ``write_copy``."""


async def write_executemany(
    con: asyncpg.Connection, table: RawTable, records: Sequence[tuple[Any, ...]]
) -> None:
    """``Connection.executemany`` of the table's INSERT."""
    await con.executemany(table.insert_sql, records)


async def write_copy(
    con: asyncpg.Connection, table: RawTable, records: Sequence[tuple[Any, ...]]
) -> None:
    """``Connection.copy_records_to_table`` (binary COPY)."""
    await con.copy_records_to_table(table.name, records=records, columns=list(table.columns))


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
    id_table: ClassVar[str | None] = None
    """A table whose ``id`` sequence the non-ORM methods draw ids from before writing;
    ``prepare`` looks the sequence up (from the catalog) into ``self.id_sequence``."""

    def __init__(self) -> None:
        self.id_sequence = ""

    def cases(self, quick: bool) -> list[Case]:
        raise NotImplementedError

    def case(
        self,
        title: str,
        *,
        rows: int,
        size: int,
        repeats: int,
        key: str | None = None,
        warmup_size: int | None = None,
    ) -> Case:
        """A case of this scenario, keyed by the scenario's name unless ``key`` is given."""
        return Case(
            scenario=self.name,
            key=self.name if key is None else key,
            title=title,
            rows=rows,
            size=size,
            repeats=repeats,
            warmup_size=warmup_size,
        )

    async def prepare(self, con: asyncpg.Connection, case: Case) -> None:
        """Once per case, untimed, after every table of the scenario was emptied: insert the
        rows the workload expects to exist, build the input data, look up sequence names.
        Overrides call this first (it looks up ``id_sequence``)."""
        if self.id_table is not None:
            self.id_sequence = await serial_sequence(con, self.id_table)

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

    async def raw(self, con: asyncpg.Connection, case: Case, phase: Phase, write: RawWrite) -> None:
        """Both raw asyncpg methods: the same records, written with ``write``."""
        raise NotImplementedError

    async def asyncpg_executemany(self, con: asyncpg.Connection, case: Case, phase: Phase) -> None:
        await self.raw(con, case, phase, write_executemany)

    async def asyncpg_copy(self, con: asyncpg.Connection, case: Case, phase: Phase) -> None:
        await self.raw(con, case, phase, write_copy)


class SingleTableScenario(Scenario):
    """A scenario that writes one table with no foreign keys: ORM bulk and Core insert the
    same dicts (``dicts``), raw asyncpg the same tuples (``records``); no ids are needed back.
    Subclasses set ``model``, ``table``, ``raw_table`` and say how rows look."""

    model: ClassVar[type[Any]]
    """The mapped class (ORM bulk inserts into it)."""
    table: ClassVar[Table]
    """Its table (Core inserts into it)."""
    raw_table: ClassVar[RawTable]
    """The table and columns raw asyncpg writes (all but the serial id)."""

    def dicts(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` rows as ORM bulk and Core get them."""
        raise NotImplementedError

    def records(self, n: int) -> Sequence[tuple[Any, ...]]:
        """The ``n`` rows as raw asyncpg gets them (``raw_table.columns`` order)."""
        raise NotImplementedError

    def expected_rows(self, case: Case) -> dict[str, int]:
        return {self.table.name: case.size}

    async def orm_bulk(self, session: AsyncSession, case: Case, phase: Phase) -> None:
        rows = self.dicts(case.size)
        with phase.commit():
            await session.execute(insert(self.model), rows)
            await session.commit()

    async def core(self, conn: AsyncConnection, case: Case, phase: Phase) -> None:
        rows = self.dicts(case.size)
        with phase.commit():
            await conn.execute(self.table.insert(), rows)
            await conn.commit()

    async def raw(self, con: asyncpg.Connection, case: Case, phase: Phase, write: RawWrite) -> None:
        records = self.records(case.size)
        async with raw_commit(con, phase):
            await write(con, self.raw_table, records)


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


@contextlib.asynccontextmanager
async def raw_commit(con: asyncpg.Connection, phase: Phase) -> AsyncIterator[None]:
    """The commit phase of a raw method that only writes: BEGIN, the block's statements, COMMIT,
    all timed (``phase.commit()``); rolled back if the block raises."""
    with phase.commit():
        async with raw_transaction(con) as tr:
            yield
            await tr.commit()
