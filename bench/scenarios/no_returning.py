"""A table with ``implicit_returning=False`` (1,000 rows).

Without RETURNING, native SQLAlchemy gets each new id with ``SELECT nextval(...)`` before the
row's INSERT: two round trips per row. Bulk, Core and raw asyncpg need no ids back here, so they
insert without them.

Run alone: ``python -m bench.scenarios.no_returning [--quick] [--repeat N] ...``
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy import MetaData, String, Text, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench._scenario import Case, Phase, Scenario, raw_transaction


class Base(DeclarativeBase):
    metadata = MetaData()


class PlainItem(Base):
    __tablename__ = "plain_item"
    __table_args__ = {"implicit_returning": False}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    ival: Mapped[int]
    fval: Mapped[float]
    tval: Mapped[str] = mapped_column(Text)


PLAIN_ITEM = Base.metadata.tables["plain_item"]
TVAL = "some text value of moderate length, as in SQLAlchemy's own performance suite"
_COLUMNS = ["name", "ival", "fval", "tval"]
_INSERT = "INSERT INTO plain_item (name, ival, fval, tval) VALUES ($1, $2, $3, $4)"


def _dicts(n: int) -> list[dict[str, Any]]:
    return [{"name": f"item {i}", "ival": i, "fval": i * 0.5, "tval": TVAL} for i in range(n)]


def _records(n: int) -> list[tuple[str, int, float, str]]:
    return [(f"item {i}", i, i * 0.5, TVAL) for i in range(n)]


class NoReturning(Scenario):
    name = "no_returning"
    title = "implicit_returning=False"
    description = "1,000 rows into a Table(implicit_returning=False) (native: nextval + INSERT)"
    metadata = Base.metadata
    written_tables = ("plain_item",)

    def cases(self, quick: bool) -> list[Case]:
        n = 1_000
        return [
            Case(
                scenario=self.name,
                key=self.name,
                title=f"implicit_returning=False, {n:,} rows",
                rows=n,
                size=n,
                repeats=5,
            )
        ]

    def expected_rows(self, case: Case) -> dict[str, int]:
        return {"plain_item": case.size}

    async def orm_objects(self, session: AsyncSession, case: Case) -> Sequence[Any]:
        return [
            PlainItem(name=f"item {i}", ival=i, fval=i * 0.5, tval=TVAL) for i in range(case.size)
        ]

    async def orm_bulk(self, session: AsyncSession, case: Case, phase: Phase) -> None:
        rows = _dicts(case.size)
        with phase.commit():
            await session.execute(insert(PlainItem), rows)
            await session.commit()

    async def core(self, conn: AsyncConnection, case: Case, phase: Phase) -> None:
        rows = _dicts(case.size)
        with phase.commit():
            await conn.execute(PLAIN_ITEM.insert(), rows)
            await conn.commit()

    async def asyncpg_executemany(self, con: asyncpg.Connection, case: Case, phase: Phase) -> None:
        records = _records(case.size)
        with phase.commit():
            async with raw_transaction(con) as tr:
                await con.executemany(_INSERT, records)
                await tr.commit()

    async def asyncpg_copy(self, con: asyncpg.Connection, case: Case, phase: Phase) -> None:
        records = _records(case.size)
        with phase.commit():
            async with raw_transaction(con) as tr:
                await con.copy_records_to_table("plain_item", records=records, columns=_COLUMNS)
                await tr.commit()


SCENARIO = NoReturning()

if __name__ == "__main__":
    from bench.__main__ import run_scenario_module

    run_scenario_module(SCENARIO.name)
