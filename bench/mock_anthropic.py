"""The Anthropic Messages API side of the mock backend (``--flavor anthropic``).

Request structs and the documents, stream events and error bodies of
https://docs.anthropic.com/en/api/messages, /en/docs/build-with-claude/streaming and
/en/api/errors. Nothing here knows about connections, timing or options: ``bench.mock_backend``
decides what a request gets and when each frame is due, and renders it with these builders.

As in the OpenAI flavours, documents are filled into byte templates where only a few fields vary
per request, and strings that come from the client (the model name) are JSON-encoded first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec

__all__ = [
    "STREAM_ERROR",
    "CountTokensRequest",
    "MessagesRequest",
    "Tool",
    "chosen_tool",
    "cut_at_stop_sequence",
    "error_body",
    "event",
    "json_deltas",
    "message",
    "models_body",
    "stop_reason",
    "stream_end",
    "stream_start",
    "text_content",
    "text_deltas",
    "tool_input",
    "tool_use_block",
]

_encode = msgspec.json.Encoder().encode

# --------------------------------------------------------------------------------------------
# Request bodies: only the fields the mock looks at. Message contents stay msgspec.Raw: checked
# to be JSON and counted, never turned into Python objects.
# --------------------------------------------------------------------------------------------

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class _InputSchema(msgspec.Struct):
    properties: dict[str, Any] | None = None
    required: list[str] | None = None


class Tool(msgspec.Struct):
    """A tool offered to the model; server tools (web search and the like) have no schema."""

    name: str = ""
    input_schema: _InputSchema | None = None


class _ToolChoice(msgspec.Struct):
    type: str = "auto"
    name: str | None = None


class MessagesRequest(msgspec.Struct):
    model: str
    max_tokens: PositiveInt
    messages: list[msgspec.Raw]
    stream: bool | None = False
    stop_sequences: list[str] | None = None
    tools: list[Tool] | None = None
    tool_choice: _ToolChoice | None = None


class CountTokensRequest(msgspec.Struct):
    model: str
    messages: list[msgspec.Raw]


# --------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------

# HTTP status -> error ``type``, as listed on /en/api/errors.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str) -> bytes:
    """An Anthropic-shaped error document; statuses the docs do not list map by their class."""
    type_ = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return _encode({"type": "error", "error": {"type": type_, "message": message}})


# --------------------------------------------------------------------------------------------
# What the answer is.
# --------------------------------------------------------------------------------------------

# The OpenAI flavours' finish reasons, which the shared answer logic decides, as stop reasons.
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def stop_reason(finish: str) -> str:
    return _STOP_REASONS.get(finish, finish)


def cut_at_stop_sequence(
    pieces: Sequence[str], stop_sequences: Sequence[str]
) -> tuple[tuple[str, ...], str | None]:
    """The pieces up to the earliest stop sequence in their text, and that sequence.

    As with the real API the matched sequence itself is not part of the answer. A piece that the
    cut falls into is shortened; with no match the pieces come back whole and the sequence is None.
    """
    text = "".join(pieces)
    cut, matched = -1, None
    for sequence in stop_sequences:
        at = text.find(sequence) if sequence else -1
        if at >= 0 and (matched is None or at < cut):
            cut, matched = at, sequence
    if matched is None:
        return tuple(pieces), None
    kept: list[str] = []
    position = 0
    for piece in pieces:
        if position + len(piece) > cut:
            if cut > position:
                kept.append(piece[: cut - position])
            break
        kept.append(piece)
        position += len(piece)
    return tuple(kept), matched


def chosen_tool(request: MessagesRequest) -> Tool | None:
    """The tool the mock "decides" to use, decided like the chat flavour does.

    ``{"type": "none"}`` answers with text; ``{"type": "tool", "name": X}`` forces X; otherwise
    (``auto``, ``any`` or no choice) the first tool offered is used.
    """
    if not request.tools:
        return None
    choice = request.tool_choice
    if choice is not None:
        if choice.type == "none":
            return None
        if choice.type == "tool" and choice.name:
            forced = next((tool for tool in request.tools if tool.name == choice.name), None)
            return forced if forced is not None else Tool(name=choice.name)
    first = request.tools[0]
    return first if first.name else Tool(name="tool")


# A made-up argument per JSON Schema type, so that a tool's input passes a basic type check.
_PLACEHOLDERS: dict[str, Any] = {
    "string": "mock",
    "integer": 1,
    "number": 1,
    "boolean": True,
    "array": [],
    "object": {},
    "null": None,
}


def _placeholder(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return "mock"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return _PLACEHOLDERS.get(kind, "mock") if isinstance(kind, str) else "mock"


def tool_input(tool: Tool) -> dict[str, Any]:
    """A small input for ``tool``: its required properties (all, if none are), with placeholders."""
    schema = tool.input_schema
    if schema is None or not schema.properties:
        return {}
    properties = schema.properties
    names = [name for name in (schema.required or ()) if name in properties] or list(properties)
    return {name: _placeholder(properties[name]) for name in names}


# --------------------------------------------------------------------------------------------
# Documents.
# --------------------------------------------------------------------------------------------

_MESSAGE_TEMPLATE = (
    b'{"id":"msg_%s","type":"message","role":"assistant","model":%s,"content":%s,'
    b'"stop_reason":"%s","stop_sequence":%s,"usage":{"input_tokens":%d,'
    b'"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":%d}}'
)


def message(
    rid: bytes,
    model: bytes,
    content: bytes,
    stop: str,
    stop_sequence: str | None,
    input_tokens: int,
    output_tokens: int,
) -> bytes:
    """A complete Messages answer; ``model`` and ``content`` come JSON-encoded."""
    return _MESSAGE_TEMPLATE % (
        rid,
        model,
        content,
        stop.encode(),
        _encode(stop_sequence),
        input_tokens,
        output_tokens,
    )


def text_content(text: str) -> bytes:
    """The encoded ``content`` of a text answer: a single text block."""
    return _encode([{"type": "text", "text": text}])


def tool_use_block(rid: bytes, tool: Tool, input_: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_" + rid.decode("ascii"), "name": tool.name, "input": input_}


def models_body(models: Sequence[str], created: int) -> bytes:
    """The ``GET /v1/models`` page: every model, newest first, on one page."""
    created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    data = [
        {"type": "model", "id": model, "display_name": model, "created_at": created_at} for model in models
    ]
    first = data[0]["id"] if data else None
    last = data[-1]["id"] if data else None
    return _encode({"data": data, "has_more": False, "first_id": first, "last_id": last})


# --------------------------------------------------------------------------------------------
# Stream events, each framed as one HTTP chunk.
# --------------------------------------------------------------------------------------------

_MESSAGE_START_TEMPLATE = (
    b'{"type":"message_start","message":{"id":"msg_%s","type":"message","role":"assistant",'
    b'"model":%s,"content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":%d,'
    b'"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}'
)
_BLOCK_START_TEMPLATE = b'{"type":"content_block_start","index":0,"content_block":%s}'
_TEXT_BLOCK = b'{"type":"text","text":""}'
_MESSAGE_DELTA_TEMPLATE = (
    b'{"type":"message_delta","delta":{"stop_reason":"%s","stop_sequence":%s},"usage":{"output_tokens":%d}}'
)


def event(name: bytes, data: bytes) -> bytes:
    """One ``event: NAME`` / ``data: JSON`` server-sent event as a single HTTP chunk."""
    # The event is "event: " + name + "\ndata: " + data + "\n\n": 16 bytes around the two parts.
    return b"%x\r\nevent: %s\ndata: %s\n\n\r\n" % (len(name) + len(data) + 16, name, data)


_PING = event(b"ping", b'{"type":"ping"}')
_BLOCK_STOP = event(b"content_block_stop", b'{"type":"content_block_stop","index":0}')
# message_stop followed by the zero-length chunk that ends the chunked body.
_MESSAGE_STOP = event(b"message_stop", b'{"type":"message_stop"}') + b"0\r\n\r\n"
# What the API sends when it fails after the stream has begun; the body then ends cleanly.
STREAM_ERROR = (
    event(b"error", b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
    + b"0\r\n\r\n"
)


def stream_start(rid: bytes, model: bytes, input_tokens: int, block: dict[str, Any] | None) -> bytes:
    """message_start, content_block_start (of ``block``, else an empty text block) and ping."""
    start = _MESSAGE_START_TEMPLATE % (rid, model, input_tokens)
    opened = _BLOCK_START_TEMPLATE % (_TEXT_BLOCK if block is None else _encode(block))
    return event(b"message_start", start) + event(b"content_block_start", opened) + _PING


def text_deltas(pieces: Sequence[str]) -> list[bytes]:
    """One content_block_delta (text_delta) event per piece of the answer."""
    return [
        event(
            b"content_block_delta",
            _encode({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
        )
        for p in pieces
    ]


def json_deltas(pieces: Sequence[str]) -> list[bytes]:
    """One content_block_delta (input_json_delta) event per piece of a tool input's JSON."""
    return [
        event(
            b"content_block_delta",
            _encode(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": p},
                }
            ),
        )
        for p in pieces
    ]


def stream_end(stop: str, stop_sequence: str | None, output_tokens: int) -> bytes:
    """content_block_stop, message_delta with the stop reason and usage, message_stop, body end."""
    delta = _MESSAGE_DELTA_TEMPLATE % (stop.encode(), _encode(stop_sequence), output_tokens)
    return _BLOCK_STOP + event(b"message_delta", delta) + _MESSAGE_STOP
