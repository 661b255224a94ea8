"""Models and data shared by the three Benchling workloads (import, validate, auto-annotate).

Benchling published these three as the workloads that made them write their batch-insert
extension: importing sequences with their annotations, writing validation results for existing
sequences, and auto-annotating existing sequences.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import asyncpg
from sqlalchemy import ForeignKey, MetaData, SmallInteger, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from bench._scenario import Phase, RawTable, RawWrite, raw_transaction, write_copy


class Base(DeclarativeBase):
    metadata = MetaData()


class DnaSequence(Base):
    __tablename__ = "dna_sequence"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    bases: Mapped[str] = mapped_column(Text)

    annotations: Mapped[list[Annotation]] = relationship(back_populates="sequence")
    results: Mapped[list[ValidationResult]] = relationship(back_populates="sequence")


class Annotation(Base):
    __tablename__ = "annotation"

    id: Mapped[int] = mapped_column(primary_key=True)
    sequence_id: Mapped[int] = mapped_column(ForeignKey("dna_sequence.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(30))
    start_pos: Mapped[int]
    end_pos: Mapped[int]
    strand: Mapped[int] = mapped_column(SmallInteger)
    color: Mapped[str] = mapped_column(String(7))

    sequence: Mapped[DnaSequence] = relationship(back_populates="annotations")


class ValidationResult(Base):
    __tablename__ = "validation_result"

    id: Mapped[int] = mapped_column(primary_key=True)
    sequence_id: Mapped[int] = mapped_column(ForeignKey("dna_sequence.id"), index=True)
    check: Mapped[str] = mapped_column(String(50))
    passed: Mapped[bool]
    message: Mapped[str | None] = mapped_column(Text)

    sequence: Mapped[DnaSequence] = relationship(back_populates="results")


SEQUENCE = Base.metadata.tables["dna_sequence"]
ANNOTATION = Base.metadata.tables["annotation"]
RESULT = Base.metadata.tables["validation_result"]
ALL_TABLES = ("dna_sequence", "annotation", "validation_result")

SEQUENCE_RAW = RawTable("dna_sequence", ("id", "name", "bases"))
ANNOTATION_RAW = RawTable(
    "annotation", ("sequence_id", "name", "kind", "start_pos", "end_pos", "strand", "color")
)
RESULT_RAW = RawTable("validation_result", ("sequence_id", "check", "passed", "message"))
SELECT_SEQUENCES = "SELECT id, bases FROM dna_sequence ORDER BY id"
SELECT_SEQUENCES_LIMIT = "SELECT id, bases FROM dna_sequence ORDER BY id LIMIT $1"

_KINDS = ("promoter", "CDS", "terminator", "primer_bind", "misc_feature", "rep_origin")
_COLORS = ("#84b0dc", "#f58a5e", "#b7e6d7", "#a6acb3", "#ffef86", "#c7b0e3")
BASES_LENGTH = 600


@cache
def sequence_bases(n: int) -> tuple[str, ...]:
    """``n`` reproducible random DNA sequences (the input an import would parse)."""
    rng = random.Random(1234)
    return tuple("".join(rng.choices("ACGT", k=BASES_LENGTH)) for _ in range(n))


@cache
def annotation_specs(per_sequence: int) -> tuple[tuple[str, str, int, int, int, str], ...]:
    """(name, kind, start, end, strand, color) of the annotations put on every sequence."""
    specs = []
    step = max(1, BASES_LENGTH // per_sequence)
    for j in range(per_sequence):
        start = (j * step) % (BASES_LENGTH - 40)
        specs.append(
            (
                f"feature-{j}",
                _KINDS[j % len(_KINDS)],
                start,
                start + 40,
                1 if j % 2 else -1,
                _COLORS[j % len(_COLORS)],
            )
        )
    return tuple(specs)


def annotation_kwargs(spec: tuple[str, str, int, int, int, str]) -> dict[str, Any]:
    name, kind, start, end, strand, color = spec
    return {
        "name": name,
        "kind": kind,
        "start_pos": start,
        "end_pos": end,
        "strand": strand,
        "color": color,
    }


def sequence_name(i: int) -> str:
    return f"seq-{i:05d}"


def validate(bases: str) -> list[tuple[str, bool, str | None]]:
    """The two checks of the validation workload: (check, passed, message)."""
    gc = (bases.count("G") + bases.count("C")) / len(bases) if bases else 0.0
    return [
        ("length", len(bases) >= 100, None),
        ("gc_content", 0.3 <= gc <= 0.7, f"GC content {gc:.1%}"),
    ]


async def load_sequences(con: asyncpg.Connection, n: int) -> None:
    """Insert ``n`` sequences (the ones the validate and annotate workloads start from)."""
    bases = sequence_bases(n)
    await write_copy(con, SEQUENCE_RAW, [(i + 1, sequence_name(i), b) for i, b in enumerate(bases)])
    await con.execute(
        "SELECT setval(pg_get_serial_sequence('dna_sequence', 'id'), $1::bigint)", max(n, 1)
    )
    await con.execute("ANALYZE dna_sequence")


async def raw_write_from_sequences(
    con: asyncpg.Connection,
    phase: Phase,
    write: RawWrite,
    table: RawTable,
    records: Callable[[Sequence[Any]], Sequence[tuple[Any, ...]]],
    *select: Any,
) -> None:
    """The raw methods of the workloads on existing sequences: in one transaction, read the
    sequences (``select``: the query and its arguments) and build ``table``'s records from them,
    then, in the commit phase, write the records and COMMIT."""
    async with raw_transaction(con) as tr:
        rows = records(await con.fetch(*select))
        with phase.commit():
            await write(con, table, rows)
            await tr.commit()
