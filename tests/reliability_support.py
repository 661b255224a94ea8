"""Helpers for the reliability suites (tests/test_reliability_*.py, issue 7).

- scaling: ``ASYNC_BATCH_STRESS=1`` (the ``nox -s stress`` session) turns on the long versions;
- sessions per write strategy, row counts and id checks straight from the database;
- `Gate`: an advisory lock held by a control connection that a trigger makes one chosen row wait
  on, so that a flush is reliably blocked *in the middle of a batch* (server side) while the test
  kills its backend, cancels its task or lets a timeout fire;
- `settle`: await something with a deadline and turn a hang into a test failure (a hung flush is
  the worst failure there is, and must not hang the suite);
- PgBouncer >= 1.21: find it, or build it from Debian's source package without touching the
  system, and start it on a free port in front of the test server;
- a worker entry point for the two-process test: ``python tests/reliability_support.py worker``.

Command line: ``python tests/reliability_support.py build-pgbouncer`` builds PgBouncer into
``build/pgbouncer/`` (git-ignored); ``worker DSN TAG PARENTS CHILDREN FLUSHES`` connects, prints
``ready``, waits for a line on stdin, inserts rows and prints ``accelerated=N``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import ForeignKey, MetaData, String
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from async_batch import enable_async_batching

REPO = Path(__file__).resolve().parent.parent

# --- scaling ----------------------------------------------------------------------------------

STRESS_ENV = "ASYNC_BATCH_STRESS"
STRESS = os.environ.get(STRESS_ENV, "").strip() not in ("", "0", "false", "no")


def scaled(default: int, stress: int) -> int:
    """``default`` in the normal run, ``stress`` under ``ASYNC_BATCH_STRESS=1``."""
    return stress if STRESS else default


def matrix(*params: Any, stress_only: Sequence[Any] = ()) -> list[Any]:
    """Test parameters: ``params``, plus ``stress_only`` under ``ASYNC_BATCH_STRESS=1``."""
    return [*params, *(stress_only if STRESS else ())]


# --- sessions and database checks -------------------------------------------------------------

STRATEGIES = ("copy", "unnest", "executemany")
WITH_NATIVE = ("native", *STRATEGIES)


def maker_for(engine: AsyncEngine, strategy: str, **kw: Any) -> async_sessionmaker[Any]:
    """An async_sessionmaker on ``engine``; batching with ``strategy`` unless ``"native"``.

    ``trust_triggers``: the table's only trigger is the ``Gate`` below, which holds one row
    and changes nothing -- without it the batched sessions would (rightly) write the table
    natively, and the faults would not hit the writer under test."""
    maker = async_sessionmaker(engine, **kw)
    if strategy != "native":
        enable_async_batching(maker, strategy=strategy, trust_triggers=True)
    return maker


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one query on a fresh direct connection (never the pool under test)."""
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def fetchval(dsn: str, sql: str, *args: Any) -> Any:
    rows = await fetch(dsn, sql, *args)
    return rows[0][0] if rows else None


async def id_stats(dsn: str, table: str, column: str = "id") -> tuple[int, int]:
    """(rows, distinct non-null ids) of ``table`` (a quoted, possibly qualified name)."""
    row = (await fetch(dsn, f"SELECT count(*), count(DISTINCT {column}) FROM {table}"))[0]
    return int(row[0]), int(row[1])


async def assert_rows(dsn: str, table: str, expected: int, column: str = "id") -> None:
    """Exactly ``expected`` rows in ``table``, every id present and distinct."""
    rows, distinct = await id_stats(dsn, table, column)
    assert rows == expected, f"{table}: {rows} rows in the database, expected {expected}"
    assert distinct == rows, f"{table}: {rows - distinct} duplicate or NULL ids"


async def backend_state(dsn: str, pid: int) -> str | None:
    """``pg_stat_activity.state`` of a backend, or None when it is gone."""
    return await fetchval(dsn, "SELECT state FROM pg_stat_activity WHERE pid = $1", pid)


async def wait_backend_settled(dsn: str, pid: int, timeout: float = 5.0) -> str | None:
    """Wait until a backend is gone or plain ``idle`` (not in a transaction, not running)."""
    deadline = time.monotonic() + timeout
    state = await backend_state(dsn, pid)
    while state not in (None, "idle") and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        state = await backend_state(dsn, pid)
    return state


def sqlstate(err: BaseException) -> str | None:
    """The SQLSTATE of the asyncpg error behind a SQLAlchemy exception, if any."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        code = getattr(cur, "sqlstate", None)
        if isinstance(code, str):
            return code
        nxt = getattr(cur, "orig", None)
        cur = nxt if isinstance(nxt, BaseException) else cur.__cause__
    return None


def driver_error(err: BaseException) -> BaseException | None:
    """The asyncpg exception behind a SQLAlchemy exception (``err.orig.__cause__``)."""
    orig = getattr(err, "orig", None)
    if orig is None:
        return None
    cause = orig.__cause__
    return cause if cause is not None else orig


# --- hangs ------------------------------------------------------------------------------------


class Hung(AssertionError):
    """An awaited operation did not finish within its deadline."""


@dataclass
class Settled:
    """How an awaited operation ended."""

    result: Any = None
    error: BaseException | None = None
    cancelled: bool = False
    seconds: float = 0.0


async def settle(
    awaitable: Awaitable[Any] | asyncio.Future[Any], timeout: float, what: str
) -> Settled:
    """Await ``awaitable`` (a coroutine or an already running task) for at most ``timeout``
    seconds and report how it ended. If it is still running then, try to unstick it (cancel it a
    few times) and raise `Hung` naming ``what``."""
    task = asyncio.ensure_future(awaitable)
    t0 = time.perf_counter()
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        for _ in range(5):
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=1)
            if done:
                break
        # retrieve the outcome so that asyncio does not log "exception never retrieved"
        if task.done() and not task.cancelled():
            task.exception()
        raise Hung(
            f"{what} was still running {timeout:.0f}s later (hung); "
            f"{'it ended after being cancelled' if task.done() else 'cancelling did not help'}"
        )
    out = Settled(seconds=time.perf_counter() - t0)
    if task.cancelled():
        out.cancelled = True
    elif task.exception() is not None:
        out.error = task.exception()
    else:
        out.result = task.result()
    return out


# --- a lock that holds one row of a batch -----------------------------------------------------

GATE_KEY = 7_700_007


async def install_gate(dsn: str, table: str, column: str = "code", value: str = "gate") -> None:
    """A BEFORE INSERT trigger on ``table``: a row whose ``column`` equals ``value`` waits for
    the advisory lock `Gate` holds. Rows before it are already inserted (uncommitted)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"""
            CREATE OR REPLACE FUNCTION reliability_gate() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.{column} = '{value}' THEN
                PERFORM pg_advisory_xact_lock_shared({GATE_KEY});
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER reliability_gate BEFORE INSERT ON {table}
              FOR EACH ROW EXECUTE FUNCTION reliability_gate();
            """
        )
    finally:
        await conn.close()


class Gate:
    """Holds the advisory lock the gate trigger waits on, from its own connection."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> Gate:
        self.conn = await asyncpg.connect(self.dsn)
        await self.conn.execute(f"SELECT pg_advisory_lock({GATE_KEY})")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.execute(f"SELECT pg_advisory_unlock({GATE_KEY})")
            await self.conn.close()
            self.conn = None

    async def blocked_pid(self, timeout: float = 30.0) -> int:
        """The pid of the backend waiting at the gate (waits for one to arrive)."""
        assert self.conn is not None
        deadline = time.monotonic() + timeout
        while True:
            pid = await self.conn.fetchval(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND objid = $1 AND database = (SELECT oid FROM pg_database"
                " WHERE datname = current_database())",
                GATE_KEY,
            )
            if pid is not None:
                return int(pid)
            if time.monotonic() > deadline:
                raise AssertionError(f"no backend reached the gate within {timeout:.0f}s")
            await asyncio.sleep(0.01)

    async def terminate(self, pid: int) -> None:
        assert self.conn is not None
        assert await self.conn.fetchval("SELECT pg_terminate_backend($1)", pid)

    async def release(self) -> None:
        assert self.conn is not None
        await self.conn.execute(f"SELECT pg_advisory_unlock({GATE_KEY})")


# --- databases for a whole module -------------------------------------------------------------


@contextlib.contextmanager
def module_database(pg: Any, prefix: str) -> Iterator[str]:
    """A database shared by one test module (tests reset what they touch)."""
    name = f"{prefix}_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    dsn: str = pg.create_database(name)
    try:
        yield dsn
    finally:
        pg.drop_database(name)


# --- two processes ----------------------------------------------------------------------------


class ProcBase(DeclarativeBase):
    metadata = MetaData()


class ProcParent(ProcBase):
    __tablename__ = "proc_parent"
    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(40))
    children: Mapped[list[ProcChild]] = relationship(back_populates="parent")


class ProcChild(ProcBase):
    __tablename__ = "proc_child"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("proc_parent.id"))
    source: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(40))
    parent: Mapped[ProcParent] = relationship(back_populates="children")


async def _worker(dsn: str, tag: str, parents: int, children: int, flushes: int) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from async_batch import last_flush
    from async_batch.testing import sqlalchemy_url

    engine = create_async_engine(sqlalchemy_url(dsn))
    maker = async_sessionmaker(engine)
    enable_async_batching(maker)  # strategy="auto"
    accelerated = 0
    try:
        async with engine.connect() as conn:  # connect (and warm the pool) before the start
            await conn.exec_driver_sql("SELECT 1")
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for f in range(flushes):
            async with maker() as session:
                for p in range(parents):
                    parent = ProcParent(source=tag, name=f"{tag}-{f}-{p}")
                    parent.children = [
                        ProcChild(source=tag, name=f"{tag}-{f}-{p}-{c}") for c in range(children)
                    ]
                    session.add(parent)
                await session.commit()
                report = last_flush(session)
                accelerated += report.accelerated if report else 0
    finally:
        await engine.dispose()
    print(f"accelerated={accelerated}", flush=True)


# --- PgBouncer --------------------------------------------------------------------------------

PGBOUNCER_ENV = "ASYNC_BATCH_PGBOUNCER"
PGBOUNCER_MIN = (1, 21)
PGBOUNCER_BUILD_DIR = REPO / "build" / "pgbouncer"
PGBOUNCER_SOURCE_SUITES = ("trixie", "forky", "sid")
"""Debian suites whose ``pgbouncer`` source package is >= 1.21 (bookworm has 1.18)."""

#: The PgBouncer settings the suite runs with (documented in the report/README).
PGBOUNCER_SETTINGS = {
    "pool_mode": "transaction",
    "max_prepared_statements": "200",
    "default_pool_size": "4",
    "max_client_conn": "200",
    "auth_type": "trust",
    "ignore_startup_parameters": "extra_float_digits,options",
    "server_reset_query": "",
    "server_check_delay": "0",
}


def pgbouncer_version(binary: str | os.PathLike[str]) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return None
    m = re.search(r"PgBouncer (\d+)\.(\d+)(?:\.(\d+))?", out)
    if not m:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


def find_pgbouncer() -> tuple[str | None, str]:
    """(path of a PgBouncer >= 1.21, or None; what was looked at)."""
    candidates: list[tuple[str, str]] = []
    env = os.environ.get(PGBOUNCER_ENV, "").strip()
    if env:
        candidates.append((env, f"${PGBOUNCER_ENV}"))
    built = PGBOUNCER_BUILD_DIR / "pgbouncer"
    candidates.append((str(built), "build/pgbouncer/pgbouncer"))
    which = shutil.which("pgbouncer")
    if which:
        candidates.append((which, "pgbouncer on PATH"))
    for sbin in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/local/bin/pgbouncer"):
        candidates.append((sbin, sbin))
    seen: list[str] = []
    for path, label in candidates:
        if not Path(path).is_file():
            continue
        version = pgbouncer_version(path)
        vtext = ".".join(map(str, version)) if version else "unknown version"
        if version is not None and version[:2] >= PGBOUNCER_MIN:
            return path, f"{label} (PgBouncer {vtext})"
        seen.append(f"{label} is {vtext}")
    found = "; ".join(seen) if seen else "none installed"
    return None, (
        f"no PgBouncer >= {'.'.join(map(str, PGBOUNCER_MIN))} ({found}; Debian 12 ships 1.18, "
        "which has no max_prepared_statements). Build one with `nox -s pgbouncer` or "
        f"`python tests/reliability_support.py build-pgbouncer`, or set {PGBOUNCER_ENV}"
    )


def _apt_mirror() -> str:
    """The Debian mirror this machine's apt already uses (so that no host is hard-coded)."""
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.is_file() and path.suffix in ("", ".list", ".sources"):
            with contextlib.suppress(OSError):
                texts.append(path.read_text())
    for text in texts:
        for m in re.finditer(r"(?m)^(?:URIs:\s*|deb(?:-src)?\s+(?:\[[^\]]*\]\s+)?)(\S+)", text):
            uri = m.group(1)
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    raise RuntimeError("no Debian mirror found in the apt sources of this machine")


def _codename() -> str:
    """The machine's Debian release (``bookworm``), for libraries that match its libc."""
    text = Path("/etc/os-release").read_text()
    m = re.search(r"(?m)^VERSION_CODENAME=\"?([a-z]+)", text)
    if not m:
        raise RuntimeError("cannot tell the Debian release from /etc/os-release")
    return m.group(1)


def _run(argv: Sequence[str], cwd: Path, log: list[str], **kw: Any) -> None:
    log.append("$ " + " ".join(argv))
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, **kw)
    log.append(proc.stdout[-2000:] + proc.stderr[-2000:])
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed (exit {proc.returncode}):\n" + "\n".join(log[-4:]))


def build_pgbouncer(dest: Path = PGBOUNCER_BUILD_DIR) -> Path:
    """Build PgBouncer >= 1.21 from Debian's source package into ``dest``.

    Nothing outside ``dest`` and a temporary directory is written: apt runs with its own source
    list, lists and cache in the temporary directory; libevent's headers and static library come
    from ``libevent-dev`` unpacked there (not installed), and are linked statically, so the binary
    needs only libc. Needs gcc and make. Takes ~30 s.
    """
    binary = dest / "pgbouncer"
    version = pgbouncer_version(binary) if binary.is_file() else None
    if version is not None and version[:2] >= PGBOUNCER_MIN:
        return binary
    mirror = _apt_mirror()
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="async-batch-pgbouncer-") as tmp_s:
        tmp = Path(tmp_s)
        for sub in ("lists/partial", "cache/archives/partial", "etc", "src", "libevent"):
            (tmp / sub).mkdir(parents=True)
        apt_opts = [
            "-o",
            f"Dir::Etc::SourceList={tmp / 'etc' / 'sources.list'}",
            "-o",
            "Dir::Etc::SourceParts=/nonexistent",
            "-o",
            f"Dir::State::Lists={tmp / 'lists'}",
            "-o",
            f"Dir::Cache={tmp / 'cache'}",
            "-o",
            "APT::Sandbox::User=root",
            "-q",
        ]
        errors = []
        for suite in PGBOUNCER_SOURCE_SUITES:
            # one suite at a time: a mirror may list a newer version than it serves
            (tmp / "etc" / "sources.list").write_text(f"deb-src {mirror} {suite} main\n")
            try:
                _run(["apt-get", *apt_opts, "update"], tmp, log)
                _run(
                    ["apt-get", *apt_opts, "source", "--download-only", f"pgbouncer/{suite}"],
                    tmp / "src",
                    log,
                )
                break
            except RuntimeError as err:
                errors.append(f"{suite}: {err}")
        else:
            raise RuntimeError(
                "no PgBouncer source package could be fetched:\n" + "\n".join(errors)
            )
        tarballs = sorted((tmp / "src").glob("pgbouncer_*.orig.tar.*"))
        if not tarballs:
            raise RuntimeError("apt-get source pgbouncer fetched no .orig tarball")
        # libevent-dev of the machine's own release (headers + static libraries), unpacked only
        (tmp / "etc" / "sources.list").write_text(f"deb {mirror} {_codename()} main\n")
        _run(["apt-get", *apt_opts, "update"], tmp, log)
        _run(["apt-get", *apt_opts, "download", "libevent-dev"], tmp / "libevent", log)
        debs = sorted((tmp / "libevent").glob("libevent-dev_*.deb"))
        if not debs:
            raise RuntimeError("apt-get download libevent-dev fetched nothing")
        root = tmp / "libevent" / "root"
        _run(["dpkg-deb", "-x", str(debs[-1]), str(root)], tmp, log)
        static = sorted(root.glob("usr/lib/*/libevent.a"))
        if not static:
            raise RuntimeError("libevent-dev has no libevent.a")
        _run(["tar", "xf", str(tarballs[-1])], tmp / "src", log)
        srcdirs = sorted(p for p in (tmp / "src").glob("pgbouncer-*") if p.is_dir())
        if not srcdirs:
            raise RuntimeError("pgbouncer source tarball unpacked to nothing")
        src = srcdirs[-1]
        _run(
            [
                "./configure",
                "--without-cares",
                "--without-systemd",
                "--without-pam",
                "--without-openssl",
                f"LIBEVENT_CFLAGS=-I{root / 'usr' / 'include'}",
                f"LIBEVENT_LIBS={static[0]}",
            ],
            src,
            log,
        )
        _run(["make", f"-j{os.cpu_count() or 2}"], src, log)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "pgbouncer", binary)
    version = pgbouncer_version(binary)
    if version is None or version[:2] < PGBOUNCER_MIN:
        raise RuntimeError(f"built PgBouncer reports version {version}")
    return binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def running_pgbouncer(
    binary: str, host: str, port: int, user: str, database: str, **settings: str
) -> AsyncIterator[str]:
    """Start PgBouncer on a free loopback port in front of ``host:port``; yield a DSN for
    ``database`` through it. Settings: `PGBOUNCER_SETTINGS` updated with ``settings``."""
    conf = dict(PGBOUNCER_SETTINGS)
    conf.update(settings)
    with tempfile.TemporaryDirectory(prefix="async-batch-pgbouncer-run-") as tmp_s:
        tmp = Path(tmp_s)
        if os.geteuid() == 0:
            # PgBouncer refuses to run as root; the temp dir must be usable by "nobody"
            os.chmod(tmp, 0o777)
        (tmp / "userlist.txt").write_text(f'"{user}" ""\n')
        for _attempt in range(5):
            listen = _free_port()
            lines = [
                "[databases]",
                f"* = host={host} port={port}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {listen}",
                "unix_socket_dir =",
                f"auth_file = {tmp / 'userlist.txt'}",
                f"logfile = {tmp / 'pgbouncer.log'}",
                f"pidfile = {tmp / 'pgbouncer.pid'}",
                *(f"{k} = {v}" for k, v in conf.items()),
            ]
            ini = tmp / "pgbouncer.ini"
            ini.write_text("\n".join(lines) + "\n")
            kwargs: dict[str, Any] = {}
            if os.geteuid() == 0:
                kwargs = {"user": "nobody", "group": "nogroup", "extra_groups": []}
                for f in ("userlist.txt", "pgbouncer.ini"):
                    os.chmod(tmp / f, 0o644)
            proc = subprocess.Popen(  # noqa: ASYNC220 - a server in the background
                [binary, str(ini)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                **kwargs,
            )
            if await _wait_port(listen, proc):
                break
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            if "Address already in use" not in out:
                raise RuntimeError(f"PgBouncer did not start (exit {proc.returncode}):\n{out}")
        else:
            raise RuntimeError("PgBouncer found no free port")
        try:
            yield f"postgresql://{user}@127.0.0.1:{listen}/{database}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()


async def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        w.close()
        with contextlib.suppress(Exception):
            await w.wait_closed()
        return True
    proc.kill()
    proc.wait()
    return False


def main(argv: list[str]) -> int:
    if argv[:1] == ["build-pgbouncer"]:
        path = build_pgbouncer()
        version = pgbouncer_version(path)
        print(f"PgBouncer {'.'.join(map(str, version or ()))} at {path.relative_to(REPO)}")
        return 0
    if argv[:1] == ["worker"] and len(argv) == 6:
        _, dsn, tag, parents, children, flushes = argv
        asyncio.run(_worker(dsn, tag, int(parents), int(children), int(flushes)))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
