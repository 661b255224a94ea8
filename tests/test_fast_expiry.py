"""The commit's expiry of the identity map after a batched flush (``_sa._expire_all``) leaves
every object exactly as SQLAlchemy's own ``InstanceState._expire`` does: loaded and unloaded
attributes, collections (invalidated), per-object loader callables, pending collection
mutations, modified objects, ``expire`` instance events -- and is used only where it applies."""

from __future__ import annotations

from collections.abc import Iterator
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
    make_transient_to_detached,
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
    # an instance-level loader for a column the mapping loads (a callable expiry drops)
    deferred_one = (
        await s.scalars(
            select(Shelf)
            .options(defer(Shelf.label))
            .where(Shelf.id == 1)
            .execution_options(populate_existing=True)
        )
    ).one()
    assert "label" in inspect(deferred_one).callables
    lazy_book = (await s.scalars(select(Book).where(Book.id == 3))).one()
    # not flushed: both worlds would update the same row and wait on each other's lock
    # a persistent object moved to another collection records that parent (its back
    # reference's old value is read from the identity map)
    await s.run_sync(lambda _s: shelves[0].books.append(shelves[2].books[0]))
    assert "parents" in vars(inspect(shelves[0].books[-1]))
    shelves[0].label = "changed"  # modified, with committed state
    shelves[1].books.append(Book(title="new"))  # a changed collection, a pending object
    shelves[2].scratch = "kept"  # an attribute that is not mapped: expiry keeps it
    # a comparison against an object tracks its key's last known value (kept on expiry)
    select(Book).where(Book.shelf == shelves[1]).compile()
    objs = [*shelves, deferred_one, lazy_book, *shelves[1].books]
    return s, objs


@pytest.fixture(params=["with expire listeners", "without"])
def listened(request: pytest.FixtureRequest) -> Iterator[bool]:
    """With ``expire`` listeners the objects are expired one by one (``_expire_each``),
    without them class by class (``_expire_class``)."""
    if request.param == "with expire listeners":
        yield True
        return
    for cls in (Shelf, Book):
        event.remove(cls, "expire", _on_expire)
    try:
        yield False
    finally:
        for cls in (Shelf, Book):
            event.listen(cls, "expire", _on_expire)


@pytest.mark.asyncio
async def test_expire_all_matches_instance_state_expire(
    tables: AsyncEngine, listened: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # which way each expiry took
    ways: list[str] = []
    for way in ("_expire_each", "_expire_class"):
        fn = getattr(_sa, way)
        monkeypatch.setattr(_sa, way, lambda *a, _fn=fn, _way=way: (ways.append(_way), _fn(*a))[1])
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

        # the loaded collections, popped out of the dicts by expiry
        native_books = [vars(o).get("books") for o in native_objs]
        ours_books = [vars(o).get("books") for o in ours_objs]
        assert any(b is not None for b in ours_books)
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
        assert bool(native_events) == listened
        assert ways == (["_expire_each"] if listened else ["_expire_class", "_expire_class"])
        # the compared object's key value, as last known before expiry
        assert inspect(ours_objs[1])._last_known_values == {"id": inspect(ours_objs[1]).key[1][0]}
        # loader callables and the collections popped out of the dicts, object by object
        for a, b in zip(native_objs, ours_objs, strict=True):
            sa, sb = inspect(a), inspect(b)
            assert sorted(sa.callables) == sorted(sb.callables)
            assert sa._last_known_values == sb._last_known_values
            # what the states hold (the parents they were attached through dropped, ...)
            assert sorted(vars(sa)) == sorted(vars(sb))
            assert sa.expired == sb.expired
            assert (sa._strong_obj is None) == (sb._strong_obj is None)
            # what stays in the instance dicts, in order
            assert list(vars(a)) == list(vars(b))
        for na, nb in zip(native_books, ours_books, strict=True):
            assert (na is None) == (nb is None)
            if na is not None:
                assert na._sa_adapter.invalidated
                assert nb._sa_adapter.invalidated
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


def _state_view(st: Any) -> tuple[Any, ...]:
    """What expiry sets on a state (its object possibly gone)."""
    return (
        st.expired,
        sorted(st.expired_attributes),
        sorted(st.callables),
        st._strong_obj is None,
        sorted(vars(st)),
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("listened", ["with expire listeners", "without"], indirect=True)
async def test_objects_freed_during_expiry(tables: AsyncEngine, listened: bool) -> None:
    """Books referenced only by their shelves' collections are freed as the commit's expiry
    pops those collections; their states, expired after that, end up as natively (and the
    identity map lets them go)."""
    outcomes = []
    for batched in (False, True):
        maker = async_sessionmaker(tables)
        if batched:
            enable_async_batching(maker, small_flush=0)
        async with maker() as s:
            shelves = [
                Shelf(label=f"freed {i}", books=[Book(title=f"f{i}.{j}") for j in range(3)])
                for i in range(4)
            ]
            s.add_all(shelves)
            book_states = [inspect(b) for sh in shelves for b in sh.books]
            await s.flush()
            if batched:
                report = last_flush(s)
                assert report is not None
                assert report.accelerated == 16
            await s.commit()
            outcomes.append(
                (
                    [st.obj() is None for st in book_states],
                    [_state_view(st) for st in book_states],
                    [_state_view(inspect(sh)) for sh in shelves],
                    len(s.sync_session.identity_map),
                )
            )
    native, ours = outcomes
    assert all(native[0])  # the books are gone
    assert ours == native


@pytest.mark.parametrize("listened", ["with expire listeners", "without"], indirect=True)
def test_expiry_of_an_object_only_its_state_holds(listened: bool) -> None:
    """A modified object nothing but its state holds (``_strong_obj``) is let go by its own
    expiry; what expiry reads from its dict (the last known key value) it still reads."""
    outcomes = []
    for ours in (False, True):
        s = Session()
        shelf = Shelf(id=7, label="held by its state")
        make_transient_to_detached(shelf)
        s.add(shelf)
        shelf.label = "changed"
        select(Book).where(Book.shelf == shelf)  # tracks the key's last known value
        st = inspect(shelf)
        del shelf
        assert st.obj() is not None
        modified = s.identity_map._modified
        if ours:
            _sa._expire_all(s.identity_map.all_states(), modified)
        else:
            for each in s.identity_map.all_states():
                each._expire(each.dict, modified)
        outcomes.append((st.obj() is None, dict(st._last_known_values or {}), st.expired))
    assert outcomes[0] == (True, {"id": 7}, True)
    assert outcomes[1] == outcomes[0]
