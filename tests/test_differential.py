"""Hand-written differential cases: each shape native vs every batching mode."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from support import compare_modes, create_schema
from test_property import MODES, ZOO, make_workload
from workloads import UNSET
from zoo import Base

EMPTY: dict[str, Any] = {
    "authors": [],
    "books": [],
    "tags": [],
    "nodes": [],
    "employees": [],
    "vehicles": [],
    "gadgets": [],
    "lazy": [],
    "widgets": [],
    "ident": 0,
    "seq": 0,
    "noreturn": [],
    "seed": 0,
    "flush_midway": False,
    "use_persistent": False,
}


def spec(**kw: Any) -> dict[str, Any]:
    d = dict(EMPTY)
    d.update(kw)
    return d


# Spec entries (see workloads.build); UNSET leaves a column to its default.
def author(name: str = "a", *, nickname: Any = UNSET, score: Any = UNSET) -> dict[str, Any]:
    return {"name": name, "nickname": nickname, "score": score}


def book(
    author: int | None = 0,
    *,
    via: str = "m2o",
    tags: list[int] | None = None,
    title: str = "t",
    pages: Any = UNSET,
    status: Any = UNSET,
) -> dict[str, Any]:
    """A book linked to the spec's ``author`` (an index; None: no author) through ``via``."""
    return {
        "fields": {"title": title, "pages": pages, "status": status},
        "author": author,
        "via": via,
        "tags": tags or [],
    }


U = UNSET
CASES = {
    "ident": spec(ident=2),
    "seq": spec(seq=2),
    "authors": spec(
        authors=[author("a"), author("b", nickname=None, score=3), author("c", nickname="x")]
    ),
    "books_m2o": spec(authors=[author()], books=[book()]),
    "books_o2m_tags": spec(
        authors=[author()],
        tags=[{"label": "x"}, {"label": "y"}],
        books=[
            book(via="o2m", tags=[0, 1], pages=3, status="final"),
            book(author=None, via="o2m", tags=[1], title="u", pages=None),
        ],
    ),
    "nodes": spec(
        nodes=[
            {"name": "r", "parent": None, "via": "m2o"},
            {"name": "a", "parent": 0, "via": "o2m"},
            {"name": "b", "parent": 1, "via": "m2o"},
        ]
    ),
    "joined": spec(
        employees=[
            ("engineer", {"name": "e", "lang": "py"}),
            ("manager", {"name": "m", "level": U}),
            ("senior", {"name": "s", "lang": U, "mentor": "x"}),
            ("employee", {"name": "p"}),
        ]
    ),
    "single": spec(
        vehicles=[("car", {"doors": 3}), ("truck", {"payload": U}), ("vehicle", {"wheels": U})]
    ),
    "server_defaults": spec(
        gadgets=[{"name": "g", "color": U}, {"name": "h", "color": "x"}],
        lazy=[{"name": "l", "color": U}],
    ),
    "widgets": spec(
        widgets=[
            {"name": "w", "size": U, "price": U, "meta": U},
            {"name": "v", "size": None, "price": None, "meta": None},
            {"name": "u", "size": 4, "price": U, "meta": {"a": 1}},
        ]
    ),
    "noreturn": spec(noreturn=[{"name": "n", "flag": U}, {"name": "m", "flag": True}]),
    "persistent_author": spec(use_persistent=True, books=[book()]),
    "modified_and_new": spec(
        modify_persistent=True, use_persistent=True, authors=[author("n")], books=[book()]
    ),
    "deleted_and_new": spec(
        delete_persistent=True, widgets=[{"name": "w", "size": U, "price": U, "meta": U}]
    ),
    "existing_tag": spec(tag_existing=True, books=[book(author=None)]),
    "shelf_without_backref": spec(shelf_items=["a", "b", "c"]),
    "one_to_one": spec(desks=[("o2o", 60), ("m2o", U), ("drawer", None), ("none", U)]),
    "existing_tree": spec(existing_node_children=2),
    "identity_always": spec(always=3),
    "callable_pk": spec(tokens=3),
    "explicit_ids": spec(explicit_ids=2, ident=2),
    "association_object": spec(
        authors=[author()],
        tags=[{"label": "x"}],
        memberships=["owner"],
    ),
    "midway": spec(
        flush_midway=True,
        authors=[author()],
        ident=2,
        nodes=[{"name": "r", "parent": None, "via": "m2o"}],
    ),
}


# a new object linked many-to-many to an object the flush updates stays native
EXPECT_NATIVE = {"existing_tag"}


def failing(build: Callable[[], list[Any]]) -> Any:
    """A workload whose flush fails: the state after the failure and after the rollback
    must be a native failed flush's (ids and copied keys of what was written before the
    failing table, nothing of the rest), and so must the retry's rows."""

    async def workload(run: Any) -> None:
        objs = build()
        run.track(*objs)
        run.session.add_all(objs)
        await run.session.flush()

    return workload


def _authors_books(n: int = 3, tagged: bool = True) -> list[Any]:
    """Authors with two books each, and two tags linked to the books first (tags and
    authors are independent tables: natively saved in the order of their class names)."""
    from zoo import Author, Book, Tag

    tags = [Tag(label=f"t{i}") for i in range(2)] if tagged else []
    out: list[Any] = list(tags)
    for i in range(n):
        a = Author(name=f"a{i}")
        a.books = [Book(title=f"b{i}{j}", tags=[tags[j % 2]] if tags else []) for j in range(2)]
        out += [a, *a.books]
    return out


def _parent_fails() -> list[Any]:
    objs = _authors_books()
    objs[5].name = "x" * 41  # the second author: author.name is varchar(40)
    return objs


def _child_fails() -> list[Any]:
    from zoo import Book

    objs = _authors_books()
    for obj in objs:
        if isinstance(obj, Book):
            # one key set for every book: natively one INSERT statement, as ours
            obj.status = "ok"
    objs[-1].status = "x" * 11  # the last book: book.status is varchar(10)
    return objs


def _link_fails() -> list[Any]:
    objs = _authors_books(tagged=True)
    objs[-1].tags.append(objs[-1].tags[0])  # the same link row twice
    return objs


def _subclass_table_fails() -> list[Any]:
    from zoo import Engineer, Manager

    return [
        Engineer(name="e", lang="py"),
        Manager(name="m", level=2**40),  # manager.level is an integer
        Engineer(name="f"),
    ]


FAILING = {
    "parent_table": _parent_fails,
    "child_table": _child_fails,
    "link_table": _link_fails,
    "subclass_table": _subclass_table_fails,
}


@pytest.mark.parametrize("case", list(FAILING))
def test_failed_flush_leaves_what_native_leaves(zoo_engine_dsn: str, case: str) -> None:
    native, _results = asyncio.run(
        compare_modes(zoo_engine_dsn, failing(FAILING[case]), MODES, **ZOO)
    )
    assert native.error is not None


@pytest.fixture
def zoo_engine_dsn(database_dsn: str) -> str:
    create_schema(database_dsn, Base.metadata)
    return database_dsn


@pytest.mark.parametrize("case", list(CASES))
def test_shape_matches_native(zoo_engine_dsn: str, case: str) -> None:
    _native, results = asyncio.run(
        compare_modes(zoo_engine_dsn, make_workload(CASES[case]), MODES, **ZOO)
    )
    for label, options, other in results:
        fast = options.get("fast_path", True) and options.get("small_flush") == 0
        if fast and other.error is None and case not in EXPECT_NATIVE:
            summaries = [r and r.summary() for r in other.reports]
            assert any(r and r.accelerated for r in other.reports), (label, summaries)


def test_savepoint_rollback_matches_native(zoo_engine_dsn: str) -> None:
    """Objects flushed inside a SAVEPOINT that is rolled back vanish, exactly as natively."""
    from zoo import Author, Book

    async def workload(run: Any) -> None:
        s = run.session
        a = Author(name="outer", books=[Book(title="kept")])
        run.track(a, *a.books)
        s.add(a)
        await s.flush()
        run.snapshot("outer flush")
        nested = await s.begin_nested()
        inner = [Author(name=f"inner{i}", books=[Book(title=f"b{i}")]) for i in range(3)]
        run.track(*inner, *(b for x in inner for b in x.books))
        s.add_all(inner)
        await s.flush()
        run.snapshot("inner flush")
        await nested.rollback()
        run.snapshot("after savepoint rollback")
        late = Author(name="late")
        run.track(late)
        s.add(late)
        await s.commit()
        run.snapshot("commit")

    kw = {**ZOO, "setup": None}
    asyncio.run(compare_modes(zoo_engine_dsn, workload, MODES, **kw))


@pytest.mark.parametrize("case", ["books_o2m_tags", "joined", "server_defaults", "widgets"])
def test_without_expire_on_commit(zoo_engine_dsn: str, case: str) -> None:
    """With expire_on_commit=False what the flush loaded or expired stays visible after commit."""
    kw = {**ZOO, "expire_on_commit": False}
    asyncio.run(compare_modes(zoo_engine_dsn, make_workload(CASES[case]), [("auto", {})], **kw))
