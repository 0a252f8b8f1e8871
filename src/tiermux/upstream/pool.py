"""A keep-alive connection pool for one backend origin.

Idle connections are kept in a stack (the most recently used is the warmest and least likely to
have been closed by the server); at most ``max_connections`` are open at once and requests beyond
that wait in FIFO order for one to be freed. A connection freed while someone waits is handed over
directly.

Time is kept per tick, not per request: while the pool has connections, a tick every
``TICK_SECONDS`` fails answers whose backend has been silent past the read timeout and closes idle
connections unused for ``idle_timeout``. Arming and cancelling a timer for every request would cost
more than the request's whole bookkeeping.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from tiermux._speedups import h1client
from tiermux.upstream.errors import ConnectError, ConnectionClosed, ConnectTimeout, UpstreamError

__all__ = ["TICK_SECONDS", "ConnectionPool", "Origin"]

TICK_SECONDS = 0.1


class Origin:
    """Where a backend lives: scheme, host and port, and the TLS context for https."""

    __slots__ = ("host", "port", "scheme", "server_hostname", "ssl")

    def __init__(
        self, scheme: str, host: str, port: int, *, verify_tls: bool = True, ca_file: str | None = None
    ) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.ssl: ssl.SSLContext | None = None
        self.server_hostname: str | None = None
        if scheme == "https":
            context = ssl.create_default_context(cafile=ca_file)
            if not verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["http/1.1"])
            self.ssl = context
            self.server_hostname = host

    def __repr__(self) -> str:
        return f"<Origin {self.scheme}://{self.host}:{self.port}>"


class ConnectionPool:
    """Connections to one origin, reused across requests."""

    def __init__(
        self,
        origin: Origin,
        *,
        max_connections: int = 256,
        idle_timeout: float = 60.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.origin = origin
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self._idle: list[h1client.Connection] = []
        self._connections: set[h1client.Connection] = set()
        self._ticker: asyncio.TimerHandle | None = None
        self._open = 0  # connected, connecting, or busy: everything that counts against the limit
        self._waiters: deque[asyncio.Future[h1client.Connection | None]] = deque()
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<ConnectionPool {self.origin.host}:{self.origin.port} open={self._open} "
            f"idle={len(self._idle)} waiting={len(self._waiters)} max={self.max_connections}>"
        )

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def request(self, data: bytes, read_timeout: float) -> h1client.Response:
        """Send one serialised request and return its answer once the headers are in.

        A kept-alive connection that the server closed while we weren't looking fails before any
        answer byte; that request is sent again once, on a fresh connection, as httpcore and
        aiohttp do. Any other failure is the caller's to handle (failover, error to the client).
        """
        conn = self._pop_idle() or await self.acquire()
        try:
            response = conn.send(data, read_timeout)
        except ConnectionClosed:  # closed before a byte was written: once more, on a new one
            return await self._exchange(await self._connect(), data, read_timeout)
        try:
            await response.start()
        except ConnectionClosed as exc:
            response.close()
            if conn.requests > 1 and not exc.response_started:
                return await self._exchange(await self._connect(), data, read_timeout)
            raise
        except BaseException:
            response.close()
            raise
        return response

    @staticmethod
    async def _exchange(conn: h1client.Connection, data: bytes, read_timeout: float) -> h1client.Response:
        response = conn.send(data, read_timeout)
        try:
            await response.start()
        except BaseException:
            response.close()
            raise
        return response

    def _pop_idle(self) -> h1client.Connection | None:
        """The warmest idle connection, without awaiting anything (the hot path's usual case)."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def acquire(self) -> h1client.Connection:
        """A connection ready for one request: idle, new, or the next one freed."""
        conn = self._pop_idle()
        if conn is not None:
            return conn
        if self._open < self.max_connections:
            return await self._connect()
        woken = False
        while True:
            waiter: asyncio.Future[h1client.Connection | None] = asyncio.get_running_loop().create_future()
            if woken:  # woken without a connection and beaten to the slot: keep our place in line
                self._waiters.appendleft(waiter)
            else:
                self._waiters.append(waiter)
            woken = True
            try:
                handed = await waiter
            except asyncio.CancelledError:
                late = waiter.result() if waiter.done() and not waiter.cancelled() else None
                if late is not None:
                    self._release(late)  # handed over just as we gave up: pass it on
                raise
            if handed is not None and not handed.closed:
                return handed
            if self._open < self.max_connections:  # a slot was freed: open a connection in it
                return await self._connect()

    async def _connect(self) -> h1client.Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        self._open += 1
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: h1client.Connection(self, loop),
                    origin.host,
                    origin.port,
                    ssl=origin.ssl,
                    server_hostname=origin.server_hostname,
                ),
                self.connect_timeout,
            )
        except BaseException as exc:
            self._open -= 1
            self._wake_waiter(None)
            if isinstance(exc, asyncio.TimeoutError):
                raise ConnectTimeout(
                    f"no connection to {origin.host}:{origin.port} within {self.connect_timeout:g}s"
                ) from None
            if isinstance(exc, OSError):
                raise ConnectError(f"cannot connect to {origin.host}:{origin.port}: {exc}") from None
            raise
        if conn.closed:  # lost before it could be used (and discarded already)
            raise ConnectError(f"{origin.host}:{origin.port} closed the connection at once")
        self._connections.add(conn)
        if self._ticker is None:
            self._ticker = loop.call_later(TICK_SECONDS, self._tick, loop)
        return conn

    def _wake_waiter(self, conn: h1client.Connection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    # --- called by connections -----------------------------------------------------------------

    def _release(self, conn: h1client.Connection) -> None:
        if self._closed:
            conn.close()
        elif not self._wake_waiter(conn):
            self._idle.append(conn)

    def _discard(self, conn: h1client.Connection) -> None:
        self._open -= 1
        self._connections.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._wake_waiter(None)

    async def probe(self, timeout: float = 1.0) -> bool:
        """Whether the origin is reachable now: a live pooled connection (busy or idle) counts,
        else a new connection is opened and kept for the next request."""
        if any(not conn.closed for conn in self._connections):
            return True
        try:
            conn = await asyncio.wait_for(self._connect(), timeout)
        except (TimeoutError, UpstreamError):
            return False
        conn.idle_since = asyncio.get_running_loop().time()
        self._release(conn)
        return True

    # --- housekeeping --------------------------------------------------------------------------

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for conn in list(self._connections):
            response = conn.response
            if response is not None:
                response.check_timeout(now)
        self.sweep(now)
        self._ticker = loop.call_later(TICK_SECONDS, self._tick, loop) if self._connections else None

    def sweep(self, now: float) -> None:
        """Close idle connections unused for ``idle_timeout``."""
        deadline = now - self.idle_timeout
        stale = [conn for conn in self._idle if conn.idle_since < deadline]
        for conn in stale:
            conn.close()  # _discard takes it off the idle stack

    async def aclose(self) -> None:
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for conn in list(self._idle):
            conn.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.cancel()
