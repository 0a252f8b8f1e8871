"""The cache beyond one process: a real ``tiermux serve`` sharing one call among fifty identical
requests, and instances sharing answers through a real ``redis-server``."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bench.mock_backend import BackendHandle
from tests.support import ProxyClient, RedisServer, ServerProcess, standard_tree, storm, write_config

from tiermux.config import Config, load_config

GREEDY = {"model": "fast", "messages": [{"role": "user", "content": "Is 7 prime?"}], "temperature": 0}


def test_fifty_identical_requests_to_a_server_make_one_upstream_call(
    vllm: BackendHandle,
    cloud: BackendHandle,
    cloud_key_file: Path,
    tmp_path: Path,
    server_factory: Callable[..., ServerProcess],
) -> None:
    # One worker: calls in flight are shared within a worker process (each keeps its own).
    server = server_factory(
        write_config(tmp_path, standard_tree(vllm.url, cloud.url, cloud_key_file)), workers=1
    )
    vllm.configure(latency_ms=400)
    answers = asyncio.run(storm(server.port, [json.dumps(GREEDY).encode()] * 50))
    assert vllm.stats()["requests"] == 1
    assert {status for status, _, _ in answers} == {200}
    outcomes = sorted(headers["x-tiermux-cache"].upper() for _, headers, _ in answers)  # read lower-cased
    assert outcomes == ["DEDUP"] * 49 + ["MISS"]
    assert len({json.loads(body)["id"] for _, _, body in answers}) == 1


@pytest.fixture
def instances(
    vllm: BackendHandle,
    cloud: BackendHandle,
    cloud_key_file: Path,
    config_file: Callable[[dict[str, Any]], Path],
    proxy_factory: Callable[[Config], ProxyClient],
    redis_server: RedisServer,
) -> Callable[..., tuple[ProxyClient, ProxyClient]]:
    """Two instances (two apps, each its own worker) sharing one Redis prefix."""

    def make(**cache: Any) -> tuple[ProxyClient, ProxyClient]:
        tree = standard_tree(vllm.url, cloud.url, cloud_key_file)
        prefix = f"t{uuid.uuid4().hex[:8]}"
        tree["state"] = {"backend": "redis", "url": redis_server.url, "prefix": prefix, "retry_interval": 0.3}
        tree["cache"] = {"shared": True, **cache}
        config = load_config(config_file(tree))
        return proxy_factory(config), proxy_factory(config)

    return make


def _outcome(client: ProxyClient, body: dict[str, Any] = GREEDY) -> str:
    response = client.chat(body)
    assert response.status_code == 200, response.text
    return response.headers["x-tiermux-cache"]


def _settle(client: ProxyClient) -> None:
    """Wait for the background write of the last answer to Redis."""
    assert client.app.cache.shared is not None
    client.run(client.app.cache.shared.drain())


def test_instances_share_answers_through_redis(
    instances: Callable[..., tuple[ProxyClient, ProxyClient]], vllm: BackendHandle
) -> None:
    first, second = instances()
    assert _outcome(first) == "MISS"
    _settle(first)
    assert _outcome(second) == "HIT"  # from Redis, and now kept by the second instance too
    assert _outcome(second) == "HIT"
    assert vllm.stats()["requests"] == 1
    stats = second.get("/stats").json()["cache"]
    assert (stats["hits"], stats["shared_hits"]) == (2, 1)


def test_answers_past_the_shared_size_cap_stay_local(
    instances: Callable[..., tuple[ProxyClient, ProxyClient]], vllm: BackendHandle
) -> None:
    first, second = instances(shared_max_entry_bytes=64)
    assert _outcome(first) == "MISS"
    _settle(first)
    assert _outcome(first) == "HIT"
    assert _outcome(second) == "MISS"
    assert vllm.stats()["requests"] == 2


def test_a_redis_that_goes_away_costs_only_the_sharing(
    instances: Callable[..., tuple[ProxyClient, ProxyClient]], vllm: BackendHandle, redis_server: RedisServer
) -> None:
    first, second = instances()
    redis_server.stop()
    try:
        assert _outcome(first) == "MISS"
        assert _outcome(first) == "HIT"  # the worker's own cache still works
        assert _outcome(second) == "MISS"
    finally:
        redis_server.start()
