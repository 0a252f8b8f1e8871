"""Daily budgets through the proxy: reserve, settle at the booked cost, downgrade or refuse."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bench.mock_backend import BackendHandle
from tests.support import CLOUD_MODEL, VLLM_MODEL, ProxyClient, backend_entry

from tiermux.config import Config, load_config

PICO = 10**12
LOCAL = (5_000, 5_000)  # pico-USD per token: $0.005 / 1M
FRONTIER = (3_000_000, 15_000_000)  # $3 and $15 / 1M


def budget_tree(
    vllm: BackendHandle, cloud: BackendHandle, key_file: Path, local_price: float = 0.005, **budget: Any
) -> dict[str, Any]:
    return {
        "backends": [
            backend_entry(
                "local-9b", vllm.url, VLLM_MODEL, price={"input": local_price, "output": local_price}
            ),
            backend_entry(
                "frontier",
                cloud.url,
                CLOUD_MODEL,
                api_key_file=str(key_file),
                price={"input": 3.0, "output": 15.0},
            ),
        ],
        "tiers": {"cheap": ["local-9b"], "capable": ["frontier"]},
        "routing": {"aliases": {"smart": "capable"}, "classifier": {"enabled": False}},
        "services": {"default": {"budget": budget}} if budget else {},
    }


@pytest.fixture
def budgeted(
    vllm: BackendHandle,
    cloud: BackendHandle,
    cloud_key_file: Path,
    config_file: Callable[[dict[str, Any]], Path],
    proxy_factory: Callable[[Config], ProxyClient],
) -> Callable[..., ProxyClient]:
    def make(local_price: float = 0.005, **budget: Any) -> ProxyClient:
        tree = budget_tree(vllm, cloud, cloud_key_file, local_price, **budget)
        return proxy_factory(load_config(config_file(tree)))

    return make


def _cost(usage: dict[str, int], price: tuple[int, int]) -> int:
    return usage["prompt_tokens"] * price[0] + usage["completion_tokens"] * price[1]


def _budget(client: ProxyClient, service: str = "default") -> dict[str, Any]:
    budget: dict[str, Any] = client.get("/stats").json()["budgets"][service]
    return budget


def test_spend_settles_at_the_booked_cost_and_nothing_stays_reserved(
    budgeted: Callable[..., ProxyClient],
) -> None:
    client = budgeted(daily_usd=10.0)
    answers = [client.chat(model="smart", max_tokens=20 + i).json() for i in range(3)]
    streamed = client.chat(model="smart", max_tokens=7, stream=True)
    assert streamed.status_code == 200
    stats = client.get("/stats").json()
    budget = stats["budgets"]["default"]
    expected = sum(_cost(a["usage"], FRONTIER) for a in answers)
    assert budget["reserved_usd"] == 0
    assert budget["spent_usd"] == stats["by_service"]["default"]["spend_usd"]
    assert budget["spent_usd"] > expected / PICO  # the stream was booked too
    assert budget["remaining_usd"] == pytest.approx(10.0 - budget["spent_usd"], abs=1e-12)
    assert (budget["policy"], budget["store"]) == ("downgrade", "local")


def test_a_request_past_the_budget_is_downgraded_to_the_cheaper_tier(
    budgeted: Callable[..., ProxyClient],
) -> None:
    # The worst case of a frontier request with max_tokens 1000 is at least 1000 x $15/1M = $0.015.
    client = budgeted(daily_usd=0.01, downgrade_tier="cheap")
    answer = client.chat(model="smart", max_tokens=1000)
    assert answer.status_code == 200
    assert answer.headers["x-tiermux-tier"] == "cheap"
    assert answer.headers["x-tiermux-backend"] == "local-9b"
    assert answer.headers["x-tiermux-downgraded-from"] == "capable"
    budget = _budget(client)
    assert budget["downgraded_requests"] == 1 and budget["rejected_requests"] == 0
    assert budget["spent_usd"] == pytest.approx(_cost(answer.json()["usage"], LOCAL) / PICO, abs=0)
    not_downgraded = client.chat(model="auto")
    assert not_downgraded.status_code == 200 and "x-tiermux-downgraded-from" not in not_downgraded.headers


def test_a_request_that_fits_nowhere_is_refused_with_429(budgeted: Callable[..., ProxyClient]) -> None:
    client = budgeted(daily_usd=0.01, policy="reject")
    answer = client.chat(model="smart", max_tokens=1000)
    assert answer.status_code == 429
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exceeded")
    assert "'default'" in error["message"] and "resets in" in error["message"]
    assert 0 < int(answer.headers["retry-after"]) <= 86_400 + 3_600
    budget = _budget(client)
    assert budget["rejected_requests"] == 1 and budget["spent_usd"] == 0
    # A request small enough to fit still goes through.
    assert client.chat(model="smart", max_tokens=10).status_code == 200


def test_a_pinned_model_is_refused_rather_than_swapped(budgeted: Callable[..., ProxyClient]) -> None:
    client = budgeted(daily_usd=0.01)
    answer = client.chat(model="frontier", max_tokens=1000)
    assert answer.status_code == 429
    assert _budget(client)["downgraded_requests"] == 0


def test_a_failed_request_releases_its_reservation(
    budgeted: Callable[..., ProxyClient], cloud: BackendHandle
) -> None:
    client = budgeted(daily_usd=1.0)
    cloud.configure(fail_rate=1.0, fail_mode="status", fail_status=500)
    assert client.chat(model="smart", max_tokens=100).status_code == 500
    cloud.configure(fail_rate=1.0, fail_mode="reset")
    assert client.chat(model="smart", max_tokens=100, stream=True).status_code == 502
    budget = _budget(client)
    assert (budget["spent_usd"], budget["reserved_usd"], budget["remaining_usd"]) == (0, 0, 1.0)


def test_a_request_that_the_backend_refuses_costs_nothing(
    budgeted: Callable[..., ProxyClient], cloud: BackendHandle
) -> None:
    client = budgeted(daily_usd=1.0)
    cloud.configure(fail_rate=1.0, fail_mode="status", fail_status=400)
    answer = client.chat(model="smart")
    assert answer.status_code == 400
    assert _budget(client)["reserved_usd"] == 0 and _budget(client)["spent_usd"] == 0


def test_with_nothing_left_only_free_tiers_serve(budgeted: Callable[..., ProxyClient]) -> None:
    client = budgeted(daily_usd=0.0)
    assert client.chat(model="smart").status_code == 429  # the cheap tier is cheap, not free
    free = budgeted(daily_usd=0.0, local_price=0.0)
    for _ in range(3):
        answer = free.chat(model="smart")
        assert answer.status_code == 200 and answer.headers["x-tiermux-tier"] == "cheap"
    budget = _budget(free)
    assert (budget["downgraded_requests"], budget["spent_usd"], budget["reserved_usd"]) == (3, 0, 0)


def test_services_without_a_budget_are_not_limited(budgeted: Callable[..., ProxyClient]) -> None:
    client = budgeted()
    assert client.chat(model="smart", max_tokens=100_000).status_code == 200
    assert client.get("/stats").json()["budgets"] == {}
