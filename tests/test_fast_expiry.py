"""The commit's expiry of the identity map after a batched flush (``_sa._expire_all``) leaves
every object exactly as SQLAlchemy's own ``InstanceState._expire`` does: loaded and unloaded
attributes, collections (invalidated), per-object loader callables, pending collection
mutations, modified objects, ``expire`` instance events -- and is used only where it applies."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import ForeignKey, MetaData, String, event, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    defer,
    deferred,
    mapped_column,
    relationship,
    selectinload,
)

from async_batch import _sa, enable_async_batching, last_flush
from tests.support import session_state


class Base(DeclarativeBase):
    metadata = MetaData()


class Shelf(Base):
    __tablename__ = "shelf"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(30))
    notes: Mapped[str | None] = deferred(mapped_column(String(100)))
    books: Mapped[list[Book]] = relationship(back_populates="shelf")


class Book(Base):
    __tablename__ = "book"
    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int | None] = mapped_column(ForeignKey("shelf.id"))
    title: Mapped[str] = mapped_column(String(50))
    shelf: Mapped[Shelf | None] = relationship(back_populates="books")


EXPIRED: list[str] = []


@event.listens_for(Shelf, "expire")
@event.listens_for(Book, "expire")
def _on_expire(target: Any, attrs: Any) -> None:
    EXPIRED.append(f"{type(target).__name__} {attrs}")


@pytest.fixture
async def tables(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with AsyncSession(engine) as s:
        for i in range(3):
            s.add(Shelf(label=f"shelf {i}", notes=f"notes {i}", books=[Book(title=f"b{i}")]))
        await s.commit()
    return engine


async def _world(engine: AsyncEngine) -> tuple[AsyncSession, list[Any]]:
    """A session holding objects in every condition expiry treats differently."""
    s = AsyncSession(engine)
    shelves = list(
        (await s.scalars(select(Shelf).options(selectinload(Shelf.books)).order_by(Shelf.id)))
        .unique()
        .all()
    )
    deferred_one = (
        await s.scalars(select(Shelf).options(defer(Shelf.notes)).where(Shelf.id == 1))
    ).one()
    lazy_book = (await s.scalars(select(Book).where(Book.id == 3))).one()
    # not flushed: both worlds would update the same row and wait on each other's lock
    shelves[0].label = "changed"  # modified, with committed state
    shelves[1].books.append(Book(title="new"))  # a changed collection, a pending object
    shelves[2].scratch = "kept"  # an attribute that is not mapped: expiry keeps it
    objs = [*shelves, deferred_one, lazy_book, *shelves[1].books]
    return s, objs


@pytest.mark.asyncio
async def test_expire_all_matches_instance_state_expire(tables: AsyncEngine) -> None:
    native, native_objs = await _world(tables)
    ours, ours_objs = await _world(tables)
    try:

        def expire_native(session: Session) -> None:
            modified = session.identity_map._modified
            for st in session.identity_map.all_states():
                st._expire(st.dict, modified)

        def expire_ours(session: Session) -> None:
            idmap = session.identity_map
            _sa._expire_all(idmap.all_states(), idmap._modified)

        EXPIRED.clear()
        await native.run_sync(expire_native)
        native_events = list(EXPIRED)
        EXPIRED.clear()
        await ours.run_sync(expire_ours)
        ours_events = list(EXPIRED)
        assert session_state(ours.sync_session, ours_objs) == session_state(
            native.sync_session, native_objs
        )
        assert ours_events == native_events
        assert native_events
        # loader callables and the collections popped out of the dicts, object by object
        for a, b in zip(native_objs, ours_objs, strict=True):
            sa, sb = inspect(a), inspect(b)
            assert sorted(sa.callables) == sorted(sb.callables)
            assert sa.expired == sb.expired
            assert (sa._strong_obj is None) == (sb._strong_obj is None)
            # what stays in the instance dicts, in order
            assert list(vars(a)) == list(vars(b))
        assert vars(ours_objs[2])["scratch"] == "kept"
    finally:
        await native.rollback()
        await ours.rollback()
        await native.close()
        await ours.close()


async def _batched_commit(engine: AsyncEngine, **session_kw: Any) -> tuple[Any, list[Any]]:
    maker = async_sessionmaker(engine, **session_kw)
    enable_async_batching(maker, small_flush=0)
    async with maker() as s:
        books = [Book(title=f"t{i}") for i in range(5)]
        s.add_all(books)
        await s.flush()
        report = last_flush(s)
        assert report is not None
        assert report.accelerated == 5
        root = s.sync_session._transaction
        while root._parent is not None:
            root = root._parent
        installed = "_remove_snapshot" in root.__dict__
        await s.commit()
        return installed, [inspect(b).expired for b in books]


@pytest.mark.asyncio
async def test_batched_commit_expires_with_the_fast_path(tables: AsyncEngine) -> None:
    installed, expired = await _batched_commit(tables)
    assert installed
    assert expired == [True] * 5


@pytest.mark.asyncio
async def test_no_expire_on_commit_keeps_objects_loaded(tables: AsyncEngine) -> None:
    _installed, expired = await _batched_commit(tables, expire_on_commit=False)
    assert expired == [False] * 5


@pytest.mark.asyncio
async def test_unknown_sqlalchemy_source_keeps_its_own_expiry(
    tables: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sa, "fast_expiry_available", lambda: False)
    installed, expired = await _batched_commit(tables)
    assert not installed
    assert expired == [True] * 5


def test_known_sources_are_this_sqlalchemy() -> None:
    # both supported series ship the expiry code _expire_all reproduces; a release that
    # changes it must be looked at (and its digest added) before the fast path applies again
    assert _sa.fast_expiry_available()
