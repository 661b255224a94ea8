"""The sequence import service on aiohttp, with async_batch enabled on its sessionmaker.

Run it with ``python -m examples.aiohttp_app``. Same API as the FastAPI example:
``POST /sequences`` (201 ids / 422 / 409) and ``GET /sequences/{id}`` (200 / 404).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from async_batch import enable_async_batching
from examples.common import service
from examples.common.database import serving_engine
from examples.common.schemas import ErrorOut, ImportResult, SequenceOut, SequencesIn

SESSIONMAKER = web.AppKey("sessionmaker", async_sessionmaker[AsyncSession])

routes = web.RouteTableDef()


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status)


def _validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors, JSON-safe, in FastAPI's 422 shape (``loc`` starts with ``"body"``)."""
    errors: list[dict[str, Any]] = json.loads(exc.json(include_url=False, include_context=False))
    for error in errors:
        error["loc"] = ["body", *error["loc"]]
    return errors


@routes.post("/sequences")
async def import_sequences(request: web.Request) -> web.Response:
    try:
        items = SequencesIn.validate_json(await request.read())
    except ValidationError as exc:
        return web.json_response({"detail": _validation_errors(exc)}, status=422)
    async with request.app[SESSIONMAKER]() as session:
        try:
            ids = await service.import_sequences(session, items)
        except service.ImportConflict as exc:
            return _json(ErrorOut(detail=str(exc)), status=409)
    return _json(ImportResult(ids=ids), status=201)


@routes.get("/sequences/{sequence_id}")
async def read_sequence(request: web.Request) -> web.Response:
    raw_id = request.match_info["sequence_id"]
    try:
        sequence_id = int(raw_id)
    except ValueError:
        return _json(ErrorOut(detail=f"sequence id must be an integer, got {raw_id!r}"), 422)
    async with request.app[SESSIONMAKER]() as session:
        sequence = await service.get_sequence(session, sequence_id)
        if sequence is None:
            return _json(ErrorOut(detail=f"sequence {sequence_id} not found"), status=404)
        return _json(SequenceOut.model_validate(sequence))


def create_app(engine: AsyncEngine | None = None) -> web.Application:
    """The app. Without ``engine``, its cleanup context creates one on `database_url()` (and
    disposes of it at shutdown); with one (tests), it uses that engine and leaves it open."""

    async def database(app: web.Application) -> AsyncIterator[None]:
        async with serving_engine(engine) as db:
            sessionmaker = async_sessionmaker(db, expire_on_commit=False)
            enable_async_batching(sessionmaker)  # once, here: every request's session batches
            app[SESSIONMAKER] = sessionmaker
            yield

    app = web.Application()
    app.cleanup_ctx.append(database)
    app.add_routes(routes)
    return app
