"""The upstream connection pool: reuse, limits, waiting, stale connections, sweeping, probing.

Each test runs on both event loops against a tiny server it defines, and counts connections on
the server's side, where the pool can't misreport them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
from tests.support import (
    TinyServer,
    async_wait_until,
    free_port,
    http_response,
    keep_alive_server,
    read_request,
    request_bytes,
)

from tiermux.upstream.errors import ConnectError, ConnectionClosed, ConnectTimeout, UpstreamError
from tiermux.upstream.pool import TICK_SECONDS, ConnectionPool, Origin


def _pool(port: int, **options: float) -> ConnectionPool:
    return ConnectionPool(Origin("http", "127.0.0.1", port), **options)  # type: ignore[arg-type]


async def _get(pool: ConnectionPool, path: str = "/", read_timeout: float = 5.0) -> tuple[int, bytes]:
    response = await pool.request(request_bytes(path), read_timeout)
    try:
        return response.status, await response.read_all()
    finally:
        response.close()


def test_keep_alive_reuses_one_connection(aio) -> None:
    async def scenario() -> None:
        async with TinyServer(keep_alive_server) as server:
            pool = _pool(server.port)
            for i in range(30):
                assert await _get(pool, f"/r{i}") == (200, f"ok:/r{i}".encode())
            assert server.total == 1
            assert server.requests == 30
            assert pool.open_connections == 1
            assert pool.idle_connections == 1
            await pool.aclose()

    aio(scenario())


def test_max_connections_respected_under_concurrency(aio) -> None:
    async def slow(server: TinyServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await read_request(reader)) is not None:
            server.requests += 1
            await asyncio.sleep(0.005)
            writer.write(http_response(b"ok"))
            await writer.drain()

    async def scenario() -> None:
        async with TinyServer(slow) as server:
            pool = _pool(server.port, max_connections=5)
            seen_open: list[int] = []

            async def one(i: int) -> tuple[int, bytes]:
                result = await _get(pool, f"/{i}")
                seen_open.append(pool.open_connections)
                return result

            results = await asyncio.gather(*(one(i) for i in range(50)))
            assert results == [(200, b"ok")] * 50
            assert server.requests == 50
            assert server.peak <= 5
            assert server.total <= 5
            assert max(seen_open) <= 5
            assert pool.open_connections == pool.idle_connections <= 5
            # the waiting requests were served on the connections already open
            assert server.total == server.peak
            await pool.aclose()

    aio(scenario())


def test_a_freed_slot_goes_to_a_waiter(aio) -> None:
    async def held(server: TinyServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await read_request(reader)) is not None:
            server.requests += 1
            await server.state["release"].wait()
            writer.write(http_response(b"done"))
            await writer.drain()

    async def scenario() -> None:
        async with TinyServer(held) as server:
            server.state["release"] = asyncio.Event()
            pool = _pool(server.port, max_connections=1)
            first = asyncio.ensure_future(_get(pool, "/1"))
            second = asyncio.ensure_future(_get(pool, "/2"))
            assert await async_wait_until(lambda: server.requests == 1)
            await asyncio.sleep(0.02)
            assert not second.done()
            assert server.total == 1  # the second request waits instead of connecting
            server.state["release"].set()
            assert await first == (200, b"done")
            assert await second == (200, b"done")
            assert server.total == 1
            await pool.aclose()

    aio(scenario())


def test_cancelled_waiter_does_not_leak_a_slot(aio) -> None:
    async def held(server: TinyServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await read_request(reader)) is not None:
            server.requests += 1
            if server.requests == 1:
                await server.state["release"].wait()
            writer.write(http_response(b"ok"))
            await writer.drain()

    async def scenario() -> None:
        async with TinyServer(held) as server:
            server.state["release"] = asyncio.Event()
            pool = _pool(server.port, max_connections=1)
            first = asyncio.ensure_future(_get(pool))
            assert await async_wait_until(lambda: server.requests == 1)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(_get(pool), 0.05)
            server.state["release"].set()
            assert await first == (200, b"ok")
            assert await asyncio.wait_for(_get(pool), 5) == (200, b"ok")
            assert pool.open_connections == 1
            assert server.total == 1
            await pool.aclose()

    aio(scenario())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_stale_keep_alive_connection_is_retried_once_on_a_fresh_one(aio, how: str) -> None:
    """The server drops a kept-alive connection just as the next request arrives on it."""

    async def one_per_connection(
        server: TinyServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        answered = 0
        while (await read_request(reader)) is not None:
            server.requests += 1
            if answered:
                if how == "close":
                    writer.close()
                else:
                    writer.transport.abort()
                return
            writer.write(http_response(b"fresh"))
            await writer.drain()
            answered += 1

    async def scenario() -> None:
        async with TinyServer(one_per_connection) as server:
            pool = _pool(server.port)
            assert await _get(pool) == (200, b"fresh")
            assert await _get(pool) == (200, b"fresh")  # the retry, invisible to the caller
            assert server.total == 2
            assert server.requests == 3
            assert pool.open_connections == 1
            await pool.aclose()

    aio(scenario())


def test_idle_connection_closed_by_the_server_is_not_reused(aio) -> None:
    async def close_after_answer(
        server: TinyServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if (await read_request(reader)) is not None:
            server.requests += 1
            writer.write(http_response(b"bye"))
            await writer.drain()
            writer.close()

    async def scenario() -> None:
        async with TinyServer(close_after_answer) as server:
            pool = _pool(server.port)
            assert await _get(pool) == (200, b"bye")
            assert await async_wait_until(lambda: pool.idle_connections == 0)
            assert pool.open_connections == 0
            assert await _get(pool) == (200, b"bye")
            assert server.total == 2
            await pool.aclose()

    aio(scenario())


def test_fresh_connection_closed_without_answer_is_not_retried(aio) -> None:
    """A request is only sent again when a *reused* connection turned out to be stale."""

    async def hang_up(server: TinyServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if (await read_request(reader)) is not None:
            server.requests += 1
            writer.close()

    async def scenario() -> None:
        async with TinyServer(hang_up) as server:
            pool = _pool(server.port)
            with pytest.raises(ConnectionClosed) as info:
                await pool.request(request_bytes("/"), 5)
            assert info.value.response_started is False
            assert server.requests == 1
            assert server.total == 1
            assert pool.open_connections == 0
            await pool.aclose()

    aio(scenario())


def test_reused_connection_failing_mid_answer_is_not_retried(aio) -> None:
    async def partial_second(
        server: TinyServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while (await read_request(reader)) is not None:
            server.requests += 1
            if server.requests == 1:
                writer.write(http_response(b"first"))
                await writer.drain()
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Len")
                await writer.drain()
                writer.close()
                return

    async def scenario() -> None:
        async with TinyServer(partial_second) as server:
            pool = _pool(server.port)
            assert await _get(pool) == (200, b"first")
            with pytest.raises(ConnectionClosed) as info:
                await pool.request(request_bytes("/"), 5)
            assert info.value.response_started is True
            assert server.requests == 2  # not sent a third time
            assert server.total == 1
            await pool.aclose()

    aio(scenario())


def test_sweep_closes_only_old_idle_connections(aio) -> None:
    async def scenario() -> None:
        async with TinyServer(keep_alive_server) as server:
            pool = _pool(server.port, idle_timeout=60.0)
            await asyncio.gather(*(_get(pool, f"/{i}") for i in range(3)))
            assert pool.idle_connections == 3
            now = asyncio.get_running_loop().time()
            pool.sweep(now)
            assert pool.idle_connections == 3
            pool.sweep(now + 61.0)
            assert pool.idle_connections == 0
            assert pool.open_connections == 0
            assert await async_wait_until(lambda: server.open == 0)
            await pool.aclose()

    aio(scenario())


def test_idle_connections_are_swept_on_their_own(aio) -> None:
    async def scenario() -> None:
        async with TinyServer(keep_alive_server) as server:
            pool = _pool(server.port, idle_timeout=0.2)
            assert await _get(pool) == (200, b"ok:/")
            assert server.open == 1
            assert await async_wait_until(lambda: server.open == 0, timeout=5)
            assert pool.open_connections == 0
            assert pool.idle_connections == 0
            assert await _get(pool) == (200, b"ok:/")
            assert server.total == 2
            await pool.aclose()

    aio(scenario())


def test_connect_to_closed_port(aio) -> None:
    async def scenario() -> None:
        pool = _pool(free_port())
        with pytest.raises(ConnectError) as info:
            await pool.request(request_bytes("/"), 5)
        assert not isinstance(info.value, ConnectTimeout)
        assert isinstance(info.value, UpstreamError)
        assert pool.open_connections == 0
        await pool.aclose()

    aio(scenario())


def test_connect_timeout(aio) -> None:
    """A listener whose accept queue is full never completes the handshake."""

    async def scenario() -> None:
        listener = socket.socket()
        fillers: list[socket.socket] = []
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
                fillers.append(filler)
            pool = _pool(port, connect_timeout=0.2)
            with pytest.raises(ConnectTimeout):
                await pool.request(request_bytes("/"), 5)
            assert pool.open_connections == 0
            await pool.aclose()
        finally:
            for filler in fillers:
                filler.close()
            listener.close()

    aio(scenario())


def test_probe(aio) -> None:
    async def scenario() -> None:
        async with TinyServer(keep_alive_server) as server:
            pool = _pool(server.port)
            assert await pool.probe() is True
            assert pool.open_connections == 1
            assert await _get(pool) == (200, b"ok:/")
            await pool.aclose()
        dead = _pool(free_port())
        assert await dead.probe() is False
        assert dead.open_connections == 0
        await dead.aclose()

    aio(scenario())


def test_aclose_closes_idle_connections(aio) -> None:
    async def scenario() -> None:
        async with TinyServer(keep_alive_server) as server:
            pool = _pool(server.port)
            await asyncio.gather(*(_get(pool) for _ in range(4)))
            assert server.open == 4
            await pool.aclose()
            assert pool.idle_connections == 0
            assert await async_wait_until(lambda: server.open == 0)

    aio(scenario())


def test_repr_shows_state(aio) -> None:
    async def scenario() -> None:
        async with TinyServer(keep_alive_server) as server:
            pool = _pool(server.port, max_connections=7)
            await _get(pool)
            text = repr(pool)
            assert f"127.0.0.1:{server.port}" in text
            assert "open=1" in text and "idle=1" in text and "max=7" in text
            await pool.aclose()

    aio(scenario())


def test_probe_keeps_its_connection_for_the_next_request(aio) -> None:
    async def scenario() -> None:
        async with TinyServer(keep_alive_server) as server:
            pool = _pool(server.port, idle_timeout=60.0)
            assert await pool.probe() is True
            assert pool.idle_connections == 1
            await asyncio.sleep(3 * TICK_SECONDS)  # a few housekeeping ticks: nothing is 60 s old
            assert pool.idle_connections == 1
            assert await _get(pool) == (200, b"ok:/")
            assert server.total == 1
            await pool.aclose()

    aio(scenario())
