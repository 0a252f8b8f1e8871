"""Health decisions: when a backend is down, and the order a chain is tried in."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from tiermux.config import BackendConfig
from tiermux.state import HEALTH_FIELDS, Layout, Segment
from tiermux.upstream.backend import Backend
from tiermux.upstream.health import Health


def _backend(name: str, price: float, max_connections: int = 10) -> Backend:
    config = msgspec.convert(
        {
            "name": name,
            "base_url": "http://127.0.0.1:9/v1",
            "model": name,
            "price": {"input": price, "output": price},
            "max_connections": max_connections,
        },
        BackendConfig,
    )
    return Backend(config)


def _health(backends: dict[str, Backend], **options: Any) -> Health:
    segment = Segment.anonymous(Layout({"health": HEALTH_FIELDS * len(backends)}))
    return Health(backends, segment.cells("health"), **options)


@pytest.fixture
def health() -> Health:
    backends = {
        "local-a": _backend("local-a", 0.01),
        "local-b": _backend("local-b", 0.01),
        "cloud": _backend("cloud", 3.0),
    }
    return _health(backends, failure_threshold=3, probe_interval=5.0)


def test_cheapest_first_whatever_the_chain_order(health: Health) -> None:
    assert health.plan(["cloud", "local-a"]) == ["local-a", "cloud"]


def test_equal_prices_balance_by_in_flight_and_never_alternate_with_a_pricier_one(health: Health) -> None:
    chain = ["local-a", "local-b", "cloud"]
    assert health.plan(chain) == chain  # ties keep the chain's order
    health.started("local-a")
    assert health.plan(chain) == ["local-b", "local-a", "cloud"]
    health.started("local-b")
    health.started("local-b")
    assert health.plan(chain) == ["local-a", "local-b", "cloud"]
    # However busy the cheap ones are, the pricier one stays last until they are saturated.
    assert health.plan(chain)[-1] == "cloud"


def test_a_saturated_backend_waits_behind_the_others() -> None:
    backends = {"small": _backend("small", 0.01, max_connections=2), "cloud": _backend("cloud", 3.0)}
    health = _health(backends)
    health.started("small")
    health.started("small")
    assert health.plan(["small", "cloud"]) == ["cloud", "small"]
    health.finished("small")
    assert health.plan(["small", "cloud"]) == ["small", "cloud"]


def test_consecutive_failures_mark_down_and_a_success_resets(health: Health) -> None:
    health.record_failure("local-a", "refused")
    health.record_failure("local-a", "refused")
    health.record_success("local-a", 0.01)  # the count is of consecutive failures
    health.record_failure("local-a", "refused")
    health.record_failure("local-a", "refused")
    assert health.state["local-a"].status == "up"
    health.record_failure("local-a", "refused")
    assert health.state["local-a"].status == "down"
    assert health.plan(["local-a", "local-b", "cloud"]) == ["local-b", "cloud"]
    health.record_success("local-a", 0.02)
    assert health.state["local-a"].status == "up"
    assert health.state["local-a"].as_dict()["errors"] == 5


def test_a_chain_with_nothing_up_is_still_tried_in_order(health: Health) -> None:
    for _ in range(3):
        health.record_failure("cloud", "timeout")
    assert health.plan(["cloud"]) == ["cloud"]


def test_latency_is_a_moving_average(health: Health) -> None:
    health.record_success("cloud", 1.0)
    health.record_success("cloud", 2.0)
    snapshot = {row["name"]: row for row in health.snapshot()}
    assert snapshot["cloud"]["latency_ewma_ms"] == pytest.approx(1100.0)
    assert snapshot["cloud"]["status"] == "up" and snapshot["cloud"]["model"] == "cloud"


def test_probing_brings_back_only_backends_that_connect(health: Health, monkeypatch: Any) -> None:
    for name in ("local-a", "local-b"):
        for _ in range(3):
            health.record_failure(name, "refused")

    async def connects() -> bool:
        return True

    async def refuses() -> bool:
        return False

    monkeypatch.setattr(health.backends["local-a"], "probe", connects)
    monkeypatch.setattr(health.backends["local-b"], "probe", refuses)
    asyncio.run(health.probe_due(now=1))  # not due yet: marked down just now
    assert health.state["local-a"].status == "down"
    later = 2**62
    asyncio.run(health.probe_due(now=later))
    assert health.state["local-a"].status == "up"
    assert health.state["local-b"].status == "down"
    asyncio.run(health.probe_due(now=later))  # this turn is taken: nobody probes twice
    assert health.state["local-b"].status == "down"


def test_workers_sharing_a_segment_share_health() -> None:
    """Two Health objects on the same cells stand for two workers: what one learns, both know."""
    backends = {"local": _backend("local", 0.01), "cloud": _backend("cloud", 3.0)}
    segment = Segment.anonymous(Layout({"health": HEALTH_FIELDS * 2}))
    worker_a = Health(backends, segment.cells("health"), failure_threshold=2)
    worker_b = Health(backends, segment.cells("health"), failure_threshold=2)
    worker_a.record_failure("local", "refused")
    worker_b.record_failure("local", "refused")  # two workers' failures add up
    assert worker_a.state["local"].status == worker_b.state["local"].status == "down"
    assert worker_b.plan(["local", "cloud"]) == ["cloud"]
    worker_a.started("cloud")
    assert worker_b.state["cloud"].as_dict()["requests"] == 1  # counters are shared...
    assert worker_b.state["cloud"].in_flight == 0  # ...in-flight is each worker's own
    worker_b.record_success("local", 0.01)
    assert worker_a.plan(["local", "cloud"]) == ["local", "cloud"]
