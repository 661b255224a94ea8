"""One flush: plan, prefetch ids, write eligible rows, hand the rest to the unit of work, adopt.

Runs inside the session's own ``flush()``: ``execute`` wraps the unit of work's execute step
(inside the flush's transaction and its try/rollback), ``finalize`` wraps the step that makes
flushed objects persistent, so ``after_flush`` still sees our objects in ``session.new`` and
``after_flush_postexec`` sees them persistent, exactly as in a native flush.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import itertools
import operator
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, UniqueConstraint
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.interfaces import MANYTOMANY, MANYTOONE, ONETOMANY
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.schema import sort_tables_and_constraints
from sqlalchemy.sql import ClauseElement
from sqlalchemy.util import topological

from . import _sa, _sequences, _writer
from ._planner import (
    D_CALLABLE,
    D_NONE,
    D_NULL,
    D_OMIT,
    D_SCALAR,
    D_SERVER,
    D_SQL,
    MISSING,
    OPAQUE_BIND,
    MapperInfo,
    TableSpec,
    mapper_info,
    related_states,
    related_states_many,
)
from ._report import Fallback, FlushReport, TableWrite, log, logger, store
from ._sequences import IdSource, TableMeta

_MISSING = MISSING


@contextlib.contextmanager
def _gc_paused(enabled: bool) -> Iterator[None]:
    if not enabled or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Stale(Exception):
    """Cached catalog facts no longer describe the table a name resolves to."""

    def __init__(self, tables: set[Table]) -> None:
        super().__init__(", ".join(sorted(t.name for t in tables)))
        self.tables = tables


_SQL_TYPES: dict[type, bool] = {}


def _is_sql_type(t: type) -> bool:
    """Whether values of this type are SQL expressions (decided once per type)."""
    flag = _SQL_TYPES.get(t)
    if flag is None:
        flag = _SQL_TYPES[t] = issubclass(t, ClauseElement) or hasattr(t, "__clause_element__")
    return flag


def _sql_states(
    states: list[InstanceState[Any]], dicts: dict[InstanceState[Any], dict[str, Any]]
) -> list[InstanceState[Any]]:
    """The states with an attribute set to a SQL expression: the value types of all the
    states' dicts are collected in one pass first (almost always none is SQL)."""
    ds = map(dicts.__getitem__, states)
    types = set(map(type, itertools.chain.from_iterable(map(dict.values, ds))))
    if not any(_is_sql_type(t) for t in types):
        return []
    return [st for st in states if any(_is_sql_type(type(v)) for v in dicts[st].values())]


def _uncast_value(
    states: list[InstanceState[Any]],
    dicts: dict[InstanceState[Any], dict[str, Any]],
    uncast: list[tuple[str, Table, str, Any, Any]],
    metas: Mapping[Table, TableMeta],
) -> str | None:
    """Why these states must stay native, if a column the native batched INSERT sends as an
    untyped parameter holds a value, once bind-processed, that only that INSERT handles:
    something else than ``str`` (an ``ipaddress`` object for INET, an int for a DOMAIN over
    integer: asyncpg rejects it as text there, in a batch of several rows whose keys the
    database generates), or a ``str`` the server parses where asyncpg's encoder for the
    column's type would not take it the same way (a ``point`` or a range given as text; an
    INET/CIDR string, which asyncpg parses with ``ipaddress``: zero-padded octets refused,
    a zone index accepted)."""
    for key, table, name, bind, default in uncast:
        meta = metas[table]
        from_str = name in meta.from_str_columns
        ip_parse = _IP_PARSERS.get(meta.column_types.get(name, ""))

        def ip_alike(v: Any, parse: Any = ip_parse) -> bool:
            return parse is not None and type(v) is str and _ip_alike(parse, v)

        for st in states:
            v = dicts[st].get(key)
            if v is None:
                v = default  # None too: a None value is left out, and the default used
            if v is None or (from_str and type(v) is str) or ip_alike(v):
                continue
            if bind is OPAQUE_BIND:
                pass  # a TypeDecorator: what it sends is unknown without calling it
            elif bind is not None:
                try:
                    v = bind(v)
                except Exception:  # natively raised too: leave it to the unit of work
                    return f"column {table.name}.{name}: its value {v!r} fails to bind-process"
                if v is None or (from_str and isinstance(v, str)) or ip_alike(v):
                    continue
            if type(v) is str and ip_parse is not None:
                return (
                    f"column {table.name}.{name} holds {v!r}, which the native batched "
                    "INSERT has the server parse, and asyncpg would parse otherwise"
                )
            return (
                f"column {table.name}.{name} holds a {type(v).__name__}, which the native "
                "batched INSERT sends as an untyped parameter"
            )
    return None


_IP_PARSERS: dict[str, Callable[[str], Any]] = {
    "inet": ipaddress.ip_interface,
    "cidr": ipaddress.ip_network,
}


def _ip_alike(parse: Callable[[str], Any], v: str) -> bool:
    """Whether asyncpg's INET/CIDR encoder (Python's ``ipaddress``) takes this string as
    PostgreSQL's input function does: no zone index, a numeric prefix length (no netmask
    form), and one ``ipaddress`` accepts (it refuses zero-padded octets and abbreviated
    networks, which the server takes)."""
    if "%" in v:
        return False
    _addr, slash, prefix = v.partition("/")
    if slash and not prefix.isdigit():
        return False
    try:
        parse(v)
    except ValueError:
        return False
    return True


def _given_always(
    states: list[InstanceState[Any]],
    dicts: dict[InstanceState[Any], dict[str, Any]],
    info: MapperInfo,
    metas: Mapping[Table, TableMeta],
) -> str | None:
    """Why these states must stay native, if one gives a value for a GENERATED ALWAYS
    identity column (a native INSERT fails)."""
    for ts in info.tables:
        always = metas[ts.table].always_columns
        if not always:
            continue
        for spec in ts.columns:
            if spec.name in always:
                key = spec.propkey
                if (
                    _python_default(ts, spec)
                    or spec.default_kind == D_SQL
                    or any(dicts[st].get(key) is not None for st in states)
                ):
                    return (
                        f"a value is given for {ts.table.name}.{spec.name}, a GENERATED "
                        "ALWAYS identity column"
                    )
    return None


def _unfetched_key(
    states: list[InstanceState[Any]],
    dicts: dict[InstanceState[Any], dict[str, Any]],
    info: MapperInfo,
    metas: Mapping[Table, TableMeta],
) -> str | None:
    """Why these states must stay native, if their database-generated key is one that the
    unit of work, without RETURNING (``implicit_returning=False``), gets differently than
    by drawing it from the sequence: an identity column that is not the table's
    autoincrement column (one of a composite key) is not fetched at all, the object keeps
    no id; a GENERATED ALWAYS identity is fetched and sent, which PostgreSQL refuses."""
    table, col, key = info.id_table, info.id_column, info.id_propkey
    if table is None or col is None or key is None or table.implicit_returning:
        return None
    if _sequences.id_column_kind(table, col) != "identity":
        return None  # a Sequence default, or SERIAL: fetched from the sequence first
    if all(dicts[st].get(key) is not None for st in states):
        return None
    if col is not table.autoincrement_column:
        return (
            f"{table.name}.{col.name} is an identity column the native flush does not fetch "
            "without RETURNING (implicit_returning=False, not the autoincrement column)"
        )
    if metas[table].identity_always:
        return (
            f"{table.name}.{col.name} is a GENERATED ALWAYS identity: without RETURNING "
            "(implicit_returning=False) the native flush sends it a value, which PostgreSQL "
            "refuses"
        )
    return None


@dataclass
class Options:
    strategy: str = "auto"
    """``auto``, ``copy``, ``unnest`` or ``executemany``."""
    fast_path: bool = True
    """Write eligible objects ourselves. ``False``: only prefetch ids and regroup, and let the
    native flush write everything."""
    prefetch: str = "auto"
    """``auto``: prefetch ids for natively written objects where that saves round trips
    (``implicit_returning=False``, mixed key sets that must be regrouped, or when the round
    trip is spent anyway for the fast path); ``always``; ``never``."""
    regroup: bool = True
    """Reorder natively written objects so equal key sets are contiguous and batch."""
    small_flush: int = 32
    """Flushes of fewer new objects than this are left to the native flush when it needs no
    more round trips than async_batch would (plain shapes: one INSERT per table, where we
    need the id prefetch too): for a handful of rows the Python time saved is smaller than
    the extra round trip. Shapes native writes row by row are batched at any size. ``0``
    batches every flush."""
    trust_triggers: bool = False
    """Write new rows of tables that have INSERT triggers too. By default such tables are
    written natively: a trigger may rewrite a row (its key: natively RETURNING brings the new
    one back), skip it, or count statements, none of which our writes reproduce. Set it
    when the triggers only check, audit or notify row by row."""
    pause_gc: bool = True
    """Pause Python's cyclic garbage collector while async_batch's own steps run: they create
    no reference cycles, and a full collection triggered mid-flush walks every object in the
    process (it was a third of the flush time at 10,000 rows). Re-enabled before returning."""

    def __post_init__(self) -> None:
        if self.strategy not in _writer.STRATEGIES:
            raise ValueError(
                f"strategy={self.strategy!r} is not one of {', '.join(_writer.STRATEGIES)}"
            )
        if self.prefetch not in ("auto", "always", "never"):
            raise ValueError(f"prefetch={self.prefetch!r} is not one of auto, always, never")
        if not isinstance(self.small_flush, int) or self.small_flush < 0:
            raise ValueError(f"small_flush={self.small_flush!r} is not an integer >= 0")


class FlushRun:
    def __init__(self, session: Session, flush_context: Any, options: Options) -> None:
        self.session = session
        # weakly: the flush context holds this run (its hooks), and must be freed by
        # reference counting as the flush ends, as a native one is
        self.ctx = weakref.proxy(flush_context)
        self.options = options
        self.report = FlushReport()
        self.fast: list[InstanceState[Any]] = []
        self.fast_groups: Mapping[Any, list[InstanceState[Any]]] = {}
        # (state, key, value before, stage, copied by sync.populate): see _revert
        self._undo: list[tuple[InstanceState[Any], str, Any, int, bool]] = []
        # (states, propkeys): inherited primary keys copied onto the same attribute
        self._same_copies: list[tuple[list[InstanceState[Any]], list[str]]] = []
        # (table, state) -> attributes its row loaded, for refresh_flush listeners
        self._loads: dict[tuple[Table, InstanceState[Any]], list[str]] | None = None
        self._undo_ids: list[_sequences.IdUndo] = []
        # (state, key, committed value before or _MISSING, stage): committed-state entries
        # we changed (set listeners record one, a Python default's value drops one)
        self._undo_committed: list[tuple[InstanceState[Any], str, Any, int]] = []
        # (state, what expiring server-default attributes changed, stage)
        self._undo_expired: list[tuple[InstanceState[Any], Any, int]] = []
        # mappers whose native objects get no prefetched ids (see _uncast_value)
        self._no_prefetch: set[Any] = set()
        self._cycle_bases: tuple[int, set[Any]] | None = None
        """Base mappers in a cycle of mappers, not self-referencing ones (``_prefetchable``),
        for the number of mappers the flush knew then."""
        self._plain_attrs: dict[tuple[int, str], bool] = {}
        self._links: dict[InstanceState[Any], list[tuple[Any, InstanceState[Any] | None]]] = {}
        self._dicts: dict[InstanceState[Any], dict[str, Any]] = {}
        self._parents: list[tuple[Any, InstanceState[Any], InstanceState[Any]]] = []
        self.parents_done: list[InstanceState[Any]] = []
        self._cyclic_idle: set[InstanceState[Any]] = set()
        self._refresh: set[Table] = set()
        self._early_defaults = False
        self._depths: dict[Any, dict[InstanceState[Any], int]] = {}
        self._depth: dict[InstanceState[Any], int] = {}
        self._save_steps: dict[InstanceState[Any], int] = {}
        """The step of the unit of work's per-object sort each object's save is in."""
        self._table_pos: dict[Table, int] = {}
        self._reqs: list[tuple[frozenset[int], int]] = []
        self._req_ids: dict[tuple[Any, ...], int] = {}
        self._failed_at: int | None = None
        """Write position of the table whose write failed; None: failed before any write."""
        self._native_failed: Table | None = None
        """The unit of work's table whose statement failed after all of ours were written."""
        self._codec_oids: dict[int, bool] = {}
        """type OID -> whether a codec set on the connection makes it text-only"""
        self._orphaning: tuple[set[InstanceState[Any]], list[Any]] | None = None
        """Mappers whose objects this flush may delete as orphans (``orphaning_targets``)."""
        self._o2m_keys: dict[Any, frozenset[str]] = {}
        """Per mapper whose objects may be idle parents: its one-to-many relationships."""
        self._histories = _sa.HistoryMemo(self.ctx)
        """Persistent objects' relationship histories, read once per flush (planning)."""
        self._held: list[Any] = []
        """Objects kept alive until the flush ends (see _hold_unowned)."""
        self._native_inserted: set[Table] = set()
        """The tables the unit of work's INSERTs completed in before that failure."""
        self._conn: Connection | None = None
        self._all_written = False
        self._pending: tuple[_writer.PendingCopy, Table, TableWrite] | None = None
        """The last COPY, its rows sent and its outcome not yet read (finalize reads it)."""
        self._early: _writer.PendingCopy | None = None
        """The first table's COPY, sent before the keys are copied (``_send_first``)."""
        self._planned: Mapping[Any, list[InstanceState[Any]]] = {}
        self._infos: dict[Any, MapperInfo] = {}
        self._t0 = time.perf_counter()

    def _reset(self) -> None:
        self.report = FlushReport(phases=self.report.phases)
        store(self.session, self.report)
        self._early_defaults = False
        self._depths = {}
        self._depth = {}
        self._save_steps = {}
        self._table_pos = {}
        self._reqs = []
        self._req_ids = {}
        self._failed_at = None
        self._all_written = False
        self._planned = {}
        self.fast = []
        self.fast_groups = {}
        self._links = {}
        self._parents = []
        self.parents_done = []
        self._cyclic_idle = set()
        self._same_copies = []
        self._no_prefetch = set()
        self._cycle_bases = None
        self._loads = None
        self._histories = _sa.HistoryMemo(self.ctx)
        self._orphaning = None

    # -- hooks ---------------------------------------------------------------------------------

    def execute(self, native_execute: Callable[[], None]) -> None:
        self._mark("register")
        store(self.session, self.report)
        with _gc_paused(self.options.pause_gc):
            self._execute(native_execute)

    def _text_codecs(self, meta: TableMeta, columns: Iterable[str]) -> bool:
        """Whether a codec set on the connection makes one of these columns' types text-only
        (then binary COPY cannot write them)."""
        oids = {meta.column_oids[c] for c in columns if c in meta.column_oids}
        known = self._codec_oids
        unknown = oids - known.keys()
        if unknown and self._conn is not None:
            text_only = _sa.text_only_codecs(self._conn, unknown)
            known.update((oid, oid in text_only) for oid in unknown)
        return any(known.get(oid, False) for oid in oids)

    def _hold_unowned(self) -> None:
        """Hold the objects in write-only and dynamic collections' histories of the flush's
        objects until the flush ends: natively the flush's attribute history does (nothing
        else may; adopted objects are only weakly referenced by the session)."""
        states = list(self.ctx.states)
        keys_of: dict[Any, list[str]] = {}
        for m in set(map(_mapper_of, states)):
            keys = [r.key for r in m.relationships if r.lazy in ("write_only", "dynamic")]
            if keys:
                keys_of[m] = keys
        if not keys_of:
            return
        for st in states:
            for key in keys_of.get(st.manager.mapper, ()):
                hist = _sa.collection_history(st, key)
                self._held.extend(hist.added)
                self._held.extend(hist.deleted)

    def _execute(self, native_execute: Callable[[], None]) -> None:
        self._hold_unowned()
        try:
            try:
                self._run()
            except _Stale as stale:
                # search_path now resolves a table name to another table than the cached
                # lookup described: nothing is written yet; forget our assignments, look the
                # tables up again and plan once more
                self._revert()
                self._reset()
                self._refresh = stale.tables
                self._run()
        except BaseException:
            self._drop_pending()
            self._revert()
            raise
        ours = len(self.fast) + len(self.parents_done)
        conn = self._conn
        native_left = conn is not None and len(self.ctx.states) > ours
        # the statements the unit of work runs: when it writes the rest after ours, which of
        # its tables fails decides which of ours it would have written before; objects it
        # writes with prefetched ids keep them once their table's INSERTs are done (natively:
        # RETURNING). See _revert.
        after_ours = native_left and self._all_written
        seen: list[tuple[Table, bool]] = []
        # for after_flush listeners: which keys we copied had no committed-state entry before
        # the unit of work runs (its sync.populate may copy one again: see _record_copies)
        unrecorded: list[bool] | None = None
        if native_left and self.session.dispatch.after_flush:
            unrecorded = [key not in st.committed_state for st, key, *_rest in self._undo]
        try:
            if conn is not None and native_left and (after_ours or self._undo_ids):
                with _sa.dml_tables(conn, seen):
                    native_execute()
            else:
                native_execute()
        except BaseException as err:
            self._drop_pending()
            if isinstance(err, sa_exc.DBAPIError) and seen:
                if after_ours:
                    self._native_failed = seen[-1][0]
                self._native_inserted = {t for t, ins in seen[:-1] if ins} - {seen[-1][0]}
            elif seen:
                # raised after the statements it ran completed (a StaleDataError: an UPDATE
                # matched no row; a listener): the INSERTs among them are done
                self._native_inserted = {t for t, ins in seen if ins}
            self._revert()
            raise
        if self.session.dispatch.after_flush:
            self._record_copies(unrecorded)

    def _record_copies(self, unrecorded: list[bool] | None) -> None:
        """Record the value before each key we copied with a plain dict write in the
        object's committed state, as ``sync.populate``'s attribute set does: what an
        ``after_flush`` listener sees of the keys' history (and what stays if it raises).
        Finalizing the flush clears it again. ``unrecorded``: per copy, whether the key had
        no entry before the unit of work ran -- one it has now, the unit of work's own copy
        of the same key (a persistent parent it processed) recorded, with our copy as the
        value before; natively that copy was the first."""
        popped: set[tuple[int, str]] = set()
        for i, (st, key, old, _stage, copied) in enumerate(self._undo):
            if copied:
                if unrecorded is not None and unrecorded[i] and (id(st), key) not in popped:
                    popped.add((id(st), key))
                    st.committed_state.pop(key, None)
                _record_copy(st, key, old)
        dicts = self._dicts
        for sts, same in self._same_copies:
            for st in sts:
                d = dicts[st]
                for key in same:
                    _record_copy(st, key, d.get(key, _MISSING))

    def finalize(self, native_finalize: Callable[[], None]) -> None:
        self._mark("native")
        with _gc_paused(self.options.pause_gc):
            ours = len(self.fast) + len(self.parents_done)
            if ours and len(self.ctx.states) > ours and _sa.has_p2p_listeners(self.session):
                # natively every object of the flush is registered in one pass before any
                # pending_to_persistent listener runs: with objects the unit of work wrote
                # too, register ours in its pass (still registered with it, as withheld)
                native_finalize()
            else:
                _sa.release_states(self.ctx, self.fast)
                _sa.release_states(self.ctx, self.parents_done)
                native_finalize()
                # natively every object of the flush is committed before any
                # pending_to_persistent listener runs: the idle parents first
                _sa.register_persistent_native(self.session, self.parents_done)
                adoption = _sa.Adoption() if self._pending is not None else None
                try:
                    _sa.register_persistent(self.session, self.fast_groups, self._dicts, adoption)
                except BaseException:
                    self._drop_pending()  # the rollback needs the connection
                    raise
                if adoption is not None:
                    self._finish_pending(adoption)
            if self.fast:
                _sa.use_fast_expiry(self.session)
        self._mark("adopt")
        log(self.report)

    def _finish_pending(self, adoption: _sa.Adoption) -> None:
        """The outcome of the last COPY, whose objects are adopted already: undone with the
        rest of the flush if it failed."""
        assert self._pending is not None
        assert self._conn is not None
        pending, table, write = self._pending
        self._pending = None
        try:
            _writer.finish(self._conn, pending)
        except BaseException:
            adoption.undo(self.session)
            self._failed_at = self._table_pos[table]
            self._all_written = False
            self.report.accelerated = 0  # as for any write that fails
            self._revert()
            raise
        self.report.tables.append(write)
        adoption.complete(self.session)

    def _drop_pending(self) -> None:
        """The flush failed elsewhere while a COPY ran (the last one, or the first one sent
        early): wait for it (the connection is busy until then), whatever its outcome."""
        started = [self._early, self._pending[0] if self._pending is not None else None]
        self._early = self._pending = None
        for pending in started:
            if pending is not None and self._conn is not None:
                with contextlib.suppress(Exception):
                    _writer.finish(self._conn, pending)

    # -- planning ------------------------------------------------------------------------------

    def _mark(self, phase: str) -> None:
        now = time.perf_counter()
        phases = self.report.phases
        phases[phase] = phases.get(phase, 0.0) + (now - self._t0)
        self._t0 = now

    def _fallback(self, what: str, reason: str, objects: int = 0) -> None:
        self.report.fallbacks.append(Fallback(what, reason, objects))

    def _run(self) -> None:
        states, registered_persistent = _sa.registered_states(self.ctx)
        if not states:
            return
        _sa.sort_by_insert_order(states)
        # InstanceState.dict is a property (a weakref call): read each dict once
        dicts = self._dicts = _sa.state_dicts(states)
        session = self.session
        report = self.report

        if _sa.has_connection_callable(session):
            report.native = len(states)
            self._fallback("flush", "session uses a connection_callable (sharding)", len(states))
            return
        by_mapper = _sa.group_by_mapper(states)
        conns: dict[int, Connection] = {}
        for m in by_mapper:
            c = _sa.flush_connection(self.ctx, m)
            conns[id(c)] = c
        if len(conns) != 1:
            report.native = len(states)
            self._fallback("flush", "mappers are bound to more than one connection", len(states))
            return
        conn = self._conn = next(iter(conns.values()))
        dialect = conn.dialect
        if dialect.name != "postgresql" or dialect.driver != "asyncpg":
            report.native = len(states)
            self._fallback("flush", f"dialect {dialect.name}+{dialect.driver}", len(states))
            return
        streaming = conn.get_execution_options()
        if streaming.get("stream_results") or streaming.get("yield_per"):
            # the driver refuses an executemany on a server-side cursor, which the unit of
            # work uses for rows whose ids we prefetched (natively: INSERT ... RETURNING)
            report.native = len(states)
            why = "the connection streams results (stream_results / yield_per)"
            self._fallback("flush", why, len(states))
            return
        if _sa.is_autocommit(conn):
            # natively each INSERT commits on its own: which rows a failing flush leaves
            # depends on how the unit of work splits them into statements
            report.native = len(states)
            why = "the connection is in AUTOCOMMIT mode (each statement commits)"
            self._fallback("flush", why, len(states))
            return

        if any(map(_expired_of, states)):
            # made persistent by a flush that failed (a pending_to_persistent listener
            # raised) and expired by the rollback: natively a load the unit of work's save
            # may try (and refuse, without a full primary key) -- never a row of NULLs
            report.native = len(states)
            why = "a new object has expired attributes (left so by a failed flush's rollback)"
            self._fallback("flush", why, len(states))
            return

        fast_ok = self.options.fast_path

        infos: dict[Any, MapperInfo] = {}
        for m in by_mapper:
            infos[m] = mapper_info(m, dialect)
        metas: dict[Table, TableMeta] = {}

        def meta_for(table: Table, info: MapperInfo) -> TableMeta:
            m = metas.get(table)
            if m is None:
                id_col = info.id_column if table is info.id_table else None
                m = metas[table] = _sequences.table_meta(
                    conn, table, id_col, refresh=table in self._refresh
                )
            return m

        if fast_ok and len(states) < self.options.small_flush:
            ours, native_trips = _round_trip_estimates(by_mapper, infos)
            if ours >= native_trips:
                report.native = len(states)
                self._fallback(
                    "flush",
                    f"small flush ({len(states)} objects): native needs {native_trips} "
                    f"INSERT round trip(s), the batched path {ours}",
                    len(states),
                )
                return

        self_ref = _self_referencing_bases(infos)
        if self_ref and _steps_matter(self.ctx.states, self_ref, infos):
            # the unit of work saves these objects one by one, in the steps of its sort: ours
            # are written, and their ids drawn, in that order
            if not _sa.DRY_RUN_AVAILABLE:  # a SQLAlchemy whose planning we do not know
                report.native = len(states)
                why = "the unit of work's per-object order is unknown for this SQLAlchemy"
                self._fallback("flush", why, len(states))
                return
            try:
                self._save_steps = _sa.save_steps(session, self.ctx)
            except sa_exc.CircularDependencyError:
                # natively refused before any statement: so here
                report.native = len(states)
                why = "objects depend on each other in a cycle (the unit of work refuses it)"
                self._fallback("flush", why, len(states))
                return

        # 1. candidates
        rekeyed: list[InstanceState[Any]] = []
        candidate: set[InstanceState[Any]] = set()
        reasons: dict[Any, str] = {}
        for m, sts in by_mapper.items():
            info = infos[m]
            for ts in info.tables:
                meta_for(ts.table, info)
            if info.id_table is not None:
                meta_for(info.id_table, info)
            odd = _uncast_value(sts, dicts, info.uncast, metas) if info.uncast else None
            if odd:
                # natively such a value fails in a batch of rows the database numbers (and
                # not in one row, nor once ids are known): the unit of work decides, with the
                # ids it would have
                self._no_prefetch.add(m)
                if fast_ok:
                    reasons.setdefault(m, odd)
                continue
            if not fast_ok:
                continue
            if info.fast_reason:
                reasons.setdefault(m, info.fast_reason)
                continue
            if m.base_mapper in self_ref and _callable_across_tables(info):
                # natively saved level by level, each level table by table: one callable
                # default shared by the tables is called in that order, ours table by table
                reasons.setdefault(
                    m,
                    "its tables share a callable default and its hierarchy references itself "
                    "(called level by level natively)",
                )
                continue
            unfit = _unfit_tables(conn, info, metas, self.options.trust_triggers)
            if unfit:
                # what the server does with an INSERT beyond storing the row, or a value it
                # would convert differently: only the unit of work's own INSERTs reproduce it
                reasons.setdefault(m, unfit)
                continue
            sql = _sql_states(sts, dicts)
            if sql:
                # an attribute holds a SQL expression: only the unit of work can render it,
                # and this must be known before any id is drawn from a sequence
                reasons.setdefault(m, "an attribute is set to a SQL expression")
                sts = [st for st in sts if st not in set(sql)]
            given = _given_always(sts, dicts, info, metas) or _unfetched_key(
                sts, dicts, info, metas
            )
            if given:
                # PostgreSQL refuses them in an INSERT without OVERRIDING SYSTEM VALUE, as
                # the unit of work's (COPY and our prefetched ids take them); or the unit of
                # work, without RETURNING, fetches no key or sends one to an ALWAYS identity
                reasons.setdefault(m, given)
                self._no_prefetch.add(m)
                continue
            clash = _identity_clashes(m, sts, dicts, session.identity_map, info)
            if clash:
                # the unit of work turns a DELETE and an INSERT of one primary key into an
                # UPDATE (a row switch), warns of a new object taking a persistent one's key,
                # and re-synchronizes children of an object whose key changed since it was
                # persistent (make_transient): its own bookkeeping, decided per object
                reasons.setdefault(m, clash[1])
                sts = [st for st in sts if st not in clash[0]]
                rekeyed.extend(clash[2])
            if info.id_propkey is not None:
                assert info.id_table is not None
                meta = metas[info.id_table]
                if info.id_composite:
                    # the other key columns: given, defaulted or copied from a parent
                    known = [st for st in sts if _pks_known(st, info, info.id_propkey)]
                    if len(known) < len(sts):
                        reasons.setdefault(m, "a primary key column other than the id is not set")
                    sts = known
                if meta.id_ok:
                    candidate.update(sts)
                    continue
                key = info.id_propkey
                ok = _without(sts, dicts, key, invert=True)
                if len(ok) < len(sts):
                    reasons.setdefault(m, meta.id_reason or "ids not available")
                candidate.update(ok)
                continue
            for st in sts:
                if _pks_known(st, info):
                    candidate.add(st)
                else:
                    reasons.setdefault(
                        m,
                        "primary key is generated by the server, not by a sequence async_batch "
                        "can draw from (SERIAL/IDENTITY, or a Sequence on the Column)",
                    )

        for st in rekeyed:
            # natively its members are synchronized again from its new key, including the
            # unchanged ones (no link of theirs says so): they stay native with it
            for rel in infos[st.manager.mapper].relationships:
                if rel.direction is MANYTOONE:
                    continue
                for member in _sa.all_pending_states(st, rel.key):
                    if member in candidate:
                        candidate.discard(member)
                        reasons.setdefault(
                            member.manager.mapper,
                            f"{rel.prop} synchronizes it again from an object whose primary "
                            "key changed since it was persistent",
                        )

        self._mark("candidates")
        # 2. a group of linked new objects is written by one side only
        links = self._links
        persistent = registered_persistent if candidate else []
        if candidate and (persistent or any(i.relationships for i in infos.values())):
            registered = self.ctx.states
            bad: set[InstanceState[Any]] = {s for s in states if s not in candidate}
            for m, sts in by_mapper.items():
                info = infos[m]
                if not info.relationships:
                    continue
                related_states_many(sts, info, dicts, links)
                if any(r.uncast_pairs for r in info.relationships):
                    for st in sts:
                        for rel, other in links[st]:
                            if other is not None and rel.uncast_pairs:
                                self._uncast_copy(rel, st, other, bad, reasons)
                if _all_new_and_registered(sts, links, registered):
                    continue
                for st in sts:
                    for rel, other in links[st]:
                        if other is None:
                            continue
                        if other.key is None:
                            if other not in registered:
                                bad.add(st)
                                reasons.setdefault(
                                    m, f"related object along {rel.prop} is not in the session"
                                )
                        elif rel.direction is ONETOMANY:
                            bad.add(st)
                            reasons.setdefault(m, f"{rel.prop} moves a persistent object")
                        elif not _sa.in_session(session, other):
                            # deleted or detached (expunged): natively the unit of work copies
                            # no key from it and writes no association row for it, and warns
                            # unless it was deleted
                            bad.add(st)
                            reasons.setdefault(
                                m, f"{rel.prop} links to an object that is not in the session"
                            )
                        elif (
                            rel.direction is MANYTOMANY
                            and other in registered
                            and not _sa.reverse_properties(rel.prop)
                        ):
                            # the other side is being updated: a dependency processor of its
                            # own may write this association row (a reverse relationship's
                            # is told the rows we write: _sa.mark_processed)
                            bad.add(st)
                            reasons.setdefault(m, f"{rel.prop} links to an updated object")
            # persistent objects this flush updates or deletes, and new objects they point to
            for pst, _isdelete in persistent:
                pm = pst.manager.mapper
                if pm not in infos:
                    infos[pm] = mapper_info(pm, dialect)
            # mappers whose saves the unit of work may break into one action per object (a
            # self-reference, or a cycle of foreign keys): it then saves every object a
            # processed one links to, registered or withheld
            cyclic = _cyclic_bases(infos) if persistent else set()
            histories = self._histories
            # (relationship, class) -> whether a key it copies has set listeners
            listened: dict[tuple[int, int], bool] = {}
            early_idle: dict[InstanceState[Any], bool] = {}
            for pst, isdelete in persistent:
                pm = pst.manager.mapper
                pinfo = infos[pm]
                if not pinfo.relationships:
                    continue
                for rel, other in related_states(pst, pinfo, pending=True, memo=histories):
                    if other is None or other not in candidate:
                        continue
                    if rel.uncast_pairs and self._uncast_copy(rel, pst, other, bad, reasons):
                        continue
                    if (
                        not isdelete
                        and pm.base_mapper in cyclic
                        and other.manager.mapper.base_mapper in cyclic
                    ):
                        idle = early_idle.get(pst)
                        if idle is None:
                            idle = early_idle[pst] = self._is_idle(pst, infos, candidate)
                        if not idle:
                            bad.add(other)
                            reasons.setdefault(
                                other.manager.mapper,
                                f"linked along {rel.prop} to an object this flush updates, "
                                "among mappers the unit of work saves object by object",
                            )
                            continue
                        # must still be idle once the objects we write are known
                        self._cyclic_idle.add(pst)
                    if rel.direction is MANYTOMANY and not isdelete:
                        # a link the new object's reverse relationship holds too: we write
                        # its row, and the persistent side's processor is told to skip it
                        reverse = _sa.reverse_properties(rel.prop)
                        if reverse and any(
                            o is pst and r.prop in reverse for r, o in links.get(other, ())
                        ):
                            continue
                    if isdelete or rel.direction is MANYTOMANY:
                        bad.add(other)
                        reasons.setdefault(
                            other.manager.mapper,
                            f"linked along {rel.prop} to an object this flush "
                            + ("deletes" if isdelete else "updates"),
                        )
                    elif rel.direction is ONETOMANY:
                        # a persistent parent's collection gained this object: its key comes
                        # from the parent (the native processor will set the same value)
                        lk = (id(rel), id(other.manager))
                        heard = listened.get(lk)
                        if heard is None:
                            heard = listened[lk] = any(
                                _sa.has_set_listeners(other, _sa.propkey_for(other, r))
                                for _left, r in rel.pairs
                            )
                        if heard:
                            # ... and fire the key's set listeners and validators once more
                            # if the unit of work still processes the parent: natively they
                            # fire once per copy, which only it can count
                            bad.add(other)
                            reasons.setdefault(
                                other.manager.mapper,
                                f"{rel.prop} copies a key with set listeners or validators "
                                "from a persistent object",
                            )
                            continue
                        if self._orphaned(pst):
                            # the unit of work may delete the parent as an orphan: what it
                            # then does to the children is its own (nulled or expired keys)
                            bad.add(other)
                            reasons.setdefault(
                                other.manager.mapper,
                                f"linked along {rel.prop} to an object this flush may delete "
                                "as an orphan",
                            )
                            continue
                        self._parents.append((rel, pst, other))
            # association rows the unit of work deletes (a link removed, an object deleted):
            # natively deleted before any new row of that table is inserted, ours go first
            gone = _deleted_secondaries(persistent, infos, histories)
            for st in candidate if gone else ():
                for rel, other in links.get(st, ()):
                    if other is not None and rel.secondary in gone:
                        bad.add(st)
                        reasons.setdefault(
                            st.manager.mapper,
                            f"{rel.prop} adds rows to {rel.secondary.name}, from which this "
                            "flush deletes rows (natively first)",
                        )
            # a key copied from a new object into an attribute with set listeners or
            # validators: natively copied once that object's row is written (its defaults
            # set, its server defaults fetched), which a listener may read; ours go first
            for m, rels in _listened_copies(by_mapper, infos).items():
                for st in by_mapper[m]:
                    for rel, other in links.get(st, ()):
                        if other is None or other.key is not None or rel not in rels:
                            continue
                        target = st if rel.direction is MANYTOONE else other
                        bad.add(target)
                        reasons.setdefault(
                            target.manager.mapper,
                            f"{rel.prop} copies a key with set listeners or validators from "
                            "a new object (natively once its row is written)",
                        )
            # a key two objects claim (a one-to-one's stale back reference, a child in two
            # collections): natively the last dependency processor to copy it wins
            for child, rel in _conflicting_claims(by_mapper, infos, links, self._parents):
                if child in candidate:
                    bad.add(child)
                    reasons.setdefault(
                        child.manager.mapper,
                        f"its key is copied from more than one object (along {rel.prop}): "
                        "natively the unit of work's last copy wins",
                    )
            # keys copied from new objects: known before the INSERT, or not written by us
            self._check_sources(by_mapper, infos, candidate, bad, reasons, dialect)
            # updates the unit of work makes before these INSERTs, where the order matters
            if persistent:
                _check_updates(persistent, by_mapper, infos, metas, bad, reasons, histories)
            while bad:
                # badness spreads to every new object linked to a bad one, either direction
                _spread(bad, links, candidate, reasons)
                # ... and to every object of a table with a callable default it shares with
                # a bad one (evaluated in insert order across all of them natively)
                if not _split_callable_tables(by_mapper, infos, bad, reasons, metas):
                    break
            fast = [s for s in states if s not in bad] if bad else states
        elif len(candidate) == len(states):
            fast = states
        else:
            bad = {s for s in states if s not in candidate}
            _split_callable_tables(by_mapper, infos, bad, reasons, metas)
            fast = [s for s in states if s not in bad]

        # foreign keys no relationship orders: natively the unit of work saves the mappers
        # in its own order (sort keys), which ours must not change
        # (and a sequence shared with native objects that get no id in advance)
        while fast:
            unordered = _unordered_foreign_keys(fast, by_mapper, infos, dicts)
            unordered.update(self._unshared_sequences(fast, by_mapper, infos, metas))
            if not unordered:
                break
            moved = {s for s in fast if s.manager.mapper.base_mapper in unordered}
            for st in moved:
                reasons.setdefault(st.manager.mapper, unordered[st.manager.mapper.base_mapper])
            kept_fast = set(fast) - moved
            native_now = {s for s in states if s not in kept_fast}
            while True:
                # as in step 2: linked objects go along, and a table's callable default is
                # evaluated in insert order across all its objects
                _spread(native_now, links, candidate, reasons)
                if not _split_callable_tables(by_mapper, infos, native_now, reasons, metas):
                    break
            fast = [s for s in fast if s not in native_now]

        self._mark("links")
        # 3. table order; a cycle between tables stays native
        fast_tables: list[Table] = []
        if fast:
            tset: dict[Table, None] = {}
            fast_mappers = list(
                by_mapper if fast is states else dict.fromkeys(map(_mapper_of, fast))
            )
            for fm in fast_mappers:
                info = infos[fm]
                for ts in info.tables:
                    tset[ts.table] = None
                for rel in info.relationships:
                    if rel.direction is MANYTOMANY and rel.secondary is not None:
                        tset[rel.secondary] = None
            ordered, leftover = _sort_tables(tset)
            cyc = [fk for fk in leftover if fk.referred_table is not fk.table]
            if cyc:
                for st in fast:
                    reasons.setdefault(
                        st.manager.mapper, "foreign keys form a cycle between tables"
                    )
                fast = []
            else:
                fast_tables = ordered
                if len(fast_tables) > 1:
                    fast_tables = _native_table_order(fast_tables, fast_mappers, infos)

        self._mark("classify")
        fast_set = set(fast)
        if self._cyclic_idle and fast:
            idle_now = set(self._idle_parents(fast_set, infos))
            if not self._cyclic_idle <= idle_now:
                # a persistent object the unit of work saves object by object still has work
                # (some of its new children are written natively): it would save ours again
                for st in fast:
                    reasons.setdefault(
                        st.manager.mapper,
                        "a persistent object of a self-referencing mapper is saved by the "
                        "unit of work in this flush, with new objects linked to it",
                    )
                fast, fast_set, fast_tables = [], set(), []
        native = [s for s in states if s not in fast_set] if len(fast) < len(states) else []
        counts: dict[Any, int] = defaultdict(int)
        for s in native:
            counts[s.manager.mapper] += 1
        for m, n in counts.items():
            self._fallback(
                m.class_.__name__,
                reasons.get(m) or ("fast path disabled" if fast_ok else "native flush"),
                n,
            )
        report.native = len(native)

        # 4. native objects whose key sets are mixed would go row by row: regroup them so
        #    equal key sets are contiguous -- which needs their ids known up front, since
        #    the database would otherwise number them in the new order
        regroup = {}
        if native and self.options.regroup:
            keep_order = {t for t, meta in metas.items() if meta.sequenced_columns}
            regroup = _regroup_plan(native, infos, keep_order)

        self._mark("plan")
        # 5. ids: one round trip for every sequence this flush needs
        if len(fast) == len(states):
            fast_groups: Mapping[Any, list[InstanceState[Any]]] = by_mapper
        else:
            fast_groups = defaultdict(list)
            for st in fast:
                fast_groups[st.manager.mapper].append(st)
        self_ref = _self_referencing_bases(infos)
        for m, sts in fast_groups.items():
            if m.base_mapper in self_ref and len(sts) > 1:
                # rows (and their Python defaults, and any value the server computes per row)
                # in the unit of work's order: step by step of its sort, parents first
                self._levels(m.base_mapper)
                sts.sort(key=self._row_order)
        self._table_pos = {t: i for i, t in enumerate(fast_tables)}
        self._planned = fast_groups
        self._infos = infos
        self._prefetch(conn, fast_groups, native, infos, metas, set(regroup))
        for sts, new_order in regroup.values():
            if all(_ids_known(s, infos[s.manager.mapper]) for s in sts):
                orders = sorted(_sa.insert_order(s) for s in sts)
                for st, o in zip(new_order, orders, strict=True):
                    _sa.set_insert_order(st, o)

        if not fast:
            return

        self._mark("prefetch")
        # 6. foreign keys from relationships, association rows, rows per table
        if any(infos[m].listeners[1] for m in fast_groups):
            # sqlalchemy.ext.mutable's refresh_flush listeners: fired per written row with
            # the attributes it loaded, as _postfetch does
            self._loads = {}
        if self._early_defaults:
            # a key copied along a relationship comes from a Python default: evaluate every
            # Python default now, in the order the rows are built (which the sync below
            # cannot change: no defaulted column is a sync target, checked in _check_sources)
            self._apply_defaults(conn, fast_groups, infos, fast_tables)
        strategy = self.options.strategy
        # composite()'s after_insert listeners: fired once the mapper's tables are written
        finished: dict[Table, list[Any]] = defaultdict(list)
        for m in fast_groups:
            if infos[m].listeners[0]:
                last = max((ts.table for ts in infos[m].tables), key=self._table_pos.__getitem__)
                finished[last].append(m)
        per_table = _chunks_per_table(fast_groups, infos)
        built = self._send_first(conn, fast_tables, fast_groups, finished, per_table, infos, metas)
        secondary_rows = self._sync(fast_groups, infos)

        self._mark("rows")
        # 7. build and write, table by table in dependency order (a table's rows are built
        #    once the tables before it are written, as the unit of work prepares each INSERT)
        # the last COPY of a flush that is all ours: the objects are adopted while the server
        # stores its rows and checks their constraints, undone if it fails (finalize)
        overlap = (
            len(fast) == len(states) == len(self.ctx.states)
            and fast_tables[-1] not in finished
            and not self._loads
            and not self._same_copies
            and not session.dispatch.after_flush
            and not _sa.has_p2p_listeners(session)
        )
        for table in fast_tables:
            jobs = built.pop(table, None)
            if jobs is None:
                jobs = self._build(conn, table, per_table.get(table), infos, metas, secondary_rows)
            self._mark("rows")
            for job, states_for_rows, postfetch in jobs:
                chosen = _writer.choose(job, strategy)
                write = TableWrite(job.table_ref, len(job.rows), chosen, 1)
                returned: list[Any] = []
                try:
                    if self._early is not None and table is fast_tables[0]:
                        # sent before the keys were copied: its outcome
                        early, self._early = self._early, None
                        _writer.finish(conn, early)
                    elif (
                        overlap
                        and chosen == "copy"
                        and table is fast_tables[-1]
                        and job is jobs[-1][0]
                    ):
                        pending = _writer.start_copy(conn, job)
                        if pending is not None:
                            self._pending = (pending, table, write)
                    else:
                        returned = _writer.write(conn, job, chosen)
                except BaseException:
                    self._failed_at = self._table_pos[table]
                    raise
                if self._pending is None:
                    report.tables.append(write)
                if returned:
                    self._apply_returning(job, returned, states_for_rows, conn)
                if self._loads:
                    self._refresh_flush(table, states_for_rows)
                if postfetch:
                    # server defaults the row got and the flush does not fetch: expired, as
                    # the unit of work expires them once the row is written (undone with it)
                    stage = self._req(("table", table), [table])
                    for st, keys in postfetch:
                        self._undo_expired.append((st, _sa.expiry_snapshot(st, keys), stage))
                        _sa.expire_attributes(st, keys)
            self._copied_onto_same(table, per_table.get(table))
            for m in finished.pop(table, ()):
                _sa.fire_after_insert(m, conn, fast_groups[m])
            self._mark("write")

        self._all_written = True
        self._mark("write")
        _sa.withhold_states(self.ctx, fast_groups)
        self.fast = fast
        self.fast_groups = fast_groups
        report.accelerated = len(fast)
        # persistent parents whose only change is that their collections gained the objects we
        # just wrote: nothing is left for the unit of work to do with them but bookkeeping
        self.parents_done = self._idle_parents(fast_set, infos)
        _sa.withhold_states(self.ctx, _sa.group_by_mapper(self.parents_done))

    def _uncast_copy(
        self,
        rel: Any,
        st: InstanceState[Any],
        other: InstanceState[Any],
        bad: set[InstanceState[Any]],
        reasons: dict[Any, str],
    ) -> bool:
        """Keep the object a key is copied into native (without prefetched ids) if the key
        is not a ``str`` and the foreign key column is bound without a cast (``_uncast_value``:
        an INET key loaded as an ``ipaddress`` object); whether it was."""
        src, dst = (other, st) if rel.direction is MANYTOONE else (st, other)
        for left, r in rel.uncast_pairs:
            v = _sa.get_by_column(src, left)
            if v is not None and not isinstance(v, str):
                bad.add(dst)
                mapper = dst.manager.mapper
                self._no_prefetch.add(mapper)
                reasons.setdefault(
                    mapper,
                    f"foreign key {r.table.name}.{r.name} is bound without a cast and gets a "
                    f"{type(v).__name__} from {rel.prop}",
                )
                return True
        return False

    def _prefetchable(
        self,
        m: Any,
        info: MapperInfo,
        metas: Mapping[Table, TableMeta],
        infos: dict[Any, MapperInfo],
    ) -> bool:
        """Whether the unit of work may be given ids we draw for this mapper's objects."""
        if info.id_table is None or self.options.prefetch == "never":
            return False
        if self._cycle_bases is None or self._cycle_bases[0] != len(infos):
            bases = _cyclic_bases(infos) - _self_referencing_bases(infos)
            self._cycle_bases = (len(infos), bases)
        if m.base_mapper in self._cycle_bases[1]:
            # the unit of work saves the objects of a cycle of mappers one by one, in the
            # order of its per-object sort (not insert order): the database numbers them
            # as natively only if it is left to (a self-referencing mapper's order is
            # known from the dry run of that sort: _levels)
            return False
        meta = metas[info.id_table]
        if not meta.id_ok or meta.identity_always:
            return False
        if (meta.triggers and not self.options.trust_triggers) or meta.rules:
            # a trigger may rewrite the id a native INSERT is given (natively it comes back
            # through RETURNING); a rule may read the default
            return False
        # a before_insert hook may assign ids itself; leave it alone (and the values that
        # fail natively only without ids: _uncast_value, _given_always, MapperInfo)
        return (
            not _sa.has_insert_listeners(m) and m not in self._no_prefetch and not info.no_prefetch
        )

    def _unshared_sequences(
        self,
        fast: list[InstanceState[Any]],
        by_mapper: Mapping[Any, list[InstanceState[Any]]],
        infos: dict[Any, MapperInfo],
        metas: Mapping[Table, TableMeta],
    ) -> dict[Any, str]:
        """Base mappers whose objects we must leave to the unit of work: some of their new
        objects stay native and can get no id in advance, and the database numbers the
        base mapper's rows in insert order, ours (drawn up front) and theirs alike."""
        if len(fast) == sum(map(len, by_mapper.values())):
            return {}  # nothing is native
        fast_set = set(fast)
        out: dict[Any, str] = {}
        bases = {_mapper_of(s).base_mapper for s in fast}
        for m, sts in by_mapper.items():
            base = m.base_mapper
            info = infos[m]
            key = info.id_propkey
            if base not in bases or base in out or key is None:
                continue
            native = [s for s in sts if s not in fast_set]
            if (
                native
                and _without(native, self._dicts, key)
                and not self._prefetchable(m, info, metas, infos)
            ):
                out[base] = (
                    f"shares its id sequence with new {m.class_.__name__} objects the native "
                    "flush writes without ids drawn in advance"
                )
        return out

    def _idle_parents(
        self, fast_set: set[InstanceState[Any]], infos: dict[Any, MapperInfo]
    ) -> list[InstanceState[Any]]:
        """Persistent states in the flush whose only pending change is one-to-many collections
        that gained objects we wrote (and synchronized). The unit of work would issue nothing
        for them -- no UPDATE, no events once listeners are ruled out -- yet spend a
        dependency-processor pass per child; their bookkeeping is done in ``finalize``."""
        if not self._parents:
            return []
        candidates: dict[InstanceState[Any], None] = {}
        for _rel, parent, _child in self._parents:
            candidates[parent] = None
        return [pst for pst in candidates if self._is_idle(pst, infos, fast_set)]

    def _orphaned(self, pst: InstanceState[Any]) -> bool:
        """Whether the unit of work's presort may find this persistent object orphaned and
        delete it (``_sa.orphaning_targets``)."""
        if self._orphaning is None:
            self._orphaning = _sa.orphaning_targets(self.ctx.states, self._histories)
        objects, classes = self._orphaning
        if pst in objects:
            return True
        mapper = pst.manager.mapper
        return bool(classes) and any(mapper.isa(t) for t in classes)

    def _is_idle(
        self,
        pst: InstanceState[Any],
        infos: dict[Any, MapperInfo],
        members: set[InstanceState[Any]],
    ) -> bool:
        """Whether the persistent state's only change is one-to-many collections that
        gained objects among ``members`` (so the unit of work has nothing to do with it)."""
        if self.ctx.states.get(pst) != (False, False):
            return False
        mapper = pst.manager.mapper
        if self._orphaned(pst):
            return False
        o2m = self._o2m_keys.get(mapper)
        if o2m is None:
            info = infos.get(mapper)
            o2m = self._o2m_keys[mapper] = (
                frozenset(r.key for r in info.relationships if r.direction is ONETOMANY)
                if info is not None and _sa.is_plain_for_update(mapper)
                else frozenset()
            )
        changed = set(pst.committed_state) | set(_sa.pending_mutation_keys(pst))
        if not changed or not changed <= o2m:
            return False
        for key in changed:
            hist = _sa.collection_history(pst, key, self._histories)
            if hist.deleted or not all(
                obj is not None and instance_state(obj) in members for obj in hist.added
            ):
                return False
        return True

    # -- ids -----------------------------------------------------------------------------------

    def _levels(self, base: Any) -> dict[InstanceState[Any], int]:
        """The step of the unit of work's sort (``_save_steps``) of every object of a
        self-referencing hierarchy this flush saves, new and updated alike."""
        found = self._depths.get(base)
        if found is None:
            found = self._depths[base] = {
                st: step
                for st, step in self._save_steps.items()
                if st.manager.mapper.base_mapper is base
            }
            self._depth.update(found)
        return found

    def _row_entries(
        self, chunks: list[tuple[TableSpec, list[InstanceState[Any]]]]
    ) -> list[tuple[InstanceState[Any], TableSpec]]:
        """A table's rows as (state, spec) in the unit of work's order: one mapper's states
        as they are (already in that order), several mappers' (single-table inheritance)
        merged by ``_row_order``."""
        if len(chunks) == 1:
            ts0, sts0 = chunks[0]
            return [(st, ts0) for st in sts0]
        return sorted(
            ((st, ts) for ts, sts in chunks for st in sts), key=lambda e: self._row_order(e[0])
        )

    def _row_order(self, st: InstanceState[Any]) -> tuple[int, int]:
        """The unit of work's INSERT order: by level for a self-referencing mapper, then in
        the order the objects were added."""
        return (self._depth.get(st, 0), _sa.insert_order(st))

    def _prefetch(
        self,
        conn: Connection,
        fast_groups: Mapping[Any, list[InstanceState[Any]]],
        native: list[InstanceState[Any]],
        infos: dict[Any, MapperInfo],
        metas: dict[Table, TableMeta],
        mixed: set[Any],
    ) -> None:
        dicts = self._dicts
        # per id source: the (attribute key, states in insert order) chunks that need ids
        need: dict[tuple[str, str, str | None], tuple[IdSource, list[_Chunk]]] = {}
        sources: dict[Any, IdSource] = {}

        def chunks_for(info: MapperInfo) -> list[_Chunk]:
            assert info.id_table is not None
            assert info.id_column is not None
            src = sources.get(info.id_table)
            if src is None:
                src = sources[info.id_table] = _sequences.id_source(
                    conn, info.id_table, info.id_column
                )
            entry = need.get(src.key)
            if entry is None:
                entry = need[src.key] = (src, [])
            return entry[1]

        for m, sts in fast_groups.items():
            info = infos[m]
            key = info.id_propkey
            if key is None:
                continue
            missing = _without(sts, dicts, key)
            if missing:
                chunks_for(info).append((key, missing))
        mode = self.options.prefetch
        if native and mode != "never":
            spend = bool(need)
            native_groups: dict[Any, list[InstanceState[Any]]] = defaultdict(list)
            for st in native:
                native_groups[st.manager.mapper].append(st)
            # the database numbers a base mapper's rows in insert order: ids for all of its
            # objects the unit of work writes, or for none
            blocked = {
                m.base_mapper
                for m in native_groups
                if infos[m].id_propkey is not None
                and not self._prefetchable(m, infos[m], metas, infos)
            }
            for m, sts in native_groups.items():
                info = infos[m]
                key = info.id_propkey
                if key is None or info.id_table is None or m.base_mapper in blocked:
                    continue
                if not (
                    mode == "always"
                    or spend
                    or not info.id_table.implicit_returning
                    or m.base_mapper in mixed
                ):
                    continue
                missing = _without(sts, dicts, key)
                if missing:
                    chunks_for(info).append((key, missing))
        if not need:
            return
        ordered: list[tuple[IdSource, list[_Chunk]]] = []
        sources_in_order = list(need.values())
        if len(sources_in_order) > 1:
            # tables may share one sequence: draw for them in the order the unit of work
            # saves their mappers, and a hierarchy's tables (concrete inheritance)
            # (each chunk holds the states of one mapper: its first state tells which)
            ranks = _mapper_ranks(
                {
                    sts[0].manager.mapper.base_mapper
                    for _s, chs in sources_in_order
                    for _k, sts in chs
                },
                infos,
            )
            sources_in_order.sort(
                key=lambda e: min(
                    (
                        ranks.get(sts[0].manager.mapper.base_mapper, 0),
                        _table_position(sts[0].manager.mapper, infos),
                    )
                    for _k, sts in e[1]
                )
            )
        self_ref = _self_referencing_bases(infos)
        for src, chunks in sources_in_order:
            depth: dict[InstanceState[Any], int] = {}
            for base in {sts[0].manager.mapper.base_mapper for _k, sts in chunks} & self_ref:
                # the unit of work inserts a self-referencing hierarchy step by step of its
                # sort (parents first), numbering rows in that order: hand out ids the same
                # way (the relationship may be declared on a subclass only)
                depth.update(self._levels(base))
            if depth or len(chunks) > 1:
                # fast and native objects, or several mappers, may share a sequence: number
                # them all in the unit of work's order -- mapper by mapper as it sorts them,
                # a hierarchy table by table as its save writes them (concrete inheritance),
                # then in insert order (by step first, for a self-referencing mapper)
                rank = _mapper_ranks(
                    {st.manager.mapper.base_mapper for _k, sts in chunks for st in sts}, infos
                )
                merged = [
                    (
                        rank.get(st.manager.mapper.base_mapper, 0),
                        _table_position(st.manager.mapper, infos),
                        depth.get(st, 0),
                        _sa.insert_order(st),
                        key,
                        st,
                    )
                    for key, sts in chunks
                    for st in sts
                ]
                merged.sort(key=lambda e: e[:4])
                chunks = _rechunk([(key, st) for *_order, key, st in merged])
            ordered.append((src, chunks))
        # validate every cached lookup whose table name search_path resolves, in the same trip
        checked = [
            (t, m) for t, m in metas.items() if _sequences.effective_schema(t.schema, conn) is None
        ]
        wanted = [
            (src, [(key, list(map(dicts.__getitem__, sts))) for key, sts in chunks])
            for src, chunks in ordered
        ]
        try:
            undo = _sequences.draw_ids(
                conn,
                wanted,
                [(_sequences.qualified(conn, None, t.name), m.oid) for t, m in checked],
            )
        except _sequences.StaleLookup as stale:
            raise _Stale({checked[i][0] for i in stale.positions}) from None
        finally:
            self.report.prefetch_round_trips += 1
        self._undo_ids.extend(undo)
        self.report.prefetched_ids += sum(len(ds) for ds, _key, _none in undo)

    # -- relationships -------------------------------------------------------------------------

    def _check_sources(
        self,
        by_mapper: Mapping[Any, list[InstanceState[Any]]],
        infos: dict[Any, MapperInfo],
        candidate: set[InstanceState[Any]],
        bad: set[InstanceState[Any]],
        reasons: dict[Any, str],
        dialect: Any,
    ) -> None:
        """A key the unit of work copies from a new object (``sync.populate`` after that
        object's INSERT) must be known before we write anything: set on the object, a
        prefetched id, or a Python default -- then every Python default is evaluated before
        the keys are copied (``_early_defaults``), unless some defaulted column is itself a
        copy target, where the order would matter. A value only the database produces
        (a server default) cannot be copied ahead: the source object stays native."""
        risk: dict[tuple[int, Any], tuple[int, str]] = {}

        def classify(rel: Any, src_mapper: Any, cols: list[Any]) -> tuple[int, str]:
            ck = (id(rel), src_mapper)
            found = risk.get(ck)
            if found is None:
                info = infos.get(src_mapper)
                if info is None:
                    info = infos[src_mapper] = mapper_info(src_mapper, dialect)
                found = (_SAFE, "")
                for col in cols:
                    kind = _source_kind(info, col)
                    if kind > found[0]:
                        found = (kind, f"{col.table.name}.{col.name}")
                risk[ck] = found
            return found

        def risky(m: Any, rel: Any) -> bool:
            """Whether some object this relationship copies keys from may lack one."""
            targets = list(rel.prop.mapper.self_and_descendants)
            if rel.direction is MANYTOONE:
                sides = [(t, rel.pairs) for t in targets]
            elif rel.direction is ONETOMANY:
                sides = [(m, rel.pairs)]
            else:
                sides = [(m, rel.pairs)] + [(t, rel.secondary_pairs) for t in targets]
            return any(
                classify(rel, sm, [lc for lc, _r in pairs])[0] != _SAFE for sm, pairs in sides
            )

        needs_early: list[tuple[InstanceState[Any], Any, str]] = []
        for m, sts in by_mapper.items():
            info = infos[m]
            if not any(risky(m, rel) for rel in info.relationships):
                continue
            for st in sts:
                if st in bad:
                    continue
                for rel, other in self._links.get(st, ()):
                    if other is None:
                        continue
                    direction = rel.direction
                    if direction is MANYTOONE:
                        sources = [(other, [lc for lc, _r in rel.pairs])]
                    elif direction is ONETOMANY:
                        sources = [(st, [lc for lc, _r in rel.pairs])]
                    else:
                        sources = [
                            (st, [lc for lc, _r in rel.pairs]),
                            (other, [lc for lc, _r in rel.secondary_pairs]),
                        ]
                    for src, cols in sources:
                        if src.key is not None:
                            continue
                        kind, where = classify(rel, src.manager.mapper, cols)
                        if kind == _SAFE:
                            continue
                        missing = self._source_missing(src, infos, cols)
                        if missing is None:
                            continue
                        if kind == _PYTHON and missing == _PYTHON:
                            needs_early.append((src, rel, where))
                        elif missing == _SERVER:
                            bad.add(src)
                            reasons.setdefault(
                                src.manager.mapper,
                                f"{rel.prop} copies {where}, which the database generates",
                            )
        if not needs_early:
            return
        targets = _sync_targets(infos)
        clash = next(
            (
                spec
                for mp in by_mapper
                for ts in infos[mp].tables
                for spec in ts.columns
                if _python_default(ts, spec) and spec.column in targets
            ),
            None,
        )
        if clash is None:
            self._early_defaults = True
            return
        for src, rel, where in needs_early:
            bad.add(src)
            reasons.setdefault(
                src.manager.mapper,
                f"{rel.prop} copies {where}, a Python default, and the default of "
                f"{clash.column.table.name}.{clash.name} is evaluated after keys are copied",
            )

    def _source_missing(
        self, src: InstanceState[Any], infos: dict[Any, MapperInfo], cols: list[Any]
    ) -> int | None:
        """How the first of ``cols`` the new object has no value for will get one
        (``_PYTHON``/``_SERVER``), or None when it has them all (or gets a prefetched id)."""
        info = infos[src.manager.mapper]
        d = self._dicts.get(src)
        if d is None:
            d = src.dict
        for col in cols:
            kind = _source_kind(info, col)
            if kind == _SAFE:
                continue
            found = _spec_for(info, col)
            assert found is not None  # not _SAFE: a mapped column with a default
            spec = found[1]
            v = d.get(spec.propkey, _MISSING)
            if v is not _MISSING and (v is not None or spec.eval_none):
                continue
            return kind
        return None

    def _apply_defaults(
        self,
        conn: Connection,
        fast_groups: Mapping[Any, list[InstanceState[Any]]],
        infos: dict[Any, MapperInfo],
        tables: list[Table],
    ) -> None:
        """Evaluate the Python defaults of every row, table by table in write order, rows in
        the order ``_table_jobs`` builds them, columns in plan order -- what ``_table_jobs``
        would do later, done before keys are copied."""
        per_table = _chunks_per_table(fast_groups, infos)
        for table in tables:
            chunks = per_table.get(table)
            if not chunks:
                continue
            stage = self._req(("table", table), [table])
            try:
                self._defaults_of(self._row_entries(chunks), stage)
            except Exception as err:
                # a column default raised: natively while this table's INSERT is prepared
                self._failed_at = self._table_pos.get(table)
                tref = _sequences.qualified(
                    conn, _sequences.effective_schema(table.schema, conn), table.name
                )
                _sa.raise_statement_error(conn, err, f"INSERT INTO {tref}")

    def _defaults_of(self, entries: list[tuple[InstanceState[Any], TableSpec]], stage: int) -> None:
        """Evaluate and set the Python defaults of these rows (see ``_apply_defaults``)."""
        dicts = self._dicts
        undo = self._undo
        for st, ts in entries:
            d = dicts[st]
            evaluated: list[tuple[str, Any]] = []
            for propkey, _name, eval_none, _bind, kind, dflt, orm_dflt in ts.plan:
                v = d.get(propkey, _MISSING)
                if v is not _MISSING and (v is not None or eval_none):
                    continue
                if orm_dflt is not _MISSING:
                    evaluated.append((propkey, orm_dflt))
                elif kind == D_SCALAR:
                    evaluated.append((propkey, dflt))
                elif kind == D_CALLABLE:
                    evaluated.append((propkey, dflt(None)))
            for key, dv in evaluated:
                undo.append((st, key, d.get(key, _MISSING), stage, False))
                d[key] = dv
                self._pop_committed(st, key, stage)
            if evaluated and self._loads is not None:
                self._loads.setdefault((ts.table, st), []).extend(k for k, _v in evaluated)

    def _req(self, key: tuple[Any, ...], tables: list[Table], mode: int = 0) -> int:
        """The id of a stage (see _revert): after all of ``tables`` are written
        (``_REQ_AFTER``), just before the first of them is (``_REQ_BEFORE``), or in a later
        layer of the unit of work's actions than theirs (``_REQ_LAYER``)."""
        rid = self._req_ids.get(key)
        if rid is None:
            pos = frozenset(self._table_pos[t] for t in tables if t in self._table_pos)
            rid = self._req_ids[key] = len(self._reqs)
            self._reqs.append((pos, mode))
        return rid

    def _stage(self, st: InstanceState[Any], when: int) -> int:
        """Stage (see _revert) of a change to this object the unit of work makes
        ``_AFTER_FIRST`` (once its first, inherited base table is written), ``_BEFORE_SAVED``
        (just before its first table is written: a dependency processor's copy from an object
        that is not written) or ``_COPIED`` (a dependency processor's copy from this written
        object: in the unit of work's next layer of actions after its save)."""
        m = st.manager.mapper
        key = (id(m), when)
        rid = self._req_ids.get(key)
        if rid is None:
            tables = [ts.table for ts in self._infos[m].tables]
            rid = self._req(
                key,
                tables if when == _COPIED else tables[:1],
                {_BEFORE_SAVED: _REQ_BEFORE, _COPIED: _REQ_LAYER}.get(when, _REQ_AFTER),
            )
        return rid

    def _set(
        self,
        st: InstanceState[Any],
        key: str,
        value: Any,
        stage: int,
        d: dict[str, Any] | None = None,
    ) -> None:
        """Set an attribute value as ``sync.populate`` would, recording the old one for the
        undo (``stage``: see _revert); ``d`` is the state's dict if the caller has it."""
        if d is None:
            d = self._dicts.get(st)
            if d is None:
                d = st.dict
        old = d.get(key, _MISSING)
        ck = (id(st.manager), key)
        plain = self._plain_attrs.get(ck)
        if plain is None:
            plain = self._plain_attrs[ck] = not _sa.has_set_listeners(st, key)
        if plain:
            if old is value or (old is not _MISSING and old == value and type(old) is type(value)):
                return
            self._undo.append((st, key, old, stage, True))
            d[key] = value
        else:
            # set events and validators fire on every copy, equal value or not, as natively
            self._undo.append((st, key, old, stage, True))
            self._set_attr(st, d, key, value, stage)

    def _set_attr(
        self, st: InstanceState[Any], d: dict[str, Any], key: str, value: Any, stage: int
    ) -> None:
        """Set through the attribute (its listeners fire, and record the value before in
        the committed state), remembering that committed-state entry for the undo."""
        self._undo_committed.append((st, key, st.committed_state.get(key, _MISSING), stage))
        _sa.set_attr(st, d, key, value)

    def _pop_committed(self, st: InstanceState[Any], key: str, stage: int) -> None:
        """Drop the attribute's committed-state entry, as ``_postfetch`` does for a value it
        set from a Python default once the row is written; remembered for the undo."""
        before = st.committed_state.pop(key, _MISSING)
        if before is not _MISSING:
            self._undo_committed.append((st, key, before, stage))

    def _sync(
        self,
        fast_groups: Mapping[Any, list[InstanceState[Any]]],
        infos: dict[Any, MapperInfo],
    ) -> dict[Table, tuple[list[Any], list[dict[str, Any]]]]:
        """Copy keys along relationships as ``dependency.py``/``sync.py`` would; return the
        association rows' keys per table (with the table's column defaults to fill in)."""
        secondary: dict[Table, tuple[list[Any], list[dict[str, Any]]]] = {}
        # many-to-many links per relationship, in order
        m2m: dict[int, tuple[Any, list[tuple[InstanceState[Any], InstanceState[Any]]]]] = {}
        dicts = self._dicts
        links = self._links
        set_ = self._set
        colkeys: dict[tuple[Any, Any], str] = {}

        def keyof(state: InstanceState[Any], col: Any) -> str:
            ck = (state.manager.mapper, col)
            key = colkeys.get(ck)
            if key is None:
                key = colkeys[ck] = _sa.propkey_for(state, col)
            return key

        def get(state: InstanceState[Any], col: Any) -> Any:
            d = dicts.get(state)
            if d is not None:
                key = keyof(state, col)
                if key in d:
                    return d[key]
            return _sa.get_by_column(state, col)

        fast_set: set[InstanceState[Any]] | None = None
        if self._parents:
            fast_set = {st for sts in fast_groups.values() for st in sts}
            # per (relationship, parent class, child class): the child's stage and the
            # (referenced column, its key on the parent, foreign key on the child) pairs
            hoisted: dict[tuple[int, int, int], tuple[int, list[tuple[Any, str, str]]]] = {}
            for rel, parent, child in self._parents:
                if child not in fast_set:
                    continue
                # from a persistent parent: natively copied just before the child's INSERT
                ck = (id(rel), id(parent.manager), id(child.manager))
                found = hoisted.get(ck)
                if found is None:
                    found = hoisted[ck] = (
                        self._stage(child, _BEFORE_SAVED),
                        [(left, keyof(parent, left), keyof(child, r)) for left, r in rel.pairs],
                    )
                child_stage, copies = found
                pd = dicts.get(parent)
                if pd is None:
                    pd = parent.dict
                cd = dicts[child]
                for left, pk, fk in copies:
                    value = pd[pk] if pk in pd else _sa.get_by_column(parent, left)
                    set_(child, fk, value, child_stage, cd)
        # inherited primary keys under another attribute name, for every state first: other
        # states' keys may be copied from them below
        # (the same attribute too: natively set through it, so its set listeners and
        # validators fire, and its committed state records the value)
        for m, sts in fast_groups.items():
            # each table's pairs are copied once that table is written (_postfetch)
            equated = [
                (self._req(("table", ts.table), [ts.table]), ts.equated)
                for ts in infos[m].tables
                if ts.equated
            ]
            same = [k for ts in infos[m].tables for k in ts.equated_same]
            if same and sts:
                # (their listeners fire once the table is written: _copied_onto_same)
                self._same_copies.append((sts, same))
            for st in sts if equated else ():
                d = dicts[st]
                for stage, pairs in equated:
                    for src_key, dst_key in pairs:
                        set_(st, dst_key, d.get(src_key), stage)
        # keyed by ids: a ClassManager's __hash__ is a Python-level method
        key_pairs: dict[tuple[int, int, int], list[tuple[Any, str, str, bool]]] = {}
        undo = self._undo
        plain_attrs = self._plain_attrs
        stage_of = self._stage

        def pairs_for(rel: Any, src: InstanceState[Any], dst: InstanceState[Any]) -> Any:
            """The relationship's (referenced column, its key on ``src``, foreign key on
            ``dst``, whether a plain dict write sets it) -- once per pair of classes."""
            dm = dst.manager
            ck = (id(rel), id(src.manager), id(dm))
            pairs = key_pairs.get(ck)
            if pairs is None:
                pairs = key_pairs[ck] = []
                for left, r in rel.pairs:
                    dk = keyof(dst, r)
                    plain = plain_attrs.get((id(dm), dk))
                    if plain is None:
                        plain = plain_attrs[(id(dm), dk)] = not _sa.has_set_listeners(dst, dk)
                    pairs.append((left, keyof(src, left), dk, plain))
            return pairs

        for m, sts in fast_groups.items():
            info = infos[m]
            if not info.relationships:
                continue
            missing = [st for st in sts if st not in links]
            if missing:
                related_states_many(missing, info, dicts, links)
            # per relationship: (the other side's manager, the pairs and the stages) last
            # used with it
            last: dict[int, tuple[Any, Any, int, int]] = {}
            # the last link's relationship and other side's manager, and what they decide
            # (consecutive links usually share them: a collection's members, one
            # relationship of consecutive objects)
            cur_rel: Any = None
            cur_om: Any = None
            direction: Any = None
            link_pairs: list[tuple[Any, str, str, bool]] = []
            src_stage = dst_stage = 0
            for st in sts:
                for rel, other in links[st]:
                    if rel is not cur_rel:
                        cur_rel, cur_om, direction = rel, None, rel.direction
                    if direction is MANYTOONE:
                        if other is None:
                            stage = stage_of(st, _BEFORE_SAVED)
                            for _l, r in rel.pairs:
                                set_(st, keyof(st, r), None, stage)
                            continue
                        src, dst = other, st
                    elif other is None:
                        continue
                    elif direction is ONETOMANY:
                        src, dst = st, other
                    elif direction is MANYTOMANY and rel.secondary is not None:
                        m2m.setdefault(id(rel.prop), (rel, []))[1].append((st, other))
                        continue
                    else:
                        continue
                    # ``sync.populate``: the referenced columns of ``src`` into the foreign
                    # key columns of ``dst``, as ``_set`` does (inlined: once per link)
                    om = other.manager
                    if om is not cur_om:
                        hit = last.get(id(rel))
                        if hit is None or hit[0] is not om:
                            # natively copied once the source's rows are written (a
                            # persistent source: just before the destination's INSERT)
                            hit = last[id(rel)] = (
                                om,
                                pairs_for(rel, src, dst),
                                stage_of(src, _COPIED),
                                stage_of(dst, _BEFORE_SAVED),
                            )
                        cur_om, link_pairs, src_stage, dst_stage = hit
                    sd = dicts.get(src)
                    dd = dicts.get(dst)
                    if dd is None:
                        dd = dst.dict
                    for left, sk, dk, plain in link_pairs:
                        v = sd[sk] if sd is not None and sk in sd else _sa.get_by_column(src, left)
                        old = dd.get(dk, _MISSING)
                        # set events and validators fire on every copy, as natively; a
                        # plain key equal to the one it holds is left as it is
                        if plain and (
                            old is v or (old is not _MISSING and old == v and type(old) is type(v))
                        ):
                            continue
                        stage = src_stage if src.key is None else dst_stage
                        undo.append((dst, dk, old, stage, True))
                        if plain:
                            dd[dk] = v
                        else:
                            self._set_attr(dst, dd, dk, v, stage)
        # association rows relationship by relationship, as ManyToManyDP writes them: a link
        # the reverse relationship already wrote is skipped ("processed"), a duplicate within
        # one collection is not (natively it is a second row, and a key violation)
        seen_pairs: set[tuple[int, InstanceState[Any], InstanceState[Any]]] = set()
        for prop_id, (rel, pairs_) in m2m.items():
            reverse = [id(rp) for rp in _sa.reverse_properties(rel.prop)]
            if reverse:
                # the reverse relationship's processor (for a persistent object the flush
                # also saves) skips the rows written through this one, as natively
                _sa.mark_processed(self.ctx, rel.prop, pairs_)
            for st, other in pairs_:
                if (prop_id, st, other) in seen_pairs:
                    continue
                row: dict[str, Any] = {}
                for left, r in rel.pairs:
                    row[r.name] = get(st, left)
                for left, r in rel.secondary_pairs:
                    row[r.name] = get(other, left)
                secondary.setdefault(rel.secondary, (rel.secondary_defaults, []))[1].append(row)
            seen_pairs.update((rp, other, st) for rp in reverse for st, other in pairs_)
        return secondary

    def _send_first(
        self,
        conn: Connection,
        fast_tables: list[Table],
        fast_groups: Mapping[Any, list[InstanceState[Any]]],
        finished: Mapping[Table, list[Any]],
        per_table: dict[Table, list[tuple[TableSpec, list[InstanceState[Any]]]]],
        infos: dict[Any, MapperInfo],
        metas: dict[Table, TableMeta],
    ) -> dict[Table, list[tuple[_writer.TableJob, list[InstanceState[Any]], list[Any]]]]:
        """Build the first table's rows and send them by COPY before ``_sync`` copies keys
        along relationships, when none of its copies lands in a column of that table
        (``_sync_misses``): the server stores the rows while we copy (``_early``, its outcome
        read where the loop would have written them). Returns the rows built, per table."""
        first = fast_tables[0]
        if (
            len(fast_tables) < 2
            or first in finished
            or self._loads
            or not (self._parents or any(infos[m].relationships for m in fast_groups))
            or not _sync_misses(first, infos, self._parents)
        ):
            return {}
        jobs = self._build(conn, first, per_table.get(first), infos, metas, {})
        if len(jobs) == 1 and _writer.choose(jobs[0][0], self.options.strategy) == "copy":
            try:
                self._early = _writer.start_copy(conn, jobs[0][0])
            except BaseException:
                self._failed_at = self._table_pos[first]
                raise
        return {first: jobs}

    # -- rows ----------------------------------------------------------------------------------

    def _build(
        self,
        conn: Connection,
        table: Table,
        chunks: list[tuple[TableSpec, list[InstanceState[Any]]]] | None,
        infos: dict[Any, MapperInfo],
        metas: dict[Table, TableMeta],
        secondary_rows: dict[Table, tuple[list[Any], list[dict[str, Any]]]],
    ) -> list[tuple[_writer.TableJob, list[InstanceState[Any]], list[Any]]]:
        """The statements (jobs) for one table's rows."""
        schema = _sequences.effective_schema(table.schema, conn)
        tref = _sequences.qualified(conn, schema, table.name)
        if table in secondary_rows:
            return self._secondary_jobs(conn, table, tref, schema, *secondary_rows[table])
        if not chunks:
            return []
        owned = [
            st
            for ts, sts in chunks
            if sts
            and infos[sts[0].manager.mapper].tables[0] is ts
            and sts[0].manager.mapper.polymorphic_on is not None
            for st in sts
        ]
        if owned:
            # natively per object of the mapper saving this table, before its INSERT
            _sa.sort_by_insert_order(owned)
            try:
                _sa.validate_polymorphic_identities(owned, self._dicts)
            except Exception:  # a warning filter made it an error
                self._failed_at = self._table_pos.get(table)
                raise
        meta = metas.get(table) or _sequences.table_meta(conn, table, None)
        try:
            return self._table_jobs(table, tref, schema, meta, chunks)
        except Exception as err:
            # a type's bind processor or a column default raised: natively while this
            # table's INSERT parameters are built, after the tables before it are written
            self._failed_at = self._table_pos.get(table)
            _sa.raise_statement_error(conn, err, f"INSERT INTO {tref}")

    def _copied_onto_same(
        self, table: Table, chunks: list[tuple[TableSpec, list[InstanceState[Any]]]] | None
    ) -> None:
        """Once ``table``'s rows are written, ``_postfetch`` copies inherited primary keys
        onto the same attribute through it: its set listeners and validators fire, per
        object, with the value it holds (the committed state it records: _record_copies)."""
        todo: list[tuple[InstanceState[Any], list[str]]] = []
        for ts, sts in chunks or ():
            if not ts.equated_same or not sts:
                continue
            heard = [k for k in ts.equated_same if _sa.has_set_listeners(sts[0], k)]
            if heard:
                todo.extend((st, heard) for st in sts)
        if not todo:
            return
        # object by object in insert order, across the mappers sharing the table
        todo.sort(key=lambda e: _sa.insert_order(e[0]))
        stage = self._req(("table", table), [table])
        dicts = self._dicts
        for st, heard in todo:
            d = dicts[st]
            for k in heard:
                v = d.get(k, _MISSING)
                self._undo.append((st, k, v, stage, True))
                self._set_attr(st, d, k, None if v is _MISSING else v, stage)

    def _secondary_jobs(
        self,
        conn: Connection,
        table: Table,
        tref: str,
        schema: str | None,
        defaults: list[Any],
        rows_d: list[dict[str, Any]],
    ) -> list[tuple[_writer.TableJob, list[InstanceState[Any]], list[Any]]]:
        if not rows_d:
            return []
        if defaults:
            # the association INSERT's column defaults, row by row in its order, once the
            # tables it references are written
            try:
                for row in rows_d:
                    for name, kind, dflt in defaults:
                        row[name] = dflt(None) if kind == D_CALLABLE else dflt
            except Exception as err:
                self._failed_at = self._table_pos.get(table)
                _sa.raise_statement_error(conn, err, f"INSERT INTO {tref}")
        meta = _sequences.table_meta(conn, table, None)
        groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = defaultdict(list)
        for rd in rows_d:
            ks = tuple(rd)
            groups[ks].append(tuple(rd.values()))
        # the association INSERT binds every value with its column's type, as natively
        dialect = conn.dialect
        for ks, rows in groups.items():
            binds: list[tuple[int, Callable[[Any], Any]]] = []
            for i, k in enumerate(ks):
                proc = _sa.bind_processor(table.c[k], dialect)
                if proc is not None:
                    binds.append((i, proc))
            if not binds:
                continue
            try:
                for n, tup in enumerate(rows):
                    values = list(tup)
                    for i, bind in binds:
                        values[i] = bind(values[i])
                    rows[n] = tuple(values)
            except Exception as err:
                self._failed_at = self._table_pos.get(table)
                _sa.raise_statement_error(conn, err, f"INSERT INTO {tref}")
        return [
            (
                _writer.TableJob(
                    tref,
                    schema,
                    table.name,
                    list(ks),
                    rows,
                    [],
                    dict(meta.column_types),
                    meta.array_columns,
                    False,
                    no_copy=meta.copy_refused(ks) or self._text_codecs(meta, ks),
                ),
                [],
                [],
            )
            for ks, rows in groups.items()
        ]

    def _table_jobs(
        self,
        table: Table,
        tref: str,
        schema: str | None,
        meta: TableMeta,
        chunks: list[tuple[TableSpec, list[InstanceState[Any]]]],
    ) -> list[tuple[_writer.TableJob, list[InstanceState[Any]], list[Any]]]:
        """Rows for one table from (spec, states) chunks, one chunk per mapper writing it."""
        undo = self._undo
        stage = self._req(("table", table), [table])
        defaulted = meta.defaulted_columns
        specs: dict[int, TableSpec] = {}
        for ts, _sts in chunks:
            specs.setdefault(id(ts), ts)
        names_in = {c.name for ts in specs.values() for c in ts.columns}
        all_names = [c.name for c in table.c if c.name in names_in]
        # per spec: its plan with "no default anywhere" resolved to NULL, and where each of
        # its values goes in the table-wide column list
        plans: dict[int, tuple[list[Any], list[int] | None, list[int]]] = {}
        for spec_id, ts in specs.items():
            plan = [
                (
                    pk,
                    name,
                    en,
                    bind,
                    D_NULL if kind == D_OMIT and name not in defaulted else kind,
                    dv,
                    od,
                )
                for (pk, name, en, bind, kind, dv, od) in ts.plan
            ]
            names = [p[1] for p in plan]
            if names == all_names:
                plans[spec_id] = (plan, None, [])
            else:
                plans[spec_id] = (
                    plan,
                    [all_names.index(n) for n in names],
                    [i for i, n in enumerate(all_names) if n not in names],
                )

        # (omitted columns, run) -> rows, their states and specs
        groups: dict[
            tuple[tuple[str, ...], int], tuple[list[tuple[Any, ...]], list[Any], list[Any]]
        ] = {}
        dicts = self._dicts
        simple: dict[int, list[str]] = {}
        # ... and of those, the ones with pure bind processors: (position, processor)
        simple_binds: dict[int, list[tuple[int, Any]]] = {}
        for spec_id, (plan, pos, _fill) in plans.items():
            # every value is the attribute as it is, None when absent: no defaults to
            # evaluate, no column left out (primary keys are known by now), no bind
            # processing but a pure one (which binds None as None)
            ts = specs[spec_id]
            pks = ts.pk_propkeys
            if pos is None and all(
                orm_dflt is _MISSING
                and (kind in (D_NULL, D_NONE) or propkey in pks)
                and (bind is None or propkey in ts.pure_binds)
                for propkey, _n, _en, bind, kind, _dv, orm_dflt in plan
            ):
                simple[spec_id] = [p[0] for p in plan]
                binds = [(i, p[3]) for i, p in enumerate(plan) if p[3] is not None]
                if binds:
                    simple_binds[spec_id] = binds
        entries: list[tuple[InstanceState[Any], TableSpec]] = []
        if len(chunks) == 1 and simple:
            # one kind of row for the whole table: read all of them at once
            ts0, sts0 = chunks[0]
            keys0 = simple[id(ts0)]
            rows0: list[tuple[Any, ...]] | None = _rows_of(sts0, dicts, keys0)
            assert rows0 is not None
            pk_at = [i for i, k in enumerate(keys0) if k in ts0.pk_propkeys]
            nones = itertools.repeat(None)
            if any(
                any(map(operator.is_, map(operator.itemgetter(i), rows0), nones)) for i in pk_at
            ):
                rows0 = None
            elif id(ts0) in simple_binds:
                rows0 = _bound_columns(rows0, simple_binds[id(ts0)])
            if rows0 is not None:
                groups[((), 0)] = (rows0, sts0, [ts0] * len(sts0))
                chunks = []
        if chunks:
            entries = self._row_entries(chunks)
        # a sequence-drawn column left to its default numbers rows in insert order, and rows
        # referencing rows of their own table come after them (parents' steps first): keep
        # that order, one statement per run of equal key sets, as the unit of work sends them
        in_order = bool(meta.sequenced_columns) or any(
            fk.references(table) for fk in table.foreign_keys
        )
        run = 0
        last_okey: tuple[str, ...] | None = None
        for st, ts in entries:
            d = dicts[st]
            keys_s = simple.get(id(ts))
            if (
                keys_s is not None
                and id(ts) not in simple_binds
                and all(d.get(k) is not None for k in ts.pk_propkeys)
            ):
                if in_order and last_okey != ():
                    run += 1
                    last_okey = ()
                g = groups.get(((), run))
                if g is None:
                    g = groups[((), run)] = ([], [], [])
                g[0].append(tuple(map(d.get, keys_s)))
                g[1].append(st)
                g[2].append(ts)
                continue
            plan, pos, fill = plans[id(ts)]
            values: list[Any] = []
            omitted = False
            prefetched: list[tuple[str, Any]] | None = None
            for propkey, _name, eval_none, bind, kind, dflt, orm_dflt in plan:
                v = d.get(propkey, _MISSING)
                if v is not _MISSING and (v is not None or eval_none):
                    values.append(v if bind is None else bind(v))
                    continue
                if orm_dflt is not _MISSING:
                    dv = orm_dflt
                elif kind == D_NULL:
                    values.append(None)
                    continue
                elif kind == D_NONE:
                    values.append(None if bind is None else bind(None))
                    continue
                elif kind == D_SCALAR:
                    dv = dflt
                elif kind == D_CALLABLE:
                    dv = dflt(None)
                else:
                    omitted = True
                    values.append(_MISSING)
                    continue
                values.append(dv if bind is None else bind(dv))
                if prefetched is None:
                    prefetched = []
                prefetched.append((propkey, dv))
            if prefetched:
                for key, dv in prefetched:
                    undo.append((st, key, d.get(key, _MISSING), stage, False))
                    d[key] = dv
                    self._pop_committed(st, key, stage)
                if self._loads is not None:
                    self._loads.setdefault((table, st), []).extend(k for k, _v in prefetched)
            if pos is not None:
                vec: list[Any] = [_MISSING] * len(all_names)
                for i, v in zip(pos, values, strict=True):
                    vec[i] = v
                for i in fill:
                    if all_names[i] not in defaulted:
                        vec[i] = None
                    else:
                        omitted = True
                values = vec
            okey: tuple[str, ...] = ()
            if omitted:
                okey = tuple(n for n, v in zip(all_names, values, strict=True) if v is _MISSING)
                values = [v for v in values if v is not _MISSING]
            if in_order:
                # one statement per run of equal key sets, as the unit of work sends them
                if okey != last_okey:
                    run += 1
                    last_okey = okey
                gkey = (okey, run)
            else:
                gkey = (okey, 0)
            g = groups.get(gkey)
            if g is None:
                g = groups[gkey] = ([], [], [])
            g[0].append(tuple(values))
            g[1].append(st)
            g[2].append(ts)

        jobs: list[tuple[_writer.TableJob, list[InstanceState[Any]], list[Any]]] = []
        sql_of = {
            c.name: c.default_value
            for ts in specs.values()
            for c in ts.columns
            if c.default_kind == D_SQL
        }
        for (okey, _run), (rows, sts, tss) in groups.items():
            names = [n for n in all_names if n not in okey]
            eager = sorted({c for ts in specs.values() for c in ts.eager_server_cols} & set(okey))
            returning: list[str] = []
            if eager:
                returning = [c.name for c in table.primary_key.columns] + eager
            postfetch: list[tuple[InstanceState[Any], list[str]]] = []
            if okey:
                expire_cache: dict[int, list[str]] = {}
                for st, ts in zip(sts, tss, strict=True):
                    keys = expire_cache.get(id(ts))
                    if keys is None:
                        keys = expire_cache[id(ts)] = [
                            s.propkey
                            for s in ts.columns
                            if s.name in okey
                            and s.default_kind in (D_SERVER, D_SQL)
                            and s.name not in eager
                        ]
                    if keys:
                        postfetch.append((st, keys))
            fk_pairs = [
                (names.index(fk.column.name), names.index(fk.parent.name))
                for fk in table.foreign_keys
                if fk.column.table is table and fk.column.name in names and fk.parent.name in names
            ]
            # SQL-expression defaults of the columns left out: rendered into the statement
            sql_defaults = (
                [(n, sql_of[n]) for n in all_names if n in okey and n in sql_of]
                if sql_of and okey
                else []
            )
            job = _writer.TableJob(
                tref,
                schema,
                table.name,
                names,
                rows,
                returning,
                dict(meta.column_types),
                meta.array_columns,
                meta.identity_always,
                fk_pairs or None,
                column_oids=meta.column_oids,
                no_copy=meta.copy_refused(names)
                or bool(sql_defaults)
                or self._text_codecs(meta, names),
                sql_defaults=sql_defaults,
            )
            jobs.append((job, sts, postfetch))
        return jobs

    def _apply_returning(
        self,
        job: _writer.TableJob,
        returned: list[Any],
        states: list[InstanceState[Any]],
        conn: Connection,
    ) -> None:
        """Set fetched server defaults, as ``_postfetch`` does with RETURNING rows: converted
        by the columns' result processors first (enums, ``asdecimal``, ``TypeDecorator``
        results), and matched to their objects by primary key."""
        table = next(t for t in _sa.sorted_tables(states[0].manager.mapper) if t.name == job.name)
        pk_cols = list(table.primary_key.columns)
        npk = len(pk_cols)
        by_pk: dict[tuple[Any, ...], InstanceState[Any]] = {}
        for st in states:
            by_pk[tuple(_sa.get_by_column(st, c) for c in pk_cols)] = st
        all_cols = [table.c[name] for name in job.returning]
        cols = all_cols[npk:]
        oids = job.column_oids
        procs = [_sa.result_processor(c, conn.dialect, oids.get(c.name)) for c in all_cols]
        if any(procs):
            returned = [
                tuple(v if p is None else p(v) for p, v in zip(procs, row, strict=True))
                for row in returned
            ]
        undo = self._undo
        stage = self._req(("table", table), [table])
        keymaps: dict[Any, Mapping[Any, str]] = {}
        for row in returned:
            st_found = by_pk.get(tuple(row[:npk]))
            if st_found is None:
                raise sa_exc.InvalidRequestError(
                    f"Can't match the rows RETURNING gave for table {table.name} to the objects "
                    f"written: primary key {tuple(row[:npk])!r} is not one of those sent (does "
                    "the column's type return another value than the one it was given?)"
                )
            st = st_found
            d = self._dicts[st]
            mapper = st.manager.mapper
            c2p = keymaps.get(mapper)
            if c2p is None:
                c2p = keymaps[mapper] = _sa.column_to_propkey(mapper)
            loaded = self._loads.setdefault((table, st), []) if self._loads is not None else None
            for col, value in zip(cols, row[npk:], strict=True):
                key = c2p.get(col)
                if key is None:
                    continue
                undo.append((st, key, d.get(key, _MISSING), stage, False))
                d[key] = value
                if loaded is not None:
                    loaded.append(key)

    def _refresh_flush(self, table: Table, states: list[InstanceState[Any]]) -> None:
        """Fire ``refresh_flush`` for the rows of ``table`` just written, with the attributes
        each loaded (as ``_postfetch`` does after the table's INSERT; only listeners of
        ``sqlalchemy.ext.mutable`` get here, see ``_sa.listener_state``)."""
        loads = self._loads
        assert loads is not None
        for st in states:
            keys = loads.pop((table, st), None)
            if keys and st.manager.dispatch.refresh_flush:
                _sa.fire_refresh_flush(st, self.ctx, keys)

    # -- failure -------------------------------------------------------------------------------

    def _ancestors(self, position: int) -> set[int]:
        """Write positions of the tables the unit of work writes before the table at
        ``position``: those it references, transitively, those of mappers it saves
        earlier (``_mapper_ranks``; for a link table only the referenced ones), and those
        its own hierarchy's save writes first (``_sorted_tables``)."""
        tables = {p: t for t, p in self._table_pos.items()}
        out: set[int] = set()
        todo = [tables[position]]
        while todo:
            t = todo.pop()
            for fk in t.foreign_keys:
                p = self._table_pos.get(fk.column.table)
                if p is not None and p not in out and fk.column.table is not t:
                    out.add(p)
                    todo.append(fk.column.table)
        owner = _table_owners(self._planned, self._infos)
        failed_owner = owner.get(tables[position])
        if failed_owner is not None:
            ranks = _mapper_ranks(set(owner.values()), self._infos)
            mine = ranks.get(failed_owner, 0)
            out.update(
                self._table_pos[t]
                for t, m in owner.items()
                if ranks.get(m, 0) < mine and t in self._table_pos
            )
            order = _sa.sorted_tables(failed_owner)
            if tables[position] in order:
                out.update(
                    self._table_pos[t]
                    for t in order[: order.index(tables[position])]
                    if t in self._table_pos
                )
        return out

    def _native_ancestors(self, failed: Table) -> set[int]:
        """Write positions of our tables the unit of work writes before its own table
        ``failed``: the tables of mappers it saves earlier (it orders mappers by their
        relationships, not by foreign keys alone), and those its mapper writes first."""
        owner = _table_owners(self._planned, self._infos)
        failed_owner = _table_owners(self._infos, self._infos).get(failed)
        if failed_owner is None:
            return set()
        ranks = _mapper_ranks(set(owner.values()) | {failed_owner}, self._infos)
        mine = ranks.get(failed_owner, 0)
        order = _sa.sorted_tables(failed_owner)
        before = set(order[: order.index(failed)]) if failed in order else set()
        return {
            pos
            for t, pos in self._table_pos.items()
            if (t in owner and ranks.get(owner[t], 0) < mine) or t in before
        }

    def _layer_check(self, failed: Table | None) -> Callable[[frozenset[int]], bool]:
        """For a copy along a relationship from the objects of the tables at some positions:
        whether the unit of work made it before saving ``failed``'s mapper. It copies in the
        layer of actions after the source mapper's save (``topological.sort_as_subsets``), so
        a mapper saved in the same layer as the source, after it, fails before the copy."""
        infos = self._infos
        owner = _table_owners(self._planned, infos)
        failed_owner = _table_owners(infos, infos).get(failed) if failed is not None else None
        if failed_owner is None:
            return lambda _pos: True
        layers = _mapper_order(set(owner.values()) | {failed_owner}, infos)[1]
        mine = layers.get(failed_owner, 0)
        tables = {p: t for t, p in self._table_pos.items()}

        def check(pos: frozenset[int]) -> bool:
            for p in pos:
                src = owner.get(tables[p])
                if src is not None and src is not failed_owner and layers.get(src, 0) >= mine:
                    return False
            return True

        return check

    def _revert(self) -> None:
        """Leave the objects of a failed flush as a native flush failing at the same table
        leaves them. The unit of work writes a table only after the tables its foreign keys
        point to; what it sets on an object once rows are written (ids, Python and fetched
        server defaults, inherited keys, keys copied from written objects) stays where every
        table that change waits for is written before the failed table (``_ancestors``: the
        tables it references, and those of mappers the unit of work saves first), and keys
        copied from objects that are not written stay for rows of the failed table or those.
        Everything else is restored."""
        undo = self._undo
        reqs = self._reqs
        failed = self._failed_at
        everything = self._all_written
        native_failed = self._native_failed
        if native_failed is not None:
            # a table of the unit of work's failed after ours were all written: keep what it
            # would have written before that table
            everything = False
            ancestors = self._native_ancestors(native_failed)
        else:
            ancestors = self._ancestors(failed) if failed is not None else set()
        verdict: dict[int, bool] = {}
        failed_table: Table | None = native_failed
        if failed_table is None and failed is not None:
            failed_table = next(t for t, p in self._table_pos.items() if p == failed)
        layered = self._layer_check(failed_table)
        failed_pos = failed if native_failed is None else self._table_pos.get(native_failed)

        def kept(rid: int) -> bool:
            found = verdict.get(rid)
            if found is None:
                pos, mode = reqs[rid]
                if everything:
                    found = True
                elif native_failed is None and failed is None:
                    found = False
                elif mode == _REQ_BEFORE:
                    # copied from objects not written: for rows of the failed table too
                    found = pos <= ancestors | {failed_pos}
                else:
                    found = pos <= ancestors and (mode != _REQ_LAYER or layered(pos))
                verdict[rid] = found
            return found

        n = 0
        for st, key, old, stage, copied in reversed(undo):
            if kept(stage):
                if copied:
                    # sync.populate sets through the attribute, which records the value
                    # before (an attribute event; ours was a plain dict write)
                    _record_copy(st, key, old)
                continue
            n += 1
            d = st.dict
            if old is _MISSING:
                d.pop(key, None)
            else:
                d[key] = old
        undo.clear()
        for st, key, before, stage in reversed(self._undo_committed):
            if kept(stage):
                continue
            if before is _MISSING:
                st.committed_state.pop(key, None)
            else:
                st.committed_state[key] = before
        self._undo_committed.clear()
        for st, snapshot, stage in reversed(self._undo_expired):
            if not kept(stage):
                _sa.restore_expiry(st, snapshot)
        self._undo_expired.clear()
        # prefetched ids were set before anything else: restore them last; an object's id
        # stays once its first table was written (natively: RETURNING)
        kept_ids: set[int] = set()
        if self._native_inserted:
            # objects of the unit of work whose table it wrote before its failing statement
            # (natively their ids came back by RETURNING)
            for st, d in self._dicts.items():
                info = self._infos.get(st.manager.mapper)
                if info is not None and info.id_table in self._native_inserted:
                    kept_ids.add(id(d))
        for sts in self._planned.values():
            if not sts or not kept(self._stage(sts[0], _AFTER_FIRST)):
                continue
            kept_ids.update(id(self._dicts[st]) for st in sts if st in self._dicts)
            same = [k for ts in self._infos[sts[0].manager.mapper].tables for k in ts.equated_same]
            for st in sts if same else ():
                for k in same:
                    _sa.record_committed(st, k, self._dicts[st].get(k), False)
        for ds, key, had_none in reversed(self._undo_ids):
            for d in ds:
                if id(d) not in kept_ids:
                    n += 1
                    d.pop(key, None)
            for d in had_none:
                if id(d) not in kept_ids:
                    d[key] = None
        self._undo_ids.clear()
        logger.debug("flush failed; reverted %d attribute values", n)


_Chunk = tuple[str, list[InstanceState[Any]]]


def _sync_misses(
    table: Table, infos: Mapping[Any, MapperInfo], parents: list[tuple[Any, Any, Any]]
) -> bool:
    """Whether ``FlushRun._sync`` writes nothing a row of ``table`` holds: no relationship's
    foreign key column (nor association table) is in it, and no inherited key is copied
    under another attribute name. (Its copies fire no listener that could touch the table's
    objects: a key with set listeners or validators keeps the objects it is copied into
    native.)"""
    rels = [rel for info in infos.values() for rel in info.relationships]
    rels += [rel for rel, _parent, _child in parents]
    for rel in rels:
        if rel.secondary is table:
            return False
        if rel.direction is not MANYTOMANY and any(r.table is table for _l, r in rel.pairs):
            return False
    return not any(ts.equated for info in infos.values() for ts in info.tables)


def _rows_of(
    states: list[InstanceState[Any]],
    dicts: dict[InstanceState[Any], dict[str, Any]],
    keys: list[str],
) -> list[tuple[Any, ...]]:
    """Each state's ``keys`` values as a tuple, None where an attribute is absent."""
    ds = list(map(dicts.__getitem__, states))
    if len(keys) > 1:
        try:
            return list(map(operator.itemgetter(*keys), ds))
        except KeyError:
            pass
    return [tuple(map(d.get, keys)) for d in ds]


def _bound_columns(
    rows: list[tuple[Any, ...]], binds: list[tuple[int, Any]]
) -> list[tuple[Any, ...]] | None:
    """The rows with pure bind processors applied to their values that are not None,
    column by column; None if a processor raised (the row-by-row path then raises the
    error natively raised first)."""
    if not rows:
        return rows
    cols: list[Any] = list(zip(*rows, strict=True))
    try:
        for i, bind in binds:
            cols[i] = [None if v is None else bind(v) for v in cols[i]]
    except Exception:
        return None
    return list(zip(*cols, strict=True))


def _without(
    states: list[InstanceState[Any]],
    dicts: dict[InstanceState[Any], dict[str, Any]],
    key: str,
    invert: bool = False,
) -> list[InstanceState[Any]]:
    """The states whose attribute ``key`` is None or absent (with ``invert``: set), in order;
    decided by C-level passes (usually all or none of them lack it)."""
    values = map(dict.get, map(dicts.__getitem__, states), itertools.repeat(key))
    missing = list(map(operator.is_, values, itertools.repeat(None)))
    if invert:
        missing = list(map(operator.not_, missing))
    n = missing.count(True)
    if n == len(missing):
        return list(states)
    if n == 0:
        return []
    return list(itertools.compress(states, missing))


_SAFE, _PYTHON, _SERVER = 0, 1, 2
_AFTER_FIRST, _BEFORE_SAVED, _COPIED = 1, 2, 3
# how a stage's tables decide it (see _req)
_REQ_AFTER, _REQ_BEFORE, _REQ_LAYER = 0, 1, 2


def _chunks_per_table(
    groups: Mapping[Any, list[InstanceState[Any]]], infos: dict[Any, MapperInfo]
) -> dict[Table, list[tuple[TableSpec, list[InstanceState[Any]]]]]:
    """Per table, the (spec, states) chunks of the mappers writing it, in mapper order."""
    per_table: dict[Table, list[tuple[TableSpec, list[InstanceState[Any]]]]] = defaultdict(list)
    for m, sts in groups.items():
        for ts in infos[m].tables:
            per_table[ts.table].append((ts, sts))
    return per_table


def _table_owners(mappers: Iterable[Any], infos: dict[Any, MapperInfo]) -> dict[Table, Any]:
    """The base mapper whose save writes each of these mappers' tables."""
    owner: dict[Table, Any] = {}
    for m in mappers:
        for ts in infos[m].tables:
            owner.setdefault(ts.table, m.base_mapper)
    return owner


def _native_table_order(
    tables: list[Table],
    mappers: list[Any],
    infos: dict[Any, MapperInfo],
) -> list[Table]:
    """The tables in foreign-key order, and otherwise in the order the unit of work saves
    their mappers (which decides what a failure leaves written, and the order triggers see
    rows in): among the tables whose references are written, the one of the earliest mapper
    (a link table right after the tables it references); one mapper hierarchy's tables in the
    order its save writes them (``_sorted_tables``), other ties in the given order."""
    owner = _table_owners(mappers, infos)
    ranks = _mapper_ranks(set(owner.values()), infos)
    index = {t: i for i, t in enumerate(tables)}
    within: dict[Table, int] = {}
    for m in set(owner.values()):
        within.update((t, i) for i, t in enumerate(_sa.sorted_tables(m)) if owner.get(t) is m)
    refs = {
        t: {fk.column.table for fk in t.foreign_keys if fk.column.table in index} - {t}
        for t in tables
    }
    rank: dict[Table, float] = {}
    for t in tables:
        if t in owner:
            rank[t] = ranks.get(owner[t], 0)
    for t in tables:
        if t not in rank:
            rank[t] = max((rank.get(r, 0) for r in refs[t]), default=0) + 0.5
    out: list[Table] = []
    done: set[Table] = set()
    pending = list(tables)
    while pending:
        ready = [t for t in pending if refs[t] <= done]
        if not ready:  # pragma: no cover - a cycle was ruled out before
            return tables
        nxt = min(ready, key=lambda t: (rank[t], within.get(t, 0), index[t]))
        out.append(nxt)
        done.add(nxt)
        pending.remove(nxt)
    return out


def _unordered_foreign_keys(
    fast: list[InstanceState[Any]],
    by_mapper: Mapping[Any, list[InstanceState[Any]]],
    infos: dict[Any, MapperInfo],
    dicts: Mapping[InstanceState[Any], dict[str, Any]],
) -> dict[Any, str]:
    """Base mappers whose objects we must leave to the unit of work, with the reason: where
    a foreign key between two tables of the flush is not the key of a relationship between
    their mappers, the unit of work does not order their INSERTs by it (it saves the mappers
    in sort-key order), and neither may we -- ours come before the unit of work's, and our
    own tables go in foreign-key order."""
    everything = len(fast) == sum(map(len, by_mapper.values()))
    fast_mappers = set(by_mapper) if everything else set(map(_mapper_of, fast))
    fast_set = None if everything else set(fast)
    ours: dict[Table, Any] = {}
    theirs: dict[Table, Any] = {}
    for m, sts in by_mapper.items():
        mine = m in fast_mappers
        native = not mine or (fast_set is not None and any(s not in fast_set for s in sts))
        for ts in infos[m].tables:
            if mine:
                ours.setdefault(ts.table, m.base_mapper)
            if native:
                theirs.setdefault(ts.table, m.base_mapper)
    related: set[frozenset[Any]] = set()
    for m, info in infos.items():
        for rel in info.relationships:
            if rel.direction is not MANYTOMANY:
                related.add(frozenset((m.base_mapper, rel.prop.mapper.base_mapper)))
    ranks: dict[Any, int] | None = None
    clash: dict[Any, str] = {}
    for t, t_owner in itertools.chain(ours.items(), theirs.items()):
        for fk in t.foreign_keys:
            r = fk.column.table
            r_owner = ours.get(r) or theirs.get(r)
            if r is t and t in ours and t_owner not in clash:
                # a row referencing another of its table without a relationship: natively
                # inserted in insert order (row by row where the keys are given), ours in one
                # statement
                why = _self_reference_unordered(
                    t, fk, t_owner, fast_mappers, infos, dicts, by_mapper
                )
                if why:
                    clash[t_owner] = why
                continue
            if r_owner is None or r_owner is t_owner:
                continue
            if frozenset((t_owner, r_owner)) in related:
                # ordered by the relationship: natively the referenced rows go first; ours go
                # before the unit of work's, so a row of ours given (not linked to) the key of
                # a new row it writes would come first
                if t in ours and r in theirs and fk.parent.table is t:
                    why = _keyed_to_native(
                        fk, t, r, fast_mappers, infos, dicts, by_mapper, fast_set
                    )
                    if why:
                        clash.setdefault(t_owner, why)
                continue
            if ranks is None:
                ranks = _mapper_ranks({m.base_mapper for m in by_mapper}, infos)
            child_first = ranks.get(t_owner, 0) < ranks.get(r_owner, 0)
            why = (
                f"foreign key {t.name}.{fk.parent.name} -> {r.name} without a relationship: "
                f"the unit of work inserts {(t if child_first else r).name} first"
            )
            t_ours, r_ours = t in ours, r in ours
            if t_ours and r_ours and child_first:
                clash.setdefault(t_owner, why)
                clash.setdefault(r_owner, why)
            if t_ours and r in theirs and not child_first:
                clash.setdefault(t_owner, why)
            if t in theirs and r_ours and child_first:
                clash.setdefault(r_owner, why)
    return clash


def _column_keys(
    mappers: Iterable[Any], infos: dict[Any, MapperInfo], table: Table, column: Any
) -> Iterator[tuple[Any, str]]:
    """(mapper, its attribute key for ``column`` of ``table``) for the mappers writing it."""
    for m in mappers:
        for ts in infos[m].tables:
            if ts.table is table:
                key = next((c.propkey for c in ts.columns if c.column is column), None)
                if key is not None:
                    yield m, key


def _keyed_to_native(
    fk: Any,
    table: Table,
    referenced: Table,
    fast_mappers: set[Any],
    infos: dict[Any, MapperInfo],
    dicts: Mapping[InstanceState[Any], dict[str, Any]],
    by_mapper: Mapping[Any, list[InstanceState[Any]]],
    fast_set: set[InstanceState[Any]] | None,
) -> str | None:
    """Why our new rows of ``table`` must stay native, if one's foreign key ``fk`` holds the
    known key of a new row of ``referenced`` the unit of work writes (natively before it)."""

    def ours(m: Any, st: InstanceState[Any]) -> bool:
        return m in fast_mappers if fast_set is None else st in fast_set

    keys: set[Any] = set()
    native_rows = False
    for m, key in _column_keys(by_mapper, infos, referenced, fk.column):
        theirs = [st for st in by_mapper[m] if not ours(m, st)]
        native_rows = native_rows or bool(theirs)
        keys.update(dicts[st].get(key) for st in theirs)
    keys.discard(None)
    if native_rows and fk.parent.server_default is not None:
        # the server default may be the key of one of them: unknown until the row exists
        for m, key in _column_keys(fast_mappers, infos, table, fk.parent):
            if any(ours(m, st) and dicts[st].get(key) is None for st in by_mapper[m]):
                return (
                    f"foreign key {table.name}.{fk.parent.name} is left to its server default, "
                    f"which may be the key of a new {referenced.name} row the native flush "
                    "writes (first)"
                )
    if not keys:
        return None
    for m, key in _column_keys(fast_mappers, infos, table, fk.parent):
        if any(ours(m, st) and dicts[st].get(key) in keys for st in by_mapper[m]):
            return (
                f"foreign key {table.name}.{fk.parent.name} is given the key of a new "
                f"{referenced.name} row the native flush writes (first)"
            )
    return None


def _self_reference_unordered(
    table: Table,
    fk: Any,
    base: Any,
    fast_mappers: set[Any],
    infos: dict[Any, MapperInfo],
    dicts: Mapping[InstanceState[Any], dict[str, Any]],
    by_mapper: Mapping[Any, list[InstanceState[Any]]],
) -> str | None:
    """Why a self-referencing foreign key no relationship covers keeps the base mapper's
    objects native, if some of ours set it."""
    mine = [m for m in fast_mappers if m.base_mapper is base]
    for m in mine:
        for rel in infos[m].relationships:
            if rel.prop.mapper.base_mapper is base and any(r is fk.parent for _l, r in rel.pairs):
                return None
    for m, key in _column_keys(mine, infos, table, fk.parent):
        if any(dicts[st].get(key) is not None for st in by_mapper[m]):
            return (
                f"foreign key {table.name}.{fk.parent.name} references its own table "
                "without a relationship: the unit of work inserts the rows in insert order"
            )
    return None


def _mapper_ranks(bases: set[Any], infos: dict[Any, MapperInfo]) -> dict[Any, int]:
    """The order in which the unit of work saves these base mappers (``_mapper_order``)."""
    return _mapper_order(bases, infos)[0]


def _mapper_order(
    bases: set[Any], infos: dict[Any, MapperInfo]
) -> tuple[dict[Any, int], dict[Any, int]]:
    """The order in which the unit of work saves these base mappers, and the layer of its
    actions each save is in: its actions sorted by the mapper's ``_sort_key`` (module and
    class name), then topologically in layers (``topological.sort_as_subsets``), a mapper
    after those its relationships make it depend on (their copies, a layer between)."""
    if len(bases) < 2:
        return {}, {}
    after: dict[Any, set[Any]] = defaultdict(set)
    for m, info in infos.items():
        mb = m.base_mapper
        for rel in info.relationships:
            other = rel.prop.mapper.base_mapper
            if other is mb or rel.direction is MANYTOMANY:
                continue
            if rel.direction is MANYTOONE:
                after[mb].add(other)
            else:
                after[other].add(mb)
    todo = sorted({m.base_mapper for m in infos} | bases, key=_sa.mapper_sort_key)
    pending = set(todo)
    rank: dict[Any, int] = {}
    layers: dict[Any, int] = {}
    depth = 0
    while pending:
        layer = [m for m in todo if pending.isdisjoint(after[m])]
        if not layer:  # a cycle between mappers: the rest in sort-key order
            layer = [m for m in todo if m in pending]
        for m in layer:
            rank[m] = len(rank)
            layers[m] = depth
        depth += 1
        pending.difference_update(layer)
        todo = [m for m in todo if m in pending]
    return rank, layers


def _unfit_tables(
    conn: Connection, info: MapperInfo, metas: dict[Table, TableMeta], trust_triggers: bool
) -> str | None:
    """Why a table this mapper's new objects go to (their own, or a many-to-many link table)
    must be written natively, if so."""
    tables = [ts.table for ts in info.tables] + [
        rel.secondary for rel in info.relationships if rel.secondary is not None
    ]
    for table in tables:
        meta = metas.get(table)
        if meta is None:
            meta = metas[table] = _sequences.table_meta(conn, table, None)
        reason = meta.unfit_reason(table.name, trust_triggers)
        if reason:
            return reason
    return None


def _check_updates(
    persistent: list[tuple[InstanceState[Any], bool]],
    by_mapper: Mapping[Any, list[InstanceState[Any]]],
    infos: dict[Any, MapperInfo],
    metas: Mapping[Table, TableMeta],
    bad: set[InstanceState[Any]],
    reasons: dict[Any, str],
    memo: _sa.HistoryMemo,
) -> None:
    """The unit of work writes a table's UPDATEs before its INSERTs, and a referenced table's
    before the tables referencing it. Where a persistent row changes a unique (or primary
    key) column of a table new objects go to -- one of a unique index or an exclusion
    constraint in the database, declared in the model or not, or any column where such an
    index has an expression or a predicate (a soft delete) -- or a column new rows' foreign
    keys reference, that order decides whether the flush succeeds (a unique value handed
    over from the old row to a new one): those new objects stay native."""
    changed: dict[Table, set[Any]] = defaultdict(set)
    for pst, isdelete in persistent:
        if isdelete:
            continue
        for col in _sa.changed_columns(pst, memo):
            changed[col.table].update([col])
    if not changed:
        return
    blocked: dict[Table, str] = {}
    for table, cols in changed.items():
        meta = metas.get(table)
        for col in cols:
            if _is_unique(col) or (
                meta is not None and (meta.unique_any or col.name in meta.unique_columns)
            ):
                blocked.setdefault(table, f"{table.name}.{col.name}")
    for m in by_mapper:
        for ts in infos[m].tables:
            for fk in ts.table.foreign_keys:
                if fk.column in changed.get(fk.column.table, ()):
                    blocked.setdefault(ts.table, f"{fk.column.table.name}.{fk.column.name}")
    if not blocked:
        return
    for m, sts in by_mapper.items():
        hit = next((blocked[ts.table] for ts in infos[m].tables if ts.table in blocked), None)
        if hit is None:
            continue
        bad.update(sts)
        reasons.setdefault(
            m,
            f"a persistent object's UPDATE of {hit} in this flush must come before these INSERTs",
        )


def _record_copy(st: InstanceState[Any], key: str, old: Any) -> None:
    """The committed-state entry ``sync.populate``'s attribute set records for a key we
    copied with a plain dict write (``old``: the value before, or _MISSING)."""
    _sa.record_committed(st, key, None if old is _MISSING else old, old is _MISSING)


def _sort_tables(tables: Iterable[Table]) -> tuple[list[Table], list[Any]]:
    """The tables in foreign-key order, and the foreign-key constraints that order could not
    satisfy (cycles)."""
    given = list(tables)
    ordered = list(sort_tables_and_constraints(given))  # type: ignore[no-untyped-call]
    leftover = list(ordered[-1][1]) if ordered and ordered[-1][0] is None else []
    order = [t for t, _ in ordered if t is not None]
    if any(fk.use_alter is True for fk in leftover):
        # SQLAlchemy's sort leaves ``use_alter`` constraints out (it lists them with those
        # that close a cycle): they order the tables like any other unless they close one
        members = set(given)
        cut = {fk for fk in leftover if fk.use_alter is not True}
        edges = [
            (fk.referred_table, t)
            for t in order
            for fk in t.foreign_key_constraints
            if fk not in cut and fk.referred_table in members and fk.referred_table is not t
        ]
        # ... and the dependencies declared on the tables (``add_is_dependent_on``)
        edges += [(dep, t) for t in order for dep in _sa.declared_dependencies(t) if dep in members]
        try:
            order = list(topological.sort(edges, order))
        except sa_exc.CircularDependencyError:
            return order, leftover
        leftover = [fk for fk in leftover if fk.use_alter is not True]
    return order, leftover


def _listened_copies(
    by_mapper: Mapping[Any, list[InstanceState[Any]]], infos: dict[Any, MapperInfo]
) -> dict[Any, list[Any]]:
    """Per mapper of the flush, its many-to-one and one-to-many relationships that copy a key
    into an attribute with set listeners or validators (on any class that can hold it)."""
    out: dict[Any, list[Any]] = {}
    for m in by_mapper:
        for rel in infos[m].relationships:
            if rel.direction is MANYTOONE:
                holder = m
            elif rel.direction is ONETOMANY:
                holder = rel.prop.mapper
            else:
                continue
            if any(
                _sa.column_has_set_listeners(sub, right)
                for sub in holder.self_and_descendants
                for _left, right in rel.pairs
            ):
                out.setdefault(m, []).append(rel)
    return out


def _callable_ids(ts: TableSpec) -> Iterator[int]:
    """The identity of what each Python callable default of the table calls."""
    for spec in ts.columns:
        if spec.default_kind == D_CALLABLE:
            yield id(_sa.default_function(spec.column))


def _callable_across_tables(info: MapperInfo) -> bool:
    """Whether one callable default function serves columns of two of the mapper's tables."""
    seen: dict[int, Table] = {}
    for ts in info.tables:
        for fid in _callable_ids(ts):
            if seen.setdefault(fid, ts.table) is not ts.table:
                return True
    return False


def _deleted_secondaries(
    persistent: list[tuple[InstanceState[Any], bool]],
    infos: dict[Any, MapperInfo],
    memo: _sa.HistoryMemo,
) -> set[Any]:
    """Association tables the unit of work deletes rows from in this flush: links removed
    from a persistent object's many-to-many relationship, or all links of a deleted one."""
    out: set[Any] = set()
    for pst, isdelete in persistent:
        info = infos.get(pst.manager.mapper)
        for rel in info.relationships if info is not None else ():
            if rel.direction is not MANYTOMANY or rel.secondary is None or rel.secondary in out:
                continue
            if isdelete or _sa.collection_history(pst, rel.key, memo).deleted:
                out.add(rel.secondary)
    return out


def _table_position(mapper: Any, infos: dict[Any, MapperInfo]) -> int:
    """Where the mapper's id table comes in its hierarchy's save (``_sorted_tables``)."""
    table = infos[mapper].id_table
    tables = _sa.sorted_tables(mapper)
    return tables.index(table) if table in tables else 0


def _self_referencing_bases(infos: dict[Any, MapperInfo]) -> set[Any]:
    """Base mappers of the flush with a relationship within their own hierarchy (declared on
    any of its mappers): the unit of work sorts their objects level by level."""
    return {m.base_mapper for m, info in infos.items() if info.self_referential}


def _cyclic_bases(infos: dict[Any, MapperInfo]) -> set[Any]:
    """Base mappers the unit of work may save object by object: self-referencing ones, and
    those whose tables form a cycle of foreign keys with other tables of the flush."""
    out = _self_referencing_bases(infos)
    tables: dict[Table, Any] = {}
    for m, info in infos.items():
        for ts in info.tables:
            tables.setdefault(ts.table, m.base_mapper)
    for fk in _sort_tables(tables)[1]:
        for t in (fk.table, fk.referred_table):
            if t in tables:
                out.add(tables[t])
    return out


def _identity_clashes(
    mapper: Any,
    states: list[InstanceState[Any]],
    dicts: dict[InstanceState[Any], dict[str, Any]],
    identity_map: Any,
    info: MapperInfo,
) -> tuple[set[InstanceState[Any]], str, list[InstanceState[Any]]] | None:
    """New states whose primary key (set before the flush) is the identity of an object in
    the session, or -- for mappers with collections, whose members the unit of work then
    re-synchronizes -- whose primary key was another one while they were persistent (their
    committed state holds it: ``make_transient``, or a rollback, then a new key); why; and
    which are the latter."""
    keys = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
    no_value = _sa.NO_VALUE
    found: set[InstanceState[Any]] = set()
    rekeyed: list[InstanceState[Any]] = []
    why = ""
    has_members = any(r.direction is not MANYTOONE for r in info.relationships)
    # previous values of the key attributes (NO_VALUE: never had one), in C-level passes
    committed = list(map(_committed_of, states)) if has_members else []
    for k in keys if has_members else ():
        before = map(dict.get, committed, itertools.repeat(k), itertools.repeat(no_value))
        if any(map(operator.is_not, before, itertools.repeat(no_value))):
            rekeyed = [
                st
                for st, cs in zip(states, committed, strict=True)
                if any(cs.get(k2, no_value) is not no_value for k2 in keys)
            ]
            found.update(rekeyed)
            why = "the primary key changed since the object was persistent"
            break
    if len(identity_map):
        with_key = states if len(keys) > 1 else _without(states, dicts, keys[0], invert=True)
        for st in with_key:
            d = dicts[st]
            pk = tuple([d.get(k) for k in keys])
            if None not in pk and mapper.identity_key_from_primary_key(pk) in identity_map:
                found.add(st)
                why = why or "a new object has the primary key of an object in the session"
    return (found, why, rekeyed) if found else None


_committed_of = operator.attrgetter("committed_state")


def _is_unique(col: Any) -> bool:
    table = col.table
    if col.primary_key or col.unique:
        return True
    # a ColumnCollection's ``in`` takes names only: test the Column objects themselves
    for cons in table.constraints:
        if isinstance(cons, UniqueConstraint) and cons.columns.contains_column(col):
            return True
    return any(idx.unique and idx.columns.contains_column(col) for idx in table.indexes)


def _spread(
    bad: set[InstanceState[Any]],
    links: dict[InstanceState[Any], list[tuple[Any, InstanceState[Any] | None]]],
    candidate: set[InstanceState[Any]],
    reasons: dict[Any, str],
) -> None:
    """Make every new object linked to a bad one bad, transitively, either direction."""
    adjacent: dict[InstanceState[Any], list[InstanceState[Any]]] = defaultdict(list)
    for st, found in links.items():
        for _rel, other in found:
            if other is not None and other.key is None:
                adjacent[st].append(other)
                adjacent[other].append(st)
    todo = [s for s in bad if s in adjacent]
    while todo:
        cur = todo.pop()
        for nxt in adjacent[cur]:
            if nxt not in bad:
                bad.add(nxt)
                todo.append(nxt)
                if nxt in candidate:
                    reasons.setdefault(
                        nxt.manager.mapper, "linked to new objects the native flush writes"
                    )


def _split_callable_tables(
    by_mapper: Mapping[Any, list[InstanceState[Any]]],
    infos: dict[Any, MapperInfo],
    bad: set[InstanceState[Any]],
    reasons: dict[Any, str],
    metas: Mapping[Table, TableMeta],
) -> bool:
    """A table with a Python callable default must not be written partly natively: the
    default is called once per row in insert order across all of its objects, which a split
    would change (ours first, then native's) -- nor may tables sharing one callable (called
    table by table in the unit of work's order). Makes all objects of such tables bad when
    some are. Likewise for a column other than the key that the database numbers from a
    sequence (an identity, a ``nextval`` server default), among the objects whose rows leave
    it to the database. Returns whether any became bad."""
    writers: dict[Table, list[Any]] = defaultdict(list)
    # the tables called in one sequence: a table's own, or those sharing a function
    groups: dict[Any, dict[Table, None]] = defaultdict(dict)
    for m in by_mapper:
        for ts in infos[m].tables:
            writers[ts.table].append(m)
            for fid in _callable_ids(ts):
                groups[ts.table][ts.table] = None
                groups[fid][ts.table] = None
    changed = False
    for tables in groups.values():
        sts = [st for table in tables for m in writers[table] for st in by_mapper[m]]
        names = ", ".join(t.name for t in tables)
        what = "has a callable default" if len(tables) == 1 else "share a callable default"
        changed |= _all_or_none_bad(
            sts,
            bad,
            reasons,
            f"{names} {what} and some of its objects are written natively (it is called in "
            "insert order across all of them)",
        )
    # columns other than the key the database numbers: among the rows leaving one to it
    for table, ms in writers.items():
        meta = metas.get(table)
        numbered = meta.sequenced_columns if meta is not None else frozenset()
        numbered = numbered - {c.name for c in table.primary_key}
        if not numbered:
            continue
        drawing = [
            st for m in ms for st in by_mapper[m] if _leaves_out(st, infos[m], table, numbered)
        ]
        changed |= _all_or_none_bad(
            drawing,
            bad,
            reasons,
            f"{table.name} has a column the database numbers from a sequence and some of its "
            "objects are written natively (numbered in insert order across all of them)",
        )
    return changed


def _all_or_none_bad(
    sts: list[InstanceState[Any]],
    bad: set[InstanceState[Any]],
    reasons: dict[Any, str],
    reason: str,
) -> bool:
    """Where some of ``sts`` are bad (written natively), make them all bad, with ``reason``
    for their mappers; return whether any became bad."""
    n_bad = sum(1 for st in sts if st in bad)
    if not 0 < n_bad < len(sts):
        return False
    for st in sts:
        if st not in bad:
            bad.add(st)
            reasons.setdefault(st.manager.mapper, reason)
    return True


def _leaves_out(
    st: InstanceState[Any], info: MapperInfo, table: Table, columns: frozenset[str]
) -> bool:
    """Whether the object's row of ``table`` leaves one of ``columns`` to the database (the
    column is not mapped, or its value is None, which the INSERT omits)."""
    d = st.dict
    for ts in info.tables:
        if ts.table is table:
            given = {c.name for c in ts.columns if d.get(c.propkey) is not None}
            return bool(columns - given)
    return False


def _spec_for(info: MapperInfo, col: Any) -> tuple[TableSpec, Any] | None:
    """The (table spec, column spec) of a mapped column."""
    for ts in info.tables:
        for spec in ts.columns:
            if spec.column is col:
                return ts, spec
    return None


def _python_default(ts: TableSpec, spec: Any) -> bool:
    return spec.default_kind in (D_SCALAR, D_CALLABLE) or any(
        name == spec.name for _k, name, _v in ts.orm_defaults
    )


def _source_kind(info: MapperInfo, col: Any) -> int:
    """Where a new object's value for ``col`` comes from when it has none: ``_SAFE`` (a
    prefetched id, or nothing: NULL), ``_PYTHON`` (a Python default) or ``_SERVER``."""
    found = None if col is info.id_column else _spec_for(info, col)
    if found is None:
        return _SAFE
    ts, spec = found
    if _python_default(ts, spec):
        return _PYTHON
    if spec.default_kind in (D_SERVER, D_SQL):
        return _SERVER
    return _SAFE


def _sync_targets(infos: dict[Any, MapperInfo]) -> set[Any]:
    """Every column a key is copied into: foreign keys of relationships, inherited keys."""
    out: set[Any] = set()
    for info in infos.values():
        for rel in info.relationships:
            out.update(r for _l, r in rel.pairs)
            out.update(r for _l, r in rel.secondary_pairs)
        for ts in info.tables:
            dst = {d for _s, d in ts.equated}
            out.update(spec.column for spec in ts.columns if spec.propkey in dst)
    return out


_mapper_of = operator.attrgetter("manager.mapper")
_expired_of = operator.attrgetter("expired_attributes")
_key_of = operator.attrgetter("key")


def _steps_matter(
    registered: Mapping[InstanceState[Any], tuple[bool, bool]],
    bases: set[Any],
    infos: dict[Any, MapperInfo],
) -> bool:
    """Whether the steps of the unit of work's sort can order anything: it saves two objects
    of a self-referencing hierarchy or more, or one its sort links to itself (a cycle)."""
    saved = [
        st
        for st, (isdelete, listonly) in registered.items()
        if not isdelete and not listonly and st.manager.mapper.base_mapper in bases
    ]
    if len(saved) != 1:
        return len(saved) > 1
    st = saved[0]
    info = infos.get(st.manager.mapper)
    return any(
        other is st
        for rel in (info.relationships if info is not None else ())
        for other in _sa.all_pending_states(st, rel.key)
    )


def _conflicting_claims(
    by_mapper: Mapping[Any, list[InstanceState[Any]]],
    infos: dict[Any, MapperInfo],
    links: dict[InstanceState[Any], list[tuple[Any, InstanceState[Any] | None]]],
    parents: list[tuple[Any, InstanceState[Any], InstanceState[Any]]],
) -> list[tuple[InstanceState[Any], Any]]:
    """New objects whose foreign key two links would set from different objects: held by a
    one-to-one or a one-to-many without a back reference (where nothing keeps the two sides
    in step) of one object while another holds it too, or while its own many-to-one points
    elsewhere. With a back reference on a collection, the two sides always agree."""
    loose = {
        id(r)
        for info in infos.values()
        for r in info.relationships
        if r.direction is ONETOMANY and (not r.prop.uselist or not _sa.reverse_properties(r.prop))
    }
    if not loose:
        return []
    claims: dict[tuple[InstanceState[Any], frozenset[Any]], InstanceState[Any] | None] = {}
    out: list[tuple[InstanceState[Any], Any]] = []
    held: dict[InstanceState[Any], None] = {}

    def claim(child: InstanceState[Any], rel: Any, source: InstanceState[Any] | None) -> None:
        key = (child, frozenset(r for _l, r in rel.pairs))
        if claims.setdefault(key, source) is not source:
            out.append((child, rel))

    for m, sts in by_mapper.items():
        if not any(id(r) in loose for r in infos[m].relationships):
            continue
        for st in sts:
            for rel, other in links.get(st, ()):
                if other is not None and id(rel) in loose:
                    claim(other, rel, st)
                    held[other] = None
    for rel, parent, child in parents:
        if id(rel) in loose:
            claim(child, rel, parent)
            held[child] = None
    for child in held:
        for rel, other in links.get(child, ()):
            if rel.direction is MANYTOONE:
                claim(child, rel, other)
    return out


def _all_new_and_registered(
    states: list[InstanceState[Any]],
    links: dict[InstanceState[Any], list[tuple[Any, InstanceState[Any] | None]]],
    registered: Mapping[InstanceState[Any], Any],
) -> bool:
    """Whether every object the states link to is new and in this flush (C-level passes):
    then no link needs a closer look."""
    found = itertools.chain.from_iterable(map(links.__getitem__, states))
    others = set(map(operator.itemgetter(1), found))
    others.discard(None)
    if not others:
        return True
    return list(map(_key_of, others)).count(None) == len(others) and all(
        map(registered.__contains__, others)
    )


def _rechunk(pairs: list[tuple[str, InstanceState[Any]]]) -> list[_Chunk]:
    """Consecutive (key, state) pairs with the same key as (key, states) chunks."""
    out: list[_Chunk] = []
    for key, st in pairs:
        if out and out[-1][0] == key:
            out[-1][1].append(st)
        else:
            out.append((key, [st]))
    return out


def _pks_known(st: InstanceState[Any], info: MapperInfo, skip: str | None = None) -> bool:
    d = st.dict
    for ts in info.tables:
        for key in ts.pk_propkeys:
            if key == skip or d.get(key) is not None:
                continue
            spec = next((s for s in ts.columns if s.propkey == key), None)
            if spec is not None and spec.default_kind in (D_SCALAR, D_CALLABLE):
                continue
            if _synced_from_relationship(info, key):
                continue
            return False
    return True


def _synced_from_relationship(info: MapperInfo, key: str) -> bool:
    for rel in info.relationships:
        if rel.direction is MANYTOONE:
            for _l, r in rel.pairs:
                if _sa.mapper_propkey(info.mapper, r) == key:
                    return True
    return False


def _ids_known(st: InstanceState[Any], info: MapperInfo) -> bool:
    d = st.dict
    return all(d.get(k) is not None for ts in info.tables for k in ts.pk_propkeys)


def _round_trip_estimates(
    by_mapper: Mapping[Any, list[InstanceState[Any]]], infos: dict[Any, MapperInfo]
) -> tuple[int, int]:
    """(batched, native) statement round trips a flush of these new objects needs, roughly:
    batched is the id prefetch plus one statement per table; native is one INSERT per run of
    equal key sets per table (``persistence._emit_insert_statements`` batches those), two
    per row without RETURNING, one per row for self-referencing mappers."""
    tables: set[Any] = set()
    native = 0
    by_base: dict[Any, list[InstanceState[Any]]] = defaultdict(list)
    for m, sts in by_mapper.items():
        info = infos[m]
        tables.update(ts.table for ts in info.tables)
        for rel in info.relationships:
            if rel.direction is MANYTOMANY and rel.secondary is not None:
                tables.add(rel.secondary)
                native += 1
        by_base[m.base_mapper].extend(sts)
    for sts in by_base.values():
        info0 = infos[sts[0].manager.mapper]
        if any(infos[s.manager.mapper].self_referential for s in sts):
            native += len(sts)
            continue
        if info0.id_table is not None and not info0.id_table.implicit_returning:
            native += 2 * len(sts)
            continue
        _sa.sort_by_insert_order(sts)
        keysets = _table_keysets([_sig_key(st, infos) for st in sts])
        native += sum(_runs(seq) for seq in keysets.values())
    return 1 + len(tables), native


def _table_keysets(sigs: list[Any]) -> dict[Any, list[Any]]:
    """Per table, the key sets of the given ``_sig_key`` signatures, in order."""
    per_table: dict[Any, list[Any]] = defaultdict(list)
    for sig in sigs:
        for table, keyset in sig:
            per_table[table].append(keyset)
    return per_table


def _runs(seq: list[Any]) -> int:
    """Runs of equal consecutive items: the INSERT statements native issues for a table."""
    return 1 + sum(1 for a, b in itertools.pairwise(seq) if a != b)


def _regroup_plan(
    native: list[InstanceState[Any]], infos: dict[Any, MapperInfo], ordered: set[Table]
) -> dict[Any, tuple[list[InstanceState[Any]], list[InstanceState[Any]]]]:
    """Per base mapper with mixed key sets: (its states, the same states regrouped).
    ``ordered``: tables whose rows must keep their order (a column numbered by a sequence)."""
    by_base: dict[Any, list[InstanceState[Any]]] = defaultdict(list)
    for st in native:
        by_base[st.manager.mapper.base_mapper].append(st)
    plans = {}
    for base, sts in by_base.items():
        if len(sts) < 2:
            continue
        if any(
            col.default is not None and not col.default.is_scalar
            for m in {s.manager.mapper for s in sts}
            for ts in infos[m].tables
            for col in ts.table.c
        ):
            # callable, SQL-expression and sequence defaults are evaluated in insert order,
            # for every column of the table (mapped by these objects or not): reordering would
            # change them
            continue
        if any(
            ts.table in ordered for m in {s.manager.mapper for s in sts} for ts in infos[m].tables
        ):
            # ... and so are the values a sequence gives a column the rows leave out
            continue
        # The unit of work batches consecutive rows *of one table* with equal key sets:
        # regroup only if some table's rows are not already contiguous by key set.
        sigs = [_sig_key(st, infos) for st in sts]
        if all(_runs(seq) <= len(set(seq)) for seq in _table_keysets(sigs).values()):
            continue
        groups: dict[Any, list[InstanceState[Any]]] = defaultdict(list)
        for st, sig in zip(sts, sigs, strict=True):
            groups[sig].append(st)
        plans[base] = (sts, [s for g in groups.values() for s in g])
    return plans


def _sig_key(st: InstanceState[Any], infos: dict[Any, MapperInfo]) -> Any:
    """Per table of the object, which of its columns it supplies (the INSERT's key set)."""
    info = infos[st.manager.mapper]
    d = st.dict
    return tuple(
        (
            ts.table,
            tuple(
                (spec.propkey in d and (d[spec.propkey] is not None or spec.eval_none))
                for spec in ts.columns
                if spec.propkey not in ts.pk_propkeys
            ),
        )
        for ts in info.tables
    )
