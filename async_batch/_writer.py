"""Send one table's rows in one go, on the session's own connection and transaction.

Three strategies behind one function:

- ``executemany``: ``INSERT ... VALUES ($1, ...)`` through asyncpg's pipelined executemany
  (one Sync for all rows; each row is its own statement, so self-referencing rows are sent
  parents first).
- ``unnest``: one fixed ``INSERT ... SELECT * FROM unnest($1::t[], ...)`` statement for any
  number of rows (prepared once). Arrays are cast to the column's unconstrained base type so
  that the INSERT's assignment, not the cast, enforces lengths (a ``varchar(20)[]`` cast would
  silently truncate). Can return server defaults.
- ``copy``: binary COPY (``copy_records_to_table``); its column-type introspection is a
  prepared statement asyncpg caches per connection, so a warm COPY is one round trip.

Statements the writer sends through SQLAlchemy (unnest, executemany) get SQLAlchemy's error
handling directly; COPY errors are translated by ``_sa.raise_dbapi_error`` the same way.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from . import _sa

STRATEGIES = ("auto", "copy", "unnest", "executemany")

# Crossover measured on a warm loopback connection (10,000-row item table, medians of flush
# times per strategy): up to ~8 rows a pipelined executemany is cheapest (no arrays to build, no
# COPY framing); from 16 rows on COPY wins, by ~15 % over unnest and ~30 % over executemany at
# 2,000 rows. All three cost one round trip once their statements are prepared.
AUTO_SMALL = 8


@dataclass
class TableJob:
    table_ref: str
    schema: str | None
    name: str
    columns: list[str]
    rows: list[tuple[Any, ...]]
    returning: list[str]
    column_types: dict[str, str]
    array_columns: frozenset[str]
    overriding: bool
    """GENERATED ALWAYS identity: explicit ids need OVERRIDING SYSTEM VALUE (COPY takes them)."""
    self_ref: list[tuple[int, int]] | None = None
    """For executemany: (pk index, fk index) pairs of self-referencing foreign keys."""
    column_oids: Mapping[str, int] = field(default_factory=dict)
    """column name -> type OID, for the result processing of RETURNING values."""
    sql_defaults: list[tuple[str, str]] = field(default_factory=list)
    """(column, SQL) for columns whose SQL-expression default the statement renders."""
    no_copy: bool = False
    """Binary COPY cannot write these rows: row-level security is enabled on the table (COPY
    FROM is refused for the roles it applies to, an INSERT is not), or a column's type has
    no binary encoder in asyncpg (citext, hstore, macaddr, money, ...)."""


def choose(job: TableJob, forced: str) -> str:
    can_unnest = not (set(job.columns) & job.array_columns) and all(
        c in job.column_types for c in job.columns
    )
    small = len(job.rows) <= AUTO_SMALL
    if job.returning:
        # COPY cannot return rows.
        if forced == "executemany" or not can_unnest or (forced == "auto" and small):
            return "executemany"
        return "unnest"
    if job.no_copy and forced in ("auto", "copy", "unnest"):
        return "unnest" if can_unnest and not (forced == "auto" and small) else "executemany"
    if forced != "auto":
        if forced == "unnest" and not can_unnest:
            return "copy"
        return forced
    return "executemany" if small else "copy"


def _quote(connection: Connection, name: str) -> str:
    return str(connection.dialect.identifier_preparer.quote(name))


def write(connection: Connection, job: TableJob, strategy: str) -> list[Any]:
    """Write the job's rows; return RETURNING rows (if any), in no particular order."""
    cols = ", ".join(
        _quote(connection, c) for c in [*job.columns, *(n for n, _ in job.sql_defaults)]
    )
    overriding = " OVERRIDING SYSTEM VALUE" if job.overriding else ""
    ret = ""
    if job.returning:
        ret = " RETURNING " + ", ".join(_quote(connection, c) for c in job.returning)
    defaults = "".join(f", {sql}" for _n, sql in job.sql_defaults)
    if strategy == "unnest":
        casts = ", ".join(
            f"${i}::{job.column_types[c]}[]" for i, c in enumerate(job.columns, start=1)
        )
        if defaults:
            aliases = ", ".join(f"c{i}" for i in range(1, len(job.columns) + 1))
            select = f"SELECT {aliases}{defaults} FROM unnest({casts}) AS u({aliases})"
        else:
            select = f"SELECT * FROM unnest({casts})"
        sql = f"INSERT INTO {job.table_ref} ({cols}){overriding} {select}{ret}"
        arrays = tuple(list(col) for col in zip(*job.rows, strict=True)) if job.rows else ()
        result = connection.exec_driver_sql(sql, arrays)
        return list(result.fetchall()) if job.returning else []
    if strategy == "executemany":
        params = ", ".join(f"${i}" for i in range(1, len(job.columns) + 1))
        sql = f"INSERT INTO {job.table_ref} ({cols}){overriding} VALUES ({params}{defaults}){ret}"
        rows = _parents_first(job.rows, job.self_ref) if job.self_ref else job.rows
        if job.returning:
            _sa.ensure_transaction(connection)
            feed = _Feed(rows)
            fetched = _sa.run_raw(
                connection, lambda raw: _guarded(raw, raw.fetchmany(sql, feed), feed), sql
            )
            return [tuple(r) for r in fetched]
        if len(rows) == 1:
            connection.exec_driver_sql(sql, rows[0])
        else:
            _sa.ensure_transaction(connection)
            feed = _Feed(rows)
            _sa.run_raw(
                connection, lambda raw: _guarded(raw, raw.executemany(sql, feed), feed), sql
            )
        return []
    if strategy == "copy":
        pending = start_copy(connection, job)
        if pending is not None:
            finish(connection, pending)
        return []
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")


@dataclass
class PendingCopy:
    """A COPY whose rows are all sent, the server's answer not yet read (``start_copy``)."""

    task: asyncio.Future[Any]
    statement: str


def start_copy(connection: Connection, job: TableJob) -> PendingCopy | None:
    """Send the job's rows by binary COPY and return once they are all on their way, without
    waiting for the server to store them (and check its constraints): the caller's own work
    runs meanwhile, and ``finish`` reads the outcome. None: the COPY already completed."""
    _sa.ensure_transaction(connection)
    cols = ", ".join(_quote(connection, c) for c in job.columns)
    stmt = f"COPY {job.table_ref} ({cols}) FROM STDIN (FORMAT binary)"
    task = _sa.run_raw(connection, lambda raw: _start_copy(raw, job), stmt)
    if task.done():
        # failed while sending (a value the encoder refuses, a lost connection), or done
        _sa.run_raw(connection, lambda _raw: task, stmt)
        return None
    return PendingCopy(task, stmt)


def finish(connection: Connection, pending: PendingCopy) -> None:
    """Wait for a started COPY's outcome; its errors raised as SQLAlchemy raises them."""
    _sa.run_raw(connection, lambda _raw: pending.task, pending.statement)


async def _start_copy(raw: Any, job: TableJob) -> asyncio.Future[Any]:
    loop = asyncio.get_running_loop()
    sent = loop.create_future()
    # asyncpg encodes and sends the records as it iterates them, then (in the same step)
    # the COPY's end and CopyDone: the end of this iteration is the moment all is sent
    records = itertools.chain(job.rows, _SentSignal(sent))
    task = asyncio.ensure_future(
        _guarded(
            raw,
            raw.copy_records_to_table(
                job.name, records=records, columns=job.columns, schema_name=job.schema
            ),
        )
    )
    try:
        await asyncio.wait({sent, task}, return_when=asyncio.FIRST_COMPLETED)
        # ... and on the wire, not buffered in the transport (where only the event loop, not
        # running while the caller works, would send it); no event says the buffer is empty
        while not task.done() and _sa.driver_write_buffered(raw):  # noqa: ASYNC110
            await asyncio.sleep(0.0002)
    except asyncio.CancelledError:
        # cancelled ourselves: the COPY stops (``_guarded``), and is done before the rollback
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller gets
        raise
    return task


class _SentSignal:
    """An iterator of no items that resolves a future when it is asked for one."""

    __slots__ = ("_sent",)

    def __init__(self, sent: asyncio.Future[None]) -> None:
        self._sent = sent

    def __iter__(self) -> _SentSignal:
        return self

    def __next__(self) -> Any:
        if not self._sent.done():
            self._sent.set_result(None)
        raise StopIteration


class _Feed:
    """The rows of a pipelined executemany, as an iterator that notes when asyncpg has taken
    the last one: in that same step it appends the Sync that ends the pipeline."""

    __slots__ = ("_rows", "sent", "started")

    def __init__(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self._rows = iter(rows)
        self.started = False
        self.sent = False

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> tuple[Any, ...]:
        self.started = True
        try:
            return next(self._rows)
        except StopIteration:
            self.sent = True
            raise

    def unsynced(self) -> bool:
        """Whether asyncpg began the pipeline and has not reached its end (nor its Sync)."""
        return self.started and not self.sent


async def _guarded(raw: Any, operation: Any, feed: _Feed | None = None) -> Any:
    """Await a long-streaming asyncpg operation (COPY, or a pipelined executemany fed by
    ``feed``), guarded against a lost connection and against cancellation mid-pipeline.

    asyncpg 0.30-0.32 waits on its "writing allowed" event while the transport is paused and
    never wakes that wait when the connection is lost, so a backend killed mid-stream would
    hang the flush forever. A termination listener cancels the operation instead, and the
    flush fails with the error a statement gets when its connection drops.
    """
    task = asyncio.ensure_future(operation)
    lost = False

    def on_terminated(_con: Any) -> None:
        nonlocal lost
        lost = True
        if not task.done():
            task.cancel()

    raw.add_termination_listener(on_terminated)
    try:
        # shielded: our own cancellation must reach us (below), not be absorbed by asyncpg
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if lost and task.done():
            # the connection dropped and the termination listener stopped the operation
            import asyncpg

            raise asyncpg.exceptions.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation"
            ) from None
        # We were cancelled ourselves: stop the operation, and let asyncpg finish before
        # anything else (the rollback) uses the connection.
        while not task.done():
            # asyncpg's pipelined executemany swallows a cancellation that arrives while it is
            # still sending (its ``finally: return await waiter``); the next one cancels the
            # statement on the server
            task.cancel()
            await asyncio.wait({task}, timeout=0.05)
        if feed is not None and feed.unsynced() and task.cancelled():
            # ... but it never sends the Sync that ends the pipeline (it does with the last
            # row), so the server would wait for it and asyncpg for the server, forever. Send
            # it (asyncpg does the same when such a batch times out).
            _sa.driver_send_sync(raw)
        raise
    finally:
        raw.remove_termination_listener(on_terminated)


def _parents_first(
    rows: Sequence[tuple[Any, ...]], pairs: Sequence[tuple[int, int]]
) -> list[tuple[Any, ...]]:
    """Order rows so that a row referencing another row of the batch comes after it."""
    by_pk: dict[tuple[int, Any], int] = {}
    for i, row in enumerate(rows):
        for pk_i, _ in pairs:
            by_pk[(pk_i, row[pk_i])] = i
    out: list[tuple[Any, ...]] = []
    state = [0] * len(rows)  # 0 new, 1 visiting, 2 done
    for start in range(len(rows)):
        if state[start]:
            continue
        stack = [(start, False)]
        while stack:
            i, expanded = stack.pop()
            if expanded:
                state[i] = 2
                out.append(rows[i])
                continue
            if state[i]:
                continue
            state[i] = 1
            stack.append((i, True))
            for pk_i, fk_i in pairs:
                ref = rows[i][fk_i]
                j = by_pk.get((pk_i, ref)) if ref is not None else None
                if j is not None and state[j] == 0:
                    stack.append((j, False))
    return out
