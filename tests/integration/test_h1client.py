"""The hot-path HTTP/1.1 client, whichever twin the picker loaded, against real loopback servers:
the mock backend, and tiny servers written here for what the mock can't do (odd framing,
broken HTTP, silence, slow readers, TLS).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from bench.mock_backend import BackendHandle
from tests.support import (
    ROOT,
    TinyServer,
    async_wait_until,
    free_port,
    http_response,
    keep_alive_server,
    read_request,
    request_bytes,
    run_on,
)

from tiermux._speedups import h1client
from tiermux.config import BackendConfig
from tiermux.upstream.backend import Backend
from tiermux.upstream.errors import (
    ConnectError,
    ConnectionClosed,
    ReadTimeout,
    RemoteProtocolError,
    UpstreamError,
)
from tiermux.upstream.pool import ConnectionPool, Origin

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


def _pool(port: int, **options: Any) -> ConnectionPool:
    return ConnectionPool(Origin("http", "127.0.0.1", port), **options)


async def _get(pool: ConnectionPool, path: str = "/", read_timeout: float = 5.0) -> tuple[int, bytes]:
    response = await pool.request(request_bytes(path), read_timeout)
    try:
        return response.status, await response.read_all()
    finally:
        response.close()


def _answer_with(raw: bytes, close: bool = False) -> Any:
    """A server that answers every request with ``raw`` (and then closes, if asked)."""

    async def handler(server: TinyServer, reader: Reader, writer: Writer) -> None:
        while (await read_request(reader)) is not None:
            server.requests += 1
            writer.write(raw)
            await writer.drain()
            if close:
                writer.close()
                return

    return handler


# --- against the mock backend --------------------------------------------------------------------


def _mock_backend(mock: BackendHandle, **extra: Any) -> Backend:
    return Backend(BackendConfig(name="mock", base_url=mock.url, model="qwen-9b", **extra))


def test_json_answer_from_the_mock(aio, vllm: BackendHandle) -> None:
    async def scenario() -> None:
        backend = _mock_backend(vllm)
        try:
            for _ in range(5):
                body = b'{"model":"qwen-9b","messages":[{"role":"user","content":"hi"}]}'
                response = await backend.send("POST", "/chat/completions", body)
                assert response.status == 200
                headers = dict(response.headers)
                assert headers[b"content-type"] == b"application/json"
                payload = await response.read_all()
                response.close()
                assert int(headers[b"content-length"]) == len(payload)
                document = json.loads(payload)
                assert document["object"] == "chat.completion"
                assert document["id"] == "chatcmpl-" + headers[b"x-request-id"].decode()
            assert backend.pool.open_connections == 1
        finally:
            await backend.aclose()

    aio(scenario())
    assert vllm.stats()["connections_total"] == 1
    record = vllm.recorded()[-1]
    assert record["method"] == "POST"
    assert record["path"] == "/v1/chat/completions"


def test_sse_stream_from_the_mock_arrives_in_pieces(aio, vllm: BackendHandle) -> None:
    vllm.configure(itl_ms=20, tokens=5)

    async def scenario() -> None:
        backend = _mock_backend(vllm)
        try:
            body = b'{"model":"qwen-9b","messages":[],"stream":true}'
            response = await backend.send("POST", "/chat/completions", body)
            assert response.status == 200
            assert dict(response.headers)[b"content-type"].startswith(b"text/event-stream")
            assert dict(response.headers)[b"transfer-encoding"] == b"chunked"
            pieces = []
            while chunk := await response.read():
                pieces.append(chunk)
            response.close()
            text = b"".join(pieces)
            assert len(pieces) >= 5  # tokens 20 ms apart are separate reads
            assert text.endswith(b"data: [DONE]\n\n")
            events = [e for e in text.split(b"\n\n") if e]
            deltas = [json.loads(e[6:]) for e in events[:-1]]
            content = "".join(d["choices"][0]["delta"].get("content", "") for d in deltas)
            assert content == " The mock backend answers every"
            assert backend.pool.idle_connections == 1  # a complete chunked answer keeps the connection
        finally:
            await backend.aclose()

    aio(scenario())


# --- framing -------------------------------------------------------------------------------------


def test_chunked_answer(aio) -> None:
    async def chunked(server: TinyServer, reader: Reader, writer: Writer) -> None:
        while (await read_request(reader)) is not None:
            server.requests += 1
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n")
            for piece in (b"hello ", b"chunked ", b"world"):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def scenario() -> None:
        async with TinyServer(chunked) as server:
            pool = _pool(server.port)
            response = await pool.request(request_bytes("/"), 5)
            assert response.status == 200
            pieces = []
            while chunk := await response.read():
                pieces.append(chunk)
            assert b"".join(pieces) == b"hello chunked world"
            assert len(pieces) == 3
            assert response.complete
            response.close()
            assert await _get(pool) == (200, b"hello chunked world")
            assert server.total == 1  # a chunked answer ends cleanly: the connection is reused
            await pool.aclose()

    aio(scenario())


def test_answer_delimited_by_connection_close(aio) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" + b"x" * 100_000

    async def scenario() -> None:
        async with TinyServer(_answer_with(raw, close=True)) as server:
            pool = _pool(server.port)
            assert await _get(pool) == (200, b"x" * 100_000)
            assert await _get(pool) == (200, b"x" * 100_000)
            assert server.total == 2
            assert await async_wait_until(lambda: pool.open_connections == 0)
            await pool.aclose()

    aio(scenario())


def test_http10_answer_without_length(aio) -> None:
    raw = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold style"

    async def scenario() -> None:
        async with TinyServer(_answer_with(raw, close=True)) as server:
            pool = _pool(server.port)
            assert await _get(pool) == (200, b"old style")
            await pool.aclose()

    aio(scenario())


def test_connection_close_header_is_honoured(aio) -> None:
    async def scenario() -> None:
        async with TinyServer(
            _answer_with(http_response(b"once", headers={"Connection": "close"}))
        ) as server:
            pool = _pool(server.port)
            assert await _get(pool) == (200, b"once")
            assert pool.idle_connections == 0
            assert await async_wait_until(lambda: server.open == 0)
            await pool.aclose()

    aio(scenario())


def test_no_content_answer_keeps_the_connection(aio) -> None:
    async def scenario() -> None:
        async with TinyServer(_answer_with(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")) as server:
            pool = _pool(server.port)
            for _ in range(3):
                assert await _get(pool) == (204, b"")
            assert server.total == 1
            await pool.aclose()

    aio(scenario())


def test_headers_are_lower_cased_and_kept_in_order(aio) -> None:
    raw = (
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-Request-ID: abc-123\r\nSet-Cookie: a=1\r\n"
        b"set-cookie: b=2\r\nX-Empty:\r\n\r\nok"
    )

    async def scenario() -> None:
        async with TinyServer(_answer_with(raw)) as server:
            pool = _pool(server.port)
            response = await pool.request(request_bytes("/"), 5)
            assert response.status == 201
            assert response.headers == [
                (b"content-length", b"2"),
                (b"x-request-id", b"abc-123"),
                (b"set-cookie", b"a=1"),
                (b"set-cookie", b"b=2"),
                (b"x-empty", b""),
            ]
            assert await response.read_all() == b"ok"
            response.close()
            await pool.aclose()

    aio(scenario())


def test_large_fixed_length_answer(aio) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB

    async def scenario() -> None:
        async with TinyServer(_answer_with(http_response(body))) as server:
            pool = _pool(server.port)
            for _ in range(2):
                assert await _get(pool) == (200, body)
            assert server.total == 1
            await pool.aclose()

    aio(scenario())


# --- broken answers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"HELLO WORLD\r\n\r\n", id="not-http"),
        pytest.param(b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n", id="bad-status"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", id="bad-length"),
        pytest.param(b"HTTP/1.1 200 OK\r\nBad Header Name: 1\r\n\r\n", id="bad-header"),
    ],
)
def test_invalid_http_is_a_protocol_error(aio, raw: bytes) -> None:
    async def scenario() -> None:
        async with TinyServer(_answer_with(raw)) as server:
            pool = _pool(server.port)
            with pytest.raises(RemoteProtocolError):
                await pool.request(request_bytes("/"), 5)
            assert pool.open_connections == 0
            assert await async_wait_until(lambda: server.open == 0)
            await pool.aclose()

    aio(scenario())


def test_invalid_chunk_mid_body(aio) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ\r\n"

    async def scenario() -> None:
        async with TinyServer(_answer_with(raw)) as server:
            pool = _pool(server.port)
            response = await pool.request(request_bytes("/"), 5)
            assert response.status == 200
            with pytest.raises(RemoteProtocolError) as info:
                await response.read_all()
            assert info.value.response_started is True
            response.close()
            assert pool.open_connections == 0
            await pool.aclose()

    aio(scenario())


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", id="fixed-length"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", id="chunked"),
    ],
)
def test_connection_closed_mid_body(aio, raw: bytes) -> None:
    async def scenario() -> None:
        async with TinyServer(_answer_with(raw, close=True)) as server:
            pool = _pool(server.port)
            response = await pool.request(request_bytes("/"), 5)
            assert response.status == 200
            with pytest.raises(ConnectionClosed) as info:
                await response.read_all()
            assert info.value.response_started is True
            response.close()
            assert pool.open_connections == 0
            assert server.total == 1
            await pool.aclose()

    aio(scenario())


def test_unsolicited_bytes_on_an_idle_connection_drop_it(aio) -> None:
    async def chatty(server: TinyServer, reader: Reader, writer: Writer) -> None:
        while (await read_request(reader)) is not None:
            server.requests += 1
            writer.write(http_response(b"ok"))
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(b"garbage nobody asked for")
            await writer.drain()

    async def scenario() -> None:
        async with TinyServer(chatty) as server:
            pool = _pool(server.port)
            assert await _get(pool) == (200, b"ok")
            assert await async_wait_until(lambda: pool.open_connections == 0)
            assert await _get(pool) == (200, b"ok")
            assert server.total == 2
            await pool.aclose()

    aio(scenario())


# --- misbehaving backends that must not take the process down --------------------------------------
#
# These run in a child process: if the client crashes the interpreter, the child dies of a signal
# and the test fails with that, instead of the whole test run dying with it.


async def _extra_answer_scenario() -> None:
    """Two answers in one write for one request: the first is the answer, the second is noise."""
    raw = http_response(b"first") + http_response(b"unsolicited")
    async with TinyServer(_answer_with(raw)) as server:
        pool = _pool(server.port)
        for _ in range(3):
            assert await _get(pool) == (200, b"first")
            assert await async_wait_until(lambda: pool.open_connections == 0)
        assert server.total == 3  # a connection that got out of step is never reused
        await pool.aclose()


async def _interim_answer_scenario() -> None:
    """1xx answers before the final one (RFC 9110 15.2: a client must be able to parse them)."""
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + http_response(b"final")
    )
    async with TinyServer(_answer_with(raw)) as server:
        pool = _pool(server.port)
        response = await pool.request(request_bytes("/"), 5)
        assert response.status == 200
        assert (b"link", b"</style.css>; rel=preload") not in response.headers
        assert await response.read_all() == b"final"
        response.close()
        assert await _get(pool) == (200, b"final")
        await pool.aclose()


ISOLATED = {"extra-answer": _extra_answer_scenario, "interim-answer": _interim_answer_scenario}


def _run_isolated(name: str, loop: str) -> None:
    run_on(loop, ISOLATED[name]())


@pytest.mark.parametrize("name", sorted(ISOLATED))
def test_misbehaving_backend_in_a_child_process(aio, name: str) -> None:
    code = f"from tests.integration.test_h1client import _run_isolated; _run_isolated({name!r}, {aio.loop!r})"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode >= 0, f"the client crashed the process (signal {-result.returncode})"
    assert result.returncode == 0, result.stderr[-3000:]


# --- timeouts ------------------------------------------------------------------------------------


async def _silent(server: TinyServer, reader: Reader, writer: Writer) -> None:
    while (await read_request(reader)) is not None:
        server.requests += 1
        await reader.read()  # never answer; wait for the client to give up


def test_server_that_never_answers_times_out(aio) -> None:
    async def scenario() -> None:
        async with TinyServer(_silent) as server:
            pool = _pool(server.port)
            started = time.monotonic()
            with pytest.raises(ReadTimeout) as info:
                await pool.request(request_bytes("/"), 0.3)
            assert time.monotonic() - started >= 0.25  # not before the timeout
            assert info.value.response_started is False
            assert pool.open_connections == 0
            assert await async_wait_until(lambda: server.open == 0)
            assert server.requests == 1  # a timed-out request is not sent again
            await pool.aclose()

    aio(scenario())


def test_silence_after_the_head_times_out(aio) -> None:
    async def stall(server: TinyServer, reader: Reader, writer: Writer) -> None:
        while (await read_request(reader)) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
            await reader.read()

    async def scenario() -> None:
        async with TinyServer(stall) as server:
            pool = _pool(server.port)
            response = await pool.request(request_bytes("/"), 0.3)
            assert await response.read() == b"abc"
            with pytest.raises(ReadTimeout) as info:
                await response.read()
            assert info.value.response_started is True
            response.close()
            assert pool.open_connections == 0
            await pool.aclose()

    aio(scenario())


def test_read_timeout_bounds_silence_not_the_whole_answer(aio) -> None:
    async def trickle(server: TinyServer, reader: Reader, writer: Writer) -> None:
        while (await read_request(reader)) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(6):
                await asyncio.sleep(0.1)
                writer.write(b"1\r\n%d\r\n" % i)
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def scenario() -> None:
        async with TinyServer(trickle) as server:
            pool = _pool(server.port)
            started = time.monotonic()
            assert await _get(pool, read_timeout=0.35) == (200, b"012345")
            assert time.monotonic() - started >= 0.45  # in total longer than the timeout
            await pool.aclose()

    aio(scenario())


def test_connect_error_on_closed_port(aio) -> None:
    async def scenario() -> None:
        backend = Backend(
            BackendConfig(name="gone", base_url=f"http://127.0.0.1:{free_port()}/v1", model="m")
        )
        with pytest.raises(ConnectError):
            await backend.send("POST", "/chat/completions", b"{}")
        assert backend.pool.open_connections == 0
        await backend.aclose()

    aio(scenario())


# --- flow control and early close ------------------------------------------------------------------

BIG = 48 * 1024 * 1024
PIECE = bytes(range(256)) * 256  # 64 KiB


def test_slow_reader_pauses_the_socket_and_still_gets_everything(aio) -> None:
    async def firehose(server: TinyServer, reader: Reader, writer: Writer) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        while (await read_request(reader)) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
            sent = 0
            while sent < BIG:
                writer.write(PIECE)
                sent += len(PIECE)
                server.state["sent"] = sent
                await writer.drain()
            server.state["done"] = True

    async def scenario() -> None:
        async with TinyServer(firehose) as server:
            server.state.update(sent=0, done=False)
            pool = _pool(server.port)
            conn = await pool.acquire()
            response = conn.send(request_bytes("/big"), 0.3)
            await response.start()
            assert response.status == 200
            # Nobody reads: the connection must stop reading from the socket...
            assert await async_wait_until(lambda: conn.reading_paused, timeout=10)
            # ...and stay stopped, longer than the read timeout (the silence is ours, not the
            # backend's), while the server is left unable to send the rest.
            await asyncio.sleep(0.6)
            assert conn.reading_paused
            assert response.error is None
            assert not server.state["done"]
            assert server.state["sent"] < BIG
            digest = hashlib.sha256()
            total = 0
            while chunk := await response.read():
                digest.update(chunk)
                total += len(chunk)
            assert total == BIG
            assert digest.digest() == hashlib.sha256(PIECE * (BIG // len(PIECE))).digest()
            assert server.state["done"]
            assert not conn.reading_paused
            response.close()
            assert pool.idle_connections == 1  # a completed answer gives the connection back
            await pool.aclose()

    aio(scenario())


def test_closing_an_unfinished_answer_aborts_its_connection(aio) -> None:
    async def partial(server: TinyServer, reader: Reader, writer: Writer) -> None:
        while (await read_request(reader)) is not None:
            server.requests += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
            await writer.drain()
            server.state["eof"] = await reader.read() == b""

    async def scenario() -> None:
        async with TinyServer(partial) as server:
            pool = _pool(server.port)
            response = await pool.request(request_bytes("/"), 5)
            assert await response.read() == b"partial"
            response.close()
            assert pool.open_connections == 0
            assert pool.idle_connections == 0
            assert await async_wait_until(lambda: server.open == 0)
            response.close()  # closing twice is harmless
            await pool.aclose()

    aio(scenario())


def test_closing_a_finished_answer_keeps_its_connection(aio) -> None:
    async def scenario() -> None:
        async with TinyServer(keep_alive_server) as server:
            pool = _pool(server.port)
            response = await pool.request(request_bytes("/a"), 5)
            assert await response.read_all() == b"ok:/a"
            response.close()
            assert pool.idle_connections == 1
            assert await _get(pool, "/b") == (200, b"ok:/b")
            assert server.total == 1
            await pool.aclose()

    aio(scenario())


def test_closing_before_the_body_is_read_aborts(aio) -> None:
    async def scenario() -> None:
        async with TinyServer(_answer_with(http_response(b"y" * 10, headers={"X": "1"}))) as server:
            pool = _pool(server.port)
            response = await pool.request(request_bytes("/"), 5)
            await asyncio.sleep(0.05)  # the whole body may already be in; either way the result is sound
            response.close()
            assert await _get(pool) == (200, b"y" * 10)
            assert server.total in (1, 2)
            assert pool.open_connections == 1
            await pool.aclose()

    aio(scenario())


# --- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = [
        *(openssl, "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"),
        *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-keyout", str(key), "-out", str(cert)),
        *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
    ]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
    )
    return cert, key


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    return context


@pytest.mark.parametrize(
    ("verify", "use_ca", "works"),
    [
        pytest.param(True, False, False, id="verify-unknown-ca"),
        pytest.param(True, True, True, id="verify-with-ca-file"),
        pytest.param(False, False, True, id="no-verify"),
    ],
)
def test_tls(aio, certificate: tuple[Path, Path], verify: bool, use_ca: bool, works: bool) -> None:
    async def scenario() -> None:
        async with TinyServer(keep_alive_server, ssl=_server_context(certificate)) as server:
            origin = Origin(
                "https",
                "127.0.0.1",
                server.port,
                verify_tls=verify,
                ca_file=str(certificate[0]) if use_ca else None,
            )
            pool = ConnectionPool(origin)
            try:
                if works:
                    for i in range(3):
                        assert await _get(pool, f"/tls{i}") == (200, f"ok:/tls{i}".encode())
                    assert server.total == 1
                else:
                    with pytest.raises(ConnectError) as info:
                        await _get(pool)
                    assert "certificate" in str(info.value).lower()
                    assert pool.open_connections == 0
            finally:
                await pool.aclose()
                await async_wait_until(lambda: server.open == 0, timeout=2)

    aio(scenario())


def test_tls_backend_from_config(aio, certificate: tuple[Path, Path]) -> None:
    async def scenario() -> None:
        async with TinyServer(keep_alive_server, ssl=_server_context(certificate)) as server:
            backend = Backend(
                BackendConfig(
                    name="tls",
                    base_url=f"https://localhost:{server.port}/v1",
                    model="m",
                    ca_file=str(certificate[0]),
                )
            )
            try:
                response = await backend.send("POST", "/chat/completions", b"{}")
                assert response.status == 200
                assert await response.read_all() == b"ok:/v1/chat/completions"
                response.close()
            finally:
                await backend.aclose()
                await async_wait_until(lambda: server.open == 0, timeout=2)

    aio(scenario())


def test_connection_class_comes_from_the_picker() -> None:
    from tiermux.upstream import pool

    assert pool.h1client is h1client
    assert issubclass(ConnectionClosed, UpstreamError)


def test_a_listener_that_goes_away_fails_requests_with_upstream_errors(aio) -> None:
    """Connections completed in a listener's queue are reset when it closes; on uvloop one can be
    handed over closed. Requests on them must fail as upstream errors (so the proxy fails over),
    never with the event loop's RuntimeError."""

    async def scenario() -> set[type[BaseException]]:
        seen: set[type[BaseException]] = set()
        for attempt in range(40):
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)  # never accepts
            pool = _pool(listener.getsockname()[1])
            tasks = [asyncio.ensure_future(pool.request(request_bytes("/"), 2.0)) for _ in range(8)]
            await asyncio.sleep(attempt % 5 * 0.0005)
            listener.close()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                assert isinstance(outcome, BaseException)
                seen.add(type(outcome))
            await pool.aclose()
        return seen

    seen = aio(scenario())
    assert seen and all(issubclass(kind, UpstreamError) for kind in seen), seen
