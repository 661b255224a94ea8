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

import asyncpg
from sqlalchemy import MetaData, String, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench._scenario import Case, Phase, Scenario, raw_transaction


class Base(DeclarativeBase):
    metadata = MetaData()


DEFAULT_COLOR = "red"


class Gadget(Base):
    __tablename__ = "gadget"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    color: Mapped[str] = mapped_column(String(20), default=DEFAULT_COLOR)
    size: Mapped[int]


GADGET = Base.metadata.tables["gadget"]
_COLUMNS = ["name", "color", "size"]
_INSERT = "INSERT INTO gadget (name, color, size) VALUES ($1, $2, $3)"


def _dicts(n: int) -> list[dict[str, Any]]:
    return [
        {"name": f"gadget {i}", "size": i, "color": "blue"}
        if i % 2
        else {"name": f"gadget {i}", "size": i}
        for i in range(n)
    ]


def _records(n: int) -> list[tuple[str, str, int]]:
    return [(f"gadget {i}", "blue" if i % 2 else DEFAULT_COLOR, i) for i in range(n)]


class MixedKeys(Scenario):
    name = "mixed_keys"
    title = "mixed key sets"
    description = "1,000 rows; a Python-default column set on every 2nd object (native: row by row)"
    metadata = Base.metadata
    written_tables = ("gadget",)

    def cases(self, quick: bool) -> list[Case]:
        n = 1_000
        return [
            Case(
                scenario=self.name,
                key=self.name,
                title=f"mixed key sets, {n:,} rows",
                rows=n,
                size=n,
                repeats=5,
            )
        ]

    def expected_rows(self, case: Case) -> dict[str, int]:
        return {"gadget": case.size}

    async def orm_objects(self, session: AsyncSession, case: Case) -> Sequence[Any]:
        return [
            Gadget(name=f"gadget {i}", size=i, color="blue")
            if i % 2
            else Gadget(name=f"gadget {i}", size=i)
            for i in range(case.size)
        ]

    async def orm_bulk(self, session: AsyncSession, case: Case, phase: Phase) -> None:
        rows = _dicts(case.size)
        with phase.commit():
            await session.execute(insert(Gadget), rows)
            await session.commit()

    async def core(self, conn: AsyncConnection, case: Case, phase: Phase) -> None:
        rows = _dicts(case.size)
        with phase.commit():
            await conn.execute(GADGET.insert(), rows)
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
                await con.copy_records_to_table("gadget", records=records, columns=_COLUMNS)
                await tr.commit()


SCENARIO = MixedKeys()

if __name__ == "__main__":
    from bench.__main__ import run_scenario_module

    run_scenario_module(SCENARIO.name)
