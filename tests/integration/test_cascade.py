"""The confidence cascade: a cheap answer less sure than its category's threshold (by the logprobs
tiermux asks for) is escalated to the next tier before the client gets anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from bench.mock_backend import BackendHandle
from tests.support import ProxyClient

EXTRACTION = {"x-tiermux-category": "extraction"}
ASKED = {"model": "auto", "messages": [{"role": "user", "content": "Pull out the total."}]}


@pytest.fixture
def cascading(proxy_with: Callable[..., ProxyClient]) -> ProxyClient:
    routing = {"aliases": {"fast": "cheap"}, "allow_header_override": True, "classifier": {"enabled": True}}
    quality = {
        "enabled": True,
        "reference": "frontier",
        "sample_rate": 0.0,
        "cascade": {"extraction": {"threshold": -1.0, "measure": "mean"}},
    }
    return proxy_with(routing=routing, quality=quality, cache={"enabled": False})


def ask(client: ProxyClient, headers: dict[str, str] = EXTRACTION, **fields: Any) -> httpx.Response:
    response = client.post("/v1/chat/completions", json={**ASKED, **fields}, headers=headers)
    assert response.status_code == 200, response.text
    return response


def test_a_sure_answer_stays_on_the_cheap_tier_without_the_logprobs_tiermux_asked_for(
    cascading: ProxyClient, vllm: BackendHandle, cloud: BackendHandle
) -> None:
    vllm.configure(logprob=-0.05)
    answer = ask(cascading)
    assert answer.headers["x-tiermux-tier"] == "cheap"
    assert answer.json()["choices"][0]["logprobs"] is None
    assert cloud.stats()["requests"] == 0
    kept = ask(cascading, logprobs=True)  # asked by the client: left in
    assert kept.json()["choices"][0]["logprobs"]["content"][0]["logprob"] == -0.05


def test_an_unsure_answer_is_escalated_booked_and_counted(
    cascading: ProxyClient, vllm: BackendHandle, cloud: BackendHandle
) -> None:
    vllm.configure(logprob=-2.5)
    answer = ask(cascading)
    assert (answer.headers["x-tiermux-tier"], answer.headers["x-tiermux-backend"]) == ("capable", "frontier")
    assert (vllm.stats()["requests"], cloud.stats()["requests"]) == (1, 1)
    stats = cascading.get("/stats").json()
    assert stats["quality"]["categories"]["extraction"]["escalations"] == 1
    assert stats["by_backend"]["local-9b"]["spend_usd"] > 0  # the unsure answer was paid for too
    assert "tiermux_quality_escalations_total" in cascading.get("/metrics").text
    other = ask(cascading, {"x-tiermux-category": "summarisation"})  # no rule: no cascade
    assert other.headers["x-tiermux-tier"] == "cheap"


def test_streams_are_not_cascaded(cascading: ProxyClient, vllm: BackendHandle) -> None:
    vllm.configure(logprob=-5.0)
    assert ask(cascading, stream=True).headers["x-tiermux-tier"] == "cheap"
