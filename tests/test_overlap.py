"""The last COPY of a flush that is all async_batch's own: its objects are adopted while the
server stores the rows and checks their constraints (``_writer.start_copy``), and the adoption
is undone exactly if the COPY fails (``_sa.Adoption``). Listeners that could see the adoption,
or use the connection, before the COPY's outcome is known keep the write waited for first.

And the first table's COPY, sent before the keys are copied along relationships when none of
them lands in its rows (``FlushRun._send_first``): its outcome is read where it would have
been written."""

from __future__ import annotations

import weakref
from typing import Any

import pytest
from sqlalchemy import ForeignKey, MetaData, String, delete, event, func, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from async_batch import _sa, enable_async_batching, last_flush
from tests.support import session_state


class Base(DeclarativeBase):
    metadata = MetaData()


class Crate(Base):
    __tablename__ = "crate"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(30))
    jars: Mapped[list[Jar]] = relationship(back_populates="crate")


class Jar(Base):
    __tablename__ = "jar"
    id: Mapped[int] = mapped_column(primary_key=True)
    crate_id: Mapped[int] = mapped_column(ForeignKey("crate.id"))
    content: Mapped[str] = mapped_column(String(10))
    crate: Mapped[Crate] = relationship(back_populates="jars")


@pytest.fixture
async def tables(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    return engine


def _crates(n: int) -> list[Crate]:
    return [
        Crate(label=f"c{i}", jars=[Jar(content=f"j{i}{k}") for k in range(3)]) for i in range(n)
    ]


async def _fresh_maker(engine: AsyncEngine, batched: bool) -> async_sessionmaker[AsyncSession]:
    """Empty tables with their sequences restarted (the same ids in every run), and a
    sessionmaker: batched with COPY for every table, or native."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    maker = async_sessionmaker(engine)
    if batched:
        enable_async_batching(maker, small_flush=0, strategy="copy")
    return maker


def _internals(session: Session, objs: list[Any]) -> list[Any]:
    """Everything adoption changes, down to the states' own attributes."""
    trans = session._transaction
    out: list[Any] = [session_state(session, objs)]
    for obj in objs:
        st = inspect(obj)
        out.append(
            (
                sorted(vars(st).items(), key=lambda kv: kv[0]),
                dict(st.committed_state),
                set(st.expired_attributes),
                st in session.identity_map._modified,
                trans is not None and st in trans._new,
                trans is not None and st in trans._dirty,
            )
        )
    out.append(list(session._new))
    out.append(sorted(map(repr, session.identity_map.keys())))
    return out


@pytest.mark.asyncio
async def test_undone_adoption_leaves_the_objects_as_before(tables: AsyncEngine) -> None:
    """Adopted, then undone: the objects, the identity map, the session's and its
    transaction's bookkeeping are as before, attribute for attribute."""
    async with AsyncSession(tables) as s:
        (await s.scalars(select(Crate).limit(1))).all()  # a transaction, an identity map
        objs: list[Any] = []
        for i, crate in enumerate(_crates(3)):
            crate.id = 100 + i
            for k, jar in enumerate(crate.jars):
                jar.id = 100 + 10 * i + k
                jar.crate_id = crate.id
            objs += [crate, *crate.jars]
        objs[1].content = "changed"  # set twice: one committed-state entry, modified
        s.add_all(objs)
        # an expired attribute adoption drops (its value is in the dict): restored too
        inspect(objs[2]).expired_attributes.add("content")

        def adopt_and_undo(session: Session) -> None:
            before = _internals(session, objs)
            states = [inspect(o) for o in objs]
            groups = _sa.group_by_mapper(states)
            dicts = _sa.state_dicts(states)
            adoption = _sa.Adoption()
            _sa.register_persistent(session, groups, dicts, adoption)
            assert all(st.persistent for st in states)
            assert not session.new
            adoption.undo(session)
            assert _internals(session, objs) == before
            assert all(st.pending for st in states)
            assert inspect(objs[2]).expired_attributes == {"content"}
            inspect(objs[2]).expired_attributes.clear()

        await s.run_sync(adopt_and_undo)
        # still the session's pending objects: a flush writes them
        await s.commit()
        assert await s.scalar(select(func.count()).select_from(Jar)) == 9


@pytest.mark.asyncio
async def test_adoption_of_a_key_that_cannot_be_hashed(tables: AsyncEngine) -> None:
    """A primary key value the identity map cannot hash fails adoption with the error the
    session's own bookkeeping raises, and leaves the identity map as it was: no entry for an
    object that has no identity key (the states before it were placed in the same pass)."""
    async with AsyncSession(tables) as s:
        crates = _crates(3)
        for i, crate in enumerate(crates):
            crate.id = 100 + i
        s.add_all(crates)

        def adopt(session: Session) -> None:
            before = _internals(session, crates)
            crates[1].id = [101]  # type: ignore[assignment]  # a list: unhashable
            states = [inspect(c) for c in crates]
            groups = _sa.group_by_mapper(states)
            dicts = _sa.state_dicts(states)
            with pytest.raises(TypeError, match="unhashable"):
                _sa.register_persistent(session, groups, dicts, _sa.Adoption())
            assert not session.identity_map._dict
            crates[1].id = 101
            assert _internals(session, crates) == before
            assert all(st.pending for st in states)

        await s.run_sync(adopt)
        await s.commit()
        assert await s.scalar(select(func.count()).select_from(Crate)) == 3


@pytest.mark.asyncio
async def test_adoption_waits_for_a_failed_last_copy(tables: AsyncEngine) -> None:
    """The last table's COPY fails on a constraint the server checks at the end of the
    statement (a foreign key): the objects are left as a failed native flush leaves them,
    nothing is written, and the corrected objects are written after the rollback."""
    results = []
    for batched in (False, True):
        maker = await _fresh_maker(tables, batched)
        async with maker() as s:
            crates = _crates(4)
            jars = [j for c in crates for j in c.jars]
            s.add_all(crates)
            await s.flush()
            ids = [c.id for c in crates]
            await s.commit()
            # a second flush: new jars of persistent crates, one of them deleted behind the
            # session's back (its row gone, so the jars' foreign key fails)
            extra = [Jar(content=f"x{i}", crate_id=ids[i % 4]) for i in range(20)]
            async with tables.begin() as other:
                await other.execute(delete(Jar).where(Jar.crate_id == ids[3]))
                await other.execute(delete(Crate).where(Crate.id == ids[3]))
            s.add_all(extra)
            with pytest.raises(IntegrityError) as failed:
                await s.flush()
            state = await s.run_sync(session_state, extra)
            report = last_flush(s)
            await s.rollback()
            after = await s.run_sync(session_state, extra)
            for j in extra:
                if j.crate_id == ids[3]:
                    j.crate_id = ids[0]
            s.add_all(extra)
            await s.commit()
            count = await s.scalar(select(func.count()).select_from(Jar))
            results.append((type(failed.value), state, after, count))
            if batched:
                # failed in async_batch's own COPY, the flush's last write
                assert report is not None
                assert report.error is not None
                assert "COPY jar" in report.error, report.summary()
            del jars
    native, ours = results
    assert ours[0] is native[0]
    assert ours[1] == native[1]
    assert ours[2] == native[2]
    assert ours[3] == native[3] == 29


@pytest.mark.asyncio
@pytest.mark.parametrize("event_name", ["after_flush", "pending_to_persistent"])
async def test_listeners_see_the_last_copy_done(tables: AsyncEngine, event_name: str) -> None:
    """An ``after_flush`` or ``pending_to_persistent`` listener may use the connection (and
    sees the adoption): the last COPY is waited for before it runs."""
    maker = async_sessionmaker(tables)
    enable_async_batching(maker, small_flush=0, strategy="copy")
    seen: list[int | None] = []

    def count_jars(session: Session, *_args: Any) -> None:
        if not seen:
            seen.append(session.connection().scalar(select(func.count()).select_from(Jar)))

    async with maker() as s:
        event.listen(s.sync_session, event_name, count_jars)
        s.add_all(_crates(50))
        await s.commit()
        report = last_flush(s)
    assert report is not None
    assert report.accelerated == 200
    assert seen == [150]


@pytest.mark.asyncio
async def test_objects_freed_once_committed(tables: AsyncEngine) -> None:
    """The adoption's record of the objects is dropped with the flush: nothing keeps them."""
    maker = async_sessionmaker(tables)
    enable_async_batching(maker, small_flush=0, strategy="copy")
    async with maker() as s:
        crates = _crates(10)
        s.add_all(crates)
        await s.commit()
        refs = [weakref.ref(c) for c in crates]
        del crates
    assert all(r() is None for r in refs)


# -- the first table's COPY, sent before the keys are copied along relationships ---------------


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The order in which the flush starts COPYs (by table) and copies keys (``_sync``)."""
    from async_batch import _flush, _writer

    log: list[str] = []
    start_copy, sync = _writer.start_copy, _flush.FlushRun._sync

    def spy_start(connection: Any, job: Any) -> Any:
        log.append(f"copy {job.name}")
        return start_copy(connection, job)

    def spy_sync(self: Any, *args: Any) -> Any:
        log.append("sync")
        return sync(self, *args)

    monkeypatch.setattr(_writer, "start_copy", spy_start)
    monkeypatch.setattr(_flush.FlushRun, "_sync", spy_sync)
    return log


@pytest.mark.asyncio
async def test_first_copy_sent_before_the_keys_are_copied(
    tables: AsyncEngine, sends: list[str]
) -> None:
    """The crates' COPY holds no key the flush copies along a relationship (those land in
    the jars): it is on its way before the jars get their crates' ids, and the flush ends
    as a native one does."""
    outcomes = []
    for batched in (False, True):
        maker = await _fresh_maker(tables, batched)
        async with maker() as s:
            crates = _crates(5)
            objs = [o for c in crates for o in (c, *c.jars)]
            s.add_all(crates)
            await s.flush()
            flushed = await s.run_sync(session_state, objs)
            report = last_flush(s)
            await s.commit()
            committed = await s.run_sync(session_state, objs)
            rows = (await s.execute(select(Jar.content, Crate.label).join(Jar.crate))).all()
        outcomes.append((flushed, committed, sorted(rows)))
        if batched:
            assert report is not None
            assert report.accelerated == 20
            assert [(t.table, t.strategy) for t in report.tables] == [
                ("crate", "copy"),
                ("jar", "copy"),
            ]
    assert sends == ["copy crate", "sync", "copy jar"]
    assert outcomes[0] == outcomes[1]


@pytest.mark.asyncio
@pytest.mark.parametrize("at", ["first", "middle", "last"])
async def test_failed_first_copy_sent_early(tables: AsyncEngine, sends: list[str], at: str) -> None:
    """The crates' COPY, sent before the keys are copied, fails (a primary key taken behind
    the session's back): the flush fails where a native one does, the keys copied meanwhile
    are undone with it, nothing is written, and the objects are written after the
    rollback."""
    results = []
    for batched in (False, True):
        maker = await _fresh_maker(tables, batched)
        async with maker() as s:
            crates = _crates(6)
            for i, crate in enumerate(crates):
                crate.id = 1000 + i
            bad = {"first": 0, "middle": 3, "last": 5}[at]
            async with tables.begin() as other:
                await other.execute(Crate.__table__.insert().values(id=1000 + bad, label="x"))
            objs = [o for c in crates for o in (c, *c.jars)]
            s.add_all(crates)
            with pytest.raises(IntegrityError) as failed:
                await s.flush()
            state = await s.run_sync(session_state, objs)
            report = last_flush(s)
            await s.rollback()
            after = await s.run_sync(session_state, objs)
            async with tables.begin() as other:
                await other.execute(delete(Crate).where(Crate.id == 1000 + bad))
            s.add_all(crates)
            await s.commit()
            count = await s.scalar(select(func.count()).select_from(Jar))
            results.append((type(failed.value), state, after, count))
            if batched:
                assert report is not None
                assert report.error is not None
                assert "COPY crate" in report.error, report.summary()
    native, ours = results
    assert sends[:3] == ["copy crate", "sync", "copy crate"]  # the retry sends it early too
    assert ours == native
    assert native[3] == 18


class Folder(Base):
    __tablename__ = "folder"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("folder.id"))
    name: Mapped[str] = mapped_column(String(30))
    children: Mapped[list[Folder]] = relationship()
    notes: Mapped[list[Note]] = relationship()


class Note(Base):
    __tablename__ = "note"
    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("folder.id"))
    text: Mapped[str] = mapped_column(String(30))


@pytest.mark.asyncio
async def test_first_copy_waits_for_keys_it_holds(tables: AsyncEngine, sends: list[str]) -> None:
    """Folders inside new folders: the flush copies keys into the first table's own rows
    (``parent_id``), so they are copied before its COPY is built and sent, as always."""
    outcomes = []
    for batched in (False, True):
        maker = await _fresh_maker(tables, batched)
        async with maker() as s:
            tops = [
                Folder(
                    name=f"f{i}",
                    children=[Folder(name=f"f{i}{k}") for k in range(2)],
                    notes=[Note(text=f"n{i}{k}") for k in range(2)],
                )
                for i in range(3)
            ]
            objs = [o for f in tops for o in (f, *f.children, *f.notes)]
            s.add_all(tops)
            await s.commit()
            report = last_flush(s)
            outcomes.append(await s.run_sync(session_state, objs))
        if batched:
            assert report is not None
            assert report.accelerated == 15, report.summary()
    assert sends == ["sync", "copy folder", "copy note"]
    assert outcomes[0] == outcomes[1]


@pytest.mark.asyncio
async def test_failure_while_first_copy_in_flight(
    tables: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something fails while the first table's COPY is in flight (here: the key copying
    itself): the COPY is waited for (the connection is busy until then), the error is the
    flush's, and after the rollback the same objects are written."""
    from async_batch import _flush

    sync = _flush.FlushRun._sync
    calls: list[int] = []

    def failing_sync(self: Any, *args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            assert self._early is not None  # the crates' COPY is on its way
            raise RuntimeError("boom while copying keys")
        return sync(self, *args)

    monkeypatch.setattr(_flush.FlushRun, "_sync", failing_sync)
    maker = async_sessionmaker(tables)
    enable_async_batching(maker, small_flush=0, strategy="copy")
    async with maker() as s:
        crates = _crates(5)
        objs = [o for c in crates for o in (c, *c.jars)]
        before = await s.run_sync(session_state, objs)
        s.add_all(crates)
        with pytest.raises(RuntimeError, match="boom"):
            await s.flush()
        await s.rollback()
        assert await s.run_sync(session_state, objs) == before
        s.add_all(crates)
        await s.commit()
        report = last_flush(s)
        assert report is not None
        assert report.accelerated == 20, report.summary()
        assert await s.scalar(select(func.count()).select_from(Jar)) == 15
        assert await s.scalar(select(func.count()).select_from(Crate)) == 5
