"""The app in process (httpx ASGITransport) in front of real mock backends: routing, validation,
the small endpoints, forwarding fidelity, and what clients see when backends fail.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from bench.mock_backend import BackendHandle
from tests.support import (
    CLOUD_KEY,
    CLOUD_MODEL,
    VLLM_MODEL,
    ProxyClient,
    backend_entry,
    closed_port_url,
    header_values,
    recorded_bodies,
    wait_until,
    write_key_file,
)

from tiermux.config import Config, load_config

Build = Callable[..., ProxyClient]


@pytest.fixture
def build(
    vllm: BackendHandle,
    cloud: BackendHandle,
    tmp_path: Path,
    config_file: Callable[[dict[str, Any]], Path],
    proxy_factory: Callable[[Config], ProxyClient],
) -> Build:
    """An app on a config of the test's own: ``build(backends, tiers, server=..., routing=...)``."""

    def make(backends: list[dict[str, Any]], tiers: dict[str, list[str]], **sections: Any) -> ProxyClient:
        sections.setdefault("routing", {"classifier": {"enabled": False}})  # pass-through unless asked
        return proxy_factory(load_config(config_file({"backends": backends, "tiers": tiers, **sections})))

    return make


def _local(vllm: BackendHandle, name: str = "local-9b", **extra: Any) -> dict[str, Any]:
    return backend_entry(name, vllm.url, VLLM_MODEL, **extra)


def _frontier(cloud: BackendHandle, key_file: Path, name: str = "frontier", **extra: Any) -> dict[str, Any]:
    return backend_entry(name, cloud.url, CLOUD_MODEL, api_key_file=str(key_file), **extra)


def _dead(name: str = "dead", **extra: Any) -> dict[str, Any]:
    return backend_entry(name, closed_port_url(), "dead-model", **extra)


def _error(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI error object, after checking the envelope's shape."""
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert set(document) == {"error"}
    error: dict[str, Any] = document["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


def _sent_model(mock: BackendHandle) -> Any:
    return json.loads(recorded_bodies(mock)[-1])["model"]


CHAT = {"messages": [{"role": "user", "content": "hello"}]}


# --- routing -------------------------------------------------------------------------------------


def test_auto_goes_to_the_default_tiers_first_backend(proxy: ProxyClient, vllm: BackendHandle) -> None:
    response = proxy.chat(model="auto")
    assert response.status_code == 200
    assert response.headers["x-tiermux-tier"] == "cheap"
    assert response.headers["x-tiermux-backend"] == "local-9b"
    assert response.json()["model"] == VLLM_MODEL
    assert _sent_model(vllm) == VLLM_MODEL
    assert vllm.recorded()[-1]["path"] == "/v1/chat/completions"


def test_default_tier_setting_is_honoured(
    build: Build, vllm: BackendHandle, cloud: BackendHandle, tmp_path: Path
) -> None:
    key = write_key_file(tmp_path, CLOUD_KEY)
    client = build(
        [_local(vllm), _frontier(cloud, key)],
        {"cheap": ["local-9b"], "capable": ["frontier"]},
        routing={"default_tier": "capable", "classifier": {"enabled": False}},
    )
    response = client.chat(model="auto")
    assert response.status_code == 200
    assert response.headers["x-tiermux-tier"] == "capable"
    assert response.headers["x-tiermux-backend"] == "frontier"


@pytest.mark.parametrize(
    ("model", "tier", "backend", "mock_name"),
    [
        ("fast", "cheap", "local-9b", "vllm"),
        ("smart", "capable", "frontier", "cloud"),
    ],
)
def test_alias(
    proxy: ProxyClient, request: pytest.FixtureRequest, model: str, tier: str, backend: str, mock_name: str
) -> None:
    response = proxy.chat(model=model)
    assert response.status_code == 200
    assert response.headers["x-tiermux-tier"] == tier
    assert response.headers["x-tiermux-backend"] == backend
    mock: BackendHandle = request.getfixturevalue(mock_name)
    assert _sent_model(mock) == (VLLM_MODEL if mock_name == "vllm" else CLOUD_MODEL)


@pytest.mark.parametrize(
    ("model", "backend", "mock_name"),
    [
        (VLLM_MODEL, "local-9b", "vllm"),
        ("local-9b", "local-9b", "vllm"),
        (CLOUD_MODEL, "frontier", "cloud"),
        ("frontier", "frontier", "cloud"),
    ],
)
def test_concrete_model_or_backend_name_is_pinned(
    proxy: ProxyClient, request: pytest.FixtureRequest, model: str, backend: str, mock_name: str
) -> None:
    response = proxy.chat(model=model)
    assert response.status_code == 200
    assert response.headers["x-tiermux-backend"] == backend
    mock: BackendHandle = request.getfixturevalue(mock_name)
    assert _sent_model(mock) == (VLLM_MODEL if mock_name == "vllm" else CLOUD_MODEL)


def test_pinned_backend_does_not_fail_over(
    proxy: ProxyClient, vllm: BackendHandle, cloud: BackendHandle
) -> None:
    vllm.configure(fail_rate=1.0, fail_mode="status", fail_status=503)
    response = proxy.chat(model="local-9b")
    assert response.status_code == 503
    assert response.headers["x-tiermux-backend"] == "local-9b"
    assert cloud.stats()["requests"] == 0


def test_unknown_model_is_404_model_not_found(
    proxy: ProxyClient, vllm: BackendHandle, cloud: BackendHandle
) -> None:
    response = proxy.chat(model="gpt-17-ultra")
    assert response.status_code == 404
    error = _error(response)
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "model"
    assert "gpt-17-ultra" in error["message"]
    assert vllm.stats()["requests"] == 0 and cloud.stats()["requests"] == 0


# --- request validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"model": "auto", "messages": [', id="truncated"),
        pytest.param(b"model=auto", id="not-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"model": 5, "messages": []}', id="model-int"),
        pytest.param(b'{"model": ["auto"], "messages": []}', id="model-list"),
        pytest.param(b'{"model": {"name": "auto"}}', id="model-object"),
        pytest.param(b'[{"model": "auto"}]', id="array"),
        pytest.param(b'"auto"', id="string"),
        pytest.param(b'{"model": "auto"} {"model": "auto"}', id="two-documents"),
    ],
)
def test_malformed_requests_are_400(proxy: ProxyClient, vllm: BackendHandle, body: bytes) -> None:
    response = proxy.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = _error(response)
    assert error["type"] == "invalid_request_error"
    assert vllm.stats()["requests"] == 0


@pytest.mark.parametrize("body", [b'{"messages": []}', b'{"model": null, "messages": []}', b"{}"])
def test_missing_model_is_400(proxy: ProxyClient, body: bytes) -> None:
    response = proxy.post("/v1/chat/completions", content=body)
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] == "model"
    assert "model" in error["message"]


def test_stream_null_is_accepted(proxy: ProxyClient, vllm: BackendHandle) -> None:
    """The OpenAI API declares ``stream`` nullable; ``null`` means the default (no stream)."""
    body = b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": null}'
    response = proxy.post("/v1/chat/completions", content=body)
    assert response.status_code == 200, response.text
    assert recorded_bodies(vllm)[-1] == body.replace(b'"auto"', b'"qwen-9b"')


def test_body_over_the_limit_is_413(build: Build, vllm: BackendHandle) -> None:
    client = build([_local(vllm)], {"only": ["local-9b"]}, server={"max_body_bytes": 2048})
    padding = "x" * 3000
    response = client.chat(messages=[{"role": "user", "content": padding}])
    assert response.status_code == 413
    error = _error(response)
    assert error["code"] == "request_too_large"
    assert vllm.stats()["requests"] == 0


def test_streamed_upload_over_the_limit_is_413(build: Build, vllm: BackendHandle) -> None:
    client = build([_local(vllm)], {"only": ["local-9b"]}, server={"max_body_bytes": 2048})

    async def upload() -> AsyncIterator[bytes]:
        yield b'{"model": "auto", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}]}'

    response = client.post("/v1/chat/completions", content=upload())
    assert response.status_code == 413
    assert _error(response)["code"] == "request_too_large"
    assert vllm.stats()["requests"] == 0


def test_body_at_the_limit_is_accepted(build: Build, vllm: BackendHandle) -> None:
    client = build([_local(vllm)], {"only": ["local-9b"]}, server={"max_body_bytes": 2048})
    head = b'{"model": "auto", "messages": [{"role": "user", "content": "'
    tail = b'"}]}'
    body = head + b"z" * (2048 - len(head) - len(tail)) + tail
    assert len(body) == 2048
    response = client.post("/v1/chat/completions", content=body)
    assert response.status_code == 200
    assert recorded_bodies(vllm)[-1] == body.replace(b'"auto"', b'"qwen-9b"')


def test_streamed_upload_under_the_limit_is_forwarded_whole(proxy: ProxyClient, vllm: BackendHandle) -> None:
    parts = [b'{"model": "auto", ', b'"messages": [{"role": "user", ', b'"content": "in pieces"}]}']

    async def upload() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    response = proxy.post("/v1/chat/completions", content=upload())
    assert response.status_code == 200
    assert recorded_bodies(vllm)[-1] == b"".join(parts).replace(b'"auto"', b'"qwen-9b"')


# --- paths and methods ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/v1", "/v1/chat/completions/", "/v2/chat/completions", "/v1/messages-x"]
)
def test_unknown_path_is_404(proxy: ProxyClient, path: str) -> None:
    response = proxy.post(path, json={"model": "auto"})
    assert response.status_code == 404
    assert _error(response)["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/completions", "POST"),
        ("GET", "/v1/embeddings", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/health", "GET"),
        ("POST", "/ready", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(proxy: ProxyClient, method: str, path: str, allowed: str) -> None:
    response = proxy.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert _error(response)["code"] == "method_not_allowed"


# --- small endpoints -----------------------------------------------------------------------------


def test_models_lists_every_name_a_client_may_send(proxy: ProxyClient) -> None:
    response = proxy.get("/v1/models")
    assert response.status_code == 200
    document = response.json()
    assert document["object"] == "list"
    ids = [card["id"] for card in document["data"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {"auto", "fast", "smart", "local-9b", VLLM_MODEL, "frontier", CLOUD_MODEL}
    assert all(card["object"] == "model" for card in document["data"])


def test_health(proxy: ProxyClient) -> None:
    response = proxy.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_with_a_live_backend(build: Build, vllm: BackendHandle) -> None:
    client = build([_dead(), _local(vllm)], {"only": ["dead", "local-9b"]})
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_not_ready_when_every_backend_is_down(build: Build) -> None:
    client = build([_dead("a"), _dead("b")], {"only": ["a", "b"]})
    response = client.get("/ready")
    assert response.status_code == 503
    assert _error(response)["type"] == "server_error"
    # health is about the process, not the backends
    assert client.get("/health").status_code == 200


def test_completions_forwarded(proxy: ProxyClient, vllm: BackendHandle) -> None:
    body = b'{"model": "auto", "prompt": "Say hi", "max_tokens": 3}'
    response = proxy.post("/v1/completions", content=body)
    assert response.status_code == 200
    document = response.json()
    assert document["object"] == "text_completion"
    assert document["choices"][0]["finish_reason"] == "length"
    record = vllm.recorded()[-1]
    assert (record["method"], record["path"]) == ("POST", "/v1/completions")
    assert recorded_bodies(vllm)[-1] == body.replace(b'"auto"', b'"qwen-9b"')


def test_embeddings_forwarded(proxy: ProxyClient, cloud: BackendHandle) -> None:
    body = b'{"input": ["one", "two"], "model": "smart", "encoding_format": "float"}'
    response = proxy.post("/v1/embeddings", content=body)
    assert response.status_code == 200
    document = response.json()
    assert document["object"] == "list"
    assert [item["index"] for item in document["data"]] == [0, 1]
    assert response.headers["x-tiermux-backend"] == "frontier"
    record = cloud.recorded()[-1]
    assert (record["method"], record["path"]) == ("POST", "/v1/embeddings")
    assert recorded_bodies(cloud)[-1] == body.replace(b'"smart"', b'"big-model"')


def test_stream_forwarded_in_process(proxy: ProxyClient, vllm: BackendHandle) -> None:
    vllm.configure(tokens=4)
    response = proxy.chat(model="auto", stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-tiermux-backend"] == "local-9b"
    events = [line[6:] for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 4


# --- forwarding fidelity -------------------------------------------------------------------------

RICH_BODY = (
    b"{\n"
    b'  "messages" : [\n'
    b'    {"role": "system", "content": "Be terse.\\nUse \\"quotes\\", \\\\ and \\u00e9 \xe2\x9c\x93 \\/"},\n'
    b'    {"role": "user", "content": [\n'
    b'        {"type": "text", "text": "What is in this image? \xf0\x9f\x90\x88 {not: json} ] }"},\n'
    b'        {"type": "image_url",\n'
    b'         "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}\n'
    b"    ]}\n"
    b"  ],\n"
    b'\t"model":\t"auto" ,\n'
    b'  "tools": [{"type": "function", "function": {"name": "get_weather",\n'
    b'     "description": "Weather by city", "parameters": {"type": "object",\n'
    b'     "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],\n'
    b'  "tool_choice": {"type": "function", "function": {"name": "get_weather"}},\n'
    b'  "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "strict": true,\n'
    b'     "schema": {"type": "object", "properties": {"answer": {"type": "string"}}}}},\n'
    b'  "seed": 1234, "logprobs": true, "top_logprobs": 3,\n'
    b'  "stop": ["\\n\\n", "END", "}"],\n'
    b'  "n": 2, "user": "user-\xc3\xa9-42", "temperature": 0.0, "max_tokens": 7,\n'
    b'  "frequency_penalty": -0.5e-1,\n'
    b'  "stream": false, "stream_options": {"include_usage": true},\n'
    b'  "chat_template_kwargs": {"enable_thinking": false, "nested": {"model": "not-this-one"}},\n'
    b'  "metadata": {"model": "nor-this-one"}, "empty": {}, "nothing": null\n'
    b"}\n"
)


def test_rich_body_reaches_the_backend_byte_for_byte(proxy: ProxyClient, vllm: BackendHandle) -> None:
    assert RICH_BODY.count(b'"auto"') == 1
    json.loads(RICH_BODY)  # the fixture itself is valid JSON
    response = proxy.post(
        "/v1/chat/completions", content=RICH_BODY, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    expected = RICH_BODY.replace(b'"auto"', b'"qwen-9b"')
    assert recorded_bodies(vllm) == [expected]
    record = vllm.recorded()[-1]
    assert header_values(record, "content-length") == [str(len(expected))]
    assert header_values(record, "content-type") == ["application/json"]
    document = response.json()
    assert len(document["choices"]) == 2
    assert document["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_failover_forwards_the_same_body_to_the_next_backend(
    proxy: ProxyClient, vllm: BackendHandle, cloud: BackendHandle
) -> None:
    vllm.configure(fail_rate=1.0, fail_mode="status", fail_status=500)
    response = proxy.post("/v1/chat/completions", content=RICH_BODY)
    assert response.status_code == 200
    assert response.headers["x-tiermux-backend"] == "frontier"
    assert recorded_bodies(vllm) == [RICH_BODY.replace(b'"auto"', b'"qwen-9b"')]
    assert recorded_bodies(cloud) == [RICH_BODY.replace(b'"auto"', b'"big-model"')]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            b'{"model":"gpt-x","messages":[],"model":"auto"}',
            b'{"model":"gpt-x","messages":[],"model":"qwen-9b"}',
            id="duplicate-key-last-wins",
        ),
        pytest.param(
            b'{"mod\\u0065l": "auto", "messages": []}',
            b'{"mod\\u0065l": "qwen-9b", "messages": []}',
            id="escaped-key",
        ),
        pytest.param(
            b'{"model": "au\\u0074o", "messages": []}',
            b'{"model": "qwen-9b", "messages": []}',
            id="escaped-value",
        ),
        pytest.param(
            b'{"messages":[{"role":"user","content":"\\"model\\": \\"auto\\""}],"model":"auto"}',
            b'{"messages":[{"role":"user","content":"\\"model\\": \\"auto\\""}],"model":"qwen-9b"}',
            id="lookalike-in-content",
        ),
    ],
)
def test_model_splice_edge_cases(
    proxy: ProxyClient, vllm: BackendHandle, body: bytes, expected: bytes
) -> None:
    response = proxy.post("/v1/chat/completions", content=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-tiermux-backend"] == "local-9b"
    assert recorded_bodies(vllm) == [expected]


def test_backend_key_replaces_the_clients(
    proxy: ProxyClient, vllm: BackendHandle, cloud: BackendHandle
) -> None:
    client_headers = {"authorization": "Bearer client-secret-xyz", "x-api-key": "client-secret-xyz"}
    to_cloud = proxy.post("/v1/chat/completions", json={"model": "smart", **CHAT}, headers=client_headers)
    assert to_cloud.status_code == 200
    record = cloud.recorded()[-1]
    assert header_values(record, "authorization") == [f"Bearer {CLOUD_KEY}"]
    to_local = proxy.post("/v1/chat/completions", json={"model": "fast", **CHAT}, headers=client_headers)
    assert to_local.status_code == 200
    record = vllm.recorded()[-1]
    assert header_values(record, "authorization") == []
    for mock in (cloud, vllm):
        for rec in mock.recorded():
            assert all("client-secret-xyz" not in value for _, value in rec["headers"])


def test_answer_comes_back_unchanged_with_routing_headers(proxy: ProxyClient, cloud: BackendHandle) -> None:
    response = proxy.chat(model="smart")
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    document = response.json()
    assert document["id"] == f"chatcmpl-{request_id}"
    assert document["model"] == CLOUD_MODEL
    assert int(response.headers["content-length"]) == len(response.content)
    assert "openai-processing-ms" in response.headers  # a vendor header of the backend's
    assert response.headers["x-tiermux-tier"] == "capable"
    assert response.headers["x-tiermux-backend"] == "frontier"
    for hop in ("connection", "keep-alive", "transfer-encoding"):
        assert hop not in response.headers


# --- upstream failures ---------------------------------------------------------------------------


def test_closed_port_is_502(build: Build) -> None:
    client = build([_dead()], {"only": ["dead"]})
    response = client.chat()
    assert response.status_code == 502
    error = _error(response)
    assert error["type"] == "upstream_error"
    assert error["code"] == "bad_gateway"
    assert "dead" in error["message"]


def test_closed_port_fails_over_to_the_next_backend(build: Build, vllm: BackendHandle) -> None:
    client = build([_dead(), _local(vllm)], {"only": ["dead", "local-9b"]})
    response = client.chat()
    assert response.status_code == 200
    assert response.headers["x-tiermux-backend"] == "local-9b"
    assert _sent_model(vllm) == VLLM_MODEL


def test_hanging_backend_is_504_after_its_read_timeout(build: Build, vllm: BackendHandle) -> None:
    vllm.configure(fail_rate=1.0, fail_mode="hang")
    client = build([_local(vllm, timeout={"read": 0.5})], {"only": ["local-9b"]})
    started = time.monotonic()
    response = client.chat()
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    error = _error(response)
    assert error["code"] == "upstream_timeout"
    assert elapsed >= 0.45
    assert elapsed < 10


def test_hanging_backend_fails_over(
    build: Build, vllm: BackendHandle, cloud: BackendHandle, tmp_path: Path
) -> None:
    vllm.configure(fail_rate=1.0, fail_mode="hang")
    key = write_key_file(tmp_path, CLOUD_KEY)
    client = build(
        [_local(vllm, timeout={"read": 0.5}), _frontier(cloud, key)], {"cheap": ["local-9b", "frontier"]}
    )
    response = client.chat()
    assert response.status_code == 200
    assert response.headers["x-tiermux-backend"] == "frontier"


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529])
def test_5xx_fails_over(proxy: ProxyClient, vllm: BackendHandle, cloud: BackendHandle, status: int) -> None:
    vllm.configure(fail_rate=1.0, fail_mode="status", fail_status=status)
    response = proxy.chat()
    assert response.status_code == 200
    assert response.headers["x-tiermux-backend"] == "frontier"
    assert vllm.stats()["requests"] == 1
    assert cloud.stats()["requests"] == 1
    # the failed exchange was drained: the connection to the first backend is still usable
    vllm.configure(fail_rate=0.0)
    assert proxy.chat().headers["x-tiermux-backend"] == "local-9b"
    assert vllm.stats()["connections_total"] == 1


@pytest.mark.parametrize("mode", ["reset", "die-mid-stream"])
def test_broken_connection_fails_over(proxy: ProxyClient, vllm: BackendHandle, mode: str) -> None:
    vllm.configure(fail_rate=1.0, fail_mode=mode)
    response = proxy.chat()
    assert response.status_code == 200
    assert response.headers["x-tiermux-backend"] == "frontier"


@pytest.mark.parametrize("mode", ["reset", "die-mid-stream"])
def test_broken_connection_on_a_single_backend_is_502(build: Build, vllm: BackendHandle, mode: str) -> None:
    vllm.configure(fail_rate=1.0, fail_mode=mode)
    client = build([_local(vllm)], {"only": ["local-9b"]})
    response = client.chat()
    assert response.status_code == 502
    assert _error(response)["code"] == "bad_gateway"


def test_single_backend_500_passes_through_unchanged(build: Build, vllm: BackendHandle) -> None:
    vllm.configure(fail_rate=1.0, fail_mode="status", fail_status=500)
    client = build([_local(vllm)], {"only": ["local-9b"]})
    response = client.chat()
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "injected failure (500) from mock backend",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert response.headers["x-request-id"]
    assert response.headers["x-tiermux-backend"] == "local-9b"


def test_last_backend_of_a_chain_answering_5xx_passes_through(
    proxy: ProxyClient, vllm: BackendHandle, cloud: BackendHandle
) -> None:
    vllm.configure(fail_rate=1.0, fail_mode="status", fail_status=500)
    cloud.configure(fail_rate=1.0, fail_mode="status", fail_status=503)
    response = proxy.chat()
    assert response.status_code == 503
    assert response.headers["x-tiermux-backend"] == "frontier"
    assert response.json()["error"]["message"] == "injected failure (503) from mock backend"


def test_4xx_from_a_backend_passes_through_without_failover(
    build: Build, vllm: BackendHandle, cloud: BackendHandle, tmp_path: Path
) -> None:
    wrong = write_key_file(tmp_path, "wrong-key", "wrong.key")
    client = build([_frontier(cloud, wrong), _local(vllm)], {"cheap": ["frontier", "local-9b"]})
    response = client.chat()
    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert response.headers["x-tiermux-backend"] == "frontier"
    assert vllm.stats()["requests"] == 0


@pytest.mark.parametrize("status", [400, 404, 422])
def test_injected_4xx_passes_through(
    proxy: ProxyClient, vllm: BackendHandle, cloud: BackendHandle, status: int
) -> None:
    vllm.configure(fail_rate=1.0, fail_mode="status", fail_status=status)
    response = proxy.chat()
    assert response.status_code == status
    assert response.json()["error"]["message"] == f"injected failure ({status}) from mock backend"
    assert cloud.stats()["requests"] == 0


def test_every_backend_down_is_502_naming_the_last(build: Build) -> None:
    client = build([_dead("first"), _dead("second")], {"only": ["first", "second"]})
    response = client.chat()
    assert response.status_code == 502
    assert "second" in _error(response)["message"]


# --- client keys ---------------------------------------------------------------------------------


@pytest.fixture
def keyed(build: Build, vllm: BackendHandle, monkeypatch: pytest.MonkeyPatch) -> ProxyClient:
    monkeypatch.setenv("TIERMUX_TEST_CLIENT_KEY", "client-key-1")
    return build([_local(vllm)], {"only": ["local-9b"]}, auth={"keys": ["${TIERMUX_TEST_CLIENT_KEY}"]})


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"authorization": "Bearer wrong"}, id="wrong"),
        pytest.param({"authorization": "Basic client-key-1"}, id="not-bearer"),
        pytest.param({"x-api-key": "client-key-1x"}, id="wrong-x-api-key"),
    ],
)
def test_client_without_a_valid_key_is_401(
    keyed: ProxyClient, vllm: BackendHandle, headers: dict[str, str]
) -> None:
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
        response = keyed.request(method, path, json={"model": "auto", **CHAT}, headers=headers)
        assert response.status_code == 401
        assert _error(response)["code"] == "invalid_api_key"
    assert vllm.stats()["requests"] == 0


@pytest.mark.parametrize(
    "headers",
    [{"authorization": "Bearer client-key-1"}, {"x-api-key": "client-key-1"}],
    ids=["bearer", "x-api-key"],
)
def test_client_with_a_valid_key_is_served(
    keyed: ProxyClient, vllm: BackendHandle, headers: dict[str, str]
) -> None:
    response = keyed.post("/v1/chat/completions", json={"model": "auto", **CHAT}, headers=headers)
    assert response.status_code == 200
    assert keyed.get("/v1/models", headers=headers).status_code == 200
    for _, value in vllm.recorded()[-1]["headers"]:
        assert "client-key-1" not in value


def test_probes_need_no_key(keyed: ProxyClient) -> None:
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/ready").status_code == 200


# --- admin keys ----------------------------------------------------------------------------------

ADMIN_PATHS = ("/stats", "/v1/backends")


@pytest.fixture
def administered(build: Build, vllm: BackendHandle, monkeypatch: pytest.MonkeyPatch) -> ProxyClient:
    monkeypatch.setenv("TIERMUX_TEST_CLIENT_KEY", "client-key-1")
    monkeypatch.setenv("TIERMUX_TEST_ADMIN_KEY", "admin-key-1")
    auth = {"keys": ["${TIERMUX_TEST_CLIENT_KEY}"], "admin_keys": ["${TIERMUX_TEST_ADMIN_KEY}"]}
    return build([_local(vllm)], {"only": ["local-9b"]}, auth=auth)


def test_admin_endpoints_need_the_admin_key(administered: ProxyClient) -> None:
    for path in ADMIN_PATHS:
        for headers in ({}, {"authorization": "Bearer client-key-1"}, {"authorization": "Bearer wrong"}):
            response = administered.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert _error(response)["code"] == "invalid_api_key"
        assert administered.get(path, headers={"authorization": "Bearer admin-key-1"}).status_code == 200
        assert administered.get(path, headers={"x-api-key": "admin-key-1"}).status_code == 200
    # The admin key is not a client key.
    chat = {"model": "auto", **CHAT}
    response = administered.post(
        "/v1/chat/completions", json=chat, headers={"authorization": "Bearer admin-key-1"}
    )
    assert response.status_code == 401


def test_without_admin_keys_admin_endpoints_are_closed_beyond_loopback(
    build: Build, vllm: BackendHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERMUX_TEST_CLIENT_KEY", "client-key-1")
    monkeypatch.setenv("TIERMUX_HOST", "0.0.0.0")  # what serve --host 0.0.0.0 tells its workers
    client = build([_local(vllm)], {"only": ["local-9b"]}, auth={"keys": ["${TIERMUX_TEST_CLIENT_KEY}"]})
    for path in ADMIN_PATHS:
        response = client.get(path, headers={"authorization": "Bearer client-key-1"})
        assert response.status_code == 403
        assert _error(response)["code"] == "admin_key_required"
        assert "auth.admin_keys" in _error(response)["message"]
    # The API itself is not affected.
    chat = {"model": "auto", **CHAT}
    assert (
        client.post(
            "/v1/chat/completions", json=chat, headers={"authorization": "Bearer client-key-1"}
        ).status_code
        == 200
    )


def test_on_loopback_without_admin_keys_a_client_key_opens_the_admin_endpoints(keyed: ProxyClient) -> None:
    for path in ADMIN_PATHS:
        assert keyed.get(path).status_code == 401
        assert keyed.get(path, headers={"authorization": "Bearer client-key-1"}).status_code == 200


# --- pools under load ----------------------------------------------------------------------------


def test_backend_max_connections_bounds_concurrent_requests(build: Build, vllm: BackendHandle) -> None:
    vllm.configure(latency_ms=20)
    client = build([_local(vllm, max_connections=2)], {"only": ["local-9b"]})

    async def burst() -> list[httpx.Response]:
        return await asyncio.gather(
            *(client.client.post("/v1/chat/completions", json={"model": "auto", **CHAT}) for _ in range(20))
        )

    responses = client.run(burst())
    assert [r.status_code for r in responses] == [200] * 20
    assert vllm.stats()["requests"] == 20
    assert vllm.stats()["connections_total"] <= 2


def test_ready_while_every_connection_is_busy(build: Build, vllm: BackendHandle) -> None:
    """A backend busy answering is reachable: readiness must not fail because the pool is full."""
    vllm.configure(latency_ms=1500)
    client = build([_local(vllm, max_connections=1)], {"only": ["local-9b"]})

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        slow = asyncio.ensure_future(
            client.client.post("/v1/chat/completions", json={"model": "auto", **CHAT})
        )
        while vllm.stats()["requests"] < 1:
            await asyncio.sleep(0.01)
        ready = await client.client.get("/ready")
        return ready, await slow

    ready, slow = client.run(scenario())
    assert slow.status_code == 200
    assert ready.status_code == 200, ready.text


def test_client_leaving_cancels_the_upstream_exchange(build: Build, vllm: BackendHandle) -> None:
    """Driven with a plain coroutine ``receive`` (servers other than Granian hand out those)."""
    vllm.configure(latency_ms=3000)
    client = build([_local(vllm)], {"only": ["local-9b"]})
    pool = client.app.backends["local-9b"].pool
    before = vllm.stats()["open_connections"]
    body = json.dumps({"model": "auto", **CHAT}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }

    async def scenario() -> list[dict[str, Any]]:
        gone = asyncio.Event()
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        serving = asyncio.ensure_future(client.app(scope, receive, send))
        while vllm.stats()["requests"] < 1:
            await asyncio.sleep(0.01)
        assert pool.open_connections == 1
        gone.set()
        await asyncio.wait_for(serving, 1.5)  # well before the backend's 3 s answer
        assert pool.open_connections == 0
        return sent

    assert client.run(scenario()) == []
    assert wait_until(lambda: vllm.stats()["open_connections"] == before, timeout=2)
