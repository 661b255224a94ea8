"""The import and read logic both web apps call: plain ORM code, nothing batching-specific.

``enable_async_batching`` on the app's sessionmaker is what makes ``import_sequences`` fast;
the code here is what it would be without async_batch.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from .models import Annotation, DnaSample, RnaSample, Sample, Sequence
from .schemas import SampleIn, SequenceIn

UNIQUE_VIOLATION = "23505"


class ImportConflict(Exception):
    """The import broke a unique constraint (a sequence name repeated in the request or
    already in the database); nothing was committed. ``str()`` is a message for the client."""


def _sample(item: SampleIn) -> Sample:
    if item.kind == "dna":
        return DnaSample(concentration_ng_ul=item.concentration_ng_ul)
    return RnaSample(rin=item.rin)


def to_orm(item: SequenceIn) -> Sequence:
    return Sequence(
        name=item.name,
        bases=item.bases,
        annotations=[Annotation(label=a.label, start=a.start, end=a.end) for a in item.annotations],
        samples=[_sample(s) for s in item.samples],
    )


def conflict_message(exc: IntegrityError) -> str:
    """A client-facing message for an IntegrityError (asyncpg's ``detail`` names the key)."""
    driver_error = exc.orig.__cause__ if exc.orig is not None else None
    detail = getattr(driver_error, "detail", None) or str(exc.orig).strip().splitlines()[-1]
    if getattr(driver_error, "sqlstate", None) == UNIQUE_VIOLATION:
        return (
            "a sequence name is repeated in the request or already exists: "
            f"{detail} Nothing was imported."
        )
    return f"the import conflicts with existing data: {detail} Nothing was imported."


async def import_sequences(session: AsyncSession, items: Iterable[SequenceIn]) -> list[int]:
    """Insert the sequences with their annotations and samples in one transaction; return the
    new sequence ids in input order. Raises `ImportConflict` (after rolling back)."""
    sequences = [to_orm(item) for item in items]
    session.add_all(sequences)
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise ImportConflict(conflict_message(exc)) from exc
    # The sessionmaker has expire_on_commit=False: the ids are still loaded after COMMIT.
    return [sequence.id for sequence in sequences]


async def get_sequence(session: AsyncSession, sequence_id: int) -> Sequence | None:
    """The sequence with its annotations and samples loaded, or None."""
    return await session.get(
        Sequence,
        sequence_id,
        options=[selectinload(Sequence.annotations), selectinload(Sequence.samples)],
    )
