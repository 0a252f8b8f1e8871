"""The official OpenAI SDK, pointed at a real ``tiermux serve`` by changing only ``base_url``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from bench.mock_backend import BackendHandle
from tests.support import ServerProcess, recorded_bodies

MESSAGES = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def sdk(server: ServerProcess) -> Iterator[openai.OpenAI]:
    # A timeout so that a hung server fails the test instead of stalling the run.
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=30.0) as client:
        yield client


def test_chat(sdk: openai.OpenAI, vllm: BackendHandle) -> None:
    completion = sdk.chat.completions.create(model="auto", messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]
    assert completion.object == "chat.completion"
    assert completion.model == "qwen-9b"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == " The mock backend answers every"
    assert choice.finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert vllm.stats()["requests"] == 1


def test_chat_raw_response_carries_routing_headers(sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(model="smart", messages=MESSAGES)  # type: ignore[arg-type]
    assert raw.headers["x-tiermux-backend"] == "frontier"
    assert raw.headers["x-tiermux-tier"] == "capable"
    assert raw.parse().model == "big-model"


def test_streaming_with_usage(sdk: openai.OpenAI, vllm: BackendHandle) -> None:
    vllm.configure(tokens=7)
    stream = sdk.chat.completions.create(
        model="auto",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    text = []
    usage = None
    finish = None
    with stream:
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    text.append(choice.delta.content)
                if choice.finish_reason:
                    finish = choice.finish_reason
    assert "".join(text) == " The mock backend answers every request with"
    assert finish == "stop"
    assert usage is not None
    assert usage.completion_tokens == 7
    assert usage.total_tokens == usage.prompt_tokens + 7


def test_tools(sdk: openai.OpenAI, vllm: BackendHandle) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    completion = sdk.chat.completions.create(
        model="auto",
        messages=MESSAGES,  # type: ignore[arg-type]
        tools=tools,  # type: ignore[arg-type]
        tool_choice="required",
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].type == "function"
    assert calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {}  # type: ignore[union-attr]
    sent = json.loads(recorded_bodies(vllm)[-1])
    assert sent["tools"] == tools
    assert sent["tool_choice"] == "required"


def test_json_mode(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model="auto",
        messages=MESSAGES,  # type: ignore[arg-type]
        response_format={"type": "json_object"},
    )
    content = completion.choices[0].message.content
    assert content is not None
    assert isinstance(json.loads(content), dict)


def test_completions(sdk: openai.OpenAI) -> None:
    completion = sdk.completions.create(model="fast", prompt="Once upon a time", max_tokens=3)
    assert completion.object == "text_completion"
    assert completion.choices[0].text == " The mock backend"


def test_embeddings(sdk: openai.OpenAI) -> None:
    result = sdk.embeddings.create(model="auto", input=["first text", "second text"])
    assert [item.index for item in result.data] == [0, 1]
    assert all(len(item.embedding) == 8 for item in result.data)
    assert result.data[0].embedding != result.data[1].embedding
    again = sdk.embeddings.create(model="auto", input="first text")
    assert again.data[0].embedding == result.data[0].embedding


def test_models_list(sdk: openai.OpenAI) -> None:
    ids = [model.id for model in sdk.models.list()]
    assert "auto" in ids
    assert {"fast", "smart", "qwen-9b", "big-model"} <= set(ids)


def test_unknown_model_raises_not_found(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sdk.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


def test_malformed_request_raises_bad_request(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model=["auto"], messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.status_code == 400
    assert info.value.type == "invalid_request_error"


def test_a_cached_answer_is_read_back_as_a_stream(sdk: openai.OpenAI, vllm: BackendHandle) -> None:
    """The SDK's own stream parser and accumulator read a replayed answer as a real stream."""
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    for extra in ({}, {"tools": tools, "tool_choice": "required"}):
        # Each worker keeps its own cache: ask until the worker answering has it (two workers).
        asked = {
            "model": "auto",
            "messages": [{"role": "user", "content": f"replay {extra}"}],
            "temperature": 0,
        }
        answers = [sdk.chat.completions.with_raw_response.create(**asked, **extra) for _ in range(4)]  # type: ignore[call-overload]
        assert "HIT" in {raw.headers["x-tiermux-cache"] for raw in answers}
        original = answers[0].parse()
        for _ in range(6):
            raw = sdk.chat.completions.with_raw_response.create(
                **asked, **extra, stream=True, stream_options={"include_usage": True}
            )  # type: ignore[call-overload]
            if raw.headers["x-tiermux-cache"] == "HIT":
                break
        assert raw.headers["x-tiermux-cache"] == "HIT"
        state = openai.lib.streaming.chat.ChatCompletionStreamState()
        usage = None
        for chunk in raw.parse():
            state.handle_chunk(chunk)
            usage = chunk.usage or usage
        replayed = state.get_final_completion()
        assert replayed.choices[0].message.content == original.choices[0].message.content
        assert replayed.choices[0].finish_reason == original.choices[0].finish_reason
        assert usage == original.usage
        calls = replayed.choices[0].message.tool_calls or []
        assert [(c.function.name, c.function.arguments) for c in calls] == [
            (c.function.name, c.function.arguments)  # type: ignore[union-attr]
            for c in original.choices[0].message.tool_calls or []
        ]
