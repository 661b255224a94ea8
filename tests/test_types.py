"""Column types through every writer: the same rows and session state as a native flush."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    Integer,
    Interval,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
    Time,
    TypeDecorator,
    Uuid,
    event,
)
from sqlalchemy.dialects.postgresql import INET, JSONB
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from support import assert_same, run_workload

from async_batch.testing import sqlalchemy_url


class Mood(enum.Enum):
    happy = "happy"
    sad = "sad"


class Upper(TypeDecorator[str]):
    """A TypeDecorator whose bind processing must be applied by the writer too."""

    impl = String(20)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return value.upper() if value is not None else None


class Base(DeclarativeBase):
    metadata = MetaData()


class Everything(Base):
    __tablename__ = "everything"
    id: Mapped[int] = mapped_column(primary_key=True)
    small: Mapped[int | None] = mapped_column(SmallInteger)
    big: Mapped[int | None] = mapped_column(BigInteger)
    flag: Mapped[bool | None] = mapped_column(Boolean)
    ratio: Mapped[float | None] = mapped_column(Float)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 3))
    short: Mapped[str | None] = mapped_column(String(10))
    body: Mapped[str | None] = mapped_column(Text)
    day: Mapped[dt.date | None] = mapped_column(Date)
    at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    at_tz: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    clock: Mapped[dt.time | None] = mapped_column(Time)
    span: Mapped[dt.timedelta | None] = mapped_column(Interval)
    blob: Mapped[bytes | None] = mapped_column(LargeBinary)
    ident: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    mood: Mapped[Mood | None] = mapped_column(Enum(Mood, name="mood"))
    mood_text: Mapped[Mood | None] = mapped_column(Enum(Mood, native_enum=False))
    doc: Mapped[Any] = mapped_column(JSON, nullable=True)
    docb: Mapped[Any] = mapped_column(JSONB, nullable=True)
    numbers: Mapped[list[int] | None] = mapped_column(ARRAY(Integer))
    address: Mapped[str | None] = mapped_column(INET)
    shout: Mapped[str | None] = mapped_column(Upper)


def _rows(n: int) -> list[Everything]:
    out = []
    for i in range(n):
        full = i % 3 != 2
        out.append(
            Everything(
                small=i if full else None,
                big=2**40 + i,
                flag=bool(i % 2),
                ratio=i / 7,
                amount=Decimal(f"{i}.125"),
                short=f"s{i}",
                body="quote ' backslash \\ unicode é" * (i % 2),
                day=dt.date(2024, 1, 1 + i % 28),
                at=dt.datetime(2024, 1, 1, 12, i % 60),
                at_tz=dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=i % 5))),
                clock=dt.time(i % 24, 30),
                span=dt.timedelta(minutes=i),
                blob=bytes(range(i % 7)),
                ident=uuid.UUID(int=i + 1),
                mood=Mood.happy if i % 2 else Mood.sad,
                mood_text=Mood.sad if full else None,
                doc={"i": i, "nested": [1, None, "x"]} if full else None,
                docb=[i, {"k": "v"}] if full else None,
                numbers=[i, i + 1] if full else None,
                address=f"10.0.0.{i % 250}",
                shout=f"hello{i}",
            )
        )
    return out


@pytest.fixture
async def types_engine(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    return engine


@pytest.mark.parametrize("strategy", ["auto", "copy", "unnest", "executemany"])
@pytest.mark.parametrize("n", [3, 120])
async def test_types_match_native(types_engine: AsyncEngine, strategy: str, n: int) -> None:
    async def workload(run: Any) -> None:
        objs = _rows(n)
        run.track(*objs)
        run.session.add_all(objs)
        await run.session.flush()
        run.snapshot("flush")
        await run.session.commit()

    native = await run_workload(types_engine, workload, batching=None, metadata=Base.metadata)
    batched = await run_workload(
        types_engine,
        workload,
        batching={"strategy": strategy, "small_flush": 0},
        metadata=Base.metadata,
    )
    assert_same(native, batched, strategy)
    report = batched.reports[0]
    assert report is not None
    assert report.accelerated == n, report.summary()


class Coded(Base):
    __tablename__ = "ty_coded"
    id: Mapped[int] = mapped_column(primary_key=True)
    data: Mapped[Any] = mapped_column(JSONB)
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2))


@pytest.mark.parametrize("strategy", ["auto", "copy"])
async def test_text_codecs_set_on_the_connection(
    types_engine: AsyncEngine, database_dsn: str, strategy: str
) -> None:
    """Codecs an application sets on each asyncpg connection (``set_type_codec`` in a
    ``connect`` event, text format: asyncpg's default, and the usual jsonb recipe) leave those
    types without a binary encoder: such tables are not written by binary COPY."""
    engine = create_async_engine(sqlalchemy_url(database_dsn))

    @event.listens_for(engine.sync_engine, "connect")
    def _codecs(dbapi_connection: Any, _record: Any) -> None:
        for name, encoder in (("jsonb", lambda v: v), ("numeric", str)):
            dbapi_connection.run_async(
                lambda c, name=name, encoder=encoder: c.set_type_codec(
                    name, schema="pg_catalog", encoder=encoder, decoder=lambda v: v
                )
            )

    async def workload(run: Any) -> None:
        objs = [Coded(data={"i": i}, amount=Decimal(i) / 4) for i in range(40)]
        run.track(*objs)
        run.session.add_all(objs)
        await run.session.flush()
        run.snapshot("flush")
        await run.session.commit()

    try:
        native = await run_workload(engine, workload, batching=None, metadata=Base.metadata)
        batched = await run_workload(
            engine,
            workload,
            batching={"strategy": strategy, "small_flush": 0},
            metadata=Base.metadata,
        )
    finally:
        await engine.dispose()
    assert_same(native, batched, strategy)
    report = batched.reports[0]
    assert report is not None
    assert report.accelerated == 40, report.summary()
    assert [t.strategy for t in report.tables] == ["unnest"], report.summary()
