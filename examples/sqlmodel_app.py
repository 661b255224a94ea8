"""SQLModel with async_batch: ``python -m examples.sqlmodel_app``.

Two ways to turn batching on for SQLModel's ``AsyncSession``
(``sqlmodel.ext.asyncio.session.AsyncSession``, whose sync session is ``sqlmodel.Session``):

1. on an ``async_sessionmaker(engine, class_=AsyncSession)``: only the sessions it makes;
2. on a ``sqlmodel.Session`` subclass, used as ``sync_session_class``: every session of that
   class (and of its subclasses), however it is created.

Uses ``$ASYNC_BATCH_DSN`` if set, else starts a throwaway PostgreSQL server.
"""

# No ``from __future__ import annotations``: SQLModel resolves relationship annotations at
# class creation.
import asyncio
import uuid

import sqlmodel
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel import Field, Relationship, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from async_batch import FlushReport, enable_async_batching, last_flush
from examples.common.database import database_url


class Team(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    heroes: list["Hero"] = Relationship(back_populates="team")


class Hero(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str
    power: int = 0
    team_id: int | None = Field(default=None, foreign_key="team.id")
    team: Team | None = Relationship(back_populates="heroes")


class BatchingSession(sqlmodel.Session):
    """``sqlmodel.Session`` with batching (enabled on the class in `demo`)."""


async def import_teams(session: AsyncSession, prefix: str, teams: int, heroes: int) -> list[int]:
    """Insert ``teams`` teams of ``heroes`` heroes each; return the team ids."""
    new = [
        Team(
            name=f"{prefix}-{t}",
            heroes=[Hero(name=f"{prefix}-{t}-{h}", power=h) for h in range(heroes)],
        )
        for t in range(teams)
    ]
    session.add_all(new)
    await session.commit()
    return [team.id for team in new if team.id is not None]


def describe(report: FlushReport | None) -> str:
    return report.summary() if report is not None else "flush not batched"


async def demo(engine: AsyncEngine) -> None:
    run = uuid.uuid4().hex[:8]  # team names are unique: a second run must not collide
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)

    # 1. On an async_sessionmaker of SQLModel's AsyncSession.
    sessionmaker = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
    enable_async_batching(sessionmaker)
    async with sessionmaker() as session:
        team_ids = await import_teams(session, f"maker-{run}", teams=100, heroes=10)
        print(describe(last_flush(session)))
        heroes = (await session.exec(select(Hero).where(Hero.team_id == team_ids[0]))).all()
        print(f"team {team_ids[0]}: {[hero.name for hero in heroes]}")

    # 2. On a sqlmodel.Session subclass, as the sync_session_class of SQLModel's AsyncSession.
    enable_async_batching(BatchingSession)
    async with AsyncSession(
        engine, sync_session_class=BatchingSession, expire_on_commit=False
    ) as session:
        await import_teams(session, f"subclass-{run}", teams=100, heroes=10)
        print(describe(last_flush(session)))


async def main() -> None:
    async with database_url() as url:
        engine = create_async_engine(url)
        try:
            await demo(engine)
        finally:
            await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
