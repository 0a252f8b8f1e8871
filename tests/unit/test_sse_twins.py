"""The stream translators' compiled and pure twins send the same bytes and end in the same state.

A client is told the same answer whichever twin the proxy loaded, so any difference (an event cut
at another place, an index off by one, a JSON string escaped another way, a stream called broken
by one and not the other) would be a different stream on two installs. These tests feed streams
drawn at random, cut at random places and written with any line end, to ``tiermux._ext.sse`` and
``tiermux._pure.sse`` directly, whatever ``_speedups`` picked.
"""

from __future__ import annotations

import importlib
import json
import re
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiermux._pure import sse as pure
from tiermux.accounting.usage import Usage


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("tiermux._ext.sse")
    except ImportError:
        return None


COMPILED = _compiled()
pytestmark = pytest.mark.skipif(COMPILED is None, reason="compiled tiermux._ext.sse is not built")

# Tool calls a backend sent without an id get a random one: the same stream, told apart by it only.
_RANDOM_ID = re.compile(rb"toolu_[0-9a-f]{24}")

texts = st.text(
    st.characters(codec="utf-8") | st.sampled_from(['"', "\\", "\n", "\r", "\u2028", "é", "😀", "<"]),
    max_size=12,
)
maybe_text = st.none() | texts
indices = st.none() | st.integers(min_value=-1, max_value=3)
small_counts = st.integers(min_value=0, max_value=5000)


def _data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _chunk(choices: list[Any], **more: Any) -> bytes:
    return _data(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": choices,
        }
        | more
    )


def _choice(delta: dict[str, Any], finish: str | None = None, index: int = 0, **more: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish} | more


tool_pieces = st.builds(
    lambda index, call_id, name, arguments: {
        k: v
        for k, v in (
            ("index", index),
            ("id", call_id),
            ("type", "function"),
            ("function", {k: v for k, v in (("name", name), ("arguments", arguments)) if v is not None}),
        )
        if v is not None
    },
    indices,
    st.none() | st.sampled_from(["call_a", "call_b", "call_c"]),
    st.none() | st.sampled_from(["get_weather", "search"]),
    maybe_text,
)

openai_events = st.one_of(
    st.builds(lambda text: _chunk([_choice({"content": text})]), texts),
    st.builds(lambda: _chunk([_choice({"role": "assistant", "content": ""})])),
    st.builds(lambda text: _chunk([_choice({"refusal": text})]), texts),
    st.builds(lambda pieces: _chunk([_choice({"tool_calls": pieces})]), st.lists(tool_pieces, max_size=3)),
    st.builds(
        lambda finish, stop: _chunk([_choice({}, finish, **({} if stop is None else {"stop_reason": stop}))]),
        st.sampled_from(["stop", "length", "tool_calls", "content_filter", "function_call", "", "other"]),
        st.none() | st.sampled_from(["</s>", "END"]) | st.integers(0, 9),
    ),
    st.builds(lambda text: _chunk([_choice({"content": text}, index=1)]), texts),
    st.builds(
        lambda prompt, completion, cached: _chunk(
            [],
            usage={
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": None if cached is None else {"cached_tokens": cached},
            },
        ),
        small_counts,
        small_counts,
        st.none() | small_counts,
    ),
    st.just(b"data: [DONE]\n\n"),
    st.one_of(  # rarer: all but the keep-alive end the stream
        st.builds(
            lambda message, kind, code: _data({"error": {"message": message, "type": kind, "code": code}}),
            maybe_text,
            st.none() | st.sampled_from(["server_error", "invalid_request_error", "rate_limit_exceeded"]),
            st.none() | st.sampled_from([429, 503, 200, "insufficient_quota", "model_not_found"]),
        ),
        st.builds(lambda text: _data({"error": text}), texts),
        st.just(b"event: error\ndata: the backend fell over\n\n"),
        st.just(b"data: {not json\n\n"),
        st.just(b": keep-alive\n\n"),
    ),
)


def _event(kind: str, **fields: Any) -> bytes:
    data = json.dumps({"type": kind} | fields, separators=(",", ":"), ensure_ascii=False).encode()
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


counts = st.fixed_dictionaries(
    {},
    optional={
        "input_tokens": small_counts,
        "output_tokens": small_counts,
        "cache_read_input_tokens": small_counts,
        "cache_creation_input_tokens": small_counts,
    },
)
block_indices = st.integers(min_value=0, max_value=3)

anthropic_events = st.one_of(
    st.builds(
        lambda usage: _event(
            "message_start",
            message={"id": "msg_1", "type": "message", "role": "assistant", "content": [], "usage": usage},
        ),
        counts,
    ),
    st.builds(
        lambda index, text: _event(
            "content_block_start", index=index, content_block={"type": "text", "text": text}
        ),
        block_indices,
        texts,
    ),
    st.builds(
        lambda index, name, given: _event(
            "content_block_start",
            index=index,
            content_block={"type": "tool_use", "id": "toolu_1", "name": name, "input": given},
        ),
        block_indices,
        st.sampled_from(["get_weather", "search"]),
        st.sampled_from([{}, {"city": "Paris"}, {"q": "a\nb"}]),
    ),
    st.builds(
        lambda index: _event("content_block_start", index=index, content_block={"type": "thinking"}),
        block_indices,
    ),
    st.builds(
        lambda index, text: _event(
            "content_block_delta", index=index, delta={"type": "text_delta", "text": text}
        ),
        block_indices,
        texts,
    ),
    st.builds(
        lambda index, piece: _event(
            "content_block_delta", index=index, delta={"type": "input_json_delta", "partial_json": piece}
        ),
        block_indices,
        texts,
    ),
    st.builds(
        lambda index, text: _event(
            "content_block_delta", index=index, delta={"type": "thinking_delta", "thinking": text}
        ),
        block_indices,
        texts,
    ),
    st.builds(lambda index: _event("content_block_stop", index=index), block_indices),
    st.builds(
        lambda reason, usage: _event(
            "message_delta", delta={"stop_reason": reason, "stop_sequence": None}, usage=usage
        ),
        st.none()
        | st.sampled_from(["end_turn", "max_tokens", "tool_use", "stop_sequence", "refusal", "new"]),
        counts,
    ),
    st.just(_event("message_stop")),
    st.just(_event("ping")),
    st.one_of(  # rarer: the first three end the stream
        st.builds(
            lambda kind, message: _event("error", error={"type": kind, "message": message}),
            st.sampled_from(["overloaded_error", "api_error", "rate_limit_error", "strange_error"]),
            maybe_text,
        ),
        st.just(b"event: error\ndata: not json at all\n\n"),
        st.just(b"event: content_block_delta\ndata: {not json\n\n"),
        st.just(b'event: ping\ndata: {"type":\ndata: "ping"}\n\n'),  # several data lines make one event
        st.just(b'data: {"type":"ping"}\n\n'),  # no name
        st.just(b": keep-alive\n\n"),
    ),
)


OPENAI_END = [
    _chunk([_choice({}, "stop")]),
    _chunk([], usage={"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}),
    b"data: [DONE]\n\n",
]
ANTHROPIC_END = [
    _event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 4}),
    _event("message_stop"),
]


@st.composite
def cut_streams(draw: st.DrawFn, events: st.SearchStrategy[bytes], end: list[bytes]) -> list[bytes]:
    """A stream of ``events`` (often with the events that end an answer), with one line end
    throughout, cut at random places (often whole events, one per chunk, as backends send them)."""
    body = draw(st.lists(events, max_size=14)) + (end if draw(st.booleans()) else [])
    line_end = draw(st.sampled_from([b"\n", b"\n", b"\r\n", b"\r"]))
    whole = [event.replace(b"\n", line_end) for event in body]
    if draw(st.booleans()):
        return whole
    stream = b"".join(whole)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=12))))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


def _state(translator: Any) -> tuple[Any, ...]:
    usage = translator.usage
    assert usage is None or type(usage) is Usage
    return (translator.complete, translator.errored, translator.broken, usage)


def _run(translator: Any, chunks: list[bytes]) -> tuple[list[bytes], tuple[Any, ...]]:
    sent = [_RANDOM_ID.sub(b"toolu_random", translator.feed(chunk)) for chunk in chunks]
    during = _state(translator)
    sent.append(_RANDOM_ID.sub(b"toolu_random", translator.finish()))
    return sent, (during, _state(translator))


@settings(max_examples=300)
@given(cut_streams(openai_events, OPENAI_END))
def test_messages_from_chat_twins_agree(chunks: list[bytes]) -> None:
    assert COMPILED is not None
    compiled = _run(COMPILED.MessagesFromChatStream("m", "msg_1"), chunks)
    assert compiled == _run(pure.MessagesFromChatStream("m", "msg_1"), chunks)


@settings(max_examples=300)
@given(cut_streams(anthropic_events, ANTHROPIC_END), st.booleans())
def test_chat_from_messages_twins_agree(chunks: list[bytes], include_usage: bool) -> None:
    assert COMPILED is not None
    compiled = _run(COMPILED.ChatFromMessagesStream("m", include_usage, "chatcmpl-1", 7), chunks)
    assert compiled == _run(pure.ChatFromMessagesStream("m", include_usage, "chatcmpl-1", 7), chunks)


@settings(max_examples=200)
@given(cut_streams(anthropic_events, ANTHROPIC_END))
def test_usage_tap_twins_agree(chunks: list[bytes]) -> None:
    assert COMPILED is not None
    taps = (COMPILED.MessagesUsageTap(), pure.MessagesUsageTap())
    for chunk in chunks:
        assert [tap.feed(chunk) for tap in taps] == [chunk, chunk]
        assert taps[0].usage == taps[1].usage
    assert [tap.finish() for tap in taps] == [b"", b""]
    assert taps[0].usage == taps[1].usage
    assert taps[0].broken is taps[1].broken is False


@given(st.integers(min_value=100, max_value=599), texts)
def test_error_events_agree(status: int, message: str) -> None:
    assert COMPILED is not None
    assert COMPILED.MessagesFromChatStream("m").error_event(status, message) == pure.MessagesFromChatStream(
        "m"
    ).error_event(status, message)
    assert COMPILED.ChatFromMessagesStream("m", True).error_event(
        status, message
    ) == pure.ChatFromMessagesStream("m", True).error_event(status, message)


def test_an_event_too_long_breaks_both_alike() -> None:
    assert COMPILED is not None
    piece = b"x" * (1 << 20)
    for make in (
        lambda m: m.MessagesFromChatStream("m", "msg_1"),
        lambda m: m.ChatFromMessagesStream("m", False),
    ):
        runs = []
        for module in (COMPILED, pure):
            translator = make(module)
            sent = [translator.feed(b"data: " + piece)]
            sent += [translator.feed(piece) for _ in range(pure.MAX_EVENT_BYTES // len(piece) + 1)]
            runs.append((sent, _state(translator), translator.feed(b"\n\n"), translator.finish()))
        assert runs[0] == runs[1]
        assert runs[0][1][2] is True  # broken


def test_twins_share_names() -> None:
    assert COMPILED is not None
    assert set(COMPILED.__all__) == set(pure.__all__)
    assert COMPILED.MAX_EVENT_BYTES == pure.MAX_EVENT_BYTES
    for name in ("MessagesFromChatStream", "ChatFromMessagesStream"):
        translator = getattr(COMPILED, name)("m", *(() if name.startswith("Messages") else (True,)))
        assert (translator.complete, translator.errored, translator.broken, translator.usage) == (
            False,
            False,
            False,
            None,
        )
