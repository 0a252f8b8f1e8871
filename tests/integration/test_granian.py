"""The real multi-worker server under Granian: concurrency across workers, and graceful drain."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from bench.mock_backend import BackendHandle
from tests.support import (
    CLOUD_KEY,
    ServerProcess,
    established_to,
    socket_inodes,
    standard_tree,
    wait_until,
    write_config,
    write_key_file,
)

pytestmark = pytest.mark.granian


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_two_workers_serve_200_concurrent_requests(server: ServerProcess, vllm: BackendHandle) -> None:
    workers = server.worker_pids()
    assert len(workers) == 2, workers
    assert all(_alive(pid) for pid in workers)
    vllm.configure(latency_ms=50)

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
            body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(200)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 200
    assert all(r.headers["x-tiermux-backend"] == "local-9b" for r in responses)
    assert len({r.headers["x-request-id"] for r in responses}) == 200
    assert vllm.stats()["requests"] == 200
    # Each worker keeps its own pool: one that served requests holds kept-alive connections to
    # the backend afterwards. Both must.
    upstream = established_to(vllm.port)
    per_worker = {pid: len(socket_inodes(pid) & upstream.keys()) for pid in workers}
    assert all(count > 0 for count in per_worker.values()), per_worker
    assert server.worker_pids() == workers  # nobody crashed and got respawned


def test_sigterm_drains_in_flight_requests_then_exits(
    vllm_session: BackendHandle,
    cloud_session: BackendHandle,
    vllm: BackendHandle,
    tmp_path: Path,
    server_factory: Callable[..., ServerProcess],
) -> None:
    key_file = write_key_file(tmp_path, CLOUD_KEY)
    tree = standard_tree(vllm.url, cloud_session.url, key_file, server={"drain_timeout": 5})
    proc = server_factory(write_config(tmp_path, tree, "drain.yaml"))
    workers = proc.worker_pids()
    assert len(workers) == 2
    vllm.configure(latency_ms=1500)
    outcome: dict[str, Any] = {}

    def slow_request() -> None:
        try:
            body = {"model": "auto", "messages": [{"role": "user", "content": "take your time"}]}
            outcome["response"] = httpx.post(proc.url + "/v1/chat/completions", json=body, timeout=15)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=slow_request)
    thread.start()
    try:
        assert wait_until(lambda: vllm.stats()["requests"] >= 1, timeout=10), (
            "the request never reached the backend"
        )
        time.sleep(0.3)
        signalled = time.monotonic()
        assert proc.proc is not None
        proc.terminate()

        def refused() -> bool:
            try:
                httpx.get(proc.url + "/health", timeout=0.5)
            except httpx.ConnectError:
                return True
            except httpx.TransportError:
                return False
            return False

        assert wait_until(refused, timeout=3.0), "new connections are still accepted after SIGTERM"
        assert proc.proc.wait(timeout=15) == 0, proc.log()
        exited_after = time.monotonic() - signalled
    finally:
        thread.join(20)
    assert "error" not in outcome, outcome.get("error")
    response = outcome["response"]
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"
    assert exited_after < 5.0 + 1.0, f"took {exited_after:.1f}s to exit with drain_timeout 5"
    assert wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=3)


def test_workers_are_separate_processes(server: ServerProcess) -> None:
    workers = server.worker_pids()
    assert len(workers) == 2
    assert server.proc is not None
    assert server.proc.pid not in workers
    assert all(os.getpgid(pid) == server.proc.pid for pid in workers)


def test_workers_share_backend_health_and_books(tmp_path: Path, vllm: BackendHandle) -> None:
    """A dead backend is marked down once for the whole server: its failures are counted in the
    shared segment, whichever worker saw them, and every worker then skips it. The books, too,
    are the whole server's."""
    from tests.support import backend_entry, closed_port_url

    tree = {
        "backends": [
            backend_entry("dead", closed_port_url(), "m", price={"input": 0.001, "output": 0.001}),
            backend_entry(
                "local-9b", vllm.url, vllm.backend.options.model, price={"input": 0.01, "output": 0.01}
            ),
        ],
        "tiers": {"cheap": ["dead", "local-9b"]},
        "routing": {"classifier": {"enabled": False}},
        "health": {"failure_threshold": 3, "probe_interval": 600},
    }
    path = write_config(tmp_path, tree)
    with ServerProcess(path, tmp_path / "serve.log", workers=2) as server:
        state_file = f"/dev/shm/tiermux-{os.getuid()}-{server.port}.state"
        state_files = [state_file] if os.path.exists(state_file) else []
        assert state_files, "serve creates its segment before the workers start"
        body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(20):  # a fresh connection each time, so that both workers take some
            with httpx.Client(base_url=server.url, timeout=10) as client:
                assert client.post("/v1/chat/completions", json=body).status_code == 200
        views = []
        books = []
        for _ in range(6):
            with httpx.Client(base_url=server.url, timeout=10) as client:
                views.append({row["name"]: row for row in client.get("/v1/backends").json()["data"]})
                books.append(client.get("/stats").json()["total"])
        for total in books:  # whichever worker answers, the books hold every worker's requests
            assert total["requests"] == 20 and total["unmetered_requests"] == 0
            assert total["output_tokens"] == books[0]["output_tokens"] > 0
        for view in views:
            assert view["dead"]["status"] == "down"
            assert view["dead"]["errors"] == 3  # not three per worker
            assert view["local-9b"]["requests"] == 20  # every worker's requests, summed
            assert view["local-9b"]["in_flight_this_worker"] == 0
    assert not os.path.exists(state_file), "serve removes it on exit"
