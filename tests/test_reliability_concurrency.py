"""Issue 7, concurrency and load: many sessions, many processes -- nothing lost, nobody crossed.

After every run the database is checked as a whole: each committed object's row is there once,
with the id the object was given in memory (so no session received another's ids), every child
points at its own parent, ids are distinct, and the sequences advanced by exactly the objects
that were flushed (gaps come only from flushes that were rolled back).

``ASYNC_BATCH_STRESS=1`` runs more sessions, bigger flushes and more rounds.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from reliability_support import (
    REPO,
    STRATEGIES,
    ProcBase,
    ProcChild,
    ProcParent,
    assert_rows,
    fetch,
    fetchval,
    maker_for,
    matrix,
    scaled,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from async_batch import last_flush
from async_batch.testing import sqlalchemy_url

PARENT = "proc_parent"
CHILD = "proc_child"


@dataclass
class Outcome:
    """What one session did, from the application's point of view."""

    tag: str
    committed: bool
    flushed_objects: int
    pairs: list[tuple[str, int, str]] = field(default_factory=list)
    """(table, id, name) of every object, as the objects say after the session."""
    accelerated: int = 0


async def create_tables(dsn: str) -> None:
    engine = create_async_engine(sqlalchemy_url(dsn))
    async with engine.begin() as conn:
        await conn.run_sync(ProcBase.metadata.create_all)
    await engine.dispose()


def family(tag: str, parents: int, children: int, start: int = 0) -> list[ProcParent]:
    out = []
    for p in range(start, start + parents):
        parent = ProcParent(source=tag, name=f"{tag}-{p}")
        parent.children = [ProcChild(source=tag, name=f"{tag}-{p}-{c}") for c in range(children)]
        out.append(parent)
    return out


def pairs_of(parents: Sequence[ProcParent]) -> list[tuple[str, int, str]]:
    out = []
    for parent in parents:
        out.append((PARENT, parent.id, parent.name))
        out.extend((CHILD, child.id, child.name) for child in parent.children)
    return out


async def sequence_calls(dsn: str, table: str) -> int:
    """How many values the table's serial sequence has handed out (it starts at 1)."""
    seq = await fetchval(dsn, "SELECT pg_get_serial_sequence($1, 'id')", table)
    row = (await fetch(dsn, f"SELECT last_value, is_called FROM {seq}"))[0]
    return int(row[0]) if row[1] else 0


async def check_database(dsn: str, outcomes: Sequence[Outcome]) -> None:
    """Rows are exactly the committed objects, with the ids the objects carry; every child's
    parent is its own parent; the sequences moved by exactly the objects flushed."""
    committed = [o for o in outcomes if o.committed]
    expected = {(t, i, n) for o in committed for (t, i, n) in o.pairs}
    n_parents = sum(1 for (t, _, _) in expected if t == PARENT)
    n_children = len(expected) - n_parents
    await assert_rows(dsn, PARENT, n_parents)
    await assert_rows(dsn, CHILD, n_children)
    rows = {
        (PARENT, r["id"], r["name"]) for r in await fetch(dsn, "SELECT id, name FROM proc_parent")
    }
    rows |= {
        (CHILD, r["id"], r["name"]) for r in await fetch(dsn, "SELECT id, name FROM proc_child")
    }
    missing = expected - rows
    extra = rows - expected
    assert not missing, f"{len(missing)} committed objects have no row, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} rows belong to no committed object, e.g. {sorted(extra)[:3]}"
    crossed = await fetchval(
        dsn,
        "SELECT count(*) FROM proc_child c LEFT JOIN proc_parent p ON p.id = c.parent_id"
        " WHERE p.id IS NULL OR c.source <> p.source OR c.name NOT LIKE p.name || '-%'",
    )
    assert crossed == 0, f"{crossed} children point at another session's parent"


@pytest.mark.parametrize("strategy", matrix("auto", stress_only=STRATEGIES))
async def test_64_sessions_share_one_pool(database_dsn: str, strategy: str) -> None:
    """64 sessions (scaled up under stress) each flush 1,000 new objects (100 parents x 9
    children) at the same moment through one pool; every 8th rolls back after flushing."""
    sessions = scaled(64, 128)
    parents, children = scaled(100, 500), 9
    await create_tables(database_dsn)
    engine = create_async_engine(
        sqlalchemy_url(database_dsn),
        pool_size=sessions // 2,
        max_overflow=sessions // 2 + 4,
        pool_timeout=60,
    )
    try:
        maker = maker_for(engine, strategy, expire_on_commit=False)
        barrier = asyncio.Barrier(sessions)

        async def one(i: int) -> Outcome:
            tag = f"s{i}"
            objs = family(tag, parents, children)
            async with maker() as session:
                session.add_all(objs)
                await barrier.wait()
                await session.flush()
                report = last_flush(session)
                pairs = pairs_of(objs)
                if i % 8 == 7:
                    await session.rollback()
                    return Outcome(tag, False, len(pairs), pairs)
                await session.commit()
            return Outcome(tag, True, len(pairs), pairs, report.accelerated if report else 0)

        outcomes = await asyncio.gather(*(one(i) for i in range(sessions)))
        assert engine.pool.checkedout() == 0
    finally:
        await engine.dispose()
    await check_database(database_dsn, outcomes)
    assert all(o.accelerated == o.flushed_objects for o in outcomes if o.committed)
    flushed = sum(o.flushed_objects for o in outcomes)
    per_table = children + 1
    assert await sequence_calls(database_dsn, PARENT) == flushed // per_table
    assert await sequence_calls(database_dsn, CHILD) == flushed // per_table * children
    # rolled-back objects kept no id that a committed object also has
    handed_out = [(t, i) for o in outcomes for (t, i, _) in o.pairs]
    assert len(handed_out) == len(set(handed_out))


async def test_native_and_batched_sessions_mixed(database_dsn: str) -> None:
    """Native, copy, unnest and executemany sessions flush into the same tables at once, each
    in several rounds (flush, add more, flush, commit); some sessions hit a unique violation in
    their last flush and roll back whole. Nothing of theirs remains; everyone else's does."""
    await create_tables(database_dsn)
    conn_dsn = database_dsn
    # a unique key to violate: names are unique per table
    for stmt in (
        "CREATE UNIQUE INDEX proc_parent_name ON proc_parent (name)",
        "INSERT INTO proc_parent (id, source, name) VALUES (-1, 'seed', 'poison')",
    ):
        await fetch(conn_dsn, stmt)
    per_strategy = scaled(8, 24)
    rounds = scaled(2, 4)
    parents, children = scaled(25, 100), 9
    strategies = ("native", "copy", "unnest", "executemany")
    sessions = per_strategy * len(strategies)
    engine = create_async_engine(
        sqlalchemy_url(database_dsn), pool_size=sessions, max_overflow=4, pool_timeout=60
    )
    try:
        makers = {s: maker_for(engine, s, expire_on_commit=False) for s in strategies}

        async def one(i: int) -> Outcome:
            strategy = strategies[i % len(strategies)]
            tag = f"{strategy}{i}"
            doomed = i % 5 == 3
            all_objs: list[ProcParent] = []
            async with makers[strategy]() as session:
                for r in range(rounds):
                    objs = family(tag, parents, children, start=r * parents)
                    if doomed and r == rounds - 1:
                        objs[parents // 2].name = "poison"
                    session.add_all(objs)
                    all_objs.extend(objs)
                    await asyncio.sleep(0)  # interleave with the other sessions
                    try:
                        await session.flush()
                    except IntegrityError:
                        assert doomed
                        await session.rollback()
                        return Outcome(tag, False, 0)
                await session.commit()
                report = last_flush(session)
            assert not doomed
            accelerated = report.accelerated if report else 0
            if strategy != "native":
                assert accelerated == parents * (children + 1), report and report.summary()
            return Outcome(tag, True, 0, pairs_of(all_objs), accelerated)

        outcomes = await asyncio.gather(*(one(i) for i in range(sessions)))
        assert engine.pool.checkedout() == 0
    finally:
        await engine.dispose()
    # the seed row is not an object of any session
    await fetch(conn_dsn, "DELETE FROM proc_parent WHERE id = -1")
    await check_database(database_dsn, outcomes)
    assert any(not o.committed for o in outcomes)
    flushed_parents = sum(len(o.pairs) for o in outcomes) // (children + 1)
    assert await sequence_calls(database_dsn, PARENT) >= flushed_parents


async def test_two_processes_insert_at_once(database_dsn: str) -> None:
    """Two worker processes (``python tests/reliability_support.py worker``) insert parents
    and children through async_batch at the same time, on their own engines: no id collides,
    every row is there once, each child points at a parent of its own process."""
    await create_tables(database_dsn)
    parents, children, flushes = scaled(50, 200), 9, scaled(6, 20)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    script = str(REPO / "tests" / "reliability_support.py")
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            script,
            "worker",
            database_dsn,
            f"proc{k}",
            str(parents),
            str(children),
            str(flushes),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(REPO),
        )
        for k in range(2)
    ]
    # both workers connect first and say "ready"; then both are told to go at once
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        assert line.strip() == b"ready", line
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    results = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), timeout=120)
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()[-3000:]
        accelerated = int(out.decode().strip().rsplit("=", 1)[1])
        assert accelerated == flushes * parents * (children + 1)
    per_proc = flushes * parents
    await assert_rows(database_dsn, PARENT, 2 * per_proc)
    await assert_rows(database_dsn, CHILD, 2 * per_proc * children)
    counts = {
        r["source"]: r["n"]
        for r in await fetch(
            database_dsn, "SELECT source, count(*) AS n FROM proc_parent GROUP BY source"
        )
    }
    assert counts == {"proc0": per_proc, "proc1": per_proc}
    crossed = await fetchval(
        database_dsn,
        "SELECT count(*) FROM proc_child c LEFT JOIN proc_parent p ON p.id = c.parent_id"
        " WHERE p.id IS NULL OR c.source <> p.source OR c.name NOT LIKE p.name || '-%'",
    )
    assert crossed == 0
    # both processes really ran at the same time: their ids interleave
    spans = await fetch(
        database_dsn,
        "SELECT source, min(id) AS lo, max(id) AS hi FROM proc_parent GROUP BY source",
    )
    (_, first_hi), (second_lo, _) = sorted((r["lo"], r["hi"]) for r in spans)
    assert second_lo < first_hi, "the two processes did not overlap; the test proved nothing"
    assert await sequence_calls(database_dsn, PARENT) == 2 * per_proc
