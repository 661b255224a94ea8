"""Where the database comes from, and the one-time schema setup."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine

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
