"""Helpers for the web-example tests (payloads, database checks, flush-report capture).

Fixtures stay in the test modules; these are plain functions and context managers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session

from async_batch import FlushReport, last_flush
from async_batch.testing import TrafficWindow, WireProxy, sqlalchemy_url
from examples.common.models import Annotation, Base, Sequence

POOL_SIZE = 20
BASES = "ACGTACGTAC" * 3  # 30 bases
SPANS = ((0, 10), (10, 20), (5, 30))

# The tables one import writes, parents first.
TABLES = ("sequences", "annotations", "samples", "dna_samples", "rna_samples")
ZERO = dict.fromkeys(TABLES, 0)


def warm_bound(tables: int) -> int:
    """Round trips of one ``POST /sequences`` on a pooled connection that imported before:
    BEGIN + 1 id prefetch + one COPY (or INSERT) per table + COMMIT. The endpoint runs no other
    query. Measured for 500 sequences x 3 annotations: 5 (2 tables); with samples: 8 (5)."""
    return 1 + 1 + tables + 1


def cold_bound(tables: int) -> int:
    """... on a pooled connection's first import, which also pays once per connection for
    asyncpg preparing the prefetch statement and each COPY's column lookup (1 + T) and
    introspecting the prefetch's array types, int4[] and int8[] (3 queries, each prepared
    first: 6). Measured: 14 (2 tables) and 20 (5 tables)."""
    return warm_bound(tables) + (1 + tables) + 6


@contextlib.asynccontextmanager
async def app_engine(proxy: WireProxy, dsn: str) -> AsyncIterator[AsyncEngine]:
    """An engine through ``proxy`` with a pool big enough for 20 concurrent requests, disposed
    of at exit (the ``db`` fixture of each example's tests)."""
    engine = create_async_engine(
        sqlalchemy_url(proxy.dsn_for(dsn)), pool_size=POOL_SIZE, max_overflow=0
    )
    try:
        yield engine
    finally:
        await engine.dispose()


async def open_pool(engine: AsyncEngine) -> None:
    """Open all the pool's connections up front (and return them to it): connecting costs its
    own round trips, which a measured window should not see."""
    conns = await asyncio.gather(*(engine.connect() for _ in range(POOL_SIZE)))
    for conn in conns:
        await conn.close()


def payload(
    prefix: str, n: int, *, annotations: int = 3, samples: bool = False
) -> list[dict[str, Any]]:
    """``n`` valid sequences named ``{prefix}-{i}``, each with ``annotations`` annotations and,
    with ``samples``, one DNA or RNA sample (alternating)."""
    items: list[dict[str, Any]] = []
    for i in range(n):
        item: dict[str, Any] = {
            "name": f"{prefix}-{i}",
            "bases": BASES,
            "annotations": [
                {"label": f"feature-{j}", "start": SPANS[j % 3][0], "end": SPANS[j % 3][1]}
                for j in range(annotations)
            ],
        }
        if samples:
            item["samples"] = [
                {"kind": "dna", "concentration_ng_ul": 10.0 + i}
                if i % 2 == 0
                else {"kind": "rna", "rin": 7.5}
            ]
        items.append(item)
    return items


# Bodies POST /sequences must reject with 422: (id, body, part of the message).
_GOOD = {"name": "good", "bases": BASES, "annotations": []}
_MALFORMED: list[tuple[str, Any, str]] = [
    ("not an array", {"name": "x", "bases": "ACGT"}, "Input should be a valid"),  # list or array
    ("missing bases", [{"name": "x"}], "Field required"),
    ("not DNA", [{**_GOOD, "bases": "ACGU"}], "String should match pattern"),
    ("empty name", [{**_GOOD, "name": ""}], "at least 1 character"),
    (
        "reversed annotation",
        [{**_GOOD, "annotations": [{"label": "a", "start": 5, "end": 2}]}],
        "annotation end (2) is before its start (5)",
    ),
    (
        "annotation past the end",
        [{**_GOOD, "annotations": [{"label": "a", "start": 0, "end": 31}]}],
        "ends at 31, past the end of the 30 bases",
    ),
    ("unknown sample kind", [{**_GOOD, "samples": [{"kind": "protein"}]}], "'dna', 'rna'"),
    ("unknown field", [{**_GOOD, "colour": "blue"}], "Extra inputs are not permitted"),
]
# For ``pytest.mark.parametrize(("body", "message"), MALFORMED)``.
MALFORMED = [pytest.param(body, message, id=id_) for id_, body, message in _MALFORMED]


async def table_counts(engine: AsyncEngine) -> dict[str, int]:
    """Rows per example table."""
    counts: dict[str, int] = {}
    async with engine.connect() as conn:
        for name in TABLES:
            table = Base.metadata.tables[name]
            result = await conn.execute(select(func.count()).select_from(table))
            counts[name] = result.scalar_one()
    return counts


async def assert_imported(
    engine: AsyncEngine,
    before: dict[str, int],
    bodies: list[list[dict[str, Any]]],
    responses: list[list[int]],
) -> None:
    """Each request's sequences and annotations (no samples) are all in the database, the ids
    are unique, and each response lists the ids the database holds for its names, in order."""
    all_ids = [i for ids in responses for i in ids]
    assert len(all_ids) == len(set(all_ids)) == sum(len(body) for body in bodies)
    async with engine.connect() as conn:
        for body, ids in zip(bodies, responses, strict=True):
            names = [item["name"] for item in body]
            rows = await conn.execute(
                select(Sequence.name, Sequence.id).where(Sequence.name.in_(names))
            )
            in_db = {name: id_ for name, id_ in rows}
            assert [in_db.get(name) for name in names] == ids
        counted = await conn.execute(
            select(Annotation.sequence_id, func.count())
            .where(Annotation.sequence_id.in_(all_ids))
            .group_by(Annotation.sequence_id)
        )
        per_sequence = {sequence_id: n for sequence_id, n in counted}
    expected = {
        i: len(item["annotations"])
        for body, ids in zip(bodies, responses, strict=True)
        for i, item in zip(ids, body, strict=True)
    }
    assert per_sequence == {i: n for i, n in expected.items() if n}
    after = await table_counts(engine)
    assert after["sequences"] - before["sequences"] == len(all_ids)
    assert after["annotations"] - before["annotations"] == sum(expected.values())


async def assert_pool_healthy(engine: AsyncEngine) -> None:
    """Every connection is back in the pool and each pooled one answers a query."""
    for _ in range(200):
        if engine.pool.checkedout() == 0:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.01)
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    pooled = engine.pool.checkedin()  # type: ignore[attr-defined]
    conns = [await engine.connect() for _ in range(max(pooled, 1))]
    try:
        for conn in conns:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        for conn in conns:
            await conn.close()


async def wait_for_messages(
    window: TrafficWindow, message: str, count: int, task: asyncio.Task[Any]
) -> None:
    """Return as soon as the proxy has seen ``count`` client messages of type ``message`` in
    ``window`` (checked at every event-loop turn); fail if ``task`` ends first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while window.messages[message] < count:
        if task.done():
            raise AssertionError(f"request ended before {count} {message!r} messages: {task}")
        assert loop.time() < deadline, f"no {count} {message!r} messages within 30 s"
        await asyncio.sleep(0)


@contextlib.contextmanager
def capture_flush_reports() -> Iterator[list[FlushReport]]:
    """Collect ``last_flush(session)`` after every flush of any Session while active."""
    reports: list[FlushReport] = []

    def on_flush(session: Session, _ctx: Any) -> None:
        report = last_flush(session)
        if report is not None and all(report is not seen for seen in reports):
            reports.append(report)

    event.listen(Session, "after_flush_postexec", on_flush)
    try:
        yield reports
    finally:
        event.remove(Session, "after_flush_postexec", on_flush)
