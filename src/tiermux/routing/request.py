"""What the classifier reads of a request: its texts and a few structural facts.

Decoded from the body with msgspec Structs that name only these fields (everything else is skipped
without being built), and shared by the proxy, ``tiermux explain``, ``train`` and ``eval`` so that
a request is seen the same way everywhere.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "ChatFields",
    "CompletionFields",
    "RequestText",
    "chat_from_object",
    "decode_chat",
    "decode_completion",
    "decode_messages",
    "from_chat",
    "from_completion",
    "from_messages",
    "from_prompt",
]


class ContentPart(msgspec.Struct):
    type: str = "text"
    text: str | None = None


class Message(msgspec.Struct):
    role: str = "user"
    content: str | list[ContentPart] | None = None


class ResponseFormat(msgspec.Struct):
    type: str = "text"


class ChatFields(msgspec.Struct):
    """The fields of a chat completion that routing reads."""

    model: str | None = None
    stream: Any = None  # any JSON: only ``true`` matters here, and the backend judges the rest
    messages: list[Message] = []
    tools: list[msgspec.Raw] | None = None
    functions: list[msgspec.Raw] | None = None
    response_format: ResponseFormat | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    n: int | None = None


class CompletionFields(msgspec.Struct):
    """The fields of a legacy completion that routing reads."""

    model: str | None = None
    stream: Any = None
    # A string, or a list of strings or of token ids (only strings are read).
    prompt: str | list[str | int | list[int]] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    n: int | None = None


class Block(msgspec.Struct):
    """A content block of Anthropic's Messages API (only what routing reads of it)."""

    type: str = "text"
    text: str | None = None
    content: str | list[ContentPart] | None = None  # a tool_result's


class Turn(msgspec.Struct):
    role: str = "user"
    content: str | list[Block] | None = None


class MessagesFields(msgspec.Struct):
    """The fields of an Anthropic Messages request that routing reads."""

    model: str | None = None
    stream: Any = None
    system: str | list[ContentPart] | None = None
    messages: list[Turn] = []
    tools: list[msgspec.Raw] | None = None
    max_tokens: int | None = None
    temperature: float | None = None


class RequestText:
    """A request as the classifier sees it."""

    __slots__ = (
        "choices",
        "image",
        "json_mode",
        "last",
        "max_tokens",
        "previous",
        "stream",
        "system",
        "temperature",
        "tools",
        "total_chars",
        "turns",
    )

    def __init__(
        self,
        last: str,
        system: str = "",
        previous: str = "",
        *,
        turns: int = 1,
        total_chars: int | None = None,
        tools: bool = False,
        json_mode: bool = False,
        image: bool = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stream: bool = False,
        choices: int = 1,
    ) -> None:
        self.last = last
        self.system = system
        self.previous = previous
        self.turns = turns
        self.total_chars = len(last) + len(system) + len(previous) if total_chars is None else total_chars
        self.tools = tools
        self.json_mode = json_mode
        self.image = image
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.stream = stream
        self.choices = choices  # ``n``

    def __repr__(self) -> str:
        return f"<RequestText turns={self.turns} chars={self.total_chars} last={self.last[:40]!r}>"


def _text_of(content: str | list[ContentPart] | None) -> tuple[str, bool]:
    """The text of a message's content, and whether it carried an image."""
    if content is None:
        return "", False
    if isinstance(content, str):
        return content, False
    texts = [part.text for part in content if part.text]
    image = any(part.type in ("image_url", "input_image", "image") for part in content)
    return "\n".join(texts), image


def from_chat(fields: ChatFields) -> RequestText:
    """The last user turn sets the task; system prompts and the turn before give context."""
    systems: list[str] = []
    last = previous = ""
    turns = total = 0
    image = tool_turns = False
    for message in fields.messages:
        content = message.content
        if content is None:
            continue
        if isinstance(content, str):
            text = content
        else:
            text, has_image = _text_of(content)
            image = image or has_image
        total += len(text)
        role = message.role
        if role == "user":
            previous, last = last, text
            turns += 1
        elif role == "system" or role == "developer":
            systems.append(text)
        elif role == "tool" or role == "function":
            tool_turns = True
    response_format = fields.response_format
    return RequestText(
        last,
        systems[0] if len(systems) == 1 else "\n".join(systems),
        previous,
        turns=turns if turns else 1,
        total_chars=total,
        tools=bool(fields.tools) or bool(fields.functions) or tool_turns,
        json_mode=response_format is not None and response_format.type in ("json_object", "json_schema"),
        image=image,
        max_tokens=fields.max_completion_tokens or fields.max_tokens,
        temperature=fields.temperature,
        stream=fields.stream is True,
        choices=fields.n or 1,
    )


def from_completion(fields: CompletionFields) -> RequestText:
    prompt = fields.prompt
    text = "\n".join(p for p in prompt if isinstance(p, str)) if isinstance(prompt, list) else prompt or ""
    return RequestText(
        text,
        max_tokens=fields.max_tokens,
        temperature=fields.temperature,
        stream=fields.stream is True,
        choices=fields.n or 1,
    )


def _blocks_text(blocks: list[Block]) -> tuple[str, bool, bool]:
    """The text of a turn's blocks, and whether they hold an image, and a tool call or result."""
    texts = [block.text for block in blocks if block.type == "text" and block.text]
    kinds = {block.type for block in blocks}
    return "\n".join(texts), "image" in kinds, not kinds.isdisjoint(("tool_use", "tool_result"))


def from_messages(fields: MessagesFields) -> RequestText:
    """An Anthropic request read as its chat equivalent: the system prompt, the last user turn
    with text (a turn of tool results alone doesn't change the task), images and tool turns."""
    system, _ = _text_of(fields.system)
    asked: list[str] = []
    total = 0
    image = tool_turns = False
    for message in fields.messages:
        content = message.content
        if isinstance(content, list):
            text, has_image, has_tool = _blocks_text(content)
            image, tool_turns = image or has_image, tool_turns or has_tool
        else:
            text = content or ""
        total += len(text)
        if message.role == "user" and text:
            asked.append(text)
    last, previous = (asked[-1], asked[-2] if len(asked) > 1 else "") if asked else ("", "")
    turns = len(asked)
    return RequestText(
        last,
        system,
        previous,
        turns=turns if turns else 1,
        total_chars=total + len(system),
        tools=bool(fields.tools) or tool_turns,
        image=image,
        max_tokens=fields.max_tokens,
        temperature=fields.temperature,
        stream=fields.stream is True,
    )


def from_prompt(prompt: str) -> RequestText:
    return RequestText(prompt)


decode_chat = msgspec.json.Decoder(ChatFields).decode
decode_completion = msgspec.json.Decoder(CompletionFields).decode
decode_messages = msgspec.json.Decoder(MessagesFields).decode


def chat_from_object(body: dict[str, Any]) -> RequestText:
    """A request body already parsed as JSON (data files, ``explain``)."""
    # Through bytes, as the proxy sees it (msgspec.convert can't build the Raw fields).
    return from_chat(decode_chat(msgspec.json.encode(body)))
