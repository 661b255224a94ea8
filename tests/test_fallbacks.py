"""What stays native, with which reason -- and that it still matches a native flush exactly."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import ForeignKey, Identity, MetaData, String, event, func, literal, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship
from support import assert_same, flush_and_commit, run_workload

from async_batch import enable_async_batching, last_flush, reserve_ids
from async_batch.testing import WireProxy


class Base(DeclarativeBase):
    metadata = MetaData()


class Plain(Base):
    __tablename__ = "plain"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))


class Hooked(Base):
    __tablename__ = "hooked"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    stamp: Mapped[str | None]


class Ticket(Base):
    __tablename__ = "ticket"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(30), unique=True)
    status: Mapped[str | None] = mapped_column(String(10), server_default="new")


@event.listens_for(Hooked, "before_insert")
def _stamp(mapper: Any, connection: Any, target: Hooked) -> None:
    target.stamp = f"hooked-{target.name}"


class Versioned(Base):
    __tablename__ = "versioned"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    version: Mapped[int] = mapped_column()
    __mapper_args__ = {"version_id_col": version}


def _context_default(context: Any) -> str:
    return "ctx-" + str(context.get_current_parameters()["name"])


class ContextDefault(Base):
    __tablename__ = "context_default"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    derived: Mapped[str] = mapped_column(default=_context_default)


class SqlDefault(Base):
    __tablename__ = "sql_default"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    upper_name: Mapped[str] = mapped_column(default=func.upper("x"))


class WithExpression(Base):
    __tablename__ = "with_expression"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    name_length = column_property(func.length(text("name")))


class UuidKey(Base):
    __tablename__ = "uuid_key"
    id: Mapped[str] = mapped_column(
        primary_key=True, server_default=text("gen_random_uuid()::text")
    )
    name: Mapped[str]


class Owner(Base):
    __tablename__ = "owner"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    pets: Mapped[list[Pet]] = relationship(back_populates="owner")


class Pet(Base):
    __tablename__ = "pet"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("owner.id"))
    name: Mapped[str]
    owner: Mapped[Owner | None] = relationship(back_populates="pets")


class Righty(Base):
    __tablename__ = "righty"
    id: Mapped[int] = mapped_column(primary_key=True)
    # the cycle's other half (no relationship: natively left NULL)
    lefty_id: Mapped[int | None] = mapped_column(ForeignKey("lefty.id"))
    name: Mapped[str]


class Lefty(Base):
    __tablename__ = "lefty"
    id: Mapped[int] = mapped_column(primary_key=True)
    righty_id: Mapped[int | None] = mapped_column(
        ForeignKey("righty.id", use_alter=True, name="lefty_righty")
    )
    righty: Mapped[Righty | None] = relationship(foreign_keys=[righty_id])


class Cog(Base):
    """With ``Spindle``, a cycle of mappers: a ``Gear`` (a ``Cog`` of one table) waits for
    its spindle, which waits for its cog. The unit of work saves them object by object."""

    __tablename__ = "cog"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    spindle_id: Mapped[int | None] = mapped_column(ForeignKey("spindle.id"))
    __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "cog"}


class Gear(Cog):
    # a Python default Cog does not map: Cog's and Gear's new objects stay native
    teeth: Mapped[int | None] = mapped_column(default=lambda: 12)
    __mapper_args__ = {"polymorphic_identity": "gear"}


class Spindle(Base):
    __tablename__ = "spindle"
    id: Mapped[int] = mapped_column(primary_key=True)
    cog_id: Mapped[int | None] = mapped_column(
        ForeignKey("cog.id", use_alter=True, name="spindle_cog")
    )
    cog: Mapped[Cog | None] = relationship(foreign_keys=[cog_id])
    gears: Mapped[list[Gear]] = relationship(foreign_keys=[Cog.spindle_id])


class Stamped(Base):
    """A GENERATED ALWAYS identity without RETURNING: natively SQLAlchemy fetches the next
    value first and sends it, which PostgreSQL refuses."""

    __tablename__ = "stamped"
    id: Mapped[int] = mapped_column(Identity(always=True), primary_key=True)
    name: Mapped[str]
    __table_args__ = {"implicit_returning": False}


class Ledger(Base):
    """An identity column in a composite key without RETURNING: natively it is not fetched
    at all (not the table's autoincrement column), the object keeps no id."""

    __tablename__ = "ledger"
    tenant: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(Identity(), primary_key=True)
    name: Mapped[str]
    __table_args__ = {"implicit_returning": False}


class Dock(Base):
    __tablename__ = "dock"
    __mapper_args__ = {"eager_defaults": True}  # stays native
    id: Mapped[int] = mapped_column(primary_key=True)
    boats: Mapped[list[Boat]] = relationship(back_populates="dock")


class Boat(Base):
    """A foreign key whose server default is the key of a row the native part may write in
    the same flush (natively first: the relationship orders the mappers)."""

    __tablename__ = "boat"
    id: Mapped[int] = mapped_column(primary_key=True)
    dock_id: Mapped[int | None] = mapped_column(ForeignKey("dock.id"), server_default=text("1"))
    dock: Mapped[Dock | None] = relationship(back_populates="boats")


@pytest.fixture
async def fb_engine(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    return engine


def _objects(kind: str) -> list[Any]:
    makers: dict[str, Callable[[], list[Any]]] = {
        "hooked": lambda: [Hooked(name=f"h{i}") for i in range(5)],
        "versioned": lambda: [Versioned(name=f"v{i}") for i in range(5)],
        "context_default": lambda: [ContextDefault(name=f"c{i}") for i in range(5)],
        "sql_default": lambda: [SqlDefault(name=f"s{i}") for i in range(5)],
        "expression_property": lambda: [WithExpression(name=f"e{i}") for i in range(5)],
        "uuid_key": lambda: [UuidKey(name=f"u{i}") for i in range(5)],
        "sql_value": lambda: [Plain(name="p0"), Plain(name=literal("p1"))],
        "table_cycle": lambda: [Lefty(righty=Righty(name=f"r{i}")) for i in range(5)],
    }
    return makers[kind]()


REASONS = {
    "hooked": "before_insert",
    "versioned": "version_id_col",
    "context_default": "context-sensitive default",
    "sql_default": "SQL-expression default",
    "expression_property": "read-only",
    "uuid_key": "primary key is generated by the server",
    "sql_value": "SQL expression",
    # a use_alter key closing a cycle of tables
    "table_cycle": "foreign keys form a cycle between tables",
}


@pytest.mark.parametrize("kind", list(REASONS))
async def test_fallback_reason_and_identical_result(fb_engine: AsyncEngine, kind: str) -> None:
    async def workload(run: Any) -> None:
        objs = _objects(kind)
        run.track(*objs)
        run.session.add_all(objs)
        await run.session.flush()
        if kind != "uuid_key":  # random keys: compare the database, not the session
            run.snapshot("flush")
        await run.session.commit()

    native = await run_workload(fb_engine, workload, batching=None, metadata=Base.metadata)
    batched = await run_workload(
        fb_engine, workload, batching={"small_flush": 0}, metadata=Base.metadata
    )
    if kind == "uuid_key":
        assert sorted(r[1:] for r in batched.db["uuid_key"]) == sorted(
            r[1:] for r in native.db["uuid_key"]
        )
    else:
        assert_same(native, batched, kind)
    report = batched.reports[0] if batched.reports else None
    maker = async_sessionmaker(fb_engine)
    enable_async_batching(maker, small_flush=0)
    async with maker() as session:
        session.add_all(_objects(kind))
        await session.flush()
        report = last_flush(session)
        await session.rollback()
    assert report is not None
    # only the object holding a SQL expression stays native; its plain sibling is batched
    assert report.accelerated == (1 if kind == "sql_value" else 0), report.summary()
    assert any(REASONS[kind] in f.reason for f in report.fallbacks), report.summary()


async def test_hooked_mapper_still_gets_prefetched_ids_when_worth_it(
    fb_engine: AsyncEngine, proxy: WireProxy
) -> None:
    """A before_insert hook keeps the mapper native, but its ids are still prefetched when a
    round trip is spent anyway: the rows then go in one executemany."""
    maker = async_sessionmaker(fb_engine)
    enable_async_batching(maker, prefetch="always")
    async with maker() as session:
        session.add_all([Hooked(name=f"h{i}") for i in range(50)])
        await session.commit()
        report = last_flush(session)
    assert report is not None
    assert report.prefetched_ids == 0  # a hook may assign ids itself: never prefetched
    async with fb_engine.connect() as conn:
        stamps = (await conn.execute(select(Hooked.stamp).order_by(Hooked.id))).scalars().all()
    assert stamps[:2] == ["hooked-h0", "hooked-h1"]


@pytest.mark.parametrize("strategy", ["auto", "executemany"])
async def test_cycle_of_mappers_numbered_by_the_unit_of_work(
    fb_engine: AsyncEngine, strategy: str
) -> None:
    """Objects of a cycle of mappers stay native and get no prefetched ids (the unit of work
    inserts them in the order of its per-object sort, not in add order), while other new
    objects of the flush are batched."""

    async def workload(run: Any) -> None:
        gear, cog, spindle = Gear(), Cog(), Spindle()
        spindle.gears.append(gear)  # added first, inserted after its spindle
        plains = [Plain(name=f"p{i}") for i in range(3)]
        objs = [gear, cog, spindle, *plains]
        await flush_and_commit(run, objs, objs)

    native = await run_workload(fb_engine, workload, batching=None, metadata=Base.metadata)
    batched = await run_workload(
        fb_engine,
        workload,
        batching={"small_flush": 0, "strategy": strategy},
        metadata=Base.metadata,
    )
    assert_same(native, batched, strategy)
    report = batched.reports[0]
    assert report is not None
    assert report.accelerated == 3, report.summary()


@pytest.mark.parametrize("kind", ["always", "composite"])
async def test_identity_key_the_native_flush_does_not_fetch(
    fb_engine: AsyncEngine, kind: str
) -> None:
    """Without RETURNING the unit of work fetches an identity key only where it is the
    table's autoincrement column, and sends what it fetched: those objects stay native, so a
    GENERATED ALWAYS identity fails and a composite key's identity stays unknown, as
    natively."""

    async def workload(run: Any) -> None:
        objs: list[Any] = (
            [Stamped(name=f"s{i}") for i in range(3)]
            if kind == "always"
            else [Ledger(tenant=7, name=f"l{i}") for i in range(3)]
        )
        objs += [Plain(name=f"p{i}") for i in range(3)]
        run.track(*objs)
        run.session.add_all(objs)
        await run.session.flush()
        run.snapshot("flush")

    with warnings.catch_warnings():
        # the composite key's identity is unknown: SQLAlchemy warns of a NULL in it
        warnings.simplefilter("ignore")
        native = await run_workload(fb_engine, workload, batching=None, metadata=Base.metadata)
        for options in ({}, {"small_flush": 0}, {"small_flush": 0, "strategy": "executemany"}):
            batched = await run_workload(
                fb_engine, workload, batching=options, metadata=Base.metadata
            )
            assert_same(native, batched, str(options))
    if kind == "always":
        assert native.error == "ProgrammingError", native.error
        report = batched.reports[-1] if batched.reports else None
        assert report is not None
    else:
        assert native.error is None, native.error
        report = batched.reports[0]
        assert report is not None
        assert report.accelerated == 3, report.summary()
    assert any("RETURNING" in f.reason for f in report.fallbacks), report.summary()


async def test_foreign_key_server_default_to_a_native_row(fb_engine: AsyncEngine) -> None:
    """New objects leaving a foreign key to its server default stay native when the
    referenced table gets new rows from the unit of work: the default may name one of them,
    which natively is inserted first."""

    async def workload(run: Any) -> None:
        objs = [Dock(), *(Boat() for _ in range(40))]
        await flush_and_commit(run, objs, objs)

    native = await run_workload(fb_engine, workload, batching=None, metadata=Base.metadata)
    assert native.error is None, native.error
    for options in ({}, {"small_flush": 0, "strategy": "copy"}):
        batched = await run_workload(fb_engine, workload, batching=options, metadata=Base.metadata)
        assert_same(native, batched, str(options))
        report = batched.reports[0]
        assert report is not None
        assert any("left to its server default" in f.reason for f in report.fallbacks), (
            report.summary()
        )


CONNECTION_MODES = {
    # each of the unit of work's INSERTs commits on its own, so what a failing flush leaves
    # depends on how it splits the rows (here: runs of equal key sets, 39 of 40 rows stay)
    "autocommit": (
        {"isolation_level": "AUTOCOMMIT"},
        "the connection is in AUTOCOMMIT mode (each statement commits)",
    ),
    # the driver refuses an executemany on a server-side cursor: rows with prefetched ids
    "stream_results": (
        {"stream_results": True},
        "the connection streams results (stream_results / yield_per)",
    ),
    "yield_per": ({"yield_per": 5}, "the connection streams results (stream_results / yield_per)"),
}


@pytest.mark.parametrize(
    "options",
    [
        {"small_flush": 0},
        {"strategy": "executemany", "small_flush": 0},
        {"fast_path": False},
        {},
    ],
)
@pytest.mark.parametrize("mode", list(CONNECTION_MODES))
async def test_connection_mode_keeps_the_flush_native(
    fb_engine: AsyncEngine, mode: str, options: dict[str, Any]
) -> None:
    """Connection execution options under which the native flush's own statement split
    matters: the whole flush is native, ids and order untouched."""
    execution_options, reason = CONNECTION_MODES[mode]
    fail = mode == "autocommit"

    async def workload(run: Any) -> None:
        await run.session.connection(execution_options=execution_options)
        first = [Plain(name=f"p{i}") for i in range(40)]
        run.session.add_all(first)
        await run.session.flush()
        run.snapshot("first flush")
        objs = [Ticket(code=f"t{i}", **({"status": "x"} if i % 2 else {})) for i in range(40)]
        if fail:
            objs[-1].code = "t3"
        run.track(*first, *objs)
        run.session.add_all(objs)
        await run.session.flush()
        run.snapshot("second flush")
        await run.session.commit()

    native = await run_workload(fb_engine, workload, batching=None, metadata=Base.metadata)
    batched = await run_workload(fb_engine, workload, batching=options, metadata=Base.metadata)
    assert native.error == ("IntegrityError" if fail else None)
    assert len(native.db["ticket"]) == (39 if fail else 40)
    assert_same(native, batched, str(options))
    report = batched.reports[0]
    assert report is not None
    assert report.accelerated == 0
    assert [f.reason for f in report.fallbacks] == [reason], report.summary()


async def test_subset_flush_stays_native(fb_engine: AsyncEngine) -> None:
    maker = async_sessionmaker(fb_engine)
    enable_async_batching(maker)
    async with maker() as session:
        a, b = Plain(name="a"), Plain(name="b")
        session.add_all([a, b])
        with warnings.catch_warnings():  # flush(objects) is deprecated in SQLAlchemy 2.1
            warnings.simplefilter("ignore")
            await session.run_sync(lambda s: s.flush([a]))
        assert last_flush(session) is None
        await session.commit()
        assert last_flush(session) is not None
    async with fb_engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(Plain)) == 2


async def test_reserve_ids_one_round_trip(fb_engine: AsyncEngine, proxy: WireProxy) -> None:
    maker = async_sessionmaker(fb_engine)
    enable_async_batching(maker)
    async with maker() as session:
        # first use: BEGIN, catalog lookups and statement preparation (cached afterwards)
        await reserve_ids(session, [Owner(name="warm"), Pet(name="warm")])
        owners = [Owner(name=f"o{i}") for i in range(3)]
        pets = [Pet(name=f"p{i}") for i in range(4)]
        with proxy.count() as window:
            await reserve_ids(session, [*owners, *pets])
        assert window.round_trips == 1
        assert [o.id for o in owners] == [2, 3, 4]
        assert [p.id for p in pets] == [2, 3, 4, 5]
        pets[0].owner_id = owners[2].id  # client-side wiring with the reserved ids
        session.add_all([*owners, *pets])
        await session.commit()
    async with fb_engine.connect() as conn:
        assert await conn.scalar(select(Pet.owner_id).where(Pet.id == 2)) == 4
        assert await conn.scalar(select(func.count()).select_from(Pet)) == 4


async def test_reserve_ids_rejects_non_sequence_keys(fb_engine: AsyncEngine) -> None:
    async with AsyncSession(fb_engine) as session:
        with pytest.raises(ValueError, match="UuidKey"):
            await reserve_ids(session, [UuidKey(name="x")])


async def test_report_and_debug_log(
    fb_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    maker = async_sessionmaker(fb_engine)
    enable_async_batching(maker, small_flush=0)
    with caplog.at_level(logging.DEBUG, logger="async_batch"):
        async with maker() as session:
            session.add_all(
                [Owner(name="o", pets=[Pet(name="p1"), Pet(name="p2")]), Hooked(name="h")]
            )
            await session.commit()
            report = last_flush(session)
    assert report is not None
    assert (report.accelerated, report.native) == (3, 1)
    assert {t.table: t.rows for t in report.tables} == {"owner": 1, "pet": 2}
    assert [f.what for f in report.fallbacks] == ["Hooked"]
    assert "accelerated=3 native=1" in report.summary()
    assert any("flush report" in r.getMessage() for r in caplog.records)
    with pytest.raises(TypeError, match="AsyncSession or Session"):
        last_flush(fb_engine)


async def test_bad_options_are_rejected(fb_engine: AsyncEngine) -> None:
    maker = async_sessionmaker(fb_engine)
    with pytest.raises(ValueError, match="strategy='bulk'"):
        enable_async_batching(maker, strategy="bulk")
    with pytest.raises(TypeError):
        enable_async_batching(maker, no_such_option=True)
