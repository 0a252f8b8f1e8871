"""JSON answers and errors translated between Anthropic Messages and OpenAI Chat Completions, read
back with the official SDKs' types."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import anthropic.types
import pytest
from anthropic.types.shared import ErrorResponse
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion

from tiermux.accounting.usage import PromptDetails, Usage
from tiermux.api.errors import (
    BadGateway,
    BadRequest,
    GatewayTimeout,
    ModelNotFound,
    PayloadTooLarge,
    ProxyError,
    ServiceUnavailable,
)
from tiermux.dialects import Untranslatable
from tiermux.dialects.answers import (
    MAX_ERROR_TEXT,
    UntranslatableAnswer,
    anthropic_error_body,
    anthropic_error_from_openai,
    anthropic_error_of,
    chat_completion_from_message,
    message_from_chat_completion,
    openai_error_from_anthropic,
    usage_of_message,
)
from tiermux.dialects.common import FINISH_REASON_OF_STOP, STOP_REASON_OF_FINISH

Json = dict[str, Any]


def message(*content: Json, stop: str | None = "end_turn", **usage: int) -> Json:
    """An Anthropic answer."""
    return {
        "id": "msg_01abc",
        "type": "message",
        "role": "assistant",
        "model": "claude-x-1",
        "content": list(content),
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }


def completion(said: Json, finish: str | None = "stop", usage: Json | None = None, **choice: Any) -> Json:
    """An OpenAI answer."""
    answer: Json = {
        "id": "chatcmpl-xyz",
        "object": "chat.completion",
        "created": 1_735_000_000,
        "model": "gpt-x",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **said}, "finish_reason": finish, **choice}
        ],
    }
    if usage is not None:
        answer["usage"] = usage
    return answer


def text(value: str) -> Json:
    return {"type": "text", "text": value}


def tool_use(ident: str, name: str, arguments: Json) -> Json:
    return {"type": "tool_use", "id": ident, "name": name, "input": arguments}


def call(ident: str, name: str, arguments: str) -> Json:
    return {"id": ident, "type": "function", "function": {"name": name, "arguments": arguments}}


def to_chat(answer: Json) -> Json:
    out: Json = json.loads(chat_completion_from_message(json.dumps(answer, ensure_ascii=False).encode()))
    ChatCompletion.model_validate(out)
    return out


def to_message(answer: Json) -> Json:
    out: Json = json.loads(message_from_chat_completion(json.dumps(answer).encode()))
    anthropic.types.Message.model_validate(out)
    return out


USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 5,
    "total_tokens": 15,
    "prompt_tokens_details": {"cached_tokens": 0},
}


# --- Anthropic message -> OpenAI chat.completion ------------------------------------------------


def test_a_text_answer() -> None:
    before = int(time.time())
    out = to_chat(message(text("Hello, "), text("world.")))
    assert before <= out.pop("created") <= int(time.time())
    assert out == {
        "id": "msg_01abc",
        "object": "chat.completion",
        "model": "claude-x-1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello, world.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }


def test_tool_use_blocks_become_tool_calls() -> None:
    answer = message(
        text("Checking."),
        tool_use("toolu_1", "weather", {"city": "Paris", "days": [1, 2], "unit": "°C"}),
        tool_use("toolu_2", "clock", {}),
        stop="tool_use",
    )
    said = to_chat(answer)["choices"][0]
    assert said == {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                call("toolu_1", "weather", '{"city":"Paris","days":[1,2],"unit":"°C"}'),
                call("toolu_2", "clock", "{}"),
            ],
            "refusal": None,
        },
        "logprobs": None,
        "finish_reason": "tool_calls",
    }


def test_spaced_input_is_compacted_and_escapes_kept() -> None:
    payload = (
        b'{"type":"message","id":"m","model":"c","content":[{"type":"tool_use","id":"t","name":"f",'
        b'"input": { "a" : [ 1, 2 ] , "b": "x y \\u00b0" }}],"stop_reason":"tool_use",'
        b'"usage":{"input_tokens":1,"output_tokens":1}}'
    )
    said = json.loads(chat_completion_from_message(payload))["choices"][0]["message"]
    assert said["tool_calls"][0]["function"]["arguments"] == '{"a":[1,2],"b":"x y \\u00b0"}'
    assert json.loads(said["tool_calls"][0]["function"]["arguments"]) == {"a": [1, 2], "b": "x y °"}


def test_no_text_is_no_content_and_thinking_is_left_out() -> None:
    answer = message(
        {"type": "thinking", "thinking": "Let me think.", "signature": "sig"},
        {"type": "redacted_thinking", "data": "xx"},
        tool_use("toolu_1", "f", {}),
        stop="tool_use",
    )
    said = to_chat(answer)["choices"][0]["message"]
    assert said["content"] is None
    assert [c["id"] for c in said["tool_calls"]] == ["toolu_1"]
    assert to_chat(message())["choices"][0]["message"]["content"] is None
    assert to_chat(message(text("")))["choices"][0]["message"]["content"] == ""


@pytest.mark.parametrize(
    ("stop", "finish"), [*FINISH_REASON_OF_STOP.items(), (None, "stop"), ("brand_new", "stop")]
)
def test_every_stop_reason(stop: str | None, finish: str) -> None:
    assert to_chat(message(text("x"), stop=stop))["choices"][0]["finish_reason"] == finish


def test_all_anthropic_stop_reasons_are_mapped() -> None:
    for stop in ("end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"):
        assert stop in FINISH_REASON_OF_STOP


def test_usage_counts_cached_tokens_as_prompt() -> None:
    out = to_chat(message(text("x"), cache_read_input_tokens=100, cache_creation_input_tokens=20))
    assert out["usage"] == {
        "prompt_tokens": 130,
        "completion_tokens": 5,
        "total_tokens": 135,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    answer = message(text("x"))
    del answer["usage"]
    assert to_chat(answer)["usage"]["total_tokens"] == 0


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[]",
        b'{"type": "error", "error": {"type": "api_error", "message": "x"}}',
        b'{"type": "message", "content": "text"}',
        b'{"type": "message", "content": [{"text": "no type"}]}',
        b'{"type":"message","content":[{"type":"server_tool_use","id":"s","name":"web_search","input":{}}]}',
        b'{"type":"message","content":[{"type":"web_search_tool_result","tool_use_id":"s","content":[]}]}',
    ],
)
def test_what_is_not_an_anthropic_answer_is_a_bad_gateway(payload: bytes) -> None:
    with pytest.raises(UntranslatableAnswer) as caught:
        chat_completion_from_message(payload)
    assert isinstance(caught.value, BadGateway)
    assert caught.value.status == 502
    assert caught.value.code == "untranslatable_answer"


@pytest.mark.parametrize(
    ("payload", "usage"),
    [
        (json.dumps(message(text("x"))).encode(), Usage(10, 5)),
        (
            json.dumps(message(cache_read_input_tokens=7, cache_creation_input_tokens=3)).encode(),
            Usage(20, 5, PromptDetails(7)),
        ),
        (b'{"usage": {"input_tokens": 4, "output_tokens": 2, "cache_read_input_tokens": null}}', Usage(4, 2)),
        (b'{"id": "x", "content": []}', None),
        (b'{"usage": null}', None),
        (b"not json", None),
        (b'{"usage": "lots"}', None),
    ],
)
def test_usage_of_message(payload: bytes, usage: Usage | None) -> None:
    assert usage_of_message(payload) == usage


def test_usage_of_message_cached_tokens() -> None:
    usage = usage_of_message(json.dumps(message(cache_read_input_tokens=7)).encode())
    assert usage is not None
    assert usage.cached_tokens == 7


# --- OpenAI chat.completion -> Anthropic message ------------------------------------------------


def test_a_chat_answer() -> None:
    assert to_message(completion({"content": "Hello.", "refusal": None}, usage=USAGE)) == {
        "id": "chatcmpl-xyz",
        "type": "message",
        "role": "assistant",
        "model": "gpt-x",
        "content": [text("Hello.")],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def test_tool_calls_become_tool_use_blocks() -> None:
    said = {
        "content": "Checking.",
        "tool_calls": [call("call_1", "weather", '{"city": "Paris"}'), call("call_2", "clock", "")],
    }
    out = to_message(completion(said, "tool_calls"))
    assert out["content"] == [
        text("Checking."),
        tool_use("call_1", "weather", {"city": "Paris"}),
        tool_use("call_2", "clock", {}),
    ]
    assert out["stop_reason"] == "tool_use"
    assert to_message(completion({**said, "content": None}, "tool_calls"))["content"][0]["type"] == "tool_use"
    assert to_message(completion({**said, "content": ""}, "tool_calls"))["content"][0]["type"] == "tool_use"


def test_tool_calls_that_finish_with_stop_still_ask_for_the_tools() -> None:
    out = to_message(completion({"content": None, "tool_calls": [call("c", "f", "{}")]}, "stop"))
    assert out["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("finish", "stop"), [*STOP_REASON_OF_FINISH.items(), (None, "end_turn"), ("eos", "end_turn")]
)
def test_every_finish_reason(finish: str | None, stop: str) -> None:
    assert to_message(completion({"content": "x"}, finish))["stop_reason"] == stop


def test_vllms_stop_string_is_a_stop_sequence() -> None:
    out = to_message(completion({"content": "1 2 3"}, "stop", stop_reason="END"))
    assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", "END")
    out = to_message(completion({"content": "1 2 3"}, "stop", stop_reason=128001))  # a stop token id
    assert (out["stop_reason"], out["stop_sequence"]) == ("end_turn", None)
    out = to_message(completion({"content": "1 2 3"}, "length", stop_reason=None))
    assert (out["stop_reason"], out["stop_sequence"]) == ("max_tokens", None)


def test_a_refusal_is_said_as_text() -> None:
    out = to_message(completion({"content": None, "refusal": "I can't help with that."}))
    assert out["content"] == [text("I can't help with that.")]
    assert out["stop_reason"] == "refusal"


def test_no_content_is_an_empty_list() -> None:
    out = to_message(completion({"content": None}, "length"))
    assert out["content"] == []
    assert out["stop_reason"] == "max_tokens"


def test_cached_prompt_tokens_are_cache_reads() -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 50, "prompt_tokens_details": {"cached_tokens": 768}}
    assert to_message(completion({"content": "x"}, usage=usage))["usage"] == {
        "input_tokens": 232,
        "output_tokens": 50,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 768,
    }
    usage = {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 99}}
    assert to_message(completion({"content": "x"}, usage=usage))["usage"]["input_tokens"] == 0
    usage = {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": None}
    assert to_message(completion({"content": "x"}, usage=usage))["usage"]["input_tokens"] == 10
    assert to_message(completion({"content": "x"}))["usage"]["input_tokens"] == 0


def test_only_the_first_choice_is_read() -> None:
    answer = completion({"content": "first"})
    answer["choices"].append(
        {"index": 1, "message": {"role": "assistant", "content": "second"}, "finish_reason": "stop"}
    )
    assert to_message(answer)["content"] == [text("first")]


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (
            completion({"content": None, "tool_calls": [call("c", "f", "{broken")]}, "tool_calls"),
            "not a JSON object",
        ),
        (
            completion({"content": None, "tool_calls": [call("c", "f", "[1]")]}, "tool_calls"),
            "not a JSON object",
        ),
        (
            completion({"content": None, "tool_calls": [call("c", "f", "3")]}, "tool_calls"),
            "not a JSON object",
        ),
        (
            completion({"content": None, "tool_calls": [{"id": "c", "type": "custom", "custom": {}}]}),
            "`custom` tool call",
        ),
        (
            completion({"content": None, "function_call": {"name": "f", "arguments": "{}"}}, "function_call"),
            "legacy",
        ),
        ({**completion({"content": "x"}), "choices": []}, "no choice"),
        ({"id": "x", "object": "chat.completion"}, "no choice"),
        ({**completion({"content": "x"}), "choices": [{"index": 0, "finish_reason": "stop"}]}, "no choice"),
        ({"choices": "many"}, "not a chat completion"),
    ],
)
def test_what_anthropic_cant_say_is_a_bad_gateway(answer: Json, says: str) -> None:
    with pytest.raises(UntranslatableAnswer, match=says) as caught:
        message_from_chat_completion(json.dumps(answer).encode())
    assert caught.value.status == 502


def test_not_json_is_a_bad_gateway() -> None:
    with pytest.raises(UntranslatableAnswer):
        message_from_chat_completion(b"<html>")


# --- both ways ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        message(text("Hello.")),
        message(text("a"), tool_use("toolu_1", "f", {"x": [1, {"y": None}]}), stop="tool_use"),
        message(tool_use("toolu_1", "f", {}), tool_use("toolu_2", "g", {"s": "é"}), stop="tool_use"),
        message(text("cut"), stop="max_tokens"),
        message(),
        message(text("x"), cache_read_input_tokens=30, cache_creation_input_tokens=0),
    ],
)
def test_anthropic_answer_there_and_back(answer: Json) -> None:
    back = to_message(to_chat(answer))
    expected = {
        **answer,
        "usage": {
            "input_tokens": answer["usage"]["input_tokens"],
            "output_tokens": answer["usage"]["output_tokens"],
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": answer["usage"].get("cache_read_input_tokens", 0),
        },
    }
    assert back == expected


_args = st.dictionaries(
    st.text(max_size=5),
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    max_size=4,
)


@given(
    st.lists(st.text(max_size=20), max_size=3),
    st.lists(
        st.tuples(st.from_regex(r"toolu_[a-z0-9]{1,8}", fullmatch=True), st.sampled_from(["f", "g"]), _args),
        max_size=3,
    ),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)
def test_any_anthropic_answer_reads_the_same_in_openai_terms(
    texts: list[str], calls: list[tuple[str, str, Json]], given_input: int, given_output: int, cached: int
) -> None:
    answer = message(
        *[text(t) for t in texts],
        *[tool_use(*c) for c in calls],
        stop="tool_use" if calls else "end_turn",
        input_tokens=given_input,
        output_tokens=given_output,
        cache_read_input_tokens=cached,
    )
    said = to_chat(answer)
    choice = said["choices"][0]
    assert choice["message"]["content"] == ("".join(texts) if texts else None)
    assert [json.loads(c["function"]["arguments"]) for c in choice["message"].get("tool_calls", [])] == [
        c[2] for c in calls
    ]
    assert said["usage"]["prompt_tokens"] == given_input + cached
    back = to_message(said)
    assert [b for b in back["content"] if b["type"] == "tool_use"] == [tool_use(*c) for c in calls]
    assert back["usage"]["input_tokens"] == given_input


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_translate_or_are_a_bad_gateway(payload: bytes) -> None:
    for translate in (chat_completion_from_message, message_from_chat_completion):
        with contextlib.suppress(UntranslatableAnswer):
            json.loads(translate(payload))
    assert usage_of_message(payload) is None or isinstance(usage_of_message(payload), Usage)


# --- errors -------------------------------------------------------------------------------------


def sdk_reads(body: bytes) -> None:
    """The Anthropic SDK reads ``body`` as an error response. Its union of error types lacks the
    documented ``request_too_large`` (HTTP 413), which is checked for shape alone."""
    if json.loads(body)["error"]["type"] == "request_too_large":
        body = body.replace(b"request_too_large", b"invalid_request_error")
    ErrorResponse.model_validate_json(body)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_anthropic_error_body(status: int, kind: str) -> None:
    body = anthropic_error_body(status, "Something happened.")
    assert json.loads(body) == {"type": "error", "error": {"type": kind, "message": "Something happened."}}
    sdk_reads(body)
    assert json.loads(anthropic_error_body(status, "x", "billing_error"))["error"]["type"] == "billing_error"


@pytest.mark.parametrize(
    ("payload", "said"),
    [
        (
            b'{"error":{"message":"Bad model.","type":"invalid_request_error","param":"model","code":null}}',
            "Bad model.",
        ),
        (
            b'{"object": "error", "message": "vLLM says no.", "type": "BadRequestError", "code": 400}',
            "vLLM says no.",
        ),
        (b'{"error": "Ollama says no."}', "Ollama says no."),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b"  <html>Bad gateway</html>\n", "<html>Bad gateway</html>"),
        (b'{"error": {"code": 3}}', '{"error": {"code": 3}}'),
        (b"", "The backend answered with HTTP status 400."),
        (b"\xff\xfe broken", "\ufffd\ufffd broken"),
    ],
)
def test_anthropic_error_from_openai(payload: bytes, said: str) -> None:
    body = anthropic_error_from_openai(400, payload)
    assert json.loads(body) == {"type": "error", "error": {"type": "invalid_request_error", "message": said}}
    ErrorResponse.model_validate_json(body)


def test_a_long_error_text_is_bounded() -> None:
    body = json.loads(anthropic_error_from_openai(502, b"x" * 100_000))
    assert body["error"] == {"type": "api_error", "message": "x" * MAX_ERROR_TEXT}
    assert json.loads(anthropic_error_from_openai(429, b'{"error": {"message": "slow down"}}'))["error"][
        "type"
    ] == ("rate_limit_error")


@pytest.mark.parametrize(
    ("status", "payload", "said"),
    [
        (
            429,
            b'{"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down."}}',
            {"message": "Slow down.", "type": "rate_limit_error", "param": None, "code": "rate_limit_error"},
        ),
        (
            529,
            b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"r"}',
            {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded_error"},
        ),
        (
            400,
            b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too big"}}',
            {
                "message": "max_tokens: too big",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_request_error",
            },
        ),
        (
            401,
            b'{"error": {"message": "OpenAI-shaped", "type": "x"}}',
            {
                "message": "OpenAI-shaped",
                "type": "authentication_error",
                "param": None,
                "code": "authentication_error",
            },
        ),
        (
            502,
            b"upstream connect error",
            {"message": "upstream connect error", "type": "server_error", "param": None, "code": "api_error"},
        ),
    ],
)
def test_openai_error_from_anthropic(status: int, payload: bytes, said: Json) -> None:
    assert json.loads(openai_error_from_anthropic(status, payload)) == {"error": said}


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (Untranslatable("No thinking here.", param="thinking"), "invalid_request_error"),
        (BadRequest("Bad."), "invalid_request_error"),
        (ModelNotFound("No such model."), "not_found_error"),
        (PayloadTooLarge("Too big."), "request_too_large"),
        (BadGateway("Backend broke."), "api_error"),
        (UntranslatableAnswer("Can't say it."), "api_error"),
        (ServiceUnavailable("All busy."), "api_error"),
        (GatewayTimeout("Too slow."), "timeout_error"),
        (ProxyError("Oops."), "api_error"),
    ],
)
def test_anthropic_error_of_a_tiermux_error(exc: ProxyError, kind: str) -> None:
    body = anthropic_error_of(exc)
    assert json.loads(body) == {"type": "error", "error": {"type": kind, "message": exc.message}}
    sdk_reads(body)


@given(st.integers(100, 599), st.binary(max_size=300))
def test_any_error_body_translates(status: int, payload: bytes) -> None:
    sdk_reads(anthropic_error_from_openai(status, payload))
    assert set(json.loads(openai_error_from_anthropic(status, payload))["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
