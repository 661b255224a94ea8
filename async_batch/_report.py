"""What the last flush did: per table rows, strategy and statements; every fallback and why."""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import StatementError
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
    error: str | None = None
    """Why the flush failed -- the exception's type and first line, and for a statement's
    failure the statement in short (which names the table) -- or None. What it wrote is rolled
    back with the transaction: the counts above say what it was doing."""

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
        if self.error is not None:
            parts.append(f"  failed: {self.error}")
        return "\n".join(parts)


_reports: weakref.WeakKeyDictionary[Session, FlushReport] = weakref.WeakKeyDictionary()


def store(session: Session, report: FlushReport) -> None:
    """Make ``report`` the session's last one (as its flush starts: a flush that fails is
    reported too)."""
    _reports[session] = report


def log(report: FlushReport) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("flush report\n%s", report.summary())


def current(session: Session) -> FlushReport | None:
    return _reports.get(session)


def mark_failed(session: Session, before: FlushReport | None, err: BaseException) -> None:
    """Record on the report of the flush that just raised ``err`` (if async_batch handled it:
    its report is not ``before``, the one from before the flush) why it failed."""
    report = _reports.get(session)
    if report is None or report is before or report.error is not None:
        return
    # a StatementError's own text ends with its statement and parameters: the first line,
    # and the statement (which names the table) in short
    text = getattr(err, "orig", None) if isinstance(err, StatementError) else None
    try:
        lines = str(err if text is None else text).strip().splitlines()
    except Exception:  # an exception whose text cannot be made: its type says enough
        lines = []
    error = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    statement = getattr(err, "statement", None)
    if isinstance(statement, str) and statement:
        short = " ".join(statement.split())
        error += f" [{short[:77]}...]" if len(short) > 80 else f" [{short}]"
    report.error = error
    log(report)


def last_flush(session: Any) -> FlushReport | None:
    """The report of the most recent flush of ``session`` (an ``AsyncSession`` or ``Session``)
    that async_batch handled, or ``None`` if batching never ran on it. A flush that failed
    has one too, with ``error`` set (one that failed before async_batch saw it -- in a
    ``before_flush`` listener, say -- leaves the previous report)."""
    if isinstance(session, AsyncSession):
        session = session.sync_session
    if not isinstance(session, Session):
        raise TypeError(
            f"last_flush() takes an AsyncSession or Session, not {type(session).__name__}"
        )
    return _reports.get(session)
