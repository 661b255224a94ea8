"""Where the database comes from, and the one-time schema setup."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from async_batch.testing import ENV_VAR, postgres_server, sqlalchemy_url

from .models import Base


@contextlib.asynccontextmanager
async def database_url() -> AsyncIterator[str]:
    """The SQLAlchemy URL of ``$ASYNC_BATCH_DSN`` (a ``postgresql://`` DSN) when it is set;
    otherwise start a throwaway PostgreSQL server for as long as the context lasts."""
    dsn = os.environ.get(ENV_VAR, "").strip()
    if dsn:
        yield sqlalchemy_url(dsn)
        return
    # Starting and stopping a cluster is blocking work: keep it off the event loop.
    stack = contextlib.ExitStack()
    server = await asyncio.to_thread(stack.enter_context, postgres_server())
    try:
        yield sqlalchemy_url(server.dsn)
    finally:
        await asyncio.to_thread(stack.close)


async def create_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


@contextlib.asynccontextmanager
async def serving_engine(engine: AsyncEngine | None = None) -> AsyncIterator[AsyncEngine]:
    """The engine a web app serves from, for as long as the context lasts, its tables created.

    Without ``engine``, a new one on `database_url()` with a pool for 20 concurrent requests,
    disposed of at exit; with one (tests), that engine, left open."""
    async with contextlib.AsyncExitStack() as stack:
        if engine is None:
            url = await stack.enter_async_context(database_url())
            engine = create_async_engine(url, pool_size=20)
            stack.push_async_callback(engine.dispose)
        await create_tables(engine)
        yield engine
