"""Request bodies translated between the two dialects: an Anthropic Messages request for a backend
that speaks OpenAI Chat Completions (``chat_from_messages``), and the reverse
(``messages_from_chat``).

Both are pure functions over bytes, run on every translated request: the body is decoded once with
msgspec into plain objects, a new dict is built in one pass over its fields, and encoded once. The
output's first member is the client's ``model``, so that the proxy can splice the backend's model
into it as it does for untranslated bodies.

What one dialect can say and the other can't is refused with :class:`Untranslatable` (a 400 naming
the field); a field nobody knows is refused too, never passed over. The few fields that are
dropped are the ones that change what a request costs or how it is stored, never what is asked:

- ``cache_control`` (Anthropic's, on blocks, tools, system and the request; and the same key that
  some clients put on OpenAI content parts): a hint to Anthropic's prompt cache pricing.
- OpenAI's ``metadata`` and ``store`` (stored-completion tags), ``service_tier``,
  ``prompt_cache_key``/``prompt_cache_retention``/``prompt_cache_options`` (OpenAI's capacity and
  cache settings), ``stream_options`` (Anthropic streams always report usage) and
  ``image_url.detail`` (Anthropic sizes images itself).

Fields that say their default (``n: 1``, zero penalties, ``response_format`` of type text,
``logprobs: false``, ``verbosity: medium``, null anywhere) are accepted and not sent, and so is
Anthropic's ``thinking`` of type ``disabled`` or ``adaptive`` (an answer without thinking is an
answer to both; ``enabled`` asks for thinking and is refused). ``top_k`` goes through both ways:
Anthropic has it, and the OpenAI-dialect servers tiermux fronts (vLLM, Ollama, llama.cpp) accept it
on their OpenAI endpoints; vLLM's "off" values (``-1``, ``0``) are not sent to Anthropic. OpenAI's
``user`` and ``safety_identifier`` both say who the end user is: either becomes Anthropic's
``metadata.user_id`` (``safety_identifier`` when both are sent), which comes back as ``user``.

Legacy function calling (``functions``, ``function_call``, ``role: function``) is refused rather
than translated: the answer would come back as ``tool_calls``, which a client using the legacy
shape doesn't read.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tiermux.api.errors import BadRequest
from tiermux.dialects import Untranslatable
from tiermux.dialects._to_chat import chat_messages, chat_tool_choice, chat_tools
from tiermux.dialects._to_messages import anthropic_tool_choice, anthropic_tools, anthropic_turns

__all__ = ["chat_from_messages", "messages_from_chat"]

_decode = msgspec.json.decode
_encode = msgspec.json.encode

_TO_CHAT = "a backend that speaks OpenAI Chat Completions"
_TO_MESSAGES = "a backend that speaks Anthropic Messages"


def _load(body: bytes) -> dict[str, Any]:
    try:
        request = _decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = request.get("model")
    if not isinstance(model, str):
        raise BadRequest("You must provide a model parameter.", param="model")
    return request


def _strings(value: Any, param: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise BadRequest("Must be a string or a list of strings.", param=param)


def _refused(key: str, reasons: dict[str, str], backend: str) -> Untranslatable:
    reason = reasons.get(key)
    if reason is None:
        reason = f"Unknown field `{key}`: it can't be translated for {backend}."
    return Untranslatable(reason, param=key)


# --- Anthropic Messages -> OpenAI Chat Completions ----------------------------------------------

_COPIED_TO_CHAT = frozenset(("max_tokens", "temperature", "top_p", "top_k"))

_NOT_IN_CHAT = {
    "thinking": f"Extended thinking can't be asked of {_TO_CHAT}.",
    "service_tier": f"`service_tier` chooses Anthropic's capacity and can't be translated for {_TO_CHAT}.",
    "container": f"Containers run on Anthropic's servers and can't be translated for {_TO_CHAT}.",
    "mcp_servers": f"MCP servers are called by Anthropic's servers and can't be translated for {_TO_CHAT}.",
    "output_config": f"`output_config` can't be translated for {_TO_CHAT}.",
    "context_management": f"Context management can't be translated for {_TO_CHAT}.",
}


def chat_from_messages(body: bytes) -> bytes:
    """An Anthropic Messages request body as an OpenAI Chat Completions request body.

    Raises :class:`Untranslatable` for what Chat Completions can't say (thinking, server tools,
    documents, images in tool results, ...) and :class:`BadRequest` for a body that is not a
    Messages request, each naming the field.
    """
    request = _load(body)
    out: dict[str, Any] = {
        "model": request["model"],
        "messages": chat_messages(request.get("system"), request.get("messages")),
    }
    for key, value in request.items():
        if value is None or key in ("model", "messages", "system", "cache_control"):
            continue
        if key in _COPIED_TO_CHAT:
            out[key] = value
        elif key == "stream":
            if not isinstance(value, bool):
                raise BadRequest("`stream` must be a boolean.", param="stream")
            out["stream"] = value
            if value:  # the stream's translator reads usage off the final chunk
                out["stream_options"] = {"include_usage": True}
        elif key == "stop_sequences":
            stop = _strings(value, "stop_sequences")
            if stop:
                out["stop"] = stop
        elif key == "tools":
            tools = chat_tools(value)
            if tools:  # OpenAI refuses an empty list of tools
                out["tools"] = tools
        elif key == "tool_choice":
            out["tool_choice"], parallel = chat_tool_choice(value)
            if not parallel:
                out["parallel_tool_calls"] = False
        elif key == "metadata":
            _metadata(value, out)
        elif key == "thinking" and isinstance(value, dict) and value.get("type") in ("disabled", "adaptive"):
            pass  # no thinking asked for, or as much as the model likes: none is an answer to both
        elif value not in (False, [], {}):  # an empty value says nothing; anything else is refused
            raise _refused(key, _NOT_IN_CHAT, _TO_CHAT)
    return _encode(out)


def _metadata(value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, dict):
        raise BadRequest("`metadata` must be an object.", param="metadata")
    for key, item in value.items():
        if key == "user_id":
            if item is not None:
                out["user"] = item
        elif item is not None:
            raise Untranslatable(
                f"`metadata.{key}` can't be translated for {_TO_CHAT}.", param=f"metadata.{key}"
            )


# --- OpenAI Chat Completions -> Anthropic Messages ----------------------------------------------

# Fields that make no difference to the answer and have no meaning for Anthropic (see the module
# docstring).
_DROPPED_FOR_MESSAGES = frozenset(
    (
        "stream_options",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
    )
)

# Fields accepted when they say their default, which is then not sent.
_DEFAULTS = {
    "n": (1,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "modalities": (["text"],),
    "response_format": ({"type": "text"},),
    "verbosity": ("medium",),
}

_LEGACY = f"Legacy function calling can't be translated for {_TO_MESSAGES}: use `tools` and `tool_choice`."
_NOT_IN_MESSAGES = {
    "n": f"{_TO_MESSAGES} gives one answer per request: `n` must be 1.",
    "logprobs": f"Log probabilities can't be asked of {_TO_MESSAGES}.",
    "top_logprobs": f"Log probabilities can't be asked of {_TO_MESSAGES}.",
    "response_format": f"Only a `response_format` of type text can be translated for {_TO_MESSAGES}.",
    "seed": f"A `seed` can't be translated for {_TO_MESSAGES}.",
    "logit_bias": f"`logit_bias` can't be translated for {_TO_MESSAGES}.",
    "presence_penalty": f"A nonzero `presence_penalty` can't be translated for {_TO_MESSAGES}.",
    "frequency_penalty": f"A nonzero `frequency_penalty` can't be translated for {_TO_MESSAGES}.",
    "audio": f"Audio output can't be asked of {_TO_MESSAGES}.",
    "modalities": f"Only text output can be asked of {_TO_MESSAGES}.",
    "prediction": f"Predicted outputs can't be translated for {_TO_MESSAGES}.",
    "web_search_options": f"Web search can't be translated for {_TO_MESSAGES}.",
    "reasoning_effort": f"`reasoning_effort` can't be translated for {_TO_MESSAGES}.",
    "verbosity": f"`verbosity` can't be translated for {_TO_MESSAGES}.",
    "moderation": f"`moderation` can't be translated for {_TO_MESSAGES}.",
    "functions": _LEGACY,
    "function_call": _LEGACY,
}


def messages_from_chat(body: bytes, default_max_tokens: int = 4096) -> bytes:
    """An OpenAI Chat Completions request body as an Anthropic Messages request body.

    ``default_max_tokens`` is sent when the client set no limit (Anthropic requires one). Raises
    :class:`Untranslatable` for what Messages can't say (``n`` > 1, logprobs, JSON modes, audio, a
    temperature above 1, a system message mid-conversation, ...) and :class:`BadRequest` for a body
    that is not a chat request, each naming the field.
    """
    request = _load(body)
    system, turns = anthropic_turns(request.get("messages"))
    out: dict[str, Any] = {"model": request["model"], "max_tokens": default_max_tokens}
    if system is not None:
        out["system"] = system
    out["messages"] = turns
    limit = tool_choice = user = None
    parallel = True
    for key, value in request.items():
        if value is None or key in ("model", "messages") or key in _DROPPED_FOR_MESSAGES:
            continue
        if key == "max_completion_tokens":
            limit = value
        elif key == "max_tokens":
            limit = value if limit is None else limit
        elif key == "stream":
            if not isinstance(value, bool):
                raise BadRequest("`stream` must be a boolean.", param="stream")
            out["stream"] = value
        elif key == "temperature":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadRequest("`temperature` must be a number.", param="temperature")
            if value > 1:
                raise Untranslatable(
                    f"{_TO_MESSAGES} takes a temperature from 0 to 1: {value} can't be translated.",
                    param="temperature",
                )
            out["temperature"] = value
        elif key == "top_p":
            out["top_p"] = value
        elif key == "top_k":
            if value not in (-1, 0):
                out["top_k"] = value
        elif key == "stop":
            stop = _strings(value, "stop")
            if stop:
                out["stop_sequences"] = stop
        elif key == "tools":
            tools = anthropic_tools(value)
            if tools:
                out["tools"] = tools
        elif key == "tool_choice":
            tool_choice = anthropic_tool_choice(value)
        elif key == "parallel_tool_calls":
            if not isinstance(value, bool):
                raise BadRequest("`parallel_tool_calls` must be a boolean.", param="parallel_tool_calls")
            parallel = value
        elif key == "user" or key == "safety_identifier":
            if not isinstance(value, str):
                raise BadRequest(f"`{key}` must be a string.", param=key)
            if key == "safety_identifier" or user is None:
                user = value  # the newer name wins when a client sends both
        elif key not in _DEFAULTS or value not in _DEFAULTS[key]:
            raise _refused(key, _NOT_IN_MESSAGES, _TO_MESSAGES)
    if limit is not None:
        out["max_tokens"] = limit
    if not parallel and (tool_choice is None or tool_choice["type"] != "none"):
        tool_choice = tool_choice or {"type": "auto"}
        tool_choice["disable_parallel_tool_use"] = True
    if tool_choice is not None:
        out["tool_choice"] = tool_choice
    if user is not None:
        out["metadata"] = {"user_id": user}
    return _encode(out)
