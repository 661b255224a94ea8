"""A table with ``implicit_returning=False`` (1,000 rows).

Without RETURNING, native SQLAlchemy gets each new id with ``SELECT nextval(...)`` before the
row's INSERT: two round trips per row. Bulk, Core and raw asyncpg need no ids back here, so they
insert without them. The rows are ``single_table``'s, into a table of the same shape.

Run alone: ``python -m bench.scenarios.no_returning [--quick] [--repeat N] ...``
"""

from __future__ import annotations

from sqlalchemy import MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench._scenario import Case, RawTable
from bench.scenarios.single_table import SingleTable


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


class NoReturning(SingleTable):
    name = "no_returning"
    title = "implicit_returning=False"
    description = "1,000 rows into a Table(implicit_returning=False) (native: nextval + INSERT)"
    metadata = Base.metadata
    written_tables = ("plain_item",)
    model = PlainItem
    table = Base.metadata.tables["plain_item"]
    raw_table = RawTable("plain_item", ("name", "ival", "fval", "tval"))

    def cases(self, quick: bool) -> list[Case]:
        n = 1_000
        return [self.case(f"implicit_returning=False, {n:,} rows", rows=n, size=n, repeats=5)]


SCENARIO = NoReturning()

if __name__ == "__main__":
    from bench.__main__ import run_scenario_module

    run_scenario_module(SCENARIO.name)
