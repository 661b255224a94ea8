"""Issue 7, PgBouncer: transaction pooling with asyncpg's default statement cache.

PgBouncer >= 1.21 with ``max_prepared_statements`` > 0 tracks protocol-level prepared statements
per client and prepares them on whichever server connection the client's transaction lands on,
so neither asyncpg's statement cache nor SQLAlchemy's needs turning off. The settings used
(`reliability_support.PGBOUNCER_SETTINGS`): ``pool_mode = transaction``,
``max_prepared_statements = 200``, ``default_pool_size = 4`` (fewer server connections than
client sessions, so transactions really move between server connections).

Debian 12 ships PgBouncer 1.18, which cannot do this: these tests skip, saying so, unless a
PgBouncer >= 1.21 is found (``$ASYNC_BATCH_PGBOUNCER``, ``build/pgbouncer/pgbouncer``, PATH).
``nox -s pgbouncer`` builds one from Debian's source package and runs this file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from reliability_support import (
    ProcBase,
    ProcChild,
    ProcParent,
    assert_rows,
    fetchval,
    find_pgbouncer,
    maker_for,
    running_pgbouncer,
    scaled,
)
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from async_batch import last_flush
from async_batch.testing import PostgresServer, sqlalchemy_url

PGBOUNCER, WHY_NOT = find_pgbouncer()
pytestmark = pytest.mark.skipif(PGBOUNCER is None, reason=WHY_NOT)


async def _tables(dsn: str) -> None:
    engine = create_async_engine(sqlalchemy_url(dsn))
    async with engine.begin() as conn:
        await conn.run_sync(ProcBase.metadata.create_all)
    await engine.dispose()


@pytest.fixture
async def bouncer(pg: PostgresServer, database_dsn: str) -> AsyncIterator[str]:
    """A DSN of the test database through a fresh PgBouncer (transaction pooling)."""
    assert PGBOUNCER is not None
    await _tables(database_dsn)
    database = urlsplit(database_dsn).path.lstrip("/")
    async with running_pgbouncer(PGBOUNCER, pg.host, pg.port, pg.user, database) as dsn:
        yield dsn


def families(tag: str, parents: int, children: int) -> list[ProcParent]:
    out = []
    for p in range(parents):
        parent = ProcParent(source=tag, name=f"{tag}-{p}")
        parent.children = [ProcChild(source=tag, name=f"{tag}-{p}-{c}") for c in range(children)]
        out.append(parent)
    return out


async def test_transaction_pooling_keeps_the_statement_cache(
    database_dsn: str, bouncer: str
) -> None:
    """16 client sessions on 4 server connections, every strategy and native mixed, several
    rounds each, with asyncpg's and SQLAlchemy's statement caches at their defaults: every
    flush succeeds and every row is there once, children under their own parents."""
    clients = 16
    rounds, parents, children = scaled(3, 10), scaled(40, 200), 4
    engine = create_async_engine(
        sqlalchemy_url(bouncer), pool_size=clients, max_overflow=0, pool_timeout=60
    )
    strategies = ("auto", "copy", "unnest", "executemany", "native")
    try:
        makers = {s: maker_for(engine, s) for s in strategies}
        server_pids: set[int] = set()

        async def client(i: int) -> None:
            strategy = strategies[i % len(strategies)]
            for r in range(rounds):
                async with makers[strategy]() as session:
                    session.add_all(families(f"c{i}r{r}", parents, children))
                    await session.commit()
                    report = last_flush(session)
                    if strategy != "native":
                        assert report is not None
                        assert report.accelerated == parents * (children + 1), report.summary()
                async with makers[strategy]() as session:
                    server_pids.add(await session.scalar(select(func.pg_backend_pid())))

        await asyncio.gather(*(client(i) for i in range(clients)))
    finally:
        await engine.dispose()
    assert len(server_pids) <= 4, "more server connections than PgBouncer's pool: not pooled?"
    total = clients * rounds * parents
    await assert_rows(database_dsn, "proc_parent", total)
    await assert_rows(database_dsn, "proc_child", total * children)
    crossed = await fetchval(
        database_dsn,
        "SELECT count(*) FROM proc_child c LEFT JOIN proc_parent p ON p.id = c.parent_id"
        " WHERE p.id IS NULL OR c.name NOT LIKE p.name || '-%'",
    )
    assert crossed == 0


async def test_a_failed_flush_through_pgbouncer_leaves_nothing(
    database_dsn: str, bouncer: str
) -> None:
    """A constraint violation in a batched flush through PgBouncer: the transaction is rolled
    back on the server connection, which PgBouncer then hands to others in a clean state."""
    engine = create_async_engine(sqlalchemy_url(bouncer), pool_size=8, max_overflow=0)
    try:
        maker = maker_for(engine, "copy")
        objs = families("bad", 50, 4)
        orphan = ProcChild(source="bad", name="orphan", parent_id=-1)  # the FK fails
        async with maker() as session:
            session.add_all([*objs, orphan])
            with pytest.raises(DBAPIError):
                await session.flush()
            await session.rollback()
        # the server connections are fine for everyone afterwards
        for strategy in ("copy", "unnest", "executemany"):
            async with maker_for(engine, strategy)() as session:
                session.add_all(families(f"ok-{strategy}", 20, 4))
                await session.commit()
    finally:
        await engine.dispose()
    await assert_rows(database_dsn, "proc_parent", 60)
    await assert_rows(database_dsn, "proc_child", 240)


async def test_without_max_prepared_statements_the_cache_breaks_safely(
    pg: PostgresServer, database_dsn: str
) -> None:
    """Control: the same load with ``max_prepared_statements = 0`` (what PgBouncer < 1.21
    amounts to) fails with "prepared statement ... does not exist" -- which is why the setting
    is required. Even then, no failed session leaves a row behind."""
    assert PGBOUNCER is not None
    await _tables(database_dsn)
    database = urlsplit(database_dsn).path.lstrip("/")
    parents, children = 40, 4
    async with running_pgbouncer(
        PGBOUNCER, pg.host, pg.port, pg.user, database, max_prepared_statements="0"
    ) as dsn:
        engine = create_async_engine(sqlalchemy_url(dsn), pool_size=16, max_overflow=0)
        committed: list[str] = []
        errors: list[str] = []
        try:
            maker = maker_for(engine, "copy")

            async def client(i: int) -> None:
                for r in range(3):
                    tag = f"c{i}r{r}"
                    try:
                        async with maker() as session:
                            session.add_all(families(tag, parents, children))
                            await session.commit()
                        committed.append(tag)
                    except DBAPIError as err:
                        errors.append(str(err.orig))

            await asyncio.gather(*(client(i) for i in range(16)))
        finally:
            await engine.dispose()
    assert errors, "expected asyncpg's statement cache to break without max_prepared_statements"
    assert all("prepared statement" in e for e in errors), errors[:3]
    await assert_rows(database_dsn, "proc_parent", len(committed) * parents)
    await assert_rows(database_dsn, "proc_child", len(committed) * parents * children)
