"""async_batch.testing.WireProxy: exact round-trip counts and added latency."""

from __future__ import annotations

import asyncio
import itertools
import os
import struct
from collections import Counter

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from async_batch.testing import (
    PostgresServer,
    ProtocolError,
    ThreadedWireProxy,
    WireProxy,
    sqlalchemy_url,
)
from async_batch.testing._proxy import _MessageScanner, _rewrite_dsn

# -- counting with asyncpg ---------------------------------------------------------------------


async def test_connect_costs_no_counted_round_trip(proxy: WireProxy, database_dsn: str) -> None:
    conn = await asyncpg.connect(proxy.dsn_for(database_dsn))
    try:
        assert proxy.round_trips == 0
        assert proxy.messages == Counter()
        assert proxy.connections == 1
    finally:
        await conn.close()
    assert proxy.messages == Counter({"X": 1})  # Terminate


async def test_select_1_asyncpg(proxy: WireProxy, database_dsn: str) -> None:
    conn = await asyncpg.connect(proxy.dsn_for(database_dsn))
    try:
        # Not yet prepared: Parse/Describe/Flush, wait, then Bind/Execute/Sync: 2 round trips.
        with proxy.count() as cold:
            assert await conn.fetchval("SELECT 1") == 1
        assert cold.round_trips == 2
        assert cold.messages == Counter({"P": 1, "D": 1, "H": 1, "B": 1, "E": 1, "S": 1})
        # Warm (asyncpg's statement cache): 1.
        with proxy.count() as warm:
            assert await conn.fetchval("SELECT 1") == 1
        assert warm.round_trips == 1
        assert warm.messages == Counter({"B": 1, "E": 1, "S": 1})
        # execute() without arguments is a simple Query: 1.
        with proxy.count() as simple:
            await conn.execute("SELECT 1")
        assert simple.round_trips == 1
        assert simple.messages == Counter({"Q": 1})
    finally:
        await conn.close()


async def test_executemany_is_one_round_trip(proxy: WireProxy, database_dsn: str) -> None:
    conn = await asyncpg.connect(proxy.dsn_for(database_dsn))
    try:
        await conn.execute("CREATE TABLE t (a int, b text)")
        rows = [(i, f"row {i}") for i in range(1000)]
        insert = "INSERT INTO t VALUES ($1, $2)"
        with proxy.count() as cold:
            await conn.executemany(insert, rows)
        assert cold.round_trips == 2  # prepare + the pipelined batch
        with proxy.count() as warm:
            await conn.executemany(insert, rows)
        assert warm.round_trips == 1
        assert warm.messages == Counter({"B": 1000, "E": 1000, "S": 1})
        assert await conn.fetchval("SELECT count(*) FROM t") == 2000
    finally:
        await conn.close()


async def test_copy_records_round_trips(proxy: WireProxy, database_dsn: str) -> None:
    conn = await asyncpg.connect(proxy.dsn_for(database_dsn))
    try:
        await conn.execute("CREATE TABLE t (a int, b text)")
        rows = [(i, f"row {i}") for i in range(1000)]
        # asyncpg first introspects the columns (Parse/Describe/Flush), then sends COPY as a
        # simple Query followed by CopyData and CopyDone.
        with proxy.count() as cold:
            await conn.copy_records_to_table("t", records=rows)
        assert cold.round_trips == 2
        assert cold.messages["H"] == 1
        assert cold.messages["Q"] == 1
        assert cold.messages["c"] == 1
        assert cold.messages["d"] >= 1
        # The introspection statement is cached too: 1.
        with proxy.count() as warm:
            await conn.copy_records_to_table("t", records=rows)
        assert warm.round_trips == 1
        assert set(warm.messages) == {"Q", "d", "c"}
        assert await conn.fetchval("SELECT count(*) FROM t") == 2000
    finally:
        await conn.close()


async def test_asyncpg_transaction(proxy: WireProxy, database_dsn: str) -> None:
    conn = await asyncpg.connect(proxy.dsn_for(database_dsn))
    try:
        await conn.fetchval("SELECT 1")
        with proxy.count() as w:
            async with conn.transaction():
                await conn.fetchval("SELECT 1")
        assert w.round_trips == 3  # BEGIN; SELECT; COMMIT
        assert w.messages == Counter({"Q": 2, "B": 1, "E": 1, "S": 1})
    finally:
        await conn.close()


# -- counting with SQLAlchemy ------------------------------------------------------------------


async def test_sqlalchemy_round_trips(engine: AsyncEngine, proxy: WireProxy) -> None:
    select_1 = text("SELECT 1")
    async with engine.connect() as conn:  # first connect: dialect initialization, prepares
        await conn.execute(select_1)

    # Warm pooled connection: checkout, execute, return to pool.
    with proxy.count() as w:
        async with engine.connect() as conn:
            assert (await conn.execute(select_1)).scalar_one() == 1
    assert w.round_trips == 3  # BEGIN (sent lazily by the adapter), SELECT, ROLLBACK on return
    assert w.messages == Counter({"Q": 2, "B": 1, "E": 1, "S": 1})

    async with engine.connect() as conn:
        await conn.execute(select_1)  # transaction now open on the server
        with proxy.count() as w:
            await conn.execute(select_1)
        assert w.round_trips == 1
        assert w.messages == Counter({"B": 1, "E": 1, "S": 1})
        with proxy.count() as w:
            await conn.commit()
        assert w.round_trips == 1
        assert w.messages == Counter({"Q": 1})

    with proxy.count() as w:
        async with engine.begin() as conn:
            await conn.execute(select_1)
    assert w.round_trips == 3  # BEGIN, SELECT, COMMIT

    with proxy.count() as w:
        async with engine.begin():
            pass
    assert w.round_trips == 0  # nothing executed: the adapter never sent BEGIN


async def test_count_window_reset_and_totals(proxy: WireProxy, database_dsn: str) -> None:
    conn = await asyncpg.connect(proxy.dsn_for(database_dsn))
    try:
        await conn.execute("SELECT 1")
        assert proxy.round_trips == 1
        with proxy.count() as w:
            await conn.execute("SELECT 1")
            assert w.round_trips == 1  # live inside the block
            await conn.execute("SELECT 1")
        await conn.execute("SELECT 1")
        assert w.round_trips == 2  # frozen after the block
        assert w.messages == Counter({"Q": 2})
        assert proxy.round_trips == 4
        proxy.reset()
        assert proxy.round_trips == 0
        assert proxy.messages == Counter()
        await conn.execute("SELECT 1")
        assert proxy.round_trips == 1
    finally:
        await conn.close()


async def test_64_concurrent_sessions_are_counted_exactly(
    proxy: WireProxy, database_dsn: str
) -> None:
    conns = await asyncio.gather(*(asyncpg.connect(proxy.dsn_for(database_dsn)) for _ in range(64)))
    try:
        await asyncio.gather(*(c.fetchval("SELECT 1") for c in conns))  # prepare everywhere
        with proxy.count() as w:
            results = await asyncio.gather(
                *(c.fetchval("SELECT $1::int", i) for i, c in enumerate(conns))
            )
        assert results == list(range(64))
        assert w.round_trips == 64 * 2  # new statement text: prepare + execute each
        with proxy.count() as w:
            await asyncio.gather(*(c.fetchval("SELECT 1") for c in conns))
        assert w.round_trips == 64
        assert proxy.connections == 64
    finally:
        await asyncio.gather(*(c.close() for c in conns))


# -- protocol handling -------------------------------------------------------------------------


async def _raw_startup_request(proxy: WireProxy, code: int) -> bytes:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        writer.write(struct.pack("!II", 8, code))
        await writer.drain()
        return await asyncio.wait_for(reader.read(1), 5)
    finally:
        writer.close()


async def test_ssl_and_gssenc_requests_are_refused_by_the_proxy(
    proxy: WireProxy, database_dsn: str
) -> None:
    assert await _raw_startup_request(proxy, 80877103) == b"N"  # SSLRequest
    assert await _raw_startup_request(proxy, 80877104) == b"N"  # GSSENCRequest
    # sslmode=prefer (asyncpg's default) falls back to plaintext and is counted normally.
    conn = await asyncpg.connect(proxy.dsn_for(database_dsn), ssl="prefer")
    try:
        await conn.execute("SELECT 1")
        assert proxy.round_trips == 1
    finally:
        await conn.close()


async def test_cancel_request_is_forwarded(proxy: WireProxy, database_dsn: str) -> None:
    conn = await asyncpg.connect(proxy.dsn_for(database_dsn))
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetchval("SELECT pg_sleep(30)", timeout=0.3)
        assert loop.time() - t0 < 10
        assert await conn.fetchval("SELECT 42") == 42  # cancelled, connection still usable
        assert proxy.connections == 1  # the cancel connection is not a counted client
    finally:
        await conn.close()


async def test_garbage_closes_only_that_connection(proxy: WireProxy, database_dsn: str) -> None:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(b"\x00\x00\x00\x02garbage")  # impossible startup length
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    conn = await asyncpg.connect(proxy.dsn_for(database_dsn))
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()


async def test_close_with_open_connections(database_dsn: str) -> None:
    proxy = await WireProxy.for_dsn(database_dsn).start()
    conn = await asyncpg.connect(proxy.dsn_for(database_dsn))
    await asyncio.wait_for(proxy.close(), 10)
    with pytest.raises((ConnectionError, asyncpg.InterfaceError, asyncpg.PostgresError)):
        await conn.fetchval("SELECT 1")
    conn.terminate()


async def test_unix_socket_upstream(pg: PostgresServer, database_dsn: str) -> None:
    if pg.unix_socket is None or not await asyncio.to_thread(os.path.exists, pg.unix_socket):
        pytest.skip("the server has no Unix socket reachable from here")
    async with WireProxy(unix_socket=pg.unix_socket) as proxy:
        conn = await asyncpg.connect(proxy.dsn_for(database_dsn))
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
        assert proxy.round_trips == 2
    socket_dir, _, name = pg.unix_socket.rpartition("/")
    port = name.rsplit(".", 1)[1]
    socket_dsn = f"postgresql://{pg.user}@/{database_dsn.rsplit('/', 1)[1]}"
    socket_dsn += f"?host={socket_dir}&port={port}"
    proxy = WireProxy.for_dsn(socket_dsn)
    assert proxy.unix_socket == pg.unix_socket


def test_dsn_rewriting() -> None:
    assert (
        _rewrite_dsn("postgresql://u:p@db.example:5433/app?sslmode=prefer", "127.0.0.1", 6000)
        == "postgresql://u:p@127.0.0.1:6000/app?sslmode=prefer"
    )
    assert (
        _rewrite_dsn("postgresql://postgres@/app?host=%2Ftmp%2Fs&port=5432", "127.0.0.1", 6000)
        == "postgresql://postgres@127.0.0.1:6000/app"
    )
    assert _rewrite_dsn("postgresql:///app", "127.0.0.1", 6000) == "postgresql://127.0.0.1:6000/app"
    proxy = WireProxy.for_dsn("postgresql://u@[::1]:5499/x")
    assert (proxy.upstream_host, proxy.upstream_port, proxy.unix_socket) == ("::1", 5499, None)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="upstream_host"):
        WireProxy()
    with pytest.raises(ValueError, match="delay_ms"):
        WireProxy("127.0.0.1", 5432, delay_ms=-1)


# -- the message scanner -----------------------------------------------------------------------


def _message(code: str, body: bytes) -> bytes:
    return code.encode() + struct.pack("!I", len(body) + 4) + body


_messages = st.lists(
    st.tuples(st.sampled_from("PBEDSHQdcXCf"), st.binary(max_size=40)), max_size=30
)


@settings(max_examples=300, deadline=None)
@given(messages=_messages, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_scanner_finds_every_message_however_the_stream_is_chunked(
    messages: list[tuple[str, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(_message(code, body) for code, body in messages)
    bounds = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
    scanner = _MessageScanner()
    found: list[str] = []
    for start, end in itertools.pairwise(bounds):
        found += scanner.feed(stream[start:end])
    assert found == [code for code, _ in messages]


def test_scanner_rejects_impossible_lengths() -> None:
    with pytest.raises(ProtocolError):
        _MessageScanner().feed(b"Q\x00\x00\x00\x03")


# -- latency -----------------------------------------------------------------------------------


async def test_measured_rtt(database_dsn: str) -> None:
    async with WireProxy.for_dsn(database_dsn) as direct:
        rtt0 = await direct.measure_rtt(n=30)
        assert direct.round_trips == 0  # the probe connection is not counted
        assert direct.connections == 0
    async with WireProxy.for_dsn(database_dsn, delay_ms=3.0) as delayed:
        rtt3 = await delayed.measure_rtt(n=30)
    print(f"\nproxy RTT: delay 0 -> {rtt0:.2f} ms; delay 3 ms per direction -> {rtt3:.2f} ms")
    assert rtt0 < 50  # sanity only: the machine is shared and noisy
    assert rtt3 >= 5.5  # never less than the configured 2 x 3 ms


async def test_threaded_proxy(database_dsn: str) -> None:
    async with ThreadedWireProxy.for_dsn(database_dsn, delay_ms=3.0) as proxy:
        assert proxy.configured_rtt_ms == 6.0
        conn = await asyncpg.connect(proxy.dsn_for(database_dsn))
        try:
            await conn.fetchval("SELECT 1")
            with proxy.count() as w:
                for _ in range(5):
                    await conn.fetchval("SELECT 1")
            assert w.round_trips == 5
        finally:
            await conn.close()
        rtt = await proxy.measure_rtt(n=20)
        print(f"\nthreaded proxy, delay 3 ms per direction: RTT {rtt:.2f} ms")
        assert rtt >= 5.5
        assert proxy.round_trips == 7  # 2 for the first (cold) SELECT 1, then 5


def test_threaded_proxy_from_sync_code(database_dsn: str) -> None:
    with ThreadedWireProxy.for_dsn(database_dsn) as proxy:

        async def work() -> int:
            conn = await asyncpg.connect(proxy.dsn_for(database_dsn))
            try:
                return int(await conn.fetchval("SELECT 7"))
            finally:
                await conn.close()

        assert asyncio.run(work()) == 7
        assert proxy.round_trips == 2
        assert proxy.connections == 1


async def test_delayed_stream_keeps_order_and_content(database_dsn: str) -> None:
    """Big pipelined writes through a delaying proxy arrive intact and in order."""
    async with WireProxy.for_dsn(database_dsn, delay_ms=1.0) as proxy:
        conn = await asyncpg.connect(proxy.dsn_for(database_dsn))
        try:
            await conn.execute("CREATE TABLE t (a int, b text)")
            rows = [(i, "x" * (i % 200)) for i in range(20_000)]
            await conn.copy_records_to_table("t", records=rows)
            await conn.executemany("INSERT INTO t VALUES ($1, $2)", rows[:5000])
            total, length = await conn.fetchrow("SELECT sum(a), sum(length(b)) FROM t")
            assert total == sum(a for a, _ in rows) + sum(a for a, _ in rows[:5000])
            assert length == sum(len(b) for _, b in rows) + sum(len(b) for _, b in rows[:5000])
        finally:
            await conn.close()


async def test_engine_fixture_goes_through_the_proxy(
    engine: AsyncEngine, proxy: WireProxy, database_dsn: str
) -> None:
    assert engine.url.render_as_string(hide_password=False) == sqlalchemy_url(
        proxy.dsn_for(database_dsn)
    )
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    assert proxy.round_trips > 0
    assert proxy.connections == 1
