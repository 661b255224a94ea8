"""Mapping features around the rows async_batch writes, native vs every batching mode (found by
differential probing):

- a discriminator its mapper does not accept: natively a warning per object at flush (an
  error under a warnings filter, which fails the flush);
- ``before_insert`` listeners added after a first flush of the mapper (a plugin, a fixture):
  natively they run;
- association rows bind their values with the association columns' types (a
  ``TypeDecorator``, an ``Enum`` key);
- joined inheritance: the inherited primary key is copied onto the same attribute through it,
  so its ``set`` listeners fire, and an ``after_flush`` listener sees it in the committed state;
- a foreign key without a relationship: the unit of work inserts the mappers' rows in its own
  order (sort keys), not the key's;
- a base mapper whose new objects are split between native ones that get no ids in advance
  (a ``before_insert`` listener on the base mapper only) and others: the database numbers all
  of them in insert order, so all stay native;
- ``composite()`` attributes (written by async_batch): the cached composite value is dropped
  once the rows are written, as its ``after_insert`` listener does natively;
- joined inheritance three levels deep: the inherited key's set listeners and validators
  fire object by object once each table is written (and only for the tables written when a
  later one fails);
- a table's rows are built once the tables before it are written: a failure while building
  them (a bind processor raising) leaves the earlier rows' fetched and mutable values as
  natively, and association defaults are evaluated after the entities';
- a self-referencing foreign key without a relationship: natively inserted in insert order;
- a foreign key set by value (not through its relationship) to a new row the native part
  writes (natively first): those objects stay native; and objects moved to the native part
  by foreign-key order take the other objects of a table with a callable default along;
- a composite primary key with one sequence-generated column (a tenant id beside an
  identity, as a partitioned table needs): written by async_batch, ids in insert order;
- ``sqlalchemy.ext.mutable`` columns (written by async_batch): values a written row loaded
  (a Python default, a fetched server default) are wrapped and tracked, as the
  ``refresh_flush`` event does natively, so later in-place changes are flushed;
- a self-referencing relationship declared on a subclass only: the hierarchy is still
  inserted (and numbered) level by level;
- one hierarchy's tables (joined inheritance siblings, plain concrete inheritance) are
  written in the order its save writes them (declaration order), not in the order their
  first objects were added: callable defaults, a shared sequence's ids and which table's
  constraint fails first follow it;
- one callable default shared by a natively written table and another (also through a
  ``functools.partial``): called table by table in the unit of work's order, so the other's
  objects stay native too; shared by the tables of a self-referencing hierarchy, it is
  called level by level natively, so those objects stay native;
- an inherited key copied to the next table's key under another name is copied once its own
  table is written: a failure in the middle table of three leaves the last one's key unset.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import (
    DDL,
    CheckConstraint,
    Column,
    Enum,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Integer,
    MetaData,
    Sequence,
    String,
    Table,
    event,
    inspect,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.mutable import MutableDict, MutableList
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    composite,
    mapped_column,
    relationship,
    validates,
)
from sqlalchemy.types import TypeDecorator
from support import Run, assert_fast_reports, compare_modes, create_schema
from test_property import MODES


class Base(DeclarativeBase):
    metadata = MetaData()


class Employee(Base):
    __tablename__ = "mf_employee"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[int] = mapped_column(Integer)
    name: Mapped[str]
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": 1}


class Engineer(Employee):
    __mapper_args__ = {"polymorphic_identity": 2}


class Ticket(Base):
    __tablename__ = "mf_ticket"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    stamp: Mapped[str | None]


class Upper(TypeDecorator[str]):
    """Binds upper-cased: the referenced rows hold upper-case keys."""

    impl = String(10)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else value.upper()


class Color(enum.Enum):
    red = "R"
    green = "G"


item_tags = Table(
    "mf_item_tag",
    Base.metadata,
    Column("item_code", Upper, ForeignKey("mf_item.code"), primary_key=True),
    Column("tag_code", Upper, ForeignKey("mf_tag.code"), primary_key=True),
)
item_paints = Table(
    "mf_item_paint",
    Base.metadata,
    Column("item_code", Upper, ForeignKey("mf_item.code"), primary_key=True),
    Column("color", Enum(Color, name="mf_color"), ForeignKey("mf_paint.color"), primary_key=True),
)


class Item(Base):
    __tablename__ = "mf_item"
    code: Mapped[str] = mapped_column(Upper, primary_key=True)
    tags: Mapped[list[Tag]] = relationship(secondary=item_tags)
    paints: Mapped[list[Paint]] = relationship(secondary=item_paints)


class Tag(Base):
    __tablename__ = "mf_tag"
    code: Mapped[str] = mapped_column(Upper, primary_key=True)


class Paint(Base):
    __tablename__ = "mf_paint"
    color: Mapped[Color] = mapped_column(Enum(Color, name="mf_color"), primary_key=True)


class Person(Base):
    __tablename__ = "mf_person"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    name: Mapped[str]
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "person"}


class Developer(Person):
    __tablename__ = "mf_developer"
    id: Mapped[int] = mapped_column(ForeignKey("mf_person.id"), primary_key=True)
    lang: Mapped[str]
    __mapper_args__ = {"polymorphic_identity": "developer"}


class BParent(Base):
    """Saved after AChild (sort keys): nothing orders them but the names."""

    __tablename__ = "mf_bparent"
    id: Mapped[int] = mapped_column(primary_key=True)


class AChild(Base):
    __tablename__ = "mf_achild"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("mf_bparent.id"))


class AOwner(Base):
    """Saved before BPet; written natively (a before_insert listener)."""

    __tablename__ = "mf_aowner"
    id: Mapped[int] = mapped_column(primary_key=True)


@event.listens_for(AOwner, "before_insert")
def _noop(_mapper: Any, _conn: Any, _target: Any) -> None:
    pass


class BPet(Base):
    __tablename__ = "mf_bpet"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("mf_aowner.id"))


class AShelf(Base):
    """Saved before BBook, as the foreign key wants: written by async_batch."""

    __tablename__ = "mf_ashelf"
    id: Mapped[int] = mapped_column(primary_key=True)


class BBook(Base):
    __tablename__ = "mf_bbook"
    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int | None] = mapped_column(ForeignKey("mf_ashelf.id"))


class Doc(Base):
    __tablename__ = "mf_doc"
    id: Mapped[int] = mapped_column(primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(MutableDict.as_mutable(JSONB))
    items: Mapped[list[Any]] = mapped_column(MutableList.as_mutable(JSONB), default=list)
    meta: Mapped[dict[str, Any]] = mapped_column(
        MutableDict.as_mutable(JSONB), server_default=text("'{}'::jsonb")
    )


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Spot(Base):
    __tablename__ = "mf_spot"
    id: Mapped[int] = mapped_column(primary_key=True)
    x: Mapped[int]
    y: Mapped[int] = mapped_column(default=7)
    at: Mapped[Point] = composite("x", "y")


class Pin(Spot):
    """Joined inheritance below a mapper with a composite."""

    __tablename__ = "mf_pin"
    id: Mapped[int] = mapped_column(ForeignKey("mf_spot.id"), primary_key=True)
    label: Mapped[str]


class Sign(Base):
    __tablename__ = "mf_sign"
    id: Mapped[int] = mapped_column(primary_key=True)
    x: Mapped[int]


class Banner(Sign):
    """No listener of its own (Sign's is not propagated)."""

    __tablename__ = "mf_banner"
    id: Mapped[int] = mapped_column(ForeignKey("mf_sign.id"), primary_key=True)
    label: Mapped[str]


@event.listens_for(Sign, "before_insert")
def _sign_hook(_mapper: Any, _conn: Any, _target: Any) -> None:
    pass


EVENTS: list[str] = []


class Tier1(Base):
    __tablename__ = "mf_tier1"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    name1: Mapped[str | None] = mapped_column(String(10), unique=True)
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "t1"}

    @validates("id")
    def _check_id(self, _key: str, value: Any) -> Any:
        EVENTS.append(f"validate {type(self).__name__}")
        return value


class Tier2(Tier1):
    __tablename__ = "mf_tier2"
    id: Mapped[int] = mapped_column(ForeignKey("mf_tier1.id"), primary_key=True)
    name2: Mapped[str | None] = mapped_column(String(10), unique=True)
    __mapper_args__ = {"polymorphic_identity": "t2"}


class Tier3(Tier2):
    __tablename__ = "mf_tier3"
    id: Mapped[int] = mapped_column(ForeignKey("mf_tier2.id"), primary_key=True)
    __mapper_args__ = {"polymorphic_identity": "t3"}


class Picky(TypeDecorator[str]):
    impl = String(10)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value == "bad":
            raise ValueError("bad value")
        return value


class Sheet(Base):
    __tablename__ = "mf_sheet"
    id: Mapped[int] = mapped_column(primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(MutableDict.as_mutable(JSONB), default=dict)
    tags: Mapped[list[Any]] = mapped_column(
        MutableList.as_mutable(JSONB), server_default=text("'[1]'::jsonb")
    )
    n: Mapped[int] = mapped_column(default=lambda: _tick())
    marks: Mapped[list[Mark]] = relationship(secondary=lambda: sheet_marks)


class Mark(Base):
    __tablename__ = "mf_mark"
    id: Mapped[int] = mapped_column(primary_key=True)


TICKS: list[int] = []


def _tick() -> int:
    TICKS.append(len(TICKS) + 1)
    return TICKS[-1]


sheet_marks = Table(
    "mf_sheet_mark",
    Base.metadata,
    Column("sheet_id", ForeignKey("mf_sheet.id"), primary_key=True),
    Column("mark_id", ForeignKey("mf_mark.id"), primary_key=True),
    # its value does not depend on the order (natively: object addresses), its calls count
    Column("note", String(10), default=lambda: str(_tick() * 0)),
)


class Remark(Base):
    __tablename__ = "mf_remark"
    id: Mapped[int] = mapped_column(primary_key=True)
    sheet_id: Mapped[int] = mapped_column(ForeignKey("mf_sheet.id"))
    label: Mapped[str] = mapped_column(Picky)
    sheet: Mapped[Sheet] = relationship()


class Twig(Base):
    __tablename__ = "mf_twig"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("mf_twig.id"))


class Project(Base):
    __tablename__ = "mf_project"
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(Identity(), primary_key=True)
    name: Mapped[str]
    tasks: Mapped[list[Task]] = relationship(back_populates="project")


class Task(Base):
    """Partitioned by tenant (the partition key must be part of the primary key)."""

    __tablename__ = "mf_task"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "project_id"], ["mf_project.tenant_id", "mf_project.id"]
        ),
        {"postgresql_partition_by": "LIST (tenant_id)"},
    )
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(Identity(), primary_key=True)
    project_id: Mapped[int]
    title: Mapped[str]
    project: Mapped[Project] = relationship(back_populates="tasks")


for _ddl in (
    "CREATE TABLE mf_task_1 PARTITION OF mf_task FOR VALUES IN (1)",
    "CREATE TABLE mf_task_2 PARTITION OF mf_task FOR VALUES IN (2)",
):
    event.listen(Base.metadata, "after_create", DDL(_ddl))


class Depot(Base):
    """Written natively (a before_insert listener); related to Bay."""

    __tablename__ = "mf_depot"
    id: Mapped[int] = mapped_column(primary_key=True)
    bays: Mapped[list[Bay]] = relationship(back_populates="depot")


@event.listens_for(Depot, "before_insert")
def _depot_hook(_mapper: Any, _conn: Any, _target: Any) -> None:
    pass


class Bay(Base):
    __tablename__ = "mf_bay"
    id: Mapped[int] = mapped_column(primary_key=True)
    depot_id: Mapped[int] = mapped_column(ForeignKey("mf_depot.id"))
    depot: Mapped[Depot] = relationship(back_populates="bays")


COUNTER: list[int] = []


def _count() -> str:
    COUNTER.append(len(COUNTER) + 1)
    return f"c{COUNTER[-1]}"


class Zone(Base):
    """A callable default; some zones link to a shelf that goes native (foreign-key order)."""

    __tablename__ = "mf_zone"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(10), default=_count)
    shelf_id: Mapped[int | None] = mapped_column(ForeignKey("mf_zshelf.id"))
    shelf: Mapped[ZShelf | None] = relationship()


class ZShelf(Base):
    __tablename__ = "mf_zshelf"
    id: Mapped[int] = mapped_column(primary_key=True)


class AZNote(Base):
    """References ZShelf without a relationship; saved before it (class names)."""

    __tablename__ = "mf_aznote"
    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int | None] = mapped_column(ForeignKey("mf_zshelf.id"))


class Knot(Base):
    """Single-table inheritance; the self-referencing relationship is on a subclass only."""

    __tablename__ = "mf_knot"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("mf_knot.id"))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "knot"}


class Leaf(Knot):
    parent: Mapped[Knot | None] = relationship(remote_side=[Knot.id])
    __mapper_args__ = {"polymorphic_identity": "leaf"}


STAMPS: list[int] = []


def _stamp_next() -> int:
    STAMPS.append(len(STAMPS) + 1)
    return STAMPS[-1]


class Crew(Base):
    __tablename__ = "mf_crew"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "crew"}


class Pilot(Crew):
    """Declared before Purser: its table comes first in the hierarchy's save."""

    __tablename__ = "mf_pilot"
    __table_args__ = (CheckConstraint("hours >= 0", name="mf_pilot_hours"),)
    id: Mapped[int] = mapped_column(ForeignKey("mf_crew.id"), primary_key=True)
    hours: Mapped[int] = mapped_column(default=0)
    stamp: Mapped[int] = mapped_column(default=_stamp_next)
    __mapper_args__ = {"polymorphic_identity": "pilot"}


class Purser(Crew):
    __tablename__ = "mf_purser"
    __table_args__ = (CheckConstraint("cabins >= 0", name="mf_purser_cabins"),)
    id: Mapped[int] = mapped_column(ForeignKey("mf_crew.id"), primary_key=True)
    cabins: Mapped[int] = mapped_column(default=0)
    stamp: Mapped[int] = mapped_column(default=_stamp_next)
    __mapper_args__ = {"polymorphic_identity": "purser"}


class Ware(Base):
    """Three levels of joined inheritance, the key under another name at each level."""

    __tablename__ = "mf_ware"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "ware"}


class Tome(Ware):
    __tablename__ = "mf_tome"
    tome_id: Mapped[int] = mapped_column("tid", ForeignKey("mf_ware.id"), primary_key=True)
    pages: Mapped[int] = mapped_column(CheckConstraint("pages > 0", name="mf_tome_pages"))
    __mapper_args__ = {"polymorphic_identity": "tome"}


class ETome(Tome):
    __tablename__ = "mf_etome"
    eid: Mapped[int] = mapped_column(ForeignKey("mf_tome.tid"), primary_key=True)
    size: Mapped[int]
    __mapper_args__ = {"polymorphic_identity": "etome"}


class ALedger(Base):
    """Written natively (a before_insert listener), saved first (class names); its default
    is shared with Receipt's."""

    __tablename__ = "mf_aledger"
    id: Mapped[int] = mapped_column(primary_key=True)
    stamp: Mapped[int] = mapped_column(default=_stamp_next)


event.listen(ALedger, "before_insert", _noop)


class Receipt(Base):
    __tablename__ = "mf_receipt"
    id: Mapped[int] = mapped_column(primary_key=True)
    stamp: Mapped[int] = mapped_column(default=_stamp_next)


class Voucher(Base):
    """The same function through a ``functools.partial`` (SQLAlchemy's wrapper of a callable
    without a ``__name__`` does not say what it wraps)."""

    __tablename__ = "mf_voucher"
    id: Mapped[int] = mapped_column(primary_key=True)
    stamp: Mapped[int] = mapped_column(default=functools.partial(_stamp_next))


class Officer(Base):
    """Self-referencing joined inheritance; one callable default on both tables."""

    __tablename__ = "mf_officer"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    boss_id: Mapped[int | None] = mapped_column(ForeignKey("mf_officer.id"))
    stamp: Mapped[int] = mapped_column(default=_stamp_next)
    boss: Mapped[Officer | None] = relationship(remote_side=[id])
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "officer"}


class Captain(Officer):
    __tablename__ = "mf_captain"
    id: Mapped[int] = mapped_column(ForeignKey("mf_officer.id"), primary_key=True)
    stamp2: Mapped[int] = mapped_column(default=_stamp_next)
    __mapper_args__ = {"polymorphic_identity": "captain"}


SHARED = Sequence("mf_shared", metadata=Base.metadata)


class Boat(Base):
    """Plain concrete inheritance, both tables numbered by one sequence."""

    __tablename__ = "mf_boat"
    id: Mapped[int] = mapped_column(SHARED, primary_key=True)
    stamp: Mapped[int] = mapped_column(default=_stamp_next)


class Canoe(Boat):
    __tablename__ = "mf_canoe"
    id: Mapped[int] = mapped_column(SHARED, primary_key=True)
    stamp: Mapped[int] = mapped_column(default=_stamp_next)
    __mapper_args__ = {"concrete": True}


ID_SETS: list[Any] = []


@event.listens_for(Person.id, "set", retval=True, propagate=True)
def _on_id(target: Any, value: Any, _old: Any, _initiator: Any) -> Any:
    ID_SETS.append((type(target).__name__, value is not None))
    return value


@contextmanager
def _warnings_into(run: Run) -> Iterator[None]:
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        yield
    for w in log:
        message = re.sub(r"0x[0-9a-f]+", "0x?", str(w.message))
        run.events.append(("warning", w.category.__name__, message))


def _misfiled() -> list[Any]:
    objs: list[Any] = [Engineer(name=f"e{i}") for i in range(40)]
    objs += [Employee(name=f"m{i}") for i in range(10)]
    objs[3].kind = 99  # no identity of Engineer's
    objs[45].kind = 2  # Engineer's identity on an Employee
    return objs


async def misfiled_identity(run: Run) -> None:
    objs = _misfiled()
    run.track(*objs)
    run.session.add_all(objs)
    with _warnings_into(run):
        await run.session.flush()
    run.snapshot("flush")
    await run.session.commit()
    run.snapshot("commit")


async def misfiled_identity_strict(run: Run) -> None:
    objs = _misfiled()
    run.track(*objs)
    run.session.add_all(objs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await run.session.flush()  # natively raises the SAWarning: the flush fails


def _stamp(_mapper: Any, _conn: Any, target: Any) -> None:
    target.stamp = "stamped"


async def late_listener(run: Run) -> None:
    first = [Ticket(title=f"a{i}") for i in range(40)]
    run.session.add_all(first)
    await run.session.commit()  # analyzed without listeners
    event.listen(Ticket, "before_insert", _stamp)
    try:
        second = [Ticket(title=f"b{i}") for i in range(40)]
        run.track(*second)
        run.session.add_all(second)
        await run.session.flush()
        run.snapshot("flush")
        await run.session.commit()
    finally:
        event.remove(Ticket, "before_insert", _stamp)


async def association_types(run: Run) -> None:
    tags = [Tag(code=f"t{i}") for i in range(3)]
    paints = [Paint(color=c) for c in Color]
    items = [Item(code=f"i{i}", tags=[tags[i % 3]], paints=[paints[i % 2]]) for i in range(40)]
    run.track(*items, *tags, *paints)
    run.session.add_all(items)
    await run.session.flush()
    run.snapshot("flush")
    await run.session.commit()
    run.snapshot("commit")


async def inherited_key_events(run: Run) -> None:
    ID_SETS.clear()

    def after_flush(session: Any, _ctx: Any) -> None:
        for obj in sorted(session.new, key=lambda o: o.name):
            st = inspect(obj)
            run.events.append(("after_flush", obj.name, sorted(st.committed_state)))

    event.listen(run.session.sync_session, "after_flush", after_flush)
    objs = [Developer(name=f"d{i:02}", lang="py") for i in range(40)]
    run.track(*objs)
    run.session.add_all(objs)
    await run.session.flush()
    run.events.append(("id set events", len(ID_SETS), sorted(set(ID_SETS))))
    run.snapshot("flush")
    await run.session.commit()


async def mutable_columns(run: Run) -> None:
    docs = [Doc(data={"n": i}) for i in range(40)]
    docs[1].items = [1]
    run.track(*docs)
    run.session.add_all(docs)
    docs[0].data["early"] = True  # changed after add, before the flush
    await run.session.flush()
    run.snapshot("flush")
    run.events.append(
        ("types", sorted({(type(d.items).__name__, type(d.meta).__name__) for d in docs}))
    )
    for d in docs[::4]:
        d.data["after"] = 1  # each tracked: the objects are dirty
        d.items.append("x")
        d.meta["m"] = 2
    run.events.append(("dirty", len(run.session.dirty)))
    run.snapshot("changed")
    await run.session.commit()
    run.snapshot("commit")


async def composite_attributes(run: Run) -> None:
    spots = [Spot(at=Point(i, i)) for i in range(20)] + [Spot(x=i) for i in range(10)]
    spots += [Pin(at=Point(i, 0), label=f"p{i}") for i in range(20)]
    run.track(*spots)
    run.session.add_all(spots)
    await run.session.flush()
    run.events.append(("cached", ["at" in s.__dict__ for s in spots]))
    run.events.append(("values", [s.at for s in spots]))
    run.snapshot("flush")
    await run.session.commit()


def tiers(fail: str | None) -> Callable[[Run], Any]:
    async def workload(run: Run) -> None:
        EVENTS.clear()
        objs: list[Any] = [(Tier1, Tier2, Tier3)[i % 3](name1=f"a{i}") for i in range(45)]
        for i, obj in enumerate(objs):
            if isinstance(obj, Tier2):
                obj.name2 = f"b{i}"  # one key set per mapper: no regrouping
        if fail == "tier1":
            objs[3].name1 = objs[6].name1 = "dup"
        if fail == "tier2":
            objs[4].name2 = objs[7].name2 = "dup"
        run.track(*objs)
        run.session.add_all(objs)
        try:
            await run.session.flush()
        finally:
            run.events.append(("id events", list(EVENTS)))
        run.snapshot("flush")
        await run.session.commit()

    return workload


async def built_after_written(run: Run) -> None:
    TICKS.clear()
    marks = [Mark() for _ in range(2)]
    sheets = [Sheet(marks=list(marks)) for _ in range(40)]
    remarks = [
        Remark(id=i + 1, sheet=sh, label="bad" if i == 5 else "ok") for i, sh in enumerate(sheets)
    ]
    run.track(*sheets, *remarks)
    run.session.add_all(remarks)
    try:
        await run.session.flush()  # Remark's rows fail to build, after Sheet's are written
    except Exception as err:
        run.events.append(("failed", type(err).__name__))
    run.events.append(
        ("types", sorted({(type(s.data).__name__, "tags" in s.__dict__) for s in sheets}))
    )
    await run.session.rollback()
    remarks[5].label = "fine"
    run.session.add_all(remarks)
    await run.session.commit()
    run.events.append(("ticks", list(TICKS)))
    run.snapshot("commit")


async def twigs(run: Run) -> None:
    objs = [Twig(id=100 + i, parent_id=(100 + i + 1) if i < 39 else None) for i in range(40)]
    run.track(*objs)
    run.session.add_all(objs)  # each row references the next one
    await run.session.flush()


async def tenant_projects(run: Run) -> None:
    projects = [Project(tenant_id=1 + i % 2, name=f"p{i}") for i in range(10)]
    for i, p in enumerate(projects):
        p.tasks = [Task(title=f"t{i}.{j}") for j in range(4)]  # tenant copied from the project
    loose = [Task(tenant_id=1, title="orphan", project=projects[0])]
    run.track(*projects, *(t for p in projects for t in p.tasks), *loose)
    run.session.add_all([*projects, *loose])
    await run.session.flush()
    run.snapshot("flush")
    await run.session.commit()


async def zones(run: Run) -> None:
    COUNTER.clear()
    shelves = [ZShelf() for _ in range(5)]
    objs: list[Any] = []
    for i in range(40):
        objs.append(Zone(shelf=shelves[i % 5]) if i % 2 == 0 else Zone())
    note = AZNote()
    run.track(*objs, *shelves, note)
    run.session.add_all([*objs, note])
    await run.session.flush()
    run.snapshot("flush")
    await run.session.commit()


async def knots(run: Run) -> None:
    objs: list[Any] = []
    for _ in range(10):
        root = Knot()
        objs += [root, Leaf(parent=root), Knot(), Leaf(parent=root)]
    run.track(*objs)
    run.session.add_all(objs)  # natively inserted level by level: the roots first
    await run.session.flush()
    run.snapshot("flush")
    await run.session.commit()


def crews(fail: str | None) -> Callable[[Run], Any]:
    async def workload(run: Run) -> None:
        STAMPS.clear()
        # a Purser first; one key set per table (native splits a table's rows by key set)
        objs: list[Any] = [Purser(cabins=1) if i % 2 == 0 else Pilot(hours=1) for i in range(40)]
        if fail in ("both", "purser"):
            objs[2].cabins = -1
        if fail == "both":
            objs[3].hours = -1
        run.track(*objs)
        run.session.add_all(objs)
        try:
            await run.session.flush()
        except Exception as err:
            # the table the unit of work writes first fails first
            run.events.append(("failed", re.findall(r'constraint "(\w+)"', str(err))))
            raise
        run.events.append(("stamps", [o.stamp for o in objs]))
        run.snapshot("flush")
        await run.session.commit()

    return workload


async def etomes(run: Run) -> None:
    objs = [ETome(pages=1, size=i) for i in range(40)]
    objs[20].pages = 0  # fails in the middle table: natively only its base table was written
    run.track(*objs)
    run.session.add_all(objs)
    await run.session.flush()


async def receipts(run: Run) -> None:
    STAMPS.clear()
    objs: list[Any] = [Receipt() for _ in range(30)] + [ALedger() for _ in range(10)]
    objs += [Voucher() for _ in range(10)]
    run.track(*objs)
    run.session.add_all(objs)
    await run.session.flush()  # natively the ledger's rows take the first stamps
    run.snapshot("flush")


async def officers(run: Run) -> None:
    STAMPS.clear()
    top = Captain()
    objs: list[Any] = [Captain(boss=top) if i % 2 else Officer(boss=top) for i in range(30)]
    objs.append(top)  # natively saved level by level: the top's two rows first
    run.track(*objs)
    run.session.add_all(objs)
    await run.session.flush()
    run.snapshot("flush")


async def boats(run: Run) -> None:
    STAMPS.clear()
    objs: list[Any] = [(Canoe, Boat)[i % 2]() for i in range(40)]  # a Canoe first
    run.track(*objs)
    run.session.add_all(objs)
    await run.session.flush()
    run.events.append(("boats", [(type(o).__name__, o.id, o.stamp) for o in objs]))
    run.snapshot("flush")
    await run.session.commit()


def _keyed(*make: Callable[[int], Any]) -> Callable[[Run], Any]:
    async def workload(run: Run) -> None:
        objs = [m(i) for m in make for i in range(40)]
        run.track(*objs)
        run.session.add_all(objs)
        await run.session.flush()
        run.snapshot("flush")
        await run.session.commit()

    return workload


CASES: dict[str, Callable[[Run], Any]] = {
    "mutable columns": mutable_columns,
    "composite attributes": composite_attributes,
    "composite key with a generated id": tenant_projects,
    "inherited key events, three levels": tiers(None),
    "inherited key events, second table fails": tiers("tier2"),
    "inherited key events, first table fails": tiers("tier1"),
    "rows built after the tables before are written": built_after_written,
    "self-referencing foreign key without relationship": twigs,
    "sequence shared with native objects": _keyed(
        lambda i: Sign(x=i), lambda i: Banner(x=i, label="b")
    ),
    "foreign key by value to a native new row": _keyed(
        lambda i: Depot(id=100 + i), lambda i: Bay(depot_id=100 + i)
    ),
    "callable default table beside a foreign-key-order fallback": zones,
    "foreign key without relationship, child first": _keyed(
        lambda i: BParent(id=100 + i), lambda i: AChild(parent_id=100 + i)
    ),
    "foreign key without relationship, parent first": _keyed(
        lambda i: BBook(shelf_id=100 + i), lambda i: AShelf(id=100 + i)
    ),
    "foreign key without relationship, native parent first": _keyed(
        lambda i: AOwner(id=100 + i), lambda i: BPet(owner_id=100 + i)
    ),
    "misfiled identity": misfiled_identity,
    "misfiled identity, warnings as errors": misfiled_identity_strict,
    "listener added after a first flush": late_listener,
    "association column types": association_types,
    "inherited key set events": inherited_key_events,
    "self-referencing relationship on a subclass only": knots,
    "joined inheritance siblings in declaration order": crews(fail=None),
    "joined inheritance siblings, both tables fail": crews(fail="both"),
    "joined inheritance siblings, the second table fails": crews(fail="purser"),
    "concrete inheritance, one shared sequence": boats,
    "inherited keys under other names, the middle table fails": etomes,
    "callable default shared with a native table": receipts,
    "callable default shared by a self-referencing hierarchy's tables": officers,
}
STAYS_NATIVE = {
    "foreign key by value to a native new row": "is given the key of a new mf_depot row",
    "callable default table beside a foreign-key-order fallback": "without a relationship",
    "sequence shared with native objects": "shares its id sequence with new Sign objects",
    "listener added after a first flush": "before_insert/after_insert listeners",
    "callable default shared with a native table": "share a callable default",
    "callable default shared by a self-referencing hierarchy's tables": "references itself",
    "foreign key without relationship, native parent first": "mf_bpet.owner_id -> mf_aowner "
    "without a relationship: the unit of work inserts mf_aowner first",
}


@pytest.fixture
def mapping_dsn(database_dsn: str) -> str:
    create_schema(database_dsn, Base.metadata)
    return database_dsn


@pytest.mark.parametrize("case", list(CASES))
def test_mapping_feature_matches_native(mapping_dsn: str, case: str) -> None:
    native, results = asyncio.run(
        compare_modes(
            mapping_dsn, CASES[case], MODES, metadata=Base.metadata, sequences=["mf_shared"]
        )
    )
    if case == "misfiled identity, warnings as errors":
        assert native.error == "SAWarning"
        return
    if case in (
        "foreign key without relationship, child first",
        "inherited key events, second table fails",
        "inherited key events, first table fails",
        "self-referencing foreign key without relationship",
        "joined inheritance siblings, both tables fail",
        "joined inheritance siblings, the second table fails",
        "inherited keys under other names, the middle table fails",
    ):
        assert native.error == "IntegrityError"
        return
    assert native.error is None, native.error
    assert_fast_reports(results, native_reason=STAYS_NATIVE.get(case))
    if case == "misfiled identity":
        assert [e for e in native.events if e[0] == "warning"], native.events
    if case == "inherited key set events":
        assert ("id set events", 40, [("Developer", True)]) in native.events
