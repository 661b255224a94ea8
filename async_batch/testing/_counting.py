"""Count the statements SQLAlchemy sends to the driver.

This sees what SQLAlchemy *asks* the DBAPI to do, one record per ``cursor.execute`` or
``cursor.executemany``. It does not see round trips (an executemany over asyncpg is one), nor
statements sent through the raw driver connection behind SQLAlchemy's back: count those on the
wire with `WireProxy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, NamedTuple

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["RecordedStatement", "StatementCounter"]


class RecordedStatement(NamedTuple):
    """One DBAPI call as SQLAlchemy made it."""

    statement: str
    executemany: bool
    parameter_count: int
    """For an executemany: the number of parameter sets (rows). Otherwise: the number of bound
    values in the one parameter set (e.g. 5,000 for a 1,000-row, 5-column insertmanyvalues
    batch), 0 when there are none."""
    parameters: Any
    """The parameters as passed to the DBAPI cursor."""


def _parameter_count(parameters: Any, executemany: bool) -> int:
    if parameters is None:
        return 0
    if isinstance(parameters, (Sequence, dict)) and not isinstance(parameters, (str, bytes)):
        return len(parameters)
    return 1 if executemany else 0


class StatementCounter:
    """Record every statement an engine's connections execute.

    ``with StatementCounter(engine) as sc: ...`` then ``sc.count`` and ``sc.statements``.
    ``engine`` may be an ``AsyncEngine`` (the listener goes on its ``sync_engine``), an
    ``Engine`` or a ``Connection``. The listener is removed on exit (or by `stop`).
    """

    def __init__(self, engine: AsyncEngine | Engine | Connection) -> None:
        self._target: Engine | Connection = (
            engine.sync_engine if isinstance(engine, AsyncEngine) else engine
        )
        self.statements: list[RecordedStatement] = []
        self._active = False

    @property
    def count(self) -> int:
        """Number of DBAPI ``execute``/``executemany`` calls recorded."""
        return len(self.statements)

    @property
    def executemany_count(self) -> int:
        """How many of the recorded calls were ``executemany``."""
        return sum(1 for s in self.statements if s.executemany)

    @property
    def texts(self) -> list[str]:
        """The SQL text of each recorded call."""
        return [s.statement for s in self.statements]

    def clear(self) -> None:
        """Forget what was recorded so far."""
        self.statements.clear()

    def start(self) -> StatementCounter:
        if not self._active:
            event.listen(self._target, "before_cursor_execute", self._record)
            self._active = True
        return self

    def stop(self) -> None:
        if self._active:
            event.remove(self._target, "before_cursor_execute", self._record)
            self._active = False

    def __enter__(self) -> StatementCounter:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _record(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        self.statements.append(
            RecordedStatement(
                statement=statement,
                executemany=bool(executemany),
                parameter_count=_parameter_count(parameters, bool(executemany)),
                parameters=parameters,
            )
        )
