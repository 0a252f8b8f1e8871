"""The conversation of an OpenAI Chat Completions request (``messages``, ``tools``,
``tool_choice``) said as an Anthropic Messages ``system``, turns and tools.

Works on the decoded JSON (plain dicts and lists) and builds plain dicts for the encoder. Paths for
error messages are only formatted when something is refused.

What changes shape on the way:

- Anthropic has one system slot, so only the ``system``/``developer`` messages before the first
  other message can go there; a later one is refused. One leading message keeps its form (a string,
  or a list of text parts as text blocks); several are joined with a blank line.
- Anthropic turns alternate, and tool results must come in the user turn right after the
  assistant's tool calls: ``role: tool`` messages become ``tool_result`` blocks of a user turn,
  consecutive messages of one role merge into one turn (a merged turn's content is a list of
  blocks), and tool results go first in their turn.
- An assistant message becomes its text, then one ``tool_use`` block per tool call; an empty text
  next to tool calls is left out (Anthropic refuses empty text blocks). A ``refusal`` the assistant
  said is text it said.
- ``image_url.detail`` is dropped: Anthropic sizes images itself and has no such setting.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tiermux.api.errors import BadRequest
from tiermux.dialects import Untranslatable

__all__ = ["anthropic_tool_choice", "anthropic_tools", "anthropic_turns"]

_decode_object = msgspec.json.Decoder(dict[str, Any]).decode

_USER_KEYS = frozenset(("role", "content"))
_ASSISTANT_KEYS = frozenset(("role", "content", "refusal", "tool_calls"))
_TOOL_KEYS = frozenset(("role", "content", "tool_call_id"))
_TEXT_PART_KEYS = {
    "text": frozenset(("type", "text", "cache_control")),
    "refusal": frozenset(("type", "refusal", "cache_control")),
}
_IMAGE_PART_KEYS = frozenset(("type", "image_url", "cache_control"))
_IMAGE_URL_KEYS = frozenset(("url", "detail"))
_SYSTEM = ("system", "developer")
_NOTHING: tuple[Any, ...] = (None, False, [], {})


def _refuse_key(key: str, param: str) -> Untranslatable:
    if key == "name":
        return Untranslatable(
            "Participant names (`name`) can't be translated for a backend that speaks Anthropic Messages.",
            param=param,
        )
    if key in ("function_call",):
        return Untranslatable(
            "Legacy function calls can't be translated for a backend that speaks Anthropic Messages: "
            "use `tools` and `tool_calls`.",
            param=param,
        )
    return Untranslatable(
        f"`{key}` can't be translated for a backend that speaks Anthropic Messages.", param=param
    )


def _extra_keys(message: dict[str, Any], known: frozenset[str], i: int) -> None:
    for key, value in message.items():
        if key not in known and value not in _NOTHING:
            raise _refuse_key(key, f"messages[{i}].{key}")


def _part_keys(part: dict[str, Any], known: frozenset[str], where: str) -> None:
    """Refuse a key of a content part this translation does not read (``cache_control``, which
    some clients put on OpenAI parts, is dropped as on Anthropic blocks)."""
    for key, value in part.items():
        if key not in known and value not in _NOTHING:
            raise _refuse_key(key, f"{where}.{key}")


def _text_parts(content: list[Any], i: int, allowed: tuple[str, ...] = ("text",)) -> list[str]:
    """The texts of a list of parts that may only hold text (or refusal) parts."""
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in allowed:
            text = part.get(kind)
            if not isinstance(text, str):
                raise BadRequest(
                    f"A {kind} part needs a string `{kind}`.", param=f"messages[{i}].content[{j}]"
                )
            if len(part) > 2:
                _part_keys(part, _TEXT_PART_KEYS[kind], f"messages[{i}].content[{j}]")
            texts.append(text)
            continue
        raise _unknown_part(part, f"messages[{i}].content[{j}]", " or ".join(allowed))
    return texts


def _unknown_part(part: Any, where: str, allowed: str) -> Exception:
    kind = part.get("type") if isinstance(part, dict) else None
    if not isinstance(kind, str):
        return BadRequest("A content part must be an object with a string `type`.", param=where)
    return Untranslatable(
        f"A `{kind}` content part can't be translated here for a backend that speaks Anthropic "
        f"Messages ({allowed} can).",
        param=f"{where}.type",
    )


def _image_block(part: dict[str, Any], i: int, j: int) -> dict[str, Any]:
    if len(part) > 2:
        _part_keys(part, _IMAGE_PART_KEYS, f"messages[{i}].content[{j}]")
    image = part.get("image_url")
    if isinstance(image, dict) and len(image) > 1:
        _part_keys(image, _IMAGE_URL_KEYS, f"messages[{i}].content[{j}].image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise BadRequest(
            "An image_url part needs a string `url`.", param=f"messages[{i}].content[{j}].image_url"
        )
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        if comma and header.endswith(";base64"):
            media = header[:-7]
            return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
        raise Untranslatable(
            "Only base64 data URLs can be translated for a backend that speaks Anthropic Messages.",
            param=f"messages[{i}].content[{j}].image_url.url",
        )
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise BadRequest(
        "An image URL must be an http(s) or a data URL.", param=f"messages[{i}].content[{j}].image_url.url"
    )


def _user_content(content: Any, i: int) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest("Must be a string or a list of content parts.", param=f"messages[{i}].content")
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequest("A text part needs a string `text`.", param=f"messages[{i}].content[{j}]")
            if len(part) > 2:
                _part_keys(part, _TEXT_PART_KEYS["text"], f"messages[{i}].content[{j}]")
            blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part, i, j))
        else:
            raise _unknown_part(part, f"messages[{i}].content[{j}]", "text and image_url")
    return blocks


def _tool_use(call: Any, i: int, k: int) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise BadRequest("A tool call must be an object.", param=f"messages[{i}].tool_calls[{k}]")
    if call.get("type", "function") != "function":
        raise Untranslatable(
            f"A `{call.get('type')}` tool call can't be translated for a backend that speaks Anthropic "
            "Messages (function calls can).",
            param=f"messages[{i}].tool_calls[{k}].type",
        )
    function, ident = call.get("function"), call.get("id")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(ident, str) or not isinstance(name, str):
        raise BadRequest(
            "A tool call needs a string `id` and `function.name`.", param=f"messages[{i}].tool_calls[{k}]"
        )
    arguments = function.get("arguments")  # type: ignore[union-attr]
    try:
        parsed = _decode_object(arguments) if arguments else {}
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
        raise Untranslatable(
            "Tool call arguments must be a JSON object to be translated for a backend that speaks "
            "Anthropic Messages.",
            param=f"messages[{i}].tool_calls[{k}].function.arguments",
        ) from None
    return {"type": "tool_use", "id": ident, "name": name, "input": parsed}


def _assistant_content(message: dict[str, Any], i: int) -> str | list[dict[str, Any]]:
    content, refusal, calls = message.get("content"), message.get("refusal"), message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise BadRequest("`tool_calls` must be a list.", param=f"messages[{i}].tool_calls")
    if isinstance(content, str) and not refusal and not calls:
        return content
    texts: list[str]
    if content is None:
        texts = []
    elif isinstance(content, str):
        texts = [content]
    elif isinstance(content, list):
        texts = _text_parts(content, i, ("text", "refusal"))
    else:
        raise BadRequest("Must be a string, a list of parts or null.", param=f"messages[{i}].content")
    if isinstance(refusal, str) and refusal:
        texts.append(refusal)
    blocks = [{"type": "text", "text": text} for text in texts if text or not calls]
    if calls:
        blocks.extend(_tool_use(call, i, k) for k, call in enumerate(calls))
    return blocks


def _tool_result(message: dict[str, Any], i: int) -> dict[str, Any]:
    call, content = message.get("tool_call_id"), message.get("content")
    if not isinstance(call, str):
        raise BadRequest("A tool message needs a string `tool_call_id`.", param=f"messages[{i}].tool_call_id")
    if isinstance(content, list):
        content = [{"type": "text", "text": text} for text in _text_parts(content, i)]
    elif not isinstance(content, str):
        raise BadRequest("Must be a string or a list of text parts.", param=f"messages[{i}].content")
    return {"type": "tool_result", "tool_use_id": call, "content": content}


def _system_text(message: dict[str, Any], i: int) -> str | list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return _text_parts(content, i)
    raise BadRequest("Must be a string or a list of text parts.", param=f"messages[{i}].content")


def _system(said: list[str | list[str]]) -> str | list[dict[str, Any]] | None:
    if not said:
        return None
    if len(said) == 1:
        only = said[0]
        return only if isinstance(only, str) else [{"type": "text", "text": text} for text in only]
    return "\n\n".join(text if isinstance(text, str) else "\n".join(text) for text in said)


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def anthropic_turns(messages: Any) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """OpenAI chat messages as Anthropic's ``system`` (None when there is none) and turns."""
    if not isinstance(messages, list):
        raise BadRequest("`messages` must be a list of messages.", param="messages")
    said: list[str | list[str]] = []
    turns: list[dict[str, Any]] = []
    last: dict[str, Any] | None = None  # the turn being built
    results = 0  # tool_result blocks at the head of ``last`` (a user turn)
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest("A message must be an object.", param=f"messages[{i}]")
        role = message.get("role")
        content: str | list[dict[str, Any]]
        if role == "user":
            if len(message) > 2:
                _extra_keys(message, _USER_KEYS, i)
            content = _user_content(message.get("content"), i)
        elif role == "assistant":
            if len(message) > 2:
                _extra_keys(message, _ASSISTANT_KEYS, i)
            content = _assistant_content(message, i)
        elif role == "tool":
            if len(message) > 3:
                _extra_keys(message, _TOOL_KEYS, i)
            block = _tool_result(message, i)
            if last is None or last["role"] != "user":
                last = {"role": "user", "content": [block]}
                turns.append(last)
                results = 0
            else:
                last["content"] = _as_blocks(last["content"])
                last["content"].insert(results, block)
            results += 1
            continue
        elif role in _SYSTEM:
            if turns:
                raise Untranslatable(
                    "Anthropic Messages has one system prompt, before the conversation: a system "
                    "message after the first user or assistant message can't be translated.",
                    param=f"messages[{i}].role",
                )
            if len(message) > 2:
                _extra_keys(message, _USER_KEYS, i)
            said.append(_system_text(message, i))
            continue
        elif role == "function":
            raise _refuse_key("function_call", f"messages[{i}].role")
        else:
            raise BadRequest(
                "`role` must be system, developer, user, assistant or tool.", param=f"messages[{i}].role"
            )
        if last is not None and last["role"] == role:
            last["content"] = _as_blocks(last["content"]) + _as_blocks(content)
        else:
            last = {"role": role, "content": content}
            turns.append(last)
            results = 0
    return _system(said), turns


def anthropic_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI function tools as Anthropic custom tools (``strict`` is kept: both say it)."""
    if not isinstance(tools, list):
        raise BadRequest("`tools` must be a list.", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequest("A tool must be an object.", param=f"tools[{i}]")
        if tool.get("type") != "function":
            raise Untranslatable(
                f"A `{tool.get('type')}` tool can't be translated for a backend that speaks Anthropic "
                "Messages (function tools can).",
                param=f"tools[{i}].type",
            )
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise BadRequest("A function tool needs a string `function.name`.", param=f"tools[{i}].function")
        said: dict[str, Any] = {"name": name}
        for key, value in function.items():  # type: ignore[union-attr]
            if key == "description" and value is not None:
                said["description"] = value
            elif key == "strict" and value is True:
                said["strict"] = True
            elif key not in ("name", "description", "parameters", "strict") and value not in _NOTHING:
                raise _refuse_key(key, f"tools[{i}].function.{key}")
        parameters = function.get("parameters")  # type: ignore[union-attr]
        said["input_schema"] = parameters if parameters is not None else {"type": "object", "properties": {}}
        out.append(said)
    return out


def anthropic_tool_choice(choice: Any) -> dict[str, Any]:
    """An OpenAI ``tool_choice`` as Anthropic's."""
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str):
            return {"type": "tool", "name": name}
        raise BadRequest(
            "A function tool choice needs a string `function.name`.", param="tool_choice.function"
        )
    if isinstance(choice, dict) and isinstance(choice.get("type"), str):
        raise Untranslatable(
            f"A tool choice of type `{choice['type']}` can't be translated for a backend that speaks "
            "Anthropic Messages.",
            param="tool_choice.type",
        )
    raise BadRequest("`tool_choice` must be auto, none, required or a function choice.", param="tool_choice")
