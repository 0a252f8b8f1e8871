"""Anthropic's Messages API through tiermux, in process: both dialects in and out, translation
both ways, errors in the client's shape, key rotation under 429s, retries, and the cache, the
books and the metrics for ``/v1/messages`` as for OpenAI requests."""

from __future__ import annotations

import base64
import http.server
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bench.mock_backend import BackendHandle, run_in_thread
from tests.support import VLLM_MODEL, ProxyClient, backend_entry, header_values, reset_mock

from tiermux.config import Config, load_config

CLAUDE_MODEL = "claude-mock"
KEYS = ("sk-ant-first-0001", "sk-ant-second-0002", "sk-ant-third-0003")
ENV = {"KEY_1": KEYS[0], "KEY_2": KEYS[1], "KEY_3": KEYS[2]}
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "client-key"}
HELLO = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def claude_session() -> Iterator[BackendHandle]:
    handle = run_in_thread(flavor="anthropic", model=CLAUDE_MODEL, api_keys=KEYS)
    yield handle
    handle.stop()


@pytest.fixture
def claude(claude_session: BackendHandle) -> BackendHandle:
    reset_mock(claude_session)
    return claude_session


@pytest.fixture
def make(
    vllm: BackendHandle,
    claude: BackendHandle,
    config_file: Callable[[dict[str, Any]], Path],
    proxy_factory: Callable[[Config], ProxyClient],
) -> Callable[..., ProxyClient]:
    """A proxy with a local vLLM (tier ``local``, alias ``cheap``) and an Anthropic backend with
    three keys (tier ``claude``, alias ``smart``); keywords change the Anthropic backend."""

    def build(
        tiers: dict[str, list[str]] | None = None,
        routing: dict[str, Any] | None = None,
        quality: dict[str, Any] | None = None,
        cache: dict[str, Any] | None = None,
        **claude_fields: Any,
    ) -> ProxyClient:
        fields: dict[str, Any] = {"type": "anthropic", "api_keys": ["${KEY_1}", "${KEY_2}", "${KEY_3}"]}
        fields["retry"] = {"backoff": 0.01}
        fields.update(claude_fields)
        tree = {
            "backends": [
                backend_entry("local-9b", vllm.url, VLLM_MODEL),
                backend_entry("claude", claude.url, CLAUDE_MODEL, **fields),
            ],
            "tiers": tiers or {"local": ["local-9b"], "claude": ["claude"]},
            "routing": routing
            or {"aliases": {"cheap": "local", "smart": "claude"}, "classifier": {"enabled": False}},
        }
        tree.update({"quality": quality} if quality else {})
        tree.update({"cache": cache} if cache else {})
        return proxy_factory(load_config(config_file(tree), ENV))

    return build


def messages(client: ProxyClient, **body: Any) -> httpx.Response:
    payload: dict[str, Any] = {"model": "smart", "max_tokens": 64, "messages": HELLO, **body}
    return client.post("/v1/messages", json=payload, headers=ANTHROPIC_HEADERS)


def chat(client: ProxyClient, **body: Any) -> httpx.Response:
    payload: dict[str, Any] = {"model": "smart", "messages": HELLO, **body}
    return client.post("/v1/chat/completions", json=payload)


def events(data: bytes) -> list[tuple[str, Any]]:
    """An Anthropic event stream as (event name, parsed data) pairs."""
    found = []
    for block in data.decode().split("\n\n"):
        name, payload = "", None
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                payload = json.loads(line[5:])
        if name:
            found.append((name, payload))
    return found


def chunks(data: bytes) -> list[Any]:
    """An OpenAI stream's data payloads (``[DONE]`` as the string)."""
    lines = [line[5:].strip() for line in data.decode().splitlines() if line.startswith("data:")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def sent(mock: BackendHandle) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """What the mock received: path, headers, JSON body."""
    return [
        (r["path"], {k.lower(): v for k, v in r["headers"]}, json.loads(base64.b64decode(r["body_b64"])))
        for r in mock.recorded()
    ]


def anthropic_error(response: httpx.Response) -> dict[str, Any]:
    document = response.json()
    assert document["type"] == "error" and set(document) == {"type", "error"}
    error: dict[str, Any] = document["error"]
    assert isinstance(error["message"], str) and error["message"]
    return error


# --- the same dialect on both sides -------------------------------------------------------------


def test_an_anthropic_request_to_an_anthropic_backend_goes_as_it_came(
    make: Callable[..., ProxyClient], claude: BackendHandle
) -> None:
    client = make()
    body = {"system": "Be brief.", "stop_sequences": ["\n\nHuman:"], "metadata": {"user_id": "u-1"}}
    response = messages(client, **body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["type"] == "message" and answer["role"] == "assistant"
    assert answer["content"][0]["type"] == "text" and answer["usage"]["output_tokens"] > 0
    assert response.headers["x-tiermux-backend"] == "claude"
    assert response.headers["x-tiermux-request-id"]
    [(path, headers, forwarded)] = sent(claude)
    assert path == "/v1/messages"
    assert forwarded == {"model": CLAUDE_MODEL, "max_tokens": 64, "messages": HELLO, **body}
    assert headers["x-api-key"] in KEYS and headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers


def test_an_anthropic_stream_passes_through_with_its_usage_booked(
    make: Callable[..., ProxyClient], claude: BackendHandle
) -> None:
    client = make()
    response = messages(client, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    names = [name for name, _ in events(response.content)]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"} <= set(names)
    stats = client.get("/stats").json()
    assert stats["by_service"]["default"]["output_tokens"] > 0


# --- an Anthropic client, an OpenAI-compatible backend ------------------------------------------


def test_an_anthropic_request_is_translated_for_a_local_model(
    make: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    client = make()
    response = messages(client, model="cheap", system="Be brief.", stop_sequences=["END"], temperature=0.5)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["type"] == "message" and answer["model"] == VLLM_MODEL
    assert answer["content"][0]["text"].startswith(" The mock backend")
    assert answer["stop_reason"] in ("end_turn", "max_tokens")
    assert answer["usage"]["input_tokens"] > 0 and answer["usage"]["output_tokens"] > 0
    assert "content-length" not in response.headers or int(response.headers["content-length"]) == len(
        response.content
    )
    [(path, _, forwarded)] = sent(vllm)
    assert path == "/v1/chat/completions"
    assert forwarded["model"] == VLLM_MODEL
    assert forwarded["messages"] == [{"role": "system", "content": "Be brief."}, *HELLO]
    assert forwarded["stop"] == ["END"] and forwarded["max_tokens"] == 64 and forwarded["temperature"] == 0.5


def test_a_local_models_stream_reaches_an_anthropic_client_as_events(
    make: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    vllm.configure(tokens=5)
    response = make().post(
        "/v1/messages",
        json={"model": "cheap", "max_tokens": 64, "messages": HELLO, "stream": True},
        headers=ANTHROPIC_HEADERS,
    )
    assert response.status_code == 200
    found = events(response.content)
    names = [name for name, _ in found]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    text = "".join(d["delta"]["text"] for n, d in found if n == "content_block_delta")
    assert text == " The mock backend answers every"
    [final] = [d for n, d in found if n == "message_delta"]
    assert final["usage"]["output_tokens"] == 5


def test_what_an_openai_backend_cannot_do_is_refused_in_anthropics_shape(
    make: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    response = messages(make(), model="cheap", thinking={"type": "enabled", "budget_tokens": 2048})
    assert response.status_code == 400
    error = anthropic_error(response)
    assert error["type"] == "invalid_request_error" and "thinking" in error["message"]
    assert vllm.stats()["requests"] == 0


def test_errors_before_routing_are_in_anthropics_shape(make: Callable[..., ProxyClient]) -> None:
    client = make()
    bad = client.post("/v1/messages", content=b"{not json", headers=ANTHROPIC_HEADERS)
    assert bad.status_code == 400 and anthropic_error(bad)["type"] == "invalid_request_error"
    missing = client.post(
        "/v1/messages", json={"messages": HELLO, "max_tokens": 5}, headers=ANTHROPIC_HEADERS
    )
    assert missing.status_code == 400 and "model" in anthropic_error(missing)["message"]
    unknown = client.post(
        "/v1/messages", json={"model": "nope", "messages": HELLO, "max_tokens": 5}, headers=ANTHROPIC_HEADERS
    )
    assert unknown.status_code == 404 and anthropic_error(unknown)["type"] == "not_found_error"


def test_a_backend_error_reaches_an_anthropic_client_in_its_shape(
    make: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    vllm.configure(fail_rate=1.0, fail_mode="status", fail_status=400)
    response = messages(make(), model="cheap")
    assert response.status_code == 400
    assert "injected failure" in anthropic_error(response)["message"]


# --- an OpenAI client, an Anthropic backend -----------------------------------------------------


def test_an_openai_request_is_answered_by_an_anthropic_backend(
    make: Callable[..., ProxyClient], claude: BackendHandle
) -> None:
    response = chat(
        make(),
        messages=[{"role": "system", "content": "Be brief."}, *HELLO],
        max_tokens=7,
        stop=["END"],
        user="u-9",
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion"
    choice = answer["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 7
    [(path, _, forwarded)] = sent(claude)
    assert path == "/v1/messages"
    assert forwarded["system"] == "Be brief." and forwarded["messages"] == HELLO
    assert forwarded["max_tokens"] == 7 and forwarded["stop_sequences"] == ["END"]
    assert forwarded["metadata"] == {"user_id": "u-9"}


def test_an_openai_request_without_max_tokens_gets_the_backends_default(
    make: Callable[..., ProxyClient], claude: BackendHandle
) -> None:
    assert chat(make(default_max_tokens=321)).status_code == 200
    assert sent(claude)[0][2]["max_tokens"] == 321


@pytest.mark.parametrize("include_usage", [False, True])
def test_an_anthropic_stream_reaches_an_openai_client_as_chunks(
    make: Callable[..., ProxyClient], claude: BackendHandle, include_usage: bool
) -> None:
    claude.configure(tokens=4)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    response = chat(make(), stream=True, **options)
    assert response.status_code == 200
    found = chunks(response.content)
    assert found[-1] == "[DONE]"
    bodies = found[:-1]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in bodies if c["choices"])
    assert text
    assert [c["choices"][0]["finish_reason"] for c in bodies if c["choices"]][-1] == "stop"
    with_usage = [c for c in bodies if c.get("usage")]
    assert bool(with_usage) == include_usage
    if include_usage:
        assert with_usage[-1]["usage"]["completion_tokens"] == 4
    assert "stream_options" not in sent(claude)[0][2]


def test_what_an_anthropic_backend_cannot_do_is_refused_in_openais_shape(
    make: Callable[..., ProxyClient], claude: BackendHandle
) -> None:
    response = chat(make(), logprobs=True)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "logprobs" and error["type"] == "invalid_request_error"
    assert claude.stats()["requests"] == 0
    embeddings = make().post("/v1/embeddings", json={"model": "smart", "input": "x"})
    assert embeddings.status_code == 400


def test_an_anthropic_error_reaches_an_openai_client_in_its_shape(
    make: Callable[..., ProxyClient], claude: BackendHandle
) -> None:
    claude.configure(fail_rate=1.0, fail_mode="status", fail_status=400)
    response = chat(make())
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


# --- keys and retries ---------------------------------------------------------------------------


def test_a_rate_limited_key_rests_while_the_others_serve(
    make: Callable[..., ProxyClient], claude: BackendHandle, caplog: pytest.LogCaptureFixture
) -> None:
    claude.configure(rate_limited_keys={KEYS[0]: 30})
    client = make()
    with caplog.at_level(logging.DEBUG, logger="tiermux"):
        statuses = [messages(client).status_code for _ in range(8)]
    assert statuses == [200] * 8
    used = [headers["x-api-key"] for _, headers, _ in sent(claude)]
    assert used.count(KEYS[0]) == 1  # refused once, then left to rest
    assert used.count(KEYS[1]) + used.count(KEYS[2]) == 8
    assert all(key[-4:] not in caplog.text for key in KEYS)


def test_when_every_key_is_limited_the_client_gets_429_with_retry_after(
    make: Callable[..., ProxyClient], claude: BackendHandle
) -> None:
    claude.configure(rate_limited_keys={key: 30 for key in KEYS})
    client = make()
    first = messages(client)
    assert first.status_code == 429 and anthropic_error(first)["type"] == "rate_limit_error"
    assert int(first.headers["retry-after"]) == 30
    assert claude.stats()["requests"] == 3  # each key once, then the retries ran out
    again = chat(client)  # every key rests: nothing is sent
    assert again.status_code == 429 and again.json()["error"]["type"] == "rate_limit_error"
    assert 25 <= int(again.headers["retry-after"]) <= 30
    assert claude.stats()["requests"] == 3
    for response in (first, again):
        assert all(key not in response.text and key not in str(response.headers) for key in KEYS)


def test_an_overloaded_backend_is_retried_then_its_answer_given(
    make: Callable[..., ProxyClient], claude: BackendHandle
) -> None:
    claude.configure(fail_rate=1.0, fail_mode="status", fail_status=529)
    response = messages(make(retry={"attempts": 2, "backoff": 0.01}))
    assert response.status_code == 529
    assert anthropic_error(response)["type"] == "overloaded_error"
    assert claude.stats()["requests"] == 3


def test_a_retry_after_the_pause_succeeds(make: Callable[..., ProxyClient], claude: BackendHandle) -> None:
    claude.configure(rate_limit_every=2)  # every second request: 429, retry after 1 s
    client = make(api_keys=["${KEY_1}"], retry={"attempts": 1, "max_backoff": 2})
    assert [messages(client).status_code for _ in range(2)] == [200, 200]
    assert claude.stats()["requests"] == 3


def test_a_retry_after_longer_than_the_longest_pause_is_not_waited_for(
    make: Callable[..., ProxyClient], claude: BackendHandle
) -> None:
    claude.configure(rate_limited_keys={KEYS[0]: 60})
    response = messages(make(api_keys=["${KEY_1}"]))
    assert response.status_code == 429 and response.headers["retry-after"] == "60"
    assert claude.stats()["requests"] == 1


# --- the same cache, books and metrics ----------------------------------------------------------


def test_anthropic_requests_are_cached_and_replayed_as_events(
    make: Callable[..., ProxyClient], claude: BackendHandle
) -> None:
    client = make()
    first = messages(client, temperature=0)
    second = messages(client, temperature=0)
    assert (first.headers["x-tiermux-cache"], second.headers["x-tiermux-cache"]) == ("MISS", "HIT")
    assert second.json()["content"] == first.json()["content"]
    streamed = messages(client, temperature=0, stream=True)
    assert streamed.headers["x-tiermux-cache"] == "HIT"
    found = events(streamed.content)
    text = "".join(d["delta"]["text"] for n, d in found if n == "content_block_delta")
    assert text == first.json()["content"][0]["text"]
    assert [n for n, _ in found][-1] == "message_stop"
    assert claude.stats()["requests"] == 1
    # An OpenAI request for the same conversation is another question: another answer.
    assert chat(client, temperature=0, max_tokens=64).headers["x-tiermux-cache"] == "MISS"


def test_messages_are_booked_and_counted_like_any_request(
    make: Callable[..., ProxyClient], claude: BackendHandle, vllm: BackendHandle
) -> None:
    client = make()
    messages(client)
    messages(client, model="cheap")
    stats = client.get("/stats").json()
    assert stats["by_service"]["default"]["requests"] == 2
    metrics = client.get("/metrics").text
    assert 'backend="claude"' in metrics and 'backend="local-9b"' in metrics
    assert all(key not in metrics for key in KEYS)


def test_the_routing_headers_and_request_id_come_with_translated_answers(
    make: Callable[..., ProxyClient],
) -> None:
    response = messages(make(), model="cheap")
    assert response.headers["x-tiermux-backend"] == "local-9b"
    assert response.headers["x-tiermux-tier"] == "local"
    assert header_values({"headers": list(response.headers.items())}, "x-tiermux-request-id")


def test_anthropic_beta_reaches_an_anthropic_backend_and_is_refused_by_translation(
    make: Callable[..., ProxyClient], claude: BackendHandle, vllm: BackendHandle
) -> None:
    client = make()
    beta = {**ANTHROPIC_HEADERS, "anthropic-beta": "token-efficient-tools-2025-02-19"}
    body = {"max_tokens": 64, "messages": HELLO, "temperature": 0}
    for _ in range(2):
        answered = client.post("/v1/messages", json={"model": "smart", **body}, headers=beta)
        assert answered.status_code == 200
        assert answered.headers["x-tiermux-cache"] == "BYPASS"  # the key doesn't hold the header
    assert [headers["anthropic-beta"] for _, headers, _ in sent(claude)] == [
        "token-efficient-tools-2025-02-19"
    ] * 2
    refused = client.post("/v1/messages", json={"model": "cheap", **body}, headers=beta)
    assert refused.status_code == 400 and "anthropic-beta" in anthropic_error(refused)["message"]
    assert vllm.stats()["requests"] == 0
    plain = messages(client)  # the next request of the same client carries no beta
    assert plain.status_code == 200 and "anthropic-beta" not in sent(claude)[-1][1]


class _ChunkedJson(http.server.BaseHTTPRequestHandler):
    """A backend answering JSON of unannounced length (chunked), as Go's servers do past 2 KB."""

    protocol_version = "HTTP/1.1"
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "ollama-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "x" * 3000}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 700, "total_tokens": 705},
    }

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps(self.answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for part in (body[:1000], body[1000:]):
            self.wfile.write(b"%x\r\n%b\r\n" % (len(part), part))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: Any) -> None:
        pass


def test_a_chunked_json_answer_is_translated_as_json(
    config_file: Callable[[dict[str, Any]], Path], proxy_factory: Callable[[Config], ProxyClient]
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ChunkedJson)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        tree = {"backends": [backend_entry("ollama", url, "ollama-model")], "tiers": {"local": ["ollama"]}}
        client = proxy_factory(load_config(config_file(tree)))
        response = client.post(
            "/v1/messages",
            json={"model": "ollama", "max_tokens": 900, "messages": HELLO},
            headers=ANTHROPIC_HEADERS,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["type"] == "message" and answer["content"][0]["text"] == "x" * 3000
    assert answer["usage"]["output_tokens"] == 700


def test_a_backend_that_cannot_take_the_request_is_no_next_one_to_fail_over_to(
    make: Callable[..., ProxyClient], claude: BackendHandle, vllm: BackendHandle
) -> None:
    claude.configure(fail_rate=1.0, fail_mode="status", fail_status=529)
    client = make(
        tiers={"local": ["local-9b"], "claude": ["claude", "local-9b"]},
        retry={"attempts": 2, "backoff": 0.01},
    )
    thinking = {"type": "enabled", "budget_tokens": 1024}
    response = messages(client, model="smart", max_tokens=2048, thinking=thinking)
    assert response.status_code == 529  # retried where it could go, not refused as untranslatable
    assert claude.stats()["requests"] == 3 and vllm.stats()["requests"] == 0


def test_the_quality_safety_net_may_check_against_an_anthropic_reference(
    make: Callable[..., ProxyClient], claude: BackendHandle, vllm: BackendHandle
) -> None:
    text = "The invoice total is 42 euros, due on 1 March."
    vllm.configure(text=text)
    claude.configure(text=text)
    client = make(
        tiers={"cheap": ["local-9b"], "capable": ["claude"]},
        routing={"default_tier": "cheap", "allow_header_override": True},
        quality={
            "enabled": True,
            "reference": "claude",
            "sample_rate": 1.0,
            "min_samples": 2,
            "busy_lag_ms": 0,
        },
        cache={"enabled": False},
    )
    for _ in range(3):
        response = client.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "Pull out the total."}]},
            headers={"x-tiermux-category": "extraction"},
        )
        assert response.headers["x-tiermux-backend"] == "local-9b"
    assert client.app.quality is not None
    client.run(client.app.quality.drain())
    extraction = client.get("/stats").json()["quality"]["categories"]["extraction"]
    assert extraction["samples"] == 3 and extraction["score"] == 1.0
    assert [path for path, _, _ in sent(claude)] == ["/v1/messages"] * 3  # asked in its dialect
