"""The conversation of an Anthropic Messages request (``system``, ``messages``, ``tools``,
``tool_choice``) said as OpenAI Chat Completions messages and tools.

Works on the decoded JSON (plain dicts and lists) and builds plain dicts for the encoder. Paths
for error messages (``messages[2].content[0].type``) are only formatted when something is refused,
so a request that translates pays nothing for them.

What changes shape on the way, and comes back the same way (``messages_from_chat``):

- A content list holding one text block becomes a plain string; several blocks become a list of
  parts. Blocks of one assistant turn are regrouped as the text, then the tool calls.
- The ``tool_result`` blocks of a user turn become ``role: tool`` messages that come before the
  rest of that turn (OpenAI wants them right after the assistant's tool calls). Their content is a
  string: text blocks are joined with a newline, and ``is_error: true`` is said by prefixing
  ``"Error: "`` (OpenAI has no flag for it; the model reads the prefix, which is what the flag is
  for).
- ``cache_control`` is dropped wherever it appears: it is a pricing hint to Anthropic's cache,
  not part of the question.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tiermux.api.errors import BadRequest
from tiermux.dialects import Untranslatable

__all__ = ["chat_messages", "chat_tool_choice", "chat_tools"]

_encode = msgspec.json.encode

# Block keys read here; any other key with a value refuses the request. ``cache_control`` is
# dropped (see the module docstring).
_TEXT_KEYS = frozenset(("type", "text", "cache_control", "citations"))
_IMAGE_KEYS = frozenset(("type", "source", "cache_control"))
_TOOL_USE_KEYS = frozenset(("type", "id", "name", "input", "cache_control"))
_TOOL_RESULT_KEYS = frozenset(("type", "tool_use_id", "content", "is_error", "cache_control"))
_TOOL_KEYS = frozenset(("type", "name", "description", "input_schema", "strict", "cache_control"))
_MESSAGE_KEYS = frozenset(("role", "content"))

_THINKING = ("thinking", "redacted_thinking")


def _where(path: str | tuple[Any, ...]) -> str:
    """A path such as ``("messages", 2, "content", 0)`` as ``messages[2].content[0]``."""
    if isinstance(path, str):
        return path
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _extra_keys(item: dict[str, Any], known: frozenset[str], path: tuple[Any, ...]) -> None:
    """Refuse a key this translation does not read, unless its value says nothing (null, false,
    empty)."""
    for key, value in item.items():
        if key not in known and value not in (None, False, [], {}):
            raise Untranslatable(
                f"`{key}` can't be translated for a backend that speaks OpenAI Chat Completions.",
                param=_where((*path, key)),
            )


def _text_of(block: Any, path: tuple[Any, ...]) -> str:
    """The text of a ``text`` block."""
    text = block.get("text")
    if not isinstance(text, str):
        raise BadRequest("A text block needs a string `text`.", param=_where((*path, "text")))
    if len(block) > 2:
        if block.get("citations"):
            raise Untranslatable(
                "Citations can't be translated for a backend that speaks OpenAI Chat Completions.",
                param=_where((*path, "citations")),
            )
        _extra_keys(block, _TEXT_KEYS, path)
    return text


_BLOCKS = {"text", "image", "tool_use", "tool_result"}


def _unknown_block(block: Any, path: tuple[Any, ...], where: str = "here") -> Exception:
    """The error for a block that can't be where it is."""
    if not isinstance(block, dict):
        return BadRequest("A content block must be an object.", param=_where(path))
    kind = block.get("type")
    if not isinstance(kind, str):
        return BadRequest("A content block needs a string `type`.", param=_where((*path, "type")))
    if kind in _BLOCKS:
        return BadRequest(f"A `{kind}` block can't be {where}.", param=_where((*path, "type")))
    if kind in _THINKING:
        return Untranslatable(
            "Thinking blocks can't be translated for a backend that speaks OpenAI Chat Completions.",
            param=_where((*path, "type")),
        )
    return Untranslatable(
        f"A `{kind}` block can't be translated for a backend that speaks OpenAI Chat Completions "
        "(text, image, tool_use and tool_result can).",
        param=_where((*path, "type")),
    )


def _texts(content: Any, path: tuple[Any, ...]) -> str | list[dict[str, Any]]:
    """Content that may only hold text (``system``): a string, or a list of text blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest("Must be a string or a list of text blocks.", param=_where(path))
    parts = []
    for j, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _unknown_block(block, (*path, j), "in a system prompt")
        parts.append({"type": "text", "text": _text_of(block, (*path, j))})
    return parts[0]["text"] if len(parts) == 1 else parts


def _image_part(block: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    if len(block) > 2:
        _extra_keys(block, _IMAGE_KEYS, path)
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")  # type: ignore[union-attr]
        if isinstance(media, str) and isinstance(data, str):
            return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
        raise BadRequest("A base64 image needs `media_type` and `data`.", param=_where((*path, "source")))
    if kind == "url":
        url = source.get("url")  # type: ignore[union-attr]
        if isinstance(url, str):
            return {"type": "image_url", "image_url": {"url": url}}
        raise BadRequest("A url image needs a string `url`.", param=_where((*path, "source", "url")))
    if isinstance(kind, str):
        raise Untranslatable(
            f"An image from a `{kind}` source can't be translated for a backend that speaks OpenAI "
            "Chat Completions (base64 and url can).",
            param=_where((*path, "source", "type")),
        )
    raise BadRequest("An image block needs a `source` with a `type`.", param=_where((*path, "source")))


def _tool_message(block: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    """A ``tool_result`` block as a ``role: tool`` message."""
    if len(block) > 3:
        _extra_keys(block, _TOOL_RESULT_KEYS, path)
    call = block.get("tool_use_id")
    if not isinstance(call, str):
        raise BadRequest("A tool_result needs a string `tool_use_id`.", param=_where((*path, "tool_use_id")))
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for k, inner in enumerate(content):
            if isinstance(inner, dict) and inner.get("type") == "text":
                texts.append(_text_of(inner, (*path, "content", k)))
            elif isinstance(inner, dict) and inner.get("type") == "image":
                raise Untranslatable(
                    "An image inside a tool_result can't be translated for a backend that speaks "
                    "OpenAI Chat Completions (tool messages there hold text only).",
                    param=_where((*path, "content", k, "type")),
                )
            else:
                raise _unknown_block(inner, (*path, "content", k), "in a tool_result")
        text = "\n".join(texts)
    else:
        raise BadRequest("Must be a string or a list of blocks.", param=_where((*path, "content")))
    if block.get("is_error") is True:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call, "content": text}


def _tool_call(block: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    """A ``tool_use`` block as a tool call."""
    if len(block) > 4:
        _extra_keys(block, _TOOL_USE_KEYS, path)
    call, name, arguments = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(call, str) or not isinstance(name, str):
        raise BadRequest("A tool_use block needs a string `id` and `name`.", param=_where(path))
    if not isinstance(arguments, dict):
        raise BadRequest("A tool_use block needs an object `input`.", param=_where((*path, "input")))
    return {
        "id": call,
        "type": "function",
        "function": {"name": name, "arguments": _encode(arguments).decode()},
    }


def _user(out: list[dict[str, Any]], content: Any, i: int) -> None:
    """A user turn: its tool results as tool messages, then the rest as one user message."""
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    if not isinstance(content, list):
        raise BadRequest("Must be a string or a list of content blocks.", param=f"messages[{i}].content")
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text_of(block, ("messages", i, "content", j))})
        elif kind == "tool_result":
            out.append(_tool_message(block, ("messages", i, "content", j)))
        elif kind == "image":
            parts.append(_image_part(block, ("messages", i, "content", j)))
        else:
            raise _unknown_block(block, ("messages", i, "content", j), "in a user turn")
    if len(parts) == 1 and parts[0]["type"] == "text":
        out.append({"role": "user", "content": parts[0]["text"]})
    elif parts or not content:
        out.append({"role": "user", "content": parts or ""})


def _assistant(out: list[dict[str, Any]], content: Any, i: int) -> None:
    """An assistant turn: its text, then its tool calls."""
    if isinstance(content, str):
        out.append({"role": "assistant", "content": content})
        return
    if not isinstance(content, list):
        raise BadRequest("Must be a string or a list of content blocks.", param=f"messages[{i}].content")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text_of(block, ("messages", i, "content", j)))
        elif kind == "tool_use":
            calls.append(_tool_call(block, ("messages", i, "content", j)))
        else:
            raise _unknown_block(block, ("messages", i, "content", j), "in an assistant turn")
    message: dict[str, Any] = {"role": "assistant"}
    if len(texts) == 1:
        message["content"] = texts[0]
    elif texts:
        message["content"] = [{"type": "text", "text": text} for text in texts]
    else:
        message["content"] = None if calls else ""
    if calls:
        message["tool_calls"] = calls
    out.append(message)


def chat_messages(system: Any, messages: Any) -> list[dict[str, Any]]:
    """``system`` and ``messages`` of an Anthropic request as OpenAI chat messages."""
    out: list[dict[str, Any]] = []
    if system is not None:
        said = _texts(system, ("system",))
        if said:
            out.append({"role": "system", "content": said})
    if not isinstance(messages, list):
        raise BadRequest("`messages` must be a list of messages.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest("A message must be an object.", param=f"messages[{i}]")
        if len(message) > 2:
            _extra_keys(message, _MESSAGE_KEYS, ("messages", i))
        role, content = message.get("role"), message.get("content")
        if role == "user":
            _user(out, content, i)
        elif role == "assistant":
            _assistant(out, content, i)
        elif role == "system":
            out.append({"role": "system", "content": _texts(content, ("messages", i, "content"))})
        else:
            raise BadRequest("`role` must be user or assistant.", param=f"messages[{i}].role")
    return out


def chat_tools(tools: Any) -> list[dict[str, Any]]:
    """Anthropic custom tools as OpenAI function tools; server tools are refused (they run on
    Anthropic's side, which an OpenAI-dialect backend doesn't have)."""
    if not isinstance(tools, list):
        raise BadRequest("`tools` must be a list.", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequest("A tool must be an object.", param=f"tools[{i}]")
        kind = tool.get("type")
        if kind is not None and kind != "custom":
            raise Untranslatable(
                f"The server tool `{kind}` can't be offered by a backend that speaks OpenAI Chat "
                "Completions (custom tools can).",
                param=f"tools[{i}].type",
            )
        _extra_keys(tool, _TOOL_KEYS, ("tools", i))
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str):
            raise BadRequest("A tool needs a string `name`.", param=f"tools[{i}].name")
        if not isinstance(schema, dict):
            raise BadRequest("A tool needs an object `input_schema`.", param=f"tools[{i}].input_schema")
        function: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if description is not None:
            function["description"] = description
        function["parameters"] = schema
        if tool.get("strict") is True:
            function["strict"] = True
        out.append({"type": "function", "function": function})
    return out


_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def chat_tool_choice(choice: Any) -> tuple[Any, bool]:
    """An Anthropic ``tool_choice`` as OpenAI's, and whether it allows parallel tool calls."""
    if not isinstance(choice, dict):
        raise BadRequest("`tool_choice` must be an object.", param="tool_choice")
    kind = choice.get("type")
    said: Any = _CHOICES.get(kind) if isinstance(kind, str) else None
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise BadRequest("A tool choice of type tool needs a string `name`.", param="tool_choice.name")
        said = {"type": "function", "function": {"name": name}}
    elif said is None:
        raise BadRequest("`type` must be auto, any, tool or none.", param="tool_choice.type")
    for key, value in choice.items():
        if key not in ("type", "name", "disable_parallel_tool_use") and value is not None:
            raise Untranslatable(
                f"`{key}` can't be translated for a backend that speaks OpenAI Chat Completions.",
                param=f"tool_choice.{key}",
            )
    return said, choice.get("disable_parallel_tool_use") is not True
