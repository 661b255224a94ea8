"""Benchling workload 3: auto-annotate 1,000 existing sequences with 100 annotations each
(100,000 rows, each pointing at an existing sequence).

As in the validate workload, the sequences exist before the run and each run reads them first
(part of the end-to-end time, not of the commit phase): the ORM loads the objects, the other
methods read ``(id, bases)`` rows. The warm-up run annotates 100 sequences (the same SQL);
``--quick`` annotates 100 sequences.

Run alone: ``python -m bench.scenarios.benchling_annotate [--quick] [--repeat N] ...``
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from bench._scenario import Case, Phase, RawWrite, Scenario
from bench.scenarios._benchling import (
    ANNOTATION,
    ANNOTATION_RAW,
    SELECT_SEQUENCES_LIMIT,
    SEQUENCE,
    Annotation,
    Base,
    DnaSequence,
    annotation_kwargs,
    annotation_specs,
    load_sequences,
    raw_write_from_sequences,
)

PER_SEQUENCE = 100


class BenchlingAnnotate(Scenario):
    name = "benchling_annotate"
    title = "Benchling auto-annotate"
    description = "read 1,000 existing sequences, write 100 annotations each (FK to them)"
    metadata = Base.metadata
    written_tables = ("annotation",)

    def cases(self, quick: bool) -> list[Case]:
        n = 100 if quick else 1_000
        title = f"Benchling auto-annotate: {n:,} existing sequences x {PER_SEQUENCE} annotations"
        warmup_size = None if quick else 100
        return [self.case(title, rows=n * PER_SEQUENCE, size=n, repeats=5, warmup_size=warmup_size)]

    async def prepare(self, con: asyncpg.Connection, case: Case) -> None:
        await load_sequences(con, case.size)
        annotation_specs(PER_SEQUENCE)

    def expected_rows(self, case: Case) -> dict[str, int]:
        return {"annotation": case.size * PER_SEQUENCE}

    async def orm_objects(self, session: AsyncSession, case: Case) -> Sequence[Any]:
        sequences = (
            await session.scalars(select(DnaSequence).order_by(DnaSequence.id).limit(case.size))
        ).all()
        specs = [annotation_kwargs(s) for s in annotation_specs(PER_SEQUENCE)]
        return [Annotation(sequence=seq, **kw) for seq in sequences for kw in specs]

    def _dicts(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        specs = [annotation_kwargs(s) for s in annotation_specs(PER_SEQUENCE)]
        return [{"sequence_id": sid, **kw} for sid in ids for kw in specs]

    async def orm_bulk(self, session: AsyncSession, case: Case, phase: Phase) -> None:
        loaded = await session.execute(
            select(DnaSequence.id, DnaSequence.bases).order_by(DnaSequence.id).limit(case.size)
        )
        rows = self._dicts([sid for sid, _bases in loaded])
        with phase.commit():
            await session.execute(insert(Annotation), rows)
            await session.commit()

    async def core(self, conn: AsyncConnection, case: Case, phase: Phase) -> None:
        loaded = await conn.execute(
            select(SEQUENCE.c.id, SEQUENCE.c.bases).order_by(SEQUENCE.c.id).limit(case.size)
        )
        rows = self._dicts([sid for sid, _bases in loaded])
        with phase.commit():
            await conn.execute(ANNOTATION.insert(), rows)
            await conn.commit()

    @staticmethod
    def _records(rows: Sequence[Any]) -> list[tuple[Any, ...]]:
        specs = annotation_specs(PER_SEQUENCE)
        return [(r[0], *spec) for r in rows for spec in specs]

    async def raw(self, con: asyncpg.Connection, case: Case, phase: Phase, write: RawWrite) -> None:
        await raw_write_from_sequences(
            con, phase, write, ANNOTATION_RAW, self._records, SELECT_SEQUENCES_LIMIT, case.size
        )


SCENARIO = BenchlingAnnotate()

if __name__ == "__main__":
    from bench.__main__ import run_scenario_module

    run_scenario_module(SCENARIO.name)
