"""Every private SQLAlchemy API async_batch touches lives here (and the asyncpg internals the
writer's cancellation workaround and its COPY codec check need).

SQLAlchemy gives us no public way to write rows for pending objects ourselves and then hand
them back to the session as if its own flush had written them. What we need is small and has
been stable across 2.0 and 2.1: the session's pending set, the unit of work's registered
states, a few memoized mapper tables that ``orm/persistence.py`` itself uses to build INSERT
parameters, the session's own ``_register_persistent`` bookkeeping, the attribute
bookkeeping a failed flush leaves behind (``committed_state``), collections' adapters, the
connection's DBAPI error handling, and (for speed, checked against the installed source) the
commit's expiry.
Each is wrapped here so that a SQLAlchemy upgrade breaks one module, and ``check_version()``
refuses versions this module was not written for.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import inspect
import itertools
import operator
import textwrap
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import sqlalchemy
from sqlalchemy import Column, Table, event
from sqlalchemy import exc as sa_exc
from sqlalchemy import util as sa_util
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapper, Session, SessionTransaction, unitofwork
from sqlalchemy.orm import base as orm_base
from sqlalchemy.orm.base import PassiveFlag
from sqlalchemy.orm.interfaces import MANYTOONE, ONETOMANY
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql import schema as sa_schema
from sqlalchemy.sql import sqltypes

_T = TypeVar("_T")

SUPPORTED = ((2, 0), (2, 1))


def _version() -> tuple[int, int]:
    major, minor = sqlalchemy.__version__.split(".")[:2]
    return int(major), int(minor)


SA_VERSION = _version()

NO_VALUE: Any = orm_base.NO_VALUE
"""The marker for "no value" (as in a committed state: the attribute had none before)."""


def check_version() -> None:
    """Refuse SQLAlchemy versions whose internals this module was not written against."""
    if SA_VERSION not in SUPPORTED:
        raise RuntimeError(
            f"async_batch supports SQLAlchemy 2.0.x and 2.1.x; found {sqlalchemy.__version__}. "
            "Pin 'sqlalchemy>=2.0,<2.2' or upgrade async_batch."
        )


# --- session and unit of work -----------------------------------------------------------------


_SAVE = (False, False)  # (isdelete, listonly) of an object the unit of work will save
_key_of = operator.attrgetter("key")


def registered_states(
    flush_context: Any,
) -> tuple[list[InstanceState[Any]], list[tuple[InstanceState[Any], bool]]]:
    """In one pass over the unit of work's registered states: the new ones it will INSERT,
    and (state, is_delete) for every persistent one it will UPDATE/DELETE (list-only entries
    are neither)."""
    registered: dict[InstanceState[Any], tuple[bool, bool]] = flush_context.states
    # the common flush, every object new and saved: decided without a Python-level loop
    flags = list(registered.values())
    if flags.count(_SAVE) == len(flags):
        states = list(registered)
        if list(map(_key_of, states)).count(None) == len(states):
            return states, []
    new: list[InstanceState[Any]] = []
    persistent: list[tuple[InstanceState[Any], bool]] = []
    add_new = new.append
    for st, (isdelete, listonly) in registered.items():
        if listonly:
            continue
        if st.key is None:
            if not isdelete:
                add_new(st)
        else:
            persistent.append((st, isdelete))
    return new, persistent


_mapper_of = operator.attrgetter("manager.mapper")
_obj_of = operator.methodcaller("obj")


def group_by_mapper(
    states: list[InstanceState[Any]],
) -> dict[Mapper[Any], list[InstanceState[Any]]]:
    """States per mapper, each list in the given order."""
    mappers = list(map(_mapper_of, states))
    distinct = dict.fromkeys(mappers)
    if len(distinct) == 1:
        return {mappers[0]: list(states)}
    if len(distinct) <= 8:
        # a C-level pass per mapper beats a Python-level pass over the states
        return {
            m: list(itertools.compress(states, map(operator.is_, mappers, itertools.repeat(m))))
            for m in distinct
        }
    out: dict[Mapper[Any], list[InstanceState[Any]]] = {}
    for m, st in zip(mappers, states, strict=True):
        group = out.get(m)
        if group is None:
            out[m] = [st]
        else:
            group.append(st)
    return out


def state_dicts(states: list[InstanceState[Any]]) -> dict[InstanceState[Any], dict[str, Any]]:
    """Each state's instance dict (``InstanceState.dict`` for live objects, which pending
    objects in a session are), read without the property's per-call overhead."""
    try:
        return dict(zip(states, map(orm_base.instance_dict, map(_obj_of, states)), strict=True))
    except AttributeError:  # an object is gone: the property's answer, {}, for it
        return {st: st.dict for st in states}


def withhold_states(
    flush_context: Any, groups: Mapping[Mapper[Any], Sequence[InstanceState[Any]]]
) -> None:
    """Keep written states (per mapper) registered (so a dependency processor that cascades to
    them finds them already there instead of registering them again) but out of every
    per-mapper set the save and dependency actions iterate, so the unit of work never writes
    them."""
    uow_states = flush_context.states
    mappers = flush_context.mappers
    for m, group in groups.items():
        uow_states.update(dict.fromkeys(group, (False, True)))
        mappers[m].difference_update(group)


def release_states(flush_context: Any, states: Iterable[InstanceState[Any]]) -> None:
    """Drop withheld states before the unit of work finalizes its own."""
    _consume(map(flush_context.states.pop, states, itertools.repeat(None)))


def wrap_flush_context(
    flush_context: Any,
    execute: Callable[[Callable[[], None]], None],
    finalize: Callable[[Callable[[], None]], None],
) -> None:
    """Run ``execute``/``finalize`` around the unit of work's own steps for this flush only.

    Instance attributes shadow the methods, so only this UOWTransaction is affected; the
    session's ``_flush`` calls them inside its try/rollback block, which gives our writes the
    same transaction and failure handling as native INSERTs.
    """
    native_execute = _weakly_bound(flush_context, flush_context.execute)
    native_finalize = _weakly_bound(flush_context, flush_context.finalize_flush_changes)
    flush_context.execute = lambda: execute(native_execute)
    flush_context.finalize_flush_changes = lambda: finalize(native_finalize)


def _weakly_bound(owner: Any, method: Callable[[], None]) -> Callable[[], None]:
    """``method`` (bound to ``owner``) without a strong reference to ``owner``: kept in the
    owner's own ``__dict__``, a bound method would make a reference cycle, and the flush
    context -- with every state and attribute history of the flush -- would outlive the flush
    until the next garbage collection (a native flush context is freed as the flush ends)."""
    func = getattr(method, "__func__", None)
    if func is None or getattr(method, "__self__", None) is not owner:
        return method
    ref = weakref.ref(owner)

    def call() -> None:
        obj = ref()
        assert obj is not None
        func(obj)

    return call


def changed_columns(state: InstanceState[Any], memo: HistoryMemo | None = None) -> list[Any]:
    """The columns of a persistent object's changed column attributes (what its UPDATE sets):
    an attribute in the committed state whose value is not equal to the committed one
    (``_collect_update_commands``; ``merge()`` leaves unchanged ones there). ``memo``: see
    ``collection_history``."""
    mapper = state.manager.mapper
    attrs = mapper.column_attrs
    rels = mapper.relationships
    manager = state.manager
    d = state.dict
    out: list[Any] = []
    for key, before in state.committed_state.items():
        prop = attrs.get(key)
        if prop is None:
            if key in rels:
                out.extend(_relationship_changed_columns(state, rels[key], memo))
            continue
        if key in d and manager[key].impl.is_equal(d[key], before) is True:
            continue
        out.extend(c for c in prop.columns if isinstance(c, Column))
    pending = state.__dict__.get("_pending_mutations")
    for key in pending or ():
        if key in rels and key not in state.committed_state:
            out.extend(_relationship_changed_columns(state, rels[key], memo))
    return out


def _relationship_changed_columns(
    state: InstanceState[Any], prop: Any, memo: HistoryMemo | None
) -> list[Any]:
    """The foreign key columns the unit of work's dependency processors will change for a
    changed relationship of a persistent object: its own (many-to-one), or those of the
    objects it no longer holds (one-to-many: set to NULL, or the rows deleted)."""
    if prop.direction is MANYTOONE:
        return [r for _l, r in prop.synchronize_pairs if isinstance(r, Column)]
    if prop.direction is ONETOMANY:
        hist = collection_history(state, prop.key, memo)
        if hist.deleted:
            return [r for _l, r in prop.synchronize_pairs if isinstance(r, Column)]
    return []


def bind_cast_type(col: Column[Any], dialect: Any) -> str | None:
    """The type a native INSERT casts this column's parameter to (``$n::<type>``, the
    asyncpg dialect's bind casts; ``PGCompiler.render_bind_cast``), or None without a cast."""
    if not getattr(dialect, "_bind_typing_render_casts", False) or is_uncast_bind(col, dialect):
        return None
    impl = col.type._unwrapped_dialect_impl(dialect)  # noqa: SLF001
    if impl._type_affinity is sqltypes.String and getattr(impl, "length", None):  # noqa: SLF001
        impl = sqltypes.STRINGTYPE
    return str(dialect.type_compiler_instance.process(impl))


def result_processor(col: Column[Any], dialect: Any, type_oid: int | None) -> Any:
    """What a result row applies to this column's raw driver value (``type_oid``: the OID
    the row's description reports), as ``CursorResult`` does: None when nothing."""
    return col.type._cached_result_processor(dialect, type_oid)  # noqa: SLF001


@contextlib.contextmanager
def dml_tables(connection: Connection, seen: list[tuple[Table, bool]]) -> Iterator[None]:
    """Append to ``seen`` (the table, whether an INSERT) for every ORM/Core INSERT, UPDATE or
    DELETE the connection executes inside the block (the last one is the statement that
    failed, if one did)."""

    def before(
        _conn: Any, _cursor: Any, _stmt: Any, _params: Any, context: Any, _many: Any
    ) -> None:
        compiled: Any = getattr(context, "compiled", None)
        if compiled is None or not (compiled.isinsert or compiled.isupdate or compiled.isdelete):
            return
        table = getattr(compiled.statement, "table", None)
        if isinstance(table, Table):
            seen.append((table, bool(compiled.isinsert)))

    event.listen(connection, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(connection, "before_cursor_execute", before)


class _DryRun(unitofwork.UOWTransaction):
    """A unit of work that only plans: the flush's registrations, its presort steps and its
    sort, never executed. An object a relationship cascades to but the session does not hold
    is refused without the warning (the flush itself still gives it)."""

    def register_object(
        self,
        state: InstanceState[Any],
        isdelete: bool = False,
        listonly: bool = False,
        cancel_delete: bool = False,
        operation: str | None = None,
        prop: Any = None,
    ) -> bool:
        if not self.session._contains_state(state):  # noqa: SLF001
            return False
        return bool(
            super().register_object(state, isdelete, listonly, cancel_delete, operation, prop)
        )


# the per-object save action (renamed in 2.1); the dry run needs it and the planning method
_SAVE_STATE = getattr(unitofwork, "_SaveUpdateState", None) or getattr(
    unitofwork, "SaveUpdateState", None
)
DRY_RUN_AVAILABLE = _SAVE_STATE is not None and callable(
    getattr(unitofwork.UOWTransaction, "_generate_actions", None)
)


def save_steps(session: Session, flush_context: Any) -> dict[InstanceState[Any], int]:
    """Where the flush's unit of work saves objects one by one -- its mappers' dependencies
    form a cycle, as a self-referencing mapper's do -- the step of its sort each object's save
    is in (``topological.sort_as_subsets``: it saves step by step, each mapper's objects of one
    step in one batch, in insert order); empty where it saves mapper by mapper.

    Found by a dry run of the unit of work's own planning with the flush's registrations:
    its presort steps (which may load a replaced one-to-one object's previous value, or a
    collection: the values are handed to the flush's own cache, which would load them just
    the same, before any INSERT) and its sort. Raises ``CircularDependencyError`` where the
    flush would (objects depending on each other)."""
    dry = _DryRun(session)
    shared: dict[Any, Any] = flush_context.attributes
    cache: dict[Any, Any] = dry.attributes
    # the unit of work's history cache: keyed ("history", state, key)
    cache.update({k: v for k, v in shared.items() if isinstance(k, tuple) and k[0] == "history"})
    for state, (isdelete, listonly) in list(flush_context.states.items()):
        dry.register_object(state, isdelete=isdelete, listonly=listonly)
    actions = dry._generate_actions()  # type: ignore[no-untyped-call]  # noqa: SLF001
    for k, v in cache.items():
        if isinstance(k, tuple) and k[0] == "history" and k not in shared and k[1].key is not None:
            shared[k] = v
    if not dry.cycles:
        return {}
    steps = _subset_levels(dry.dependencies, actions)
    if steps is None:
        raise sa_exc.CircularDependencyError(
            "Circular dependency detected.", set(), dry.dependencies
        )
    return {a.state: step for a, step in steps.items() if type(a) is _SAVE_STATE}


def _subset_levels(edges: Iterable[tuple[Any, Any]], items: Iterable[Any]) -> dict[Any, int] | None:
    """The subset ``topological.sort_as_subsets(edges, items)`` yields each item in (its
    level), in one pass over the graph instead of one per level: 0 for an item no other
    item must precede, else one more than the deepest of those (a dependency that is not
    among the items holds nothing back). None where it would raise (a cycle)."""
    members = set(items)
    deps: dict[Any, list[Any]] = {}
    for parent, child in edges:
        if parent in members and child in members:
            deps.setdefault(child, []).append(parent)
    level: dict[Any, int] = {}
    for item in members:
        if item in level:
            continue
        best = {item: 0}
        stack = [(item, iter(deps.get(item, ())))]
        while stack:
            node, todo = stack[-1]
            nxt = next(todo, None)
            if nxt is None:
                stack.pop()
                level[node] = best.pop(node)
                if stack:
                    below = stack[-1][0]
                    best[below] = max(best[below], level[node] + 1)
            elif nxt in level:
                best[node] = max(best[node], level[nxt] + 1)
            elif nxt in best:  # on the current path: a cycle
                return None
            else:
                best[nxt] = 0
                stack.append((nxt, iter(deps.get(nxt, ()))))
    return level


def declared_dependencies(table: Table) -> Iterable[Table]:
    """Tables ``table`` was declared to depend on (``Table.add_is_dependent_on``), which
    SQLAlchemy's table sort honours beside foreign keys."""
    deps: Iterable[Table] = getattr(table, "_extra_dependencies", ())
    return deps


def mapper_sort_key(mapper: Mapper[Any]) -> str:
    """The key the unit of work sorts its per-mapper actions by before its topological sort."""
    return str(mapper._sort_key)  # noqa: SLF001


def has_p2p_listeners(session: Session) -> bool:
    return bool(session.dispatch.pending_to_persistent)


def in_session(session: Session, state: InstanceState[Any]) -> bool:
    """Whether the session holds the object (pending, or in its identity map): what the unit
    of work's processors check before writing an association row for it."""
    return bool(session._contains_state(state))  # noqa: SLF001


def has_pending(session: Session) -> bool:
    """Whether the session has new (pending) objects, without building ``Session.new``."""
    return bool(session._new)  # noqa: SLF001


FlushAround = Callable[[Session, Any, Callable[[], None]], None]


def wrap_session_flush(owner: Any, around: FlushAround) -> Callable[[], None]:
    """Route ``Session._flush`` of ``owner`` -- a Session subclass, or one Session instance --
    through ``around(session, objects, proceed)``; return what undoes it.

    The whole flush runs inside ``around``, from before ``before_flush`` to after the unit of
    work's last step, whatever way it ends: that is where async_batch pauses the cyclic
    garbage collector (the flush hooks themselves see only part of the flush, and not every
    way out of it)."""
    if isinstance(owner, type):
        cls: Any = owner
        original = cls._flush
        had = "_flush" in cls.__dict__
        previous = cls.__dict__.get("_flush")

        def method(self: Session, objects: Any = None) -> None:
            around(self, objects, lambda: _flush_via(original, self, objects))

        method.__wrapped__ = original  # type: ignore[attr-defined]
        cls._flush = method

        def undo_class() -> None:
            if cls.__dict__.get("_flush") is method:
                if had:
                    cls._flush = previous
                else:
                    del cls._flush

        return undo_class

    session_ref = weakref.ref(owner)
    unbound = type(owner)._flush  # noqa: SLF001

    def bound(objects: Any = None) -> None:
        session = session_ref()
        assert session is not None
        around(session, objects, lambda: _flush_via(unbound, session, objects))

    owner.__dict__["_flush"] = bound

    def undo_instance() -> None:
        session = session_ref()
        if session is not None and session.__dict__.get("_flush") is bound:
            del session.__dict__["_flush"]

    return undo_instance


def flush_connection(flush_context: Any, mapper: Mapper[Any]) -> Connection:
    conn: Connection = flush_context.transaction.connection(mapper)
    return conn


def is_autocommit(connection: Connection) -> bool:
    """Whether the connection runs in AUTOCOMMIT mode (engine-wide or by execution option):
    then each statement of a flush commits on its own."""
    return bool(connection._is_autocommit_isolation())  # noqa: SLF001


def has_connection_callable(session: Session) -> bool:
    return session.connection_callable is not None


class Adoption:
    """What ``register_persistent`` changed, to undo it exactly: it adopted the states of a
    write whose outcome the server had not yet given (``_writer.start_copy``), and the write
    failed. States it left to the session's own method wait in ``slow`` for the outcome."""

    __slots__ = ("modified", "new", "saved", "slow", "transaction")

    def __init__(self) -> None:
        # per group of adopted states, in C-level passes rather than copies per state:
        # (states, their __dict__s, per key adoption sets or pops the values before --
        # _ABSENT: no entry; None for the key: no state had one --, their committed-state
        # dicts from before (adoption gives each a new one), copies of their expired
        # attributes (None: no state had any))
        self.saved: list[
            tuple[
                list[InstanceState[Any]],
                list[dict[str, Any]],
                dict[str, list[Any] | None],
                list[dict[str, Any]],
                list[set[str] | None] | None,
            ]
        ] = []
        self.slow: set[InstanceState[Any]] = set()
        self.new: dict[InstanceState[Any], Any] = {}
        self.modified: list[InstanceState[Any]] = []
        # the session transaction, and the states adoption added to its _new and _dirty
        self.transaction: tuple[Any, list[InstanceState[Any]], list[InstanceState[Any]]] | None = (
            None
        )

    def complete(self, session: Session) -> None:
        """The write succeeded: adopt the rest as the session does."""
        if self.slow:
            session._register_persistent(self.slow)  # noqa: SLF001

    def undo(self, session: Session) -> None:
        """The write failed: the states are pending again, as before adoption."""
        id_dict = session.identity_map._dict  # noqa: SLF001
        for states, sds, before, committeds, expireds in self.saved:
            for sd in sds:
                id_dict.pop(sd["key"], None)
            for key, values in before.items():
                if values is None:
                    for sd in sds:
                        sd.pop(key, None)
                    continue
                for sd, value in zip(sds, values, strict=True):
                    if value is _ABSENT:
                        sd.pop(key, None)
                    else:
                        sd[key] = value
            _consume(map(_set_committed_state, states, committeds))
            if expireds is not None:
                for state, expired in zip(states, expireds, strict=True):
                    if expired is not None:
                        state.expired_attributes.clear()
                        state.expired_attributes.update(expired)
        session.identity_map._modified.update(self.modified)  # noqa: SLF001
        if self.transaction is not None:
            trans, added_new, added_dirty = self.transaction
            for st in added_new:
                trans._new.pop(st, None)  # noqa: SLF001
            for st in added_dirty:
                trans._dirty.pop(st, None)  # noqa: SLF001
        new = session._new  # noqa: SLF001
        new.clear()
        new.update(self.new)
        self.saved = []


def register_persistent(
    session: Session,
    groups: Mapping[Mapper[Any], Sequence[InstanceState[Any]]],
    dicts: Mapping[InstanceState[Any], dict[str, Any]],
    adoption: Adoption | None = None,
) -> None:
    """Make written states (per mapper) persistent exactly as ``Session._register_persistent``
    does (identity key and map, committed state, transaction bookkeeping,
    ``pending_to_persistent``), inlined for pending states whose keys are new to the map;
    anything else goes through the session's own method.

    With ``adoption`` (no ``pending_to_persistent`` listeners: nothing outside the session
    sees the adoption), what changes is recorded there to be undone, and the states for the
    session's own method wait there (``Adoption.complete``)."""
    if not groups:
        return
    idmap = session.identity_map
    id_dict = idmap._dict  # noqa: SLF001
    wr = idmap._wr  # noqa: SLF001
    modified = idmap._modified  # noqa: SLF001
    new = session._new  # noqa: SLF001
    trans = session._transaction  # noqa: SLF001
    p2p = session.dispatch.pending_to_persistent or None
    slow: set[InstanceState[Any]] = set()
    adopted: list[InstanceState[Any]] = []
    saved = None
    if adoption is not None:
        assert p2p is None, "an adoption to undo fires no pending_to_persistent events"
        adoption.new = dict(new)
        saved = adoption.saved
    common = {**_ADOPTED, "_instance_dict": wr}
    repeat = itertools.repeat
    for mapper, group in groups.items():
        # each step in a C-level pass over the group: the same steps per state as
        # Session._register_persistent's, in the order that matters (the identity map's
        # setdefault in the group's order decides which of two equal keys is adopted)
        identity_class = mapper._identity_class  # noqa: SLF001
        keys = [p.key for p in mapper._identity_key_props]  # noqa: SLF001
        ds = list(map(dicts.__getitem__, group))
        if len(keys) == 1:
            values = list(map(dict.get, ds, repeat(keys[0])))
            idents: list[tuple[Any, ...]] = list(zip(values))
            partial = list(map(operator.is_, values, repeat(None)))
        else:
            idents = list(zip(*[map(dict.get, ds, repeat(k)) for k in keys], strict=True))
            partial = list(map(operator.contains, idents, repeat(None)))
        # the attributes InstanceState keeps in its __dict__ (plain class-level defaults, no
        # descriptors), set as _register_persistent and _commit_all_states set them
        sds = list(map(_vars_of, group))
        # the identity token: None, unless the object was loaded with one (and then made
        # transient)
        ikeys = list(
            zip(
                repeat(identity_class),
                idents,
                map(dict.get, sds, repeat("identity_token")),
                strict=False,
            )
        )
        # a partial key or a state with a key already: the session's own method
        unfit = list(
            map(
                operator.or_,
                partial,
                map(operator.is_not, map(dict.get, sds, repeat("key")), repeat(None)),
            )
        )
        if any(unfit):
            slow.update(itertools.compress(group, unfit))
            group, ds, sds, ikeys = _kept(list(map(operator.not_, unfit)), group, ds, sds, ikeys)
        # a key the map holds already (another object's, or a second object's of this flush)
        try:
            placed = list(map(operator.is_, map(id_dict.setdefault, ikeys, group), group))
        except BaseException:
            # a key that cannot be hashed (natively the same error): the map as it was,
            # with no entry for a state that has no key
            _unplace(id_dict, ikeys, group)
            raise
        if placed.count(True) < len(placed):
            slow.update(itertools.compress(group, map(operator.not_, placed)))
            group, ds, sds, ikeys = _kept(placed, group, ds, sds, ikeys)
        committeds = list(map(_committed_state_of, group))
        expireds = list(map(_expired_attributes_of, group))
        any_expired = any(expireds)
        if saved is not None:
            saved.append(
                (
                    list(group),
                    sds,
                    {k: _values_before(sds, k) for k in _ADOPTION_KEYS},
                    committeds,
                    list(map(_copy_or_none, expireds)) if any_expired else None,
                )
            )
        _consume(map(dict.update, sds, repeat(common)))
        _consume(map(operator.setitem, sds, repeat("key"), ikeys))
        if saved is not None:
            # the committed states from before stay as they were, for the undo
            _consume(map(_set_committed_state, group, iter(dict, None)))
        else:
            _consume(map(dict.clear, committeds))
        _consume(map(dict.pop, sds, repeat("_pending_mutations"), repeat(None)))
        if any_expired:
            for expired, d in zip(expireds, ds, strict=True):
                if expired:
                    expired.difference_update(d)
        adopted.extend(group)
    if modified:
        if adoption is not None:
            adoption.modified = [st for st in adopted if st in modified]
        modified.difference_update(adopted)
    # those still pending (an after_flush listener may have expunged some): the others are
    # "altered" as persistent ones, and get no pending_to_persistent event
    pending = list(itertools.compress(adopted, map(new.__contains__, adopted)))
    if trans is not None:
        added_dirty: list[InstanceState[Any]] = []
        if adoption is not None:
            # what the transaction records anew (per adopted object, not per object it holds)
            adoption.transaction = (trans, _weak_keys_missing(trans._new, pending), added_dirty)  # noqa: SLF001
        _weak_keys_set(trans._new, pending, True)  # noqa: SLF001
        if len(pending) < len(adopted):
            kept = set(pending)
            altered = [st for st in adopted if st not in kept]
            if adoption is not None:
                added_dirty.extend(_weak_keys_missing(trans._dirty, altered))  # noqa: SLF001
            _weak_keys_set(trans._dirty, altered, True)  # noqa: SLF001
    if p2p is not None:
        for state in pending:
            p2p(session, state)
    if p2p is None and len(pending) == len(new):
        # every pending object was adopted (each was pending once; no listener ran since)
        new.clear()
    else:
        _consume(map(new.pop, pending, itertools.repeat(None)))
    if slow and adoption is not None:
        adoption.slow = slow
    elif slow:
        session._register_persistent(slow)  # noqa: SLF001


def _kept(mask: list[bool], *lists: Sequence[Any]) -> tuple[list[Any], ...]:
    """Each of the parallel ``lists`` with only the entries ``mask`` keeps."""
    return tuple(list(itertools.compress(lst, mask)) for lst in lists)


def _unplace(id_dict: dict[Any, Any], keys: Sequence[Any], states: Sequence[Any]) -> None:
    """Remove the entries a ``setdefault`` pass over ``keys``/``states`` placed before one
    of the keys raised (the keys from that one on were not placed)."""
    for key, state in zip(keys, states, strict=True):
        try:
            if id_dict.get(key) is not state:
                continue
        except BaseException:
            return
        del id_dict[key]


def _copy_or_none(s: set[Any]) -> set[Any] | None:
    return set(s) if s else None


def _values_before(sds: list[dict[str, Any]], key: str) -> list[Any] | None:
    """Each dict's value of ``key`` (``_ABSENT``: none), or None where no dict has one."""
    if not any(map(dict.__contains__, sds, itertools.repeat(key))):
        return None
    return list(map(dict.get, sds, itertools.repeat(key), itertools.repeat(_ABSENT)))


_ADOPTED = {
    "_orphaned_outside_of_session": False,
    "modified": False,
    "expired": False,
    "_strong_obj": None,
}
_ADOPTION_KEYS = (*_ADOPTED, "_instance_dict", "key", "_pending_mutations")
"""The keys of a state's ``__dict__`` that ``register_persistent`` sets or pops."""


def _set_committed_state_attr(state: InstanceState[Any], value: dict[str, Any]) -> None:
    state.committed_state = value  # pragma: no cover - a SQLAlchemy without the slot


# the slot's own setter (C-level) where InstanceState keeps committed_state in a slot
_set_committed_state: Callable[[InstanceState[Any], dict[str, Any]], None] = getattr(
    InstanceState.__dict__.get("committed_state"), "__set__", _set_committed_state_attr
)


def _weak_keys_missing(wkd: Any, keys: Sequence[Any]) -> list[Any]:
    """The keys a WeakKeyDictionary does not hold, in one C-level pass where it is the
    standard one (its keys are weak references, equal where their referents are)."""
    data = getattr(wkd, "data", None)
    if type(wkd) is not weakref.WeakKeyDictionary or type(data) is not dict:
        return [k for k in keys if k not in wkd]  # pragma: no cover - another implementation
    if not data:
        return list(keys)
    held = map(data.__contains__, map(weakref.ref, keys))
    return list(itertools.compress(keys, map(operator.not_, held)))


def _consume(it: Iterable[Any]) -> None:
    collections.deque(it, 0)


def _weak_keys_set(wkd: Any, keys: Sequence[Any], value: Any) -> None:
    """``wkd.update(dict.fromkeys(keys, value))`` for a WeakKeyDictionary, without its
    Python-level loop (its ``__setitem__`` is ``data[ref(key, _remove)] = value``)."""
    remove = getattr(wkd, "_remove", None)
    data = getattr(wkd, "data", None)
    if type(wkd) is not weakref.WeakKeyDictionary or remove is None or data is None:
        wkd.update(dict.fromkeys(keys, value))
        return
    data.update(zip(map(weakref.ref, keys, itertools.repeat(remove)), itertools.repeat(value)))


# --- the flush's registration of its objects -------------------------------------------------

# sha256 of the sources flush_registering_in_bulk copies (Session._flush: 2.0.58, and 2.1.9 with
# its deprecation decorator) and relies on (UOWTransaction.register_object, Mapper._is_orphan:
# identical in both); any other source keeps SQLAlchemy's own _flush
_FLUSH_SOURCES = frozenset(
    {
        "bba7b7fbb8212eedd80b9b54d55566771c83488a8a1e3bdabcf9b67913badd88",  # _flush, 2.0.58
        "a57c2048d6e7cea8eb17fc8292fcccc980ce108972e1585768fd8a12b8fe5419",  # _flush, 2.1.9
        "cff7d8ff6285b033efe9810434ff84cf0feddf3a2eb5ed9d230a0d8a3b4d5e3f",  # register_object
        "5174a5e97e251ef7681ccd9ed35fa7cfcdd8ab25964e83f8801f8bf69863b015",  # _is_orphan
    }
)

_SQLALCHEMY_FLUSH = Session.__dict__["_flush"]


@functools.cache
def bulk_registration_available() -> bool:
    """Whether this SQLAlchemy's ``Session._flush`` is the code
    ``flush_registering_in_bulk`` copies."""
    return _sources_known(
        _FLUSH_SOURCES,
        _SQLALCHEMY_FLUSH,
        unitofwork.UOWTransaction.register_object,
        Mapper._is_orphan,  # noqa: SLF001
    )


def _flush_via(flush: Callable[..., None], session: Session, objects: Any) -> None:
    """``flush(session, objects)``: SQLAlchemy's own ``_flush`` of a whole session runs as
    ``flush_registering_in_bulk``; an override of it, or a flush of some objects, as is."""
    if objects is None and flush is _SQLALCHEMY_FLUSH and bulk_registration_available():
        flush_registering_in_bulk(session)
    else:
        flush(session, objects)


def flush_registering_in_bulk(self: Session) -> None:
    """``Session._flush(objects=None)``, statement for statement, except where every object
    to save is pending and of a class no delete-orphan cascade reaches: those are registered
    with the unit of work in C-level passes (``_register_new``) instead of one ``_is_orphan``
    and one ``register_object`` call each (about 1 µs per object)."""
    dirty = self._dirty_states
    if not dirty and not self._deleted and not self._new:
        self.identity_map._modified.clear()  # noqa: SLF001
        return

    flush_context = unitofwork.UOWTransaction(self)

    if self.dispatch.before_flush:
        self.dispatch.before_flush(self, flush_context, None)
        # re-establish "dirty states" in case the listeners added
        dirty = self._dirty_states

    deleted = set(self._deleted)
    new = set(self._new)

    dirty = set(dirty).difference(deleted)

    # store objects whose fate has been decided
    processed: set[InstanceState[Any]] = set()

    # put all saves/updates into the flush context.  detect top-level orphans and throw them
    # into deleted.
    proc = new.union(dirty).difference(deleted)

    if not _register_new(self, flush_context, proc, processed):
        for state in proc:
            is_orphan = orm_base._state_mapper(state)._is_orphan(state)  # noqa: SLF001

            is_persistent_orphan = is_orphan and state.has_identity

            if is_orphan and not is_persistent_orphan and state._orphaned_outside_of_session:  # noqa: SLF001
                self._expunge_states([state])
            else:
                _reg = flush_context.register_object(state, isdelete=is_persistent_orphan)
                assert _reg, "Failed to add object to the flush context!"
                processed.add(state)

    # put all remaining deletes into the flush context.
    proc = deleted.difference(processed)
    for state in proc:
        _reg = flush_context.register_object(state, isdelete=True)
        assert _reg, "Failed to add object to the flush context!"

    if not flush_context.has_work:
        return

    flush_context.transaction = transaction = self._autobegin_t()._begin()  # noqa: SLF001
    try:
        self._warn_on_events = True
        try:
            flush_context.execute()
        finally:
            self._warn_on_events = False

        self.dispatch.after_flush(self, flush_context)

        flush_context.finalize_flush_changes()

        if self.identity_map._modified:  # noqa: SLF001
            len_ = len(self.identity_map._modified)  # noqa: SLF001

            InstanceState._commit_all_states(  # noqa: SLF001
                [(state, state.dict) for state in self.identity_map._modified],  # noqa: SLF001
                instance_dict=self.identity_map,
            )
            sa_util.warn(
                f"Attribute history events accumulated on {len_} "
                "previously clean instances "
                "within inner-flush event handlers have been "
                "reset, and will not result in database updates. "
                "Consider using set_committed_value() within "
                "inner-flush event handlers to avoid this warning."
            )

        self.dispatch.after_flush_postexec(self, flush_context)

        transaction.commit()

    except:  # noqa: E722
        with sa_util.safe_reraise():
            transaction.rollback(_capture_exception=True)


def _register_new(
    session: Session,
    flush_context: Any,
    proc: set[InstanceState[Any]],
    processed: set[InstanceState[Any]],
) -> bool:
    """``_flush``'s registration loop over ``proc`` where each state is pending and no
    delete-orphan cascade reaches its class: ``_is_orphan`` is False for each, and
    ``register_object(state, isdelete=False)`` registers it as ``(False, False)``. The same
    steps in the same order -- the states as ``proc`` iterates them, each mapper's flush
    actions set up as its first state comes -- in C-level passes. False (nothing done) for
    any other flush, or when a ``before_flush`` listener registered objects itself."""
    if not proc or flush_context.states:
        return False
    states = list(proc)
    if not all(map(session._new.__contains__, states)):  # noqa: SLF001
        return False
    # per mapper in order of its first state, each list in proc's order
    groups = group_by_mapper(states)
    if any(m._delete_orphans for mapper in groups for m in mapper.iterate_to_root()):  # noqa: SLF001
        return False
    by_mapper = flush_context.mappers
    for mapper, group in groups.items():
        if mapper not in by_mapper:
            flush_context._per_mapper_flush_actions(mapper)  # noqa: SLF001
        by_mapper[mapper].update(group)
    flush_context.states.update(dict.fromkeys(states, _SAVED))
    processed.update(states)
    return True


_SAVED = (False, False)


# --- expiry on commit --------------------------------------------------------------------------

# sha256 of the source of InstanceState._expire and SessionTransaction._remove_snapshot in the
# releases _expire_all was written against (identical in 2.0.58 and 2.1.9); any other source
# keeps SQLAlchemy's own commit expiry
_EXPIRE_SOURCES = frozenset(
    {
        "b7902d2c23210da9869299a6e3437425b3989e7e474be7205e34b1563585600d",
        "321b3676e0b4171299fe5c1458cd285bb01ed988f6ad0cdc30664373ba3ee5ec",
    }
)


def _source_digest(fn: Any) -> str | None:
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):  # pragma: no cover - no source shipped
        return None
    return hashlib.sha256(textwrap.dedent(src).encode()).hexdigest()


@functools.cache
def fast_expiry_available() -> bool:
    """Whether this SQLAlchemy's commit expiry is the code ``_expire_all`` reproduces."""
    return _sources_known(
        _EXPIRE_SOURCES,
        InstanceState._expire,  # noqa: SLF001
        SessionTransaction._remove_snapshot,  # noqa: SLF001
    )


def _sources_known(known: frozenset[str], *fns: Any) -> bool:
    """Whether every function's source is one of the ``known`` digests."""
    return {_source_digest(fn) for fn in fns} <= known


def _expire_all(states: Iterable[InstanceState[Any]], modified_set: set[Any]) -> None:
    """``state._expire(state.dict, modified_set)`` for every state: class by class, each of
    ``_expire``'s steps in a C-level pass over the class's states (``_expire_class``), where
    no class has ``expire`` listeners (they are called object by object, in order) and the
    states are of at most 8 classes; otherwise object by object (``_expire_each``)."""
    states = list(states)
    of_states = list(map(_manager_of_state, states))
    # keyed by id: a ClassManager's __hash__ is a Python-level method
    mids = list(map(id, of_states))
    managers = dict(zip(mids, of_states, strict=True))
    if len(managers) > 8 or any(m.dispatch.expire for m in managers.values()):
        _expire_each(states, modified_set)
        return
    for mid, manager in managers.items():
        if len(managers) == 1:
            group = states
        else:
            group = list(itertools.compress(states, map(operator.eq, mids, itertools.repeat(mid))))
        _expire_class(group, manager, modified_set)


_manager_of_state = operator.attrgetter("manager")
_vars_of = operator.attrgetter("__dict__")
_expired_attributes_of = operator.attrgetter("expired_attributes")
_committed_state_of = operator.attrgetter("committed_state")
_adapter_of = operator.attrgetter("_sa_adapter")
_ABSENT = object()


def _expire_class(states: list[InstanceState[Any]], manager: Any, modified_set: set[Any]) -> None:
    """``InstanceState._expire`` for states of one class without ``expire`` listeners: each
    step of it for all the states, in its order. What differs from object-by-object is only
    when objects that nothing else references are freed (a popped collection's members):
    at the end of the class's pass instead of at once. Such an object's state is expired
    with its instance dict instead of the empty one a freed object's ``state.dict`` gives."""
    repeat = itertools.repeat
    # the objects, before their states let go of them (``_strong_obj``): natively each
    # object's dict is read before its own state lets go of it
    objs = list(map(_obj_of, states))
    sds = list(map(_vars_of, states))
    modified = list(map(dict.get, sds, repeat("modified")))
    if any(modified):
        for st, sd in itertools.compress(zip(states, sds, strict=True), modified):
            modified_set.discard(st)
            st.committed_state.clear()
            sd["modified"] = False
    _consume(map(dict.update, sds, repeat(_EXPIRED)))
    _consume(map(dict.pop, sds, repeat("_pending_mutations"), repeat(None)))
    _consume(map(dict.pop, sds, repeat("parents"), repeat(None)))
    # merged from a set: one resize of each state's set instead of growing key by key
    loader_keys = {impl.key for impl in manager._loader_impls}  # noqa: SLF001
    _consume(map(set.update, map(_expired_attributes_of, states), repeat(loader_keys)))
    callables = list(map(dict.get, sds, repeat("callables")))
    if any(callables):
        for st, cb in zip(states, callables, strict=True):
            if cb:
                for k in st.expired_attributes.intersection(cb):
                    del cb[k]
    live = list(map(operator.is_not, objs, repeat(None)))
    if live.count(True) < len(live):
        objs = list(itertools.compress(objs, live))
        sds = list(itertools.compress(sds, live))
    dicts = list(map(orm_base.instance_dict, objs))
    for k in manager._collection_impl_keys:  # noqa: SLF001
        popped = list(map(dict.pop, dicts, repeat(k), repeat(_ABSENT)))
        for adapter in map(
            _adapter_of,
            itertools.compress(popped, map(operator.is_not, popped, repeat(_ABSENT))),
        ):
            adapter.invalidated = True
    known = list(map(dict.get, sds, repeat("_last_known_values")))
    if any(known):
        for lkv, dict_ in zip(known, dicts, strict=True):
            if lkv:
                lkv.update({k: dict_[k] for k in lkv if k in dict_})
    for key in manager._all_key_set:  # noqa: SLF001
        _consume(map(dict.pop, dicts, repeat(key), repeat(None)))


def _expire_each(states: Iterable[InstanceState[Any]], modified_set: set[Any]) -> None:
    """``state._expire(state.dict, modified_set)`` for every state, statement for statement
    (see ``InstanceState._expire``), with what depends only on the class manager looked up
    once per manager instead of once per object, and the state's plain attributes read and
    written in its ``__dict__`` (their class-level defaults are plain values)."""
    # keyed by id: a ClassManager's __hash__ is a Python-level method
    per_manager: dict[int, tuple[list[str], Any, Any, Any]] = {}
    instance_dict = orm_base.instance_dict
    for state in states:
        manager = state.manager
        found = per_manager.get(id(manager))
        if found is None:
            found = per_manager[id(manager)] = (
                [impl.key for impl in manager._loader_impls],  # noqa: SLF001
                manager._collection_impl_keys or None,  # noqa: SLF001
                manager._all_key_set,  # noqa: SLF001
                manager.dispatch.expire if manager.dispatch.expire else None,
            )
        loader_keys, collection_keys, all_keys, on_expire = found
        obj = state.obj()
        dict_ = instance_dict(obj) if obj is not None else {}
        sd = state.__dict__
        if sd.get("modified"):
            modified_set.discard(state)
            state.committed_state.clear()
            sd["modified"] = False
        sd.update(_EXPIRED)
        if "_pending_mutations" in sd:
            del sd["_pending_mutations"]
        if "parents" in sd:
            del sd["parents"]
        expired = state.expired_attributes
        expired.update(loader_keys)
        callables = sd.get("callables")
        if callables:
            for k in expired.intersection(callables):
                del callables[k]
        if collection_keys is not None:
            for k in collection_keys.intersection(dict_):
                collection = dict_.pop(k)
                collection._sa_adapter.invalidated = True  # noqa: SLF001
        lkv = sd.get("_last_known_values")
        if lkv:
            lkv.update({k: dict_[k] for k in lkv if k in dict_})
        kept = dict_.keys() - all_keys
        if len(kept) == 1:
            # the usual instance dict: the attributes and the state itself
            (k,) = kept
            v = dict_[k]
            dict_.clear()
            dict_[k] = v
        else:
            for key in all_keys.intersection(dict_):
                del dict_[key]
        if on_expire is not None:
            on_expire(state, None)


_EXPIRED = {"expired": True, "_strong_obj": None}


def use_fast_expiry(session: Session) -> None:
    """Let the commit of the session's current root transaction expire the identity map with
    ``_expire_all`` (an instance attribute shadowing ``_remove_snapshot`` on that one
    transaction object); nested transactions and sessions without ``expire_on_commit`` keep
    SQLAlchemy's own method."""
    trans = session._transaction  # noqa: SLF001
    if trans is None or not fast_expiry_available():
        return
    while trans._parent is not None:  # noqa: SLF001
        trans = trans._parent  # noqa: SLF001
    if "_remove_snapshot" in trans.__dict__:
        return
    ref = weakref.ref(trans)

    def remove_snapshot() -> None:
        t = ref()
        assert t is not None
        sess = t.session
        if t.nested or not sess.expire_on_commit:
            SessionTransaction._remove_snapshot(t)  # noqa: SLF001
            return
        assert t._is_transaction_boundary  # noqa: SLF001
        idmap = sess.identity_map
        _expire_all(idmap.all_states(), idmap._modified)  # noqa: SLF001
        InstanceState._detach_states(list(t._deleted), sess)  # noqa: SLF001
        t._deleted.clear()  # noqa: SLF001

    trans.__dict__["_remove_snapshot"] = remove_snapshot


def register_persistent_native(session: Session, states: Sequence[InstanceState[Any]]) -> None:
    """The session's own bookkeeping for persistent states we took over (no fast path)."""
    if states:
        session._register_persistent(set(states))  # noqa: SLF001


def is_plain_for_update(mapper: Mapper[Any]) -> bool:
    """Whether saving an unchanged persistent object of this mapper has no visible effect
    beyond bookkeeping: no update events, no version counter, no read-only expiry."""
    d = mapper.dispatch
    return (
        not d.before_update
        and not d.after_update
        and mapper.version_id_col is None
        and not mapper._readonly_props  # noqa: SLF001
    )


def pending_mutation_keys(state: InstanceState[Any]) -> Iterable[str]:
    pending = state.__dict__.get("_pending_mutations")
    return pending.keys() if pending else ()


def record_committed(state: InstanceState[Any], key: str, old: Any, absent: bool) -> None:
    """What setting an attribute through its implementation records (``_modified_event``):
    the value before, once -- ``NO_VALUE`` where there was none."""
    state.committed_state.setdefault(key, orm_base.NO_VALUE if absent else old)


def collection_members(collection: Any) -> Any:
    """A loaded collection's members as its adapter iterates them (a dict collection's
    values), the way ``History.from_collection`` reads them."""
    return collection._sa_adapter  # noqa: SLF001


class HistoryMemo:
    """Persistent objects' relationship histories as one flush's planning reads them, each
    once (neither the attributes nor their queued appends change meanwhile)."""

    __slots__ = ("flush_context", "found")

    def __init__(self, flush_context: Any) -> None:
        self.flush_context = flush_context
        self.found: dict[tuple[InstanceState[Any], str], Any] = {}


def collection_history(state: InstanceState[Any], key: str, memo: HistoryMemo | None = None) -> Any:
    """History of a relationship attribute as the unit of work reads it, queued appends
    included (``memo``: see ``HistoryMemo``).

    A one-to-one object replaced before its previous value was loaded: the unit of work's
    save loads that value (a query finding the row that points at this object), once, into
    its own cache, before any INSERT of the flush. With ``memo`` it is read through that
    cache now -- before async_batch writes rows the query would find too."""
    if memo is not None:
        found = memo.found.get((state, key))
        if found is not None:
            return found
    passive = PassiveFlag.PASSIVE_NO_INITIALIZE | PassiveFlag.INCLUDE_PENDING_MUTATIONS
    impl = state.manager[key].impl
    if (
        memo is not None
        and getattr(impl, "_deferred_history", False)
        and key in state.dict
        and state.committed_state.get(key) is orm_base.PASSIVE_NO_RESULT
    ):
        ctx = memo.flush_context
        ctx.get_attribute_history(state, key, passive)
        hist = ctx.attributes[("history", state, key)][0]
    else:
        hist = impl.get_history(state, state.dict, passive)
    if memo is not None:
        memo.found[(state, key)] = hist
    return hist


def all_pending_states(state: InstanceState[Any], key: str) -> list[InstanceState[Any]]:
    """The objects a relationship of a saved object holds as the unit of work's dependency
    processors read them without loading (``get_all_pending``): every loaded value, changed
    or not, and the ones it replaced -- what it synchronizes again from an object whose key
    changed."""
    found = state.manager[key].impl.get_all_pending(
        state, state.dict, PassiveFlag.PASSIVE_NO_INITIALIZE
    )
    return [st for st, _obj in found if st is not None]


def orphaning_targets(
    states: Mapping[InstanceState[Any], tuple[bool, bool]], memo: HistoryMemo
) -> tuple[set[InstanceState[Any]], list[Any]]:
    """What the unit of work's presort may delete as orphans in this flush: the objects a
    persistent object's delete-orphan relationship no longer holds (removed from a
    collection, replaced), the loaded members of a deleted object's; and the classes of
    those it cannot name without loading (a one-to-one replaced before it was loaded, a
    deleted object's unloaded collection) -- with every class a delete cascade reaches from
    any of them (their own children go too)."""
    objects: set[InstanceState[Any]] = set()
    classes: list[Any] = []
    # keyed by id: a ClassManager's __hash__ is a Python-level method
    rels_of: dict[int, list[Any]] = {}
    for st, (isdelete, _listonly) in states.items():
        manager = st.manager
        rels = rels_of.get(id(manager))
        if rels is None:
            rels = rels_of[id(manager)] = [
                r for r in manager.mapper.relationships if r.cascade.delete_orphan
            ]
        if not rels or st.key is None:  # a new object had no previous value
            continue
        committed = st.committed_state
        pending = st.__dict__.get("_pending_mutations") or ()
        d = st.dict
        for r in rels:
            key = r.key
            if isdelete:
                if key in d:
                    objects.update(all_pending_states(st, key))
                elif r.mapper not in classes:
                    classes.append(r.mapper)
                continue
            if key not in committed and key not in pending:
                continue
            if not r.uselist:
                before = committed.get(key)
                if before is orm_base.PASSIVE_NO_RESULT:
                    if r.mapper not in classes:
                        classes.append(r.mapper)
                elif (
                    before is not None
                    and before is not orm_base.NO_VALUE
                    and before is not d.get(key)
                ):
                    objects.add(orm_base.instance_state(before))
                continue
            objects.update(
                orm_base.instance_state(obj)
                for obj in collection_history(st, key, memo).deleted
                if obj is not None
            )
    if objects or classes:
        todo = [*classes, *{o.manager.mapper for o in objects}]
        seen: set[Any] = set()
        while todo:
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            for r in m.relationships:
                if r.cascade.delete:
                    if r.mapper not in classes:
                        classes.append(r.mapper)
                    todo.append(r.mapper)
    return objects, classes


def insert_order(state: InstanceState[Any]) -> int:
    return int(state.insert_order or 0)


_insert_order_attr = operator.attrgetter("insert_order")


def sort_by_insert_order(states: list[InstanceState[Any]]) -> None:
    """Sort in the order the objects were added (the unit of work's INSERT order)."""
    try:
        states.sort(key=_insert_order_attr)
    except TypeError:  # some insert_order is None
        states.sort(key=insert_order)


def set_insert_order(state: InstanceState[Any], value: int) -> None:
    state.insert_order = value


def expire_attributes(state: InstanceState[Any], keys: Iterable[str]) -> None:
    state._expire_attributes(state.dict, keys)  # noqa: SLF001


ExpirySnapshot = tuple[list[str], dict[str, Any], dict[str, Any], set[str], dict[str, Any]]


def expiry_snapshot(state: InstanceState[Any], keys: list[str]) -> ExpirySnapshot:
    """What ``expire_attributes(state, keys)`` changes, to undo it (``restore_expiry``): the
    keys' values, committed-state entries, expired flags and loader callables."""
    d = state.dict
    committed = state.committed_state
    callables = state.callables
    return (
        keys,
        {k: d[k] for k in keys if k in d},
        {k: committed[k] for k in keys if k in committed},
        state.expired_attributes.intersection(keys),
        {k: callables[k] for k in keys if callables and k in callables},
    )


def restore_expiry(state: InstanceState[Any], snapshot: ExpirySnapshot) -> None:
    keys, values, committed, expired, callables = snapshot
    state.expired_attributes.difference_update(set(keys) - expired)
    state.dict.update(values)
    state.committed_state.update(committed)
    if callables:
        state.callables.update(callables)


# --- mapper tables persistence.py uses ---------------------------------------------------------


def propkey_to_col(mapper: Mapper[Any], table: Table) -> Mapping[str, Column[Any]]:
    result: Mapping[str, Column[Any]] = mapper._propkey_to_col[table]  # noqa: SLF001
    return result


def cols_evaluating_none(mapper: Mapper[Any], table: Table) -> frozenset[Column[Any]]:
    result: frozenset[Column[Any]] = mapper._insert_cols_evaluating_none[table]  # noqa: SLF001
    return result


def cols_as_none(mapper: Mapper[Any], table: Table) -> frozenset[str]:
    result: frozenset[str] = mapper._insert_cols_as_none[table]  # noqa: SLF001
    return result


def orm_defaults(mapper: Mapper[Any], table: Table) -> Sequence[tuple[str, Column[Any], Any]]:
    """ORM-level (dataclass) defaults the INSERT delivers; SQLAlchemy 2.1 only (#13748)."""
    table_map = getattr(mapper, "_insert_orm_defaults", None)
    if table_map is None:
        return ()
    result: Sequence[tuple[str, Column[Any], Any]] = table_map.get(table, ())
    return result


def server_default_cols(mapper: Mapper[Any], table: Table) -> frozenset[Column[Any]]:
    result: frozenset[Column[Any]] = mapper._server_default_cols.get(table, frozenset())  # noqa: SLF001
    return result


def all_server_default_cols(table: Table) -> frozenset[Column[Any]]:
    """The table's columns with a server default or a SQL-expression default: what an
    INSERT's ``return_defaults()`` without columns returns (``crud._get_returning_modifiers``
    takes every column of the table; those the database fills are returned)."""
    return frozenset(
        c
        for c in table.c
        if c.server_default is not None or (c.default is not None and c.default.is_clause_element)
    )


def table_mapper(mapper: Mapper[Any], table: Table) -> Mapper[Any]:
    """The mapper of the hierarchy that the unit of work builds ``table``'s INSERTs with
    (``persistence.save_obj``: ``base_mapper._sorted_tables``)."""
    found: Mapper[Any] = mapper.base_mapper._sorted_tables.get(table, mapper)  # noqa: SLF001
    return found


def prefer_eager_defaults(mapper: Mapper[Any], dialect: Any, table: Table) -> bool:
    base = mapper.base_mapper
    return bool(base._prefer_eager_defaults(dialect, table))  # type: ignore[no-untyped-call]  # noqa: SLF001


def sorted_tables(mapper: Mapper[Any]) -> Sequence[Table]:
    """The hierarchy's tables, base first (``persistence.save_obj``'s order)."""
    return list(mapper.base_mapper._sorted_tables)  # noqa: SLF001


def tables_of(mapper: Mapper[Any]) -> Sequence[Table]:
    """Tables this mapper writes, in insert order."""
    cols_by_table = mapper._cols_by_table  # noqa: SLF001
    pks = mapper._pks_by_table  # noqa: SLF001
    return [t for t in sorted_tables(mapper) if t in cols_by_table and t in pks]


def pks_by_table(mapper: Mapper[Any], table: Table) -> Sequence[Column[Any]]:
    result: list[Any] = list(mapper._pks_by_table[table])  # noqa: SLF001
    return result


def column_to_propkey(mapper: Mapper[Any]) -> Mapping[Any, str]:
    return {col: prop.key for col, prop in mapper._columntoproperty.items()}  # noqa: SLF001


def table_to_equated(mapper: Mapper[Any], table: Table) -> Sequence[tuple[Mapper[Any], Any]]:
    result: Sequence[tuple[Mapper[Any], Any]] = mapper._table_to_equated[table]  # noqa: SLF001
    return result


def readonly_props(mapper: Mapper[Any]) -> bool:
    return bool(mapper._readonly_props)  # noqa: SLF001


def has_insert_listeners(mapper: Mapper[Any]) -> bool:
    d = mapper.dispatch
    return bool(d.before_insert) or bool(d.after_insert)


def validate_polymorphic_identities(
    states: Iterable[InstanceState[Any]], dicts: Mapping[InstanceState[Any], dict[str, Any]]
) -> None:
    """What ``_organize_states_for_save`` does for each object it saves: warn of a
    discriminator value its mapper does not accept."""
    for st in states:
        mapper = st.manager.mapper
        validate = mapper._validate_polymorphic_identity  # noqa: SLF001
        if validate is not None:
            validate(mapper, st, dicts[st])


def _is_mutable_loader(fn: Any) -> bool:
    """``sqlalchemy.ext.mutable``'s ``refresh_flush`` listener (``load_attrs``): it only wraps
    the loaded value of its attribute in the mutable type and tracks its parent."""
    return bool(
        getattr(fn, "__module__", None) == "sqlalchemy.ext.mutable"
        and getattr(fn, "__qualname__", "").endswith(".load_attrs")
    )


def _is_composite_handler(fn: Any) -> bool:
    """A ``composite()``'s ``after_insert`` listener (``insert_update_handler``, in
    ``MapperEvents``' wrapper): it only drops the composite's cached value from the
    instance dict."""
    code = getattr(fn, "__code__", None)
    if code is not None and "fn" in code.co_freevars and fn.__closure__:
        try:
            fn = fn.__closure__[code.co_freevars.index("fn")].cell_contents
        except ValueError:  # an empty cell
            return False
    return bool(
        getattr(fn, "__module__", None) == "sqlalchemy.orm.descriptor_props"
        and getattr(fn, "__qualname__", "").endswith(
            "CompositeProperty._setup_event_handlers.<locals>.insert_update_handler"
        )
    )


def listener_state(mapper: Mapper[Any]) -> tuple[int, int]:
    """What of the mapper's listeners decides whether its objects can be written by us,
    each 0 (none), 1 (only SQLAlchemy's own, which we fire as the unit of work does) or 2
    (others): ``before_insert``/``after_insert`` listeners (1: ``composite()``'s
    ``after_insert``), and ``refresh_flush`` ones (1: ``sqlalchemy.ext.mutable``'s).
    Listeners added after a first flush (a plugin, a fixture) must be seen."""
    d = mapper.dispatch
    insert = 0
    if d.before_insert:
        insert = 2
    elif d.after_insert:
        insert = 1 if all(_is_composite_handler(fn) for fn in d.after_insert) else 2
    refresh = mapper.class_manager.dispatch.refresh_flush
    kind = 0
    if refresh:
        kind = 1 if all(_is_mutable_loader(fn) for fn in refresh) else 2
    return insert, kind


def fire_after_insert(mapper: Mapper[Any], connection: Connection, states: Iterable[Any]) -> None:
    """``_finalize_insert_update_commands``' event for rows written."""
    after_insert = mapper.dispatch.after_insert
    for st in states:
        after_insert(mapper, connection, st)


def fire_refresh_flush(state: InstanceState[Any], flush_context: Any, keys: list[str]) -> None:
    """``_postfetch``'s event for attributes a written row loaded (Python defaults it
    evaluated, server defaults RETURNING fetched)."""
    state.manager.dispatch.refresh_flush(state, flush_context, keys)


def is_context_free_callable(default: Any) -> bool:
    """True for a callable column default that ignores its execution context.

    ``ColumnDefault`` wraps zero-argument callables in a ``lambda ctx: fn()`` defined in
    ``sql/schema.py``; a callable that takes the context itself is passed through as is.
    """
    fn = getattr(default, "arg", None)
    code = getattr(fn, "__code__", None)
    return code is not None and code.co_filename == sa_schema.__file__


def bind_processor(column: Column[Any], dialect: Any) -> Callable[[Any], Any] | None:
    proc: Callable[[Any], Any] | None = column.type._cached_bind_processor(dialect)  # noqa: SLF001
    return proc


# SQLAlchemy's own types whose bind processors only check and convert the value they are given
_PURE_BIND_TYPES = (sqltypes.Boolean, sqltypes.Enum)


def has_pure_bind(column: Column[Any], dialect: Any) -> bool:
    """Whether the column's bind processor (for this dialect, variants resolved) is one of
    SQLAlchemy's own side-effect-free ones, not a TypeDecorator's or a subclass's, and binds
    None as None: calling it in another order, again, or not at all for None, is then
    unobservable."""
    impl = column.type.dialect_impl(dialect)
    if not (
        isinstance(impl, _PURE_BIND_TYPES)
        and not isinstance(impl, sqltypes.TypeDecorator)
        and type(impl).__module__.startswith("sqlalchemy.")
    ):
        return False
    proc = bind_processor(column, dialect)
    try:
        return proc is None or proc(None) is None
    except Exception:
        return False


def has_bind_expression(column: Column[Any]) -> bool:
    return bool(column.type._has_bind_expression)  # noqa: SLF001


def has_column_expression(column: Column[Any]) -> bool:
    return bool(column.type._has_column_expression)  # noqa: SLF001


def render_default(default: Any, dialect: Any) -> str | None:
    """The SQL a column's SQL-expression default renders as in an INSERT (``crud.py``: the
    expression, self-grouped, compiled with the statement); None where it has bound values
    (natively typed parameters, which a literal would not reproduce exactly) or cannot be
    rendered on its own."""
    try:
        compiled = default.arg.self_group().compile(dialect=dialect)
    except Exception:
        return None
    if compiled.binds:
        return None
    return str(compiled)


def is_type_decorator(column: Column[Any]) -> bool:
    return isinstance(column.type, sqltypes.TypeDecorator)


def is_null_type(column: Column[Any]) -> bool:
    return isinstance(column.type, sqltypes.NullType)


def is_uncast_bind(column: Any, dialect: Any) -> bool:
    """Whether the column's parameter is rendered without a cast (``render_bind_cast``):
    in the VALUES list of an INSERT whose server-generated key orders the rows, the server
    then types it as text, and asyncpg's text encoder takes only ``str``."""
    impl = column.type._unwrapped_dialect_impl(dialect)  # noqa: SLF001
    return bool(dialect._bind_typing_render_casts) and not impl.render_bind_cast  # noqa: SLF001


def schema_translate_map(connection: Connection) -> Mapping[str | None, str | None] | None:
    opts = connection.get_execution_options()
    stm: Mapping[str | None, str | None] | None = opts.get("schema_translate_map")
    return stm


# --- driver access and error handling ----------------------------------------------------------


def adapted_connection(connection: Connection) -> Any:
    return connection.connection.dbapi_connection


def ensure_transaction(connection: Connection) -> None:
    """Make sure BEGIN has reached the server before raw driver calls.

    SQLAlchemy's asyncpg adapter sends BEGIN lazily with its first statement; anything sent on
    the raw connection before that would run in autocommit and survive a rollback.
    """
    adapted = adapted_connection(connection)
    if getattr(adapted, "_transaction", None) is None and adapted.isolation_level != "autocommit":
        try:
            adapted.run_async(lambda _raw: adapted._start_transaction())  # noqa: SLF001
        except Exception as err:  # pragma: no cover - BEGIN failing is a dead connection
            raise_dbapi_error(connection, err, "BEGIN")


def text_only_codecs(connection: Connection, oids: Iterable[int]) -> set[int]:
    """Of these type OIDs, those a codec the application set on the asyncpg connection
    (``set_type_codec(..., format="text")``, as in a ``connect`` event) makes text-only:
    binary COPY cannot encode them. asyncpg internals (the connection's codec settings);
    where they are not as expected, none."""
    try:
        raw = adapted_connection(connection).driver_connection
        settings = raw._protocol.get_settings()  # noqa: SLF001
        return {
            oid
            for oid in oids
            if settings.get_data_codec(oid, 1) is None
            and settings.get_data_codec(oid, 1, True) is not None
        }
    except (AttributeError, TypeError):  # pragma: no cover - another asyncpg
        return set()


def driver_send_sync(raw: Any) -> None:
    """Send the Sync message that ends an extended-protocol pipeline, straight on asyncpg's
    transport (what asyncpg itself does when such a batch times out)."""
    transport = getattr(raw, "_transport", None)
    if transport is not None and not transport.is_closing():
        transport.write(b"S\x00\x00\x00\x04")


def driver_write_buffered(raw: Any) -> int:
    """Bytes asyncpg's transport holds that the event loop has not yet sent (0 if unknown)."""
    transport = getattr(raw, "_transport", None)
    if transport is None or transport.is_closing():
        return 0
    return int(transport.get_write_buffer_size())


def run_raw(connection: Connection, fn: Callable[[Any], Any], statement: str) -> Any:
    """Await ``fn(asyncpg_connection)`` from sync code; errors become SQLAlchemy's."""
    adapted = adapted_connection(connection)
    try:
        return adapted.run_async(fn)
    except Exception as err:
        raise_dbapi_error(connection, err, statement)


def raise_dbapi_error(connection: Connection, err: BaseException, statement: str) -> NoReturn:
    """Translate a raw asyncpg error exactly like a statement SQLAlchemy ran itself:
    the adapter's DBAPI exception class, then ``Connection._handle_dbapi_exception``
    (``IntegrityError``/``DBAPIError`` wrapping, disconnect detection, pool invalidation)."""
    adapted = adapted_connection(connection)
    import asyncpg

    if not isinstance(
        err,
        (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.InternalClientError,
            OSError,
        ),
    ):
        # asyncpg's COPY encoder raises plain Python errors for values of the wrong type
        # (TypeError, ValueError, OverflowError, AttributeError for a str where a date goes);
        # for a bound parameter asyncpg reports any such error as DataError, which is what a
        # native flush raises (as sqlalchemy.exc.DBAPIError)
        data_error = asyncpg.exceptions.DataError(f"invalid input for {statement}: {err}")
        data_error.__cause__ = err
        err = data_error
    translated: BaseException = err
    try:
        adapted._handle_exception(err)  # noqa: SLF001 - always raises
    except Exception as t:
        translated = t
    connection._handle_dbapi_exception(translated, statement, None, None, None)  # noqa: SLF001
    raise AssertionError("unreachable")  # pragma: no cover


def raise_statement_error(connection: Connection, err: Exception, statement: str) -> NoReturn:
    """An error raised while building a statement's parameters (a type's bind processor, a
    column default), raised as SQLAlchemy raises it for its own statements: a
    ``StatementError`` wrapping it (``Connection._handle_dbapi_exception``)."""
    connection._handle_dbapi_exception(err, statement, None, None, None)  # noqa: SLF001
    raise AssertionError("unreachable") from err  # pragma: no cover


# --- attribute access the unit of work uses to synchronize keys --------------------------------


def get_by_column(state: InstanceState[Any], column: Column[Any]) -> Any:
    """A state's value for a mapped column, loading it if expired (``sync.populate``'s read)."""
    mapper = state.manager.mapper
    key = mapper._columntoproperty[column].key  # noqa: SLF001
    d = state.dict
    if key in d:
        return d[key]
    return state.manager[key].impl.get(state, d, passive=PassiveFlag.PASSIVE_OFF)


def mapper_propkey(mapper: Mapper[Any], column: Any) -> str | None:
    prop = mapper._columntoproperty.get(column)  # noqa: SLF001
    return None if prop is None else str(prop.key)


def reverse_properties(prop: Any) -> Iterable[Any]:
    """The relationships SQLAlchemy links as each other's backref."""
    result: Iterable[Any] = prop._reverse_property  # noqa: SLF001
    return result


def mark_processed(
    flush_context: Any, prop: Any, pairs: Iterable[tuple[InstanceState[Any], InstanceState[Any]]]
) -> None:
    """What ``ManyToManyDP.process_saves`` records after writing association rows through
    ``prop``: the (child, parent) pairs its reverse relationship's processor must skip
    (``_get_reversed_processed_set``)."""
    process_key = tuple(sorted([prop.key] + [p.key for p in prop._reverse_property]))  # noqa: SLF001
    processed = flush_context.memo(("reverse_key", process_key), set)
    processed.update((child, parent) for parent, child in pairs)


def propkey_for(state: InstanceState[Any], column: Column[Any]) -> str:
    key: str = state.manager.mapper._columntoproperty[column].key  # noqa: SLF001
    return key


def default_function(column: Column[Any]) -> Any:
    """What a column's Python callable default calls, as far as it can be told: the callable
    as given (2.1 keeps it; 2.0's wrapper holds it in ``__wrapped__`` or its closure), and for
    a ``functools.partial`` the function it wraps (its calls share that function's state)."""
    default: Any = column.default
    fn = getattr(default, "_fn", None)
    if fn is None:
        arg = getattr(default, "arg", None)
        fn = getattr(arg, "__wrapped__", None)
        if fn is None:
            cells = [c.cell_contents for c in getattr(arg, "__closure__", None) or ()]
            held = [c for c in cells if callable(c)]
            fn = held[0] if len(held) == 1 else arg
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def has_set_listeners(state: InstanceState[Any], key: str) -> bool:
    return bool(state.manager[key].impl.dispatch.set)


def column_has_set_listeners(mapper: Mapper[Any], column: Column[Any]) -> bool:
    """Whether the mapper's attribute for this column has set listeners or validators."""
    prop = mapper._columntoproperty.get(column)  # noqa: SLF001
    return prop is not None and bool(mapper.class_manager[prop.key].impl.dispatch.set)


def set_attr(state: InstanceState[Any], d: dict[str, Any], key: str, value: Any) -> None:
    """Set a value the way ``sync.populate`` does (through the attribute implementation, so
    attribute events and validators fire). Without listeners the end state after the flush is
    the same as a plain dict write, which is all we do then."""
    impl = state.manager[key].impl
    if impl.dispatch.set:
        impl.set(state, d, value, None)
    else:
        d[key] = value
