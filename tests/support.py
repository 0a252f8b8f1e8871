"""Helpers shared by the test modules: configs, an in-process client, a real server process,
tiny purpose-built HTTP servers, and polling.

Fixtures live in ``conftest.py``; the classes and functions they use live here so that test
modules can import them by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvloop
import yaml

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "src" / "tiermux" / "examples" / "demo.yaml"

VLLM_MODEL = "qwen-9b"
CLOUD_MODEL = "big-model"
CLOUD_KEY = "test-key"

# What the session-scoped mocks are reset to before every test that uses them.
MOCK_DEFAULTS: dict[str, Any] = {
    "latency_ms": 0.0,
    "ttft_ms": 0.0,
    "itl_ms": 0.0,
    "tokens": 16,
    "fail_rate": 0.0,
    "fail_mode": "status",
    "fail_status": 500,
    "seed": 0,
    "text": None,
    "logprob": -0.05,
    "rate_limited_keys": {},
    "rate_limit_every": 0,
}


# --- small utilities ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now (also what a "closed port" test connects to)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.005
) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        await asyncio.sleep(interval)


def reset_mock(mock: Any) -> None:
    """Back to default behaviour, with nothing recorded."""
    mock.configure(**MOCK_DEFAULTS)
    mock.call(mock.backend.reset)


def recorded_bodies(mock: Any) -> list[bytes]:
    import base64

    return [base64.b64decode(r["body_b64"]) for r in mock.recorded()]


def header_values(record: Mapping[str, Any], name: str) -> list[str]:
    return [value for key, value in record["headers"] if key.lower() == name.lower()]


# --- configs -----------------------------------------------------------------------------------


def backend_entry(name: str, url: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "base_url": url, "model": model, **extra}


def write_config(directory: Path, tree: Mapping[str, Any], name: str = "tiermux.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(dict(tree), sort_keys=False), encoding="utf-8")
    return path


def write_key_file(directory: Path, key: str, name: str = "cloud.key") -> Path:
    path = directory / name
    path.write_text(key + "\n", encoding="utf-8")
    return path


def standard_tree(
    vllm_url: str,
    cloud_url: str,
    key_file: Path,
    *,
    server: Mapping[str, Any] | None = None,
    read_timeout: float = 10.0,
    classified: bool = False,
) -> dict[str, Any]:
    """Two backends (a local vLLM and a cloud model), two tiers, two aliases; the classifier is off
    unless ``classified`` (``auto`` then goes to the cheap tier, as pass-through tests expect)."""
    return {
        "server": dict(server or {}),
        "backends": [
            backend_entry(
                "local-9b",
                vllm_url,
                VLLM_MODEL,
                timeout={"read": read_timeout},
                price={"input": 0.005, "output": 0.005},
            ),
            backend_entry(
                "frontier",
                cloud_url,
                CLOUD_MODEL,
                api_key_file=str(key_file),
                timeout={"read": read_timeout},
                price={"input": 3.0, "output": 15.0},
            ),
        ],
        "tiers": {"cheap": ["local-9b", "frontier"], "capable": ["frontier"]},
        "routing": {
            "default_tier": "cheap",
            "aliases": {"fast": "cheap", "smart": "capable"},
            "classifier": {"enabled": classified},
        },
    }


# --- the app in process ------------------------------------------------------------------------


class ProxyClient:
    """A :class:`tiermux.app.TiermuxApp` and an ``httpx.AsyncClient`` on it, driven synchronously.

    The app and its upstream pools live on one uvloop loop in a thread, so that connections stay
    pooled across calls exactly as in a worker; every call blocks until its answer is in.
    """

    def __init__(self, config: Any) -> None:
        from tiermux.app import TiermuxApp

        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy-client", daemon=True)
        self._thread.start()
        self.app = TiermuxApp(config)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://tiermux.test", timeout=30
        )

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.run(self.client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def chat(self, body: Mapping[str, Any] | None = None, **fields: Any) -> httpx.Response:
        payload = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
        payload.update(body or {})
        payload.update(fields)
        return self.post("/v1/chat/completions", json=payload)

    def close(self) -> None:
        """Close the app as a worker's shutdown does, then the loop (once; again is nothing)."""
        if self._loop.is_closed():
            return

        async def shutdown() -> None:
            await self.client.aclose()
            await self.app.aclose()
            current = asyncio.current_task()
            others = [t for t in asyncio.all_tasks() if t is not current]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            for _ in range(5):  # let closing transports deliver connection_lost
                await asyncio.sleep(0)

        try:
            self.run(shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if self._thread.is_alive():  # its loop is stuck in a call: leave it, say so
                raise RuntimeError("the proxy's loop did not stop within 10 s")
            # Bounded like every wait here: a generator that won't close is an error, not a hang.
            self._loop.run_until_complete(asyncio.wait_for(self._loop.shutdown_asyncgens(), 10))
            self._close_loop()

    def _close_loop(self) -> None:
        """Close the loop; a connection the app left open fails the test. uvloop warns of each
        (ResourceWarning) before closing it, and a warning turned into an error by the test run
        would skip the closing and leave ``close`` waiting on the connection forever."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self._loop.close()
        left_open = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert not left_open, f"the app left open: {left_open}"
        for w in caught:  # any other warning is the test run's, as it would have been
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


# --- many requests at once ---------------------------------------------------------------------


async def post_once(port: int, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """A chat completion on a connection of its own (so that many can be open at once); one not
    answered and closed within 60 s raises ``TimeoutError``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: tiermux\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    try:
        raw = await asyncio.wait_for(reader.read(-1), 60)
    finally:
        writer.close()
    head_bytes, _, payload = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, payload


async def storm(port: int, bodies: list[bytes]) -> list[tuple[int, dict[str, str], bytes]]:
    """All ``bodies`` at once: each on its own connection, released together."""
    gate = asyncio.Event()

    async def one(body: bytes) -> tuple[int, dict[str, str], bytes]:
        await gate.wait()
        return await post_once(port, body)

    tasks = [asyncio.ensure_future(one(body)) for body in bodies]
    await asyncio.sleep(0.05)
    gate.set()
    return await asyncio.gather(*tasks)


def varied_chat_bodies(count: int, seed: int, model: str = "smart") -> list[bytes]:
    """Chat bodies that each cost something different: their own prompt length and max_tokens."""
    rng = random.Random(seed)
    return [
        json.dumps(
            {
                "model": model,
                "max_tokens": rng.randrange(1, 65),
                "messages": [{"role": "user", "content": "word " * rng.randrange(10, 400)}],
            }
        ).encode()
        for _ in range(count)
    ]


def dearest_worst_case(bodies: list[bytes], input_price: int, output_price: int) -> int:
    """The largest worst case (pico-USD) a budget reserves for any of ``bodies`` at these prices
    per token: the body over 3 bytes a token plus 32, and its ``max_tokens``."""
    return max(
        (len(body) // 3 + 32) * input_price + json.loads(body)["max_tokens"] * output_price for body in bodies
    )


# --- a real redis-server ----------------------------------------------------------------------


class RedisServer:
    """Debian's ``redis-server`` on a free loopback port, without persistence; can be stopped
    and started again on the same port (to play an outage)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self.directory), "--loglevel", "warning"]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# --- a real server process ---------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (a /proc scan, no psutil)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces; fields after it are fixed.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


class ServerProcess:
    """``python -m tiermux serve`` in a subprocess of its own process group."""

    def __init__(self, config_path: Path, log_path: Path, *, workers: int = 2) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self, timeout: float = 15.0) -> ServerProcess:
        env = dict(os.environ)  # TIERMUX_NO_EXTENSIONS (or its absence) goes through as it is
        env.pop("TIERMUX_CONFIG", None)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        command = [sys.executable, "-m", "tiermux", "serve", "--config", str(self.config_path)]
        command += ["--port", str(self.port), "--workers", str(self.workers)]
        self.proc = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while True:
                if self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"tiermux serve exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if client.get(self.url + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"tiermux serve did not answer /health within {timeout}s:\n{self.log()}"
                    )
                time.sleep(0.05)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        return _children(self.proc.pid)

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Workers left behind by a parent that died: they are in its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    with contextlib.suppress(OSError):
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                target = os.readlink(f"{fd_dir}/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def established_to(port: int) -> dict[int, int]:
    """Established IPv4 TCP connections whose remote port is ``port``: inode -> local port."""
    found = {}
    with open("/proc/net/tcp", encoding="ascii") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if state == "01" and int(remote.split(":")[1], 16) == port:
                found[inode] = int(local.split(":")[1], 16)
    return found


# --- tiny purpose-built servers ------------------------------------------------------------------


Handler = Callable[["TinyServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class TinyServer:
    """An asyncio server whose connection handler a test writes itself.

    It counts connections (total, open, most open at once) and closes everything it opened when
    the test is done, so that no transport outlives its loop. An exception in the handler (other
    than the peer going away) fails the test when the server is closed.
    """

    def __init__(self, handler: Handler, ssl: Any = None) -> None:
        self.handler = handler
        self.ssl = ssl
        self.total = 0
        self.open = 0
        self.peak = 0
        self.requests = 0
        self.errors: list[BaseException] = []
        self.state: dict[str, Any] = {}  # for handlers to share things with the test
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.port = 0

    async def __aenter__(self) -> TinyServer:
        self._server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        assert self._server is not None
        self._closing = True
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for _ in range(3):
            await asyncio.sleep(0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        for _ in range(5):
            await asyncio.sleep(0)
        if self.errors and exc_type is None:
            raise AssertionError(f"the test server's handler failed: {self.errors[0]!r}") from self.errors[0]

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.total += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            if not self._closing:
                raise
        except Exception as exc:
            if not self._closing:
                self.errors.append(exc)
        finally:
            self.open -= 1
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort()


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One HTTP/1.1 request with a Content-Length body (what the pool sends); None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return head + body


def http_response(
    body: bytes = b"ok", status: int = 200, headers: Mapping[str, str] | None = None, reason: str = "OK"
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def request_bytes(path: str = "/", body: bytes = b"", host: str = "127.0.0.1") -> bytes:
    method = "POST" if body else "GET"
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def keep_alive_server(
    server: TinyServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answers every request on the connection with 200 ``ok``."""
    while (request := await read_request(reader)) is not None:
        server.requests += 1
        writer.write(http_response(b"ok:" + request.split(b" ", 2)[1]))
        await writer.drain()


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def run_on(loop_name: str, coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        return runner.run(coro)
