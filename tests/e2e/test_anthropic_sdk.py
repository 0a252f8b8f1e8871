"""The official SDKs of both dialects against a real ``tiermux serve``: the Anthropic SDK served
by an Anthropic backend and by an OpenAI-compatible one, and the OpenAI SDK served by an
Anthropic backend; plain answers, streams and tools."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
from bench.mock_backend import BackendHandle, run_in_thread
from tests.support import VLLM_MODEL, ServerProcess, backend_entry, write_config

CLAUDE_MODEL = "claude-mock"
KEYS = ("sk-ant-e2e-one-1111", "sk-ant-e2e-two-2222")
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
HELLO = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def claude() -> Iterator[BackendHandle]:
    handle = run_in_thread(flavor="anthropic", model=CLAUDE_MODEL, api_keys=KEYS)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def served(
    vllm_session: BackendHandle, claude: BackendHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    directory: Path = tmp_path_factory.mktemp("anthropic")
    keys = directory / "claude.keys"
    keys.write_text("\n".join(KEYS) + "\n", encoding="utf-8")
    tree = {
        "backends": [
            backend_entry("local-9b", vllm_session.url, VLLM_MODEL),
            backend_entry("claude", claude.url, CLAUDE_MODEL, type="anthropic", api_key_file=str(keys)),
        ],
        "tiers": {"local": ["local-9b"], "claude": ["claude"]},
        "routing": {"aliases": {"cheap": "local", "smart": "claude"}, "classifier": {"enabled": False}},
    }
    process = ServerProcess(write_config(directory, tree), directory / "serve.log", workers=2).start()
    yield process
    process.stop()
    assert all(key not in process.log() for key in KEYS)


@pytest.fixture(scope="module")
def messages_sdk(served: ServerProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=served.url, api_key="unused", timeout=30.0, max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def chat_sdk(served: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=served.url + "/v1", api_key="unused", timeout=30.0, max_retries=0) as client:
        yield client


@pytest.mark.parametrize("model", ["smart", "cheap"])
def test_anthropic_sdk_message(messages_sdk: anthropic.Anthropic, model: str) -> None:
    message = messages_sdk.messages.create(
        model=model,
        max_tokens=5,
        system="Be brief.",
        messages=HELLO,  # type: ignore[arg-type]
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.model == (CLAUDE_MODEL if model == "smart" else VLLM_MODEL)
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 5 and message.usage.input_tokens > 0


@pytest.mark.parametrize("model", ["smart", "cheap"])
def test_anthropic_sdk_stream(messages_sdk: anthropic.Anthropic, model: str) -> None:
    with messages_sdk.messages.stream(model=model, max_tokens=6, messages=HELLO) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 6


@pytest.mark.parametrize("model", ["smart", "cheap"])
@pytest.mark.parametrize("streamed", [False, True])
def test_anthropic_sdk_tools(messages_sdk: anthropic.Anthropic, model: str, streamed: bool) -> None:
    request = {
        "model": model,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }
    if streamed:
        with messages_sdk.messages.stream(**request) as stream:  # type: ignore[arg-type]
            message = stream.get_final_message()
    else:
        message = messages_sdk.messages.create(**request)  # type: ignore[arg-type]
    [call] = [block for block in message.content if block.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input, dict) and call.id
    assert message.stop_reason == "tool_use"
    # The result goes back, and the conversation continues.
    follow_up = messages_sdk.messages.create(
        model=model,
        max_tokens=8,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            request["messages"][0],  # type: ignore[index]
            {"role": "assistant", "content": [call.model_dump(exclude_none=True)]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C"}]},
        ],
    )
    assert follow_up.content and follow_up.usage.output_tokens > 0


def test_anthropic_sdk_sees_untranslatable_requests_refused(messages_sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        messages_sdk.messages.create(
            model="cheap",
            max_tokens=3000,
            thinking={"type": "enabled", "budget_tokens": 2048},
            messages=HELLO,  # type: ignore[arg-type]
        )
    assert "thinking" in str(info.value)


def test_openai_sdk_served_by_an_anthropic_backend(chat_sdk: openai.OpenAI) -> None:
    completion = chat_sdk.chat.completions.create(model="smart", messages=HELLO, max_tokens=5)  # type: ignore[arg-type]
    assert completion.object == "chat.completion" and completion.model == CLAUDE_MODEL
    assert completion.choices[0].message.content and completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5


def test_openai_sdk_streams_from_an_anthropic_backend(chat_sdk: openai.OpenAI) -> None:
    with chat_sdk.chat.completions.stream(model="smart", messages=HELLO, max_tokens=64) as stream:  # type: ignore[arg-type]
        text = "".join(event.delta for event in stream if event.type == "content.delta")
        final = stream.get_final_completion()
    assert text and final.choices[0].message.content == text
    assert final.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("streamed", [False, True])
def test_openai_sdk_tool_calls_from_an_anthropic_backend(chat_sdk: openai.OpenAI, streamed: bool) -> None:
    tool = {"type": "function", "function": {**{k: WEATHER[k] for k in ("name", "description")}}}
    tool["function"]["parameters"] = WEATHER["input_schema"]  # type: ignore[index]
    request = {
        "model": "smart",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [tool],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    if streamed:
        with chat_sdk.chat.completions.stream(**request) as stream:  # type: ignore[arg-type]
            completion = stream.get_final_completion()
    else:
        completion = chat_sdk.chat.completions.create(**request)  # type: ignore[arg-type]
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert isinstance(json.loads(call.function.arguments), dict)  # type: ignore[union-attr]
