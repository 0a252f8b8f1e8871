"""An OpenAI answer in either form: a streamed SSE body assembled into its JSON answer, and a JSON
answer replayed as the SSE body a streaming client expects.

The exact cache stores one form of an answer and serves both, because ``stream`` stays out of the
cache key: a streaming request and a plain one for the same prompt share the answer.

``assemble(body)`` reads the whole SSE body of ``/chat/completions`` (``chat.completion.chunk``) or
legacy ``/completions`` (``text_completion``) and returns the equivalent JSON answer, or ``None``
when the body is not one complete, successful answer (no ``[DONE]``, an error event, a choice that
never finished, a missing choice, anything unparsable); ``None`` just means "don't cache this
form", so it never raises. ``replay(answer, include_usage)`` returns the SSE body, chunked the way
OpenAI chunks (a role delta first, text deltas, tool-call deltas, a finish chunk per choice, the
usage-only chunk when asked for, ``[DONE]``); :class:`ReplayError` is its only exception.

Both run on cache hits, so decoding is msgspec into Structs that name only the fields used here;
logprob entries and usage travel as raw JSON, never rebuilt. One set of Structs serves as both the
decoding and the encoding shape: ``UNSET`` fields are left out of the output.
"""

from __future__ import annotations

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType

__all__ = ["ReplayError", "assemble", "replay", "replay_events"]

# Characters of text per replayed delta: enough that a cached answer goes out in a handful of
# events, small enough that a client rendering as it reads still sees the text arrive in steps.
PIECE = 256

CHAT = "chat.completion"
CHAT_CHUNK = "chat.completion.chunk"
TEXT = "text_completion"

_NULL = Raw(b"null")
_DONE = b"data: [DONE]\n\n"


class ReplayError(ValueError):
    """The answer to replay is not an OpenAI ``chat.completion`` or ``text_completion`` object, or
    holds something a stream cannot carry (audio, a non-function tool call)."""


# gc=False throughout: these never form cycles, and a long stream decodes hundreds of them that
# the cyclic collector would otherwise track and traverse.


class _Function(Struct, omit_defaults=True, gc=False):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(Struct, kw_only=True, gc=False):
    index: int | UnsetType = UNSET  # deltas only: which call a fragment belongs to
    id: str | UnsetType | None = UNSET
    type: str | UnsetType | None = UNSET
    function: _Function | UnsetType | None = UNSET


class _Message(Struct, kw_only=True, gc=False):
    """A choice's ``message`` (answer) or ``delta`` (chunk)."""

    role: str | UnsetType | None = UNSET
    content: str | UnsetType | None = UNSET
    refusal: str | UnsetType | None = UNSET
    # What vLLM and DeepSeek-style servers call the model's reasoning text.
    reasoning_content: str | UnsetType | None = UNSET
    reasoning: str | UnsetType | None = UNSET
    tool_calls: list[_ToolCall] | UnsetType | None = UNSET
    function_call: _Function | UnsetType | None = UNSET
    audio: Raw | UnsetType = UNSET


class _Logprobs(Struct, kw_only=True, gc=False):
    """Chat logprobs (``content``, ``refusal``) or legacy ones (the four parallel lists)."""

    content: list[Raw] | UnsetType | None = UNSET
    refusal: list[Raw] | UnsetType | None = UNSET
    tokens: list[Raw] | UnsetType | None = UNSET
    token_logprobs: list[Raw] | UnsetType | None = UNSET
    top_logprobs: list[Raw] | UnsetType | None = UNSET
    text_offset: list[Raw] | UnsetType | None = UNSET


class _Choice(Struct, kw_only=True, gc=False):
    text: str | UnsetType | None = UNSET
    index: int = 0
    message: _Message | UnsetType | None = UNSET
    delta: _Message | UnsetType | None = UNSET
    logprobs: _Logprobs | UnsetType | None = UNSET
    finish_reason: str | UnsetType | None = UNSET


class _Completion(Struct, kw_only=True, gc=False):
    """An answer or one chunk of a stream: the same top-level shape."""

    id: str = ""
    object: str = ""
    created: int = 0
    model: str = ""
    choices: list[_Choice] = []
    usage: Raw | UnsetType = UNSET
    service_tier: str | UnsetType | None = UNSET
    system_fingerprint: str | UnsetType | None = UNSET
    error: Raw | UnsetType = UNSET


class _Token(Struct, gc=False):
    token: str = ""


_decode_chunk = msgspec.json.Decoder(_Completion).decode
_decode_token = msgspec.json.Decoder(_Token).decode
_decode_str = msgspec.json.Decoder(str).decode
_encode = msgspec.json.Encoder().encode


# --- stream -> answer -------------------------------------------------------------------------


def _event_data(body: bytes) -> list[bytes] | None:
    """The data of each event before ``[DONE]``; None without ``[DONE]`` or with an error event.

    Every SSE spelling: LF, CR or CRLF line ends, ``data:`` with or without a space, comments,
    other fields, several data lines per event (joined with a newline). A last event the body
    ends without a blank line after still counts: a cut mid-event leaves unparsable JSON anyway.
    (Splitting into lines is faster than splitting at blank lines, whose two-byte search is slow.)
    """
    events: list[bytes] = []
    lines: list[bytes] = []
    for line in (*body.splitlines(), b""):
        if not line:
            if lines:
                data = lines[0] if len(lines) == 1 else b"\n".join(lines)
                if data.rstrip() == b"[DONE]":
                    return events
                events.append(data)
                lines = []
        elif line[:5] == b"data:":
            lines.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line[:6] == b"event:" and line[6:].strip() == b"error":
            return None
    return None


class _ToolAcc:
    __slots__ = ("arguments", "id", "name", "type")

    def __init__(self) -> None:
        self.id: str | None = None
        self.type: str | None = None
        self.name: str | None = None
        self.arguments: list[str] = []

    def add(self, call: _ToolCall | _Function) -> None:
        # id, type and name come once (OpenAI); a server repeating them must not double them.
        if isinstance(call, _ToolCall):
            if self.id is None and isinstance(call.id, str) and call.id:
                self.id = call.id
            if self.type is None and isinstance(call.type, str):
                self.type = call.type
            function = call.function
            if not isinstance(function, _Function):
                return
        else:
            function = call
        if self.name is None and function.name:
            self.name = function.name
        if function.arguments:
            self.arguments.append(function.arguments)

    def out(self) -> _Function:
        return _Function(name=self.name or "", arguments="".join(self.arguments))


class _ChoiceAcc:
    """Everything one choice's deltas added up to; text fields stay None until a string arrives
    (so ``content: null`` survives)."""

    __slots__ = (
        "content", "finish_reason", "function_call", "logprobs", "reasoning", "reasoning_content",
        "refusal", "role", "text", "tools",
    )  # fmt: skip

    def __init__(self) -> None:
        self.role: str | None = None
        self.content: list[str] | None = None
        self.refusal: list[str] | None = None
        self.reasoning_content: list[str] | None = None
        self.reasoning: list[str] | None = None
        self.text: list[str] | None = None
        self.tools: dict[int, _ToolAcc] = {}
        self.function_call: _ToolAcc | None = None
        self.logprobs: dict[str, list[Raw]] | None = None
        self.finish_reason: str | None = None

    def add(self, choice: _Choice) -> bool:
        """Fold one chunk's choice in; False for what no JSON answer can hold (streamed audio).

        This runs once per token of a streamed answer, so absent fields (UNSET) are passed over
        by identity checks rather than isinstance calls, and content, nearly always the only
        field, is handled inline.
        """
        if choice.finish_reason is not UNSET and choice.finish_reason is not None:
            self.finish_reason = choice.finish_reason
        delta = choice.delta
        if delta is not UNSET and delta is not None:
            content = delta.content
            if content is not UNSET and content is not None:
                if self.content is None:
                    self.content = [content]
                else:
                    self.content.append(content)
            if not self._add_rest(delta):
                return False
        if choice.text is not UNSET and choice.text is not None:
            self.text = _append(self.text, choice.text)
        if choice.logprobs is not UNSET and choice.logprobs is not None:
            self._add_logprobs(choice.logprobs)
        return True

    def _add_rest(self, delta: _Message) -> bool:
        if delta.audio is not UNSET and delta.audio != _NULL:
            # Streamed audio is raw pcm16 pieces; a JSON answer holds one file in the asked format.
            return False
        if delta.role is not UNSET and delta.role is not None and self.role is None:
            self.role = delta.role
        if delta.refusal is not UNSET and delta.refusal is not None:
            self.refusal = _append(self.refusal, delta.refusal)
        if delta.reasoning_content is not UNSET and delta.reasoning_content is not None:
            self.reasoning_content = _append(self.reasoning_content, delta.reasoning_content)
        if delta.reasoning is not UNSET and delta.reasoning is not None:
            self.reasoning = _append(self.reasoning, delta.reasoning)
        if delta.tool_calls is not UNSET and delta.tool_calls is not None:
            for call in delta.tool_calls:
                self._tool(call).add(call)
        if delta.function_call is not UNSET and delta.function_call is not None:
            self.function_call = self.function_call or _ToolAcc()
            self.function_call.add(delta.function_call)
        return True

    def _tool(self, call: _ToolCall) -> _ToolAcc:
        index = call.index
        if not isinstance(index, int):
            # No index (some compatible servers): a fragment with an id opens the next call.
            index = len(self.tools) - (0 if isinstance(call.id, str) or not self.tools else 1)
        acc = self.tools.get(index)
        if acc is None:
            acc = self.tools[index] = _ToolAcc()
        return acc

    def _add_logprobs(self, logprobs: _Logprobs) -> None:
        lists = self.logprobs = {} if self.logprobs is None else self.logprobs
        for name in _Logprobs.__struct_fields__:
            entries = getattr(logprobs, name)
            if isinstance(entries, list):
                lists.setdefault(name, []).extend(entries)

    def answer_choice(self, index: int, chat: bool) -> _Choice | None:
        """The JSON answer's choice; None when it never finished or a tool call has no name."""
        if self.finish_reason is None:
            return None
        logprobs = self._logprobs_out(chat)
        if not chat:
            text = "".join(self.text or ())
            return _Choice(text=text, index=index, logprobs=logprobs, finish_reason=self.finish_reason)
        if sorted(self.tools) != list(range(len(self.tools))):
            return None
        calls = [self.tools[i] for i in range(len(self.tools))]
        if any(not call.name for call in calls):
            return None
        content = None if self.content is None else "".join(self.content)
        if calls and not content:
            content = None  # OpenAI's answers say null, not "", beside tool calls
        message = _Message(role=self.role or "assistant", content=content, refusal=_join(self.refusal))
        if self.reasoning_content is not None:
            message.reasoning_content = "".join(self.reasoning_content)
        if self.reasoning is not None:
            message.reasoning = "".join(self.reasoning)
        if calls:
            message.tool_calls = [
                _ToolCall(id=c.id or "", type=c.type or "function", function=c.out()) for c in calls
            ]
        if self.function_call is not None:
            message.function_call = self.function_call.out()
        return _Choice(index=index, message=message, logprobs=logprobs, finish_reason=self.finish_reason)

    def _logprobs_out(self, chat: bool) -> _Logprobs | None:
        lists = self.logprobs
        if lists is None:
            return None
        if chat:
            return _Logprobs(content=lists.get("content"), refusal=lists.get("refusal"))
        return _Logprobs(
            tokens=lists.get("tokens", []),
            token_logprobs=lists.get("token_logprobs", []),
            top_logprobs=lists.get("top_logprobs", []),
            text_offset=lists.get("text_offset", []),
        )


def _append(pieces: list[str] | None, piece: str) -> list[str]:
    if pieces is None:
        return [piece]
    pieces.append(piece)
    return pieces


def _join(pieces: list[str] | None) -> str | None:
    return None if pieces is None else "".join(pieces)


def assemble(stream: bytes) -> bytes | None:
    """The JSON answer equivalent to a complete streamed answer, or None when ``stream`` is not
    one (see the module docstring). ``stream`` is the whole SSE body."""
    events = _event_data(stream)
    if not events:
        return None
    try:
        chunks = [_decode_chunk(data) for data in events]
    except msgspec.DecodeError:  # ValidationError is one too
        return None
    return _fold(chunks)


def _fold(chunks: list[_Completion]) -> bytes | None:
    first: _Completion | None = None
    accs: dict[int, _ChoiceAcc] = {}
    usage: Raw | UnsetType = UNSET
    tier: str | UnsetType | None = UNSET
    fingerprint: str | UnsetType | None = UNSET
    for chunk in chunks:
        if chunk.error is not UNSET and chunk.error != _NULL:
            return None
        if not chunk.object and not chunk.choices:
            continue  # Azure's content-filter annotations: not part of the answer
        if first is None:
            if chunk.object not in (CHAT_CHUNK, TEXT):
                return None
            first = chunk
        elif chunk.object != first.object:
            return None
        for choice in chunk.choices:
            acc = accs.get(choice.index)
            if acc is None:
                acc = accs[choice.index] = _ChoiceAcc()
            if not acc.add(choice):
                return None
        if chunk.usage is not UNSET and chunk.usage != _NULL:
            usage = chunk.usage
        if chunk.service_tier is not UNSET:
            tier = chunk.service_tier
        if chunk.system_fingerprint is not UNSET:
            fingerprint = chunk.system_fingerprint
    if first is None or sorted(accs) != list(range(len(accs))):
        return None
    chat = first.object == CHAT_CHUNK
    choices = [accs[i].answer_choice(i, chat) for i in range(len(accs))]
    if not choices or None in choices:
        return None
    answer = _Completion(
        id=first.id,
        object=CHAT if chat else TEXT,
        created=first.created,
        model=first.model,
        choices=[c for c in choices if c is not None],
        usage=usage,
        service_tier=tier,
        system_fingerprint=fingerprint,
    )
    return _encode(answer)


# --- answer -> stream -------------------------------------------------------------------------


def replay(answer: bytes, include_usage: bool) -> bytes:
    """The SSE body a streaming client gets for the JSON ``answer``, ``[DONE]`` included; with
    ``include_usage``, every chunk carries ``"usage": null`` and a last chunk with no choices
    carries the answer's usage (as ``stream_options.include_usage`` asks of OpenAI).

    Raises :class:`ReplayError` when ``answer`` is not a chat or text completion.
    """
    return b"".join(replay_events(answer, include_usage))


def replay_events(answer: bytes, include_usage: bool) -> list[bytes]:
    """:func:`replay`, one SSE event (``data: ...\\n\\n``) per list item, to send piece by piece."""
    try:
        parsed = _decode_chunk(answer)
    except msgspec.DecodeError as exc:
        raise ReplayError(f"not a completion object: {exc}") from None
    if parsed.object not in (CHAT, TEXT):
        raise ReplayError(f"not a completion object: object is {parsed.object!r}")
    head, tail = _frame(parsed, include_usage)
    chat = parsed.object == CHAT
    events: list[bytes] = []
    for choice in sorted(parsed.choices, key=lambda c: c.index):
        parts = _chat_choices(choice) if chat else _text_choices(choice)
        events.extend(head + _encode(part) + tail for part in parts)
    if include_usage:
        usage = parsed.usage if isinstance(parsed.usage, Raw) else _NULL
        events.append(head[: -len(b',"choices":[')] + b',"choices":[],"usage":' + bytes(usage) + b"}\n\n")
    events.append(_DONE)
    return events


def _frame(answer: _Completion, include_usage: bool) -> tuple[bytes, bytes]:
    """What goes before and after the one choice of every chunk: the fields all chunks share."""
    kind = CHAT_CHUNK if answer.object == CHAT else TEXT
    head = b'data: {"id":%b,"object":"%b","created":%d,"model":%b' % (
        _encode(answer.id),
        kind.encode(),
        answer.created,
        _encode(answer.model),
    )
    if answer.service_tier is not UNSET:
        head += b',"service_tier":' + _encode(answer.service_tier)
    if answer.system_fingerprint is not UNSET:
        head += b',"system_fingerprint":' + _encode(answer.system_fingerprint)
    return head + b',"choices":[', b'],"usage":null}\n\n' if include_usage else b"]}\n\n"


def _chat_choices(choice: _Choice) -> list[_Choice]:
    """One chat choice as the chunks' choices: role, reasoning, content, refusal, calls, finish."""
    message = choice.message
    if not isinstance(message, _Message):
        raise ReplayError(f"choice {choice.index} has no message")
    if isinstance(message.audio, Raw) and message.audio != _NULL:
        raise ReplayError("an audio answer cannot be streamed in its original format")
    index = choice.index
    content = message.content if isinstance(message.content, str) else None
    role = message.role if isinstance(message.role, str) else "assistant"
    # OpenAI opens every choice this way; content stays null when the answer's is (tool calls).
    out = [_delta(index, _Message(role=role, content="" if content is not None else None))]
    logprobs = choice.logprobs if isinstance(choice.logprobs, _Logprobs) else _Logprobs()
    out += _text_deltas(index, "reasoning_content", message.reasoning_content, None)
    out += _text_deltas(index, "reasoning", message.reasoning, None)
    out += _text_deltas(index, "content", content, logprobs.content)
    out += _text_deltas(index, "refusal", message.refusal, logprobs.refusal)
    for position, call in enumerate(message.tool_calls or ()):
        out.append(_delta(index, _Message(tool_calls=[_tool_delta(position, call)])))
    if isinstance(message.function_call, _Function):
        function = _Function(
            name=message.function_call.name or "", arguments=message.function_call.arguments or ""
        )
        out.append(_delta(index, _Message(function_call=function)))
    out.append(_delta(index, _Message(), _finish(choice)))
    return out


def _delta(index: int, delta: _Message, finish_reason: str | None = None) -> _Choice:
    # OpenAI spells out the null logprobs and finish_reason on every chunk.
    return _Choice(index=index, delta=delta, logprobs=None, finish_reason=finish_reason)


def _text_deltas(index: int, field: str, text: object, entries: object) -> list[_Choice]:
    """Deltas of one text field, each carrying the logprob entries of its own tokens when the
    tokens spell the text (else one delta carries them all)."""
    if not isinstance(text, str):
        return []
    if not isinstance(entries, list):
        spans = _spans(text, None, False)
    else:
        spans = _spans(text, _tokens(entries), True)
    out = []
    for start, end, first, last in spans:
        delta = _Message()
        setattr(delta, field, text[start:end])
        choice = _delta(index, delta)
        if isinstance(entries, list):
            part = entries[first:last]
            choice.logprobs = (
                _Logprobs(content=None, refusal=part)
                if field == "refusal"
                else _Logprobs(content=part, refusal=None)
            )
        out.append(choice)
    return out


def _tokens(entries: list[Raw]) -> list[str] | None:
    try:
        return [_decode_token(entry).token for entry in entries]
    except msgspec.DecodeError:
        return None


def _spans(text: str, tokens: list[str] | None, logprobs: bool) -> list[tuple[int, int, int, int | None]]:
    """(text start, text end, first token, end token or None for all) of each delta: pieces of
    about ``PIECE`` characters, cut between tokens when there are logprobs whose tokens spell the
    text exactly; logprobs that don't (byte-level tokens split characters) go whole with the text."""
    size = len(text)
    if not logprobs:
        return [(i, min(i + PIECE, size), 0, 0) for i in range(0, size, PIECE)]
    if tokens is None or "".join(tokens) != text:
        return [(0, size, 0, None)]
    spans: list[tuple[int, int, int, int | None]] = []
    start = first = end = 0
    for last, token in enumerate(tokens, 1):
        end += len(token)
        if end - start >= PIECE:
            spans.append((start, end, first, last))
            start, first = end, last
    if first < len(tokens) or start < size or not spans:
        spans.append((start, size, first, len(tokens)))  # not spans: empty logprobs stay a list
    return spans


def _tool_delta(position: int, call: _ToolCall) -> _ToolCall:
    function = call.function
    if not isinstance(function, _Function):
        raise ReplayError("only function tool calls can be streamed")
    return _ToolCall(
        index=position,
        id=call.id if isinstance(call.id, str) else "",
        type=call.type if isinstance(call.type, str) else "function",
        function=_Function(name=function.name or "", arguments=function.arguments or ""),
    )


def _finish(choice: _Choice) -> str | None:
    return choice.finish_reason if isinstance(choice.finish_reason, str) else None


def _text_choices(choice: _Choice) -> list[_Choice]:
    """One legacy completion choice as the chunks' choices: text pieces, then the finish."""
    text = choice.text if isinstance(choice.text, str) else ""
    index = choice.index
    logprobs = choice.logprobs if isinstance(choice.logprobs, _Logprobs) else None
    spans = _spans(text, None, False) if logprobs is None else _spans(text, _legacy_tokens(logprobs), True)
    out = []
    for start, end, first, last in spans:
        part = None if logprobs is None else _slice(logprobs, first, last)
        out.append(_Choice(text=text[start:end], index=index, logprobs=part, finish_reason=None))
    out.append(_Choice(text="", index=index, logprobs=None, finish_reason=_finish(choice)))
    return out


def _legacy_tokens(logprobs: _Logprobs) -> list[str] | None:
    """The tokens to cut along, when the four lists run in parallel."""
    tokens = logprobs.tokens
    if not isinstance(tokens, list):
        return None
    lists = (logprobs.token_logprobs, logprobs.top_logprobs, logprobs.text_offset)
    if any(isinstance(entries, list) and len(entries) != len(tokens) for entries in lists):
        return None
    try:
        return [_decode_str(token) for token in tokens]
    except msgspec.DecodeError:
        return None


def _slice(logprobs: _Logprobs, first: int, last: int | None) -> _Logprobs:
    def part(entries: list[Raw] | UnsetType | None) -> list[Raw] | None:
        return entries[first:last] if isinstance(entries, list) else None

    return _Logprobs(
        tokens=part(logprobs.tokens),
        token_logprobs=part(logprobs.token_logprobs),
        top_logprobs=part(logprobs.top_logprobs),
        text_offset=part(logprobs.text_offset),
    )
