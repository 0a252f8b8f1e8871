"""Spend from real usage, through the proxy: JSON answers, streams that asked for usage, and
streams that did not (tiermux asks, reads, and hands the client the stream it asked for)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from bench.mock_backend import BackendHandle
from tests.support import ProxyClient, recorded_bodies

# The standard config's prices: local-9b 0.005/0.005, frontier 3/15 (USD per 1M tokens).
LOCAL = (0.005, 0.005)
FRONTIER = (3.0, 15.0)


def _events(text: str) -> list[dict[str, object]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def _cost(usage: dict[str, int], price: tuple[float, float]) -> float:
    return (usage["prompt_tokens"] * price[0] + usage["completion_tokens"] * price[1]) / 1e6


def test_a_json_answer_is_booked_at_its_usage(proxy: ProxyClient, vllm: BackendHandle) -> None:
    answer = proxy.chat().json()
    stats = proxy.get("/stats").json()
    total = stats["total"]
    assert total["requests"] == 1 and total["unmetered_requests"] == 0
    assert total["input_tokens"] == answer["usage"]["prompt_tokens"]
    assert total["output_tokens"] == answer["usage"]["completion_tokens"]
    assert total["spend_usd"] == pytest.approx(_cost(answer["usage"], LOCAL), abs=1e-12)
    assert total["baseline_usd"] == pytest.approx(_cost(answer["usage"], FRONTIER), abs=1e-12)
    assert stats["by_backend"]["local-9b"]["requests"] == 1
    assert stats["by_tier"]["cheap"]["requests"] == 1


def test_a_stream_that_did_not_ask_for_usage_is_booked_and_left_as_asked(
    proxy: ProxyClient, vllm: BackendHandle
) -> None:
    response = proxy.chat(stream=True)
    assert response.status_code == 200
    events = _events(response.text)
    assert events and all("usage" not in event or event["usage"] is None for event in events)
    assert response.text.rstrip().endswith("data: [DONE]")
    sent = json.loads(recorded_bodies(vllm)[-1])
    assert sent["stream_options"] == {"include_usage": True}  # tiermux asked the backend
    total = proxy.get("/stats").json()["total"]
    assert total["requests"] == 1 and total["unmetered_requests"] == 0
    assert total["output_tokens"] > 0


def test_a_stream_that_asked_for_usage_gets_it_and_it_is_booked(
    proxy: ProxyClient, vllm: BackendHandle
) -> None:
    response = proxy.chat(stream=True, stream_options={"include_usage": True})
    usage_events = [e for e in _events(response.text) if e.get("usage")]
    assert len(usage_events) == 1
    usage = usage_events[0]["usage"]
    assert isinstance(usage, dict)
    total = proxy.get("/stats").json()["total"]
    assert (total["input_tokens"], total["output_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert json.loads(recorded_bodies(vllm)[-1])["stream_options"] == {"include_usage": True}


def test_failed_answers_are_not_booked(proxy: ProxyClient, vllm: BackendHandle, cloud: BackendHandle) -> None:
    vllm.configure(fail_rate=1.0, fail_mode="status", fail_status=500)
    cloud.configure(fail_rate=1.0, fail_mode="status", fail_status=500)
    assert proxy.chat().status_code == 500
    assert proxy.get("/stats").json()["total"]["requests"] == 0


def test_requests_are_booked_to_the_service_of_their_key_or_header(
    vllm: BackendHandle,
    cloud: BackendHandle,
    cloud_key_file: Any,
    config_file: Any,
    proxy_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.support import standard_tree

    from tiermux.config import load_config

    monkeypatch.setenv("ALPHA_KEY", "alpha-secret")
    monkeypatch.setenv("PLAIN_KEY", "plain-secret")
    tree = standard_tree(vllm.url, cloud.url, cloud_key_file)
    tree["auth"] = {"keys": ["${PLAIN_KEY}"]}
    tree["services"] = {"alpha": {"keys": ["${ALPHA_KEY}"]}, "beta": {}}
    client = proxy_factory(load_config(config_file(tree)))

    def chat(key: str, **headers: str) -> int:
        response = client.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key}", **headers},
        )
        return response.status_code

    assert chat("alpha-secret") == 200
    assert chat("plain-secret") == 200
    assert chat("plain-secret", **{"X-Tiermux-Service": "beta"}) == 200
    assert chat("alpha-secret", **{"X-Tiermux-Service": "beta"}) == 200  # the key's service wins
    assert chat("plain-secret", **{"X-Tiermux-Service": "gamma"}) == 400  # not a configured service
    stats = client.get("/stats", headers={"Authorization": "Bearer plain-secret"}).json()
    assert {name: row["requests"] for name, row in stats["by_service"].items()} == {
        "alpha": 2,
        "default": 1,
        "beta": 1,
    }
    assert client.get("/stats").status_code == 401  # the books need a key
