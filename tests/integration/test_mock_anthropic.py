"""Tests for the Anthropic Messages API flavour of the mock backend (``--flavor anthropic``).

Every test starts its own backend on an ephemeral port and talks to it with the official
``anthropic`` SDK, the client the flavour has to satisfy, or with httpx where the request must be
one the SDK would never send (no ``anthropic-version``, no ``max_tokens``) or the exact events on
the wire matter.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from bench.mock_backend import BackendHandle, MockOptions, parse_args, run_in_thread

MODEL = "claude-mock"
KEY = "sk-ant-mock-key-0001"
OTHER_KEY = "sk-ant-mock-key-0002"
LIMITED_KEY = "sk-ant-mock-key-0429"
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello."}]
VERSION = {"anthropic-version": "2023-06-01"}
CANNED = " The mock backend answers every request with this short canned reply so that proxies can be"
TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "The weather at a place.",
        "input_schema": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["location", "unit"],
        },
    },
    {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
]

Start = Callable[..., BackendHandle]


@pytest.fixture
def start() -> Iterator[Start]:
    """Start Anthropic-flavoured mocks with the given options; all are stopped after the test."""
    handles: list[BackendHandle] = []

    def _start(**options: Any) -> BackendHandle:
        options.setdefault("model", MODEL)
        options.setdefault("api_keys", (KEY, OTHER_KEY))
        handle = run_in_thread(MockOptions(flavor="anthropic", **options))
        handles.append(handle)
        return handle

    yield _start
    for handle in handles:
        handle.stop()


@pytest.fixture
def mock(start: Start) -> BackendHandle:
    return start()


def sdk(handle: BackendHandle, key: str = KEY) -> anthropic.Anthropic:
    """The official client; it sends its key as ``Authorization: Bearer``, which the mock takes too."""
    return anthropic.Anthropic(base_url=handle.root_url, api_key=key, max_retries=0, timeout=2.0)


def raw(handle: BackendHandle) -> httpx.Client:
    return httpx.Client(base_url=handle.root_url, timeout=2.0)


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The (event name, data) pairs of a server-sent event stream."""
    pairs = []
    for block in text.split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        pairs.append((name_line[len("event: ") :], json.loads(data_line[len("data: ") :])))
    return pairs


def body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 100, "messages": MESSAGES, **extra}


def headers(key: str = KEY) -> dict[str, str]:
    return {"x-api-key": key, **VERSION}


def sent_body(record: dict[str, Any]) -> bytes:
    return base64.b64decode(record["body_b64"])


# --------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------


def test_messages_create_returns_the_canned_answer(mock: BackendHandle) -> None:
    with sdk(mock) as client:
        raw_response = client.messages.with_raw_response.create(
            model="claude-other",
            max_tokens=100,
            messages=MESSAGES,
            system="Be brief.",
            extra_body={"temperature": 0.2, "metadata": {"user_id": "u-1"}},  # ignored, not refused
        )
        message = raw_response.parse()
    (sent,) = mock.recorded()
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert raw_response.headers["request-id"] == "req_" + message.id[len("msg_") :]
    assert raw_response.headers["content-type"] == "application/json"
    assert message.model == "claude-other"  # echoes what the client asked for
    (block,) = message.content
    assert block.type == "text" and block.text == CANNED
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    usage = message.usage
    assert usage.output_tokens == 16
    assert usage.input_tokens == len(sent_body(sent)) // 4
    assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens == 0


def test_streaming_with_the_sdk(mock: BackendHandle) -> None:
    with sdk(mock) as client:
        with client.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_message()
        whole = client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert kinds.count("content_block_delta") == 16
    (block,) = final.content
    assert block.type == "text" and block.text == CANNED
    assert final.stop_reason == "end_turn" and final.stop_sequence is None
    assert final.usage.output_tokens == 16
    assert whole.usage.output_tokens == 16
    streamed_request, _ = mock.recorded()
    assert final.usage.input_tokens == len(sent_body(streamed_request)) // 4


def test_stream_events_on_the_wire(mock: BackendHandle) -> None:
    with raw(mock) as http:
        response = http.post("/v1/messages", json=body(stream=True, max_tokens=3), headers=headers())
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["request-id"].startswith("req_")
    pairs = events(response.text)
    assert [name for name, _ in pairs] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in pairs)
    started = pairs[0][1]["message"]
    assert started["id"] == "msg_" + response.headers["request-id"][len("req_") :]
    assert started["content"] == [] and started["stop_reason"] is None
    assert started["usage"]["output_tokens"] == 1 and started["usage"]["input_tokens"] > 0
    assert pairs[1][1]["content_block"] == {"type": "text", "text": ""}
    deltas = [data["delta"] for name, data in pairs if name == "content_block_delta"]
    assert [d["type"] for d in deltas] == ["text_delta"] * 3
    assert "".join(d["text"] for d in deltas) == " The mock backend"
    assert pairs[-2][1]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert pairs[-2][1]["usage"] == {"output_tokens": 3}


def test_max_tokens_caps_the_answer(mock: BackendHandle) -> None:
    with sdk(mock) as client:
        capped = client.messages.create(model=MODEL, max_tokens=3, messages=MESSAGES)
        with client.messages.stream(model=MODEL, max_tokens=3, messages=MESSAGES) as stream:
            streamed = stream.get_final_message()
        exact = client.messages.create(model=MODEL, max_tokens=16, messages=MESSAGES)
    for message in (capped, streamed):
        assert message.content[0].type == "text" and message.content[0].text == " The mock backend"
        assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3
    assert exact.stop_reason == "end_turn" and exact.usage.output_tokens == 16


def test_configured_text_and_stop_sequences(mock: BackendHandle) -> None:
    mock.configure(text="The sky is  blue today.")
    with sdk(mock) as client:
        text = client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
        cut = client.messages.create(model=MODEL, max_tokens=2, messages=MESSAGES)
        stopped = client.messages.create(
            model=MODEL, max_tokens=100, messages=MESSAGES, stop_sequences=["never", " blue"]
        )
        with client.messages.stream(
            model=MODEL, max_tokens=100, messages=MESSAGES, stop_sequences=["da"]
        ) as stream:
            streamed = stream.get_final_message()
        mock.configure(text=None)
        canned = client.messages.create(
            model=MODEL, max_tokens=100, messages=MESSAGES, stop_sequences=["answers"]
        )
    assert text.content[0].type == "text" and text.content[0].text == "The sky is  blue today."
    assert text.stop_reason == "end_turn" and text.usage.output_tokens == 5
    assert cut.content[0].type == "text" and cut.content[0].text == "The sky"
    assert cut.stop_reason == "max_tokens"
    assert stopped.content[0].type == "text" and stopped.content[0].text == "The sky is "
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == " blue"
    assert stopped.usage.output_tokens == 4  # "The", " sky", " is", and " " of "  blue"
    assert streamed.content[0].type == "text" and streamed.content[0].text == "The sky is  blue to"
    assert streamed.stop_reason == "stop_sequence" and streamed.stop_sequence == "da"
    assert canned.content[0].type == "text" and canned.content[0].text == " The mock backend "
    assert canned.stop_reason == "stop_sequence" and canned.usage.output_tokens == 4


def test_tools_produce_a_tool_use_block(mock: BackendHandle) -> None:
    with sdk(mock) as client:
        used = client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES, tools=TOOLS)
        forced = client.messages.create(
            model=MODEL,
            max_tokens=100,
            messages=MESSAGES,
            tools=TOOLS,
            tool_choice={"type": "tool", "name": "get_time"},
        )
        declined = client.messages.create(
            model=MODEL, max_tokens=100, messages=MESSAGES, tools=TOOLS, tool_choice={"type": "none"}
        )
        with client.messages.stream(
            model=MODEL, max_tokens=100, messages=MESSAGES, tools=TOOLS, tool_choice={"type": "any"}
        ) as stream:
            kinds = [event.type for event in stream]
            streamed = stream.get_final_message()
    (block,) = used.content
    assert block.type == "tool_use" and block.id.startswith("toolu_") and block.name == "get_weather"
    assert block.input == {"location": "mock", "unit": "celsius"}  # the required ones, valid values
    assert used.stop_reason == "tool_use" and used.usage.output_tokens == 2
    (forced_block,) = forced.content
    assert forced_block.type == "tool_use" and forced_block.name == "get_time"
    assert forced_block.input == {}
    assert declined.content[0].type == "text" and declined.stop_reason == "end_turn"
    (streamed_block,) = streamed.content
    assert streamed_block.type == "tool_use" and streamed_block.name == "get_weather"
    assert streamed_block.input == {"location": "mock", "unit": "celsius"}  # assembled by the SDK
    assert streamed.stop_reason == "tool_use" and streamed.usage.output_tokens == 2
    assert "input_json" in kinds


def test_tool_input_streams_as_json_pieces(mock: BackendHandle) -> None:
    with raw(mock) as http:
        text = http.post("/v1/messages", json=body(stream=True, tools=TOOLS), headers=headers()).text
    pairs = events(text)
    block = pairs[1][1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather" and block["input"] == {}
    deltas = [data["delta"] for name, data in pairs if name == "content_block_delta"]
    assert [d["type"] for d in deltas] == ["input_json_delta", "input_json_delta"]
    assert json.loads("".join(d["partial_json"] for d in deltas)) == {"location": "mock", "unit": "celsius"}
    assert pairs[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_count_tokens(mock: BackendHandle) -> None:
    with sdk(mock) as client:
        counted = client.messages.count_tokens(model=MODEL, messages=MESSAGES)
    (sent,) = mock.recorded()
    assert sent["path"] == "/v1/messages/count_tokens"
    assert counted.input_tokens == len(sent_body(sent)) // 4


def test_models_list(mock: BackendHandle) -> None:
    with sdk(mock) as client:
        models = list(client.models.list())
    with raw(mock) as http:
        page = http.get("/v1/models", headers=headers()).json()
    assert [model.id for model in models] == [MODEL]
    assert models[0].type == "model" and models[0].display_name == MODEL
    assert page["has_more"] is False and page["first_id"] == page["last_id"] == MODEL
    assert page["data"][0]["created_at"].endswith("Z")


# --------------------------------------------------------------------------------------------
# Requests the API refuses
# --------------------------------------------------------------------------------------------


def test_wrong_or_missing_key_is_an_authentication_error(mock: BackendHandle) -> None:
    with sdk(mock, key="sk-ant-wrong") as client, pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    assert caught.value.status_code == 401 and caught.value.type == "authentication_error"
    assert caught.value.request_id is not None and caught.value.request_id.startswith("req_")
    with raw(mock) as http:
        missing = http.post("/v1/messages", json=body(), headers=VERSION)
        wrong_bearer = http.post(
            "/v1/messages", json=body(), headers={**VERSION, "authorization": "Bearer sk-ant-wrong"}
        )
        by_header = http.post("/v1/messages", json=body(), headers=headers(OTHER_KEY))
    assert missing.status_code == wrong_bearer.status_code == 401
    assert missing.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }
    assert by_header.status_code == 200  # every listed key is accepted, from x-api-key too


def test_missing_anthropic_version_is_rejected(mock: BackendHandle) -> None:
    with raw(mock) as http:
        response = http.post("/v1/messages", json=body(), headers={"x-api-key": KEY})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "anthropic-version" in error["message"]


def test_invalid_requests_get_anthropic_errors(mock: BackendHandle) -> None:
    with raw(mock) as http:
        no_max_tokens = http.post(
            "/v1/messages", json={"model": MODEL, "messages": MESSAGES}, headers=headers()
        )
        no_messages = http.post("/v1/messages", json=body(messages=[]), headers=headers())
        bad_json = http.post("/v1/messages", content=b"{nope", headers=headers())
        openai_path = http.post("/v1/chat/completions", json=body(), headers=headers())
        wrong_method = http.get("/v1/messages", headers=headers())
    assert no_max_tokens.status_code == 400 and "max_tokens" in no_max_tokens.json()["error"]["message"]
    assert no_messages.status_code == 400 and "messages" in no_messages.json()["error"]["message"]
    assert bad_json.status_code == 400
    for response in (no_max_tokens, no_messages, bad_json):
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert openai_path.status_code == 404
    assert openai_path.json()["type"] == "error"
    assert openai_path.json()["error"]["type"] == "not_found_error"
    assert openai_path.headers["request-id"].startswith("req_")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert set(wrong_method.json()) == {"type", "error"}


# --------------------------------------------------------------------------------------------
# Rate limits and keys
# --------------------------------------------------------------------------------------------


def test_rate_limited_key_gets_429_while_another_key_works(start: Start) -> None:
    handle = start(api_keys=(KEY, LIMITED_KEY), rate_limited_keys={LIMITED_KEY: 2.5})
    with sdk(handle, LIMITED_KEY) as limited, pytest.raises(anthropic.RateLimitError) as caught:
        limited.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    error = caught.value
    assert error.status_code == 429 and error.type == "rate_limit_error"
    assert error.response.headers["retry-after"] == "3"  # whole seconds, rounded up
    assert error.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    with sdk(handle) as client:
        assert client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES).usage.output_tokens == 10
        assert client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES).usage.output_tokens == 10
    stats = handle.stats()
    assert stats["by_key"] == {"0001": 2}
    assert stats["rate_limited_by_key"] == {"0429": 1}

    with raw(handle) as http:  # lifted on the running server
        config = http.post("/_mock/config", json={"rate_limited_keys": {}})
        lifted = http.post("/v1/messages", json=body(), headers=headers(LIMITED_KEY))
        limited_again = http.post("/_mock/config", json={"rate_limited_keys": {LIMITED_KEY: 0.2}}).json()
        again = http.post("/v1/messages", json=body(), headers=headers(LIMITED_KEY))
    assert config.status_code == 200 and config.json()["rate_limited_keys"] == {}
    assert lifted.status_code == 200
    assert limited_again["rate_limited_keys"] == {LIMITED_KEY: 0.2}
    assert again.status_code == 429 and again.headers["retry-after"] == "1"


def test_rate_limit_every_nth_request(start: Start) -> None:
    handle = start(rate_limit_every=3)
    with raw(handle) as http:
        statuses = [http.post("/v1/messages", json=body(), headers=headers()).status_code for _ in range(6)]
        limited = http.post("/_mock/config", json={"rate_limit_every": 0})
        after = [http.post("/v1/messages", json=body(), headers=headers()).status_code for _ in range(3)]
    assert statuses == [200, 200, 429, 200, 200, 429]
    assert limited.status_code == 200 and after == [200, 200, 200]


def test_stats_count_keys_by_suffix_only(start: Start) -> None:
    handle = start(api_keys=(), rate_limited_keys={LIMITED_KEY: 1})
    with raw(handle) as http:
        for key in (KEY, KEY, OTHER_KEY, LIMITED_KEY, "short"):
            http.post("/v1/messages", json=body(), headers=headers(key))
        http.post("/v1/messages", json=body(), headers=VERSION)  # no key: accepted, not counted
        stats_text = http.get("/_mock/stats").text
        http.delete("/_mock/requests")
        cleared = http.get("/_mock/stats").json()
    stats = json.loads(stats_text)
    assert stats["by_key"] == {"0001": 2, "0002": 1, "rt": 1}
    assert stats["rate_limited_by_key"] == {"0429": 1}
    assert stats["requests"] == 6 and stats["by_path"] == {"/v1/messages": 6}
    for key in (KEY, OTHER_KEY, LIMITED_KEY, "short"):
        assert key not in stats_text
    assert cleared["by_key"] == {} and cleared["rate_limited_by_key"] == {}


def test_cloud_flavour_takes_several_bearer_keys_and_rate_limits() -> None:
    options = MockOptions(flavor="cloud", api_keys=("k-one", "k-two"), rate_limited_keys={"k-two": 0.5})
    with run_in_thread(options) as handle, raw(handle) as http:
        chat = {"model": "m", "messages": MESSAGES}
        one = http.post("/v1/chat/completions", json=chat, headers={"authorization": "Bearer k-one"})
        two = http.post("/v1/chat/completions", json=chat, headers={"authorization": "Bearer k-two"})
        wrong = http.post("/v1/chat/completions", json=chat, headers={"authorization": "Bearer k-3"})
        stats = handle.stats()
    assert one.status_code == 200 and "openai-processing-ms" in one.headers
    assert two.status_code == 429 and two.headers["retry-after"] == "1"
    assert two.headers["x-ratelimit-remaining-requests"] == "0"
    assert two.json()["error"]["code"] == "rate_limit_exceeded"
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert stats["by_key"] == {"ne": 1} and stats["rate_limited_by_key"] == {"wo": 1}


# --------------------------------------------------------------------------------------------
# Failure injection and pacing
# --------------------------------------------------------------------------------------------


def test_injected_529_is_an_overloaded_error(start: Start) -> None:
    handle = start(fail_rate=1.0, fail_status=529)
    with sdk(handle) as client, pytest.raises(anthropic.OverloadedError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    assert isinstance(caught.value, anthropic.InternalServerError)
    assert caught.value.status_code == 529 and caught.value.type == "overloaded_error"
    assert caught.value.request_id is not None
    handle.configure(fail_status=500)
    with sdk(handle) as client, pytest.raises(anthropic.InternalServerError) as failed:
        client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    assert failed.value.status_code == 500 and failed.value.type == "api_error"
    with raw(handle) as http:
        assert http.get("/_mock/stats").status_code == 200  # control endpoints never fail


def test_failure_mid_stream_is_an_error_event(start: Start) -> None:
    handle = start(fail_rate=1.0, fail_mode="die-mid-stream")
    received: list[str] = []
    with (
        sdk(handle) as client,
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream,
    ):
        received.extend(event.type for event in stream)
    assert caught.value.type == "overloaded_error"
    assert received[:2] == ["message_start", "content_block_start"]
    assert "message_stop" not in received
    handle.call(handle.backend.reset)
    with raw(handle) as http:
        first = http.post("/v1/messages", json=body(stream=True), headers=headers())
        second = http.post("/v1/messages", json=body(stream=True), headers=headers())
        stats = http.get("/_mock/stats").json()
    names = [name for name, _ in events(first.text)]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta", "error"]
    assert events(first.text)[-1][1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert second.status_code == 200 and stats["connections_total"] == 1  # the body ended cleanly
    with sdk(handle) as client, pytest.raises(anthropic.APIConnectionError):
        client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)  # half a body


def test_ttft_and_itl_pace_the_stream(start: Start) -> None:
    handle = start(ttft_ms=100, itl_ms=60, tokens=3)
    arrivals: list[float] = []
    with raw(handle) as http:
        http.get("/_mock/stats")  # connect first, so only the request itself is timed
        began = time.perf_counter()
        with http.stream("POST", "/v1/messages", json=body(stream=True), headers=headers()) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and '"text_delta"' in line:
                    arrivals.append(time.perf_counter() - began)
    assert len(arrivals) == 3
    assert arrivals[0] >= 0.09  # TTFT
    assert arrivals[1] - arrivals[0] >= 0.05 and arrivals[2] - arrivals[1] >= 0.05  # ITL
    assert arrivals[-1] < 0.9


# --------------------------------------------------------------------------------------------
# Options and command line
# --------------------------------------------------------------------------------------------


def test_command_line_options() -> None:
    options = parse_args(
        [
            "--flavor",
            "anthropic",
            "--api-key",
            "a-key, b-key",
            "--rate-limited-key",
            "b-key=2.5",
            "--rate-limited-key",
            "odd=key=1",
            "--rate-limit-every",
            "7",
        ]
    )
    assert options.flavor == "anthropic" and options.api_keys == ("a-key", "b-key")
    assert options.rate_limited_keys == {"b-key": 2.5, "odd=key": 1.0}
    assert options.rate_limit_every == 7
    defaults = parse_args([])
    assert defaults.api_keys == () and defaults.rate_limited_keys == {} and defaults.rate_limit_every == 0
    for bad in (
        ["--rate-limited-key", "no-seconds"],
        ["--rate-limited-key", "k=-1"],
        ["--rate-limit-every", "-1"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)
