"""Registering the flush hook on exactly the target the user gave us, once."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session, async_sessionmaker
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from . import _report, _sa, _sequences
from ._flush import FlushRun, Options
from ._planner import mapper_info

_ACCEPTED = (
    "an AsyncSession, an async_sessionmaker, a Session, a sessionmaker, "
    "a scoped_session/async_scoped_session, or a Session subclass"
)
_FLAG = "_async_batch_run"


class _Registration:
    def __init__(self, listen_target: Any, options: Options) -> None:
        self.listen_target = listen_target
        self.options = options
        self.restore: Any = None
        self.unwrap: Any = None

    def around_flush(self, session: Session, objects: Any, proceed: Any) -> None:
        """Pause the cyclic GC for a whole flush with new objects: it allocates one small
        tuple or more per object (the unit of work's registration, our rows), and a full
        collection triggered on the way walks every object in the process -- a tenth of a
        second at 10,000 new objects. Always re-enabled, however the flush ends."""
        before = _report.current(session)
        try:
            if (
                objects
                or not self.options.pause_gc
                or not gc.isenabled()
                or not _sa.has_pending(session)
            ):
                proceed()
                return
            gc.disable()
            try:
                proceed()
            finally:
                gc.enable()
        except BaseException as err:
            _report.mark_failed(session, before, err)
            raise

    def before_flush(self, session: Session, flush_context: Any, objects: Any) -> None:
        if getattr(flush_context, _FLAG, None) is not None:
            return  # enabled twice along the session's class chain: one run per flush
        if objects:
            # Session.flush(objects): a subset flush keeps SQLAlchemy's own semantics.
            return
        if not _sa.has_pending(session):
            return
        run = FlushRun(session, flush_context, self.options)
        setattr(flush_context, _FLAG, run)
        _sa.wrap_flush_context(flush_context, run.execute, run.finalize)


_lock = threading.RLock()
_registry: weakref.WeakKeyDictionary[Any, _Registration] = weakref.WeakKeyDictionary()


def _resolve(target: Any) -> Any:
    if isinstance(target, (async_scoped_session, scoped_session)):
        return target.session_factory
    if isinstance(target, AsyncSession):
        return target.sync_session
    return target


def _check(target: Any) -> None:
    if isinstance(target, (Session, sessionmaker, async_sessionmaker)):
        return
    if isinstance(target, type):
        if target is Session:
            raise TypeError(
                "enable_async_batching(Session) would change every Session in the process; "
                "pass a Session subclass, a sessionmaker or a session instead"
            )
        if issubclass(target, Session):
            return
        if issubclass(target, AsyncSession):
            raise TypeError(
                f"got the AsyncSession class {target.__name__}; pass an async_sessionmaker, "
                "an AsyncSession instance, or the Session subclass used as its "
                "sync_session_class"
            )
    raise TypeError(
        f"enable_async_batching() got {target!r} of type {type(target).__name__}; "
        f"expected {_ACCEPTED}"
    )


def enable(target: Any, **options: Any) -> None:
    _sa.check_version()
    target = _resolve(target)
    _check(target)
    with _lock:
        reg = _registry.get(target)
        if reg is not None:
            if options:
                reg.options = replace(reg.options, **options)
            return
        opts = Options(**options)
        if isinstance(target, async_sessionmaker):
            # A per-maker subclass of its sync session class, as sessionmaker does for
            # sync sessions, so that only sessions from this maker are affected.
            had = "sync_session_class" in target.kw
            base = target.kw.get("sync_session_class") or target.class_.sync_session_class
            sub = type(base.__name__, (base,), {"__module__": base.__module__})
            target.kw["sync_session_class"] = sub
            reg = _Registration(sub, opts)
            reg.restore = (had, base)
        else:
            reg = _Registration(target, opts)
        event.listen(reg.listen_target, "before_flush", reg.before_flush)
        owner = reg.listen_target
        if isinstance(owner, sessionmaker):
            owner = owner.class_
        reg.unwrap = _sa.wrap_session_flush(owner, reg.around_flush)
        _registry[target] = reg


def disable(target: Any) -> None:
    target = _resolve(target)
    _check(target)
    with _lock:
        reg = _registry.pop(target, None)
        if reg is None:
            return
        event.remove(reg.listen_target, "before_flush", reg.before_flush)
        if reg.unwrap is not None:
            reg.unwrap()
        if isinstance(target, async_sessionmaker) and reg.restore is not None:
            had, base = reg.restore
            if had:
                target.kw["sync_session_class"] = base
            else:
                target.kw.pop("sync_session_class", None)


def is_enabled(target: Any) -> bool:
    """Whether flushes of ``target`` are batched: registered itself, or (for a session or a
    class) through any class in its MRO, including a sessionmaker's per-maker class."""
    target = _resolve(target)
    with _lock:
        if target in _registry:
            return True
        listening = {id(reg.listen_target) for reg in _registry.values()}
        for reg_target in _registry:
            if isinstance(reg_target, sessionmaker):
                listening.add(id(reg_target.class_))
    if isinstance(target, Session):
        if id(target) in listening:
            return True
        target = type(target)
    if isinstance(target, (sessionmaker, async_sessionmaker)):
        return False
    if isinstance(target, type):
        return any(id(cls) in listening for cls in target.__mro__)
    return False


def reserve(session: Session, objects: Iterable[Any]) -> None:
    """Assign ids to new objects now, with the one-round-trip prefetch."""
    from sqlalchemy import inspect

    requests: dict[Any, tuple[Any, list[tuple[str, list[dict[str, Any]]]]]] = {}
    conn = None
    for obj in objects:
        state = inspect(obj)
        if state.key is not None:
            continue
        mapper = state.mapper
        conn = session.connection(bind_arguments={"mapper": mapper})
        info = mapper_info(mapper, conn.dialect)
        if info.id_propkey is None or info.id_table is None or info.id_column is None:
            raise ValueError(
                f"cannot reserve ids for {mapper.class_.__name__}: its primary key is not a "
                "single integer column generated by a sequence"
            )
        if state.dict.get(info.id_propkey) is not None:
            continue
        meta = _sequences.table_meta(conn, info.id_table, info.id_column)
        if not meta.id_ok:
            raise ValueError(f"cannot reserve ids for {mapper.class_.__name__}: {meta.id_reason}")
        if meta.identity_always:
            raise ValueError(
                f"cannot reserve ids for {mapper.class_.__name__}: {info.id_table.name}."
                f"{info.id_column.name} is GENERATED ALWAYS (an INSERT without OVERRIDING "
                "SYSTEM VALUE refuses given ids)"
            )
        src = _sequences.id_source(conn, info.id_table, info.id_column)
        chunks = requests.setdefault(src.key, (src, []))[1]
        if chunks and chunks[-1][0] == info.id_propkey:
            chunks[-1][1].append(state.dict)
        else:
            chunks.append((info.id_propkey, [state.dict]))
    if not requests or conn is None:
        return
    _sequences.draw_ids(conn, list(requests.values()))
