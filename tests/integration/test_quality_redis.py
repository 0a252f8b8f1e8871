"""The quality window of a fleet, through a real ``redis-server``: two instances (in process) on one
prefix score into one window per category, a promotion decided by either reaches the other's
routing within about a second (and so does a recovery), each is counted once, and without Redis
each instance goes on with its own window."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from bench.mock_backend import BackendHandle
from tests.integration.test_quality import AGREED, EXTRACTION, OTHER, ask, quality, settle
from tests.support import ProxyClient, RedisServer, standard_tree

from tiermux.config import Config, load_config

FOLLOW_SECONDS = 2.5  # the mirror looks every second


@pytest.fixture
def prefix() -> str:
    return f"q{uuid.uuid4().hex[:8]}"


@pytest.fixture
def pair(
    vllm: BackendHandle,
    cloud: BackendHandle,
    cloud_key_file: Path,
    config_file: Callable[[dict[str, Any]], Path],
    proxy_factory: Callable[[Config], ProxyClient],
    redis_server: RedisServer,
    prefix: str,
) -> Callable[..., tuple[ProxyClient, ProxyClient]]:
    """Two instances on one Redis prefix, each with its own quality settings (over ``quality()``)."""

    def instance(settings: dict[str, Any]) -> ProxyClient:
        tree = standard_tree(vllm.url, cloud.url, cloud_key_file)
        tree["routing"] = {
            "default_tier": "cheap",
            "allow_header_override": True,
            "classifier": {"enabled": True},
        }
        tree["quality"] = quality(**settings)
        tree["cache"] = {"enabled": False}
        tree["state"] = {"backend": "redis", "url": redis_server.url, "prefix": prefix, "retry_interval": 0.3}
        return proxy_factory(load_config(config_file(tree)))

    def make(
        a: dict[str, Any] | None = None, b: dict[str, Any] | None = None
    ) -> tuple[ProxyClient, ProxyClient]:
        return instance(a or {}), instance(b or {})

    return make


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[Any]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def tier_within(client: ProxyClient, tier: str, seconds: float = FOLLOW_SECONDS) -> bool:
    """Whether a request to ``client`` goes to ``tier`` within ``seconds`` (asking every 0.1 s)."""
    deadline = time.monotonic() + seconds
    while True:
        if ask(client).headers["x-tiermux-tier"] == tier:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def extraction(client: ProxyClient) -> dict[str, Any]:
    state: dict[str, Any] = settle(client)["categories"]["extraction"]
    return state


# Instance B checks nothing itself: what it does comes from A, through Redis.
QUIET = {"sample_rate": 0.0, "shadow_rate": 0.0}


def test_a_promotion_decided_on_one_instance_reaches_the_other_and_so_does_the_recovery(
    pair: Callable[..., tuple[ProxyClient, ProxyClient]],
    vllm: BackendHandle,
    cloud: BackendHandle,
    store: Any,
    prefix: str,
) -> None:
    a, b = pair(b=QUIET)
    vllm.configure(text=OTHER)
    cloud.configure(text=AGREED)
    assert ask(b).headers["x-tiermux-tier"] == "cheap"
    for _ in range(5):
        ask(a)
    assert extraction(a)["promoted"]
    assert store.hget(f"{prefix}:quality:promoted", "extraction") is not None
    assert store.llen(f"{prefix}:quality:extraction") == 5
    assert tier_within(b, "capable")
    assert ask(b, {"x-tiermux-category": "summarisation"}).headers["x-tiermux-tier"] == "cheap"  # only it
    # Counted once in the fleet: by the instance that promoted it.
    assert (extraction(a)["promotions"], extraction(b)["promotions"]) == (1, 0)
    assert extraction(b)["promoted"] and extraction(b)["samples"] == 0

    vllm.configure(text=AGREED)  # A's shadow checks find the cheap tier agreeing again
    for _ in range(15):
        ask(a)
        if not extraction(a)["promoted"]:
            break
    assert not extraction(a)["promoted"]
    assert store.hget(f"{prefix}:quality:promoted", "extraction") is None
    assert tier_within(b, "cheap")
    assert (extraction(a)["recoveries"], extraction(b)["recoveries"]) == (1, 0)


def test_the_scores_of_all_instances_make_one_window(
    pair: Callable[..., tuple[ProxyClient, ProxyClient]], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    a, b = pair()  # min_samples 5
    vllm.configure(text=OTHER)
    cloud.configure(text=AGREED)
    for _ in range(3):
        ask(a)
    assert not extraction(a)["promoted"]  # three scores: too few to decide on
    for _ in range(2):
        ask(b)
    state = extraction(b)
    assert state["promoted"] and state["promotions"] == 1 and state["window_samples"] == 2, state
    assert tier_within(a, "capable")
    assert extraction(a)["promotions"] == 0


def test_feedback_goes_to_the_fleets_window(
    pair: Callable[..., tuple[ProxyClient, ProxyClient]], vllm: BackendHandle
) -> None:
    a, b = pair(QUIET, QUIET)
    vllm.configure(text=AGREED)
    ids = [ask(a).headers["x-tiermux-request-id"] for _ in range(5)]
    for request_id in ids:
        answer = a.post("/v1/feedback", json={"request_id": request_id, "score": 0.1})
        assert answer.status_code == 200 and answer.json()["recorded"] is True
    assert extraction(a)["promoted"] and extraction(a)["feedback"] == 5
    assert tier_within(b, "capable")


def test_without_redis_each_instance_checks_on_its_own_and_clients_see_no_errors(
    pair: Callable[..., tuple[ProxyClient, ProxyClient]],
    vllm: BackendHandle,
    cloud: BackendHandle,
    redis_server: RedisServer,
) -> None:
    a, b = pair()
    vllm.configure(text=OTHER)
    cloud.configure(text=AGREED)
    assert ask(b).headers["x-tiermux-tier"] == "cheap"
    redis_server.stop()
    try:
        started = time.monotonic()
        answers = [ask(a, EXTRACTION) for _ in range(5)]  # ask() asserts 200
        assert all(r.json()["choices"][0]["message"]["content"] == OTHER for r in answers)
        assert time.monotonic() - started < 5.0
        state = extraction(a)
        assert state["samples"] == 5 and state["promoted"] and state["promotions"] == 1
        assert ask(a).headers["x-tiermux-tier"] == "capable"
        time.sleep(1.2)  # a mirror look or more: B has nothing to follow
        assert ask(b).headers["x-tiermux-tier"] == "cheap"
    finally:
        redis_server.start()
