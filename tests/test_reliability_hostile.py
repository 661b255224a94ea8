"""Issue 7, hostile input and isolation.

- names that need quoting everywhere (schema, tables, columns, sequences: mixed case, embedded
  double quotes, spaces, reserved words, 63-character names, injection attempts): ids come from
  the right sequence, nothing is executed that the names spell, values round-trip exactly;
- tenants: ``schema_translate_map`` with several tenant schemas in one process, and
  ``search_path`` switches on the connection: ids always from the tenant's own sequence, rows in
  the tenant's own table, and what was looked up for one schema never used for another;
- a role that may INSERT but may not use the sequence: the flush still succeeds (natively),
  with one RuntimeWarning per engine and table.
"""

from __future__ import annotations

import asyncio
import random
import uuid
import warnings
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from reliability_support import (
    STRATEGIES,
    WITH_NATIVE,
    assert_rows,
    fetch,
    fetchval,
    maker_for,
    scaled,
)
from sqlalchemy import (
    Column,
    ForeignKey,
    Identity,
    Integer,
    LargeBinary,
    MetaData,
    Sequence,
    String,
    Table,
    Text,
    select,
    text,
)
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import registry, relationship

import async_batch
from async_batch import last_flush
from async_batch.testing import PostgresServer, sqlalchemy_url

# --- names that need quoting ------------------------------------------------------------------

SCHEMA = 'My "Schema" select'
PARENT_T = ('Order "Items" of ' + "X" * 63)[:63]  # 63 characters, mixed case, quotes, spaces
CHILD_T = 'x"; DROP TABLE victim; --'
TAG_T = "select"  # a reserved word
SEQ = 'seq"; DROP TABLE victim; -- '
LONG_COL = ("Very Long Column Name " + "z" * 63)[:63]
HOSTILE_COLUMNS = ["user", "Mixed Case", 'quote"col', "back\\slash", "order", LONG_COL]


def _hostile_metadata() -> tuple[MetaData, Table, Table, Table]:
    md = MetaData()
    parent = Table(
        PARENT_T,
        md,
        Column("id", Integer, primary_key=True),  # SERIAL: PG truncates the sequence's name
        *(Column(name, Text) for name in HOSTILE_COLUMNS),
        Column('bin"data', LargeBinary),
        schema=SCHEMA,
    )
    child = Table(
        CHILD_T,
        md,
        Column("id", Integer, Sequence(SEQ, schema=SCHEMA), primary_key=True),
        Column('Parent "ID"', Integer, ForeignKey(parent.c.id), nullable=False),
        Column("from", String(200)),
        schema=SCHEMA,
    )
    tag = Table(
        TAG_T,
        md,
        Column("id", Integer, Identity(), primary_key=True),
        Column("table", Text),
    )
    return md, parent, child, tag


class HParent:
    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


class HChild:
    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


class HTag:
    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


HMETA, HPARENT, HCHILD, HTAG = _hostile_metadata()
_reg = registry(metadata=HMETA)
_reg.map_imperatively(
    HParent,
    HPARENT,
    properties={
        **{f"c{i}": HPARENT.c[name] for i, name in enumerate(HOSTILE_COLUMNS)},
        "bin": HPARENT.c['bin"data'],
        "children": relationship(HChild, back_populates="parent"),
    },
)
_reg.map_imperatively(
    HChild,
    HCHILD,
    properties={
        "parent_id": HCHILD.c['Parent "ID"'],
        "source": HCHILD.c["from"],
        "parent": relationship(HParent, back_populates="children"),
    },
)
_reg.map_imperatively(HTag, HTAG, properties={"label": HTAG.c["table"]})


def junk_text(rng: random.Random, n: int) -> str:
    """NUL-free text: quotes, backslashes, COPY/SQL specials, control characters, any plane."""
    specials = ["'", '"', "\\", "\\N", "\\.", "$1", "%s", "E'\\x41'", "\t", "\n", "\r", ";", "--"]
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            out.append(rng.choice(specials))
        elif r < 0.6:
            out.append(chr(rng.randint(1, 0x7F)))
        else:
            cp = rng.randint(0x80, 0x10FFFF)
            if 0xD800 <= cp <= 0xDFFF:
                cp = 0xFFFD
            out.append(chr(cp))
    return "".join(out)


def hostile_values(rng: random.Random) -> list[str]:
    fixed = [
        "'); DROP TABLE victim; --",
        '"; DROP TABLE victim; --',
        "\\",
        "\\\\'",
        "''",
        "\\N",
        "",
        "x" * 10_000,
    ]
    return fixed + [junk_text(rng, rng.randint(1, 60)) for _ in range(40)]


async def create_hostile(dsn: str) -> None:
    engine = create_async_engine(sqlalchemy_url(dsn))
    async with engine.begin() as conn:
        await conn.execute(text('CREATE SCHEMA "My ""Schema"" select"'))
        await conn.run_sync(HMETA.create_all)
        await conn.execute(text("CREATE TABLE victim (id int)"))
        await conn.execute(text("INSERT INTO victim VALUES (1)"))
    await engine.dispose()
    # decoys: sequences named like the real ones, but in the default schema. A lookup that
    # lost the schema, or guessed a name, would draw ids starting at 9,000,000.
    conn = await asyncpg.connect(dsn)
    try:
        real = await conn.fetchval(
            "SELECT pg_get_serial_sequence($1, 'id')",
            f'"{SCHEMA.replace(chr(34), chr(34) * 2)}"."{PARENT_T.replace(chr(34), chr(34) * 2)}"',
        )
        assert real is not None
        seqname = await conn.fetchval("SELECT relname FROM pg_class WHERE oid = $1::regclass", real)
        for name in (seqname, SEQ, f"{PARENT_T}_id_seq"[:63]):
            quoted = '"' + name.replace('"', '""') + '"'
            await conn.execute(
                f"CREATE SEQUENCE IF NOT EXISTS public.{quoted} START 9000000;"
                f"COMMENT ON SEQUENCE public.{quoted} IS 'decoy'"
            )
    finally:
        await conn.close()


@pytest.mark.parametrize("strategy", WITH_NATIVE)
async def test_hostile_names_and_values(database_dsn: str, strategy: str) -> None:
    """Every name needs quoting and some spell SQL; values are junk. Ids must be 1..n from each
    table's own sequence, the decoys untouched, ``victim`` intact, values exactly as given."""
    await create_hostile(database_dsn)
    rng = random.Random(7)
    values = hostile_values(rng)
    n = scaled(300, 3000)
    engine = create_async_engine(sqlalchemy_url(database_dsn))
    try:
        maker = maker_for(engine, strategy, expire_on_commit=False)
        expected: dict[int, tuple[Any, ...]] = {}
        parents, tags = [], []
        for _ in range(n):
            cols = {f"c{k}": rng.choice(values) for k in range(len(HOSTILE_COLUMNS))}
            blob = rng.randbytes(rng.randint(0, 64))
            p = HParent(bin=blob, **cols)
            p.children = [HChild(source=rng.choice(values)[:200]) for _ in range(2)]
            parents.append(p)
            tags.append(HTag(label=rng.choice(values)))
        async with maker() as session:
            session.add_all(parents + tags)
            await session.commit()
            report = last_flush(session)
        if strategy != "native":
            assert report is not None
            assert report.accelerated == n * 4, report.summary()
            assert {t.strategy for t in report.tables} == {strategy}, report.summary()
        for p in parents:
            expected[p.id] = (*(getattr(p, f"c{k}") for k in range(len(HOSTILE_COLUMNS))), p.bin)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(HPARENT).order_by(HPARENT.c.id))).all()
            child_rows = (await conn.execute(select(HCHILD).order_by(HCHILD.c.id))).all()
            tag_rows = (await conn.execute(select(HTAG).order_by(HTAG.c.id))).all()
    finally:
        await engine.dispose()

    assert [r[0] for r in rows] == list(range(1, n + 1))
    assert [r[0] for r in child_rows] == list(range(1, 2 * n + 1))
    assert [r[0] for r in tag_rows] == list(range(1, n + 1))
    assert {r[0]: tuple(r[1:]) for r in rows} == expected
    assert {(c.id, c.parent.id, c.source) for p in parents for c in p.children} == {
        (r[0], r[1], r[2]) for r in child_rows
    }
    assert {(t.id, t.label) for t in tags} == {(r[0], r[1]) for r in tag_rows}
    assert await fetchval(database_dsn, "SELECT count(*) FROM victim") == 1
    decoys = await fetch(
        database_dsn,
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind = 'S'"
        " AND obj_description(c.oid, 'pg_class') = 'decoy'",
    )
    assert len(decoys) == 3
    for (name,) in decoys:
        quoted = '"' + name.replace('"', '""') + '"'
        is_called = await fetchval(database_dsn, f"SELECT is_called FROM public.{quoted}")
        assert not is_called, f"decoy sequence {name!r} was used"


# --- tenants ------------------------------------------------------------------------------------

TENANTS = {"tenant_a": 1_000_000, "tenant_b": 2_000_000, "tenant_c": 3_000_000}
TENANT_META = MetaData()
TENANT_ITEM = Table(
    "item",
    TENANT_META,
    Column("id", Integer, primary_key=True),
    Column("tenant", String(20), nullable=False),
    Column("name", String(40), nullable=False),
)


class TItem:
    def __init__(self, tenant: str, name: str) -> None:
        self.tenant = tenant
        self.name = name


registry(metadata=TENANT_META).map_imperatively(TItem, TENANT_ITEM)


DIFFERENT = {
    # GENERATED ALWAYS: explicit ids need OVERRIDING SYSTEM VALUE
    "tenant_x": ("", "int GENERATED ALWAYS AS IDENTITY", 4_000_000),
    # a DEFAULT from a sequence the column does not own: no sequence for pg_get_serial_sequence
    "tenant_y": (
        "CREATE SEQUENCE tenant_y.custom_seq;",
        "int DEFAULT nextval('tenant_y.custom_seq')",
        5_000_000,
    ),
}
"""Tenants whose ``item`` differs from the others' (SERIAL) in how ids are generated."""


async def create_tenants(dsn: str, different: bool = False) -> None:
    """``item`` in each tenant schema, its sequence starting at the tenant's base; the same
    table in ``public`` as a decoy starting at 9,000,000; with ``different``, also the
    `DIFFERENT` tenants."""
    schemas = {t: ("", "serial", base) for t, base in TENANTS.items()}
    schemas["public"] = ("", "serial", 9_000_000)
    if different:
        schemas.update(DIFFERENT)
    conn = await asyncpg.connect(dsn)
    try:
        for schema, (prelude, id_ddl, base) in schemas.items():
            await conn.execute(
                f"CREATE SCHEMA IF NOT EXISTS {schema};{prelude}"
                f"CREATE TABLE {schema}.item (id {id_ddl} PRIMARY KEY,"
                " tenant varchar(20) NOT NULL, name varchar(40) NOT NULL)"
            )
            seq = await conn.fetchval(f"SELECT pg_get_serial_sequence('{schema}.item', 'id')")
            await conn.execute(f"ALTER SEQUENCE {seq or schema + '.custom_seq'} RESTART {base}")
    finally:
        await conn.close()


async def check_tenants(dsn: str, written: dict[str, int], ranges: dict[str, int]) -> None:
    for schema, count in written.items():
        table = f"{schema}.item"
        await assert_rows(dsn, table, count)
        base = ranges[schema]
        bad = await fetchval(
            dsn,
            f"SELECT count(*) FROM {table} WHERE tenant <> $1 OR id < $2 OR id >= $2 + 1000000",
            schema,
            base,
        )
        assert bad == 0, f"{bad} rows in {table} with another tenant's ids or data"
    assert await fetchval(dsn, "SELECT count(*) FROM public.item") == 0
    assert not await fetchval(dsn, "SELECT is_called FROM public.item_id_seq")


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_schema_translate_map_tenants(database_dsn: str, strategy: str) -> None:
    """Three tenants through ``execution_options(schema_translate_map=...)`` of one engine,
    flushing concurrently and in turns: each tenant's rows carry its own ids."""
    await create_tenants(database_dsn)
    base = create_async_engine(sqlalchemy_url(database_dsn), pool_size=6)
    rounds, per_flush = scaled(3, 10), scaled(200, 2000)
    try:
        makers = {
            t: maker_for(
                base.execution_options(schema_translate_map={None: t}),
                strategy,
                expire_on_commit=False,
            )
            for t in TENANTS
        }

        async def tenant_work(tenant: str) -> None:
            for r in range(rounds):
                async with makers[tenant]() as session:
                    objs = [TItem(tenant, f"{tenant}-{r}-{i}") for i in range(per_flush)]
                    session.add_all(objs)
                    await asyncio.sleep(0)
                    await session.commit()
                    report = last_flush(session)
                    assert report is not None
                    assert report.accelerated == per_flush, report.summary()
                assert all(TENANTS[tenant] <= o.id < TENANTS[tenant] + 1_000_000 for o in objs)

        await asyncio.gather(*(tenant_work(t) for t in TENANTS))
    finally:
        await base.dispose()
    await check_tenants(database_dsn, dict.fromkeys(TENANTS, rounds * per_flush), TENANTS)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_search_path_tenants(database_dsn: str, strategy: str) -> None:
    """One engine, no translate map: each session sets ``search_path`` to its tenant. The ids
    are resolved by the server at flush time, so they come from the tenant's own sequence."""
    await create_tenants(database_dsn)
    engine = create_async_engine(sqlalchemy_url(database_dsn), pool_size=2, max_overflow=0)
    rounds, per_flush = scaled(2, 6), scaled(200, 2000)
    order = [t for _ in range(rounds) for t in TENANTS]
    try:
        maker = maker_for(engine, strategy)
        for i, tenant in enumerate(order):
            async with maker() as session:
                await session.execute(text(f"SET LOCAL search_path TO {tenant}"))
                session.add_all([TItem(tenant, f"{tenant}-{i}-{k}") for k in range(per_flush)])
                await session.commit()
    finally:
        await engine.dispose()
    await check_tenants(database_dsn, dict.fromkeys(TENANTS, rounds * per_flush), TENANTS)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_search_path_tenants_whose_tables_differ(database_dsn: str, strategy: str) -> None:
    """The unqualified ``item`` is a different table in each tenant (`DIFFERENT`): SERIAL in
    ``tenant_a``, GENERATED ALWAYS in ``tenant_x``, a default from an unowned sequence in
    ``tenant_y``. What was looked up for one tenant's ``item`` must not be used for another's;
    the native flush writes all of them."""
    await create_tenants(database_dsn, different=True)
    engine = create_async_engine(sqlalchemy_url(database_dsn), pool_size=1, max_overflow=0)
    failures = []
    try:
        maker = maker_for(engine, strategy)
        for tenant in ("tenant_a", "tenant_x", "tenant_a", "tenant_y", "tenant_a"):
            async with maker() as session:
                await session.execute(text(f"SET LOCAL search_path TO {tenant}"))
                session.add_all([TItem(tenant, f"{tenant}-{k}") for k in range(100)])
                try:
                    await session.commit()
                except Exception as err:
                    failures.append(f"{tenant}: {type(err).__name__}: {str(err)[:200]}")
    finally:
        await engine.dispose()
    assert failures == []
    await check_tenants(
        database_dsn,
        {"tenant_a": 300, "tenant_x": 100, "tenant_y": 100},
        {**TENANTS, **{t: d[2] for t, d in DIFFERENT.items()}},
    )


async def test_translate_map_tenants_whose_tables_differ(database_dsn: str) -> None:
    """The same tenants through ``schema_translate_map``: looked-up facts are keyed by the
    translated name, so each tenant's own table is described by its own lookup."""
    await create_tenants(database_dsn, different=True)
    base = create_async_engine(sqlalchemy_url(database_dsn))
    try:
        for strategy in STRATEGIES:
            for tenant in ("tenant_a", "tenant_x", "tenant_y"):
                eng = base.execution_options(schema_translate_map={None: tenant})
                async with maker_for(eng, strategy)() as session:
                    session.add_all([TItem(tenant, f"{tenant}-{k}") for k in range(100)])
                    await session.commit()
                    report = last_flush(session)
                    assert report is not None
                    if tenant == "tenant_y":  # no sequence to prefetch from: native
                        assert report.native == 100, report.summary()
                    else:
                        assert report.accelerated == 100, report.summary()
    finally:
        await base.dispose()
    await check_tenants(
        database_dsn,
        {"tenant_a": 300, "tenant_x": 300, "tenant_y": 300},
        {**TENANTS, **{t: d[2] for t, d in DIFFERENT.items()}},
    )


# --- privileges ---------------------------------------------------------------------------------


@pytest.fixture
async def writer_role(pg: PostgresServer, database_dsn: str) -> AsyncIterator[str]:
    """A login role that may use the public schema and its tables, and nothing else."""
    role = f"rel_writer_{uuid.uuid4().hex[:10]}"
    await pg.aexecute(f"CREATE ROLE {role} LOGIN")
    try:
        yield role
    finally:
        conn = await asyncpg.connect(database_dsn)
        try:
            await conn.execute(f"DROP OWNED BY {role}")
        finally:
            await conn.close()
        await pg.aexecute(f"DROP ROLE {role}")


PRIV_META = MetaData()
IDENT_ITEM = Table(
    "ident_item",
    PRIV_META,
    Column("id", Integer, Identity(), primary_key=True),
    Column("name", String(40), nullable=False),
)
SERIAL_ITEM = Table(
    "serial_item",
    PRIV_META,
    Column("id", Integer, primary_key=True),
    Column("name", String(40), nullable=False),
)


class IdentItem:
    def __init__(self, name: str) -> None:
        self.name = name


class SerialItem:
    def __init__(self, name: str) -> None:
        self.name = name


_priv_reg = registry(metadata=PRIV_META)
_priv_reg.map_imperatively(IdentItem, IDENT_ITEM)
_priv_reg.map_imperatively(SerialItem, SERIAL_ITEM)


async def _priv_setup(dsn: str, role: str, grants: list[str]) -> str:
    engine = create_async_engine(sqlalchemy_url(dsn))
    async with engine.begin() as conn:
        await conn.run_sync(PRIV_META.create_all)
        for g in grants:
            await conn.execute(text(g.format(role=role)))
    await engine.dispose()
    user_dsn = dsn.replace("postgres@", f"{role}@", 1)
    assert user_dsn != dsn
    return user_dsn


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_role_without_sequence_privileges(
    database_dsn: str, writer_role: str, strategy: str
) -> None:
    """INSERT on an IDENTITY table needs no privilege on its sequence, but ``nextval`` does:
    the flush falls back to native and succeeds, with exactly one RuntimeWarning per engine
    and table however many flushes."""
    user_dsn = await _priv_setup(
        database_dsn, writer_role, ["GRANT SELECT, INSERT ON ident_item TO {role}"]
    )
    async_batch.clear_catalog_cache()
    engine = create_async_engine(sqlalchemy_url(user_dsn))
    try:
        maker = maker_for(engine, strategy)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for r in range(3):
                async with maker() as session:
                    session.add_all([IdentItem(f"{r}-{i}") for i in range(500)])
                    await session.commit()
                    report = last_flush(session)
                    assert report is not None
                    assert report.native == 500, report.summary()
                    assert report.accelerated == 0, report.summary()
                    assert any("privilege" in f.reason for f in report.fallbacks), report
        ours = [w for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(ours) == 1, [str(w.message) for w in ours]
        assert "ident_item" in str(ours[0].message)
    finally:
        await engine.dispose()
    await assert_rows(database_dsn, "ident_item", 1500)


async def test_role_with_usage_only_is_accelerated(database_dsn: str, writer_role: str) -> None:
    """``nextval`` needs USAGE *or* UPDATE on the sequence (PostgreSQL docs, "Sequence
    Manipulation Functions"). The usual grant is ``GRANT USAGE ON SEQUENCE``: that must be
    enough to batch, with no warning."""
    user_dsn = await _priv_setup(
        database_dsn,
        writer_role,
        [
            "GRANT SELECT, INSERT ON serial_item TO {role}",
            "GRANT USAGE ON SEQUENCE serial_item_id_seq TO {role}",
        ],
    )
    async_batch.clear_catalog_cache()
    engine = create_async_engine(sqlalchemy_url(user_dsn))
    try:
        maker = maker_for(engine, "copy")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with maker() as session:
                session.add_all([SerialItem(f"n{i}") for i in range(500)])
                await session.commit()
                report = last_flush(session)
        assert [str(w.message) for w in caught if w.category is RuntimeWarning] == []
        assert report is not None
        assert report.accelerated == 500, report.summary()
    finally:
        await engine.dispose()
    await assert_rows(database_dsn, "serial_item", 500)
