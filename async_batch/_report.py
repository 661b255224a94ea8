"""What the last flush did: per table rows, strategy and statements; every fallback and why."""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

logger = logging.getLogger("async_batch")


@dataclass(frozen=True)
class TableWrite:
    """Rows async_batch wrote to one table in one flush."""

    table: str
    rows: int
    strategy: str
    """``copy``, ``unnest`` or ``executemany`` (our writer), or ``native`` (SQLAlchemy's
    own INSERTs, with ids we prefetched)."""
    statements: int


@dataclass(frozen=True)
class Fallback:
    """Objects left to SQLAlchemy's native flush, and why."""

    what: str
    """A mapper/class name, or ``flush`` when the whole flush stayed native."""
    reason: str
    objects: int = 0


@dataclass
class FlushReport:
    """What one flush did. ``last_flush(session)`` returns the most recent one."""

    accelerated: int = 0
    """Objects written by async_batch's own writer."""
    native: int = 0
    """Objects written by SQLAlchemy's unit of work."""
    prefetched_ids: int = 0
    prefetch_round_trips: int = 0
    tables: list[TableWrite] = field(default_factory=list)
    fallbacks: list[Fallback] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds spent per step inside the flush (plan, prefetch, rows, write, native, adopt)."""

    @property
    def statements(self) -> int:
        return sum(t.statements for t in self.tables if t.strategy != "native")

    def summary(self) -> str:
        parts = [
            f"accelerated={self.accelerated} native={self.native} "
            f"prefetched_ids={self.prefetched_ids} (round trips {self.prefetch_round_trips})"
        ]
        parts.extend(
            f"  {t.table}: {t.rows} rows via {t.strategy} in {t.statements} statement(s)"
            for t in self.tables
        )
        parts.extend(
            f"  fallback {f.what} ({f.objects} objects): {f.reason}" for f in self.fallbacks
        )
        return "\n".join(parts)


_reports: weakref.WeakKeyDictionary[Session, FlushReport] = weakref.WeakKeyDictionary()


def store(session: Session, report: FlushReport) -> None:
    _reports[session] = report
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("flush report\n%s", report.summary())


def last_flush(session: Any) -> FlushReport | None:
    """The report of the most recent flush of ``session`` (an ``AsyncSession`` or ``Session``)
    that async_batch handled, or ``None`` if batching never ran on it."""
    if isinstance(session, AsyncSession):
        session = session.sync_session
    if not isinstance(session, Session):
        raise TypeError(
            f"last_flush() takes an AsyncSession or Session, not {type(session).__name__}"
        )
    return _reports.get(session)
