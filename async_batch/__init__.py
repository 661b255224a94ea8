"""Fast bulk inserts for SQLAlchemy ``AsyncSession`` + asyncpg, with no change to app code.

``enable_async_batching(target)`` hooks the flush of exactly ``target`` (a session, a
sessionmaker or a Session subclass): new objects are given database ids in one round trip and
written per table through asyncpg (COPY, ``unnest`` or pipelined executemany) on the session's
own connection and transaction; the session ends up exactly as after a native flush. Anything
that cannot be reproduced exactly is left to SQLAlchemy's own flush, and ``last_flush()`` says
why.

Do not use it when you need ``Session.flush(objects)`` subset semantics for speed (those stay
native), or on a dialect other than PostgreSQL + asyncpg (everything stays native there).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from ._hook import disable, enable, is_enabled, reserve
from ._report import Fallback, FlushReport, TableWrite, last_flush
from ._sequences import clear_cache as _clear_sequence_cache

__all__ = [
    "Fallback",
    "FlushReport",
    "TableWrite",
    "clear_catalog_cache",
    "disable_async_batching",
    "enable_async_batching",
    "is_batching_enabled",
    "last_flush",
    "reserve_ids",
]

__version__ = "0.1.0"


def enable_async_batching(target: Any, **options: Any) -> None:
    """Accelerate flushes of ``target``: an ``AsyncSession``, an ``async_sessionmaker``, a
    ``Session``, a ``sessionmaker``, a scoped session, or a ``Session`` subclass.

    Only that target is affected (for a sessionmaker: the sessions it makes; for a class: it
    and its subclasses). Calling it again is a no-op, except that keyword options given again
    replace the earlier ones.

    Options: ``strategy`` (``"auto"``, ``"copy"``, ``"unnest"``, ``"executemany"``),
    ``fast_path`` (``False`` to only prefetch ids and regroup, letting SQLAlchemy write),
    ``prefetch`` (``"auto"``, ``"always"``, ``"never"``), ``regroup`` (bool),
    ``small_flush`` (default 32: flushes of fewer new objects stay native when native needs
    no more round trips; ``0`` batches every flush), ``pause_gc`` (bool).
    """
    enable(target, **options)


def disable_async_batching(target: Any) -> None:
    """Undo ``enable_async_batching(target)``; a no-op if it was not enabled."""
    disable(target)


def is_batching_enabled(target: Any) -> bool:
    """Whether ``target`` (or, for a session, its class) has batching enabled."""
    return is_enabled(target)


async def reserve_ids(session: AsyncSession | Session, objects: Iterable[Any]) -> None:
    """Give new objects their database ids now, before any flush, in one round trip.

    Objects that already have an id are left alone. Raises ``ValueError`` naming the class
    whose primary key is not a sequence-generated integer.
    """
    objs = list(objects)
    if isinstance(session, AsyncSession):
        await session.run_sync(lambda s: reserve(s, objs))
    elif isinstance(session, Session):
        reserve(session, objs)
    else:
        raise TypeError(
            f"reserve_ids() takes an AsyncSession or Session, not {type(session).__name__}"
        )


def clear_catalog_cache() -> None:
    """Forget what async_batch learned from the database catalog and the mappers (per
    engine: triggers, rules, column types, sequences). Call it after DDL in a running
    process -- a trigger created, a partition attached, a column retyped -- so the next
    flush looks again; processes started after a migration need nothing."""
    from ._planner import clear_cache

    clear_cache()
    _clear_sequence_cache()
