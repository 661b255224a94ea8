"""SQLAlchemy's classic single-table insert benchmark (``examples/performance``'s shape):
``item(id serial pk, name varchar(50), ival int, fval float, tval text)`` at 1,000 / 10,000 /
100,000 rows.

Run alone: ``python -m bench.scenarios.single_table [--quick] [--repeat N] ...``
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from sqlalchemy import MetaData, String, Text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench._scenario import Case, RawTable, SingleTableScenario


class Base(DeclarativeBase):
    metadata = MetaData()


class Item(Base):
    __tablename__ = "item"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    ival: Mapped[int]
    fval: Mapped[float]
    tval: Mapped[str] = mapped_column(Text)


TVAL = "some text value of moderate length, as in SQLAlchemy's own performance suite"


class SingleTable(SingleTableScenario):
    """The item rows; ``no_returning`` writes the same rows into another table."""

    name = "single_table"
    title = "single table"
    description = "item(id serial pk, name varchar(50), ival int, fval float, tval text)"
    metadata = Base.metadata
    written_tables = ("item",)
    model: ClassVar[type[Any]] = Item
    table = Base.metadata.tables["item"]
    raw_table = RawTable("item", ("name", "ival", "fval", "tval"))

    def cases(self, quick: bool) -> list[Case]:
        sizes = [(1_000, 9), (10_000, 7)] if quick else [(1_000, 9), (10_000, 7), (100_000, 5)]
        return [
            self.case(
                f"single table, {n:,} rows",
                key=f"single_table_{n // 1000}k",
                rows=n,
                size=n,
                repeats=repeats,
                # same statements as the full run (1,000-row batches), a tenth of the time
                warmup_size=10_000 if n > 10_000 else None,
            )
            for n, repeats in sizes
        ]

    async def orm_objects(self, session: AsyncSession, case: Case) -> Sequence[Any]:
        return [
            self.model(name=f"item {i}", ival=i, fval=i * 0.5, tval=TVAL) for i in range(case.size)
        ]

    def dicts(self, n: int) -> list[dict[str, Any]]:
        return [{"name": f"item {i}", "ival": i, "fval": i * 0.5, "tval": TVAL} for i in range(n)]

    def records(self, n: int) -> list[tuple[str, int, float, str]]:
        return [(f"item {i}", i, i * 0.5, TVAL) for i in range(n)]


SCENARIO = SingleTable()

if __name__ == "__main__":
    from bench.__main__ import run_scenario_module

    run_scenario_module(SCENARIO.name)
