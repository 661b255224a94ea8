"""async_batch.testing.StatementCounter."""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from async_batch.testing import StatementCounter, WireProxy

metadata = MetaData()
item = Table(
    "item",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50)),
)


async def test_counts_statements(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)

    with StatementCounter(engine) as sc:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT 1"))
            await conn.execute(select(item.c.id).where(item.c.id == 5))
    assert sc.count == 2
    assert sc.statements[0].statement == "SELECT 1"
    assert sc.statements[0].executemany is False
    assert sc.statements[0].parameter_count == 0
    assert sc.statements[1].executemany is False
    assert sc.statements[1].parameter_count == 1  # one bound value
    assert "FROM item" in sc.texts[1]


async def test_executemany_is_recorded_with_its_row_count(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(item.insert(), [{"id": i, "name": f"n{i}"} for i in range(10)])

    update = item.update().where(item.c.id == bindparam("b_id")).values(name=bindparam("b_name"))
    with StatementCounter(engine) as sc:
        async with engine.begin() as conn:
            await conn.execute(update, [{"b_id": i, "b_name": f"m{i}"} for i in range(10)])
    assert sc.count == 1
    assert sc.executemany_count == 1
    (stmt,) = sc.statements
    assert stmt.executemany is True
    assert stmt.parameter_count == 10
    assert stmt.statement.startswith("UPDATE item")


async def test_listener_is_removed_on_exit(engine: AsyncEngine) -> None:
    with StatementCounter(engine) as sc:
        assert event.contains(engine.sync_engine, "before_cursor_execute", sc._record)
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    assert not event.contains(engine.sync_engine, "before_cursor_execute", sc._record)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 2"))
    assert sc.count == 1
    sc.clear()
    assert sc.count == 0


async def test_sync_engine_target_and_nesting(engine: AsyncEngine) -> None:
    with StatementCounter(engine.sync_engine) as outer, StatementCounter(engine) as inner:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    assert outer.count == inner.count == 1


async def test_statements_versus_round_trips(engine: AsyncEngine, proxy: WireProxy) -> None:
    """StatementCounter sees DBAPI calls; the proxy sees round trips (BEGIN, COMMIT too)."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    with StatementCounter(engine) as sc, proxy.count() as wire:
        async with engine.begin() as conn:
            await conn.execute(item.insert(), [{"id": i, "name": "x"} for i in range(100)])
    print(f"\n100-row Core insert: {sc.count} DBAPI call(s), {wire.round_trips} round trips")
    assert sc.count >= 1
    assert wire.round_trips >= sc.count + 2  # + BEGIN + COMMIT
