"""A PostgreSQL wire-protocol proxy that counts round trips and adds latency.

Clients connect to the proxy instead of the server. The proxy reads the client-to-server stream
message by message (type byte + length; it never buffers message bodies) and counts:

* ``round_trips``: Sync (``S``), simple Query (``Q``) and Flush (``H``) messages. Each one makes
  the server answer and the client wait for it, so this is the number of network round trips a
  client pays, however many Parse/Bind/Execute messages it pipelines in between. Flush counts
  because asyncpg prepares a statement with Parse/Describe/Flush and waits for the description
  before it sends Bind/Execute/Sync: a statement that is not yet in its cache costs two round
  trips (``SELECT 1`` on a new connection: 2; warm: 1). A client that sent Flush without waiting
  (libpq pipeline mode) would be over-counted; asyncpg never does.
* ``messages``: a ``Counter`` of every client message type (``P``, ``B``, ``E``, ``S``, ``Q``,
  ``d``, ``c``, ``X``...).

Messages are counted before they are forwarded, so once a client's ``await`` has returned, every
message it sent is counted: the numbers are exact, not eventually consistent.

To keep the stream parseable the proxy answers SSLRequest and GSSENCRequest itself with ``N``
(the client then continues in plaintext, as ``sslmode=prefer`` allows). CancelRequest connections
are forwarded untouched and uncounted. Connections whose startup message sets
``application_name=async_batch_rtt_probe`` (what `measure_rtt` uses) are not counted either.

With ``delay_ms=D``, every chunk in each direction is delivered D ms after the proxy received it,
in order, so a request/response round trip costs about 2 x D more. The TCP handshake to the
proxy is not delayed. The default event loop wakes up to ~1 ms late from short sleeps (epoll
timeouts are whole milliseconds), so the proxy sleeps until 1.5 ms before each deadline and then
spins with ``asyncio.sleep(0)``; measured overshoot is a few microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

__all__ = [
    "PROBE_APPLICATION_NAME",
    "ROUND_TRIP_MESSAGES",
    "ProtocolError",
    "ThreadedWireProxy",
    "TrafficWindow",
    "WireProxy",
]

PROBE_APPLICATION_NAME = "async_batch_rtt_probe"
"""Connections with this application_name are proxied but not counted."""

ROUND_TRIP_MESSAGES = frozenset({"S", "Q", "H"})
"""Client message types that each cost one round trip: Sync, simple Query and Flush."""

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_MAX_STARTUP_LENGTH = 10_000
_SPIN_S = 0.0015
_CHUNK = 256 * 1024
_HEADER = struct.Struct("!BI")
_STARTUP_HEADER = struct.Struct("!II")


class ProtocolError(Exception):
    """The client sent something that is not the PostgreSQL v3 protocol."""


class _MessageScanner:
    """Finds message boundaries in the client-to-server stream (after the startup message).

    Keeps only a partial 5-byte header between chunks and skips bodies by length, so a large
    COPY costs no buffering.
    """

    __slots__ = ("_header", "_skip")

    def __init__(self) -> None:
        self._header = bytearray()
        self._skip = 0

    def feed(self, data: bytes) -> list[str]:
        """Return the types of the messages whose header completes in ``data``."""
        types: list[str] = []
        pos = 0
        end = len(data)
        unpack = _HEADER.unpack_from
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                pos += step
                self._skip -= step
                continue
            if not self._header and end - pos >= 5:
                code, length = unpack(data, pos)
                pos += 5
            else:
                need = 5 - len(self._header)
                self._header += data[pos : pos + need]
                pos += min(need, end - pos)
                if len(self._header) < 5:
                    break
                code, length = unpack(self._header, 0)
                self._header.clear()
            if length < 4:
                raise ProtocolError(f"message {chr(code)!r} with impossible length {length}")
            types.append(chr(code))
            self._skip = length - 4
        return types


class _Stats:
    """Counters shared by all connections of one proxy; safe to read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.round_trips = 0
        self.connections = 0
        self._messages: Counter[str] = Counter()

    def add(self, types: list[str]) -> None:
        if not types:
            return
        trips = sum(1 for t in types if t in ROUND_TRIP_MESSAGES)
        with self._lock:
            self._messages.update(types)
            self.round_trips += trips

    def add_connection(self) -> None:
        with self._lock:
            self.connections += 1

    def snapshot(self) -> tuple[int, Counter[str]]:
        with self._lock:
            return self.round_trips, Counter(self._messages)

    def reset(self) -> None:
        with self._lock:
            self.round_trips = 0
            self.connections = 0
            self._messages.clear()


class TrafficWindow:
    """The traffic of one ``with proxy.count() as window:`` block.

    Inside the block the properties give the traffic so far; after it, the block's total.
    """

    def __init__(self, stats: _Stats) -> None:
        self._stats = stats
        self._start = stats.snapshot()
        self._end: tuple[int, Counter[str]] | None = None

    def stop(self) -> None:
        """Freeze the totals (done when the ``with`` block ends)."""
        if self._end is None:
            self._end = self._stats.snapshot()

    def _now(self) -> tuple[int, Counter[str]]:
        return self._end if self._end is not None else self._stats.snapshot()

    @property
    def round_trips(self) -> int:
        return self._now()[0] - self._start[0]

    @property
    def messages(self) -> Counter[str]:
        delta = Counter(self._now()[1])
        delta.subtract(self._start[1])
        return +delta  # drop zero counts

    def __repr__(self) -> str:
        return f"TrafficWindow(round_trips={self.round_trips}, messages={dict(self.messages)})"


class _CountingMixin:
    """Counter access shared by `WireProxy` and `ThreadedWireProxy`."""

    _stats: _Stats

    @property
    def round_trips(self) -> int:
        """Sync + Query messages sent by counted clients since start or `reset`."""
        return self._stats.round_trips

    @property
    def messages(self) -> Counter[str]:
        """A copy of the per-type count of client messages since start or `reset`."""
        return self._stats.snapshot()[1]

    @property
    def connections(self) -> int:
        """Counted client connections accepted since start or `reset`."""
        return self._stats.connections

    def reset(self) -> None:
        """Set all counters to zero."""
        self._stats.reset()

    @contextlib.contextmanager
    def count(self) -> Iterator[TrafficWindow]:
        """Count the traffic of a block: ``with proxy.count() as w: ...; w.round_trips``."""
        window = TrafficWindow(self._stats)
        try:
            yield window
        finally:
            window.stop()


def _split_dsn_target(dsn: str) -> tuple[str | None, int | None, str | None]:
    """(host, port, unix_socket) that a DSN points at."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    host = parts.hostname or query.get("host") or "localhost"
    port_text = query.get("port")
    port = parts.port or (int(port_text) if port_text else 5432)
    if host.startswith("/"):
        return None, None, f"{host}/.s.PGSQL.{port}"
    return host, port, None


def _rewrite_dsn(dsn: str, host: str, port: int) -> str:
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port", "hostaddr")]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))


async def _sleep_until(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        if remaining > _SPIN_S:
            await asyncio.sleep(remaining - _SPIN_S)
        else:
            await asyncio.sleep(0)


async def _measure_rtt(dsn: str, n: int) -> float:
    """Median wall time in ms of ``SELECT 1`` on a warm asyncpg connection to ``dsn``."""
    conn = await asyncpg.connect(dsn, server_settings={"application_name": PROBE_APPLICATION_NAME})
    try:
        await conn.fetchval("SELECT 1")  # prepare once; the rest are one round trip each
        samples = []
        for _ in range(max(1, n)):
            t0 = time.perf_counter()
            await conn.fetchval("SELECT 1")
            samples.append(time.perf_counter() - t0)
    finally:
        await conn.close()
    return statistics.median(samples) * 1000.0


class WireProxy(_CountingMixin):
    """An asyncio TCP proxy in front of a PostgreSQL server, on 127.0.0.1 and a free port.

    ``async with WireProxy("127.0.0.1", 5432, delay_ms=1.5) as proxy:`` or
    ``WireProxy(unix_socket="/run/postgresql/.s.PGSQL.5432")`` or ``WireProxy.for_dsn(dsn)``.
    It runs on the event loop that starts it; see `ThreadedWireProxy` for one with its own thread.
    """

    def __init__(
        self,
        upstream_host: str | None = None,
        upstream_port: int | None = None,
        delay_ms: float = 0.0,
        *,
        unix_socket: str | None = None,
        dsn: str | None = None,
        stats: _Stats | None = None,
    ) -> None:
        if unix_socket is None and (upstream_host is None or upstream_port is None):
            raise ValueError("give upstream_host and upstream_port, or unix_socket")
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.unix_socket = unix_socket
        self.delay_ms = float(delay_ms)
        self.dsn = dsn
        """A DSN of the upstream server (for `measure_rtt`), if known."""
        self.host = "127.0.0.1"
        self.port = 0
        self._stats = stats if stats is not None else _Stats()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._last_startup: dict[str, str] = {}
        self._closing = False

    @classmethod
    def for_dsn(cls, dsn: str, delay_ms: float = 0.0) -> WireProxy:
        """A proxy in front of the server that ``dsn`` points at (TCP or Unix socket)."""
        host, port, unix_socket = _split_dsn_target(dsn)
        return cls(host, port, delay_ms, unix_socket=unix_socket, dsn=dsn)

    def dsn_for(self, dsn: str) -> str:
        """``dsn`` with its host and port replaced by the proxy's."""
        return _rewrite_dsn(dsn, self.host, self.port)

    @property
    def configured_rtt_ms(self) -> float:
        """The round-trip latency the delay adds: 2 x ``delay_ms``."""
        return 2.0 * self.delay_ms

    async def measure_rtt(self, n: int = 20, dsn: str | None = None) -> float:
        """Median ms of a ``SELECT 1`` round trip through the proxy, on a dedicated connection.

        Uses ``dsn`` (rewritten to go through the proxy), else the DSN the proxy was made for,
        else the user and database of the last client that connected. The probe's own traffic
        is not counted.
        """
        return await _measure_rtt(self.dsn_for(_probe_dsn(self, dsn)), n)

    @property
    def last_startup_params(self) -> dict[str, str]:
        """Startup parameters (user, database, ...) of the last counted client that connected."""
        return dict(self._last_startup)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> WireProxy:
        if self._server is not None:
            return self
        self._closing = False
        self._server = await asyncio.start_server(self._on_client, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._closing = True
        for writer in list(self._writers):
            writer.close()
        # Closed transports wake the pumps with EOF, so handlers end by themselves; cancel only
        # stragglers (a cancelled handler task makes asyncio's stream callback log an error).
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)

    async def __aenter__(self) -> WireProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- connections ----------------------------------------------------------------------

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.unix_socket is not None:
            return await asyncio.open_unix_connection(self.unix_socket, limit=_CHUNK)
        assert self.upstream_host is not None
        assert self.upstream_port is not None
        return await asyncio.open_connection(self.upstream_host, self.upstream_port, limit=_CHUNK)

    async def _on_client(
        self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(cwriter)
        uwriter: asyncio.StreamWriter | None = None
        try:
            startup, code = await self._read_startup(creader, cwriter)
            ureader, uwriter = await self._open_upstream()
            self._writers.add(uwriter)
            counted = False
            scanner: _MessageScanner | None = None
            if code != _CANCEL_REQUEST:
                params = _startup_params(startup)
                counted = params.get("application_name") != PROBE_APPLICATION_NAME
                if counted:
                    self._last_startup = params
                    self._stats.add_connection()
                    scanner = _MessageScanner()
            up = asyncio.ensure_future(self._pump(creader, uwriter, scanner, first=startup))
            down = asyncio.ensure_future(self._pump(ureader, cwriter, None))
            try:
                done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    t.result()
            finally:
                for t in (up, down):
                    t.cancel()
                await asyncio.gather(up, down, return_exceptions=True)
        except (asyncio.IncompleteReadError, ConnectionError, ProtocolError, OSError):
            pass
        except asyncio.CancelledError:
            if not self._closing:
                raise
        finally:
            for w in (cwriter, uwriter):
                if w is not None:
                    self._writers.discard(w)
                    w.close()
            self._tasks.discard(task)

    async def _read_startup(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[bytes, int]:
        """Read the startup (or cancel) packet, answering encryption requests with 'N'."""
        loop = asyncio.get_running_loop()
        while True:
            head = await reader.readexactly(8)
            received = loop.time()
            length, code = _STARTUP_HEADER.unpack(head)
            if length < 8 or length > _MAX_STARTUP_LENGTH:
                raise ProtocolError(f"bad startup packet length {length}")
            if code in (_SSL_REQUEST, _GSSENC_REQUEST) and length == 8:
                # Answered here, as the server would after a round trip: no encryption.
                if self.delay_ms:
                    await _sleep_until(loop, received + 2 * self.delay_ms / 1000.0)
                writer.write(b"N")
                await writer.drain()
                continue
            return head + await reader.readexactly(length - 8), code

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        scanner: _MessageScanner | None,
        first: bytes = b"",
    ) -> None:
        delay = self.delay_ms / 1000.0
        loop = asyncio.get_running_loop()
        stats = self._stats
        if delay <= 0:
            if first:
                writer.write(first)
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if scanner is not None:
                    stats.add(scanner.feed(data))  # count before forwarding
                writer.write(data)
                await writer.drain()
        else:
            queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
            deliver = asyncio.ensure_future(self._deliver(loop, queue, writer))
            try:
                if first:
                    queue.put_nowait((loop.time() + delay, first))
                while True:
                    data = await reader.read(_CHUNK)
                    if not data:
                        break
                    received = loop.time()
                    if scanner is not None:
                        stats.add(scanner.feed(data))
                    queue.put_nowait((received + delay, data))
                    if deliver.done():
                        break
                queue.put_nowait(None)
                await deliver
            finally:
                deliver.cancel()
        if writer.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()

    @staticmethod
    async def _deliver(
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter,
    ) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            deadline, data = item
            await _sleep_until(loop, deadline)
            writer.write(data)
            await writer.drain()


def _probe_dsn(proxy: WireProxy, dsn: str | None) -> str:
    if dsn is not None:
        return dsn
    if proxy.dsn is not None:
        return proxy.dsn
    params = proxy.last_startup_params
    user = params.get("user")
    if user:
        database = params.get("database", user)
        return f"postgresql://{user}@{proxy.host}:{proxy.port}/{database}"
    raise ValueError("measure_rtt needs a DSN: pass dsn=, or build the proxy with for_dsn()")


def _startup_params(packet: bytes) -> dict[str, str]:
    fields = packet[8:].split(b"\x00")
    params: dict[str, str] = {}
    for key, value in zip(fields[0::2], fields[1::2], strict=False):
        if not key:
            break
        params[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return params


class ThreadedWireProxy(_CountingMixin):
    """A `WireProxy` running on its own event loop in a daemon thread.

    Use it when the proxy must not share the event loop it measures: the delay's final spin and
    the proxy's parsing then run off the benchmark's loop. (They still share the GIL.) Works as
    ``with ThreadedWireProxy(...) as proxy:`` and ``async with``; counters are thread-safe.
    """

    def __init__(
        self,
        upstream_host: str | None = None,
        upstream_port: int | None = None,
        delay_ms: float = 0.0,
        *,
        unix_socket: str | None = None,
        dsn: str | None = None,
    ) -> None:
        self._stats = _Stats()
        self._proxy = WireProxy(
            upstream_host,
            upstream_port,
            delay_ms,
            unix_socket=unix_socket,
            dsn=dsn,
            stats=self._stats,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def for_dsn(cls, dsn: str, delay_ms: float = 0.0) -> ThreadedWireProxy:
        host, port, unix_socket = _split_dsn_target(dsn)
        return cls(host, port, delay_ms, unix_socket=unix_socket, dsn=dsn)

    @property
    def host(self) -> str:
        return self._proxy.host

    @property
    def port(self) -> int:
        return self._proxy.port

    @property
    def delay_ms(self) -> float:
        return self._proxy.delay_ms

    @property
    def configured_rtt_ms(self) -> float:
        return self._proxy.configured_rtt_ms

    def dsn_for(self, dsn: str) -> str:
        return self._proxy.dsn_for(dsn)

    async def measure_rtt(self, n: int = 20, dsn: str | None = None) -> float:
        """As `WireProxy.measure_rtt`; the probe client runs on the caller's event loop."""
        return await _measure_rtt(self.dsn_for(_probe_dsn(self._proxy, dsn)), n)

    def start(self) -> ThreadedWireProxy:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="async-batch-proxy", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._proxy.start(), loop).result(30)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._proxy.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()

    def __enter__(self) -> ThreadedWireProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> ThreadedWireProxy:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)
