"""The hot-path HTTP/1.1 client: one asyncio protocol per upstream connection, over httptools.

Pure twin of ``csrc/h1client.pyx`` (same names, behaviour and exceptions). A :class:`Connection`
carries one exchange at a time; its :class:`Response` is what the proxy reads from. The pool
(``tiermux.upstream.pool``) decides which connection serves which request.

Why not httpx: its pool serialises on a lock and re-checks sockets on every operation; this client
does one ``transport.write`` per request and wakes the reader once per chunk.

Flow control, both ways:
- upstream to client: answer bytes queue in the Response; past ``HIGH_WATER`` the connection stops
  reading from the socket until the proxy has relayed the queue below ``LOW_WATER``;
- client to upstream: request bodies are bounded and read whole (routing needs them), and the
  transport's own write buffer carries them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

from httptools import HttpParserError, HttpResponseParser

from tiermux.upstream.errors import ConnectionClosed, ReadTimeout, RemoteProtocolError, UpstreamError

__all__ = ["HIGH_WATER", "LOW_WATER", "Connection", "Response"]

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class Pool(Protocol):
    """What a connection needs from its pool."""

    def _release(self, conn: Any) -> None: ...

    def _discard(self, conn: Any) -> None: ...


class Response:
    """One upstream answer: status and headers first, then body chunks as they arrive."""

    def __init__(self, conn: Connection, read_timeout: float) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.has_length = False
        self.chunked = False
        self.event_stream = False
        self.received_any = False
        self.complete = False
        self.error: UpstreamError | None = None
        self._conn: Connection | None = conn
        self._loop = conn.loop
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._read_timeout = read_timeout
        self._last_activity = self._loop.time()

    def __repr__(self) -> str:
        state = "failed" if self.error else "complete" if self.complete else "receiving"
        return f"<Response status={self.status} {state} buffered={self._buffered}>"

    # --- the proxy's side ----------------------------------------------------------------------

    async def start(self) -> None:
        """Wait for the status line and headers."""
        while not self.status:
            if self.error is not None:
                raise self.error
            await self._wait()

    def take_body(self) -> bytes | None:
        """The whole body if it has already arrived, else ``None`` (then use :meth:`read_all`).

        Most non-streaming answers arrive with their headers; this spares them a coroutine.
        """
        if not self.complete or self.error is not None:
            return None
        chunks = self._chunks
        body = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return body

    async def read(self) -> bytes:
        """The next body chunk; ``b""`` once the answer is complete. Raises on a broken answer,
        after every byte received before the break has been read."""
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._buffered -= len(data)
                conn = self._conn
                if conn is not None and conn.reading_paused and self._buffered <= LOW_WATER:
                    conn.resume_reading()
                return data
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            await self._wait()

    async def read_all(self) -> bytes:
        """The whole body."""
        if self.complete and len(self._chunks) == 1:
            self._buffered = 0
            return self._chunks.popleft()
        parts: list[bytes] = []
        while True:
            data = await self.read()
            if not data:
                return b"".join(parts)
            parts.append(data)

    def close(self) -> None:
        """Done with this answer. An unfinished one costs its connection (it can't be reused)."""
        conn = self._conn
        if conn is not None and not self.complete:
            self._conn = None
            conn.abort()

    async def _wait(self) -> None:
        waiter = self._loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    # --- the connection's side -----------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        conn = self._conn
        if self._buffered > HIGH_WATER and conn is not None and not conn.reading_paused:
            conn.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._conn = None
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self.complete or self.error is not None:
            return
        error.response_started = self.received_any
        self.error = error
        self._conn = None
        self._wake()

    def check_timeout(self, now: float) -> None:
        """Fail the answer if the backend has been silent for the read timeout.

        Called by the pool's tick for every busy connection, rather than one timer per request:
        activity only stamps a time, which costs far less than arming and cancelling a timer.
        """
        conn = self._conn
        if conn is None or self.complete:
            return
        if conn.reading_paused:  # silence is ours (a slow client), not the backend's
            self._last_activity = now
        elif now - self._last_activity >= self._read_timeout:
            self._fail(ReadTimeout(f"no data from the backend for {self._read_timeout:g}s"))
            conn.abort()


class Connection(asyncio.Protocol):
    """An asyncio protocol for one keep-alive HTTP/1.1 connection to a backend."""

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.requests = 0
        self.idle_since = 0.0
        self.closed = False
        self.reading_paused = False
        self._parser = HttpResponseParser(self)
        self._interim = False
        self._release_pending = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "busy" if self.response is not None else "idle"
        return f"<Connection {state} requests={self.requests}>"

    def send(self, data: bytes, read_timeout: float) -> Response:
        """Write a whole request (head and body in one buffer) and return its answer-to-be.

        A connection the backend closed before anything was written (a listener going away
        resets the connections still in its queue) raises :class:`ConnectionClosed`, never the
        event loop's ``RuntimeError``: nothing was sent, so the request can go elsewhere.
        """
        transport = self.transport
        assert transport is not None
        if self.closed or transport.is_closing():
            self._lost_before_sending()
        response = Response(self, read_timeout)
        self.response = response
        self.requests += 1
        try:
            transport.write(data)
        except RuntimeError:  # closed between the check and the write (uvloop's handle is gone)
            self.response = None
            self._lost_before_sending()
        return response

    def _lost_before_sending(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool._discard(self)
        raise ConnectionClosed("the backend closed the connection before the request was sent")

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.pool._discard(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            self.pool._discard(self)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            # Bytes nobody asked for: the connection is out of step and can't be trusted.
            self.abort()
            return
        response.received_any = True
        response._last_activity = self.loop.time()
        try:
            self._parser.feed_data(data)
        except HttpParserError as exc:
            response._fail(RemoteProtocolError(f"invalid HTTP from the backend: {exc}"))
            self.abort()
            return
        # Released only once the whole buffer is parsed: bytes after the answer would mean the
        # connection is out of step, and on_message_begin has then aborted it.
        if self._release_pending:
            self._release_pending = False
            if not self.closed:
                self.resume_reading()
                self.idle_since = self.loop.time()
                self.pool._release(self)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        was_closed = self.closed
        self.closed = True
        response = self.response
        self.response = None
        if response is not None and not response.complete:
            if response.status and not (response.has_length or response.chunked) and exc is None:
                response._finish()  # a body delimited by the end of the connection
            else:
                response._fail(ConnectionClosed("the backend closed the connection mid-answer"))
        if not was_closed:
            self.pool._discard(self)

    # --- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.response is None:
            raise RemoteProtocolError("the backend sent an answer nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        if response is None:
            return
        name = name.lower()
        if name == b"content-length":
            response.has_length = True
        elif name == b"transfer-encoding":
            response.chunked = True
        elif name == b"content-type" and value.startswith(b"text/event-stream"):
            response.event_stream = True
        response.headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self.response
        if response is None:
            return
        status = self._parser.get_status_code()
        if status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the final one follows.
            self._interim = True
            response.headers.clear()
            response.has_length = response.chunked = response.event_stream = False
            return
        response.keep_alive = bool(self._parser.should_keep_alive())
        response.status = status
        response._wake()

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None:
            response._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        response = self.response
        if response is None:
            return
        self.response = None
        response._finish()
        if response.keep_alive and not self.closed:
            self._release_pending = True
        else:
            self.close()
