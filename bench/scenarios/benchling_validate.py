"""Benchling workload 2: validate 1,000 existing sequences and write 2,000 result rows.

The sequences exist before the run (inserted once per case, untimed). Each run reads them
(the ORM loads the objects; the other methods read ``(id, bases)`` rows), runs two checks per
sequence, and writes one result row per check, pointing at its sequence. Reading is part of
the end-to-end time and not of the commit phase.

Half of the results have ``message=None``. ORM bulk gets ``render_nulls=True``: without it,
SQLAlchemy drops None values from bulk dicts, the rows alternate between two key sets and every
row becomes its own INSERT (2,001 round trips; measured 3.5 ms per row at 3 ms RTT).

Run alone: ``python -m bench.scenarios.benchling_validate [--quick] [--repeat N] ...``
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from bench._scenario import Case, Phase, RawWrite, Scenario
from bench.scenarios._benchling import (
    RESULT,
    RESULT_RAW,
    SELECT_SEQUENCES,
    SEQUENCE,
    Base,
    DnaSequence,
    ValidationResult,
    load_sequences,
    raw_write_from_sequences,
    validate,
)

CHECKS = 2


class BenchlingValidate(Scenario):
    name = "benchling_validate"
    title = "Benchling validate"
    description = "read 1,000 existing sequences, write 2 validation results each (FK to them)"
    metadata = Base.metadata
    written_tables = ("validation_result",)

    def cases(self, quick: bool) -> list[Case]:
        n = 1_000
        title = f"Benchling validate: {n:,} existing sequences -> {n * CHECKS:,} results"
        return [self.case(title, rows=n * CHECKS, size=n, repeats=7)]

    async def prepare(self, con: asyncpg.Connection, case: Case) -> None:
        await load_sequences(con, case.size)

    def expected_rows(self, case: Case) -> dict[str, int]:
        return {"validation_result": case.size * CHECKS, "dna_sequence": case.size}

    async def orm_objects(self, session: AsyncSession, case: Case) -> Sequence[Any]:
        sequences = (await session.scalars(select(DnaSequence).order_by(DnaSequence.id))).all()
        results = []
        for seq in sequences:
            for check, passed, message in validate(seq.bases):
                results.append(
                    ValidationResult(sequence=seq, check=check, passed=passed, message=message)
                )
        return results

    @staticmethod
    def _dicts(rows: Sequence[Any]) -> list[dict[str, Any]]:
        return [
            {"sequence_id": sid, "check": c, "passed": p, "message": m}
            for sid, bases in rows
            for c, p, m in validate(bases)
        ]

    async def orm_bulk(self, session: AsyncSession, case: Case, phase: Phase) -> None:
        rows = (
            await session.execute(
                select(DnaSequence.id, DnaSequence.bases).order_by(DnaSequence.id)
            )
        ).all()
        results = self._dicts(rows)
        with phase.commit():
            # render_nulls: without it ORM bulk drops the None messages from their dicts, the
            # rows alternate between two key sets and each becomes its own INSERT (2,001 round
            # trips instead of 2).
            await session.execute(
                insert(ValidationResult), results, execution_options={"render_nulls": True}
            )
            await session.commit()

    async def core(self, conn: AsyncConnection, case: Case, phase: Phase) -> None:
        rows = (
            await conn.execute(select(SEQUENCE.c.id, SEQUENCE.c.bases).order_by(SEQUENCE.c.id))
        ).all()
        results = self._dicts(rows)
        with phase.commit():
            await conn.execute(RESULT.insert(), results)
            await conn.commit()

    @staticmethod
    def _records(rows: Sequence[Any]) -> list[tuple[Any, ...]]:
        return [(r[0], c, p, m) for r in rows for c, p, m in validate(r[1])]

    async def raw(self, con: asyncpg.Connection, case: Case, phase: Phase, write: RawWrite) -> None:
        await raw_write_from_sequences(
            con, phase, write, RESULT_RAW, self._records, SELECT_SEQUENCES
        )


SCENARIO = BenchlingValidate()

if __name__ == "__main__":
    from bench.__main__ import run_scenario_module

    run_scenario_module(SCENARIO.name)
