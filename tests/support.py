"""Differential testing: run one workload natively and with batching, compare everything.

A workload is a function that builds objects and drives an ``AsyncSession``. It is run twice on
the same database, reset in between (tables truncated, sequences restarted), so ids must come
out identical. What is compared:

- database contents: every table of the metadata, ordered by primary key;
- session state after each step: for every object the workload created (matched by creation
  order) its lifecycle status, identity key, loaded attribute values, related objects (as
  indexes), expired/unloaded attribute names, pending history and the session's
  new/dirty/deleted membership;
- the sequence of session events with what they saw.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import MetaData, event, inspect, select, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.orm.collections import InstrumentedList
from sqlalchemy.sql import ClauseElement

from async_batch import enable_async_batching, last_flush
from async_batch.testing import sqlalchemy_url

Workload = Callable[["Run"], Awaitable[None]]


@dataclass
class Run:
    """Handed to a workload: the session, and where to register the objects it creates."""

    session: AsyncSession
    objects: list[Any] = field(default_factory=list)
    snapshots: list[Any] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    reports: list[Any] = field(default_factory=list)

    def track(self, *objs: Any) -> None:
        self.objects.extend(objs)

    def snapshot(self, label: str) -> None:
        self.snapshots.append((label, session_state(self.session.sync_session, self.objects)))
        rep = last_flush(self.session)
        self.reports.append(rep)


def _value(v: Any, index: dict[int, int]) -> Any:
    if isinstance(v, (set, frozenset)):
        # a set iterates in hash order (object addresses): compare it sorted
        return ("set", sorted((_value(i, index) for i in v), key=repr))
    if isinstance(v, dict):
        # a dict collection (attribute_keyed_dict) or a JSON value, in its order
        return ("dict", [(k, _value(i, index)) for k, i in v.items()])
    if isinstance(v, (list, InstrumentedList, tuple)) and not isinstance(v, str):
        items = list(v)
        if items and hasattr(items[0], "_sa_instance_state"):
            return ("objs", [index.get(id(o), "?") for o in items])
        return [_value(i, index) for i in items]
    if hasattr(v, "_sa_instance_state"):
        return ("obj", index.get(id(v), "?"))
    if isinstance(v, ClauseElement):
        return ("sql", type(v).__name__)
    if v is None:
        return None
    # by type too: 1.5 == Decimal("1.5"), "happy" != Mood.happy only by luck of the enum
    return (type(v).__name__, v)


def session_state(session: Session, objects: Sequence[Any]) -> list[Any]:
    index = {id(o): i for i, o in enumerate(objects)}
    out: list[Any] = []
    new, dirty, deleted = (
        set(map(id, session.new)),
        set(map(id, session.dirty)),
        set(map(id, session.deleted)),
    )
    for i, obj in enumerate(objects):
        st = inspect(obj)
        status = (
            "transient"
            if st.transient
            else "pending"
            if st.pending
            else "persistent"
            if st.persistent
            else "deleted"
            if st.deleted
            else "detached"
        )
        mapped = st.mapper.attrs
        # an attribute outside the mapping (an association proxy's cached collection, say) is
        # compared by type only: rendering it may load from the database
        d = {
            k: _value(v, index) if k in mapped else ("unmapped", type(v).__name__)
            for k, v in sorted(st.dict.items())
            if k != "_sa_instance_state"
        }
        key = None
        if st.key is not None:
            key = (st.key[0].__name__, st.key[1], st.key[2])
        out.append(
            {
                "i": i,
                "class": type(obj).__name__,
                "status": status,
                "key": key,
                "in_map": st.key is not None and st.key in session.identity_map,
                "dict": d,
                "expired_attributes": sorted(st.expired_attributes),
                "unloaded": sorted(st.unloaded),
                "committed": sorted(st.committed_state),
                "modified": st.modified,
                "new": id(obj) in new,
                "dirty": id(obj) in dirty,
                "deleted": id(obj) in deleted,
            }
        )
    out.append({"identity_map": len(session.identity_map), "new": len(session.new)})
    return out


async def db_contents(conn_engine: AsyncEngine, metadata: MetaData) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    async with conn_engine.connect() as conn:
        for table in metadata.sorted_tables:
            order = list(table.primary_key.columns) or list(table.c)
            rows = (await conn.execute(select(table).order_by(*order))).all()
            out[table.name] = [tuple(r) for r in rows]
    return out


async def reset_db(engine: AsyncEngine, metadata: MetaData, sequences: Sequence[str]) -> None:
    async with engine.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        for seq in sequences:
            await conn.execute(text(f'ALTER SEQUENCE "{seq}" RESTART'))


def _record_events(session: Session, log: list[Any]) -> Callable[[], None]:
    def before_flush(s: Session, ctx: Any, objs: Any) -> None:
        log.append(("before_flush", len(s.new), len(s.dirty)))

    def after_flush(s: Session, ctx: Any) -> None:
        log.append(("after_flush", len(s.new), len(s.dirty)))

    def after_flush_postexec(s: Session, ctx: Any) -> None:
        log.append(("after_flush_postexec", len(s.new), len(s.identity_map)))

    def pending_to_persistent(s: Session, obj: Any) -> None:
        log.append(("pending_to_persistent", type(obj).__name__))

    handlers = [
        ("before_flush", before_flush),
        ("after_flush", after_flush),
        ("after_flush_postexec", after_flush_postexec),
        ("pending_to_persistent", pending_to_persistent),
    ]
    for name, fn in handlers:
        event.listen(session, name, fn)

    def remove() -> None:
        for name, fn in handlers:
            event.remove(session, name, fn)

    return remove


@dataclass
class Outcome:
    db: dict[str, list[Any]]
    snapshots: list[Any]
    events: list[Any]
    error: str | None
    reports: list[Any]


async def run_workload(
    engine: AsyncEngine,
    workload: Workload,
    *,
    batching: dict[str, Any] | None,
    metadata: MetaData,
    sequences: Sequence[str] = (),
    setup: Callable[[AsyncSession], Awaitable[None]] | None = None,
    before_run: Callable[[], None] | None = None,
    expire_on_commit: bool = True,
) -> Outcome:
    await reset_db(engine, metadata, sequences)
    if before_run is not None:
        before_run()
    if setup is not None:
        async with AsyncSession(engine) as s:
            await setup(s)
            await s.commit()
    if before_run is not None:
        before_run()
    maker = async_sessionmaker(engine, expire_on_commit=expire_on_commit)
    if batching is not None:
        enable_async_batching(maker, **batching)
    error = None
    async with maker() as session:
        run = Run(session)
        remove = _record_events(session.sync_session, run.events)
        try:
            await workload(run)
        except Exception as err:  # the comparison includes the failure
            error = f"{type(err).__name__}"
            run.events.append(("error-detail", repr(err)[:2000]))
            run.snapshot("error")
            with contextlib.suppress(Exception):
                await session.rollback()
            run.snapshot("after rollback")
        finally:
            remove()
    db = await db_contents(engine, metadata)
    return Outcome(db, run.snapshots, run.events, error, run.reports)


def assert_same(native: Outcome, other: Outcome, label: str = "") -> None:
    assert other.error == native.error, (
        f"{label}: error {other.error!r} != {native.error!r}: "
        f"{[e for e in other.events + native.events if e[0] == 'error-detail']}"
    )
    if other.db != native.db:
        diff = {
            t: (native.db[t], other.db.get(t)) for t in native.db if native.db[t] != other.db.get(t)
        }
        raise AssertionError(f"{label}: database contents differ (native, batched): {diff}")
    assert len(other.snapshots) == len(native.snapshots)
    for (la, a), (lb, b) in zip(native.snapshots, other.snapshots, strict=True):
        assert la == lb
        for x, y in zip(a, b, strict=True):
            assert y == x, f"{label}: session state differs at {la!r}:\nnative: {x}\nbatched: {y}"
    assert _canon(other.events) == _canon(native.events), f"{label}: session events differ"


def _canon(events: list[Any]) -> list[Any]:
    """pending_to_persistent fires in set order natively: compare each run of them sorted."""
    out: list[Any] = []
    run: list[Any] = []
    for e in [*events, None]:
        if e is not None and e[0] == "error-detail":
            continue
        if e is not None and e[0] == "pending_to_persistent":
            run.append(e)
            continue
        out.extend(sorted(run))
        run = []
        if e is not None:
            out.append(e)
    return out


def run_sync(coro: Awaitable[Any]) -> Any:
    return asyncio.get_event_loop().run_until_complete(coro)


def create_schema(dsn: str, metadata: MetaData) -> None:
    """Create ``metadata``'s tables in the database at ``dsn`` (from a sync fixture)."""

    async def create() -> None:
        engine = create_async_engine(sqlalchemy_url(dsn))
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
        finally:
            await engine.dispose()

    asyncio.run(create())


async def compare_modes(
    dsn: str,
    workload: Workload,
    modes: Sequence[tuple[str, dict[str, Any]]],
    **kw: Any,
) -> tuple[Outcome, list[tuple[str, dict[str, Any], Outcome]]]:
    """Run ``workload`` natively, then once per batching mode; assert each matches native."""
    engine = create_async_engine(sqlalchemy_url(dsn))
    try:
        native = await run_workload(engine, workload, batching=None, **kw)
        results = []
        for label, options in modes:
            other = await run_workload(engine, workload, batching=options, **kw)
            assert_same(native, other, label)
            results.append((label, options, other))
        return native, results
    finally:
        await engine.dispose()


def assert_fast_reports(
    results: Sequence[tuple[str, dict[str, Any], Outcome]],
    *,
    native_reason: str | None = None,
    partly: bool = False,
    which: int = 0,
) -> None:
    """For every mode that runs the fast path at any flush size, the flush report (the
    ``which``-th snapshot's): all objects accelerated; or, given ``native_reason``, a
    fallback with that reason and nothing accelerated (``partly``: something still is)."""
    for label, options, other in results:
        if options.get("small_flush") != 0:
            continue
        report = other.reports[which]
        assert report is not None, label
        if native_reason is None:
            assert report.accelerated, (label, report.summary())
            assert not report.native, (label, report.summary())
            continue
        assert bool(report.accelerated) == partly, (label, report.summary())
        assert any(native_reason in f.reason for f in report.fallbacks), (label, report.summary())


async def flush_and_commit(run: Run, created: Sequence[Any], top: Sequence[Any]) -> None:
    """Track ``created``, add ``top``, flush and commit, with a snapshot after each."""
    run.track(*created)
    run.session.add_all(top)
    await run.session.flush()
    run.snapshot("flush")
    await run.session.commit()
    run.snapshot("commit")
