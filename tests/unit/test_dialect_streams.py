"""Streams translated between the dialects as they pass: what each official SDK makes of the
translation, the exact event sequences, chunk boundaries anywhere, ends good and bad."""

from __future__ import annotations

import itertools
import json
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import (
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
)
from anthropic.types.shared import ErrorResponse
from hypothesis import given
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from tiermux.dialects.anthropic_replay import replay_message
from tiermux.dialects.common import FINISH_REASON_OF_STOP, usage_of_anthropic
from tiermux.dialects.streams import (
    MAX_EVENT_BYTES,
    ChatFromMessagesStream,
    MessagesFromChatStream,
    MessagesUsageTap,
)

try:  # the transport module the installed SDKs are built on
    import httpx2 as sdk_httpx  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    import httpx as sdk_httpx

CLAUDE = "claude-sonnet-4-5"
GPT = "gpt-4o-mini"
USAGE = {
    "prompt_tokens": 120,
    "completion_tokens": 42,
    "total_tokens": 162,
    "prompt_tokens_details": {"cached_tokens": 100, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
EVENT_MODELS: dict[str, Any] = {
    "message_start": RawMessageStartEvent,
    "content_block_start": RawContentBlockStartEvent,
    "content_block_delta": RawContentBlockDeltaEvent,
    "content_block_stop": RawContentBlockStopEvent,
    "message_delta": RawMessageDeltaEvent,
    "message_stop": RawMessageStopEvent,
}


# --- streams as OpenAI-compatible servers write them ---------------------------------------------


def chunk(*choices: dict[str, Any], **top: Any) -> dict[str, Any]:
    body = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1_735_000_000, "model": GPT}
    return {**body, "choices": list(choices), "usage": None, **top}


def delta(finish: str | None = None, index: int = 0, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "logprobs": None, "finish_reason": finish}


def opening(index: int, name: str, arguments: str = "") -> dict[str, Any]:
    function = {"name": name, "arguments": arguments}
    return {"index": index, "id": f"call_{index}", "type": "function", "function": function}


def fragment(index: int, arguments: str) -> dict[str, Any]:
    return {"index": index, "function": {"arguments": arguments}}


def sse(*chunks: dict[str, Any], usage: dict[str, Any] | None = USAGE, done: bool = True) -> bytes:
    """An OpenAI stream: the chunks, the usage-only chunk (``include_usage``) and ``[DONE]``."""
    if usage is not None:
        chunks = (*chunks, chunk(usage=usage))
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return body + (b"data: [DONE]\n\n" if done else b"")


def text_stream(*pieces: str, finish: str = "stop", **more: Any) -> bytes:
    head = chunk(delta(role="assistant", content="", refusal=None))
    return sse(head, *(chunk(delta(content=p)) for p in pieces), chunk(delta(finish, **more)))


TOOLS = sse(
    chunk(delta(role="assistant", content="Let me check.")),
    chunk(delta(tool_calls=[opening(0, "get_weather")])),
    chunk(delta(tool_calls=[fragment(0, '{"city": ')])),
    chunk(delta(tool_calls=[fragment(0, '"Paris"}')])),
    chunk(delta(tool_calls=[opening(1, "get_time", '{"tz": "CET"}')])),
    chunk(delta(tool_calls=[opening(2, "noop")])),
    chunk(delta("tool_calls")),
)
TOOL_INPUTS = [{"city": "Paris"}, {"tz": "CET"}, {}]


def to_messages(body: bytes, cuts: list[int] | None = None) -> tuple[MessagesFromChatStream, bytes]:
    stream = MessagesFromChatStream(CLAUDE, "msg_test")
    return stream, feed_all(stream, body, cuts)


def feed_all(stream: Any, body: bytes, cuts: list[int] | None = None) -> bytes:
    """All ``stream`` sends for ``body`` cut at ``cuts`` (each byte alone when None)."""
    bounds = [0, *sorted(cuts), len(body)] if cuts is not None else list(range(len(body) + 1))
    pieces = [body[a:b] for a, b in itertools.pairwise(bounds)]
    return b"".join(stream.feed(piece) for piece in pieces) + stream.finish()


def anthropic_events(body: bytes) -> list[dict[str, Any]]:
    """Each event's data, checked against the SDK's own event models and its name."""
    frames = body.split(b"\n\n")
    assert frames[-1] == b""
    out = []
    for frame in frames[:-1]:
        name, data = frame.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: ")
        event = json.loads(data[6:])
        assert event["type"] == name[7:].decode()
        if event["type"] in EVENT_MODELS:
            EVENT_MODELS[event["type"]].model_validate(event)
        elif event["type"] == "error":
            ErrorResponse.model_validate(event)
        out.append(event)
    return out


def sdk_transport(body: bytes) -> Any:
    def answer(request: Any) -> Any:
        return sdk_httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return sdk_httpx.Client(transport=sdk_httpx.MockTransport(answer))


def sdk_message(body: bytes) -> Any:
    """What the official Anthropic SDK's ``messages.stream()`` makes of a stream."""
    client = anthropic.Anthropic(
        api_key="sk-ant-test", base_url="http://tiermux.test", http_client=sdk_transport(body)
    )
    messages: Any = [{"role": "user", "content": "hi"}]
    with client.messages.stream(model=CLAUDE, max_tokens=100, messages=messages) as stream:
        return stream.get_final_message()


def sdk_completion(body: bytes) -> Any:
    """What the official OpenAI SDK's accumulator makes of a stream."""
    client = openai.OpenAI(
        api_key="sk-test", base_url="http://tiermux.test/v1", http_client=sdk_transport(body)
    )
    state: ChatCompletionStreamState[object] = ChatCompletionStreamState()
    for c in client.chat.completions.create(model="auto", messages=[], stream=True):
        state.handle_chunk(c)
    return state.current_completion_snapshot


# --- OpenAI stream -> Anthropic events -----------------------------------------------------------


def test_a_text_stream_is_the_event_sequence_anthropic_sends() -> None:
    stream, out = to_messages(text_stream("Hel", "lo", " there"))
    events = anthropic_events(out)
    assert [e["type"] for e in events] == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    message = events[0]["message"]
    assert message == {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 0,
        },
    }
    assert events[2] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert [e["delta"] for e in events[3:6]] == [
        {"type": "text_delta", "text": t} for t in ("Hel", "lo", " there")
    ]
    assert events[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {
            "input_tokens": 20,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 100,
            "output_tokens": 42,
        },
    }
    assert stream.complete and not stream.broken and not stream.errored
    assert stream.usage is not None
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens, stream.usage.cached_tokens) == (
        120,
        42,
        100,
    )


def test_the_sdk_reads_a_translated_text_stream() -> None:
    final = sdk_message(to_messages(text_stream("Hello, ", "wörld ", '"quoted"\n'))[1])
    assert [(b.type, b.text) for b in final.content] == [("text", 'Hello, wörld "quoted"\n')]
    assert (final.id, final.model, final.role, final.stop_reason) == (
        "msg_test",
        CLAUDE,
        "assistant",
        "end_turn",
    )
    usage = final.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (20, 100, 42)
    assert usage.cache_creation_input_tokens == 0


def test_the_sdk_reads_tool_calls_interleaved_with_text() -> None:
    out = to_messages(TOOLS)[1]
    final = sdk_message(out)
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use", "tool_use"]
    assert final.content[0].text == "Let me check."
    calls = final.content[1:]
    assert [(c.id, c.name, c.input) for c in calls] == [
        ("call_0", "get_weather", TOOL_INPUTS[0]),
        ("call_1", "get_time", TOOL_INPUTS[1]),
        ("call_2", "noop", TOOL_INPUTS[2]),
    ]
    assert final.stop_reason == "tool_use"
    events = anthropic_events(out)
    starts = [e for e in events if e["type"] == "content_block_start"]
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert [e["index"] for e in starts] == stops == [0, 1, 2, 3]
    assert starts[1]["content_block"] == {
        "type": "tool_use",
        "id": "call_0",
        "name": "get_weather",
        "input": {},
    }
    # every delta goes to the block open at the time, and blocks never overlap
    open_block = None
    for event in events:
        if event["type"] == "content_block_start":
            assert open_block is None
            open_block = event["index"]
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_block
        elif event["type"] == "content_block_stop":
            assert event["index"] == open_block
            open_block = None


def test_text_after_a_tool_call_opens_a_new_text_block() -> None:
    body = sse(
        chunk(delta(tool_calls=[opening(0, "f", "{}")])),
        chunk(delta(content="done")),
        chunk(delta("tool_calls")),
    )
    final = sdk_message(to_messages(body)[1])
    assert [b.type for b in final.content] == ["tool_use", "text"]


@pytest.mark.parametrize(
    ("finish", "more", "stop_reason", "stop_sequence"),
    [
        ("stop", {}, "end_turn", None),
        ("length", {}, "max_tokens", None),
        ("content_filter", {}, "refusal", None),
        ("tool_calls", {}, "tool_use", None),
        ("function_call", {}, "tool_use", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),  # vLLM names the matched string
        ("stop", {"stop_reason": 128_001}, "end_turn", None),  # ... or the stop token's id
        ("eos", {}, "end_turn", None),  # a finish reason unknown here
    ],
)
def test_stop_reasons(finish: str, more: dict[str, Any], stop_reason: str, stop_sequence: str | None) -> None:
    head = chunk(delta(role="assistant", content="x"))
    body = sse(head, chunk({**delta(finish), **more}))
    final = sdk_message(to_messages(body)[1])
    assert (final.stop_reason, final.stop_sequence) == (stop_reason, stop_sequence)


def test_stop_after_tool_calls_is_tool_use() -> None:
    body = sse(chunk(delta(tool_calls=[opening(0, "f", '{"a": 1}')])), chunk(delta("stop")))
    assert sdk_message(to_messages(body)[1]).stop_reason == "tool_use"


def test_a_refusal_is_text_and_stops_as_refusal() -> None:
    body = sse(chunk(delta(role="assistant", content=None, refusal="I can't.")), chunk(delta("stop")))
    final = sdk_message(to_messages(body)[1])
    assert [b.text for b in final.content] == ["I can't."]
    assert final.stop_reason == "refusal"


def test_role_only_and_empty_chunks_open_no_block() -> None:
    body = sse(
        chunk(delta(role="assistant", content="")),
        chunk(delta(content="")),
        chunk(delta(tool_calls=[])),
        chunk(),  # no choices: Azure's filter results look like this
        chunk(delta("stop")),
    )
    events = anthropic_events(to_messages(body)[1])
    assert [e["type"] for e in events] == ["message_start", "ping", "message_delta", "message_stop"]
    assert sdk_message(to_messages(body)[1]).content == []


def test_only_the_first_choice_is_told() -> None:
    body = sse(
        chunk(delta(content="one"), delta(index=1, content="two")), chunk(delta("stop"), delta("stop", 1))
    )
    assert [b.text for b in sdk_message(to_messages(body)[1]).content] == ["one"]


def test_usage_on_every_chunk_gives_the_input_count_at_the_start() -> None:
    first = {"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7}
    last = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    body = sse(
        chunk(delta(content="a"), usage=first), chunk(delta("stop", content="b"), usage=last), usage=None
    )
    stream, out = to_messages(body)
    events = anthropic_events(out)
    assert events[0]["message"]["usage"]["input_tokens"] == 7
    assert events[-2]["usage"]["output_tokens"] == 2
    assert stream.usage is not None and stream.usage.completion_tokens == 2


def test_no_usage_chunk_counts_zero_output_tokens() -> None:
    stream, out = to_messages(sse(chunk(delta(content="hi")), chunk(delta("stop")), usage=None))
    assert anthropic_events(out)[-2]["usage"] == {"output_tokens": 0}
    assert stream.usage is None and stream.complete


def test_tool_calls_without_index_are_told_apart_by_id() -> None:
    def whole(n: int) -> dict[str, Any]:
        return {"id": f"call_{n}", "type": "function", "function": {"name": f"f{n}", "arguments": '{"n": '}}

    body = sse(
        chunk(delta(tool_calls=[whole(1)])),
        chunk(delta(tool_calls=[{"function": {"arguments": "1}"}}])),
        chunk(delta(tool_calls=[whole(2)])),
        chunk(delta(tool_calls=[{"function": {"arguments": "2}"}}])),
        chunk(delta("tool_calls")),
    )
    final = sdk_message(to_messages(body)[1])
    assert [(b.id, b.name, b.input) for b in final.content] == [
        ("call_1", "f1", {"n": 1}),
        ("call_2", "f2", {"n": 2}),
    ]


def test_a_call_named_after_its_first_pieces_keeps_them() -> None:
    body = sse(
        chunk(delta(tool_calls=[{"index": 0, "id": "call_x", "function": {"arguments": '{"a"'}}])),
        chunk(delta(tool_calls=[{"index": 0, "function": {"name": "late", "arguments": ": 1}"}}])),
        chunk(delta("tool_calls")),
    )
    final = sdk_message(to_messages(body)[1])
    assert [(b.id, b.name, b.input) for b in final.content] == [("call_x", "late", {"a": 1})]


def test_a_call_without_id_gets_one() -> None:
    body = sse(
        chunk(delta(tool_calls=[{"index": 0, "function": {"name": "f", "arguments": "{}"}}])),
        chunk(delta("stop")),
    )
    (block,) = sdk_message(to_messages(body)[1]).content
    assert block.id.startswith("toolu_") and len(block.id) > 10


def test_a_generated_message_id_looks_like_anthropics() -> None:
    stream = MessagesFromChatStream(CLAUDE)
    first = anthropic_events(stream.feed(text_stream("x")))[0]["message"]["id"]
    assert first.startswith("msg_") and len(first) > 20
    assert (
        anthropic_events(MessagesFromChatStream(CLAUDE).feed(text_stream("x")))[0]["message"]["id"] != first
    )


# --- errors and broken streams -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ({"message": "Overloaded", "type": "server_error", "param": None, "code": None}, "api_error"),
        (
            {"object": "error", "message": "too long", "type": "BadRequestError", "code": 400},
            "invalid_request_error",
        ),
        ({"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}, "rate_limit_error"),
        (
            {"message": "no backend answered in time", "type": "upstream_error", "code": "upstream_timeout"},
            "timeout_error",
        ),
        ({"message": "busy", "type": "overloaded_error"}, "overloaded_error"),
        ("plain text", "api_error"),
    ],
)
def test_an_error_mid_stream_is_anthropics_error_event_and_the_last(error: Any, kind: str) -> None:
    body = sse(
        chunk(delta(content="partial")), {"error": error}, chunk(delta(content="more")), chunk(delta("stop"))
    )
    stream, out = to_messages(body)
    events = anthropic_events(out)
    assert [e["type"] for e in events][-2:] == ["content_block_delta", "error"]
    message = error if isinstance(error, str) else error["message"]
    assert events[-1] == {"type": "error", "error": {"type": kind, "message": message}}
    assert stream.errored and not stream.complete and not stream.broken
    with pytest.raises(anthropic.APIStatusError) as raised:
        sdk_message(out)
    assert isinstance(raised.value.body, dict) and raised.value.body["error"]["type"] == kind


def test_an_error_before_anything_is_the_only_event() -> None:
    out = to_messages(b'event: error\ndata: {"error": {"message": "nope", "code": 503}}\n\n')[1]
    assert anthropic_events(out) == [{"type": "error", "error": {"type": "api_error", "message": "nope"}}]
    out = to_messages(b"event: error\ndata: upstream went away\n\n")[1]
    assert anthropic_events(out)[-1]["error"] == {"type": "api_error", "message": "upstream went away"}


@pytest.mark.parametrize(
    "body",
    [
        sse(chunk(delta(content="cut")), usage=None, done=False),  # ended before its finish
        sse(chunk(delta(content="cut")), usage=None),  # [DONE] without a finish reason
        sse(chunk(delta(content="x")))[:-5],  # cut mid-event
        b"",
        b"data: {not json\n\n" + text_stream("x"),
        sse(  # a piece for a call whose block was closed
            chunk(delta(tool_calls=[opening(0, "f")])),
            chunk(delta(tool_calls=[opening(1, "g")])),
            chunk(delta(tool_calls=[fragment(0, "{}")])),
            chunk(delta("tool_calls")),
        ),
        sse(
            chunk(delta(tool_calls=[{"index": 0, "id": "c", "function": {"arguments": "{}"}}])),
            chunk(delta("stop")),
        ),
    ],
)
def test_a_broken_stream_gets_nothing_made_up(body: bytes) -> None:
    stream, out = to_messages(body)
    events = anthropic_events(out)
    assert stream.broken and not stream.complete and not stream.errored
    assert not any(e["type"] in ("message_delta", "message_stop") for e in events)
    ending = stream.error_event(502, "the backend's stream broke off")
    assert anthropic_events(ending) == [
        {"type": "error", "error": {"type": "api_error", "message": "the backend's stream broke off"}}
    ]
    with pytest.raises(anthropic.APIStatusError):
        sdk_message(out + ending)


def test_nothing_goes_out_once_broken_or_done() -> None:
    stream = MessagesFromChatStream(CLAUDE)
    assert stream.feed(b"data: [1,\n\n") == b""
    assert stream.broken and stream.feed(text_stream("x")) == b"" and stream.finish() == b""
    stream = MessagesFromChatStream(CLAUDE)
    assert stream.feed(text_stream("x")).endswith(b'{"type":"message_stop"}\n\n')
    assert stream.feed(text_stream("y")) == b"" and stream.finish() == b"" and stream.complete


def test_a_stream_that_finished_but_never_said_done_completes_at_its_end() -> None:
    stream, out = to_messages(text_stream("ok")[: -len(b"data: [DONE]\n\n")])
    assert stream.complete and anthropic_events(out)[-1] == {"type": "message_stop"}


def test_an_endless_event_breaks_the_stream() -> None:
    stream = MessagesFromChatStream(CLAUDE)
    piece = b"x" * (1 << 20)
    assert stream.feed(sse(chunk(delta(content="ok")), usage=None, done=False) + b"data: ") != b""
    for _ in range((MAX_EVENT_BYTES >> 20) - 1):
        assert stream.feed(piece) == b""
    assert not stream.broken
    stream.feed(piece)
    assert stream.broken


# --- any chunking, any line ends -----------------------------------------------------------------


@given(st.lists(st.integers(min_value=0, max_value=len(TOOLS)), max_size=25))
def test_chunk_boundaries_do_not_matter_to_messages(cuts: list[int]) -> None:
    whole = anthropic_events(to_messages(TOOLS, [])[1])
    assert anthropic_events(to_messages(TOOLS, cuts)[1]) == whole


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"])
def test_other_line_ends_and_sse_spellings_read_the_same(ending: bytes) -> None:
    whole = anthropic_events(to_messages(TOOLS, [])[1])
    spelled = b": keep-alive\n\n" + TOOLS.replace(b"data: ", b"data:").replace(b"\n\n", b"\n\n: ping\n\n")
    assert anthropic_events(to_messages(spelled.replace(b"\n", ending))[1]) == whole


def test_several_data_lines_make_one_event() -> None:
    body = text_stream("a").replace(b'"object": ', b'"object":\ndata: ', 1)
    assert anthropic_events(to_messages(body)[1]) == anthropic_events(to_messages(text_stream("a"))[1])


# --- Anthropic events -> OpenAI chunks -----------------------------------------------------------


def anthropic_stream(
    *blocks: Any, stop: str = "end_turn", delta_usage: dict[str, Any] | None = None
) -> bytes:
    """Events as Anthropic writes them (spaces after separators, a ping after the first block)."""
    usage = {
        "input_tokens": 25,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 70,
        "output_tokens": 1,
    }
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_01X",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": CLAUDE,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage,
            },
        }
    ]
    for index, (start, deltas) in enumerate(blocks):
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        if index == 0:
            events.append({"type": "ping"})
        events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": index})
    counts = delta_usage or {"output_tokens": 15}
    events.append(
        {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": counts}
    )
    events.append({"type": "message_stop"})
    return b"".join(wire_event(e) for e in events)


def wire_event(event: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event["type"].encode(), json.dumps(event).encode())


def text(*pieces: str) -> Any:
    return {"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in pieces]


def tool(id_: str, name: str, *pieces: str) -> Any:
    deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
    return {"type": "tool_use", "id": id_, "name": name, "input": {}}, deltas


def thinking(words: str) -> Any:
    deltas = [{"type": "thinking_delta", "thinking": words}, {"type": "signature_delta", "signature": "EqQB"}]
    return {"type": "thinking", "thinking": "", "signature": ""}, deltas


MIXED = anthropic_stream(
    thinking("The user wants weather."),
    text("I'll look ", "that up."),
    tool("toolu_01", "get_weather", "", '{"city": "Pa', 'ris"}'),
    tool("toolu_02", "get_time"),
    stop="tool_use",
)


def to_chat(body: bytes, include_usage: bool = True, cuts: list[int] | None = None) -> tuple[Any, bytes]:
    stream = ChatFromMessagesStream(GPT, include_usage, "chatcmpl-test", 1_735_000_000)
    return stream, feed_all(stream, body, cuts)


def openai_chunks(body: bytes) -> list[dict[str, Any]]:
    """Each chunk, checked against the SDK's chunk model; [DONE] last."""
    frames = body.split(b"\n\n")
    assert frames[-2:] == [b"data: [DONE]", b""]
    chunks = [json.loads(f.removeprefix(b"data: ")) for f in frames[:-2]]
    for c in chunks:
        if "error" not in c:
            ChatCompletionChunk.model_validate(c)
    return chunks


def test_the_sdk_reads_a_translated_anthropic_stream() -> None:
    stream, out = to_chat(MIXED)
    final = sdk_completion(out)
    (choice,) = final.choices
    assert (final.id, final.model, final.created) == ("chatcmpl-test", GPT, 1_735_000_000)
    assert choice.message.content == "I'll look that up."
    assert choice.finish_reason == "tool_calls"
    calls = [(c.id, c.type, c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
    assert calls == [
        ("toolu_01", "function", "get_weather", '{"city": "Paris"}'),
        ("toolu_02", "function", "get_time", "{}"),  # no input pieces: an OpenAI client can still parse it
    ]
    assert final.usage is not None
    assert final.usage.model_dump(exclude_unset=True) == {
        "prompt_tokens": 100,
        "completion_tokens": 15,
        "total_tokens": 115,
        "prompt_tokens_details": {"cached_tokens": 70},
    }
    assert stream.usage == usage_of_anthropic(25, 15, 70, 5)
    assert stream.complete and not stream.broken


def test_translated_chunks_look_like_openai_chunks() -> None:
    chunks = openai_chunks(to_chat(MIXED)[1])
    assert all(
        (c["id"], c["object"], c["model"]) == ("chatcmpl-test", "chat.completion.chunk", GPT) for c in chunks
    )
    assert chunks[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["choices"] == []
    finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1]]
    assert finishes[-1] == "tool_calls" and not any(finishes[:-1])
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_01",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert calls[1] == {"index": 0, "function": {"arguments": '{"city": "Pa'}}


def test_without_include_usage_there_is_no_usage_anywhere() -> None:
    stream, out = to_chat(MIXED, include_usage=False)
    chunks = openai_chunks(out)
    assert all("usage" not in c and c["choices"] for c in chunks)
    assert sdk_completion(out).usage is None
    assert stream.usage is not None and stream.usage.completion_tokens == 15  # still read for the books


def test_thinking_is_left_out() -> None:
    out = to_chat(MIXED)[1]
    assert b"weather." not in out and b"EqQB" not in out


def test_server_tools_and_citations_are_left_out() -> None:
    server = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    result = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}
    citation = {"type": "citations_delta", "citation": {"type": "char_location", "cited_text": "x"}}
    body = anthropic_stream(
        (server, [{"type": "input_json_delta", "partial_json": '{"query": "q"}'}]),
        (result, []),
        ({"type": "text", "text": ""}, [citation, {"type": "text_delta", "text": "Found."}]),
    )
    final = sdk_completion(to_chat(body)[1])
    assert final.choices[0].message.content == "Found."
    assert not final.choices[0].message.tool_calls


@pytest.mark.parametrize("stop", sorted(FINISH_REASON_OF_STOP))
def test_finish_reasons(stop: str) -> None:
    final = sdk_completion(to_chat(anthropic_stream(text("x"), stop=stop))[1])
    assert final.choices[0].finish_reason == FINISH_REASON_OF_STOP[stop]


def test_the_latest_counts_win() -> None:
    newer = {"input_tokens": 30, "cache_read_input_tokens": 0, "output_tokens": 9}
    stream, out = to_chat(anthropic_stream(text("x"), delta_usage=newer))
    assert stream.usage == usage_of_anthropic(30, 9, 0, 5)
    assert openai_chunks(out)[-1]["usage"]["prompt_tokens"] == 35


def test_a_tool_whose_whole_input_came_in_its_start_keeps_it() -> None:
    start = {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {"a": [1, 2]}}
    final = sdk_completion(to_chat(anthropic_stream((start, []), stop="tool_use"))[1])
    assert json.loads(final.choices[0].message.tool_calls[0].function.arguments) == {"a": [1, 2]}


def test_the_sdk_stream_manager_parses_translated_tool_arguments() -> None:
    client = openai.OpenAI(
        api_key="sk-test", base_url="http://tiermux.test/v1", http_client=sdk_transport(to_chat(MIXED)[1])
    )
    messages: Any = [{"role": "user", "content": "weather?"}]
    with client.chat.completions.stream(model="auto", messages=messages) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_completion()
    assert {"content.done", "tool_calls.function.arguments.done"} <= kinds
    assert final.choices[0].message.tool_calls[0].function.arguments == '{"city": "Paris"}'


@pytest.mark.parametrize(
    ("kind", "openai_type"),
    [
        ("overloaded_error", "server_error"),
        ("rate_limit_error", "rate_limit_error"),
        ("api_error", "server_error"),
    ],
)
def test_an_anthropic_error_is_openais_in_band_error(kind: str, openai_type: str) -> None:
    error = {"type": "error", "error": {"type": kind, "message": "Overloaded"}}
    body = MIXED.replace(b"event: message_delta", wire_event(error) + b"event: message_delta", 1)
    stream, out = to_chat(body)
    frames = out.split(b"\n\n")
    assert frames[-1] == b"" and b"[DONE]" not in out
    assert json.loads(frames[-2].removeprefix(b"data: ")) == {
        "error": {"message": "Overloaded", "type": openai_type, "param": None, "code": kind}
    }
    assert stream.errored and not stream.broken and not stream.complete
    with pytest.raises(openai.APIError):
        sdk_completion(out)


def test_an_error_that_is_not_json_is_still_an_error() -> None:
    stream, out = to_chat(b"event: error\ndata: upstream went away\n\n")
    assert openai_chunks(out + b"data: [DONE]\n\n") == [
        {
            "error": {
                "message": "upstream went away",
                "type": "server_error",
                "param": None,
                "code": "api_error",
            }
        }
    ]
    assert stream.errored


@pytest.mark.parametrize(
    "body",
    [
        MIXED[: MIXED.index(b"event: message_stop")],  # no message_stop
        MIXED[:-10],
        b"",
        MIXED.replace(b'"I\'ll look "', b"\"I'll look", 1),  # unparsable
    ],
)
def test_a_broken_anthropic_stream_gets_nothing_made_up(body: bytes) -> None:
    stream, out = to_chat(body)
    assert stream.broken and not stream.complete and b"[DONE]" not in out
    assert b'"usage":{' not in out
    ending = stream.error_event(502, "the backend's stream broke off")
    assert json.loads(ending.removeprefix(b"data: ")) == {
        "error": {
            "message": "the backend's stream broke off",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


@given(st.lists(st.integers(min_value=0, max_value=len(MIXED)), max_size=25))
def test_chunk_boundaries_do_not_matter_to_chunks(cuts: list[int]) -> None:
    assert openai_chunks(to_chat(MIXED, cuts=cuts)[1]) == openai_chunks(to_chat(MIXED, cuts=[])[1])


def test_crlf_reads_the_same() -> None:
    assert openai_chunks(to_chat(MIXED.replace(b"\n", b"\r\n"))[1]) == openai_chunks(to_chat(MIXED)[1])


# --- both ways -----------------------------------------------------------------------------------


def test_openai_to_anthropic_to_openai_keeps_the_answer() -> None:
    direct = sdk_completion(TOOLS)
    _, messages = to_messages(TOOLS)
    back = sdk_completion(to_chat(messages)[1])
    assert back.choices[0].message.content == direct.choices[0].message.content
    assert back.choices[0].finish_reason == direct.choices[0].finish_reason == "tool_calls"
    got = [
        (c.id, c.function.name, json.loads(c.function.arguments))
        for c in back.choices[0].message.tool_calls or []
    ]
    want = [
        (c.id, c.function.name, json.loads(c.function.arguments or "{}"))
        for c in direct.choices[0].message.tool_calls or []
    ]
    assert got == want
    assert back.usage is not None and direct.usage is not None
    assert (back.usage.prompt_tokens, back.usage.completion_tokens) == (
        direct.usage.prompt_tokens,
        direct.usage.completion_tokens,
    )
    assert (
        back.usage.prompt_tokens_details is not None and back.usage.prompt_tokens_details.cached_tokens == 100
    )


def test_a_replayed_message_crosses_to_openai_and_back() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": [
            {"type": "text", "text": "Weather, coming up. " * 40},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"cities": ["Paris", "Rome"] * 50},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 4, "output_tokens": 300},
    }
    chat = to_chat(replay_message(json.dumps(message).encode()))[1]
    final = sdk_message(to_messages(chat)[1])
    assert [b.model_dump(exclude_none=True) for b in final.content] == message["content"]
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (
        10,
        4,
        300,
    )


# --- the usage of a stream relayed unchanged -----------------------------------------------------


def test_the_tap_reads_the_usage_and_changes_nothing() -> None:
    tap = MessagesUsageTap()
    assert feed_all(tap, MIXED) == MIXED
    assert tap.usage == usage_of_anthropic(25, 15, 70, 5)


@given(st.lists(st.integers(min_value=0, max_value=len(MIXED)), max_size=25), st.booleans())
def test_the_tap_reads_across_any_boundaries(cuts: list[int], crlf: bool) -> None:
    body = MIXED.replace(b"\n", b"\r\n") if crlf else MIXED
    tap = MessagesUsageTap()
    bounds = [0, *sorted(c * len(body) // len(MIXED) for c in cuts), len(body)]
    relayed = b"".join(tap.feed(body[a:b]) for a, b in itertools.pairwise(bounds))
    assert relayed == body and tap.finish() == b""
    assert tap.usage == usage_of_anthropic(25, 15, 70, 5)


def test_the_tap_takes_the_latest_counts_and_is_not_fooled_by_text() -> None:
    newer = {"input_tokens": 30, "output_tokens": 9}
    body = anthropic_stream(
        text('{"type": "message_delta", "usage": {"output_tokens": 999}}'), delta_usage=newer
    )
    tap = MessagesUsageTap()
    tap.feed(body)
    tap.finish()
    assert tap.usage == usage_of_anthropic(30, 9, 70, 5)


def test_the_tap_reads_a_last_line_without_its_end() -> None:
    tap = MessagesUsageTap()
    tap.feed(
        MIXED[: MIXED.index(b"event: message_delta")]
        + b'data: {"type": "message_delta", "usage": {"output_tokens": 3}}'
    )
    assert tap.usage == usage_of_anthropic(25, 1, 70, 5)
    tap.finish()
    assert tap.usage == usage_of_anthropic(25, 3, 70, 5)
