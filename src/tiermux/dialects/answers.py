"""JSON answers and errors translated between the two dialects, on their way back to the client.

An answer is decoded with msgspec into Structs that name only the fields translated here, and the
other dialect's answer is built as a dict and encoded once. Tool-call arguments travel as raw JSON
from Anthropic (compacted, never rebuilt) and are parsed once on the way to Anthropic, whose
``input`` is an object.

What is left out on the way:

- Anthropic ``thinking`` and ``redacted_thinking`` blocks are not part of an OpenAI answer's
  content (Chat Completions has no standard place for them); ``reasoning_content`` of an
  OpenAI-dialect server is likewise not made into thinking blocks, which would need a signature
  Anthropic clients send back.
- Only choice 0 of an OpenAI answer is read: ``n`` > 1 is refused on the way in.

An answer that can't be said in the client's dialect (a tool call whose arguments are not a JSON
object, no choice at all, an unknown content block, not an answer) raises
:class:`UntranslatableAnswer`, a 502: the backend answered, but not in a way the client can read.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from msgspec import Raw, Struct

from tiermux.accounting.usage import Usage
from tiermux.api.errors import BadGateway, ProxyError
from tiermux.dialects.common import (
    FINISH_REASON_OF_STOP,
    STOP_REASON_OF_FINISH,
    anthropic_error_type,
    openai_error_type,
    usage_of_anthropic,
)

__all__ = [
    "UntranslatableAnswer",
    "anthropic_error_body",
    "anthropic_error_from_openai",
    "anthropic_error_of",
    "chat_completion_from_message",
    "message_from_chat_completion",
    "openai_error_from_anthropic",
    "usage_of_message",
]

# Characters of a backend's error body quoted when it is not the JSON error it should be.
MAX_ERROR_TEXT = 1000

_encode = msgspec.json.encode
_compact = msgspec.json.format
_decode_any = msgspec.json.decode
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode


class UntranslatableAnswer(BadGateway):
    """A backend's answer that the client's dialect has no way to say."""

    code = "untranslatable_answer"


# --- Anthropic message -> OpenAI chat.completion ------------------------------------------------

# gc=False: these never form cycles.


class _AnthropicUsage(Struct, gc=False):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class _Block(Struct, gc=False):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Raw = Raw(b"{}")


class _Message(Struct, gc=False):
    type: str = ""
    id: str = ""
    model: str = ""
    content: list[_Block] = []
    stop_reason: str | None = None
    usage: _AnthropicUsage | None = None


class _WithAnthropicUsage(Struct, gc=False):
    usage: _AnthropicUsage | None = None


_decode_message = msgspec.json.Decoder(_Message).decode
_decode_anthropic_usage = msgspec.json.Decoder(_WithAnthropicUsage).decode

_LEFT_OUT = ("thinking", "redacted_thinking")


def _usage(usage: _AnthropicUsage | None) -> Usage:
    if usage is None:
        return Usage()
    return usage_of_anthropic(
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_input_tokens or 0,
        usage.cache_creation_input_tokens or 0,
    )


def _openai_usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def chat_completion_from_message(payload: bytes) -> bytes:
    """An Anthropic ``message`` answer as an OpenAI ``chat.completion``: its text blocks joined as
    the content, its ``tool_use`` blocks as tool calls, the stop reason and usage translated (the
    id is kept). Raises :class:`UntranslatableAnswer` when it is not such an answer."""
    try:
        message = _decode_message(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UntranslatableAnswer(f"The backend's answer is not an Anthropic message: {exc}") from None
    if message.type != "message":
        raise UntranslatableAnswer("The backend's answer is not an Anthropic message.")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.content:
        if block.type == "text" and block.text is not None:
            texts.append(block.text)
        elif block.type == "tool_use" and block.id is not None and block.name is not None:
            arguments = _compact(block.input, indent=-1).decode()
            calls.append(
                {"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}}
            )
        elif block.type not in _LEFT_OUT:
            raise UntranslatableAnswer(
                f"The backend's answer holds a `{block.type}` block, which an OpenAI answer can't hold."
            )
    said: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        said["tool_calls"] = calls
    said["refusal"] = None
    stop = message.stop_reason
    finish = FINISH_REASON_OF_STOP.get(stop, "stop") if stop is not None else "stop"
    return _encode(
        {
            "id": message.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": message.model,
            "choices": [{"index": 0, "message": said, "logprobs": None, "finish_reason": finish}],
            "usage": _openai_usage(_usage(message.usage)),
        }
    )


def usage_of_message(payload: bytes) -> Usage | None:
    """The usage of an Anthropic JSON answer as tiermux counts it (prompt tokens include the cached
    ones), or None (no usage, or not JSON)."""
    try:
        usage = _decode_anthropic_usage(payload).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return None if usage is None else _usage(usage)


# --- OpenAI chat.completion -> Anthropic message ------------------------------------------------


class _Function(Struct, gc=False):
    name: str = ""
    arguments: str | None = None


class _ToolCall(Struct, gc=False):
    id: str = ""
    type: str = "function"
    function: _Function | None = None


class _ChatMessage(Struct, gc=False):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[_ToolCall] | None = None
    function_call: _Function | None = None


class _Choice(Struct, gc=False):
    message: _ChatMessage | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # vLLM: the stop string or token id that matched


class _PromptDetails(Struct, gc=False):
    cached_tokens: int | None = None


class _ChatUsage(Struct, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None


class _Completion(Struct, gc=False):
    id: str = ""
    model: str = ""
    choices: list[_Choice] = []
    usage: _ChatUsage | None = None


_decode_completion = msgspec.json.Decoder(_Completion).decode


def _tool_use(call: _ToolCall) -> dict[str, Any]:
    function = call.function
    if call.type != "function" or function is None:
        raise UntranslatableAnswer(
            f"The backend's answer holds a `{call.type}` tool call, which Anthropic can't."
        )
    try:
        arguments = _decode_object(function.arguments) if function.arguments else {}
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise UntranslatableAnswer(
            f"The backend called the tool `{function.name}` with arguments that are not a JSON object, "
            "which an Anthropic answer can't hold."
        ) from None
    return {"type": "tool_use", "id": call.id, "name": function.name, "input": arguments}


def message_from_chat_completion(payload: bytes) -> bytes:
    """An OpenAI ``chat.completion`` as an Anthropic ``message``: the content of choice 0 as a text
    block, its tool calls as ``tool_use`` blocks, the finish reason and usage translated (the id is
    kept). Raises :class:`UntranslatableAnswer` when that can't be said in Anthropic's shape."""
    try:
        completion = _decode_completion(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UntranslatableAnswer(f"The backend's answer is not a chat completion: {exc}") from None
    if not completion.choices or completion.choices[0].message is None:
        raise UntranslatableAnswer("The backend's answer holds no choice.")
    choice = completion.choices[0]
    said: _ChatMessage = choice.message  # type: ignore[assignment]
    if said.function_call is not None:
        raise UntranslatableAnswer("The backend answered with a legacy function call, which Anthropic can't.")
    content: list[dict[str, Any]] = []
    if said.content:
        content.append({"type": "text", "text": said.content})
    if said.refusal:
        content.append({"type": "text", "text": said.refusal})
    if said.tool_calls:
        content.extend(_tool_use(call) for call in said.tool_calls)
    finish = choice.finish_reason
    sequence = None
    if finish == "stop" and isinstance(choice.stop_reason, str):
        stop, sequence = "stop_sequence", choice.stop_reason
    elif said.refusal and finish == "stop":
        stop = "refusal"
    elif said.tool_calls and finish == "stop":
        stop = "tool_use"  # servers that say "stop" after tool calls: the client must run them
    else:
        stop = STOP_REASON_OF_FINISH.get(finish, "end_turn") if finish is not None else "end_turn"
    usage = completion.usage or _ChatUsage()
    details = usage.prompt_tokens_details
    cached = min(details.cached_tokens or 0, usage.prompt_tokens) if details is not None else 0
    return _encode(
        {
            "id": completion.id,
            "type": "message",
            "role": "assistant",
            "model": completion.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": sequence,
            "usage": {
                "input_tokens": usage.prompt_tokens - cached,
                "output_tokens": usage.completion_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": cached,
            },
        }
    )


# --- errors -------------------------------------------------------------------------------------


def _error_of(payload: bytes, status: int) -> tuple[str, str | None]:
    """The message of an error body in either dialect (or of the shapes vLLM, Ollama and FastAPI
    use), and its Anthropic ``error.type`` when it has one; its bounded text otherwise."""
    try:
        said = _decode_any(payload)
    except msgspec.DecodeError:
        said = None
    if isinstance(said, dict):
        error = said.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            kind = error.get("type")
            return error["message"], kind if said.get("type") == "error" and isinstance(kind, str) else None
        for found in (error, said.get("message"), said.get("detail")):
            if isinstance(found, str):
                return found, None
    text = payload[:MAX_ERROR_TEXT].decode("utf-8", "replace").strip()
    return text or f"The backend answered with HTTP status {status}.", None


def anthropic_error_body(status: int, message: str, type_: str | None = None) -> bytes:
    """An Anthropic error body, ``{"type": "error", "error": {"type", "message"}}``; the type is the
    one that fits ``status`` unless given."""
    kind = type_ if type_ is not None else anthropic_error_type(status)
    return _encode({"type": "error", "error": {"type": kind, "message": message}})


def anthropic_error_from_openai(status: int, payload: bytes) -> bytes:
    """An OpenAI-dialect backend's error body said in Anthropic's shape: its message, with the
    Anthropic error type of its status."""
    return anthropic_error_body(status, _error_of(payload, status)[0])


def openai_error_from_anthropic(status: int, payload: bytes) -> bytes:
    """An Anthropic backend's error body said in OpenAI's shape: its message, the OpenAI error type
    of its status, and its Anthropic error type as the ``code``."""
    message, kind = _error_of(payload, status)
    code = kind if kind is not None else anthropic_error_type(status)
    return _encode(
        {"error": {"message": message, "type": openai_error_type(status), "param": None, "code": code}}
    )


def anthropic_error_of(exc: ProxyError) -> bytes:
    """A tiermux error in Anthropic's shape, typed from its status."""
    return anthropic_error_body(exc.status, exc.message)
