"""The budget holds under load: a real ``tiermux serve`` with 2 and 4 workers, 2,000 requests
at once against a small daily budget.

Each request names its own ``max_tokens`` and carries a prompt of its own length, so every answer
costs something different. Afterwards:

- spend never passed the limit by more than one request's worst case;
- the recorded spend (the budget's and the books') equals, to the pico-dollar, the sum of the
  costs of the answered requests, computed here from the usage each answer carried;
- nothing stays reserved, and every request was either answered or refused with 429.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from bench.mock_backend import run_in_thread
from tests.support import (
    CLOUD_MODEL,
    VLLM_MODEL,
    ServerProcess,
    backend_entry,
    dearest_worst_case,
    storm,
    varied_chat_bodies,
    wait_until,
)

PICO = 10**12
PRICES = {"local": (0.2, 0.6), "cloud": (3.0, 15.0)}  # USD per 1M tokens
REQUESTS = 2000
LIMIT_USD = 0.4  # about half of what the requests would cost on the cloud backend


def _per_token(price: float) -> int:
    return round(price * 1_000_000)


def _price(backend: str) -> dict[str, float]:
    return {"input": PRICES[backend][0], "output": PRICES[backend][1]}


def _cost(backend: str, usage: dict[str, int]) -> int:
    input_price, output_price = PRICES[backend]
    return usage["prompt_tokens"] * _per_token(input_price) + usage["completion_tokens"] * _per_token(
        output_price
    )


@pytest.mark.parametrize(("workers", "policy"), [(2, "reject"), (4, "downgrade")])
def test_the_budget_holds_under_two_thousand_concurrent_requests(
    workers: int,
    policy: str,
    tmp_path: Path,
    config_file: Callable[[dict[str, Any]], Path],
    server_factory: Callable[..., ServerProcess],
) -> None:
    # Own mocks: slow enough (100 ms) that the requests overlap, with up to 64 tokens an answer.
    local = run_in_thread(flavor="vllm", model=VLLM_MODEL, latency_ms=100, tokens=64)
    cloud = run_in_thread(flavor="vllm", model=CLOUD_MODEL, latency_ms=100, tokens=64)
    try:
        tree = {
            "backends": [
                backend_entry("local", local.url, VLLM_MODEL, price=_price("local")),
                backend_entry("cloud", cloud.url, CLOUD_MODEL, price=_price("cloud")),
            ],
            "tiers": {"cheap": ["local"], "capable": ["cloud"]},
            "routing": {"aliases": {"smart": "capable"}, "classifier": {"enabled": False}},
            "services": {"default": {"budget": {"daily_usd": LIMIT_USD, "policy": policy}}},
        }
        server = server_factory(config_file(tree), workers=workers)
        bodies = varied_chat_bodies(REQUESTS, seed=workers)
        answers = asyncio.run(storm(server.port, bodies))

        statuses = [status for status, _, _ in answers]
        assert set(statuses) <= {200, 429}, sorted(set(statuses))
        answered = [(h["x-tiermux-backend"], json.loads(p)) for s, h, p in answers if s == 200]
        assert answered and statuses.count(429) > 0
        actual = sum(_cost(backend, answer["usage"]) for backend, answer in answered)
        worst = dearest_worst_case(bodies, _per_token(3.0), _per_token(15.0))

        with httpx.Client(base_url=server.url, timeout=10) as client:
            stats = client.get("/stats").json()
        budget = stats["budgets"]["default"]
        assert budget["reserved_usd"] == 0  # every reservation was settled or released
        assert budget["spent_usd"] == actual / PICO  # the same integer sum, divided once
        assert stats["by_service"]["default"]["spend_usd"] == actual / PICO
        assert actual <= round(LIMIT_USD * PICO) + worst
        print(
            f"{workers} workers, {policy}: {len(answered)} answered, {statuses.count(429)} refused, "
            f"spent {actual / PICO:.6f} of {LIMIT_USD} USD, worst case {worst / PICO:.6f}"
        )
        assert stats["total"]["requests"] == len(answered)
        if policy == "downgrade":
            downgraded = sum(1 for backend, _ in answered if backend == "local")
            assert downgraded == budget["downgraded_requests"] > 0
            assert budget["rejected_requests"] == statuses.count(429)
        else:
            assert {backend for backend, _ in answered} == {"cloud"}
            assert budget["rejected_requests"] == statuses.count(429)
    finally:
        local.stop()
        cloud.stop()


def test_a_worker_killed_mid_request_does_not_keep_its_reservations(
    config_file: Callable[[dict[str, Any]], Path], server_factory: Callable[..., ServerProcess]
) -> None:
    cloud = run_in_thread(flavor="vllm", model=CLOUD_MODEL, latency_ms=2000, tokens=8)
    sockets: list[socket.socket] = []
    try:
        tree = {
            "backends": [backend_entry("cloud", cloud.url, CLOUD_MODEL, price=_price("cloud"))],
            "tiers": {"capable": ["cloud"]},
            "routing": {"classifier": {"enabled": False}},
            "services": {"default": {"budget": {"daily_usd": 10.0}}},
        }
        server = server_factory(config_file(tree), workers=2)
        body = b'{"model":"auto","max_tokens":500,"messages":[{"role":"user","content":"hi"}]}'
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        for _ in range(16):  # slow requests, spread over both workers
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(request)
            sockets.append(sock)

        def reserved() -> float:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                value: float = client.get("/stats").json()["budgets"]["default"]["reserved_usd"]
            return value

        assert wait_until(lambda: reserved() > 0, timeout=5)
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)  # its requests never settle
        # The survivor's answers settle theirs; the respawned worker releases the victim's.
        assert wait_until(lambda: reserved() == 0, timeout=15), reserved()
        assert victim not in server.worker_pids()
    finally:
        for sock in sockets:
            sock.close()
        cloud.stop()
