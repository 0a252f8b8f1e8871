"""An answer in either form: streams assembled into JSON answers, JSON answers replayed as streams,
and the official SDK reading a replay as it reads OpenAI."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from tiermux.cache.replay import PIECE, ReplayError, assemble, replay, replay_events

try:  # the transport module the installed SDK is built on
    import httpx2 as sdk_httpx  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    import httpx as sdk_httpx

USAGE = {
    "prompt_tokens": 21,
    "completion_tokens": 240,
    "total_tokens": 261,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}
TEXT_1K = "".join(f'Sentence {i} of a cached answer, with ünïcode and "quotes".\n' for i in range(18))


def chat(*choices: dict[str, Any], usage: dict[str, Any] | None = USAGE, **top: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1_735_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": i, **c} for i, c in enumerate(choices)],
    }
    if usage is not None:
        answer["usage"] = usage
    return {**answer, **top}


def message(content: str | None, **more: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "refusal": None, **more}


def plain(content: str = TEXT_1K, finish: str = "stop") -> dict[str, Any]:
    return {"message": message(content), "logprobs": None, "finish_reason": finish}


def call(n: int, name: str, arguments: str) -> dict[str, Any]:
    return {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": arguments}}


def token(text: str) -> dict[str, Any]:
    entry = {"token": text, "logprob": -0.25, "bytes": list(text.encode())}
    return {**entry, "top_logprobs": [entry]}


TOOLS = chat(
    {
        "message": message(
            None,
            tool_calls=[
                call(1, "get_weather", json.dumps({"city": "Paris", "unit": "celsius"})),
                call(2, "get_time", json.dumps({"tz": "Europe/Paris"})),
                call(3, "noop", "{}"),
            ],
        ),
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
)
WORDS = ["The", " answer", " is", " 42", "."] * 80
LOGPROBS = chat(
    {
        "message": message("".join(WORDS)),
        "logprobs": {"content": [token(w) for w in WORDS], "refusal": None},
        "finish_reason": "stop",
    }
)
REFUSAL = chat(
    {"message": message(None, refusal="I can't help with that."), "logprobs": None, "finish_reason": "stop"}
)
COMPLETION = {
    "id": "cmpl-xyz",
    "object": "text_completion",
    "created": 1_735_000_001,
    "model": "gpt-3.5-turbo-instruct",
    "choices": [
        {"text": TEXT_1K, "index": 0, "logprobs": None, "finish_reason": "length"},
        {"text": "Short.", "index": 1, "logprobs": None, "finish_reason": "stop"},
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 250, "total_tokens": 255},
}
COMPLETION_LOGPROBS = {
    **COMPLETION,
    "choices": [
        {
            "text": "".join(WORDS),
            "index": 0,
            "logprobs": {
                "tokens": WORDS,
                "token_logprobs": [-0.5] * len(WORDS),
                "top_logprobs": [{w: -0.5} for w in WORDS],
                "text_offset": list(range(len(WORDS))),
            },
            "finish_reason": "stop",
        }
    ],
}

CHAT_ANSWERS = {
    "plain": chat(plain(), system_fingerprint="fp_0ba0d124f1", service_tier="default"),
    "empty": chat(plain("", finish="length")),
    "n2": chat(plain(), plain("Second choice.", finish="length")),
    "tools": TOOLS,
    "logprobs": LOGPROBS,
    "refusal": REFUSAL,
    "refusal_logprobs": chat(
        {
            "message": message(None, refusal="No."),
            "logprobs": {"content": None, "refusal": [token("No"), token(".")]},
            "finish_reason": "stop",
        }
    ),
    "empty_logprobs": chat(
        {"message": message(""), "logprobs": {"content": [], "refusal": None}, "finish_reason": "length"}
    ),
    "no_usage": chat(plain("Hi."), usage=None),
}
ANSWERS = {**CHAT_ANSWERS, "completion": COMPLETION, "completion_logprobs": COMPLETION_LOGPROBS}


def encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def events(body: bytes) -> list[Any]:
    """The JSON of each replayed event, [DONE] last."""
    assert body.endswith(b"data: [DONE]\n\n")
    frames = body.split(b"\n\n")
    assert frames[-1] == b""
    assert all(frame.startswith(b"data: ") for frame in frames[:-1])
    return [json.loads(frame[6:]) for frame in frames[:-2]]


def sse(*chunks: Any, done: bool = True) -> bytes:
    """A stream as OpenAI writes it."""
    body = b"".join(b"data: " + encode(c) + b"\n\n" for c in chunks)
    return body + (b"data: [DONE]\n\n" if done else b"")


def chunk(*choices: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion.chunk",
        "created": 1_735_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": list(choices),
        "usage": None,
        "obfuscation": "x7Qa",
        **top,
    }


def delta(index: int = 0, finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "logprobs": None, "finish_reason": finish}


# --- replay, then assemble --------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("name", ANSWERS)
def test_a_replayed_answer_assembles_back_to_itself(name: str, include_usage: bool) -> None:
    answer = ANSWERS[name]
    stream = replay(encode(answer), include_usage)
    assembled = assemble(stream)
    assert assembled is not None
    expected = dict(answer)
    if not include_usage and "usage" in answer:
        del expected["usage"]  # a stream carries usage only when asked to
    assert json.loads(assembled) == expected


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("name", ANSWERS)
def test_replayed_chunks_look_like_openai_chunks(name: str, include_usage: bool) -> None:
    answer = ANSWERS[name]
    chunks = events(replay(encode(answer), include_usage))
    kind = "chat.completion.chunk" if answer["object"] == "chat.completion" else "text_completion"
    for c in chunks:
        assert (c["id"], c["object"], c["created"], c["model"]) == (
            answer["id"],
            kind,
            answer["created"],
            answer["model"],
        )
        assert c.get("system_fingerprint") == answer.get("system_fingerprint")
        assert ("usage" in c) is include_usage
        if kind == "chat.completion.chunk":
            ChatCompletionChunk.model_validate_json(json.dumps(c))
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == answer.get("usage")
        assert all(c["usage"] is None for c in chunks[:-1])
    else:
        assert all(c["choices"] for c in chunks)


def test_a_chat_choice_opens_with_the_role_and_closes_with_the_finish_reason() -> None:
    chunks = events(replay(encode(CHAT_ANSWERS["n2"]), False))
    by_choice: dict[int, list[dict[str, Any]]] = {}
    for c in chunks:
        (choice,) = c["choices"]
        by_choice.setdefault(choice["index"], []).append(choice)
    assert sorted(by_choice) == [0, 1]
    for choices in by_choice.values():
        assert choices[0]["delta"] == {"role": "assistant", "content": ""}
        assert choices[-1]["delta"] == {} and choices[-1]["finish_reason"] in ("stop", "length")
        assert all(c["finish_reason"] is None for c in choices[:-1])
    # moderate pieces: a 1 KB answer goes out in a handful of deltas
    pieces = [c["delta"]["content"] for c in by_choice[0][1:-1]]
    assert "".join(pieces) == TEXT_1K
    assert 1 < len(pieces) <= len(TEXT_1K) // PIECE + 1


def test_tool_calls_open_with_null_content_and_one_delta_per_call() -> None:
    chunks = events(replay(encode(TOOLS), False))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": None}
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert [c[0]["index"] for c in calls] == [0, 1, 2]
    assert calls[0][0] == {"index": 0, **call(1, "get_weather", '{"city": "Paris", "unit": "celsius"}')}


def test_logprobs_travel_with_their_own_text() -> None:
    for c in events(replay(encode(LOGPROBS), False))[1:-1]:
        choice = c["choices"][0]
        assert choice["delta"]["content"] == "".join(t["token"] for t in choice["logprobs"]["content"])


def test_logprobs_whose_tokens_do_not_spell_the_text_go_whole() -> None:
    # Byte-level tokens cut a character in two; the text cannot be cut along them.
    answer = chat(
        {
            "message": message("é!"),
            "logprobs": {"content": [token("\\xc3"), token("\\xa9"), token("!")], "refusal": None},
            "finish_reason": "stop",
        }
    )
    chunks = events(replay(encode(answer), False))
    assert len(chunks) == 3
    assert chunks[1]["choices"][0]["delta"] == {"content": "é!"}
    assert len(chunks[1]["choices"][0]["logprobs"]["content"]) == 3
    assert json.loads(assemble(replay(encode(answer), False)) or b"") == {
        k: v for k, v in answer.items() if k != "usage"
    }


def test_replay_events_are_the_replay_piece_by_piece() -> None:
    answer = encode(CHAT_ANSWERS["plain"])
    pieces = replay_events(answer, True)
    assert b"".join(pieces) == replay(answer, True)
    assert all(p.startswith(b"data: ") and p.endswith(b"\n\n") for p in pieces)


def test_reasoning_and_legacy_function_calls_survive() -> None:
    answer = chat(
        {
            "message": message(
                None,
                reasoning_content="Think first.",
                function_call={"name": "lookup", "arguments": '{"q": "x"}'},
            ),
            "logprobs": None,
            "finish_reason": "function_call",
        }
    )
    assert json.loads(assemble(replay(encode(answer), True)) or b"") == answer


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"not json",
        b"[]",
        b'{"object": "list", "data": []}',
        b'{"error": {"message": "overloaded"}}',
        b'{"object": "chat.completion", "choices": [{"index": 0}]}',
        b'{"object": "chat.completion", "choices": "no"}',
        encode(
            chat({"message": message(None, audio={"id": "a", "data": "UklGRg=="}), "finish_reason": "stop"})
        ),
        encode(
            chat(
                {
                    "message": message(None, tool_calls=[{"id": "c", "type": "custom"}]),
                    "finish_reason": "stop",
                }
            )
        ),
    ],
)
def test_replay_refuses_what_is_not_a_completion(answer: bytes) -> None:
    with pytest.raises(ReplayError):
        replay(answer, True)


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_replay_raises_nothing_but_replay_error(answer: bytes) -> None:
    with contextlib.suppress(ReplayError):
        replay(answer, True)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda x: (
            st.lists(x)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "object",
                        "choices",
                        "message",
                        "text",
                        "index",
                        "content",
                        "tool_calls",
                        "logprobs",
                        "finish_reason",
                        "usage",
                        "function",
                    ]
                ),
                x,
            )
        ),
        max_leaves=20,
    )
)
def test_replay_of_odd_json_raises_nothing_but_replay_error(value: Any) -> None:
    with contextlib.suppress(ReplayError):
        replay(encode({"object": "chat.completion", "choices": [value]}), False)


# --- streams as servers write them ------------------------------------------------------------


def opening(index: int, name: str) -> dict[str, Any]:
    """The first fragment of a tool call: id, type, name, no arguments yet."""
    function = {"name": name, "arguments": ""}
    return {"index": index, "id": f"call_{index + 1}", "type": "function", "function": function}


def fragment(index: int, arguments: str) -> dict[str, Any]:
    return {"index": index, "function": {"arguments": arguments}}


def openai_tool_stream() -> bytes:
    """Three tool calls, arguments in fragments, then the usage chunk (OpenAI's order and shapes)."""
    return sse(
        chunk(delta(role="assistant", content=None, tool_calls=[opening(0, "get_weather")], refusal=None)),
        chunk(delta(tool_calls=[fragment(0, '{"ci')])),
        chunk(delta(tool_calls=[fragment(0, 'ty": "Paris", "unit": "celsius"}')])),
        chunk(delta(tool_calls=[opening(1, "get_time")])),
        chunk(delta(tool_calls=[fragment(1, '{"tz": ')])),
        chunk(delta(tool_calls=[fragment(1, '"Europe/Paris"}')])),
        chunk(delta(tool_calls=[{**opening(2, "noop"), "function": {"name": "noop", "arguments": "{}"}}])),
        chunk(delta(finish="tool_calls")),
        chunk(choices=[], usage=USAGE),
    )


def test_an_openai_tool_call_stream_assembles_into_the_answer() -> None:
    expected = {**TOOLS, "system_fingerprint": "fp_0ba0d124f1", "service_tier": "default"}
    assert json.loads(assemble(openai_tool_stream()) or b"") == expected


def test_a_text_stream_assembles_with_every_choice_in_order() -> None:
    body = sse(
        chunk(delta(1, role="assistant", content="")),
        chunk(delta(0, role="assistant", content="")),
        chunk(delta(1, content="Sec")),
        chunk(delta(0, content="Fir")),
        chunk(delta(1, content="ond")),
        chunk(delta(0, content="st")),
        chunk(delta(0, finish="stop")),
        chunk(delta(1, finish="length")),
    )
    answer = json.loads(assemble(body) or b"")
    assert [c["message"]["content"] for c in answer["choices"]] == ["First", "Second"]
    assert [c["finish_reason"] for c in answer["choices"]] == ["stop", "length"]
    assert "usage" not in answer


def test_streams_in_any_sse_spelling_assemble() -> None:
    canonical = assemble(openai_tool_stream())
    assert canonical is not None
    crlf = openai_tool_stream().replace(b"\n", b"\r\n")
    no_space = openai_tool_stream().replace(b"data: ", b"data:")
    comments = b": ping\n\n" + openai_tool_stream().replace(b"\n\n", b"\n\n: keep-alive\n\n")
    named = openai_tool_stream().replace(b"data: ", b"event: message\nid: 7\ndata: ")
    no_last_blank = openai_tool_stream()[:-1]
    for body in (crlf, no_space, comments, named, no_last_blank):
        assert assemble(body) == canonical


def test_an_event_split_over_several_data_lines_assembles() -> None:
    body = sse(
        chunk(delta(role="assistant", content="")),
        chunk(delta(content="hi")),
        chunk(delta(finish="stop")),
    )
    first, rest = body.split(b"\n\n", 1)
    split = first.replace(b',"created"', b',\ndata: "created"') + b"\n\n" + rest
    assert assemble(split) == assemble(body)


def test_vllm_style_usage_on_every_chunk_keeps_the_last() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    body = sse(
        chunk(delta(role="assistant", content="a"), usage={**usage, "completion_tokens": 1}),
        chunk(delta(content="b", finish="stop"), usage=usage),
    )
    assert json.loads(assemble(body) or b"")["usage"] == usage


def test_azure_filter_chunks_without_object_are_skipped() -> None:
    azure = {"id": "", "object": "", "created": 0, "model": "", "choices": [], "prompt_filter_results": []}
    body = sse(azure, chunk(delta(role="assistant", content="ok")), chunk(delta(finish="stop")))
    assert json.loads(assemble(body) or b"")["choices"][0]["message"]["content"] == "ok"


def test_tool_calls_without_index_are_told_apart_by_their_ids() -> None:
    def no_index(n: int) -> dict[str, Any]:
        c = call(n, f"f{n}", "{}")
        return {**c, "function": {"name": f"f{n}", "arguments": "{"}}

    body = sse(
        chunk(delta(role="assistant", tool_calls=[no_index(1)])),
        chunk(delta(tool_calls=[{"function": {"arguments": "}"}}])),
        chunk(delta(tool_calls=[no_index(2)])),
        chunk(delta(tool_calls=[{"function": {"arguments": "}"}}], finish="tool_calls")),
    )
    calls = json.loads(assemble(body) or b"")["choices"][0]["message"]["tool_calls"]
    assert calls == [call(1, "f1", "{}"), call(2, "f2", "{}")]


def completion_chunk(text: str, finish: str | None = None, index: int = 0) -> dict[str, Any]:
    choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "choices": [choice]}


def test_a_legacy_completion_stream_assembles() -> None:
    body = sse(completion_chunk("Hel"), completion_chunk("lo"), completion_chunk("", "stop"))
    answer = json.loads(assemble(body) or b"")
    assert answer["object"] == "text_completion"
    assert answer["choices"] == [{"text": "Hello", "index": 0, "logprobs": None, "finish_reason": "stop"}]


def good_stream() -> bytes:
    return sse(chunk(delta(role="assistant", content="ok")), chunk(delta(finish="stop")))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"data: [DONE]\n\n",
        good_stream()[: -len(b"data: [DONE]\n\n")],  # cut before the end
        good_stream()[:40],  # cut mid-event
        sse(chunk(delta(role="assistant", content="ok"))),  # never finished
        sse(chunk(delta(1, role="assistant", content="ok", finish="stop"))),  # choice 0 missing
        sse(chunk(delta(role="assistant", content="o")), {"error": {"message": "overloaded"}}),
        b"event: error\ndata: {}\n\n" + good_stream(),
        good_stream().replace(b'"ok"', b'"ok'),  # unparsable
        b"data: \n\n" + good_stream(),  # empty data
        b'data: "text"\n\n' + good_stream(),
        sse(chunk(delta(role="assistant", content="ok")), completion_chunk("x", "stop")),  # two kinds
        sse({"object": "chat.completion", "choices": []}),  # not a chunk
        sse(chunk(delta(tool_calls=[{"index": 1, "id": "c", "function": {"name": "f"}}], finish="stop"))),
        sse(
            chunk(delta(tool_calls=[{"index": 0, "id": "c", "function": {"arguments": "{}"}}], finish="stop"))
        ),
        sse(chunk(delta(audio={"id": "a", "data": "AAAA"}, finish="stop"))),
    ],
)
def test_what_is_not_a_whole_answer_assembles_to_none(body: bytes) -> None:
    assert assemble(body) is None


@given(st.binary(max_size=400))
def test_assemble_never_raises(body: bytes) -> None:
    assemble(body)


@given(st.integers(min_value=1, max_value=len(sse(chunk(delta(content="x")))) - 1))
def test_any_prefix_of_a_stream_assembles_to_none(cut: int) -> None:
    assert assemble(good_stream()[:cut]) is None


def test_assemble_then_replay_then_assemble_is_stable() -> None:
    once = assemble(openai_tool_stream())
    assert once is not None
    assert assemble(replay(once, True)) == once


# --- the official SDK reads a replay ----------------------------------------------------------


def sdk_client(body: bytes) -> openai.OpenAI:
    def answer(request: Any) -> Any:
        return sdk_httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    http = sdk_httpx.Client(transport=sdk_httpx.MockTransport(answer))
    return openai.OpenAI(api_key="sk-test", base_url="http://tiermux.test/v1", http_client=http)


def sdk_accumulate(body: bytes) -> Any:
    """What the SDK's own accumulator makes of a streamed body (``.stream()`` uses the same one)."""
    state: ChatCompletionStreamState[object] = ChatCompletionStreamState()
    for c in sdk_client(body).chat.completions.create(model="auto", messages=[], stream=True):
        state.handle_chunk(c)
    return state.current_completion_snapshot


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("name", CHAT_ANSWERS)
def test_the_sdk_accumulates_a_replay_into_the_answer(name: str, include_usage: bool) -> None:
    answer = CHAT_ANSWERS[name]
    final = sdk_accumulate(replay(encode(answer), include_usage))
    assert (final.id, final.created, final.model) == (answer["id"], answer["created"], answer["model"])
    assert final.system_fingerprint == answer.get("system_fingerprint")
    assert final.service_tier == answer.get("service_tier")
    assert len(final.choices) == len(answer["choices"])
    for got, want in zip(final.choices, answer["choices"], strict=True):
        assert got.finish_reason == want["finish_reason"]
        assert got.message.role == "assistant"
        assert got.message.content == want["message"]["content"]
        assert got.message.refusal == want["message"]["refusal"]
        calls = [c.model_dump(include={"id", "type", "function"}) for c in got.message.tool_calls or []]
        for c in calls:
            c["function"].pop("parsed_arguments", None)
        assert calls == want["message"].get("tool_calls", [])
        logprobs = got.logprobs.model_dump(exclude_unset=True) if got.logprobs else None
        assert logprobs == want["logprobs"]
    usage = final.usage.model_dump(exclude_unset=True) if final.usage else None
    assert usage == (answer.get("usage") if include_usage else None)


def test_the_sdk_stream_helper_parses_replayed_tool_calls() -> None:
    client = sdk_client(replay(encode(TOOLS), True))
    messages: list[Any] = [{"role": "user", "content": "weather and time in Paris?"}]
    with client.chat.completions.stream(model="auto", messages=messages) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_completion()
    assert {"tool_calls.function.arguments.done", "chunk"} <= kinds
    calls = final.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        (c["id"], c["function"]["name"], c["function"]["arguments"])
        for c in TOOLS["choices"][0]["message"]["tool_calls"]
    ]
    assert final.usage is not None and final.usage.total_tokens == USAGE["total_tokens"]


def test_the_sdk_reads_reasoning_text_of_compatible_servers() -> None:
    answer = chat(
        {"message": message("42", reasoning_content="6 times 7."), "logprobs": None, "finish_reason": "stop"}
    )
    final = sdk_accumulate(replay(encode(answer), False))
    assert final.choices[0].message.content == "42"
    assert final.choices[0].message.model_extra["reasoning_content"] == "6 times 7."


def test_the_sdk_reads_a_completion_replay() -> None:
    client = sdk_client(replay(encode(COMPLETION_LOGPROBS), True))
    texts: dict[int, str] = {}
    tokens: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    usage = None
    for c in client.completions.create(model="auto", prompt="hi", stream=True):
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.logprobs is not None:
                tokens.setdefault(choice.index, []).extend(choice.logprobs.tokens or [])
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
        usage = c.usage or usage
    want = COMPLETION_LOGPROBS["choices"][0]
    assert texts == {0: want["text"]} and finish == {0: want["finish_reason"]}
    assert tokens == {0: want["logprobs"]["tokens"]}
    assert usage is not None and usage.model_dump(exclude_unset=True) == COMPLETION["usage"]


def test_the_sdk_stream_iterator_reads_every_chunk() -> None:
    body = replay(encode(CHAT_ANSWERS["n2"]), True)
    got = list(sdk_client(body).chat.completions.create(model="auto", messages=[], stream=True))
    assert [c.model_dump(exclude_unset=True) for c in got] == events(body)
