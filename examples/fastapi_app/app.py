"""The sequence import service on FastAPI, with async_batch enabled on its sessionmaker.

Run it with ``python -m examples.fastapi_app`` (or ``uvicorn examples.fastapi_app.app:app``).

- ``POST /sequences``: a JSON array of sequences with annotations and samples; 201 with the new
  ids, 422 for a malformed body, 409 for a sequence name that is repeated or already exists.
  Nothing is written unless everything is.
- ``GET /sequences/{id}``: the sequence with its annotations and samples; 404 if absent.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from async_batch import enable_async_batching
from examples.common import service
from examples.common.database import serving_engine
from examples.common.schemas import ErrorOut, ImportResult, SequenceIn, SequenceOut

router = APIRouter()


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request, from the sessionmaker the lifespan made."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


@router.post(
    "/sequences",
    status_code=status.HTTP_201_CREATED,
    responses={status.HTTP_409_CONFLICT: {"model": ErrorOut}},
)
async def import_sequences(payload: list[SequenceIn], session: SessionDep) -> ImportResult:
    try:
        ids = await service.import_sequences(session, payload)
    except service.ImportConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return ImportResult(ids=ids)


@router.get("/sequences/{sequence_id}", responses={status.HTTP_404_NOT_FOUND: {"model": ErrorOut}})
async def read_sequence(sequence_id: int, session: SessionDep) -> SequenceOut:
    sequence = await service.get_sequence(session, sequence_id)
    if sequence is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sequence {sequence_id} not found")
    return SequenceOut.model_validate(sequence)


def create_app(engine: AsyncEngine | None = None) -> FastAPI:
    """The app. Without ``engine``, its lifespan creates one on `database_url()` (and disposes
    of it at shutdown); with one (tests), it uses that engine and leaves it open."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with serving_engine(engine) as db:
            sessionmaker = async_sessionmaker(db, expire_on_commit=False)
            enable_async_batching(sessionmaker)  # once, here: every request's session batches
            app.state.sessionmaker = sessionmaker
            yield

    app = FastAPI(title="DNA sequences (async_batch example)", lifespan=lifespan)
    app.include_router(router)
    return app


app = create_app()
