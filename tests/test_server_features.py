"""What the server or a type does with an INSERT beyond storing the row, native vs batched.

Triggers (which may rewrite or skip rows, or count statements; a partition's own triggers
too) and rules keep a table's new objects native, and so do values given for a GENERATED
ALWAYS identity column (natively refused) and text a column's type is parsed from only by the
server; a column mapped as another type than the database's (natively every value is
cast to the mapped type) keeps them native; row-level security rules COPY out; a failing bind
processor or column default raises ``StatementError``, and a value COPY cannot encode raises
``DBAPIError``, as natively.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest
from sqlalchemy import (
    DDL,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Integer,
    MetaData,
    Sequence,
    String,
    event,
    literal,
    text,
)
from sqlalchemy.dialects.postgresql import INT4MULTIRANGE, Range
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, UserDefinedType
from support import Run, compare_modes, create_schema
from test_property import MODES

from async_batch import clear_catalog_cache, enable_async_batching, last_flush
from async_batch.testing import sqlalchemy_url


class Base(DeclarativeBase):
    metadata = MetaData()


class Stamped(Base):
    """A BEFORE INSERT trigger rewrites the key: natively RETURNING brings the real one."""

    __tablename__ = "sf_stamped"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    note: Mapped[str | None] = mapped_column(server_default="n")


class Counted(Base):
    """A statement-level trigger counts INSERT statements and their rows."""

    __tablename__ = "sf_counted"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Audit(Base):
    __tablename__ = "sf_audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    note: Mapped[str]


class Ruled(Base):
    """An ON INSERT rule also writes an audit row (COPY would not run it)."""

    __tablename__ = "sf_ruled"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Secured(Base):
    """Row-level security: COPY FROM is refused for the roles it applies to."""

    __tablename__ = "sf_secured"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Picky(TypeDecorator[str]):
    impl = String(20)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value == "bad":
            raise ValueError("bad value")
        return value


class Typed(Base):
    __tablename__ = "sf_typed"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(Picky())
    day: Mapped[Any] = mapped_column(Date, nullable=True)


class Moment(Base):
    """Mapped as a naive timestamp over a timestamptz column (the table is created by DDL):
    natively the value is cast to ``timestamp`` and converted with the session's TimeZone."""

    __tablename__ = "sf_moment"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime.datetime] = mapped_column(DateTime())
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("sf_typed.id"))


class Parted(Base):
    """Partitioned; its partition has a BEFORE INSERT trigger rewriting the key."""

    __tablename__ = "sf_parted"
    __table_args__ = {"postgresql_partition_by": "RANGE (id)"}
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class AlwaysKey(Base):
    __tablename__ = "sf_always_key"
    id: Mapped[int] = mapped_column(Identity(always=True), primary_key=True)
    name: Mapped[str]


class AlwaysNumbered(Base):
    __tablename__ = "sf_always_numbered"
    __mapper_args__ = {"eager_defaults": False}
    id: Mapped[int] = mapped_column(primary_key=True)
    seqno: Mapped[int] = mapped_column(Integer, Identity(always=True))


class AlwaysDefaulted(Base):
    """A Python default on a GENERATED ALWAYS column: natively every INSERT is refused."""

    __tablename__ = "sf_always_defaulted"
    id: Mapped[int] = mapped_column(primary_key=True)
    seqno: Mapped[int] = mapped_column(Integer, Identity(always=True), insert_default=7)


code_seq = Sequence("sf_code_seq", metadata=Base.metadata)


class Coded(Base):
    """Columns other than the key numbered by the database (an identity, a ``nextval``
    server default): natively in insert order across all of the flush's rows."""

    __tablename__ = "sf_coded"
    __mapper_args__ = {"eager_defaults": False}
    id: Mapped[int] = mapped_column(primary_key=True)
    ordinal: Mapped[int] = mapped_column(Integer, Identity())
    code: Mapped[str] = mapped_column(
        String(20), server_default=text("'c' || nextval('sf_code_seq')")
    )
    name: Mapped[str]


class Late(Base):
    """Gets a trigger after a first batched flush (DDL in a running process)."""

    __tablename__ = "sf_late"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Spans(Base):
    """Multirange values are lists: unnest would take a list of them as one 2-D array."""

    __tablename__ = "sf_spans"
    id: Mapped[int] = mapped_column(primary_key=True)
    spans: Mapped[list[Range[int]]] = mapped_column(INT4MULTIRANGE)


class Token(Base):
    """Single-table inheritance whose subclass adds a server-default column: the unit of work
    builds the table's INSERT with the base mapper, whose RETURNING does not fetch it (it is
    expired after the flush)."""

    __tablename__ = "sf_token"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    label: Mapped[str | None] = mapped_column(server_default="l")
    __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "token"}


class ShadedToken(Token):
    shade: Mapped[str | None] = mapped_column(String(10), server_default="grey")
    __mapper_args__ = {"polymorphic_identity": "shaded"}


class Tile(Base):
    """As ``Token``, but the base mapper has no server default of its own: natively the
    INSERT's ``return_defaults()`` then has no columns, which returns every server default
    of the table, the subclass's included."""

    __tablename__ = "sf_tile"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "tile"}


class SquareTile(Tile):
    side: Mapped[int | None] = mapped_column(server_default=text("1"))
    __mapper_args__ = {"polymorphic_identity": "square"}


class PairType(UserDefinedType[Any]):
    """A composite type (bind cast rendered): unnest would expand its fields."""

    cache_ok = True
    render_bind_cast = True

    def get_col_spec(self, **kw: Any) -> str:
        return "sf_pair"


class Paired(Base):
    __tablename__ = "sf_paired"
    id: Mapped[int] = mapped_column(primary_key=True)
    pair: Mapped[Any] = mapped_column(PairType())


class PointText(UserDefinedType[Any]):
    """No bind cast: natively the server parses the text; asyncpg's point encoder would not."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "point"


class Located(Base):
    __tablename__ = "sf_located"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[Any] = mapped_column(PointText())


event.listen(Base.metadata, "before_create", DDL("CREATE TYPE sf_pair AS (x integer, y text)"))
event.listen(Base.metadata, "after_drop", DDL("DROP TYPE IF EXISTS sf_pair"))

for ddl in (
    "CREATE TABLE sf_parted_a PARTITION OF sf_parted FOR VALUES FROM (1) TO (1000000)",
    "CREATE TABLE sf_parted_b PARTITION OF sf_parted FOR VALUES FROM (1000000) TO (2000000)",
    "CREATE FUNCTION sf_part_shift() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN NEW.id := NEW.id + 1000; RETURN NEW; END $$",
    "CREATE TRIGGER sf_part_shift BEFORE INSERT ON sf_parted_a FOR EACH ROW "
    "EXECUTE FUNCTION sf_part_shift()",
    "CREATE FUNCTION sf_shift() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN NEW.id := NEW.id + 1000; RETURN NEW; END $$",
    "CREATE TRIGGER sf_shift BEFORE INSERT ON sf_stamped FOR EACH ROW EXECUTE FUNCTION sf_shift()",
    "CREATE FUNCTION sf_count() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "INSERT INTO sf_audit (note) SELECT 'rows ' || count(*) FROM new_rows; RETURN NULL; END $$",
    "CREATE TRIGGER sf_count AFTER INSERT ON sf_counted REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION sf_count()",
    "CREATE RULE sf_rule AS ON INSERT TO sf_ruled DO ALSO "
    "INSERT INTO sf_audit (note) VALUES ('rule ' || NEW.name)",
    "ALTER TABLE sf_secured ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY sf_all ON sf_secured USING (true) WITH CHECK (true)",
    "ALTER TABLE sf_moment ALTER COLUMN at TYPE timestamptz",
):
    event.listen(Base.metadata, "after_create", DDL(ddl))


@pytest.fixture
def features_dsn(database_dsn: str) -> str:
    create_schema(database_dsn, Base.metadata)
    return database_dsn


def adding(build: Any) -> Any:
    async def workload(run: Run) -> None:
        s = run.session
        await s.execute(DDL("SET TIME ZONE 'America/New_York'"))
        objs = build()
        run.track(*objs)
        s.add_all(objs)
        await s.flush()
        run.snapshot("flush")
        await s.commit()
        run.snapshot("commit")

    return workload


CASES: dict[str, tuple[Any, str | None]] = {
    "trigger_rewrites_key": (
        lambda: [Stamped(name=f"s{i}") for i in range(40)],
        "table sf_stamped has INSERT triggers",
    ),
    # mixed key sets: natively regrouped with prefetched ids, which the trigger would rewrite
    "trigger_mixed_keys": (
        lambda: [Stamped(name=f"s{i}", **({"note": "x"} if i % 2 else {})) for i in range(40)],
        "table sf_stamped has INSERT triggers",
    ),
    "statement_trigger": (
        lambda: [Counted(name=f"c{i}") for i in range(5)],
        "table sf_counted has INSERT triggers",
    ),
    "rule": (lambda: [Ruled(name=f"r{i}") for i in range(40)], "table sf_ruled has rules"),
    "row_security": (lambda: [Secured(name=f"s{i}") for i in range(40)], None),
    "mapped_type_differs": (
        lambda: [Moment(at=datetime.datetime(2020, 6, 1, 12, i)) for i in range(40)],
        "column sf_moment.at is timestamp with time zone in the database, and a native "
        "INSERT casts its values to TIMESTAMP WITHOUT TIME ZONE first",
    ),
    "partition_trigger": (
        lambda: [Parted(name=f"p{i}") for i in range(40)],
        "table sf_parted has INSERT triggers",
    ),
    "always_identity_key_given": (
        lambda: [AlwaysKey(name=f"a{i}", **({"id": 5000} if i == 5 else {})) for i in range(40)],
        None,  # natively refused: the flush fails (no report), as batched
    ),
    "always_identity_column_given": (
        lambda: [AlwaysNumbered(seqno=100 + i) for i in range(40)],
        None,  # natively refused: the flush fails (no report), as batched
    ),
    "always_identity_default_given": (lambda: [AlwaysDefaulted() for _ in range(40)], None),
    "always_identity_key": (lambda: [AlwaysKey(name=f"a{i}") for i in range(40)], None),
    "multirange": (
        lambda: [Spans(spans=[Range(1, 3), Range(10, 20 + i)]) for i in range(40)],
        None,
    ),
    "composite": (lambda: [Paired(pair=(i, f"y{i}")) for i in range(40)], None),
    "text_parsed_by_the_server": (
        lambda: [Located(at=f"({i},{i + 1})") for i in range(40)],
        "column sf_located.at holds a str",
    ),
    "single_table_subclass_server_default": (
        lambda: [ShadedToken() if i % 3 else Token() for i in range(40)],
        None,
    ),
    # one object written natively (a SQL expression): natively numbered first, in add order,
    # so all stay native (the report gives the mapper's first reason)
    "numbered_columns_split": (
        lambda: [Coded(name=literal("first")), *(Coded(name=f"n{i}") for i in range(40))],
        "an attribute is set to a SQL expression",
    ),
    "single_table_subclass_server_default_only": (
        lambda: [SquareTile() if i % 3 else Tile() for i in range(40)],
        None,
    ),
    "bind_processor_raises": (
        lambda: [Typed(label="ok" if i != 20 else "bad") for i in range(40)],
        None,
    ),
    "value_copy_cannot_encode": (
        lambda: [Typed(label="x", day="2020-01-01" if i == 20 else None) for i in range(40)],
        None,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_server_feature_matches_native(features_dsn: str, case: str) -> None:
    build, reason = CASES[case]
    native, results = asyncio.run(
        compare_modes(
            features_dsn,
            adding(build),
            MODES,
            metadata=Base.metadata,
            sequences=["sf_audit_id_seq", "sf_code_seq"],
        )
    )
    for label, options, other in results:
        report = other.reports[0] if other.reports else None
        if reason is not None and options.get("small_flush") == 0:
            assert report is not None, label
            assert not report.accelerated, (label, report.summary())
            assert any(reason in f.reason for f in report.fallbacks), report.summary()
        if case == "row_security" and report is not None and options.get("small_flush") == 0:
            assert report.accelerated, report.summary()
            assert all(t.strategy != "copy" for t in report.tables), report.summary()
    if case.startswith("always_identity") and case.endswith("_given"):
        assert native.error == "ProgrammingError"  # cannot insert a non-DEFAULT value
    elif case in ("always_identity_key", "multirange", "composite"):
        assert native.error is None
        accelerated = [o.reports[0] for lbl, opt, o in results if opt.get("small_flush") == 0]
        assert accelerated, case
        assert all(r is not None and r.accelerated == 40 for r in accelerated), case
    if case in ("bind_processor_raises",):
        assert native.error == "StatementError"
    if case == "value_copy_cannot_encode":
        assert native.error == "DBAPIError"


def test_trigger_created_later_is_seen_after_clear_catalog_cache(features_dsn: str) -> None:
    """Catalog facts are cached per engine: a trigger created after a first flush is seen
    once ``clear_catalog_cache()`` is called (until then that table is still written by
    async_batch)."""

    async def scenario() -> list[tuple[int, int]]:
        engine = create_async_engine(sqlalchemy_url(features_dsn))
        maker = async_sessionmaker(engine)
        enable_async_batching(maker, small_flush=0)
        seen = []
        try:
            for step in range(3):
                if step == 1:
                    async with engine.begin() as conn:
                        await conn.execute(
                            text(
                                "CREATE OR REPLACE TRIGGER sf_late_shift BEFORE INSERT ON sf_late "
                                "FOR EACH ROW EXECUTE FUNCTION sf_shift()"
                            )
                        )
                if step == 2:
                    clear_catalog_cache()
                async with maker() as session:
                    session.add_all([Late(name=f"l{i}") for i in range(10)])
                    await session.commit()
                    report = last_flush(session)
                    assert report is not None
                    seen.append((report.accelerated, report.native))
        finally:
            async with engine.begin() as conn:
                await conn.execute(text("DROP TRIGGER IF EXISTS sf_late_shift ON sf_late"))
            await engine.dispose()
            clear_catalog_cache()
        return seen

    assert asyncio.run(scenario()) == [(10, 0), (10, 0), (0, 10)]
