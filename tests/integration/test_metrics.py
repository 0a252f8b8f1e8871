"""``GET /metrics`` and the access log, through the proxy against the mock backends: what is
counted, with which labels, and that the exposition is what Prometheus parses."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from bench.mock_backend import BackendHandle
from prometheus_client.parser import text_string_to_metric_families
from tests.support import ProxyClient

GREEDY = {"model": "fast", "messages": [{"role": "user", "content": "Is 7 prime?"}], "temperature": 0}
SECRET_PROMPT = "my card number is 4111 1111 1111 1111"


@pytest.fixture
def observed(proxy_with: Callable[..., ProxyClient]) -> Callable[..., ProxyClient]:
    return proxy_with


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: ProxyClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (metric, got), value in samples.items() if metric == name and wanted <= got)


def test_requests_are_counted_with_their_route_and_status(
    observed: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    client = observed()
    for _ in range(3):
        assert client.chat(model="fast").status_code == 200
    assert client.chat(model="smart").status_code == 200
    assert client.chat(model="no-such-model").status_code == 404
    vllm.configure(fail_rate=1.0, fail_status=400)
    assert client.chat(model="fast").status_code == 400
    samples = scrape(client)
    assert total(samples, "tiermux_requests_total") == 6
    assert total(samples, "tiermux_requests_total", tier="cheap", backend="local-9b", status="200") == 3
    assert total(samples, "tiermux_requests_total", tier="capable", backend="frontier", status="200") == 1
    assert total(samples, "tiermux_requests_total", tier="none", backend="none", status="404") == 1
    assert total(samples, "tiermux_requests_total", backend="local-9b", status="400") == 1
    assert total(samples, "tiermux_routing_decisions_total") == 5  # the unknown model was never routed
    assert total(samples, "tiermux_request_duration_seconds_count") == 6
    assert total(samples, "tiermux_request_duration_seconds_bucket", tier="cheap", le="+Inf") == 4
    assert total(samples, "tiermux_upstream_duration_seconds_count", backend="local-9b") == 4
    assert total(samples, "tiermux_tokens_total", direction="output", backend="local-9b") > 0
    assert total(samples, "tiermux_cost_usd_total", service="default", backend="frontier") > 0
    assert total(samples, "tiermux_savings_usd_total", service="default") > 0
    assert total(samples, "tiermux_backend_up", backend="local-9b") == 1
    assert total(samples, "tiermux_backend_in_flight") == 0


def test_streams_report_time_to_first_token(observed: Callable[..., ProxyClient]) -> None:
    client = observed()
    assert client.chat(model="fast", stream=True).status_code == 200
    samples = scrape(client)
    assert total(samples, "tiermux_time_to_first_token_seconds_count", backend="local-9b") == 1
    assert total(samples, "tiermux_time_to_first_token_seconds_sum", backend="local-9b") > 0


def test_cache_budgets_and_health_are_exported(
    observed: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    client = observed(services={"default": {"budget": {"daily_usd": 5.0}}})
    for _ in range(3):
        client.chat(GREEDY)
    client.chat(model="fast")  # sampled: bypasses the cache
    client.app.health.mark_down("frontier", "maintenance")
    samples = scrape(client)
    assert total(samples, "tiermux_cache_hits_total") == 2
    assert total(samples, "tiermux_cache_misses_total") == 1
    assert total(samples, "tiermux_cache_bypasses_total") == 1
    assert total(samples, "tiermux_cache_stored_total") == 1
    assert total(samples, "tiermux_budget_limit_usd", service="default") == 5.0
    remaining = total(samples, "tiermux_budget_remaining_usd", service="default")
    assert 0 < remaining < 5.0
    assert total(samples, "tiermux_budget_spent_usd", service="default") == pytest.approx(5.0 - remaining)
    assert total(samples, "tiermux_backend_up", backend="frontier") == 0


def test_label_values_never_come_from_the_request(observed: Callable[..., ProxyClient]) -> None:
    client = observed(services={"billing": {}})
    client.post(
        "/v1/chat/completions",
        json={"model": 'x"}evil', "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-tiermux-service": "billing", "x-tiermux-tier": "made-up"},
    )
    client.chat(model="fast")
    text = client.get("/metrics").text
    assert "evil" not in text and "made-up" not in text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for name, value in sample.labels.items():
                if name == "le":
                    continue
                assert value in {
                    "none", "pinned", "cheap", "capable", "local-9b", "frontier", "default", "billing",
                    "input", "cached_input", "output", "open_qa", "extraction", "classification",
                    "summarisation", "rewriting", "brainstorming", "creative_writing", "reasoning", "code",
                } or value.isdigit() or value == "other", (sample.name, name, value)  # fmt: skip


def test_metrics_can_be_switched_off(observed: Callable[..., ProxyClient]) -> None:
    client = observed(metrics={"enabled": False})
    assert client.chat(model="fast").status_code == 200
    assert client.get("/metrics").status_code == 404


def test_metrics_are_an_admin_endpoint(
    observed: Callable[..., ProxyClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMX_ADMIN", "admin-secret")
    client = observed(auth={"admin_keys": ["${TMX_ADMIN}"]})
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"authorization": "Bearer admin-secret"}).status_code == 200


def test_the_access_log_has_one_line_per_request_and_no_prompt_or_key(
    observed: Callable[..., ProxyClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "access.jsonl"
    monkeypatch.setenv("TMX_CLIENT", "sk-client-secret")
    client = observed(access_log={"enabled": True, "path": str(log)}, auth={"keys": ["${TMX_CLIENT}"]})
    key = {"authorization": "Bearer sk-client-secret"}
    body = {**GREEDY, "messages": [{"role": "user", "content": SECRET_PROMPT}]}
    assert client.post("/v1/chat/completions", json=body, headers=key).status_code == 200
    assert client.post("/v1/chat/completions", json=body, headers=key).status_code == 200
    assert client.post("/v1/chat/completions", json=body).status_code == 401
    text = log.read_text()
    assert SECRET_PROMPT not in text and "sk-client-secret" not in text and "4111" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(line["status"], line.get("cache")) for line in lines] == [
        (200, "MISS"),
        (200, "HIT"),
        (401, None),
    ]
    first = lines[0]
    assert (first["service"], first["tier"], first["backend"]) == ("default", "cheap", "local-9b")
    assert first["category"] == "none"  # the standard config routes without the classifier
    assert first["input_tokens"] > 0 and first["output_tokens"] > 0 and first["cost_usd"] > 0
    assert first["latency_ms"] > 0 and first["endpoint"] == "/v1/chat/completions"
    assert lines[1]["cost_usd"] == 0.0 and lines[1]["output_tokens"] == first["output_tokens"]
    assert lines[2]["backend"] == "none" and lines[2]["ttft_ms"] is None
    assert all(set(line) == set(first) for line in lines)  # the same keys on every line
