"""Property-based differential suite: random object graphs over the zoo, native vs batched."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from sqlalchemy.orm import selectinload
from support import Run, compare_modes, create_schema
from workloads import build, spec_s
from zoo import EXPLICIT_SEQUENCES, Author, Base, Node, Shelf, Tag, Widget, reset_codes

# The fast path at any flush size (by default, flushes of a few objects that native writes in
# as few round trips stay native): the strategy modes exist to exercise it.
EVERY_FLUSH: dict[str, Any] = {"small_flush": 0}
MODES: list[tuple[str, dict[str, Any]]] = [
    ("auto", {**EVERY_FLUSH}),
    ("copy", {"strategy": "copy", **EVERY_FLUSH}),
    ("unnest", {"strategy": "unnest", **EVERY_FLUSH}),
    ("executemany", {"strategy": "executemany", **EVERY_FLUSH}),
    ("prefetch-only", {"fast_path": False}),
    ("defaults", {}),
]


def make_workload(spec: dict[str, Any]) -> Any:
    async def workload(run: Run) -> None:
        s = run.session
        persistent = []
        existing: dict[str, Any] = {}
        if spec["use_persistent"] or spec.get("modify_persistent"):
            author = await s.get(Author, 1)
            persistent = [author]
            if spec.get("modify_persistent"):
                author.nickname = "changed"
        if spec.get("tag_existing"):
            existing["tag"] = await s.get(Tag, 1)
        if spec.get("shelf_items"):
            existing["shelf"] = await s.get(Shelf, 1, options=[selectinload(Shelf.items)])
        created, top = build(spec, persistent if spec["use_persistent"] else [], existing)
        if spec.get("existing_node_children"):
            root = await s.get(Node, 1)
            for i in range(spec["existing_node_children"]):
                child = Node(name=f"under-root-{i}", parent=root)
                created.append(child)
                top.append(child)
        if spec.get("delete_persistent"):
            await s.delete(await s.get(Widget, 1))
        run.track(*created)
        if spec["flush_midway"] and len(top) > 1:
            half = len(top) // 2
            s.add_all(top[:half])
            await s.flush()
            run.snapshot("flush 1")
            s.add_all(top[half:])
        else:
            s.add_all(top)
        await s.flush()
        run.snapshot("flush")
        await s.commit()
        run.snapshot("commit")

    return workload


async def setup(session: Any) -> None:
    session.add_all(
        [
            Author(name="existing", score=5),
            Tag(label="old"),
            Shelf(label="old shelf"),
            Node(name="old root"),
            Widget(name="doomed"),
        ]
    )


ZOO = {
    "metadata": Base.metadata,
    "sequences": EXPLICIT_SEQUENCES,
    "setup": setup,
    "before_run": reset_codes,
}


@pytest.fixture
def zoo_dsn(database_dsn: str) -> str:
    create_schema(database_dsn, Base.metadata)
    return database_dsn


async def compare(dsn: str, spec: dict[str, Any]) -> None:
    await compare_modes(dsn, make_workload(spec), MODES, **ZOO)


# Each example runs the workload six times against a real server (~0.3 s): the default profile
# keeps the suite short; `HYPOTHESIS_PROFILE=thorough` runs many more, with shrinking.
settings.register_profile(
    "default",
    max_examples=int(os.environ.get("ASYNC_BATCH_EXAMPLES", "40")),
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@given(spec=spec_s)
def test_random_graphs_match_native(zoo_dsn: str, spec: dict[str, Any]) -> None:
    asyncio.run(compare(zoo_dsn, spec))
