"""The FastAPI example (examples/fastapi_app) against a real PostgreSQL, in-process over ASGI.

httpx's ASGITransport does not run lifespan events, so the ``client`` fixture enters the app's
lifespan itself (``app.router.lifespan_context``); the app is built with ``create_app(engine)``
on an engine whose traffic goes through the counting `WireProxy`.

Round-trip bounds per import request: see ``examples_support.warm_bound``/``cold_bound``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
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
from examples.fastapi_app.app import create_app


@pytest.fixture
async def db(proxy: WireProxy, database_dsn: str) -> AsyncIterator[AsyncEngine]:
    async with app_engine(proxy, database_dsn) as engine:
        yield engine


@pytest.fixture
async def client(db: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(db)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as http,
    ):
        yield http


async def post(client: httpx.AsyncClient, body: Any) -> httpx.Response:
    return await client.post("/sequences", json=body, timeout=60)


# -- happy path ----------------------------------------------------------------------------------


async def test_import_then_read_back(client: httpx.AsyncClient, db: AsyncEngine) -> None:
    # 8 sequences: 40 objects, above the default small_flush (smaller imports stay native)
    body = payload("read", 8, samples=True)
    with capture_flush_reports() as reports:
        response = await post(client, body)
    assert response.status_code == 201, response.text
    ids = response.json()["ids"]
    assert len(ids) == len(set(ids)) == 8

    # One flush, written entirely by async_batch: 8 + 24 annotations + 8 samples.
    [report] = reports
    assert (report.accelerated, report.native, report.fallbacks) == (40, 0, [])
    assert report.prefetch_round_trips == 1
    assert [(t.table, t.rows) for t in report.tables] == [
        ("sequences", 8),
        ("annotations", 24),
        ("samples", 8),
        ("dna_samples", 4),
        ("rna_samples", 4),
    ]

    for sequence_id, sent in zip(ids, body, strict=True):
        got = await client.get(f"/sequences/{sequence_id}")
        assert got.status_code == 200, got.text
        data = got.json()
        assert data["id"] == sequence_id
        assert (data["name"], data["bases"]) == (sent["name"], sent["bases"])
        assert [{k: a[k] for k in ("label", "start", "end")} for a in data["annotations"]] == (
            sent["annotations"]
        )
        [sample] = data["samples"]
        assert {k: v for k, v in sample.items() if k != "id"} == sent["samples"][0]

    missing = await client.get("/sequences/999999")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "sequence 999999 not found"}
    assert await table_counts(db) == {
        "sequences": 8,
        "annotations": 24,
        "samples": 8,
        "dna_samples": 4,
        "rna_samples": 4,
    }


@pytest.mark.parametrize(("samples", "tables"), [(False, 2), (True, 5)])
async def test_round_trips_per_import_request(
    client: httpx.AsyncClient, db: AsyncEngine, proxy: WireProxy, samples: bool, tables: int
) -> None:
    # Connect and initialize the dialect, then one import to fill the engine's catalog cache;
    # then drop the pooled connection so that the first measured import gets a new one.
    assert (await client.get("/sequences/1")).status_code == 404
    assert (await post(client, payload("warmup", 3, samples=samples))).status_code == 201
    await db.dispose()

    measured = []
    for i in range(3):
        with proxy.count() as window:
            response = await post(client, payload(f"rt{i}", 500, samples=samples))
        assert response.status_code == 201, response.text
        measured.append(window.round_trips)
    print(f"round trips per 500-sequence import ({tables} tables): {measured}")
    assert measured[0] <= cold_bound(tables)
    assert all(n <= warm_bound(tables) for n in measured[1:])
    # GET: BEGIN, one SELECT plus a selectin load per relationship (each prepared on first
    # use: 2 round trips), ROLLBACK when the request's session closes.
    with proxy.count() as window:
        assert (await client.get(f"/sequences/{response.json()['ids'][0]}")).status_code == 200
    assert window.round_trips <= 1 + 3 * 2 + 1


async def test_twenty_concurrent_imports(
    client: httpx.AsyncClient, db: AsyncEngine, proxy: WireProxy
) -> None:
    requests, per_request, annotations = 20, 500, 3
    assert (await post(client, payload("warmup", 2))).status_code == 201
    await open_pool(db)
    before = await table_counts(db)

    bodies = [payload(f"c{r}", per_request, annotations=annotations) for r in range(requests)]
    with capture_flush_reports() as reports, proxy.count() as window:
        responses = await asyncio.gather(*(post(client, body) for body in bodies))
    total = window.round_trips

    assert [r.status_code for r in responses] == [201] * requests
    await assert_imported(db, before, bodies, [r.json()["ids"] for r in responses])
    assert len(reports) == requests
    assert all(r.accelerated == per_request * (1 + annotations) and r.native == 0 for r in reports)
    print(f"round trips for {requests} concurrent imports: {total} ({total / requests:.2f}/req)")
    assert total <= requests * cold_bound(2)
    await assert_pool_healthy(db)


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), MALFORMED)
async def test_malformed_body_is_422_and_writes_nothing(
    client: httpx.AsyncClient, db: AsyncEngine, body: Any, message: str
) -> None:
    response = await post(client, body)
    assert response.status_code == 422, response.text
    assert message in response.text
    assert await table_counts(db) == ZERO


async def test_one_bad_item_rejects_the_whole_import(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    body = payload("mixed", 100)
    body[70]["bases"] = "HELLO"
    response = await post(client, body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", 70, "bases"]
    invalid_json = await client.post(
        "/sequences", content=b'[{"name": ', headers={"content-type": "application/json"}
    )
    assert invalid_json.status_code == 422
    assert invalid_json.json()["detail"][0]["type"] == "json_invalid"
    assert await table_counts(db) == ZERO


# -- conflicts -----------------------------------------------------------------------------------


# 20 rows go through one unnest INSERT, 200 through COPY: both report the violation.
@pytest.mark.parametrize("n", [20, 200])
async def test_duplicate_name_in_request_is_409(
    client: httpx.AsyncClient, db: AsyncEngine, n: int
) -> None:
    body = payload("dup", n, samples=True)
    body[n - 1]["name"] = body[n // 2]["name"]
    response = await post(client, body)
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    assert f"Key (name)=({body[n // 2]['name']}) already exists" in detail
    assert detail.endswith("Nothing was imported.")
    assert await table_counts(db) == ZERO

    # The next request on the same pool works.
    response = await post(client, payload("after", n, samples=True))
    assert response.status_code == 201, response.text
    assert (await table_counts(db))["sequences"] == n
    await assert_pool_healthy(db)


@pytest.mark.parametrize("n", [20, 200])
async def test_name_already_in_database_is_409(
    client: httpx.AsyncClient, db: AsyncEngine, n: int
) -> None:
    first = await post(client, payload("old", 10))
    assert first.status_code == 201
    before = await table_counts(db)

    body = payload("new", n)
    body[n // 3]["name"] = "old-7"
    response = await post(client, body)
    assert response.status_code == 409, response.text
    assert "Key (name)=(old-7) already exists" in response.json()["detail"]
    assert await table_counts(db) == before

    del body[n // 3]
    response = await post(client, body)
    assert response.status_code == 201, response.text
    assert (await table_counts(db))["sequences"] == before["sequences"] + n - 1
    await assert_pool_healthy(db)


# -- cancellation ------------------------------------------------------------------------------

# Cancel the request once the proxy has seen the client send ...
CANCEL_POINTS = {
    "after id prefetch": ("B", 1),  # the prefetch's Bind: ids are being drawn
    "while COPY streams sequences": ("d", 1),  # CopyData
    "after sequences were copied": ("c", 1),  # CopyDone of the first table
    "after annotations were copied": ("c", 2),
}


@pytest.mark.parametrize("point", list(CANCEL_POINTS))
async def test_request_cancelled_mid_flush_leaves_nothing(
    client: httpx.AsyncClient, db: AsyncEngine, proxy: WireProxy, point: str
) -> None:
    message, count = CANCEL_POINTS[point]
    assert (await client.get("/sequences/1")).status_code == 404  # connect outside the window
    body = payload("cancelled", 1000, samples=True)
    with proxy.count() as window:
        task = asyncio.create_task(post(client, body))
        await wait_for_messages(window, message, count, task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # No row of the cancelled request, a healthy pool, and the next request works.
    assert await table_counts(db) == ZERO
    await assert_pool_healthy(db)
    response = await post(client, payload("next", 100, samples=True))
    assert response.status_code == 201, response.text
    assert (await table_counts(db))["sequences"] == 100
    assert (await client.get(f"/sequences/{response.json()['ids'][-1]}")).status_code == 200


async def test_request_timing_out_leaves_nothing(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(post(client, payload("slow", 1500, samples=True)), timeout=0.05)
    assert await table_counts(db) == ZERO
    await assert_pool_healthy(db)
    response = await post(client, payload("next", 10))
    assert response.status_code == 201, response.text
    assert (await table_counts(db))["sequences"] == 10
