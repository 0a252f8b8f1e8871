# cython: language_level=3
"""Compiled twin of ``tiermux._pure.h1client``: the hot-path HTTP/1.1 client protocol.

Same classes, behaviour and exceptions as the pure twin (read its docstring for the design);
here the per-chunk bookkeeping runs on typed attributes and the httptools callbacks are C-level
methods, which is where most of a proxied request's client-side time goes.
"""

import asyncio
from collections import deque

from httptools import HttpParserError, HttpResponseParser

from tiermux.upstream.errors import ConnectionClosed, ReadTimeout, RemoteProtocolError

__all__ = ["HIGH_WATER", "LOW_WATER", "Connection", "Response"]

cdef enum:
    _HIGH_WATER = 262144
    _LOW_WATER = 65536
HIGH_WATER = _HIGH_WATER
LOW_WATER = _LOW_WATER


cdef class Response:
    """One upstream answer: status and headers first, then body chunks as they arrive."""

    cdef public int status
    cdef public list headers
    cdef public bint keep_alive
    cdef public bint has_length
    cdef public bint chunked
    cdef public bint event_stream
    cdef public bint received_any
    cdef public bint complete
    cdef public object error
    cdef Connection _conn
    cdef object _loop
    cdef object _chunks
    cdef Py_ssize_t _buffered
    cdef object _waiter
    cdef double _read_timeout
    cdef public double _last_activity

    def __init__(self, Connection conn, double read_timeout):
        self.status = 0
        self.headers = []
        self.keep_alive = False
        self.has_length = False
        self.chunked = False
        self.event_stream = False
        self.received_any = False
        self.complete = False
        self.error = None
        self._conn = conn
        self._loop = conn.loop
        self._chunks = deque()
        self._buffered = 0
        self._waiter = None
        self._read_timeout = read_timeout
        self._last_activity = self._loop.time()

    def __repr__(self):
        state = "failed" if self.error else "complete" if self.complete else "receiving"
        return f"<Response status={self.status} {state} buffered={self._buffered}>"

    # --- the proxy's side ----------------------------------------------------------------------

    async def start(self):
        """Wait for the status line and headers."""
        while not self.status:
            if self.error is not None:
                raise self.error
            await self._wait()

    def take_body(self):
        """The whole body if it has already arrived, else ``None`` (then use :meth:`read_all`).

        Most non-streaming answers arrive with their headers; this spares them a coroutine.
        """
        cdef bytes body
        if not self.complete or self.error is not None:
            return None
        chunks = self._chunks
        body = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return body

    async def read(self):
        """The next body chunk; ``b""`` once the answer is complete. Raises on a broken answer,
        after every byte received before the break has been read."""
        cdef bytes data
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._buffered -= len(data)
                if self._conn is not None and self._conn.reading_paused and self._buffered <= _LOW_WATER:
                    self._conn.resume_reading()
                return data
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            await self._wait()

    async def read_all(self):
        """The whole body."""
        cdef bytes data
        cdef list parts
        if self.complete and len(self._chunks) == 1:
            self._buffered = 0
            return self._chunks.popleft()
        parts = []
        while True:
            data = await self.read()
            if not data:
                return b"".join(parts)
            parts.append(data)

    def close(self):
        """Done with this answer. An unfinished one costs its connection (it can't be reused)."""
        cdef Connection conn = self._conn
        if conn is not None and not self.complete:
            self._conn = None
            conn.abort()

    async def _wait(self):
        waiter = self._loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    # --- the connection's side -----------------------------------------------------------------

    cdef void _wake(self):
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    cdef void _feed(self, bytes data):
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and self._conn is not None and not self._conn.reading_paused:
            self._conn.pause_reading()
        self._wake()

    cdef void _finish(self):
        self.complete = True
        self._conn = None
        self._wake()

    cdef void _fail(self, error):
        if self.complete or self.error is not None:
            return
        error.response_started = self.received_any
        self.error = error
        self._conn = None
        self._wake()

    def check_timeout(self, double now):
        """Fail the answer if the backend has been silent for the read timeout.

        Called by the pool's tick for every busy connection, rather than one timer per request:
        activity only stamps a time, which costs far less than arming and cancelling a timer.
        """
        cdef Connection conn = self._conn
        if conn is None or self.complete:
            return
        if conn.reading_paused:  # silence is ours (a slow client), not the backend's
            self._last_activity = now
        elif now - self._last_activity >= self._read_timeout:
            self._fail(ReadTimeout(f"no data from the backend for {self._read_timeout:g}s"))
            conn.abort()


cdef class Connection:
    """An asyncio protocol for one keep-alive HTTP/1.1 connection to a backend."""

    cdef public object pool
    cdef public object loop
    cdef public object transport
    cdef public Response response
    cdef public long requests
    cdef public double idle_since
    cdef public bint closed
    cdef public bint reading_paused
    cdef object _parser
    cdef bint _interim
    cdef bint _release_pending

    def __init__(self, pool, loop):
        self.pool = pool
        self.loop = loop
        self.transport = None
        self.response = None
        self.requests = 0
        self.idle_since = 0.0
        self.closed = False
        self.reading_paused = False
        self._parser = HttpResponseParser(self)
        self._interim = False
        self._release_pending = False

    def __repr__(self):
        state = "closed" if self.closed else "busy" if self.response is not None else "idle"
        return f"<Connection {state} requests={self.requests}>"

    def send(self, bytes data, double read_timeout):
        """Write a whole request (head and body in one buffer) and return its answer-to-be.

        A connection the backend closed before anything was written (a listener going away
        resets the connections still in its queue) raises :class:`ConnectionClosed`, never the
        event loop's ``RuntimeError``: nothing was sent, so the request can go elsewhere.
        """
        transport = self.transport
        if self.closed or transport.is_closing():
            self._lost_before_sending()
        cdef Response response = Response(self, read_timeout)
        self.response = response
        self.requests += 1
        try:
            transport.write(data)
        except RuntimeError:  # closed between the check and the write (uvloop's handle is gone)
            self.response = None
            self._lost_before_sending()
        return response

    def _lost_before_sending(self):
        if not self.closed:
            self.closed = True
            self.pool._discard(self)
        raise ConnectionClosed("the backend closed the connection before the request was sent")

    def abort(self):
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.pool._discard(self)

    def close(self):
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            self.pool._discard(self)

    def pause_reading(self):
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self):
        if self.transport is not None and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        cdef Response response = self.response
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

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        cdef bint was_closed = self.closed
        cdef Response response = self.response
        self.closed = True
        self.response = None
        if response is not None and not response.complete:
            if response.status and not (response.has_length or response.chunked) and exc is None:
                response._finish()  # a body delimited by the end of the connection
            else:
                response._fail(ConnectionClosed("the backend closed the connection mid-answer"))
        if not was_closed:
            self.pool._discard(self)

    # --- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self):
        if self.response is None:
            raise RemoteProtocolError("the backend sent an answer nobody asked for")

    def on_header(self, bytes name, bytes value):
        cdef Response response = self.response
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

    def on_headers_complete(self):
        cdef Response response = self.response
        cdef int status
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

    def on_body(self, bytes body):
        cdef Response response = self.response
        if response is not None:
            response._feed(body)

    def on_message_complete(self):
        cdef Response response
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
