"""A self-referential chain of 100 nodes (each node's parent is the previous one).

Native SQLAlchemy writes a self-referential mapper row by row (the unit of work turns the cycle
into per-object actions): ~1 round trip per node. Bulk, Core and raw asyncpg cannot let the
database number the rows and still point each row at the previous one in one statement, so
they do what an application would: fetch the ids first (one ``nextval`` query), then write all
rows in one executemany / COPY, parents first.

Run alone: ``python -m bench.scenarios.self_ref_chain [--quick] [--repeat N] ...``
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy import ForeignKey, MetaData, String, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from bench._scenario import (
    Case,
    Phase,
    RawTable,
    RawWrite,
    Scenario,
    nextvals,
    nextvals_sa,
    raw_commit,
)


class Base(DeclarativeBase):
    metadata = MetaData()


class Node(Base):
    __tablename__ = "node"

    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("node.id"))
    name: Mapped[str] = mapped_column(String(50))

    parent: Mapped[Node | None] = relationship(remote_side=[id])


NODE = Base.metadata.tables["node"]
NODE_RAW = RawTable("node", ("id", "parent_id", "name"))


def _chain(ids: Sequence[int]) -> list[tuple[int, int | None, str]]:
    return [(nid, ids[i - 1] if i else None, f"node {i}") for i, nid in enumerate(ids)]


class SelfRefChain(Scenario):
    name = "self_ref_chain"
    title = "self-referential chain"
    description = "100 nodes, each the parent of the next (native: row by row)"
    metadata = Base.metadata
    written_tables = ("node",)
    id_table = "node"

    def cases(self, quick: bool) -> list[Case]:
        n = 100
        return [self.case(f"self-referential chain of {n} nodes", rows=n, size=n, repeats=15)]

    def expected_rows(self, case: Case) -> dict[str, int]:
        return {"node": case.size}

    async def orm_objects(self, session: AsyncSession, case: Case) -> Sequence[Any]:
        nodes: list[Node] = []
        parent: Node | None = None
        for i in range(case.size):
            parent = Node(name=f"node {i}", parent=parent)
            nodes.append(parent)
        return nodes

    async def orm_bulk(self, session: AsyncSession, case: Case, phase: Phase) -> None:
        with phase.commit():
            ids = await nextvals_sa(session, self.id_sequence, case.size)
            rows = [{"id": a, "parent_id": b, "name": c} for a, b, c in _chain(ids)]
            await session.execute(insert(Node), rows)
            await session.commit()

    async def core(self, conn: AsyncConnection, case: Case, phase: Phase) -> None:
        with phase.commit():
            ids = await nextvals_sa(conn, self.id_sequence, case.size)
            rows = [{"id": a, "parent_id": b, "name": c} for a, b, c in _chain(ids)]
            await conn.execute(NODE.insert(), rows)
            await conn.commit()

    async def raw(self, con: asyncpg.Connection, case: Case, phase: Phase, write: RawWrite) -> None:
        async with raw_commit(con, phase):
            ids = await nextvals(con, self.id_sequence, case.size)
            await write(con, NODE_RAW, _chain(ids))


SCENARIO = SelfRefChain()

if __name__ == "__main__":
    from bench.__main__ import run_scenario_module

    run_scenario_module(SCENARIO.name)
