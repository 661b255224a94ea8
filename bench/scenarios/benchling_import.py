"""Benchling workload 1: import 1,000 DNA sequences with 6 annotations each (7,000 rows, parent
and child tables, the child's foreign key pointing at the new parents).

Methods that are not the ORM need the parents' ids before they can write the children:
ORM bulk and Core use ``INSERT ... RETURNING id`` with ``sort_by_parameter_order=True``; raw
asyncpg fetches them in one ``nextval`` query, then writes parents and children.

Run alone: ``python -m bench.scenarios.benchling_import [--quick] [--repeat N] ...``
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from bench._scenario import Case, Phase, RawWrite, Scenario, nextvals, raw_commit
from bench.scenarios._benchling import (
    ALL_TABLES,
    ANNOTATION,
    ANNOTATION_RAW,
    SEQUENCE,
    SEQUENCE_RAW,
    Annotation,
    Base,
    DnaSequence,
    annotation_kwargs,
    annotation_specs,
    sequence_bases,
    sequence_name,
)

PER_SEQUENCE = 6


class BenchlingImport(Scenario):
    name = "benchling_import"
    title = "Benchling import"
    description = "1,000 sequences x 6 annotations: parent + child tables, child FK to new parents"
    metadata = Base.metadata
    written_tables = ALL_TABLES
    id_table = "dna_sequence"

    def cases(self, quick: bool) -> list[Case]:
        n = 1_000
        title = f"Benchling import: {n:,} sequences x {PER_SEQUENCE} annotations"
        return [self.case(title, rows=n * (1 + PER_SEQUENCE), size=n, repeats=7)]

    async def prepare(self, con: asyncpg.Connection, case: Case) -> None:
        await super().prepare(con, case)
        sequence_bases(case.size)
        annotation_specs(PER_SEQUENCE)

    def expected_rows(self, case: Case) -> dict[str, int]:
        return {"dna_sequence": case.size, "annotation": case.size * PER_SEQUENCE}

    async def orm_objects(self, session: AsyncSession, case: Case) -> Sequence[Any]:
        specs = [annotation_kwargs(s) for s in annotation_specs(PER_SEQUENCE)]
        sequences = []
        for i, bases in enumerate(sequence_bases(case.size)):
            seq = DnaSequence(name=sequence_name(i), bases=bases)
            seq.annotations = [Annotation(**kw) for kw in specs]
            sequences.append(seq)
        return sequences

    def _parent_dicts(self, case: Case) -> list[dict[str, Any]]:
        return [
            {"name": sequence_name(i), "bases": b} for i, b in enumerate(sequence_bases(case.size))
        ]

    async def orm_bulk(self, session: AsyncSession, case: Case, phase: Phase) -> None:
        parents = self._parent_dicts(case)
        specs = [annotation_kwargs(s) for s in annotation_specs(PER_SEQUENCE)]
        with phase.commit():
            ids = (
                await session.scalars(
                    insert(DnaSequence).returning(DnaSequence.id, sort_by_parameter_order=True),
                    parents,
                )
            ).all()
            children = [{"sequence_id": sid, **kw} for sid in ids for kw in specs]
            await session.execute(insert(Annotation), children)
            await session.commit()

    async def core(self, conn: AsyncConnection, case: Case, phase: Phase) -> None:
        parents = self._parent_dicts(case)
        specs = [annotation_kwargs(s) for s in annotation_specs(PER_SEQUENCE)]
        with phase.commit():
            result = await conn.execute(
                SEQUENCE.insert().returning(SEQUENCE.c.id, sort_by_parameter_order=True), parents
            )
            ids = result.scalars().all()
            children = [{"sequence_id": sid, **kw} for sid in ids for kw in specs]
            await conn.execute(ANNOTATION.insert(), children)
            await conn.commit()

    @staticmethod
    def _raw_rows(
        named: list[tuple[str, str]], ids: list[int]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        specs = annotation_specs(PER_SEQUENCE)
        parents = [(sid, *p) for sid, p in zip(ids, named, strict=True)]
        children = [(sid, *spec) for sid in ids for spec in specs]
        return parents, children

    @staticmethod
    def _named(case: Case) -> list[tuple[str, str]]:
        return [(sequence_name(i), b) for i, b in enumerate(sequence_bases(case.size))]

    async def raw(self, con: asyncpg.Connection, case: Case, phase: Phase, write: RawWrite) -> None:
        named = self._named(case)
        async with raw_commit(con, phase):
            ids = await nextvals(con, self.id_sequence, case.size)
            parents, children = self._raw_rows(named, ids)
            await write(con, SEQUENCE_RAW, parents)
            await write(con, ANNOTATION_RAW, children)


SCENARIO = BenchlingImport()

if __name__ == "__main__":
    from bench.__main__ import run_scenario_module

    run_scenario_module(SCENARIO.name)
