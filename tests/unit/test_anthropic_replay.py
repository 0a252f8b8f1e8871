"""An Anthropic answer in either form: messages replayed as event streams, streams assembled into
messages, and the official SDK reading a replay as it reads Anthropic."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import anthropic
import pytest
from anthropic.types import (
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
)
from hypothesis import given
from hypothesis import strategies as st

from tiermux.cache import replay as openai_replay
from tiermux.dialects.anthropic_replay import (
    PIECE,
    ReplayError,
    assemble_message,
    message_complete,
    replay_message,
    replay_message_events,
)

try:  # the transport module the installed SDK is built on
    import httpx2 as sdk_httpx  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    import httpx as sdk_httpx

CLAUDE = "claude-sonnet-4-5-20250929"
EVENT_MODELS: dict[str, Any] = {
    "message_start": RawMessageStartEvent,
    "content_block_start": RawContentBlockStartEvent,
    "content_block_delta": RawContentBlockDeltaEvent,
    "content_block_stop": RawContentBlockStopEvent,
    "message_delta": RawMessageDeltaEvent,
    "message_stop": RawMessageStopEvent,
}
USAGE = {
    "input_tokens": 412,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 2048,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 503,
    "service_tier": "standard",
}
LONG_TEXT = "".join(f'Line {i}: ünïcode, "quotes", \\ backslashes and emoji 🙂.\n' for i in range(40))
CITATION = {
    "type": "char_location",
    "cited_text": "The grass is green.",
    "document_index": 0,
    "document_title": "Facts",
    "start_char_index": 0,
    "end_char_index": 19,
    "file_id": None,
}


def message(*content: dict[str, Any], stop: str = "end_turn", **more: Any) -> dict[str, Any]:
    answer = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": list(content),
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": USAGE,
    }
    return {**answer, **more}


def text(value: str, **more: Any) -> dict[str, Any]:
    return {"type": "text", "text": value, **more}


def tool(n: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_0{n}", "name": name, "input": arguments}


BIG_INPUT = {"rows": [{"id": i, "label": f"row {i}, with a comma", "path": "C:\\dir\\x"} for i in range(40)]}
MESSAGES = {
    "text": message(text("Hello!")),
    "long_text": message(text(LONG_TEXT)),
    "empty": message(text(""), stop="max_tokens"),
    "no_content": message(),
    "tools": message(
        text("I'll check both."),
        tool(1, "get_weather", {"city": "Paris", "unit": "celsius"}),
        tool(2, "get_time", {}),
        stop="tool_use",
    ),
    "big_input": message(tool(1, "store", BIG_INPUT), stop="tool_use"),
    "thinking": message(
        {"type": "thinking", "thinking": "Let me think. " * 50, "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"},
        {
            "type": "redacted_thinking",
            "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP",
        },
        text("42."),
    ),
    "stop_sequence": message(text("one, two, "), stop="stop_sequence", stop_sequence="three"),
    "citations": message(text("the grass is green", citations=[CITATION, {**CITATION, "document_index": 1}])),
    "server_tools": message(
        {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search", "input": {"query": "weather"}},
        {
            "type": "web_search_tool_result",
            "tool_use_id": "srvtoolu_01",
            "content": [
                {
                    "type": "web_search_result",
                    "title": "Weather",
                    "url": "https://example.com/",
                    "encrypted_content": "Eq0B",
                    "page_age": None,
                }
            ],
        },
        text("Sunny."),
        usage={**USAGE, "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 0}},
    ),
    "refusal": message(
        text("I can't help with that."),
        stop="refusal",
        stop_details={"type": "refusal", "category": "cyber", "explanation": None},
    ),
    "pause_turn": message(text("Searching..."), stop="pause_turn"),
}


def encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def events(body: bytes) -> list[dict[str, Any]]:
    """Each event's data, checked against its name and the SDK's event models."""
    frames = body.split(b"\n\n")
    assert frames[-1] == b""
    out = []
    for frame in frames[:-1]:
        name, data = frame.split(b"\n")
        event = json.loads(data.removeprefix(b"data: "))
        assert name == b"event: " + event["type"].encode()
        if event["type"] in EVENT_MODELS:
            EVENT_MODELS[event["type"]].model_validate(event)
        out.append(event)
    return out


def without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


def sdk_final(body: bytes) -> Any:
    def answer(request: Any) -> Any:
        return sdk_httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    http = sdk_httpx.Client(transport=sdk_httpx.MockTransport(answer))
    client = anthropic.Anthropic(api_key="sk-ant-test", base_url="http://tiermux.test", http_client=http)
    messages: Any = [{"role": "user", "content": "hi"}]
    with client.messages.stream(model=CLAUDE, max_tokens=1024, messages=messages) as stream:
        return stream.get_final_message()


# --- the SDK reads a replay ----------------------------------------------------------------------


@pytest.mark.parametrize("name", MESSAGES)
def test_the_sdk_accumulates_a_replay_into_the_message(name: str) -> None:
    answer = MESSAGES[name]
    final = sdk_final(replay_message(encode(answer)))
    assert without_none(final.model_dump(mode="json")) == without_none(answer)


@pytest.mark.parametrize("name", MESSAGES)
def test_a_replay_is_the_event_sequence_anthropic_sends(name: str) -> None:
    answer = MESSAGES[name]
    replayed = events(replay_message(encode(answer)))
    kinds = [e["type"] for e in replayed]
    assert kinds[:2] == ["message_start", "ping"] and kinds[-2:] == ["message_delta", "message_stop"]
    start = replayed[0]["message"]
    assert (start["content"], start["stop_reason"], start["stop_sequence"]) == ([], None, None)
    assert start["usage"] == {**answer["usage"], "output_tokens": 0}
    assert replayed[-2]["delta"]["stop_reason"] == answer["stop_reason"]
    assert replayed[-2]["usage"]["output_tokens"] == answer["usage"]["output_tokens"]
    # each block: its start, its deltas, its stop, in order and one at a time
    blocks = kinds[2:-2]
    index = -1
    for event in replayed[2:-2]:
        if event["type"] == "content_block_start":
            index += 1
        assert event["index"] == index
    assert blocks.count("content_block_start") == blocks.count("content_block_stop") == len(answer["content"])


def test_text_and_tool_input_go_in_bounded_pieces() -> None:
    replayed = events(replay_message(encode(MESSAGES["long_text"])))
    pieces = [e["delta"]["text"] for e in replayed if e["type"] == "content_block_delta"]
    assert "".join(pieces) == LONG_TEXT and all(len(p) <= PIECE for p in pieces) and len(pieces) > 3
    replayed = events(replay_message(encode(MESSAGES["big_input"])))
    pieces = [e["delta"]["partial_json"] for e in replayed if e["type"] == "content_block_delta"]
    assert json.loads("".join(pieces)) == BIG_INPUT and len(pieces) > 3
    assert all(p.endswith(",") for p in pieces[:-1])  # cut after commas: never inside an escape
    assert replayed[2]["content_block"] == {
        "type": "tool_use",
        "id": "toolu_01",
        "name": "store",
        "input": {},
    }


def test_thinking_replays_as_thinking_and_signature_deltas() -> None:
    replayed = events(replay_message(encode(MESSAGES["thinking"])))
    deltas = [e["delta"] for e in replayed if e["type"] == "content_block_delta" and e["index"] == 0]
    assert {d["type"] for d in deltas[:-1]} == {"thinking_delta"}
    assert deltas[-1] == {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"}
    redacted = [e for e in replayed if e.get("index") == 1]
    assert [e["type"] for e in redacted] == ["content_block_start", "content_block_stop"]


def test_replay_events_are_the_replay_piece_by_piece() -> None:
    payload = encode(MESSAGES["tools"])
    pieces = replay_message_events(payload)
    assert b"".join(pieces) == replay_message(payload)
    assert all(p.startswith(b"event: ") and p.endswith(b"\n\n") and p.count(b"\n\n") == 1 for p in pieces)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[]",
        b'"message"',
        b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
        b'{"object": "chat.completion", "choices": []}',
        b'{"type": "message", "content": "text"}',
        b'{"type": "message", "content": [1]}',
        b'{"type": "message", "content": [{"type": 1}]}',
        b'{"type": "message", "content": [{"type": "text", "text": 5}]}',
        b'{"type": "message", "content": [], "usage": [1]}',
    ],
)
def test_replay_refuses_what_is_not_a_message(payload: bytes) -> None:
    with pytest.raises(ReplayError):
        replay_message(payload)


def test_replay_error_is_the_cache_replay_error() -> None:
    assert issubclass(ReplayError, openai_replay.ReplayError)


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_replay_raises_nothing_but_replay_error(payload: bytes) -> None:
    with contextlib.suppress(ReplayError):
        replay_message(payload)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda x: (
            st.lists(x, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    ["type", "text", "thinking", "signature", "input", "citations", "id", "name"]
                ),
                x,
                max_size=4,
            )
        ),
        max_leaves=12,
    )
)
def test_replay_of_odd_blocks_raises_nothing_but_replay_error(block: Any) -> None:
    with contextlib.suppress(ReplayError):
        replay_message(encode(message(block)))


# --- replay, then assemble -----------------------------------------------------------------------


@pytest.mark.parametrize("name", MESSAGES)
def test_a_replayed_message_assembles_back_to_itself(name: str) -> None:
    answer = MESSAGES[name]
    assembled = assemble_message(replay_message(encode(answer)))
    assert assembled is not None
    assert json.loads(assembled) == answer
    assert assemble_message(replay_message(assembled)) == assembled


def test_what_assembling_adds_to_a_sparse_message() -> None:
    sparse = {
        "type": "message",
        "id": "msg_x",
        "content": [{"type": "thinking", "thinking": "hm"}, text("hi")],
        "stop_reason": "end_turn",
    }
    assembled = json.loads(assemble_message(replay_message(encode(sparse))) or b"")
    assert assembled == {
        **sparse,
        "content": [{"type": "thinking", "thinking": "hm", "signature": ""}, text("hi")],
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }


# --- streams as Anthropic writes them ------------------------------------------------------------


def wire(*events: dict[str, Any]) -> bytes:
    """Events as Anthropic writes them: spaces after separators."""
    return b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(e).encode()) for e in events)


def start(usage: dict[str, Any] | None = None) -> dict[str, Any]:
    head = message(usage=usage or {"input_tokens": 25, "cache_read_input_tokens": 5, "output_tokens": 1})
    return {"type": "message_start", "message": {**head, "content": [], "stop_reason": None}}


def block(index: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": {"type": kind, **fields}}


def piece(index: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": {"type": kind, **fields}}


def stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def end(reason: str = "tool_use", **usage: Any) -> list[dict[str, Any]]:
    counts = {"output_tokens": 89, **usage}
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": reason, "stop_sequence": None},
        "usage": counts,
    }
    return [delta, {"type": "message_stop"}]


TOOL_STREAM = [
    start(),
    block(0, "text", text=""),
    {"type": "ping"},
    piece(0, "text_delta", text="Okay, "),
    piece(0, "text_delta", text="checking."),
    stop(0),
    block(1, "tool_use", id="toolu_01T1", name="get_weather", input={}),
    piece(1, "input_json_delta", partial_json=""),
    piece(1, "input_json_delta", partial_json='{"location": "San Fra'),
    piece(1, "input_json_delta", partial_json='ncisco, CA", "unit": "fahrenheit"}'),
    stop(1),
    *end(input_tokens=30, cache_creation_input_tokens=None),
]
TOOL_ANSWER = message(
    text("Okay, checking."),
    {
        "type": "tool_use",
        "id": "toolu_01T1",
        "name": "get_weather",
        "input": {"location": "San Francisco, CA", "unit": "fahrenheit"},
    },
    stop="tool_use",
    usage={"input_tokens": 30, "cache_read_input_tokens": 5, "output_tokens": 89},
)


def test_an_anthropic_stream_assembles_into_its_message() -> None:
    assert json.loads(assemble_message(wire(*TOOL_STREAM)) or b"") == TOOL_ANSWER


def test_streams_in_any_sse_spelling_assemble() -> None:
    body = wire(*TOOL_STREAM)
    crlf = body.replace(b"\n", b"\r\n")
    no_space = body.replace(b"data: ", b"data:")
    comments = b": hello\n\n" + body.replace(b"\n\n", b"\n\n: keep-alive\n\n")
    no_last_blank = body[:-1]
    for spelled in (crlf, no_space, comments, no_last_blank):
        assert assemble_message(spelled) == assemble_message(body)


def test_thinking_and_citations_assemble() -> None:
    body = wire(
        start(),
        block(0, "thinking", thinking="", signature=""),
        piece(0, "thinking_delta", thinking="First, "),
        piece(0, "thinking_delta", thinking="the facts."),
        piece(0, "signature_delta", signature="EqQB"),
        stop(0),
        block(1, "text", text="", citations=[]),
        piece(1, "citations_delta", citation=CITATION),
        piece(1, "text_delta", text="green"),
        stop(1),
        *end("end_turn"),
    )
    content = json.loads(assemble_message(body) or b"")["content"]
    assert content == [
        {"type": "thinking", "thinking": "First, the facts.", "signature": "EqQB"},
        text("green", citations=[CITATION]),
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        wire(*TOOL_STREAM[:-1]),  # no message_stop
        wire(*TOOL_STREAM)[:-10],
        wire(
            *TOOL_STREAM[:4],
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        ),
        wire(*TOOL_STREAM[:4])
        + b'event: error\ndata: {"type": "overloaded_error"}\n\n'
        + wire(*TOOL_STREAM[4:]),
        wire(*TOOL_STREAM[1:]),  # no message_start
        wire(TOOL_STREAM[0], *TOOL_STREAM),  # two
        wire(*TOOL_STREAM).replace(b'"checking."', b'"checking.'),  # unparsable
        wire(
            *TOOL_STREAM[:7], piece(1, "input_json_delta", partial_json="{nope"), *TOOL_STREAM[10:]
        ),  # not JSON
        wire(
            *TOOL_STREAM[:7], piece(1, "input_json_delta", partial_json="[1]"), *TOOL_STREAM[10:]
        ),  # nor an object
        wire(*TOOL_STREAM[:3], piece(5, "text_delta", text="x"), *TOOL_STREAM[3:]),  # a block never started
        wire(
            *TOOL_STREAM[:3], piece(0, "input_json_delta", partial_json="{}"), *TOOL_STREAM[3:]
        ),  # wrong kind
        wire(*TOOL_STREAM[:3], piece(0, "sparkle_delta", text="x"), *TOOL_STREAM[3:]),  # unknown delta
        wire(*TOOL_STREAM[:3], {"type": "message_sparkle"}, *TOOL_STREAM[3:]),  # unknown event
        wire(TOOL_STREAM[0], block(1, "text", text=""), *end()),  # blocks out of order
        wire({**TOOL_STREAM[0], "message": {"type": "error"}}, *TOOL_STREAM[1:]),
    ],
)
def test_what_is_not_a_whole_message_assembles_to_none(body: bytes) -> None:
    assert assemble_message(body) is None


@given(st.binary(max_size=400))
def test_assemble_never_raises(body: bytes) -> None:
    assemble_message(body)


@given(st.integers(min_value=0, max_value=len(wire(*TOOL_STREAM)) - 3))
def test_any_prefix_of_a_stream_assembles_to_none(cut: int) -> None:
    assert assemble_message(wire(*TOOL_STREAM)[:cut]) is None


# --- what may be cached --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "complete"),
    [
        (encode(MESSAGES["text"]), True),
        (encode(MESSAGES["tools"]), True),
        (encode({**MESSAGES["text"], "stop_reason": None}), False),
        (encode({k: v for k, v in MESSAGES["text"].items() if k != "stop_reason"}), False),
        (b'{"type": "error", "error": {"type": "api_error", "message": "boom"}}', False),
        (b'{"object": "chat.completion", "choices": []}', False),
        (b'{"type": 1}', False),
        (b"[]", False),
        (b"", False),
    ],
)
def test_message_complete(payload: bytes, complete: bool) -> None:
    assert message_complete(payload) is complete
