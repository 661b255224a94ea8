"""Which new objects of a flush we write ourselves, which stay native, and why.

The rules mirror ``orm/persistence.py``: a row's values are what ``_collect_insert_commands``
would have put in the INSERT's parameters (``None`` omitted unless the type evaluates
``None``; ORM-level defaults; explicit ``None`` for columns without any default), then the
column defaults the compiled INSERT would have evaluated in Python ("prefetch" columns) and
the server defaults it would have left to the database ("postfetch", or RETURNING when the
mapper prefers eager defaults). Anything we cannot reproduce exactly makes the mapper -- or
the connected group of new objects -- fall back to the native flush with a recorded reason.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, Table
from sqlalchemy.orm import Mapper, RelationshipProperty
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.base import NO_VALUE, PassiveFlag
from sqlalchemy.orm.interfaces import MANYTOMANY
from sqlalchemy.orm.state import InstanceState

from . import _sa
from ._sequences import id_column_kind

# How a column's value is produced when the object has none for it.
D_NONE = 0  # explicit NULL (``_insert_cols_as_none``)
D_SCALAR = 1  # Python scalar default, evaluated client side ("prefetch")
D_CALLABLE = 2  # Python callable default without context ("prefetch")
D_SERVER = 3  # server default: omitted from the INSERT ("postfetch"/RETURNING)
D_OMIT = 4  # no default at all: omitted (the database decides)
D_NULL = 5  # D_OMIT where the catalog says the column has no default: plain NULL, no bind
D_SQL = 6  # SQL-expression default: its SQL rendered into the INSERT (the value: that SQL)

MISSING: Any = object()
OPAQUE_BIND: Any = object()
"""In ``MapperInfo.uncast``: a bind processor not to call (the application's own code)."""
"""Sentinel: an attribute absent from the instance dict."""


@dataclass
class ColumnSpec:
    column: Column[Any]
    name: str
    propkey: str
    eval_none: bool
    default_kind: int
    default_value: Any = None
    bind: Callable[[Any], Any] | None = None
    pure_bind: bool = False
    """The bind processor is SQLAlchemy's own side-effect-free one (``Boolean``, ``Enum``):
    it may be applied column by column instead of row by row."""


@dataclass
class TableSpec:
    table: Table
    columns: list[ColumnSpec]
    pk_propkeys: list[str]
    equated: list[tuple[str, str]]
    """(source propkey, dest propkey) pairs that copy inherited primary keys."""
    equated_same: list[str]
    """propkeys of inherited primary keys copied onto the same attribute (a native flush
    still sets them through the attribute, after the inherited table's INSERT)."""
    orm_defaults: list[tuple[str, str, Any]]
    """(propkey, column name, value) ORM-level defaults (SQLAlchemy 2.1)."""
    eager_server_cols: frozenset[str]
    """names of server-default columns whose values the native flush fetches back."""
    plan: list[tuple[str, str, bool, Any, int, Any, Any]] = field(default_factory=list)
    """Per column, precomputed for the row loop:
    (propkey, name, eval_none, bind processor, default kind, default value, ORM default)."""
    pure_binds: frozenset[str] = frozenset()
    """propkeys of the columns whose bind processor is pure (``ColumnSpec.pure_bind``)."""

    def __post_init__(self) -> None:
        self.pure_binds = frozenset(s.propkey for s in self.columns if s.pure_bind)
        orm = {name: value for _k, name, value in self.orm_defaults}
        self.plan = [
            (
                s.propkey,
                s.name,
                s.eval_none,
                s.bind,
                s.default_kind,
                s.default_value,
                orm.get(s.name, MISSING),
            )
            for s in self.columns
        ]


@dataclass
class Relationship:
    prop: RelationshipProperty[Any]
    key: str
    direction: Any
    pairs: list[tuple[Any, Any]]
    secondary: Table | None
    secondary_pairs: list[tuple[Any, Any]]
    secondary_defaults: list[tuple[str, int, Any]] = field(default_factory=list)
    """Python defaults of the association table's other columns, which its INSERT fills:
    (column name, D_SCALAR or D_CALLABLE, the value or callable)."""
    uncast_pairs: list[tuple[Any, Any]] = field(default_factory=list)
    """The pairs whose foreign key column is bound without a cast (``MapperInfo.uncast``):
    the key copied into it may be one a native batched INSERT cannot send."""


@dataclass
class MapperInfo:
    """Per-mapper facts for one dialect, computed once."""

    mapper: Mapper[Any]
    fast_reason: str | None
    id_table: Table | None
    id_column: Column[Any] | None
    id_propkey: str | None
    tables: list[TableSpec]
    relationships: list[Relationship]
    self_referential: bool
    id_composite: bool = False
    """The id column is one of several primary key columns (the others given)."""
    no_prefetch: bool = False
    """Natively written objects of this mapper must get no ids drawn in advance (whether
    their INSERT fails depends on it)."""
    listeners: tuple[int, int] = (0, 0)
    """``_sa.listener_state`` when analyzed: analyzed again when it changes."""
    uncast: list[tuple[str, Table, str, Callable[[Any], Any] | None, Any]] = field(
        default_factory=list
    )
    """(propkey, table, column name, bind processor, scalar default or None) of columns whose
    parameter a native batched INSERT leaves untyped (``_sa.is_uncast_bind``)."""


_lock = threading.Lock()
_MEMO = "_async_batch_mapper_infos"
# dialects holding a memo (weakly), for clear_cache
_memo_dialects: weakref.WeakSet[Any] = weakref.WeakSet()


def mapper_info(mapper: Mapper[Any], dialect: Any) -> MapperInfo:
    """The mapper's facts for this dialect instance: bind processors depend on the engine's
    own settings (``json_serializer`` and the like), not only on the dialect's name. Kept on
    the dialect, as SQLAlchemy keeps its per-dialect type memos: the processors' closures
    refer back to it, which a cache outside it would keep alive forever."""
    memo: dict[Mapper[Any], MapperInfo] | None = dialect.__dict__.get(_MEMO)
    info = memo.get(mapper) if memo is not None else None
    if info is None or info.listeners != _sa.listener_state(mapper):
        info = _analyze(mapper, dialect)
        with _lock:
            memo = dialect.__dict__.setdefault(_MEMO, {})
            memo[mapper] = info
            _memo_dialects.add(dialect)
    return info


def _default_kind(
    col: Column[Any], mapper: Mapper[Any], dialect: Any = None
) -> tuple[int, Any, str | None]:
    """(kind, value, reason-if-unsupported) for a column missing from the parameters."""
    d = col.default
    if d is not None:
        if getattr(d, "is_sequence", False):
            if col.primary_key:
                return D_SERVER, None, None
            return D_OMIT, None, f"column {col.table.name}.{col.name} has a Sequence default"
        if getattr(d, "is_clause_element", False):
            sql = _sa.render_default(d, dialect) if dialect is not None else None
            if sql is None or col.primary_key:
                return (
                    D_OMIT,
                    None,
                    f"column {col.table.name}.{col.name} has a SQL-expression default",
                )
            # rendered into the INSERT as natively, evaluated by the server per row
            return D_SQL, sql, None
        if getattr(d, "is_callable", False):
            if _sa.is_context_free_callable(d):
                return D_CALLABLE, d.arg, None  # type: ignore[attr-defined]
            return (
                D_OMIT,
                None,
                f"column {col.table.name}.{col.name} has a context-sensitive default",
            )
        if getattr(d, "is_scalar", False):
            return D_SCALAR, d.arg, None  # type: ignore[attr-defined]
        return D_OMIT, None, f"column {col.table.name}.{col.name} has an unsupported default"
    if col.server_default is not None:
        return D_SERVER, None, None
    return D_OMIT, None, None


def _analyze(mapper: Mapper[Any], dialect: Any) -> MapperInfo:
    reasons: list[str] = []
    listeners = _sa.listener_state(mapper)
    if listeners[0] == 2:
        reasons.append("mapper has before_insert/after_insert listeners")
    if listeners[1] == 2:
        reasons.append("mapper has refresh_flush listeners")
    if mapper.version_id_col is not None:
        reasons.append("mapper uses version_id_col")
    if _sa.readonly_props(mapper):
        reasons.append("mapper has read-only (expression) column properties")
    if not mapper.batch:
        reasons.append("mapper has batch=False")
    if mapper.base_mapper.eager_defaults is True:
        # eager_defaults=True may emit a SELECT per row after INSERT natively.
        reasons.append("mapper has eager_defaults=True")

    col_to_key = _sa.column_to_propkey(mapper)
    no_prefetch = False
    tables: list[TableSpec] = []
    uncast: list[tuple[str, Table, str, Callable[[Any], Any] | None, Any]] = []
    for table in _sa.tables_of(mapper):
        if not isinstance(table, Table):
            reasons.append(f"mapped selectable {table} is not a Table")
            continue
        p2c = _sa.propkey_to_col(mapper, table)
        mapped_cols = set(p2c.values())
        for col in table.c:
            if col not in mapped_cols and col.default is not None:
                # the INSERT of a table fills every column's default, mapped or not (a
                # single-table sibling's column, an excluded one): only the unit of work's does
                reasons.append(
                    f"column {table.name}.{col.name} has a default but is not mapped by "
                    f"{mapper.class_.__name__}"
                )
        eval_none = _sa.cols_evaluating_none(mapper, table)
        as_none = _sa.cols_as_none(mapper, table)
        specs: list[ColumnSpec] = []
        for propkey, col in p2c.items():
            if _sa.has_bind_expression(col):
                reasons.append(f"column {table.name}.{col.name} type has a bind expression")
            if col.key in as_none:
                kind, value, why = D_NONE, None, None
            else:
                kind, value, why = _default_kind(col, mapper, dialect)
            if why and not col.primary_key:
                reasons.append(why)
            if _sa.is_uncast_bind(col, dialect):
                bind = _sa.bind_processor(col, dialect)
                # a TypeDecorator's bind is the application's code: not called to check
                if _sa.is_type_decorator(col):
                    bind = OPAQUE_BIND
                uncast.append((propkey, table, col.name, bind, value if kind == D_SCALAR else None))
                if kind == D_CALLABLE or _sa.is_null_type(col):
                    # its values may be ones a native batch cannot send or render (see
                    # MapperInfo.uncast; NullType has no cast to render): only the unit of
                    # work's INSERT shows, with the ids it would have
                    why = "has a callable default" if kind == D_CALLABLE else "has no type"
                    reasons.append(
                        f"column {table.name}.{col.name} {why} and is bound without a cast"
                    )
                    no_prefetch = True
            specs.append(
                ColumnSpec(
                    column=col,
                    name=col.name,
                    propkey=propkey,
                    eval_none=col in eval_none,
                    default_kind=kind,
                    default_value=value,
                    bind=_sa.bind_processor(col, dialect),
                    pure_bind=_sa.has_pure_bind(col, dialect),
                )
            )
        equated: list[tuple[str, str]] = []
        equated_same: list[str] = []
        for m, pairs in _sa.table_to_equated(mapper, table):
            m_keys = _sa.column_to_propkey(m)
            for left, right in pairs:
                lk, rk = m_keys.get(left), m_keys.get(right)
                if lk is None or rk is None:
                    reasons.append(f"inherited key {table.name}.{right.name} is not mapped")
                elif lk != rk:
                    equated.append((lk, rk))
                else:
                    equated_same.append(rk)
        orm_defaults = []
        for propkey, col, value in _sa.orm_defaults(mapper, table):
            orm_defaults.append((propkey, col.name, value))
        # natively the INSERT of a hierarchy's table returns the server defaults of the
        # table's own mapper (base_mapper._sorted_tables): a column a single-table subclass
        # adds is not among them, and is expired after the flush instead -- unless that
        # mapper has none, then return_defaults() without columns returns every one
        server_cols = _sa.server_default_cols(_sa.table_mapper(mapper, table), table)
        if not server_cols:
            server_cols = _sa.all_server_default_cols(table)
        eager = (
            frozenset(c.name for c in server_cols if c in col_to_key and not c.primary_key)
            if _sa.prefer_eager_defaults(mapper, dialect, table)
            else frozenset()
        )
        for name in sorted(eager):
            if _sa.has_column_expression(table.c[name]):
                # natively rendered around the column in RETURNING
                reasons.append(f"column {table.name}.{name} type has a column expression")
        pk_keys = [col_to_key[c] for c in _sa.pks_by_table(mapper, table) if c in col_to_key]
        tables.append(
            TableSpec(
                table=table,
                columns=specs,
                pk_propkeys=pk_keys,
                equated=equated,
                equated_same=equated_same,
                orm_defaults=orm_defaults,
                eager_server_cols=eager,
            )
        )

    # the id column: the base table's integer primary key column generated by a sequence, the
    # only one of its key (a concrete-inheritance mapper's own table is its base table); the
    # others, if any, are given (a tenant, a partition key)
    id_table = id_column = id_propkey = None
    id_composite = False
    root = mapper if mapper.concrete else mapper.base_mapper
    base_tables = _sa.tables_of(root)
    if base_tables:
        bt = base_tables[0]
        pks = _sa.pks_by_table(root, bt)
        generated = [c for c in pks if isinstance(bt, Table) and id_column_kind(bt, c)]
        if len(generated) == 1:
            id_table, id_column = bt, generated[0]
            id_propkey = col_to_key.get(generated[0])
            id_composite = len(pks) > 1

    rels: list[Relationship] = []
    self_ref = False
    for prop in mapper.relationships:
        if prop.viewonly:
            continue
        if prop.post_update:
            reasons.append(f"relationship {prop} uses post_update")
        if prop.mapper.base_mapper is mapper.base_mapper:
            self_ref = True
        secondary = prop.secondary if isinstance(prop.secondary, Table) else None
        sec_pairs = list(prop.secondary_synchronize_pairs or ())
        sec_defaults: list[tuple[str, int, Any]] = []
        if secondary is not None:
            linked = {r for _l, r in prop.synchronize_pairs} | {r for _l, r in sec_pairs}
            for col in secondary.c:
                if _sa.has_bind_expression(col):
                    reasons.append(f"column {secondary.name}.{col.name} type has a bind expression")
                if col in linked or col.default is None:
                    continue
                kind, value, why = _default_kind(col, mapper)
                if why:
                    reasons.append(why)
                elif kind in (D_SCALAR, D_CALLABLE):
                    sec_defaults.append((col.name, kind, value))
        rels.append(
            Relationship(
                prop=prop,
                key=prop.key,
                direction=prop.direction,
                pairs=list(prop.synchronize_pairs),
                secondary=secondary,
                secondary_pairs=sec_pairs,
                secondary_defaults=sec_defaults,
                uncast_pairs=[
                    (left, r)
                    for left, r in prop.synchronize_pairs
                    if prop.direction is not MANYTOMANY and _sa.is_uncast_bind(r, dialect)
                ],
            )
        )
        if prop.direction is MANYTOMANY and not isinstance(prop.secondary, Table):
            reasons.append(f"relationship {prop} has a non-Table secondary")

    return MapperInfo(
        mapper=mapper,
        fast_reason="; ".join(dict.fromkeys(reasons)) or None,
        id_table=id_table,
        id_column=id_column,
        id_propkey=id_propkey,
        id_composite=id_composite,
        tables=tables,
        relationships=rels,
        self_referential=self_ref,
        uncast=uncast,
        listeners=listeners,
        no_prefetch=no_prefetch,
    )


def clear_cache() -> None:
    with _lock:
        for dialect in list(_memo_dialects):
            dialect.__dict__.pop(_MEMO, None)
        _memo_dialects.clear()


# --- per-flush classification ---------------------------------------------------------------


def related_states(
    state: InstanceState[Any],
    info: MapperInfo,
    d: dict[str, Any] | None = None,
    pending: bool = False,
    memo: _sa.HistoryMemo | None = None,
) -> list[tuple[Relationship, InstanceState[Any] | None]]:
    """(relationship, related state) for every object in the relationship's added history --
    what the unit of work's dependency processors synchronize keys for. ``pending`` includes
    appends queued on unloaded collections of persistent objects (``memo``: see
    ``_sa.collection_history``)."""
    out: dict[InstanceState[Any], list[tuple[Relationship, InstanceState[Any] | None]]] = {}
    dicts = {state: state.dict if d is None else d}
    related_states_many([state], info, dicts, out, pending, memo)
    return out[state]


def related_states_many(
    states: list[InstanceState[Any]],
    info: MapperInfo,
    dicts: dict[InstanceState[Any], dict[str, Any]],
    out: dict[InstanceState[Any], list[tuple[Relationship, InstanceState[Any] | None]]],
    pending: bool = False,
    memo: _sa.HistoryMemo | None = None,
) -> None:
    """``related_states`` for many states of one mapper, relationship by relationship (each
    state's list in ``out`` comes out in relationship order)."""
    lists = [out.setdefault(st, []) for st in states]
    passive = PassiveFlag.PASSIVE_NO_INITIALIZE
    if pending:
        passive |= PassiveFlag.INCLUDE_PENDING_MUTATIONS
    else:
        memo = None

    def history(st: InstanceState[Any], key: str, d: dict[str, Any]) -> Any:
        if memo is not None:
            return _sa.collection_history(st, key, memo)
        return st.manager[key].impl.get_history(st, d, passive)

    for rel in info.relationships:
        key = rel.key
        # a scalar: many-to-one, or one-to-one (uselist=False) either way
        to_one = not rel.prop.uselist
        for st, found in zip(states, lists, strict=True):
            d = dicts[st]
            if key not in d:
                if pending and "_pending_mutations" in st.__dict__:
                    hist = history(st, key, d)
                    for obj in hist.added or ():
                        found.append((rel, None if obj is None else instance_state(obj)))
                continue
            original = st.committed_state.get(key, MISSING)
            if original is NO_VALUE:
                # set on a pending object: the whole current value is "added" (the shortcut
                # of History.from_object_attribute / from_collection for an original of
                # NO_VALUE)
                current = d[key]
                if to_one:
                    found.append((rel, None if current is None else instance_state(current)))
                else:
                    found.extend(
                        [(rel, instance_state(obj)) for obj in _sa.collection_members(current)]
                    )
                continue
            if not to_one and type(original) is list and not original:
                # a collection that was empty when first changed: all of it is "added"
                # (History.from_collection's answer for an empty original, in its order)
                found.extend(
                    [
                        (rel, None if obj is None else instance_state(obj))
                        for obj in _sa.collection_members(d[key])
                    ]
                )
                continue
            hist = history(st, key, d)
            for obj in hist.added or ():
                found.append((rel, None if obj is None else instance_state(obj)))
