"""Classified routing through the app in process, in front of the two mock backends: the routing
response headers, the dry-run ``/v1/route`` endpoint, pins, aliases, and the override headers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from bench.mock_backend import BackendHandle
from tests.support import CLOUD_MODEL, VLLM_MODEL, ProxyClient, recorded_bodies, standard_tree

from tiermux.config import Config, load_config
from tiermux.routing.categories import CATEGORIES
from tiermux.routing.classifier import SIGNALS
from tiermux.routing.weights import Weights

JSON_EXTRACTION: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "You extract structured data from text. Reply with JSON only."},
        {
            "role": "user",
            "content": "Extract the invoice number, the issue date and the total amount due from this "
            "email:\n\nHi Sam, please find attached invoice INV-20931 dated 3 March 2024. The total due "
            "is EUR 1,284.50, payable within 30 days. Regards, Dana",
        },
    ],
    "response_format": {"type": "json_object"},
}
REASONING = {
    "messages": [
        {
            "role": "user",
            "content": "Analyse the trade-offs between moving our on-premise PostgreSQL cluster to a managed "
            "cloud database and keeping it in-house, compare the total cost of ownership over three years, "
            "the operational risk and the migration effort, and recommend which option we should choose.",
        }
    ]
}
CODE = {
    "messages": [
        {
            "role": "user",
            "content": "This query is slow on a table with 40 million rows, how can I speed it up?\n\n"
            "```sql\nSELECT customer_id, COUNT(*) FROM orders WHERE created_at > now() - interval '30 days' "
            "GROUP BY customer_id ORDER BY 2 DESC LIMIT 10;\n```",
        }
    ]
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_invoice",
            "description": "Fetch an invoice by number",
            "parameters": {"type": "object", "properties": {"number": {"type": "string"}}},
        },
    }
]

# What /v1/route answers, at least (the spec's fields).
ROUTE_FIELDS = {
    "tier",
    "backends",
    "backend",
    "backend_model",
    "category",
    "confidence",
    "score",
    "signals",
    "rules",
    "reasons",
    "probabilities",
}


def _tree(vllm: BackendHandle, cloud: BackendHandle, key_file: Path, **routing: Any) -> dict[str, Any]:
    tree = standard_tree(vllm.url, cloud.url, key_file, classified=True)
    tree["routing"].update(routing)
    return tree


@pytest.fixture
def classified(
    standard_config: Callable[..., Config], proxy_factory: Callable[[Config], ProxyClient]
) -> ProxyClient:
    """The standard config with the classifier on (bundled model, default policy)."""
    return proxy_factory(standard_config(classified=True))


@pytest.fixture
def overridable(
    vllm: BackendHandle,
    cloud: BackendHandle,
    cloud_key_file: Path,
    config_file: Callable[[dict[str, Any]], Path],
    proxy_factory: Callable[[Config], ProxyClient],
) -> ProxyClient:
    """Classified, and honouring the X-Tiermux-Tier and X-Tiermux-Category request headers."""
    tree = _tree(vllm, cloud, cloud_key_file, allow_header_override=True)
    return proxy_factory(load_config(config_file(tree)))


def _routing_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("x-tiermux-")}


def _check_classified_headers(response: httpx.Response, tier: str, backend: str, category: str) -> None:
    headers = _routing_headers(response)
    assert headers["x-tiermux-tier"] == tier
    assert headers["x-tiermux-backend"] == backend
    assert headers["x-tiermux-category"] == category
    assert 0 <= int(headers["x-tiermux-score"]) <= 100


def _error(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert set(document) == {"error"}
    error: dict[str, Any] = document["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# --- response headers --------------------------------------------------------------------------------


def test_json_extraction_goes_cheap_with_routing_headers(
    classified: ProxyClient, vllm: BackendHandle, cloud: BackendHandle
) -> None:
    response = classified.chat(JSON_EXTRACTION)
    assert response.status_code == 200, response.text
    _check_classified_headers(response, "cheap", "local-9b", "extraction")
    assert json.loads(recorded_bodies(vllm)[-1])["model"] == VLLM_MODEL
    assert cloud.stats()["requests"] == 0


def test_routing_headers_on_a_stream(classified: ProxyClient, cloud: BackendHandle) -> None:
    cloud.configure(tokens=3)
    response = classified.chat(REASONING, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    _check_classified_headers(response, "capable", "frontier", "reasoning")
    assert response.text.rstrip().endswith("data: [DONE]")
    assert json.loads(recorded_bodies(cloud)[-1])["model"] == CLOUD_MODEL


def test_fenced_code_goes_capable(classified: ProxyClient, cloud: BackendHandle, vllm: BackendHandle) -> None:
    response = classified.chat(CODE)
    assert response.status_code == 200
    _check_classified_headers(response, "capable", "frontier", "code")
    assert vllm.stats()["requests"] == 0


def test_tools_go_capable_whatever_the_category(classified: ProxyClient, cloud: BackendHandle) -> None:
    body = {**JSON_EXTRACTION, "tools": TOOLS}
    response = classified.chat(body)
    assert response.status_code == 200
    assert response.headers["x-tiermux-tier"] == "capable"
    assert response.headers["x-tiermux-backend"] == "frontier"
    assert json.loads(recorded_bodies(cloud)[-1])["tools"] == TOOLS
    route = classified.post("/v1/route", json={"model": "auto", **body}).json()
    assert route["tier"] == "capable"
    assert "tools" in route["signals"]
    if route["category"] == "extraction":
        assert "signal=tools" in route["reasons"]


def test_completions_are_classified(classified: ProxyClient, vllm: BackendHandle) -> None:
    response = classified.post(
        "/v1/completions", json={"model": "auto", "prompt": "Rewrite more politely: send the report now."}
    )
    assert response.status_code == 200
    headers = _routing_headers(response)
    assert headers["x-tiermux-category"] in CATEGORIES
    assert 0 <= int(headers["x-tiermux-score"]) <= 100
    assert headers["x-tiermux-tier"] in ("cheap", "capable")


def test_embeddings_carry_tier_and_backend_only(classified: ProxyClient) -> None:
    response = classified.post("/v1/embeddings", json={"model": "auto", "input": ["Summarise this please"]})
    assert response.status_code == 200
    headers = _routing_headers(response)
    assert headers.pop("x-tiermux-cache") == "MISS"  # embeddings are always reproducible
    assert headers.pop("x-tiermux-request-id").startswith("tmx-none-cheap-")
    assert headers == {"x-tiermux-tier": "cheap", "x-tiermux-backend": "local-9b"}


def test_a_failed_over_answer_names_the_backend_that_answered(
    classified: ProxyClient, vllm: BackendHandle
) -> None:
    vllm.configure(fail_rate=1.0, fail_mode="status", fail_status=503)
    response = classified.chat(JSON_EXTRACTION)
    assert response.status_code == 200
    _check_classified_headers(response, "cheap", "frontier", "extraction")


# --- what the model name changes --------------------------------------------------------------------


@pytest.mark.parametrize(("model", "backend"), [("local-9b", "local-9b"), (VLLM_MODEL, "local-9b")])
def test_a_pinned_model_is_honoured_when_the_classifier_says_otherwise(
    classified: ProxyClient, vllm: BackendHandle, cloud: BackendHandle, model: str, backend: str
) -> None:
    response = classified.chat({**REASONING, "tools": TOOLS}, model=model)
    assert response.status_code == 200
    assert response.headers["x-tiermux-backend"] == backend
    assert response.headers["x-tiermux-category"] == "reasoning"  # still reported
    assert cloud.stats()["requests"] == 0
    assert vllm.stats()["requests"] == 1


def test_alias_is_a_floor(classified: ProxyClient) -> None:
    smart = classified.chat(JSON_EXTRACTION, model="smart")
    assert (smart.headers["x-tiermux-tier"], smart.headers["x-tiermux-backend"]) == ("capable", "frontier")
    assert smart.headers["x-tiermux-category"] == "extraction"
    fast = classified.chat(REASONING, model="fast")  # a floor, not a ceiling
    assert fast.headers["x-tiermux-tier"] == "capable"
    route = classified.post("/v1/route", json={"model": "smart", **JSON_EXTRACTION}).json()
    assert route["reasons"] == ["category=extraction", "model_floor"]


def test_classifier_off_sends_auto_to_the_default_tier(proxy: ProxyClient, vllm: BackendHandle) -> None:
    response = proxy.chat({**REASONING, "tools": TOOLS})
    assert response.status_code == 200
    assert response.headers["x-tiermux-tier"] == "cheap"
    assert response.headers["x-tiermux-backend"] == "local-9b"
    route = proxy.post("/v1/route", json={"model": "auto", **REASONING}).json()
    assert route["reasons"] == ["default_tier"]
    assert route["category"] is None


def test_weights_from_the_config_are_used(
    vllm: BackendHandle,
    cloud: BackendHandle,
    cloud_key_file: Path,
    tmp_path: Path,
    config_file: Callable[[dict[str, Any]], Path],
    proxy_factory: Callable[[Config], ProxyClient],
) -> None:
    """A model that calls everything creative writing: every chat goes capable, classified so."""
    bias = [6.0 if c == "creative_writing" else 0.0 for c in CATEGORIES]
    Weights(list(CATEGORIES), bias, 1.0, bytes(16 * len(CATEGORIES))).save(tmp_path / "poet.tmxw")
    tree = _tree(vllm, cloud, cloud_key_file, classifier={"enabled": True, "weights": "poet.tmxw"})
    client = proxy_factory(load_config(config_file(tree)))
    response = client.chat(JSON_EXTRACTION)
    _check_classified_headers(response, "capable", "frontier", "creative_writing")


# --- override headers -------------------------------------------------------------------------------


def test_tier_header_overrides_when_allowed(overridable: ProxyClient, cloud: BackendHandle) -> None:
    response = overridable.post(
        "/v1/chat/completions",
        json={"model": "auto", **JSON_EXTRACTION},
        headers={"X-Tiermux-Tier": "capable"},
    )
    assert response.status_code == 200
    _check_classified_headers(response, "capable", "frontier", "extraction")
    assert cloud.stats()["requests"] == 1


def test_category_header_overrides_when_allowed(overridable: ProxyClient) -> None:
    response = overridable.post(
        "/v1/chat/completions",
        json={"model": "auto", **JSON_EXTRACTION},
        headers={"X-Tiermux-Category": "code"},
    )
    assert response.status_code == 200
    _check_classified_headers(response, "capable", "frontier", "code")
    route = overridable.post(
        "/v1/route", json={"model": "auto", **JSON_EXTRACTION}, headers={"X-Tiermux-Category": "code"}
    ).json()
    assert route["category"] == "code"
    assert route["confidence"] == 1.0
    assert "header_category" in route["rules"]


@pytest.mark.parametrize(
    ("header", "value", "param"),
    [("X-Tiermux-Tier", "gold", "x-tiermux-tier"), ("X-Tiermux-Category", "poetry", "x-tiermux-category")],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/route"])
def test_unknown_override_values_are_400(
    overridable: ProxyClient,
    vllm: BackendHandle,
    cloud: BackendHandle,
    header: str,
    value: str,
    param: str,
    path: str,
) -> None:
    response = overridable.post(path, json={"model": "auto", **JSON_EXTRACTION}, headers={header: value})
    assert response.status_code == 400
    error = _error(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert value in error["message"]
    assert vllm.stats()["requests"] == 0 and cloud.stats()["requests"] == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Tiermux-Tier": "capable", "X-Tiermux-Category": "code"},
        {"X-Tiermux-Tier": "gold", "X-Tiermux-Category": "poetry"},
    ],
    ids=["valid", "invalid"],
)
def test_override_headers_are_ignored_unless_allowed(
    classified: ProxyClient, vllm: BackendHandle, headers: dict[str, str]
) -> None:
    response = classified.post(
        "/v1/chat/completions", json={"model": "auto", **JSON_EXTRACTION}, headers=headers
    )
    assert response.status_code == 200
    _check_classified_headers(response, "cheap", "local-9b", "extraction")
    assert vllm.stats()["requests"] == 1


# --- POST /v1/route ----------------------------------------------------------------------------------


def test_route_is_a_dry_run(classified: ProxyClient, vllm: BackendHandle, cloud: BackendHandle) -> None:
    response = classified.post("/v1/route", json={"model": "auto", **REASONING})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert set(answer) >= ROUTE_FIELDS
    assert answer["tier"] == "capable"
    assert answer["backends"] == ["frontier"]
    assert (answer["backend"], answer["backend_model"]) == ("frontier", CLOUD_MODEL)
    assert answer["category"] == "reasoning"
    assert answer["reasons"][0] == "category=reasoning"
    assert 0 < answer["confidence"] <= 1
    assert isinstance(answer["score"], int) and 0 <= answer["score"] <= 100
    assert set(answer["signals"]) <= set(SIGNALS)
    assert set(answer["probabilities"]) == set(CATEGORIES)
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert answer["pinned"] is False
    # no backend was called, nor even connected to
    for mock in (vllm, cloud):
        stats = mock.stats()
        assert stats["requests"] == 0
        assert stats["connections_total"] == 0


def test_route_agrees_with_the_forwarded_request(classified: ProxyClient) -> None:
    for body in (JSON_EXTRACTION, REASONING, CODE):
        answer = classified.post("/v1/route", json={"model": "auto", **body}).json()
        response = classified.chat(body)
        assert response.headers["x-tiermux-tier"] == answer["tier"]
        assert response.headers["x-tiermux-backend"] == answer["backend"]
        assert response.headers["x-tiermux-category"] == answer["category"]
        assert int(response.headers["x-tiermux-score"]) == answer["score"]


def test_route_names_the_backend_health_would_pick(classified: ProxyClient) -> None:
    body = {"model": "auto", **JSON_EXTRACTION}
    assert classified.post("/v1/route", json=body).json()["backend"] == "local-9b"
    classified.app.health.mark_down("local-9b", "(test)")
    answer = classified.post("/v1/route", json=body).json()
    assert answer["backends"] == ["local-9b", "frontier"]  # the chain is the tier's
    assert (answer["backend"], answer["backend_model"]) == ("frontier", CLOUD_MODEL)  # but it's down


def test_route_for_a_pinned_model_and_a_completion(classified: ProxyClient, vllm: BackendHandle) -> None:
    pinned = classified.post("/v1/route", json={"model": "frontier", **JSON_EXTRACTION}).json()
    assert (pinned["pinned"], pinned["backends"], pinned["reasons"]) == (True, ["frontier"], ["pinned"])
    assert pinned["category"] == "extraction"
    completion = classified.post(
        "/v1/route", json={"model": "auto", "prompt": "Write a haiku about rain."}
    ).json()
    assert completion["category"] in CATEGORIES
    assert vllm.stats()["requests"] == 0


def test_route_of_a_body_the_classifier_cannot_read_is_unclassified(
    classified: ProxyClient, vllm: BackendHandle
) -> None:
    """Messages in a shape the classifier can't read: forwarded as before, to the default tier."""
    response = classified.post("/v1/route", content=b'{"model": "auto", "messages": "hi"}')
    assert response.status_code == 200
    decision = response.json()
    assert decision["category"] is None
    assert decision["tier"] == "cheap"
    assert decision["reasons"] == ["default_tier"]
    forwarded = classified.post("/v1/chat/completions", content=b'{"model": "auto", "messages": "hi"}')
    assert forwarded.status_code == 200  # the mock takes it; a real backend would judge it
    assert "x-tiermux-category" not in forwarded.headers


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"model": "gpt-17", "messages": []}', 404),
        (b'{"model": "auto", "messages": [', 400),
        (b'{"messages": []}', 400),
        (b'{"model": 7, "messages": []}', 400),
    ],
    ids=["unknown-model", "truncated", "no-model", "model-not-string"],
)
def test_route_errors(classified: ProxyClient, body: bytes, status: int) -> None:
    response = classified.post("/v1/route", content=body)
    assert response.status_code == status
    _error(response)


def test_route_is_post_only(classified: ProxyClient) -> None:
    response = classified.get("/v1/route")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
