"""SQLAlchemy's classic single-table insert benchmark (``examples/performance``'s shape):
``item(id serial pk, name varchar(50), ival int, fval float, tval text)`` at 1,000 / 10,000 /
100,000 rows.

Run alone: ``python -m bench.scenarios.single_table [--quick] [--repeat N] ...``
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy import MetaData, String, Text, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench._scenario import Case, Phase, Scenario


class Base(DeclarativeBase):
    metadata = MetaData()


class Item(Base):
    __tablename__ = "item"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    ival: Mapped[int]
    fval: Mapped[float]
    tval: Mapped[str] = mapped_column(Text)


ITEM = Base.metadata.tables["item"]
TVAL = "some text value of moderate length, as in SQLAlchemy's own performance suite"
_COLUMNS = ["name", "ival", "fval", "tval"]
_INSERT = "INSERT INTO item (name, ival, fval, tval) VALUES ($1, $2, $3, $4)"


def _records(n: int) -> list[tuple[str, int, float, str]]:
    return [(f"item {i}", i, i * 0.5, TVAL) for i in range(n)]


def _dicts(n: int) -> list[dict[str, Any]]:
    return [{"name": f"item {i}", "ival": i, "fval": i * 0.5, "tval": TVAL} for i in range(n)]


class SingleTable(Scenario):
    name = "single_table"
    title = "single table"
    description = "item(id serial pk, name varchar(50), ival int, fval float, tval text)"
    metadata = Base.metadata
    written_tables = ("item",)

    def cases(self, quick: bool) -> list[Case]:
        sizes = [(1_000, 9), (10_000, 7)] if quick else [(1_000, 9), (10_000, 7), (100_000, 5)]
        return [
            Case(
                scenario=self.name,
                key=f"single_table_{n // 1000}k",
                title=f"single table, {n:,} rows",
                rows=n,
                size=n,
                repeats=repeats,
                # same statements as the full run (1,000-row batches), a tenth of the time
                warmup_size=10_000 if n > 10_000 else None,
            )
            for n, repeats in sizes
        ]

    def expected_rows(self, case: Case) -> dict[str, int]:
        return {"item": case.size}

    async def orm_objects(self, session: AsyncSession, case: Case) -> Sequence[Any]:
        return [Item(name=f"item {i}", ival=i, fval=i * 0.5, tval=TVAL) for i in range(case.size)]

    async def orm_bulk(self, session: AsyncSession, case: Case, phase: Phase) -> None:
        rows = _dicts(case.size)
        with phase.commit():
            await session.execute(insert(Item), rows)
            await session.commit()

    async def core(self, conn: AsyncConnection, case: Case, phase: Phase) -> None:
        rows = _dicts(case.size)
        with phase.commit():
            await conn.execute(ITEM.insert(), rows)
            await conn.commit()

    async def asyncpg_executemany(self, con: asyncpg.Connection, case: Case, phase: Phase) -> None:
        records = _records(case.size)
        with phase.commit():
            async with con.transaction():
                await con.executemany(_INSERT, records)

    async def asyncpg_copy(self, con: asyncpg.Connection, case: Case, phase: Phase) -> None:
        records = _records(case.size)
        with phase.commit():
            async with con.transaction():
                await con.copy_records_to_table("item", records=records, columns=_COLUMNS)


SCENARIO = SingleTable()

if __name__ == "__main__":
    from bench.__main__ import run_scenario_module

    run_scenario_module(SCENARIO.name)
