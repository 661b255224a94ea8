"""Joined-table inheritance with interleaved subclasses: 1,000 objects, engineers and managers
alternating (1,000 base rows + 500 + 500 subclass rows).

ORM bulk inserts each subclass with one ``session.execute(insert(Subclass), dicts)`` (SQLAlchemy
writes the base rows with RETURNING, then the subclass rows). Core inserts the base rows with
``RETURNING id`` (``sort_by_parameter_order=True``) then each subclass table. Raw asyncpg
fetches the 1,000 ids in one ``nextval`` query, then writes the three tables.

Run alone: ``python -m bench.scenarios.joined_inheritance [--quick] [--repeat N] ...``
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy import ForeignKey, MetaData, String, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench._scenario import Case, Phase, RawTable, RawWrite, Scenario, nextvals, raw_commit


class Base(DeclarativeBase):
    metadata = MetaData()


class Employee(Base):
    __tablename__ = "employee"

    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(50))

    __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "employee"}


class Engineer(Employee):
    __tablename__ = "engineer"

    id: Mapped[int] = mapped_column(ForeignKey("employee.id"), primary_key=True)
    language: Mapped[str] = mapped_column(String(30))

    __mapper_args__ = {"polymorphic_identity": "engineer"}


class Manager(Employee):
    __tablename__ = "manager"

    id: Mapped[int] = mapped_column(ForeignKey("employee.id"), primary_key=True)
    level: Mapped[int]

    __mapper_args__ = {"polymorphic_identity": "manager"}


EMPLOYEE = Base.metadata.tables["employee"]
ENGINEER = Base.metadata.tables["engineer"]
MANAGER = Base.metadata.tables["manager"]
EMPLOYEE_RAW = RawTable("employee", ("id", "type", "name"))
ENGINEER_RAW = RawTable("engineer", ("id", "language"))
MANAGER_RAW = RawTable("manager", ("id", "level"))
_LANGUAGES = ("python", "rust", "go", "sql")


def _is_engineer(i: int) -> bool:
    return i % 2 == 0


class JoinedInheritance(Scenario):
    name = "joined_inheritance"
    title = "joined inheritance"
    description = "1,000 objects of two joined-table subclasses, interleaved"
    metadata = Base.metadata
    written_tables = ("employee", "engineer", "manager")
    id_table = "employee"

    def cases(self, quick: bool) -> list[Case]:
        n = 1_000
        title = f"joined inheritance, {n:,} interleaved objects"
        return [self.case(title, rows=2 * n, size=n, repeats=9)]

    def expected_rows(self, case: Case) -> dict[str, int]:
        engineers = sum(1 for i in range(case.size) if _is_engineer(i))
        return {
            "employee": case.size,
            "engineer": engineers,
            "manager": case.size - engineers,
        }

    async def orm_objects(self, session: AsyncSession, case: Case) -> Sequence[Any]:
        return [
            Engineer(name=f"emp {i}", language=_LANGUAGES[i % 4])
            if _is_engineer(i)
            else Manager(name=f"emp {i}", level=i % 7)
            for i in range(case.size)
        ]

    async def orm_bulk(self, session: AsyncSession, case: Case, phase: Phase) -> None:
        engineers = [
            {"name": f"emp {i}", "language": _LANGUAGES[i % 4]}
            for i in range(case.size)
            if _is_engineer(i)
        ]
        managers = [
            {"name": f"emp {i}", "level": i % 7} for i in range(case.size) if not _is_engineer(i)
        ]
        with phase.commit():
            await session.execute(insert(Engineer), engineers)
            await session.execute(insert(Manager), managers)
            await session.commit()

    async def core(self, conn: AsyncConnection, case: Case, phase: Phase) -> None:
        base = [
            {"type": "engineer" if _is_engineer(i) else "manager", "name": f"emp {i}"}
            for i in range(case.size)
        ]
        with phase.commit():
            result = await conn.execute(
                EMPLOYEE.insert().returning(EMPLOYEE.c.id, sort_by_parameter_order=True), base
            )
            ids = result.scalars().all()
            engineers = [
                {"id": ids[i], "language": _LANGUAGES[i % 4]}
                for i in range(case.size)
                if _is_engineer(i)
            ]
            managers = [
                {"id": ids[i], "level": i % 7} for i in range(case.size) if not _is_engineer(i)
            ]
            await conn.execute(ENGINEER.insert(), engineers)
            await conn.execute(MANAGER.insert(), managers)
            await conn.commit()

    def _records(
        self, case: Case, ids: list[int]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        base, engineers, managers = [], [], []
        for i, eid in enumerate(ids):
            if _is_engineer(i):
                base.append((eid, "engineer", f"emp {i}"))
                engineers.append((eid, _LANGUAGES[i % 4]))
            else:
                base.append((eid, "manager", f"emp {i}"))
                managers.append((eid, i % 7))
        return base, engineers, managers

    async def raw(self, con: asyncpg.Connection, case: Case, phase: Phase, write: RawWrite) -> None:
        async with raw_commit(con, phase):
            ids = await nextvals(con, self.id_sequence, case.size)
            base, engineers, managers = self._records(case, ids)
            await write(con, EMPLOYEE_RAW, base)
            await write(con, ENGINEER_RAW, engineers)
            await write(con, MANAGER_RAW, managers)


SCENARIO = JoinedInheritance()

if __name__ == "__main__":
    from bench.__main__ import run_scenario_module

    run_scenario_module(SCENARIO.name)
