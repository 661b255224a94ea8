"""What a flush leaves alive: nothing of it beyond what a native flush leaves.

A native flush context (with every state and attribute history of the flush) is freed by
reference counting as the flush ends; objects the session no longer references die at once.
Checked with the cyclic garbage collector off, so that a reference cycle would show.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import ForeignKey, MetaData, event
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload
from support import create_schema

from async_batch import enable_async_batching
from async_batch.testing import sqlalchemy_url


class Base(DeclarativeBase):
    metadata = MetaData()


class Crate(Base):
    __tablename__ = "lt_crate"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str]
    bottles: Mapped[list[Bottle]] = relationship(back_populates="crate")


class Bottle(Base):
    __tablename__ = "lt_bottle"
    id: Mapped[int] = mapped_column(primary_key=True)
    crate_id: Mapped[int | None] = mapped_column(ForeignKey("lt_crate.id"))
    volume: Mapped[int] = mapped_column(unique=True)
    crate: Mapped[Crate | None] = relationship(back_populates="bottles")


@pytest.fixture
def lifetimes_dsn(database_dsn: str) -> str:
    create_schema(database_dsn, Base.metadata)
    return database_dsn


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


MODES = [None, {"small_flush": 0}, {"small_flush": 0, "fast_path": False}]


@pytest.mark.usefixtures("no_cyclic_gc")
@pytest.mark.parametrize("options", MODES, ids=["native", "fast", "prefetch-only"])
def test_flush_context_freed_when_flush_ends(
    lifetimes_dsn: str, options: dict[str, Any] | None
) -> None:
    """Successful flushes only: a failed flush's exception, which the session keeps until
    rollback, references the frames of the flush -- natively too, in a reference cycle."""

    async def main() -> None:
        engine = create_async_engine(sqlalchemy_url(lifetimes_dsn))
        maker = async_sessionmaker(engine)
        if options is not None:
            enable_async_batching(maker, **options)
        contexts: list[weakref.ref[Any]] = []
        try:
            async with maker() as s:
                s.add(Crate(label="old", bottles=[Bottle(volume=1)]))
                await s.commit()

            async with maker() as s:

                @event.listens_for(s.sync_session, "before_flush")
                def remember(session: Any, flush_context: Any, objects: Any) -> None:
                    contexts.append(weakref.ref(flush_context))

                old = await s.get(Crate, 1, options=[selectinload(Crate.bottles)])
                assert old is not None
                old_bottle = weakref.ref(old.bottles[0])
                s.add_all(
                    [Crate(label=f"c{i}", bottles=[Bottle(volume=100 + i)]) for i in range(40)]
                )
                old.bottles.append(Bottle(volume=2))
                await s.flush()
                assert contexts
                assert all(ref() is None for ref in contexts)
                await s.commit()
                assert all(ref() is None for ref in contexts)
                # the commit expired the old crate's collection: nothing else holds its old
                # bottle (a surviving flush context would, through its attribute histories)
                assert old_bottle() is None
        finally:
            await engine.dispose()

    asyncio.run(main())
