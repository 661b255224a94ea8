"""The flush's registration of its objects with the unit of work in bulk
(``_sa.flush_registering_in_bulk``): for a flush of pending objects only, the unit of work is
left exactly as ``Session._flush``'s own loop leaves it -- registered states and their order,
per-mapper sets and their order, pre- and post-sort actions, dependencies -- and any other
flush, or a ``Session`` subclass with its own ``_flush``, keeps SQLAlchemy's loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import ForeignKey, MetaData, String, event, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.orm.unitofwork import UOWTransaction

from async_batch import _sa, enable_async_batching, last_flush
from tests import zoo


class OrphanBase(DeclarativeBase):
    metadata = MetaData()


class Basket(OrphanBase):
    __tablename__ = "basket"
    id: Mapped[int] = mapped_column(primary_key=True)
    fruits: Mapped[list[Fruit]] = relationship(cascade="all, delete-orphan")


class Fruit(OrphanBase):
    """A delete-orphan cascade reaches it: each one's orphan check is SQLAlchemy's."""

    __tablename__ = "fruit"
    id: Mapped[int] = mapped_column(primary_key=True)
    basket_id: Mapped[int | None] = mapped_column(ForeignKey("basket.id"))
    name: Mapped[str] = mapped_column(String(20))


def _authors() -> list[Any]:
    tags = [zoo.Tag(label=f"t{i}") for i in range(3)]
    out: list[Any] = []
    for i in range(4):
        books = [zoo.Book(title=f"b{i}{k}", tags=tags[k:]) for k in range(3)]
        out.append(zoo.Author(name=f"a{i}", books=books))
    return [*out, *tags]


def _employees() -> list[Any]:
    kinds = (zoo.Employee, zoo.Engineer, zoo.SeniorEngineer, zoo.Manager)
    return [kinds[i % 4](name=f"e{i}") for i in range(12)]


def _vehicles() -> list[Any]:
    return [(zoo.Car if i % 2 else zoo.Truck)(kind="x") for i in range(6)]


def _chain() -> list[Any]:
    nodes = [zoo.Node(name="root")]
    for i in range(8):
        nodes.append(zoo.Node(name=f"n{i}", parent=nodes[-1]))
    return nodes


def _baskets() -> list[Any]:
    return [Basket(fruits=[Fruit(name=f"f{i}{k}") for k in range(2)]) for i in range(3)]


def _snapshot(ctx: Any) -> dict[str, Any]:
    """The unit of work as registration leaves it; the same states and mappers in both runs,
    so their reprs (with addresses) compare, and so does the order of every ordered part."""
    return {
        "states": [(repr(st), flags) for st, flags in ctx.states.items()],
        "mappers": [(repr(m), [repr(st) for st in group]) for m, group in ctx.mappers.items()],
        "presort": [repr(key) for key in ctx.presort_actions],
        "postsort": [repr(key) for key in ctx.postsort_actions],
        "dependencies": sorted(map(repr, ctx.dependencies)),
        "deps": [(repr(k), sorted(map(repr, v))) for k, v in ctx.deps.items()],
        "attributes": sorted(map(repr, ctx.attributes)),
        "post_update": [(repr(k), repr(v)) for k, v in ctx.post_update_states.items()],
    }


@pytest.fixture
def registration(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Run a flush up to the unit of work's execution and return the unit of work's state
    then; nothing is executed or finalized, so the session is as before."""

    def run(session: Session, flush: Callable[[Session], None]) -> dict[str, Any]:
        taken: list[dict[str, Any]] = []
        with monkeypatch.context() as m:
            m.setattr(UOWTransaction, "execute", lambda self: taken.append(_snapshot(self)))
            m.setattr(UOWTransaction, "finalize_flush_changes", lambda self: None)
            session._flushing = True  # as Session.flush sets it around _flush
            try:
                flush(session)
            finally:
                session._flushing = False
        assert len(taken) == 1
        return taken[0]

    return run


@pytest.fixture
def bulk_used(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Per flush, whether the bulk step registered the objects (``_sa._register_new``)."""
    used: list[bool] = []
    original = _sa._register_new

    def spy(*args: Any) -> bool:
        used.append(original(*args))
        return used[-1]

    monkeypatch.setattr(_sa, "_register_new", spy)
    return used


def _native(session: Session) -> None:
    Session._flush(session)


def test_this_sqlalchemy_is_the_copied_one() -> None:
    # both supported series ship the _flush flush_registering_in_bulk copies; a release
    # that changes it must be looked at (and its digest added) before the copy runs again
    assert _sa.bulk_registration_available()


@pytest.mark.parametrize(
    ("build", "bulk"),
    [
        (_authors, True),
        (_employees, True),
        (_vehicles, True),
        (_chain, True),
        (_baskets, False),  # delete-orphan: SQLAlchemy's own loop
    ],
    ids=["relationships", "joined", "single-table", "self-reference", "delete-orphan"],
)
def test_registration_matches_sqlalchemys_loop(
    registration: Callable[..., Any],
    bulk_used: list[bool],
    build: Callable[[], list[Any]],
    bulk: bool,
) -> None:
    session = Session()
    session.add_all(build())
    native = registration(session, _native)
    assert bulk_used == []  # SQLAlchemy's own _flush
    ours = registration(session, _sa.flush_registering_in_bulk)
    assert bulk_used == [bulk]
    assert ours == native
    assert native["states"]  # something was registered
    session.close()


def test_objects_a_listener_registered_keep_sqlalchemys_loop(
    registration: Callable[..., Any], bulk_used: list[bool]
) -> None:
    session = Session()
    objs = _authors()
    session.add_all(objs)
    first = objs[0]

    @event.listens_for(session, "before_flush")
    def register_one(s: Session, flush_context: Any, _objects: Any) -> None:
        flush_context.register_object(inspect(first))

    native = registration(session, _native)
    ours = registration(session, _sa.flush_registering_in_bulk)
    assert bulk_used == [False]
    assert ours == native
    session.close()


class OwnFlushSession(Session):
    """A subclass with its own ``_flush``: it runs, not the copy of SQLAlchemy's."""

    calls = 0

    def _flush(self, objects: Any = None) -> None:
        OwnFlushSession.calls += 1
        super()._flush(objects)


@pytest.mark.asyncio
async def test_an_own_flush_method_still_runs(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(OrphanBase.metadata.create_all)
    maker = async_sessionmaker(engine, sync_session_class=OwnFlushSession)
    enable_async_batching(maker, small_flush=0)
    OwnFlushSession.calls = 0
    async with maker() as s:
        s.add_all(_baskets())
        await s.commit()
        report = last_flush(s)
        assert report is not None
        assert OwnFlushSession.calls == 1
        assert await s.scalar(select(func.count()).select_from(Fruit)) == 6
