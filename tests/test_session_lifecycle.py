"""New objects beside what else a session does in the same flush, native vs every batching mode
(found by differential probing):

- a persistent object's UPDATE of a plain column in a table with a unique constraint;
- a row switch: a persistent object deleted and a new one with its primary key added;
- the history of keys copied from new parents, as an ``after_flush`` listener sees it (and as it
  stays when that listener raises);
- validators on a foreign key copied from a persistent parent the flush also updates: they run
  as often as natively; from a new parent they run natively once its row is written (they may
  read its defaults and fetched server defaults), so such objects stay native;
- ``make_transient`` on flushed parents, re-added with new keys: their persistent children
  follow in the session;
- an ``after_flush`` listener that expunges new objects (and adds another): the expunged ones
  get no ``pending_to_persistent`` event and are "altered" (so a rollback leaves them
  detached), the added one stays pending;
- objects loaded with an ``identity_token``, made transient and added again keep it in their
  identity key;
- a failure in a table the unit of work saves in the same layer as a parent, after it: the
  parent keeps its id, its new children do not get it (natively copied a layer later);
- ``merge()`` of a persistent parent with new children: its unchanged attributes in the
  committed state are no UPDATE, and do not keep the children native;
- an UPDATE that frees a value for a new row of the same table (natively UPDATEs run first),
  where the uniqueness is a partial or expression index, a constraint only the database has,
  or an exclusion constraint, or where the UPDATE comes from a relationship (a one-to-one
  child replaced, or moved to another parent, with a unique foreign key);
- new objects linked many-to-many (both directions mapped) to persistent objects, which the
  back reference makes part of the flush: their association rows are written once;
- the unit of work's part failing in a table async_batch also wrote: new children of a
  persistent parent keep the key copied from it (natively copied before that table's INSERT);
- natively written objects given prefetched ids keep them when a later table's INSERT
  fails (natively their table's RETURNING gave them), also when async_batch writes nothing;
- ``pending_to_persistent`` listeners see a persistent parent whose collection gained the new
  objects already committed (natively every object is, before the first call);
- association rows the flush deletes (a link removed, an object deleted, a scalar
  many-to-many replaced) go before new rows of that table natively, which a unique key there
  can depend on: new objects linked through it stay native.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import (
    DDL,
    CheckConstraint,
    Column,
    ForeignKey,
    MetaData,
    String,
    Table,
    event,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import INT4RANGE, Range
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    backref,
    make_transient,
    mapped_column,
    relationship,
    selectinload,
    validates,
)
from support import Run, assert_fast_reports, compare_modes, create_schema, flush_and_commit
from test_property import MODES


class Base(DeclarativeBase):
    metadata = MetaData()


class Account(Base):
    __tablename__ = "sl_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(40), unique=True)
    visits: Mapped[int] = mapped_column(default=0)


class Entry(Base):
    __tablename__ = "sl_entry"
    id: Mapped[int] = mapped_column(primary_key=True)
    msg: Mapped[str]


class Owner(Base):
    __tablename__ = "sl_owner"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    pets: Mapped[list[Pet]] = relationship(back_populates="owner")


CALLS: list[Any] = []


class Pet(Base):
    __tablename__ = "sl_pet"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("sl_owner.id"))
    name: Mapped[str]
    owner: Mapped[Owner | None] = relationship(back_populates="pets")


class Kennel(Base):
    __tablename__ = "sl_kennel"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    dogs: Mapped[list[Dog]] = relationship(back_populates="kennel")


class Dog(Base):
    __tablename__ = "sl_dog"
    id: Mapped[int] = mapped_column(primary_key=True)
    kennel_id: Mapped[int | None] = mapped_column(ForeignKey("sl_kennel.id"))
    name: Mapped[str]
    kennel: Mapped[Kennel | None] = relationship(back_populates="dogs")

    @validates("kennel_id")
    def _check(self, key: str, value: Any) -> Any:
        CALLS.append((self.name, value))
        return value


class Node(Base):
    __tablename__ = "sl_node"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("sl_node.id"))
    children: Mapped[list[Node]] = relationship(backref=backref("parent", remote_side=[id]))


class Zeal(Base):
    """Unique values; saved after Owner in the same layer (nothing relates them)."""

    __tablename__ = "sl_zeal"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(10), unique=True)


class Memo(Base):
    __tablename__ = "sl_memo"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]
    status: Mapped[str | None] = mapped_column(String, server_default="new")
    # not fetched: expired once the row is written
    __mapper_args__ = {"eager_defaults": False}


class Hooked(Base):
    """Written natively (a before_insert listener); saved before Memo (class name order)."""

    __tablename__ = "sl_hooked"
    id: Mapped[int] = mapped_column(primary_key=True)
    v: Mapped[int] = mapped_column(CheckConstraint("v < 10"))


class ZHooked(Base):
    """As Hooked, saved after Memo."""

    __tablename__ = "sl_zhooked"
    id: Mapped[int] = mapped_column(primary_key=True)
    v: Mapped[int] = mapped_column(CheckConstraint("v < 10"))


FARM_CODES: list[int] = []


def _farm_code() -> int:
    FARM_CODES.append(100 + len(FARM_CODES))
    return FARM_CODES[-1]


class Farm(Base):
    __tablename__ = "sl_farm"
    id: Mapped[int] = mapped_column(primary_key=True)
    region: Mapped[str] = mapped_column(String(10), default="eu")
    code: Mapped[int] = mapped_column(default=_farm_code)
    stamp: Mapped[str | None] = mapped_column(String(10), server_default="s")
    cows: Mapped[list[Cow]] = relationship(back_populates="farm")


class Cow(Base):
    __tablename__ = "sl_cow"
    id: Mapped[int] = mapped_column(primary_key=True)
    farm_id: Mapped[int | None] = mapped_column(ForeignKey("sl_farm.id"))
    origin: Mapped[str | None] = mapped_column(String(30))
    farm: Mapped[Farm | None] = relationship(back_populates="cows")

    @validates("farm_id")
    def _origin(self, key: str, value: Any) -> Any:
        # reads what the parent's INSERT set: natively its defaults, fetched server default
        if self.farm is not None:
            self.origin = f"{self.farm.region}/{self.farm.code}/{self.farm.stamp}"
        return value


class Probe(Base):
    """Written natively in every mode (eager defaults), with mixed key sets: its ids are
    prefetched (the rows regrouped)."""

    __tablename__ = "sl_probe"
    id: Mapped[int] = mapped_column(primary_key=True)
    x: Mapped[int | None]
    stamp: Mapped[str | None] = mapped_column(String(5), server_default="s")
    __mapper_args__ = {"eager_defaults": True}


class Sheet(Base):
    """Versioned (written natively), saved after Probe (class names)."""

    __tablename__ = "sl_sheet"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    rev: Mapped[int] = mapped_column()
    __mapper_args__ = {"version_id_col": rev}


class Reading(Base):
    """Saved after Probe (class names); written natively too."""

    __tablename__ = "sl_reading"
    __table_args__ = (CheckConstraint("v >= 0", name="sl_reading_v"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    v: Mapped[int]
    __mapper_args__ = {"eager_defaults": True}


class Club(Base):
    __tablename__ = "sl_club"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30), unique=True)
    fans: Mapped[list[Fan]] = relationship(back_populates="club")


class Fan(Base):
    __tablename__ = "sl_fan"
    id: Mapped[int] = mapped_column(primary_key=True)
    club_id: Mapped[int | None] = mapped_column(ForeignKey("sl_club.id"))
    name: Mapped[str] = mapped_column(String(10))
    club: Mapped[Club | None] = relationship(back_populates="fans")


@event.listens_for(Hooked, "before_insert")
@event.listens_for(ZHooked, "before_insert")
def _before_insert(_mapper: Any, _conn: Any, _target: Any) -> None:
    pass


class Slot(Base):
    """Unique only where not ``gone`` (a partial index: a soft delete frees the value)."""

    __tablename__ = "sl_slot"
    id: Mapped[int] = mapped_column(primary_key=True)
    v: Mapped[str] = mapped_column(String(10))
    gone: Mapped[bool] = mapped_column(default=False)


class Login(Base):
    """Unique on ``lower(v)`` (an expression index)."""

    __tablename__ = "sl_login"
    id: Mapped[int] = mapped_column(primary_key=True)
    v: Mapped[str] = mapped_column(String(10))


class Handle(Base):
    """Unique in the database only (a migration added it; the model does not say)."""

    __tablename__ = "sl_handle"
    id: Mapped[int] = mapped_column(primary_key=True)
    v: Mapped[str] = mapped_column(String(10))


class Booking(Base):
    """No two live bookings overlap (an exclusion constraint)."""

    __tablename__ = "sl_booking"
    id: Mapped[int] = mapped_column(primary_key=True)
    span: Mapped[Range[int]] = mapped_column(INT4RANGE)
    gone: Mapped[bool] = mapped_column(default=False)


class Member(Base):
    __tablename__ = "sl_member"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    badge: Mapped[Badge | None] = relationship(back_populates="member", uselist=False)


class Badge(Base):
    __tablename__ = "sl_badge"
    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[int | None] = mapped_column(ForeignKey("sl_member.id"), unique=True)
    label: Mapped[str]
    member: Mapped[Member | None] = relationship(back_populates="badge")


article_topics = Table(
    "sl_article_topic",
    Base.metadata,
    Column("article_id", ForeignKey("sl_article.id"), primary_key=True),
    Column("topic_id", ForeignKey("sl_topic.id"), primary_key=True),
)


class Topic(Base):
    __tablename__ = "sl_topic"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20), unique=True)
    articles: Mapped[list[Article]] = relationship(
        secondary=article_topics, back_populates="topics"
    )


class Article(Base):
    __tablename__ = "sl_article"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(20), unique=True)
    topics: Mapped[list[Topic]] = relationship(secondary=article_topics, back_populates="articles")


desk_lamps = Table(
    "sl_desk_lamp",
    Base.metadata,
    Column("desk_id", ForeignKey("sl_desk.id"), primary_key=True),
    Column("lamp_id", ForeignKey("sl_lamp.id"), primary_key=True, unique=True),
)
desk_chairs = Table(
    "sl_desk_chair",
    Base.metadata,
    Column("desk_id", ForeignKey("sl_desk.id"), primary_key=True),  # one chair per desk
    Column("chair_id", ForeignKey("sl_chair.id")),
)


class Desk(Base):
    __tablename__ = "sl_desk"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))
    lamps: Mapped[list[Lamp]] = relationship(secondary=desk_lamps, back_populates="desks")
    chair: Mapped[Chair | None] = relationship(secondary=desk_chairs, back_populates="desks")


class Lamp(Base):
    __tablename__ = "sl_lamp"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))
    desks: Mapped[list[Desk]] = relationship(secondary=desk_lamps, back_populates="lamps")


class Chair(Base):
    __tablename__ = "sl_chair"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))
    desks: Mapped[list[Desk]] = relationship(secondary=desk_chairs, back_populates="chair")


class Holder(Base):
    __tablename__ = "sl_holder"
    id: Mapped[int] = mapped_column(primary_key=True)
    case: Mapped[Case | None] = relationship(uselist=False, cascade="all, delete-orphan")


class Case(Base):
    __tablename__ = "sl_case"
    id: Mapped[int] = mapped_column(primary_key=True)
    holder_id: Mapped[int | None] = mapped_column(ForeignKey("sl_holder.id"))
    items: Mapped[list[Item]] = relationship(passive_deletes=True)


class Item(Base):
    __tablename__ = "sl_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("sl_case.id", ondelete="SET NULL"))


class Rack(Base):
    __tablename__ = "sl_rack"
    id: Mapped[int] = mapped_column(primary_key=True)
    crates: Mapped[list[Crate]] = relationship(cascade="all, delete-orphan")


class Crate(Base):
    __tablename__ = "sl_crate"
    id: Mapped[int] = mapped_column(primary_key=True)
    rack_id: Mapped[int | None] = mapped_column(ForeignKey("sl_rack.id"))
    bottles: Mapped[list[Bottle]] = relationship(cascade="all, delete-orphan")


class Bottle(Base):
    __tablename__ = "sl_bottle"
    id: Mapped[int] = mapped_column(primary_key=True)
    crate_id: Mapped[int | None] = mapped_column(ForeignKey("sl_crate.id"))


for _ddl in (
    "CREATE UNIQUE INDEX sl_slot_live ON sl_slot (v) WHERE NOT gone",
    "CREATE UNIQUE INDEX sl_login_lower ON sl_login (lower(v))",
    "ALTER TABLE sl_handle ADD CONSTRAINT sl_handle_v UNIQUE (v)",
    "ALTER TABLE sl_booking ADD CONSTRAINT sl_booking_free EXCLUDE USING gist "
    "(span WITH &&) WHERE (NOT gone)",
):
    event.listen(Base.metadata, "after_create", DDL(_ddl))


async def setup(session: Any) -> None:
    session.add(Account(email="a@x"))
    session.add(Entry(id=1, msg="old"))
    session.add(Kennel(name="k"))
    session.add(Node(name="root", children=[Node(name="c0"), Node(name="c1")]))
    session.add_all([Slot(v="x"), Login(v="x"), Handle(v="x"), Booking(span=Range(1, 10))])
    session.add_all([Member(name="m1", badge=Badge(label="old")), Member(name="m2")])
    session.add_all([Topic(name="python"), Topic(name="sql")])
    session.add_all([Club(name="c1"), Club(name="c2")])
    session.add(Desk(name="d0", lamps=[Lamp(name="l0")], chair=Chair(name="ch0")))
    session.add(Holder(case=Case()))
    session.add(Crate(bottles=[Bottle()]))


async def unique_table_update(run: Run) -> None:
    account = (await run.session.scalars(select(Account))).one()
    account.visits += 1  # a plain column; the table has a unique one
    entries = [Entry(id=100 + i, msg=f"m{i}") for i in range(60)]
    run.track(account, *entries)
    run.session.add_all(entries)
    await run.session.commit()
    run.snapshot("commit")


async def row_switch(run: Run) -> None:
    old = await run.session.get(Entry, 1)
    await run.session.delete(old)
    new = [Entry(id=1, msg="replacement")] + [Entry(id=200 + i, msg=f"e{i}") for i in range(50)]
    run.track(old, *new)
    run.session.add_all(new)
    await run.session.commit()
    run.snapshot("commit")


def after_flush_history(fail: bool) -> Callable[[Run], Any]:
    async def workload(run: Run) -> None:
        def seen(session: Any, _ctx: Any) -> None:
            for obj in session.new:
                if isinstance(obj, Pet):
                    hist = inspect(obj).attrs.owner_id.history
                    run.events.append(("history", obj.name, hist.added, hist.unchanged))
            if fail:
                raise RuntimeError("after_flush says no")

        event.listen(run.session.sync_session, "after_flush", seen)
        owners = [Owner(name=f"o{i}", pets=[Pet(name=f"p{i}")]) for i in range(40)]
        run.track(*owners, *(o.pets[0] for o in owners))
        run.session.add_all(owners)
        await run.session.flush()
        run.snapshot("flush")
        await run.session.commit()

    return workload


async def history_of_keys_the_unit_of_work_copies_again(run: Run) -> None:
    """New pets of a persistent owner that the unit of work processes (its collection also
    holds an object outside the session): it copies their key again after async_batch did;
    an after_flush listener sees the key as added, as natively."""

    def seen(session: Any, _ctx: Any) -> None:
        for obj in session.new:
            if isinstance(obj, Pet):
                hist = inspect(obj).attrs.owner_id.history
                run.events.append(("history", obj.name, hist.added, hist.unchanged))

    s = run.session
    owner = Owner(name="o", pets=[])
    s.add(owner)
    await s.flush()
    event.listen(s.sync_session, "after_flush", seen)
    gone = Pet(name="gone")
    owner.pets.append(gone)
    s.expunge(gone)  # in the collection, not in the session
    pets = [Pet(name=f"p{i}") for i in range(40)]
    owner.pets.extend(pets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not in session ... will not proceed"
        await flush_and_commit(run, [owner, *pets], [])


async def validated_key_from_updated_parent(run: Run) -> None:
    kennel = (await run.session.scalars(select(Kennel).options(selectinload(Kennel.dogs)))).one()
    CALLS.clear()
    dogs = [Dog(name=f"d{i}") for i in range(50)]
    kennel.dogs.extend(dogs)  # new children of a persistent parent ...
    kennel.name = "renamed"  # ... which the flush also updates
    run.track(kennel, *dogs)
    await run.session.flush()
    run.events.append(("validator calls", sorted(CALLS)))
    run.snapshot("flush")
    await run.session.commit()


async def transient_parents_readded(run: Run) -> None:
    owners = [Owner(name=f"o{i}", pets=[Pet(name=f"p{i}")]) for i in range(40)]
    pets = [o.pets[0] for o in owners]
    run.track(*owners, *pets)
    run.session.add_all(owners)
    await run.session.flush()
    for owner in owners:
        make_transient(owner)  # its pet stays persistent, still in owner.pets
        owner.id = None  # type: ignore[assignment]
        run.session.add(owner)  # inserted again, with a new key
    await run.session.flush()
    run.snapshot("second flush")
    await run.session.commit()


def orphaned_parent(replace: bool) -> Callable[[Run], Any]:
    async def workload(run: Run) -> None:
        s = run.session
        case = (await s.scalars(select(Case).options(selectinload(Case.items)))).one()
        holder = (await s.scalars(select(Holder))).one()  # holder.case is not loaded
        items = [Item() for _ in range(40)]
        case.items.extend(items)
        # the unit of work's presort loads the previous value, finds the case orphaned and
        # deletes it (the database sets the new items' key to NULL)
        holder.case = Case() if replace else None
        await flush_and_commit(run, [case, holder, *items], [])

    return workload


async def linked_to_a_deleted_object(run: Run) -> None:
    s = run.session
    topic = (await s.scalars(select(Topic).where(Topic.name == "sql"))).one()
    await s.delete(topic)
    await s.flush()  # deleted: out of the session until the commit
    articles = [Article(title=f"a{i}") for i in range(40)]
    s.add_all(articles)
    lone = Article(title="lone")
    lone.topics.append(topic)
    try:
        s.add(lone)  # pending, then the cascade to the deleted topic refuses
    except InvalidRequestError:
        run.events.append(("add refused",))
    # natively no association row for the deleted topic
    await flush_and_commit(run, [topic, lone, *articles], [])


def pets_of_an_expunged_owner(expired: bool) -> Callable[[Run], Any]:
    """A new pet whose owner was expunged: natively the unit of work copies no key from an
    object that is not in the session (it warns), async_batch must not either -- nor load
    the owner's expired key (a detached object cannot refresh)."""

    async def run_it(run: Run) -> None:
        s = run.session
        owner = Owner(name="gone")
        s.add(owner)
        if expired:
            await s.commit()
        else:
            await s.flush()
        pets = [Pet(name=f"p{i}") for i in range(40)]
        s.add_all(pets)
        pets[0].owner = owner
        s.expunge(owner)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "not in session ... will not proceed"
            await flush_and_commit(run, pets, [])

    return run_it


async def crates_filled(run: Run) -> None:
    """Delete-orphan collections that only gain members orphan nothing: the persistent crate
    (the target class of the new rack's delete-orphan collection) stays an idle parent, its
    new bottles and the new rack's crate are all written by async_batch."""
    s = run.session
    crate = (await s.scalars(select(Crate).options(selectinload(Crate.bottles)))).one()
    bottles = [Bottle() for _ in range(40)]
    crate.bottles.extend(bottles)
    rack = Rack(crates=[Crate(bottles=[Bottle()])])
    run.track(crate, *bottles, rack, *rack.crates)
    s.add(rack)
    await s.commit()
    run.snapshot("commit")


async def rekeyed_by_a_rollback(run: Run) -> None:
    s = run.session
    owners = [Owner(name=f"o{i}", pets=[Pet(name=f"p{i}")]) for i in range(40)]
    pets = [o.pets[0] for o in owners]
    run.track(*owners, *pets)
    s.add_all(owners)
    await s.flush()
    owners[0].id = 500  # its pet's row still points at the old key: the UPDATE fails
    try:
        await s.flush()
    except IntegrityError:
        run.events.append(("update failed",))
    await s.rollback()  # transient again: owners[0] keeps 500, its pet the old key's copy
    run.snapshot("rolled back")
    s.add_all(owners)
    await s.commit()  # natively the pet gets 500 again from its owner (its key changed)
    run.snapshot("commit")


async def reparent_under_new_nodes(run: Run) -> None:
    """New nodes under a persistent root and under each other, and a persistent node moved
    under a new one: the unit of work saves the moved node object by object, and with it
    every node it links to."""
    root = await run.session.get(Node, 1, options=[selectinload(Node.children)])
    moved = await run.session.get(Node, 3)
    assert root is not None
    assert moved is not None
    new: list[Node] = []
    for i in range(40):
        node = Node(name=f"n{i}")
        if i % 2 == 0:
            root.children.append(node)
        else:
            node.parent = new[-1]
        new.append(node)
    moved.parent = new[1]
    run.track(root, moved, *new)
    run.session.add_all(new)
    await run.session.commit()
    run.snapshot("commit")


def native_part_fails(hooked: type[Any]) -> Callable[[Run], Any]:
    async def workload(run: Run) -> None:
        memos = [Memo(text=f"m{i}") for i in range(60)]
        failing = [hooked(v=1), hooked(v=99)]
        run.track(*memos, *failing)
        run.session.add_all([*memos, *failing])
        await run.session.flush()

    return workload


def expunged_in_after_flush(listener: bool, rollback: bool) -> Callable[[Run], Any]:
    async def workload(run: Run) -> None:
        memos = [Memo(text=f"m{i}") for i in range(40)]
        extra = Entry(id=500, msg="added in after_flush")

        def after_flush(session: Any, _ctx: Any) -> None:
            if extra not in session:
                session.expunge(memos[0])
                session.expunge(memos[1])
                session.add(extra)

        event.listen(run.session.sync_session, "after_flush", after_flush)
        became: list[str] = []
        if listener:
            event.listen(
                run.session.sync_session,
                "pending_to_persistent",
                lambda _s, obj: became.append(getattr(obj, "text", "")),
            )
        run.track(*memos, extra)
        run.session.add_all(memos)
        await run.session.flush()
        run.events.append(("new", len(run.session.new), extra in run.session.new))
        run.events.append(("became persistent", sorted(became)))
        run.snapshot("flush")
        if rollback:
            await run.session.rollback()
            run.events.append(("expunged", inspect(memos[0]).detached, memos[0] in run.session))
            run.snapshot("rollback")
        else:
            await run.session.commit()
            run.snapshot("commit")

    return workload


async def identity_token_kept(run: Run) -> None:
    s = run.session
    s.add_all([Entry(id=300 + i, msg=f"t{i}") for i in range(40)])
    await s.commit()
    loaded = list(
        (
            await s.scalars(
                select(Entry).where(Entry.id >= 300).order_by(Entry.id),
                execution_options={"identity_token": "t1"},
            )
        ).all()
    )
    for e in loaded:
        await s.delete(e)
    await s.flush()
    for e in loaded:
        make_transient(e)
    run.track(*loaded)
    s.add_all(loaded)
    await s.flush()
    run.events.append(("keys", sorted(inspect(e).key[2] for e in loaded)))
    run.events.append(("get", await s.get(Entry, 300, identity_token="t1") is loaded[0]))
    run.snapshot("flush")
    await s.commit()


async def unrelated_table_fails(run: Run) -> None:
    owners = [Owner(name=f"o{i}", pets=[Pet(name=f"p{i}")]) for i in range(40)]
    zeals = [Zeal(code="same"), Zeal(code="same")]
    run.track(*owners, *(o.pets[0] for o in owners), *zeals)
    run.session.add_all([*owners, *zeals])
    await run.session.flush()


async def merged_parent(run: Run) -> None:
    s = run.session
    owner = Owner(name="first")
    s.add(owner)
    await s.flush()
    oid = owner.id
    await s.commit()
    pets = [Pet(name=f"p{i}") for i in range(40)]
    merged = await s.merge(Owner(id=oid, name="merged", pets=pets))
    await flush_and_commit(run, [merged, *merged.pets], [])


def freed(cls: type[Any], free: Callable[[Any], None], reuse: Callable[[int], Any]) -> Any:
    async def workload(run: Run) -> None:
        old = (await run.session.scalars(select(cls))).one()
        free(old)  # natively UPDATEd before the INSERTs
        new = [reuse(i) for i in range(40)]
        run.track(old, *new)
        run.session.add_all(new)
        await run.session.commit()
        run.snapshot("commit")

    return workload


def _set(**values: Any) -> Callable[[Any], None]:
    def apply(obj: Any) -> None:
        for k, v in values.items():
            setattr(obj, k, v)

    return apply


def replaced_badge(move: bool) -> Callable[[Run], Any]:
    async def workload(run: Run) -> None:
        s = run.session
        m1 = (await s.scalars(select(Member).where(Member.name == "m1"))).one()
        m2 = (await s.scalars(select(Member).where(Member.name == "m2"))).one()
        old = await s.scalar(select(Badge))
        await s.refresh(m1, ["badge"])
        if move:
            assert old is not None
            old.member = m2  # its unique member_id changes before the new badge's INSERT
            new = Badge(label="new", member=m1)
        else:
            new = Badge(label="new")
            m1.badge = new  # the old badge's member_id becomes NULL first
        entries = [Entry(id=700 + i, msg=f"e{i}") for i in range(40)]
        run.track(m1, m2, old, new, *entries)
        s.add_all([new, *entries])
        await s.commit()
        run.snapshot("commit")

    return workload


async def badge_for_unloaded_member(run: Run) -> None:
    s = run.session
    m2 = (await s.scalars(select(Member).where(Member.name == "m2"))).one()
    m2.name = "m2x"  # in the flush: an UPDATE
    new = Badge(label="new")

    def link(_session: Any) -> None:
        # the back reference replaces m2.badge, never loaded: the unit of work's save loads
        # the previous value (finding no row) before any INSERT, and keeps it for the flush
        new.member = m2

    await s.run_sync(link)
    badges = [Badge(label=f"b{i}") for i in range(40)]
    run.track(m2, new, *badges)
    s.add_all([new, *badges])
    await s.commit()
    run.snapshot("commit")


def tagged_articles(loaded: bool, fail: bool) -> Callable[[Run], Any]:
    async def workload(run: Run) -> None:
        s = run.session
        query = select(Topic).order_by(Topic.id)
        if loaded:
            query = query.options(selectinload(Topic.articles))
        topics = list((await s.scalars(query)).all())
        articles = [
            Article(
                title="dup" if fail and i in (3, 30) else f"a{i}",
                topics=[topics[i % 2], Topic(name=f"new{i}")],
            )
            for i in range(40)
        ]
        run.track(*topics, *articles)
        s.add_all(articles)
        await s.flush()
        run.snapshot("flush")
        await s.commit()

    return workload


async def native_part_fails_in_our_table(run: Run) -> None:
    s = run.session
    query = select(Club).options(selectinload(Club.fans)).order_by(Club.id)
    c1, c2 = (await s.scalars(query)).all()
    c2.name = "c2x"  # an UPDATE of a unique column: new clubs stay native
    fans = [Fan(name=f"f{i}") for i in range(40)]
    c1.fans.extend(fans)  # written by async_batch
    # written natively, after ours: its second fan's INSERT fails (too long)
    club = Club(name="n", fans=[Fan(name="ok"), Fan(name="x" * 20)])
    run.track(c1, c2, club, *fans, *club.fans)
    s.add(club)
    await s.flush()


async def pending_to_persistent_sees_parent(run: Run) -> None:
    s = run.session
    club = (await s.scalars(select(Club).where(Club.name == "c1"))).one()
    seen: set[Any] = set()

    def listener(session: Any, _obj: Any) -> None:
        # natively every object of the flush is committed before the first call
        seen.add((len(session.dirty), tuple(sorted(inspect(club).committed_state))))

    event.listen(s.sync_session, "pending_to_persistent", listener)
    fans = [Fan(name=f"f{i}", club=club) for i in range(40)]  # the collection is not loaded
    run.track(club, *fans)
    s.add_all(fans)
    await s.flush()
    event.remove(s.sync_session, "pending_to_persistent", listener)
    run.events.append(("seen", sorted(seen)))
    run.snapshot("flush")
    await s.commit()


async def readded_after_failed_flush(run: Run) -> None:
    s = run.session
    fans = [Fan(name=f"f{i}") for i in range(40)]
    run.track(*fans)

    def refuse(_session: Any, _obj: Any) -> None:
        raise RuntimeError("refused")

    event.listen(s.sync_session, "pending_to_persistent", refuse)
    s.add_all(fans)
    try:
        await s.flush()
    except RuntimeError:
        run.events.append(("flush failed",))
    event.remove(s.sync_session, "pending_to_persistent", refuse)
    await s.rollback()
    run.snapshot("rolled back")  # transient again, every attribute expired
    s.add_all(fans)
    try:
        await s.commit()
    except InvalidRequestError as err:  # natively: they cannot be refreshed (no row of NULLs)
        run.events.append(("commit failed", type(err).__name__))
    run.snapshot("commit failed")
    await s.rollback()


async def later_native_table_fails(run: Run) -> None:
    probes = [Probe(x=i) if i % 2 else Probe() for i in range(40)]
    readings = [Reading(v=-1 if i == 5 else i) for i in range(10)]
    run.track(*probes, *readings)
    run.session.add_all([*probes, *readings])
    await run.session.flush()  # sl_probe's INSERTs complete, sl_reading's fails


async def stale_update_after_native_inserts(run: Run) -> None:
    s = run.session
    sheet = Sheet(body="b")
    s.add(sheet)
    await s.commit()
    await s.refresh(sheet)
    table = Sheet.__table__
    await s.execute(update(table).values(rev=table.c.rev + 1))  # bumped behind the session
    sheet.body = "changed"
    probes = [Probe(x=i) if i % 2 else Probe() for i in range(40)]
    run.track(sheet, *probes)
    s.add_all(probes)
    # sl_probe's INSERTs complete, then the UPDATE matches no row: StaleDataError, no SQL
    # error -- the probes keep their prefetched ids, as natively their RETURNING ones
    await s.flush()


async def cows_of_new_farms(run: Run) -> None:
    FARM_CODES.clear()
    farms = [Farm(cows=[Cow(), Cow()]) for _ in range(20)]
    run.track(*farms, *(c for f in farms for c in f.cows))
    run.session.add_all(farms)
    await run.session.flush()
    run.snapshot("flush")
    await run.session.commit()


def lamp_moved(how: str) -> Callable[[Run], Any]:
    async def workload(run: Run) -> None:
        s = run.session
        query = select(Desk).options(selectinload(Desk.lamps), selectinload(Desk.chair))
        desk = (await s.scalars(query)).one()
        lamp, chair = desk.lamps[0], desk.chair
        if how == "removed":
            desk.lamps.remove(lamp)  # natively its row is deleted before new ones go in
        elif how == "deleted":
            await s.delete(desk)
        else:
            desk.chair = Chair(name="new")  # the row keyed by the desk is replaced
        desks = [
            Desk(name=f"n{i}", lamps=[lamp] if i == 0 and how != "replaced" else [Lamp(name="l")])
            for i in range(40)
        ]
        run.track(desk, lamp, chair, *desks)
        s.add_all(desks)
        await s.flush()
        run.snapshot("flush")
        await s.commit()

    return workload


CASES: dict[str, Callable[[Run], Any]] = {
    "many-to-many to persistent objects, back reference unloaded": tagged_articles(False, False),
    "many-to-many to persistent objects, back reference loaded": tagged_articles(True, False),
    "many-to-many to persistent objects, failing": tagged_articles(False, True),
    "update frees a partial unique value": freed(
        Slot, _set(gone=True), lambda i: Slot(v="x" if i == 0 else f"s{i}")
    ),
    "update frees an expression unique value": freed(
        Login, _set(v="other"), lambda i: Login(v="X" if i == 0 else f"l{i}")
    ),
    "update frees a database-only unique value": freed(
        Handle, _set(v="other"), lambda i: Handle(v="x" if i == 0 else f"h{i}")
    ),
    "update frees an excluded range": freed(
        Booking, _set(gone=True), lambda i: Booking(span=Range(5 + 20 * i, 15 + 20 * i))
    ),
    "one-to-one child replaced": replaced_badge(move=False),
    "one-to-one child moved": replaced_badge(move=True),
    "expunged in after_flush": expunged_in_after_flush(listener=False, rollback=False),
    "expunged in after_flush, pending_to_persistent": expunged_in_after_flush(
        listener=True, rollback=False
    ),
    "expunged in after_flush, rollback": expunged_in_after_flush(listener=False, rollback=True),
    "identity token kept": identity_token_kept,
    "unrelated table fails after a parent": unrelated_table_fails,
    "merged parent with new children": merged_parent,
    "update beside a unique column": unique_table_update,
    "row switch": row_switch,
    "history in after_flush": after_flush_history(fail=False),
    "history when after_flush raises": after_flush_history(fail=True),
    "history of keys the unit of work copies again": history_of_keys_the_unit_of_work_copies_again,
    "validated key from an updated parent": validated_key_from_updated_parent,
    "transient parents re-added": transient_parents_readded,
    "reparent under new nodes": reparent_under_new_nodes,
    "native part fails before ours": native_part_fails(Hooked),
    "native part fails after ours": native_part_fails(ZHooked),
    "native part fails in a table ours also writes": native_part_fails_in_our_table,
    "many-to-many link removed, moved to a new object": lamp_moved("removed"),
    "many-to-many links of a deleted object, one moved to a new object": lamp_moved("deleted"),
    "scalar many-to-many replaced by a new object": lamp_moved("replaced"),
    "validator on a key copied from a new parent": cows_of_new_farms,
    "pending_to_persistent sees the parent committed": pending_to_persistent_sees_parent,
    "native objects with prefetched ids, a later native table fails": later_native_table_fails,
    "native objects with prefetched ids, a later UPDATE is stale": (
        stale_update_after_native_inserts
    ),
    "re-added after a failed flush's rollback expired them": readded_after_failed_flush,
    "one-to-one value replaced before it was loaded": badge_for_unloaded_member,
    "key changed, then made transient by a rollback": rekeyed_by_a_rollback,
    "parent with new children orphaned by a replaced one-to-one": orphaned_parent(True),
    "parent with new children orphaned by a cleared one-to-one": orphaned_parent(False),
    "delete-orphan collections that only gain members": crates_filled,
    "many-to-many link to an object deleted earlier": linked_to_a_deleted_object,
    "many-to-one to an expunged object": pets_of_an_expunged_owner(expired=False),
    "many-to-one to an expunged, expired object": pets_of_an_expunged_owner(expired=True),
}
# case -> (a fallback reason it must show, whether other objects are still accelerated)
STAYS_NATIVE = {
    "update frees a partial unique value": ("UPDATE of sl_slot.gone", False),
    "update frees an expression unique value": ("UPDATE of sl_login.v", False),
    "update frees a database-only unique value": ("UPDATE of sl_handle.v", False),
    "update frees an excluded range": ("UPDATE of sl_booking.gone", False),
    "one-to-one child replaced": ("UPDATE of sl_badge.member_id", True),
    "one-to-one child moved": ("UPDATE of sl_badge.member_id", True),
    "row switch": ("primary key of an object in the session", True),
    "validated key from an updated parent": ("copies a key with set listeners", False),
    "transient parents re-added": ("primary key changed since the object was persistent", False),
    "key changed, then made transient by a rollback": ("synchronizes it again", True),
    "parent with new children orphaned by a replaced one-to-one": ("as an orphan", True),
    "parent with new children orphaned by a cleared one-to-one": ("as an orphan", False),
    "many-to-many link to an object deleted earlier": ("not in the session", True),
    "many-to-one to an expunged object": ("not in the session", True),
    "many-to-one to an expunged, expired object": ("not in the session", True),
    "reparent under new nodes": ("moves a persistent object", False),
    "many-to-many link removed, moved to a new object": ("from which this flush deletes", False),
    "many-to-many links of a deleted object, one moved to a new object": (
        "from which this flush deletes",
        False,
    ),
    "scalar many-to-many replaced by a new object": ("from which this flush deletes", True),
    "validator on a key copied from a new parent": ("validators from a new object", False),
    "re-added after a failed flush's rollback expired them": ("has expired attributes", False),
}
FAILS = {
    "many-to-many to persistent objects, failing",
    "unrelated table fails after a parent",
    "history when after_flush raises",
    "native part fails before ours",
    "native part fails after ours",
    "native part fails in a table ours also writes",
    "native objects with prefetched ids, a later native table fails",
    "native objects with prefetched ids, a later UPDATE is stale",
}


@pytest.fixture
def lifecycle_dsn(database_dsn: str) -> str:
    create_schema(database_dsn, Base.metadata)
    return database_dsn


@pytest.mark.parametrize("case", list(CASES))
def test_lifecycle_matches_native(lifecycle_dsn: str, case: str) -> None:
    native, results = asyncio.run(
        compare_modes(lifecycle_dsn, CASES[case], MODES, metadata=Base.metadata, setup=setup)
    )
    assert (native.error is not None) == (case in FAILS), native.error
    if case not in FAILS:
        reason, partly = STAYS_NATIVE.get(case, (None, False))
        assert_fast_reports(results, native_reason=reason, partly=partly, which=-1)
