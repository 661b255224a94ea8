"""The aiohttp example (examples/aiohttp_app) against a real PostgreSQL, over real HTTP.

Each test runs the app the way ``web.run_app`` does (``AppRunner`` + ``TCPSite`` on 127.0.0.1, a
free port) and talks to it with an ``aiohttp.ClientSession``, all on the test's own event loop:
no pytest-aiohttp fixtures (whose loop would differ from pytest-asyncio's), and not
``aiohttp.test_utils.TestServer``, which always turns ``handler_cancellation`` on. The app is
built with ``create_app(engine)`` on an engine whose traffic goes through the counting
`WireProxy`. Round-trip bounds: ``examples_support``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from examples_support import (
    MALFORMED,
    ZERO,
    app_engine,
    assert_imported,
    assert_pool_healthy,
    capture_flush_reports,
    cold_bound,
    open_pool,
    payload,
    table_counts,
    wait_for_messages,
    warm_bound,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from async_batch.testing import WireProxy
from examples.aiohttp_app.app import create_app

Client = aiohttp.ClientSession


@pytest.fixture
async def db(proxy: WireProxy, database_dsn: str) -> AsyncIterator[AsyncEngine]:
    async with app_engine(proxy, database_dsn) as engine:
        yield engine


@contextlib.asynccontextmanager
async def serve(db: AsyncEngine, *, handler_cancellation: bool = False) -> AsyncIterator[Client]:
    """The app on a real port (its cleanup_ctx runs at setup and cleanup) and a client for it.

    ``handler_cancellation``: aiohttp cancels the handler of a request whose client went away
    (off by default in aiohttp, as in ``web.run_app``)."""
    runner = web.AppRunner(create_app(db), handler_cancellation=handler_cancellation)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession(base_url=f"http://{host}:{port}") as http:
            yield http
    finally:
        await runner.cleanup()


@pytest.fixture
async def client(db: AsyncEngine) -> AsyncIterator[Client]:
    async with serve(db) as http:
        yield http


async def post(client: Client, body: Any) -> tuple[int, Any]:
    async with client.post("/sequences", json=body) as response:
        return response.status, await response.json()


async def test_import_then_read_back(client: Client, db: AsyncEngine) -> None:
    # 8 sequences: 40 objects, above the default small_flush (smaller imports stay native)
    body = payload("read", 8, samples=True)
    with capture_flush_reports() as reports:
        status, data = await post(client, body)
    assert status == 201, data
    ids = data["ids"]
    assert len(ids) == len(set(ids)) == 8
    [report] = reports
    assert (report.accelerated, report.native, report.fallbacks) == (40, 0, [])

    for sequence_id, sent in zip(ids, body, strict=True):
        async with client.get(f"/sequences/{sequence_id}") as response:
            assert response.status == 200
            got = await response.json()
        assert (got["id"], got["name"], got["bases"]) == (sequence_id, sent["name"], sent["bases"])
        assert [{k: a[k] for k in ("label", "start", "end")} for a in got["annotations"]] == (
            sent["annotations"]
        )
        [sample] = got["samples"]
        assert {k: v for k, v in sample.items() if k != "id"} == sent["samples"][0]

    async with client.get("/sequences/999999") as response:
        assert response.status == 404
        assert await response.json() == {"detail": "sequence 999999 not found"}
    async with client.get("/sequences/abc") as response:
        assert response.status == 422
    assert (await table_counts(db))["sequences"] == 8


async def test_round_trips_per_import_request(
    client: Client, db: AsyncEngine, proxy: WireProxy
) -> None:
    tables = 5
    assert (await post(client, payload("warmup", 3, samples=True)))[0] == 201
    await db.dispose()  # the first measured import gets a new pooled connection
    measured = []
    for i in range(3):
        with proxy.count() as window:
            status, _ = await post(client, payload(f"rt{i}", 500, samples=True))
        assert status == 201
        measured.append(window.round_trips)
    print(f"round trips per 500-sequence import ({tables} tables, aiohttp): {measured}")
    assert measured[0] <= cold_bound(tables)
    assert all(n <= warm_bound(tables) for n in measured[1:])


async def test_twenty_concurrent_imports(client: Client, db: AsyncEngine, proxy: WireProxy) -> None:
    requests, per_request = 20, 500
    assert (await post(client, payload("warmup", 2)))[0] == 201
    await open_pool(db)
    before = await table_counts(db)

    bodies = [payload(f"c{r}", per_request) for r in range(requests)]
    with proxy.count() as window:
        results = await asyncio.gather(*(post(client, body) for body in bodies))
    assert [status for status, _ in results] == [201] * requests
    await assert_imported(db, before, bodies, [data["ids"] for _, data in results])
    print(f"round trips for {requests} concurrent imports (aiohttp): {window.round_trips}")
    assert window.round_trips <= requests * cold_bound(2)
    await assert_pool_healthy(db)


@pytest.mark.parametrize(("body", "message"), MALFORMED)
async def test_malformed_body_is_422_and_writes_nothing(
    client: Client, db: AsyncEngine, body: Any, message: str
) -> None:
    status, data = await post(client, body)
    assert status == 422, data
    assert any(message in error["msg"] for error in data["detail"]), data
    assert await table_counts(db) == ZERO


async def test_one_bad_item_rejects_the_whole_import(client: Client, db: AsyncEngine) -> None:
    body = payload("mixed", 100)
    body[70]["bases"] = "HELLO"
    status, data = await post(client, body)
    assert status == 422
    [error] = data["detail"]
    assert error["loc"] == ["body", 70, "bases"]
    async with client.post("/sequences", data=b'[{"name": ') as response:
        assert response.status == 422
        assert (await response.json())["detail"][0]["type"] == "json_invalid"
    assert await table_counts(db) == ZERO


@pytest.mark.parametrize("n", [20, 200])
async def test_duplicate_names_are_409_and_commit_nothing(
    client: Client, db: AsyncEngine, n: int
) -> None:
    body = payload("dup", n, samples=True)
    body[-1]["name"] = body[0]["name"]
    status, data = await post(client, body)
    assert status == 409
    assert "Key (name)=(dup-0) already exists" in data["detail"]
    assert await table_counts(db) == ZERO

    status, _ = await post(client, payload("old", n))
    assert status == 201
    before = await table_counts(db)
    status, data = await post(client, [*payload("new", n), payload("old", 1)[0]])
    assert status == 409
    assert "Key (name)=(old-0) already exists" in data["detail"]
    assert await table_counts(db) == before

    status, _ = await post(client, payload("new", n))  # the next request on the pool works
    assert status == 201
    assert (await table_counts(db))["sequences"] == 2 * n
    await assert_pool_healthy(db)


# Disconnect once the proxy has seen the server's connection send ...
DISCONNECT_POINTS = {
    "while COPY streams sequences": ("d", 1),
    "after annotations were copied": ("c", 2),
}


@pytest.mark.parametrize("point", list(DISCONNECT_POINTS))
async def test_client_disconnect_mid_flush_leaves_nothing(
    db: AsyncEngine, proxy: WireProxy, point: str
) -> None:
    message, count = DISCONNECT_POINTS[point]
    async with serve(db, handler_cancellation=True) as client:
        async with client.get("/sequences/1") as response:  # connect outside the window
            assert response.status == 404
        with proxy.count() as window:
            task = asyncio.create_task(post(client, payload("gone", 1000, samples=True)))
            await wait_for_messages(window, message, count, task)
            task.cancel()  # the client closes its connection
            with pytest.raises(asyncio.CancelledError):
                await task
        await assert_pool_healthy(db)  # waits for the cancelled handler to return its session
        assert await table_counts(db) == ZERO
        status, data = await post(client, payload("next", 100, samples=True))
        assert status == 201, data
        assert (await table_counts(db))["sequences"] == 100


async def test_client_disconnect_without_handler_cancellation_completes(
    client: Client, db: AsyncEngine, proxy: WireProxy
) -> None:
    """aiohttp's default: the handler outlives its client, so the import commits whole."""
    n = 1000
    with proxy.count() as window:
        task = asyncio.create_task(post(client, payload("orphan", n, samples=True)))
        await wait_for_messages(window, "d", 1, task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while window.messages["Q"] < 1 + 5 + 1:  # BEGIN, 5 COPYs, COMMIT
            assert loop.time() < deadline, window
            await asyncio.sleep(0.01)
    await assert_pool_healthy(db)
    assert await table_counts(db) == {
        "sequences": n,
        "annotations": 3 * n,
        "samples": n,
        "dna_samples": n // 2,
        "rna_samples": n // 2,
    }
