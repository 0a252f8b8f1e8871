"""Distributed mode against a real ``redis-server``: instances share budgets and health, and go on
(or fail closed) when Redis goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from bench.mock_backend import BackendHandle, run_in_thread
from tests.support import (
    CLOUD_MODEL,
    VLLM_MODEL,
    ProxyClient,
    RedisServer,
    ServerProcess,
    backend_entry,
    dearest_worst_case,
    storm,
    varied_chat_bodies,
    wait_until,
)

from tiermux.config import Config, load_config

PICO = 10**12
CLOUD_PRICE = (3.0, 15.0)


def _tree(
    local: BackendHandle, cloud: BackendHandle, redis_url: str, prefix: str, **state: Any
) -> dict[str, Any]:
    return {
        "backends": [
            backend_entry("local", local.url, VLLM_MODEL, price={"input": 0.2, "output": 0.6}),
            backend_entry(
                "cloud",
                cloud.url,
                CLOUD_MODEL,
                price=dict(zip(("input", "output"), CLOUD_PRICE, strict=True)),
            ),
        ],
        "tiers": {"cheap": ["local"], "capable": ["cloud"]},
        "routing": {"aliases": {"smart": "capable"}, "classifier": {"enabled": False}},
        "health": {"failure_threshold": 2, "probe_interval": 30},
        "services": {"default": {"budget": {"daily_usd": 0.05, "policy": "reject"}}, "batch": {}},
        "state": {"backend": "redis", "url": redis_url, "prefix": prefix, "retry_interval": 0.3, **state},
    }


@pytest.fixture
def mocks() -> Iterator[tuple[BackendHandle, BackendHandle]]:
    local = run_in_thread(flavor="vllm", model=VLLM_MODEL, tokens=64)
    cloud = run_in_thread(flavor="vllm", model=CLOUD_MODEL, tokens=64)
    yield local, cloud
    local.stop()
    cloud.stop()


@pytest.fixture
def fleet(
    mocks: tuple[BackendHandle, BackendHandle],
    redis_server: RedisServer,
    config_file: Callable[[dict[str, Any]], Path],
    proxy_factory: Callable[[Config], ProxyClient],
) -> Callable[..., ProxyClient]:
    """Instances of tiermux (in process) on one Redis prefix, fresh for the test."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"

    def instance(**state: Any) -> ProxyClient:
        return proxy_factory(load_config(config_file(_tree(*mocks, redis_server.url, prefix, **state))))

    return instance


def _budget(client: ProxyClient) -> dict[str, Any]:
    budget: dict[str, Any] = client.get("/stats").json()["budgets"]["default"]
    return budget


def _cost(usage: dict[str, int]) -> int:
    return usage["prompt_tokens"] * round(CLOUD_PRICE[0] * 1e6) + usage["completion_tokens"] * round(
        CLOUD_PRICE[1] * 1e6
    )


def test_two_instances_share_one_budget(fleet: Callable[..., ProxyClient]) -> None:
    first, second = fleet(), fleet()
    spent = 0
    answers = 0
    for i in range(200):  # alternate until the shared budget refuses
        client = first if i % 2 else second
        answer = client.chat(model="smart", max_tokens=64)
        if answer.status_code == 429:
            break
        assert answer.status_code == 200
        spent += _cost(answer.json()["usage"])
        answers += 1
    else:
        pytest.fail("the shared budget never ran out")
    assert answers >= 2  # both instances spent from it
    for client in (first, second):
        budget = client.get("/stats").json()["budgets"]["default"]
        assert budget["store"] == "redis"
        assert budget["spent_usd"] == spent / PICO  # each sees the fleet's spend, not its own
        assert budget["reserved_usd"] == 0
        assert budget["rejected_requests"] == 1


def test_when_redis_goes_away_local_state_serves_on_and_books_catch_up(
    fleet: Callable[..., ProxyClient], redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = fleet()
    assert client.chat(model="smart", max_tokens=8).status_code == 200
    before = client.get("/stats").json()["budgets"]["default"]["spent_usd"]
    redis_server.stop()
    try:
        with caplog.at_level("WARNING", logger="tiermux.state"):
            answer = client.chat(model="smart", max_tokens=8)
            assert answer.status_code == 200  # served, on this machine's budget
            budget = client.get("/stats").json()["budgets"]["default"]
            assert budget["store"] == "local (redis unreachable)"
        assert any("unreachable" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    finally:
        redis_server.start()
    # Back after the retry interval; the shared books again, with the outage's local spend apart.
    assert wait_until(
        lambda: client.get("/stats").json()["budgets"]["default"]["store"] == "redis", timeout=5
    )
    assert client.chat(model="smart", max_tokens=8).status_code == 200
    assert client.get("/stats").json()["budgets"]["default"]["spent_usd"] > 0
    assert before > 0


def test_fail_closed_refuses_budgeted_requests_while_redis_is_away(
    fleet: Callable[..., ProxyClient], redis_server: RedisServer
) -> None:
    client = fleet(on_failure="closed")
    redis_server.stop()
    try:
        answer = client.chat(model="smart", max_tokens=8)
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "budget_unavailable"
        # A service without a budget does not depend on Redis.
        unbudgeted = client.post(
            "/v1/chat/completions",
            json={"model": "smart", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-tiermux-service": "batch"},
        )
        assert unbudgeted.status_code == 200
    finally:
        redis_server.start()
    assert wait_until(lambda: client.chat(model="smart", max_tokens=8).status_code == 200, timeout=5)


def test_a_settlement_redis_missed_is_sent_when_it_answers_again(
    fleet: Callable[..., ProxyClient], redis_server: RedisServer, mocks: tuple[BackendHandle, BackendHandle]
) -> None:
    client = fleet()
    _, cloud = mocks
    cloud.configure(latency_ms=500)
    admin = redis.Redis.from_url(redis_server.url)

    async def answer_while_redis_is_paused() -> httpx.Response:
        body = {"model": "smart", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
        request = asyncio.ensure_future(client.client.post("/v1/chat/completions", json=body))
        await asyncio.sleep(0.2)  # reserved in Redis; the answer is still on its way
        await asyncio.to_thread(admin.client_pause, 1200)  # Redis stops answering for 1.2 s
        return await request  # booked while Redis is silent: the settlement waits

    slow = client.run(answer_while_redis_is_paused())
    admin.close()
    assert slow.status_code == 200
    cloud.configure(latency_ms=0)
    assert wait_until(
        lambda: client.get("/stats").json()["budgets"]["default"]["store"] == "redis", timeout=5
    )
    fast = client.chat(model="smart", max_tokens=8)
    assert fast.status_code == 200
    expected = (_cost(slow.json()["usage"]) + _cost(fast.json()["usage"])) / PICO
    assert wait_until(
        lambda: client.get("/stats").json()["budgets"]["default"]["spent_usd"] == expected, timeout=5
    )
    assert client.get("/stats").json()["budgets"]["default"]["reserved_usd"] == 0


def test_a_backend_one_instance_finds_down_is_down_for_the_other(
    fleet: Callable[..., ProxyClient], mocks: tuple[BackendHandle, BackendHandle]
) -> None:
    first, second = fleet(), fleet()
    local, _ = mocks

    def status(client: ProxyClient) -> str:
        rows = client.get("/v1/backends").json()["data"]
        return str(next(row["status"] for row in rows if row["name"] == "local"))

    assert first.chat(model="local").status_code == 200
    assert second.chat(model="local").status_code == 200  # both running, mirrors started
    local.configure(fail_rate=1.0, fail_mode="status", fail_status=503)
    for _ in range(2):
        first.chat(model="local")
    assert status(first) == "down"
    assert wait_until(lambda: status(second) == "down", timeout=5)  # learnt through Redis
    # One instance seeing it answer again brings it back for the other.
    local.configure(fail_rate=0.0)
    first.app.health.bring_up("local", "test: answered")
    assert wait_until(lambda: status(second) == "up", timeout=5)


def test_two_serves_share_a_budget_under_two_thousand_concurrent_requests(
    mocks: tuple[BackendHandle, BackendHandle],
    redis_server: RedisServer,
    config_file: Callable[[dict[str, Any]], Path],
    server_factory: Callable[..., ServerProcess],
) -> None:
    local, cloud = mocks
    cloud.configure(latency_ms=100)
    tree = _tree(local, cloud, redis_server.url, f"test-{uuid.uuid4().hex[:8]}")
    tree["services"]["default"]["budget"]["daily_usd"] = 0.3
    # Six processes and 2,000 connections on two cores: Redis answers late, not never.
    tree["state"]["timeout"] = 10
    path = config_file(tree)
    servers = [server_factory(path, workers=2), server_factory(path, workers=2)]
    bodies = varied_chat_bodies(2000, seed=7)

    async def both() -> list[tuple[int, dict[str, str], bytes]]:
        halves = await asyncio.gather(
            storm(servers[0].port, bodies[::2]), storm(servers[1].port, bodies[1::2])
        )
        return halves[0] + halves[1]

    answers = asyncio.run(both())
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 429}
    answered = [json.loads(payload) for status, _, payload in answers if status == 200]
    assert answered and statuses.count(429) > 0
    actual = sum(_cost(answer["usage"]) for answer in answered)
    worst = dearest_worst_case(bodies, 3_000_000, 15_000_000)
    assert actual <= round(0.3 * PICO) + worst
    for server in servers:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            budget = client.get("/stats").json()["budgets"]["default"]
        assert budget["store"] == "redis"
        assert budget["spent_usd"] == actual / PICO  # the fleet's spend, exactly
        assert budget["reserved_usd"] == 0
        assert budget["rejected_requests"] == statuses.count(429)


def test_a_reservation_whose_caller_left_mid_call_is_released(
    fleet: Callable[..., ProxyClient], redis_server: RedisServer
) -> None:
    client = fleet()
    store = client.app.budgets.store
    day = client.app.budgets.clock.today()
    admin = redis.Redis.from_url(redis_server.url)

    async def cancel_while_redis_is_paused() -> tuple[int, int, int, int]:
        await asyncio.to_thread(admin.client_pause, 500)  # the reserve call waits on Redis
        caller = asyncio.ensure_future(store.reserve("default", day, 1_000, 10**12))
        await asyncio.sleep(0.1)
        caller.cancel()  # the client left (or the worker shuts down) mid-call
        with contextlib.suppress(asyncio.CancelledError):
            await caller
        await asyncio.sleep(1.0)  # Redis answers: the reservation is made, then released
        totals: tuple[int, int, int, int] = await store.totals("default", day)
        return totals

    spent, committed, _, _ = client.run(cancel_while_redis_is_paused())
    admin.close()
    assert (spent, committed) == (0, 0)


def test_a_shutdown_step_that_fails_still_leaves_no_redis_connection_open(
    fleet: Callable[..., ProxyClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = fleet()
    assert client.chat(model="smart", max_tokens=8).status_code == 200  # connections, mirror running
    link = client.app.redis
    assert link is not None

    async def broken_close() -> None:
        raise RuntimeError("health could not close")

    client.app.health.close = broken_close  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="tiermux"):
        client.close()  # fails the test if a connection is left open for the loop to find
    assert any("closing the rest" in r.getMessage() for r in caplog.records)
    assert link.closed and link.away  # and nothing asks Redis any more


def test_the_health_mirror_outlives_a_key_of_another_type(
    fleet: Callable[..., ProxyClient],
    mocks: tuple[BackendHandle, BackendHandle],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = fleet(), fleet()
    assert first.app.redis is not None
    key = first.app.redis.key("health")
    admin = redis.Redis.from_url(redis_server.url)
    try:
        with caplog.at_level("ERROR", logger="tiermux.state"):
            admin.set(key, "not a hash")  # every look fails with WRONGTYPE
            assert first.chat(model="local").status_code == 200
            assert second.chat(model="local").status_code == 200  # both mirrors running
            assert wait_until(
                lambda: sum("sharing backend health" in r.getMessage() for r in caplog.records) >= 2,
                timeout=5,
            )
        admin.delete(key)
    finally:
        admin.close()
    # Both mirrors are still at work: a backend one instance finds down is down for the other.
    mocks[0].configure(fail_rate=1.0, fail_mode="status", fail_status=503)
    for _ in range(2):
        first.chat(model="local")
    assert wait_until(lambda: second.app.health.state["local"].down, timeout=5)
