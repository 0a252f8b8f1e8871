"""Shared fixtures: mock backends, configs, the app in process, and a real ``tiermux serve``."""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from bench.mock_backend import BackendHandle, run_in_thread
from hypothesis import settings
from tests.support import (
    CLOUD_KEY,
    CLOUD_MODEL,
    LOOPS,
    VLLM_MODEL,
    ProxyClient,
    RedisServer,
    ServerProcess,
    reset_mock,
    run_on,
    standard_tree,
    write_config,
    write_key_file,
)

from tiermux.config import Config, load_config

# No example database in the checkout, and no per-example deadline on a shared 2-core machine.
settings.register_profile("tiermux", database=None, deadline=None)
settings.load_profile("tiermux")


# --- a stuck test ------------------------------------------------------------------------------

# pytest-timeout (set in pyproject.toml) fails a test stuck for two minutes with a signal, and the
# run goes on. A signal can't reach a thread blocked in uvloop's poll, or one waiting on code that
# holds the GIL: a test still stuck a minute later ends the run, printing every thread's stack and
# then its own name last, where the tail of a CI log shows them. Were the GIL never released,
# faulthandler's C watchdog (pyproject.toml) ends the run a minute after that.
STUCK_SECONDS = 180
_stderr = -1  # the terminal's, not the capture's: a copy of fd 2 taken before any test runs


def pytest_configure(config: pytest.Config) -> None:
    global _stderr
    _stderr = os.dup(sys.stderr.fileno())


def _give_up(nodeid: str) -> None:
    frames = sys._current_frames()
    report = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or 0)
        if frame is not None and thread is not threading.current_thread():
            report.append(f"--- thread {thread.name}, most recent call last\n")
            report.extend(traceback.format_stack(frame))
    report.append(f"tests: {nodeid} stuck for {STUCK_SECONDS} s; the run ends here\n")
    os.write(_stderr, "".join(report).encode(errors="replace"))
    os._exit(1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    watchdog = threading.Timer(STUCK_SECONDS, _give_up, args=(item.nodeid,))
    watchdog.daemon = True
    watchdog.start()
    try:
        return (yield)
    finally:
        watchdog.cancel()


# --- mock backends -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def vllm_session() -> Iterator[BackendHandle]:
    handle = run_in_thread(flavor="vllm", model=VLLM_MODEL)
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def cloud_session() -> Iterator[BackendHandle]:
    handle = run_in_thread(flavor="cloud", model=CLOUD_MODEL, api_key=CLOUD_KEY)
    yield handle
    handle.stop()


@pytest.fixture
def vllm(vllm_session: BackendHandle) -> BackendHandle:
    """The session's mock vLLM, reset to default behaviour with nothing recorded."""
    reset_mock(vllm_session)
    return vllm_session


@pytest.fixture
def cloud(cloud_session: BackendHandle) -> BackendHandle:
    """The session's mock cloud API (key ``test-key``), reset to default behaviour."""
    reset_mock(cloud_session)
    return cloud_session


# --- configs -----------------------------------------------------------------------------------


@pytest.fixture
def cloud_key_file(tmp_path: Path) -> Path:
    return write_key_file(tmp_path, CLOUD_KEY)


@pytest.fixture
def config_file(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    """Write a config tree as YAML under ``tmp_path`` and return its path."""
    counter = iter(range(1000))

    def write(tree: dict[str, Any]) -> Path:
        return write_config(tmp_path, tree, f"tiermux-{next(counter)}.yaml")

    return write


@pytest.fixture
def standard_config(
    vllm: BackendHandle,
    cloud: BackendHandle,
    cloud_key_file: Path,
    config_file: Callable[[dict[str, Any]], Path],
) -> Callable[..., Config]:
    """The two-mock config (``local-9b`` then ``frontier``), loaded; keywords go to ``standard_tree``."""

    def make(**options: Any) -> Config:
        return load_config(config_file(standard_tree(vllm.url, cloud.url, cloud_key_file, **options)))

    return make


# --- the app in process ------------------------------------------------------------------------


@pytest.fixture
def proxy_factory() -> Iterator[Callable[[Config], ProxyClient]]:
    """Build in-process clients for configs; each is closed (pools included) after the test."""
    clients: list[ProxyClient] = []

    def make(config: Config) -> ProxyClient:
        client = ProxyClient(config)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def proxy_with(
    vllm: BackendHandle,
    cloud: BackendHandle,
    cloud_key_file: Path,
    config_file: Callable[[dict[str, Any]], Path],
    proxy_factory: Callable[[Config], ProxyClient],
) -> Callable[..., ProxyClient]:
    """An in-process proxy on the two-mock config with top-level sections replaced or added
    (``cache={...}``, ``services={...}``, ...)."""

    def make(**sections: Any) -> ProxyClient:
        tree = standard_tree(vllm.url, cloud.url, cloud_key_file)
        tree.update(sections)
        return proxy_factory(load_config(config_file(tree)))

    return make


@pytest.fixture
def proxy(
    standard_config: Callable[..., Config], proxy_factory: Callable[[Config], ProxyClient]
) -> ProxyClient:
    """The app on the standard config, in process."""
    return proxy_factory(standard_config())


# --- a real server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    vllm_session: BackendHandle, cloud_session: BackendHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """``tiermux serve --workers 2`` on the standard config, shared by the tests of a module."""
    directory = tmp_path_factory.mktemp("server")
    key_file = write_key_file(directory, CLOUD_KEY)
    path = write_config(directory, standard_tree(vllm_session.url, cloud_session.url, key_file))
    process = ServerProcess(path, directory / "serve.log", workers=2).start()
    yield process
    process.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Servers a test starts for itself (own config, or to stop them); stopped after the test."""
    started: list[ServerProcess] = []

    def start(config_path: Path, workers: int = 2) -> ServerProcess:
        process = ServerProcess(config_path, tmp_path / f"serve-{len(started)}.log", workers=workers).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real ``redis-server`` for the distributed mode (each test uses its own key prefix)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


# --- event loops for the hot-path client ---------------------------------------------------------


class Runner:
    """Runs a coroutine to completion on a fresh loop of one kind (``asyncio`` or ``uvloop``)."""

    def __init__(self, loop: str) -> None:
        self.loop = loop

    def __call__(self, coro: Any) -> Any:
        return run_on(self.loop, coro)

    def __repr__(self) -> str:
        return self.loop


@pytest.fixture(params=sorted(LOOPS))
def aio(request: pytest.FixtureRequest) -> Runner:
    """Run the client on both loops: uvloop as in production, asyncio as the reference."""
    return Runner(request.param)
