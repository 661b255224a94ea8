"""The id prefetch's values, as the server hands them out: any sign and any bigint size (they
come back packed as 8-byte integers), in the order nextval gives them."""

from __future__ import annotations

import pytest
from sqlalchemy import BigInteger, MetaData, Sequence, String, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from async_batch import enable_async_batching, last_flush


class Base(DeclarativeBase):
    metadata = MetaData()


class Falling(Base):
    """Negative ids, counting down."""

    __tablename__ = "ip_falling"
    id: Mapped[int] = mapped_column(
        Sequence("ip_falling_seq", start=-5, increment=-3, minvalue=-(2**40)), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(20))


class Huge(Base):
    """Ids past 2**62, leaping."""

    __tablename__ = "ip_huge"
    id: Mapped[int] = mapped_column(
        BigInteger, Sequence("ip_huge_seq", start=2**62 + 7, increment=2**40), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(20))


@pytest.mark.asyncio
async def test_prefetched_ids_are_the_native_ones(engine: AsyncEngine) -> None:
    found = []
    for batched in (False, True):
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
        maker = async_sessionmaker(engine)
        if batched:
            enable_async_batching(maker, small_flush=0)
        async with maker() as s:
            objs = [Falling(name=f"f{i}") for i in range(40)]
            objs += [Huge(name=f"h{i}") for i in range(40)]
            s.add_all(objs)
            await s.flush()
            ids = [o.id for o in objs]
            report = last_flush(s)
            await s.commit()
            rows = sorted((await s.execute(select(Falling.id, Falling.name))).all())
            rows += sorted((await s.execute(select(Huge.id, Huge.name))).all())
        found.append((ids, rows))
        if batched:
            assert report is not None
            assert report.prefetched_ids == 80, report.summary()
            assert report.accelerated == 80, report.summary()
    assert found[0] == found[1]
    ids = found[1][0]
    assert ids[:3] == [-5, -8, -11]
    assert ids[40:42] == [2**62 + 7, 2**62 + 7 + 2**40]
