"""Exact wire round trips for flush + commit, native vs batched, on a warm connection.

Bars (issues 3 and 4): batched <= 1 (id prefetch) + one statement per table + BEGIN + COMMIT,
and prefetch-only (native writer with ids known) <= 1 + the INSERT statements native would need
with ids known + BEGIN + COMMIT. The native figures are asserted too, as documentation of what
we are beating.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import ForeignKey, Identity, MetaData, Sequence, String, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from async_batch import enable_async_batching, last_flush
from async_batch.testing import WireProxy


class Base(DeclarativeBase):
    metadata = MetaData()


class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    ival: Mapped[int | None]


class Parent(Base):
    __tablename__ = "parent"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    children: Mapped[list[Child]] = relationship(back_populates="parent")


class Child(Base):
    __tablename__ = "child"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("parent.id"))
    name: Mapped[str]
    parent: Mapped[Parent] = relationship(back_populates="children")


class Person(Base):
    __tablename__ = "person"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str]
    name: Mapped[str]
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "person"}


class Engineer(Person):
    __tablename__ = "engineer"
    id: Mapped[int] = mapped_column(ForeignKey("person.id"), primary_key=True)
    lang: Mapped[str]
    __mapper_args__ = {"polymorphic_identity": "engineer"}


class Manager(Person):
    __tablename__ = "manager"
    id: Mapped[int] = mapped_column(ForeignKey("person.id"), primary_key=True)
    level: Mapped[int]
    __mapper_args__ = {"polymorphic_identity": "manager"}


class Vehicle(Base):
    __tablename__ = "vehicle"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str]
    doors: Mapped[int | None]
    payload: Mapped[float | None]
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "vehicle"}


class Car(Vehicle):
    __mapper_args__ = {"polymorphic_identity": "car"}


class Truck(Vehicle):
    __mapper_args__ = {"polymorphic_identity": "truck"}


class Numbered(Base):
    __tablename__ = "numbered"
    id: Mapped[int] = mapped_column(Sequence("some_unrelated_sequence"), primary_key=True)
    name: Mapped[str]


class Identified(Base):
    __tablename__ = "identified"
    id: Mapped[int] = mapped_column(Identity(), primary_key=True)
    name: Mapped[str]


class NoReturning(Base):
    __tablename__ = "no_returning"
    __table_args__ = {"implicit_returning": False}
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Defaulted(Base):
    __tablename__ = "defaulted"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    size: Mapped[int] = mapped_column(default=7)


class Node(Base):
    __tablename__ = "node"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("node.id"))
    name: Mapped[str]
    parent: Mapped[Node | None] = relationship(remote_side=[id])


def one_table() -> list[Any]:
    return [Item(name=f"i{i}", ival=i) for i in range(1000)]


def parents_children() -> list[Any]:
    return [
        Parent(name=f"p{i}", children=[Child(name=f"c{j}") for j in range(6)]) for i in range(1000)
    ]


def joined_interleaved() -> list[Any]:
    return [
        Engineer(name=f"e{i}", lang="py") if i % 2 else Manager(name=f"m{i}", level=i)
        for i in range(1000)
    ]


def single_mixed() -> list[Any]:
    return [Car(doors=i % 5) if i % 2 else Truck(payload=i / 2) for i in range(1000)]


def explicit_sequence() -> list[Any]:
    return [Numbered(name=f"n{i}") for i in range(1000)]


def identity() -> list[Any]:
    return [Identified(name=f"n{i}") for i in range(1000)]


def no_returning() -> list[Any]:
    return [NoReturning(name=f"n{i}") for i in range(1000)]


def mixed_keys() -> list[Any]:
    return [
        Defaulted(name=f"d{i}", size=i) if i % 2 else Defaulted(name=f"d{i}") for i in range(1000)
    ]


def chain() -> list[Any]:
    nodes: list[Node] = []
    for i in range(100):
        nodes.append(Node(name=f"n{i}", parent=nodes[-1] if nodes else None))
    return nodes


# shape -> (builder, tables written, native round trips, native INSERTs with ids known)
SHAPES: dict[str, tuple[Callable[[], list[Any]], int, int, int]] = {
    "one_table": (one_table, 1, 3, 1),
    "parents_children": (parents_children, 2, 9, 7),
    "joined_interleaved": (joined_interleaved, 3, 5, 3),
    "single_mixed": (single_mixed, 1, 4, 2),
    "explicit_sequence": (explicit_sequence, 1, 3, 1),
    "identity": (identity, 1, 3, 1),
    "no_returning": (no_returning, 1, 2002, 1),
    "mixed_keys": (mixed_keys, 1, 1002, 2),
    # the unit of work inserts a self-referencing chain level by level even with ids known
    "chain": (chain, 1, 102, 100),
}


async def _round_trips(
    engine: AsyncEngine, proxy: WireProxy, build: Callable[[], list[Any]], **batching: Any
) -> tuple[int, Any]:
    maker = async_sessionmaker(engine)
    if batching.get("enabled", True):
        opts = {k: v for k, v in batching.items() if k != "enabled"}
        enable_async_batching(maker, **opts)
    report = None
    for _warm in range(2):  # the first run prepares statements and fills caches
        async with maker() as session:
            session.add_all(build())
            with proxy.count() as window:
                await session.commit()
            report = last_flush(session)
    return window.round_trips, report


@pytest.fixture
async def shapes_engine(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    return engine


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_batched_round_trips(
    shapes_engine: AsyncEngine, proxy: WireProxy, shape: str
) -> None:
    build, tables, _native, _ = SHAPES[shape]
    rts, report = await _round_trips(shapes_engine, proxy, build)
    assert report is not None
    assert report.native == 0, report.summary()
    assert len(report.tables) == tables, report.summary()
    # BEGIN + id prefetch + one statement per table + COMMIT
    assert rts == 1 + 1 + tables + 1, report.summary()


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_prefetch_only_round_trips(
    shapes_engine: AsyncEngine, proxy: WireProxy, shape: str
) -> None:
    build, _tables, _native, inserts_with_ids = SHAPES[shape]
    rts, report = await _round_trips(shapes_engine, proxy, build, fast_path=False)
    assert report is not None
    assert report.accelerated == 0
    assert rts <= 1 + inserts_with_ids + 2, report.summary()


@pytest.mark.parametrize("shape", ["one_table", "no_returning", "mixed_keys", "chain"])
async def test_native_round_trips(shapes_engine: AsyncEngine, proxy: WireProxy, shape: str) -> None:
    build, _tables, native, _ = SHAPES[shape]
    rts, _ = await _round_trips(shapes_engine, proxy, build, enabled=False)
    assert rts == native


async def test_every_row_written_once(shapes_engine: AsyncEngine, proxy: WireProxy) -> None:
    maker = async_sessionmaker(shapes_engine)
    enable_async_batching(maker)
    async with maker() as session:
        session.add_all(parents_children())
        await session.commit()
    async with shapes_engine.connect() as conn:
        n_parents = await conn.scalar(select(func.count()).select_from(Parent))
        n_children = await conn.scalar(select(func.count()).select_from(Child))
        orphans = await conn.scalar(
            text(
                "SELECT count(*) FROM child c LEFT JOIN parent p ON p.id = c.parent_id"
                " WHERE p.id IS NULL"
            )
        )
        per_parent = await conn.scalar(
            text(
                "SELECT count(DISTINCT n) FROM (SELECT count(*) n FROM child GROUP BY parent_id) s"
            )
        )
    assert (n_parents, n_children, orphans, per_parent) == (1000, 6000, 0, 1)


# -- small flushes (default small_flush=32) ------------------------------------------------------

SMALL = 10


def small_items() -> list[Any]:
    return [Item(name=f"i{i}", ival=i) for i in range(SMALL)]


def small_families() -> list[Any]:
    return [Parent(name=f"p{i}", children=[Child(name="a"), Child(name="b")]) for i in range(3)]


def small_mixed_keys() -> list[Any]:
    return [
        Defaulted(name=f"d{i}", size=i) if i % 2 else Defaulted(name=f"d{i}") for i in range(SMALL)
    ]


def small_no_returning() -> list[Any]:
    return [NoReturning(name=f"n{i}") for i in range(SMALL)]


def small_chain() -> list[Any]:
    nodes: list[Node] = []
    for i in range(SMALL):
        nodes.append(Node(name=f"n{i}", parent=nodes[-1] if nodes else None))
    return nodes


@pytest.mark.parametrize(
    ("build", "native"),
    [(small_items, 3), (small_families, 4)],
    ids=["one_table", "parents_children"],
)
async def test_small_plain_flush_stays_native(
    shapes_engine: AsyncEngine, proxy: WireProxy, build: Callable[[], list[Any]], native: int
) -> None:
    """A few objects that native writes in one INSERT per table: the id prefetch would be one
    round trip more than native needs, so the flush is native -- and costs exactly native's."""
    native_rts, _ = await _round_trips(shapes_engine, proxy, build, enabled=False)
    rts, report = await _round_trips(shapes_engine, proxy, build)
    assert native_rts == rts == native
    assert report is not None
    assert report.accelerated == 0, report.summary()
    assert any("small flush" in f.reason for f in report.fallbacks), report.summary()


@pytest.mark.parametrize(
    ("build", "native"),
    [(small_mixed_keys, 12), (small_no_returning, 22), (small_chain, 12)],
    ids=["mixed_keys", "no_returning", "chain"],
)
async def test_small_flush_of_row_by_row_shape_is_batched(
    shapes_engine: AsyncEngine, proxy: WireProxy, build: Callable[[], list[Any]], native: int
) -> None:
    """Shapes native writes row by row are batched at any size: BEGIN, ids, one statement,
    COMMIT."""
    native_rts, _ = await _round_trips(shapes_engine, proxy, build, enabled=False)
    rts, report = await _round_trips(shapes_engine, proxy, build)
    assert native_rts == native
    assert report is not None
    assert (report.accelerated, report.native) == (SMALL, 0), report.summary()
    assert rts == 4, report.summary()


async def test_small_flush_zero_batches_every_flush(
    shapes_engine: AsyncEngine, proxy: WireProxy
) -> None:
    rts, report = await _round_trips(shapes_engine, proxy, small_items, small_flush=0)
    assert report is not None
    assert (report.accelerated, report.native) == (SMALL, 0), report.summary()
    assert rts == 4, report.summary()


def test_small_flush_option_is_checked() -> None:
    maker = async_sessionmaker()
    with pytest.raises(ValueError, match="small_flush=-1"):
        enable_async_batching(maker, small_flush=-1)
