"""Issue 7, faults: the bulk path fails as safely as native -- nothing lost, nothing half-written.

Every test checks the database afterwards (row counts, distinct ids), not only the exception.
Each write strategy (``copy``, ``unnest``, ``executemany``) is run, and ``native`` (batching off)
beside it as the reference that the expectations below were read from.

- constraint violations (unique, FK, CHECK, NOT NULL, value too long) and values the driver
  rejects, at the first, a middle and the last row of a 10,000-row batch;
- faults in the middle of a batch: the backend killed, the task cancelled (``task.cancel()``,
  ``asyncio.wait_for``), ``statement_timeout`` (``SET LOCAL`` and connect args), ``lock_timeout``
  on a row another connection holds. A `Gate` (advisory lock + trigger) holds the flush at a
  chosen row server-side, so the fault lands mid-batch every time. "large" rows (2 kB each,
  20 MB per flush) keep the client still sending when the server stops reading -- the COPY /
  pipelined executemany is mid-stream; "small" rows are all sent before the server stops;
- sequence exhaustion: a clear error before any row is written.

``ASYNC_BATCH_STRESS=1`` runs the long versions (200,000-row flushes, more positions).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import pytest
from reliability_support import (
    STRATEGIES,
    STRESS,
    WITH_NATIVE,
    Gate,
    assert_rows,
    backend_state,
    driver_error,
    fetch,
    fetchval,
    install_gate,
    maker_for,
    matrix,
    module_database,
    scaled,
    settle,
    sqlstate,
    wait_backend_settled,
)
from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    MetaData,
    Sequence,
    String,
    Text,
    event,
    inspect,
    text,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from async_batch import last_flush
from async_batch.testing import PostgresServer, sqlalchemy_url


class Base(DeclarativeBase):
    metadata = MetaData()


class Ref(Base):
    __tablename__ = "rel_ref"
    id: Mapped[int] = mapped_column(primary_key=True)


class Item(Base):
    __tablename__ = "rel_item"
    __table_args__ = (CheckConstraint("qty >= 0", name="rel_item_qty_nonneg"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    qty: Mapped[int]
    ref_id: Mapped[int | None] = mapped_column(ForeignKey("rel_ref.id"))
    note: Mapped[str | None] = mapped_column(String(10))
    payload: Mapped[str] = mapped_column(Text)


class Capped(Base):
    """Ids from an explicit sequence that runs out after 100 values."""

    __tablename__ = "rel_capped"
    id: Mapped[int] = mapped_column(
        Sequence("rel_capped_seq", maxvalue=100, cycle=False), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(40))


ITEM = "rel_item"
BATCH = 10_000
GUARD_S = 4.0
"""How long a failing flush may take before it counts as hung (a healthy one fails in < 1 s)."""

# What distinguishes each strategy's statement in an error message: proof that the batched
# writer, not the native flush, hit the fault.
STATEMENT_MARK = {
    "copy": "COPY rel_item",
    "unnest": "unnest(",
    "executemany": "VALUES ($1",
    "native": "INSERT INTO rel_item",
}


@pytest.fixture(scope="module")
def fault_dsn(pg: PostgresServer) -> Iterator[str]:
    with module_database(pg, "rel_faults") as dsn:

        async def setup() -> None:
            engine = create_async_engine(sqlalchemy_url(dsn))
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            await engine.dispose()
            await install_gate(dsn, ITEM)

        asyncio.run(setup())
        yield dsn


@pytest.fixture
async def dsn(fault_dsn: str) -> str:
    """The module's database, emptied: one ``rel_ref`` row (id 1) and one ``rel_item`` row
    whose code is ``taken``."""
    conn = await asyncpg.connect(fault_dsn)
    try:
        await conn.execute(
            "TRUNCATE rel_item, rel_ref, rel_capped RESTART IDENTITY;"
            "ALTER SEQUENCE rel_capped_seq MAXVALUE 100 RESTART;"
            "INSERT INTO rel_ref (id) VALUES (1);"
            "INSERT INTO rel_item (id, code, qty, payload) VALUES (-1, 'taken', 0, '')"
        )
    finally:
        await conn.close()
    return fault_dsn


@pytest.fixture
async def engine(dsn: str) -> AsyncIterator[AsyncEngine]:
    """One pooled connection only: what the next session gets is what the failed one left."""
    eng = create_async_engine(sqlalchemy_url(dsn), pool_size=1, max_overflow=0, pool_timeout=10)
    try:
        yield eng
    finally:
        await eng.dispose()


def items(n: int, payload: str = "", prefix: str = "c") -> list[Item]:
    return [Item(code=f"{prefix}{i}", qty=i, ref_id=1, payload=payload) for i in range(n)]


async def items_in_db(dsn: str) -> int:
    """Rows of rel_item besides the pre-existing ``taken`` row; ids checked distinct."""
    await assert_rows(dsn, ITEM, await fetchval(dsn, "SELECT count(*) FROM rel_item"))
    return int(await fetchval(dsn, "SELECT count(*) FROM rel_item WHERE code <> 'taken'"))


# --- constraint violations and rejected values -------------------------------------------------


@dataclass(frozen=True)
class Violation:
    error: type[DBAPIError]
    """The exact SQLAlchemy exception class native raises."""
    sqlstate: str | None
    driver_error: type[Exception]
    """The asyncpg exception behind it."""
    spoil: Callable[[Item], None]


def _set(attr: str, value: Any) -> Callable[[Item], None]:
    return lambda obj: setattr(obj, attr, value)


VIOLATIONS = {
    "unique": Violation(
        IntegrityError,
        "23505",
        asyncpg.UniqueViolationError,
        _set("code", "taken"),
    ),
    "foreign_key": Violation(
        IntegrityError,
        "23503",
        asyncpg.ForeignKeyViolationError,
        _set("ref_id", 999),
    ),
    "check": Violation(IntegrityError, "23514", asyncpg.CheckViolationError, _set("qty", -1)),
    "not_null": Violation(
        IntegrityError,
        "23502",
        asyncpg.NotNullViolationError,
        _set("qty", None),
    ),
    "too_long": Violation(
        DBAPIError,
        "22001",
        asyncpg.StringDataRightTruncationError,
        _set("note", "x" * 11),
    ),
    # values the driver rejects before the server sees them
    "str_for_int": Violation(DBAPIError, "22000", asyncpg.DataError, _set("qty", "abc")),
    "int_for_str": Violation(DBAPIError, "22000", asyncpg.DataError, _set("note", 12345)),
}


def dbapi_class(engine: AsyncEngine, driver_error: type[Exception]) -> type[Exception]:
    """The DBAPI-level class SQLAlchemy's asyncpg adapter turns ``driver_error`` into (what a
    native statement failing with it raises as ``err.orig``)."""
    mapping = engine.sync_engine.dialect.loaded_dbapi._asyncpg_error_translate
    return next(mapping[c] for c in driver_error.__mro__ if c in mapping)


def positions(n: int, strategy: str) -> list[int]:
    if strategy == "native" and not STRESS:
        return [n // 2]  # the reference: one position is enough to pin what native raises
    return [0, n // 2, n - 1] + [n // (k + 3) for k in range(scaled(0, 3))]


def _restore(obj: Item, index: int) -> None:
    obj.code = f"c{index}"
    obj.qty = index
    obj.ref_id = 1
    obj.note = None


def _row_evidence(err: BaseException, kind: str, strategy: str, index: int) -> str | None:
    """Where the strategy's error says which row failed; None when it cannot say."""
    cause = driver_error(err)
    detail = getattr(cause, "detail", None) or ""
    context = getattr(cause, "context", None) or ""
    message = str(err)
    if kind in ("check", "not_null"):
        # "Failing row contains (..., c5000, ...)"
        return detail if f"c{index}," in detail else None
    if kind in ("unique", "foreign_key"):
        return detail if ("(taken)" in detail or "(999)" in detail) else None  # the key value
    if strategy == "copy" and f"line {index + 1}" in context:
        return context  # "COPY rel_item, line 5001, column note"
    if kind in ("str_for_int", "int_for_str"):
        if strategy == "executemany" and f"element #{index} " in message:
            return message
        if strategy == "unnest" and f"index {index}:" in message:
            return message
    return None


@pytest.mark.parametrize(
    "kind", matrix(*(k for k in VIOLATIONS if k != "int_for_str"), stress_only=["int_for_str"])
)
@pytest.mark.parametrize("strategy", WITH_NATIVE)
async def test_violation_rolls_back_the_whole_flush(
    dsn: str, engine: AsyncEngine, strategy: str, kind: str
) -> None:
    """A bad row first, in the middle, last: the native exception type, the table named,
    nothing committed, objects as before the flush, and the corrected batch then commits."""
    violation = VIOLATIONS[kind]
    n = scaled(BATCH, 100_000)
    maker = maker_for(engine, strategy)
    objs = items(n)
    evidence: dict[int, str | None] = {}
    for index in positions(n, strategy):
        violation.spoil(objs[index])
        async with maker() as session:
            session.add_all(objs)
            with pytest.raises(DBAPIError) as info:
                await session.flush()
            err = info.value
            assert type(err) is violation.error, f"{type(err).__name__}: {err}"
            assert type(err.orig) is dbapi_class(engine, violation.driver_error)
            assert isinstance(driver_error(err), violation.driver_error), repr(driver_error(err))
            assert sqlstate(err) == violation.sqlstate
            assert ITEM in str(err), "the message must name the table"
            assert STATEMENT_MARK[strategy] in str(err), "the fault must hit the tested writer"
            evidence[index] = _row_evidence(err, kind, strategy, index)
            if strategy != "native":
                # the failed flush is the last one reported, with why and where
                report = last_flush(session)
                assert report is not None
                assert report.error is not None, report.summary()
                assert report.error.startswith(type(err).__name__), report.error
                assert ITEM in report.error, report.error
            await session.rollback()
        # objects look as they did before the flush: transient again, no ids assigned
        assert all(inspect(o).transient for o in objs)
        assert all(o.id is None for o in objs)
        assert await items_in_db(dsn) == 0
        _restore(objs[index], index)

    # which strategies can name the failing row, and how: see the README's guarantees
    if kind in ("unique", "foreign_key", "check", "not_null"):
        assert all(evidence.values()), evidence  # the server's DETAIL names the row's values
    if kind == "too_long" and strategy == "copy":
        assert all(evidence.values()), evidence  # COPY context: "line N, column note"

    if strategy == "native" and not STRESS:
        return
    async with maker() as session:
        session.add_all(objs)
        await session.commit()
        if strategy != "native":
            report = last_flush(session)
            assert report is not None
            assert report.accelerated == n, report.summary()
            assert [t.strategy for t in report.tables] == [strategy], report.summary()
    assert await items_in_db(dsn) == n
    assert (
        await fetchval(
            dsn,
            "SELECT count(*) FROM rel_item WHERE code <> 'taken' AND qty <> substr(code, 2)::int",
        )
        == 0
    )


async def test_report_of_a_failed_flush(engine: AsyncEngine) -> None:
    """``last_flush`` reports a failed flush with its error; a flush that fails before
    async_batch sees it (a ``before_flush`` listener) leaves the previous report."""
    maker = maker_for(engine, "copy")
    async with maker() as session:
        session.add_all(items(50))
        await session.flush()
        good = last_flush(session)
        assert good is not None
        assert good.error is None
        assert good.accelerated == 50

        def refuse(*_args: Any) -> None:
            raise RuntimeError("refused")

        event.listen(session.sync_session, "before_flush", refuse)
        session.add_all(items(5, prefix="d"))
        with pytest.raises(RuntimeError):
            await session.flush()
        assert last_flush(session) is good
        assert good.error is None
        event.remove(session.sync_session, "before_flush", refuse)
        event.listen(session.sync_session, "after_flush", refuse)
        with pytest.raises(RuntimeError):
            await session.flush()
        failed = last_flush(session)
        assert failed is not None
        assert failed is not good
        assert failed.error == "RuntimeError: refused", failed.summary()
        assert "failed: RuntimeError: refused" in failed.summary()
        await session.rollback()
        event.remove(session.sync_session, "after_flush", refuse)

        class Unprintable(Exception):
            def __str__(self) -> str:
                raise ValueError("no text")

        def refuse_unprintably(*_args: Any) -> None:
            raise Unprintable

        # an exception whose text cannot be made is still the one raised, named by its type
        event.listen(session.sync_session, "after_flush", refuse_unprintably)
        session.add_all(items(5, prefix="e"))
        with pytest.raises(Unprintable):
            await session.flush()
        report = last_flush(session)
        assert report is not None
        assert report.error == "Unprintable"
        await session.rollback()


async def test_violation_in_a_later_table_undoes_the_earlier_tables(
    dsn: str, engine: AsyncEngine
) -> None:
    """A flush writes ``rel_ref`` first, then ``rel_item``: a violation in the second table
    leaves no rows in the first (one transaction, whatever the strategy)."""
    for strategy in STRATEGIES:
        maker = maker_for(engine, strategy)
        refs = [Ref() for _ in range(500)]
        objs = items(500, prefix=f"{strategy}-")
        objs[250].code = "taken"
        async with maker() as session:
            session.add_all(refs + objs)
            with pytest.raises(IntegrityError):
                await session.flush()
            await session.rollback()
        assert await fetchval(dsn, "SELECT count(*) FROM rel_ref") == 1
        assert await items_in_db(dsn) == 0


# --- faults in the middle of a batch -------------------------------------------------------------

SIZES = {"small": ("", 10_000), "large": ("x" * 2000, 10_000)}
GATE_AT = {"small": 5_000, "large": 100}
"""Row that waits at the gate: mid-batch; for large rows early, while the client still sends."""


def gated_batch(size: str) -> list[Item]:
    payload, n = SIZES[size]
    n = scaled(n, 200_000 if size == "small" else 50_000)
    objs = items(n, payload)
    objs[GATE_AT[size]].code = "gate"
    return objs


async def after_fault(
    dsn: str, engine: AsyncEngine, strategy: str, pid: int, *, killed: bool
) -> None:
    """The common aftermath: nothing committed, no connection left checked out, the failed
    backend gone (killed) or idle outside a transaction (never returned mid-protocol), and the
    next session on the same one-connection pool writes and commits normally."""
    assert await items_in_db(dsn) == 0, "rows of a failed flush were committed"
    assert engine.pool.checkedout() == 0, engine.pool.status()
    state = await wait_backend_settled(dsn, pid)
    if killed:
        assert state is None
    else:
        assert state in (None, "idle"), f"the failed flush's backend is {state!r}"
    maker = maker_for(engine, strategy)
    async with maker() as session:
        session.add_all(items(200, prefix="after-"))
        await session.commit()
        new_pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    if killed:
        assert new_pid != pid, "the pool handed out the killed connection again"
    assert await items_in_db(dsn) == 200


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("strategy", WITH_NATIVE)
async def test_backend_killed_mid_flush(
    dsn: str, engine: AsyncEngine, strategy: str, size: str
) -> None:
    """``pg_terminate_backend`` while the flush waits at a row mid-batch: a disconnect error
    (``DBAPIError``, ``connection_invalidated``), nothing committed, the dead connection
    discarded by the pool, closing the session does not raise, the next session works."""
    maker = maker_for(engine, strategy)
    objs = gated_batch(size)
    async with Gate(dsn) as gate:
        session = maker()
        session.add_all(objs)
        task = asyncio.ensure_future(session.flush())
        pid = await gate.blocked_pid()
        await gate.terminate(pid)
        try:
            out = await settle(
                task, GUARD_S, f"flush ({strategy}, {size} rows) after its backend was killed"
            )
        finally:
            closed = await settle(session.close(), GUARD_S, "session.close()")
    assert isinstance(out.error, DBAPIError), repr(out.error or out)
    assert out.error.connection_invalidated, "the disconnect was not detected"
    assert closed.error is None, repr(closed.error)
    await after_fault(dsn, engine, strategy, pid, killed=True)


@pytest.mark.parametrize(
    ("size", "how"),
    matrix(
        ("small", "cancel"),
        ("large", "cancel"),
        ("large", "wait_for"),
        stress_only=[("small", "wait_for")],
    ),
)
@pytest.mark.parametrize("strategy", WITH_NATIVE)
async def test_task_cancelled_mid_flush(
    dsn: str, engine: AsyncEngine, strategy: str, size: str, how: str
) -> None:
    """The flush's task cancelled while a row waits mid-batch (``task.cancel()`` or an
    ``asyncio.wait_for`` timeout): the cancellation propagates promptly, nothing is committed,
    the connection is not returned to the pool mid-protocol, the next session works."""
    maker = maker_for(engine, strategy)
    objs = gated_batch(size)
    async with Gate(dsn) as gate:
        session = maker()
        session.add_all(objs)
        timeout = 0
        if how == "cancel":
            task = asyncio.ensure_future(session.flush())
            pid = await gate.blocked_pid()
            task.cancel()
        else:
            # long enough for the flush to build its rows and reach the gate on a slow machine
            # (a native flush of the large batch took over 1 s to get there on a busy 2-core one)
            timeout = scaled(3, 20)
            task = asyncio.ensure_future(asyncio.wait_for(session.flush(), timeout))
            pid = await gate.blocked_pid(timeout)
        try:
            what = f"flush ({strategy}, {size} rows) after {how}"
            out = await settle(task, GUARD_S + timeout, what)
        finally:
            closed = await settle(session.close(), GUARD_S, "session.close()")
    if how == "cancel":
        assert out.cancelled, repr(out)
    else:
        assert isinstance(out.error, TimeoutError), repr(out)
    assert closed.error is None, repr(closed.error)
    await after_fault(dsn, engine, strategy, pid, killed=False)


class _CancelOnResume(asyncio.Event):
    """asyncpg's "writing allowed" event, cancelling a task the moment a wait on it returns:
    the instant a timeout could fire between two chunks of a pipelined executemany, with
    nothing paused (found once in ~300 random timeouts; made certain here)."""

    def __init__(self, task: asyncio.Future[Any]) -> None:
        super().__init__()
        self.set()
        self.task = task
        self.fired = False

    async def wait(self) -> Literal[True]:
        await super().wait()
        if not self.fired:
            self.fired = True
            self.task.cancel()
        return True


async def test_cancelled_between_executemany_chunks(dsn: str, engine: AsyncEngine) -> None:
    """A cancellation landing in asyncpg's pipelined executemany while the transport accepts
    data (after a chunk, before the next): asyncpg swallows it and never sends the Sync that
    ends the pipeline; async_batch sends it, so the flush ends with ``CancelledError`` and the
    connection is reused, where it would otherwise wait for the server forever."""
    maker = maker_for(engine, "executemany")
    session = maker()
    conn = await session.connection()
    raw = (await conn.get_raw_connection()).driver_connection
    pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    session.add_all(items(5_000, payload="y" * 300))  # well over one 128 KB round of chunks
    task = asyncio.ensure_future(session.flush())
    trap = _CancelOnResume(task)
    protocol = raw._protocol
    original = protocol.writing_allowed
    protocol.writing_allowed = trap
    try:
        out = await settle(task, GUARD_S, "flush (executemany) cancelled between chunks")
    finally:
        protocol.writing_allowed = original
    assert trap.fired
    assert out.cancelled, repr(out)
    closed = await settle(session.close(), GUARD_S, "session.close()")
    assert closed.error is None, repr(closed.error)
    await after_fault(dsn, engine, "executemany", pid, killed=False)


@pytest.mark.parametrize("how", ["set_local", "connect_args"])
@pytest.mark.parametrize("strategy", WITH_NATIVE)
async def test_statement_timeout_mid_flush(dsn: str, strategy: str, how: str) -> None:
    """``statement_timeout`` fires while a row waits mid-batch: ``DBAPIError`` (57014) as
    native, nothing committed, the session rolls back and the connection is reused cleanly."""
    connect_args = {}
    if how == "connect_args":
        connect_args = {"server_settings": {"statement_timeout": "250"}}
    eng = create_async_engine(
        sqlalchemy_url(dsn), pool_size=1, max_overflow=0, connect_args=connect_args
    )
    try:
        maker = maker_for(eng, strategy)
        objs = gated_batch("large")
        async with Gate(dsn), maker() as session:
            if how == "set_local":
                await session.execute(text("SET LOCAL statement_timeout = 250"))
            pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            session.add_all(objs)
            out = await settle(session.flush(), GUARD_S, f"flush ({strategy}) under a timeout")
            err = out.error
            assert type(err) is DBAPIError, repr(err)
            assert sqlstate(err) == "57014"
            assert STATEMENT_MARK[strategy] in str(err)
            await session.rollback()
        assert await backend_state(dsn, pid) == "idle"
        await after_fault(dsn, eng, strategy, pid, killed=False)
    finally:
        await eng.dispose()


@pytest.mark.parametrize("strategy", WITH_NATIVE)
async def test_lock_timeout_on_a_row_another_connection_holds(dsn: str, strategy: str) -> None:
    """Another transaction has inserted (uncommitted) the code of the batch's middle row: the
    batch waits on its lock until ``lock_timeout`` (55P03) -- same error as native, nothing
    committed, and the batch commits once the other transaction is gone."""
    eng = create_async_engine(sqlalchemy_url(dsn), pool_size=1, max_overflow=0)
    holder = await asyncpg.connect(dsn)
    try:
        maker = maker_for(eng, strategy)
        objs = items(scaled(BATCH, 100_000), "y" * 200)
        middle = len(objs) // 2
        await holder.execute("BEGIN")
        await holder.execute(
            "INSERT INTO rel_item (id, code, qty, payload) VALUES (-2, $1, 0, '')",
            f"c{middle}",
        )
        async with maker() as session:
            await session.execute(text("SET LOCAL lock_timeout = 250"))
            session.add_all(objs)
            out = await settle(session.flush(), GUARD_S, f"flush ({strategy}) under lock_timeout")
            err = out.error
            assert type(err) is DBAPIError, repr(err)
            assert sqlstate(err) == "55P03"
            assert STATEMENT_MARK[strategy] in str(err)
            await session.rollback()
        await holder.execute("ROLLBACK")
        assert await items_in_db(dsn) == 0
        async with maker() as session:
            session.add_all(objs)
            await session.commit()
        assert await items_in_db(dsn) == len(objs)
    finally:
        await holder.close()
        await eng.dispose()


# --- sequence exhaustion ------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", WITH_NATIVE)
async def test_sequence_exhausted(dsn: str, engine: AsyncEngine, strategy: str) -> None:
    """A sequence with MAXVALUE 100 and 150 new objects: a clear error (2200H, naming the
    sequence), nothing committed -- and batched, no row is even sent: the error comes from the
    id prefetch. After raising MAXVALUE, the same objects commit."""
    maker = maker_for(engine, strategy)
    objs = [Capped(name=f"n{i}") for i in range(150)]
    async with maker() as session:
        session.add_all(objs)
        with pytest.raises(DBAPIError) as info:
            await session.flush()
        err = info.value
        assert sqlstate(err) == "2200H", repr(err)
        assert "rel_capped_seq" in str(err)
        if strategy != "native":
            statement = str(err.statement)
            assert "nextval" in statement
            assert "INSERT" not in statement.upper()
            assert "COPY" not in statement.upper()
        await session.rollback()
    assert all(o.id is None for o in objs)
    assert await fetchval(dsn, "SELECT count(*) FROM rel_capped") == 0
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ALTER SEQUENCE rel_capped_seq MAXVALUE 10000 RESTART")
    finally:
        await conn.close()
    async with maker() as session:
        session.add_all(objs)
        await session.commit()
    await assert_rows(dsn, "rel_capped", 150)
    assert [r[0] for r in await fetch(dsn, "SELECT id FROM rel_capped ORDER BY id")] == list(
        range(1, 151)
    )
