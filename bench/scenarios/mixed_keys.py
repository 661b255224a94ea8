"""Mixed key sets: a column with a Python-side default, set explicitly on every 2nd object
(1,000 rows).

Native SQLAlchemy leaves a defaulted column out of the INSERT when the object does not set it,
so consecutive objects alternate between two key sets and every row becomes its own INSERT
(~1 round trip per row). ORM bulk and Core get the same alternating dicts an application would
pass; raw asyncpg fills the default in Python (complete records are the natural raw shape).

Run alone: ``python -m bench.scenarios.mixed_keys [--quick] [--repeat N] ...``
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import MetaData, String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench._scenario import Case, RawTable, SingleTableScenario


class Base(DeclarativeBase):
    metadata = MetaData()


DEFAULT_COLOR = "red"


class Gadget(Base):
    __tablename__ = "gadget"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    color: Mapped[str] = mapped_column(String(20), default=DEFAULT_COLOR)
    size: Mapped[int]


class MixedKeys(SingleTableScenario):
    name = "mixed_keys"
    title = "mixed key sets"
    description = "1,000 rows; a Python-default column set on every 2nd object (native: row by row)"
    metadata = Base.metadata
    written_tables = ("gadget",)
    model = Gadget
    table = Base.metadata.tables["gadget"]
    raw_table = RawTable("gadget", ("name", "color", "size"))

    def cases(self, quick: bool) -> list[Case]:
        n = 1_000
        return [self.case(f"mixed key sets, {n:,} rows", rows=n, size=n, repeats=5)]

    async def orm_objects(self, session: AsyncSession, case: Case) -> Sequence[Any]:
        return [
            Gadget(name=f"gadget {i}", size=i, color="blue")
            if i % 2
            else Gadget(name=f"gadget {i}", size=i)
            for i in range(case.size)
        ]

    def dicts(self, n: int) -> list[dict[str, Any]]:
        return [
            {"name": f"gadget {i}", "size": i, "color": "blue"}
            if i % 2
            else {"name": f"gadget {i}", "size": i}
            for i in range(n)
        ]

    def records(self, n: int) -> list[tuple[str, str, int]]:
        return [(f"gadget {i}", "blue" if i % 2 else DEFAULT_COLOR, i) for i in range(n)]


SCENARIO = MixedKeys()

if __name__ == "__main__":
    from bench.__main__ import run_scenario_module

    run_scenario_module(SCENARIO.name)
