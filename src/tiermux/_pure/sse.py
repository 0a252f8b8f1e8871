"""The stream translators between the two dialects, in Python: the twin of ``csrc/sse.pyx``.

Same names, outputs (byte for byte), end states and exceptions as the compiled twin; what they do
and why is told in :mod:`tiermux.dialects.streams`, the module the rest of the package imports.
The compiled twin reads with the Structs and byte templates defined here, so both decode alike.
"""

from __future__ import annotations

import secrets
import time

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType

from tiermux.accounting.usage import Usage
from tiermux.dialects.common import (
    ANTHROPIC_ERROR_TYPES,
    FINISH_REASON_OF_STOP,
    STOP_REASON_OF_FINISH,
    anthropic_error_type,
    openai_error_type,
    usage_of_anthropic,
)

__all__ = ["MAX_EVENT_BYTES", "ChatFromMessagesStream", "MessagesFromChatStream", "MessagesUsageTap"]

MAX_EVENT_BYTES = 16 << 20  # an event still unfinished past this size breaks the stream
_MAX_TAP_LINE = 64 << 10  # message events are small: a longer unfinished line is not one
_TEXT = -1  # MessagesFromChatStream._open for a text block (tool calls are keyed by index >= 0)
_encode = msgspec.json.Encoder().encode

# --- what is read (gc=False: none forms cycles, and a stream decodes one per token) --------------


class _Counts(Struct, gc=False):
    """An Anthropic event's token counts; as a tally, the latest of each kind a stream reported
    (``message_start`` has the input, ``message_delta`` the cumulative output, and may repeat or
    update the rest)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None

    def add(self, counts: _Counts | None) -> Usage:
        """Take the counts ``counts`` has; the usage the tally adds up to."""
        for name in _COUNTS_READ if counts is not None else ():
            value = getattr(counts, name)
            if value is not None:
                setattr(self, name, value)
        return usage_of_anthropic(
            self.input_tokens or 0,
            self.output_tokens or 0,
            self.cache_read_input_tokens or 0,
            self.cache_creation_input_tokens or 0,
        )


_COUNTS_READ = _Counts.__struct_fields__


class _Start(Struct, gc=False):
    usage: _Counts | None = None


class _Block(Struct, gc=False):
    type: str = ""
    id: str | None = None
    name: str | None = None
    text: str | None = None
    input: Raw | UnsetType = UNSET


class _Change(Struct, gc=False):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None


class _Failure(Struct, gc=False):
    message: str | None = None
    type: str | None = None
    code: str | int | None = None


class _Event(Struct, gc=False):
    """An Anthropic event: what all kinds of it carry that is read here."""

    type: str = ""
    index: int = 0
    message: _Start | None = None
    content_block: _Block | None = None
    delta: _Change | None = None
    usage: _Counts | None = None
    error: _Failure | None = None


class _Function(Struct, gc=False):
    name: str | None = None
    arguments: str | None = None


class _CallPiece(Struct, gc=False):
    index: int | None = None
    id: str | None = None
    function: _Function | None = None


class _Delta(Struct, gc=False):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[_CallPiece] | None = None


class _Choice(Struct, gc=False):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # vLLM: the stop string (or token id) that matched


class _Chunk(Struct, gc=False):
    """An OpenAI chunk: what is read here."""

    choices: list[_Choice] | None = None
    usage: Usage | None = None
    error: _Failure | str | None = None


_decode_event = msgspec.json.Decoder(_Event).decode
_decode_chunk = msgspec.json.Decoder(_Chunk).decode


# --- the frame both translations share -----------------------------------------------------------


class _Translation:
    """Cuts the backend's bytes into whole events, hands each to ``_event`` and keeps the end
    state; ``_ended`` says what the end of the backend's stream adds."""

    __slots__ = ("_tail", "_waiting", "broken", "complete", "errored", "usage")

    def __init__(self) -> None:
        self._tail: list[bytes] = []  # what came after the last whole event, in pieces
        self._waiting = 0  # its size
        self.usage: Usage | None = None
        self.complete = self.errored = self.broken = False

    def feed(self, chunk: bytes) -> bytes:
        """What to send the client for ``chunk`` of the backend's stream."""
        if self.complete or self.errored or self.broken:
            return b""
        if not self._tail and chunk[-2:] == b"\n\n" and chunk.count(b"\n\n") == 1 and b"\r" not in chunk:
            # What backends send nearly always: one whole event per chunk.
            out: list[bytes] = []
            self._event(chunk[:-2], out)
            return out[0] if len(out) == 1 else b"".join(out)
        if self._tail and b"\n" not in chunk and b"\r" not in chunk:
            # It ends no line, so no event: a long event waits in pieces, not copied every time.
            self._tail.append(chunk)
            self._waiting += len(chunk)
            self.broken = self._waiting > MAX_EVENT_BYTES
            return b""
        data = b"".join((*self._tail, chunk)) if self._tail else chunk
        if b"\r" in data:
            # A CR last may be the first half of a CRLF: it waits, as a CR, for what follows.
            held = data[-1:] == b"\r"
            data = (data[:-1] if held else data).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            data += b"\r" if held else b""
        cut = data.rfind(b"\n\n")
        rest = data[cut + 2 :] if cut >= 0 else data
        self._tail = [rest] if rest else []
        self._waiting = len(rest)
        if cut < 0:
            self.broken = len(data) > MAX_EVENT_BYTES
            return b""
        out = []
        for event in data[:cut].split(b"\n\n"):
            self._event(event, out)
            if self.complete or self.errored or self.broken:
                break
        return b"".join(out)

    def finish(self) -> bytes:
        """What is left to send once the backend's stream has ended; ``broken`` tells, from
        then on, that it ended before its end and the proxy has to end it with an error event."""
        out: list[bytes] = []
        if not (self.complete or self.errored or self.broken):
            tail, self._tail = b"".join(self._tail), []
            self._event(tail, out)
            if not (self.complete or self.errored or self.broken):
                self._ended(out)
        self.broken = not (self.complete or self.errored)
        return b"".join(out)

    def _event(self, event: bytes, out: list[bytes]) -> None:
        raise NotImplementedError

    def _ended(self, out: list[bytes]) -> None:
        """The backend's stream ended, neither complete nor failed."""


def _fields(event: bytes) -> tuple[bytes, bytes | None]:
    """An event's name and data (several data lines joined by a newline; None without one)."""
    if event[:5] == b"data:" and b"\n" not in event:  # OpenAI's events: one data line
        return b"", event[6:] if event[5:6] == b" " else event[5:]
    if event[:6] == b"event:" and event.count(b"\n") == 1:  # Anthropic's: a name, one data line
        cut = event.index(b"\n")
        if event[cut + 1 : cut + 6] == b"data:":
            skip = 7 if event[cut + 6 : cut + 7] == b" " else 6
            return event[6:cut].strip(), event[cut + skip :]
    name = b""
    data: bytes | None = None
    for line in event.split(b"\n"):
        if line[:5] == b"data:":
            value = line[6:] if line[5:6] == b" " else line[5:]
            data = value if data is None else data + b"\n" + value
        elif line[:6] == b"event:":
            name = line[6:].strip()
    return name, data


# --- OpenAI chunks to Anthropic events -----------------------------------------------------------


def _sse(kind: bytes, rest: bytes) -> bytes:
    return b'event: %b\ndata: {"type":"%b"%b}\n\n' % (kind, kind, rest)


_PING = _sse(b"ping", b"")
_MESSAGE_START = _sse(
    b"message_start",
    b',"message":{"id":%b,"type":"message","role":"assistant","model":%b,"content":[],'
    b'"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":%d,'
    b'"cache_creation_input_tokens":0,"cache_read_input_tokens":%d,"output_tokens":0}}',
)
_TEXT_START = _sse(b"content_block_start", b',"index":%d,"content_block":{"type":"text","text":""}')
_TEXT_DELTA = _sse(b"content_block_delta", b',"index":%d,"delta":{"type":"text_delta","text":%b}')
_TOOL_START = _sse(
    b"content_block_start", b',"index":%d,"content_block":{"type":"tool_use","id":%b,"name":%b,"input":{}}'
)
_JSON_DELTA = _sse(
    b"content_block_delta", b',"index":%d,"delta":{"type":"input_json_delta","partial_json":%b}'
)
_BLOCK_STOP = _sse(b"content_block_stop", b',"index":%d')
_MESSAGE_END = _sse(b"message_delta", b',"delta":{"stop_reason":%b,"stop_sequence":%b},"usage":%b') + _sse(
    b"message_stop", b""
)
_COUNTS = (
    b'{"input_tokens":%d,"cache_creation_input_tokens":0,"cache_read_input_tokens":%d,"output_tokens":%d}'
)
_ERROR = _sse(b"error", b',"error":{"type":%b,"message":%b}')

_ANTHROPIC_KINDS = frozenset(ANTHROPIC_ERROR_TYPES.values())
# OpenAI error types and codes (tiermux's own among them) that have an Anthropic counterpart.
_KIND_OF_OPENAI = {
    "server_error": "api_error",
    "insufficient_quota": "billing_error",
    "rate_limit_exceeded": "rate_limit_error",
    "invalid_api_key": "authentication_error",
    "model_not_found": "not_found_error",
    "upstream_timeout": "timeout_error",
    "service_unavailable": "overloaded_error",
}
_TOOL_FINISHES = ("stop", "tool_calls", "function_call")


def _anthropic_kind(failure: _Failure | str | None) -> str:
    if not isinstance(failure, _Failure):
        return "api_error"
    if isinstance(failure.code, int):  # vLLM puts the HTTP status there
        return anthropic_error_type(failure.code) if 400 <= failure.code < 600 else "api_error"
    for name in (failure.code, failure.type):
        if name in _ANTHROPIC_KINDS or name in _KIND_OF_OPENAI:
            return _KIND_OF_OPENAI.get(name or "", name or "")
    return "api_error"


class _Call:
    """One OpenAI tool call on its way to being a ``tool_use`` block (opened once named)."""

    __slots__ = ("block", "id", "name", "pending")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.pending: list[str] = []  # argument pieces that came before the name
        self.block = -1  # its block index, once opened


class MessagesFromChatStream(_Translation):
    """An OpenAI-compatible backend's chat completion stream, as Anthropic Messages events.

    ``message_start`` and ``ping`` go out with the first chunk; text and each tool call get their
    own content block, in order, each closed before the next opens; ``message_delta`` (stop
    reason, usage) and ``message_stop`` wait for ``[DONE]`` or the end of the stream, for the
    usage chunk that follows the finish reason. A backend that says ``stop`` after calling tools
    has it said as ``tool_use``, which is what an Anthropic client acts on; a backend's error
    event becomes an Anthropic ``error`` event, the last.
    """

    __slots__ = (
        "_blocks", "_calls", "_finish", "_last_call", "_message_id", "_model", "_open", "_refused",
        "_sequence", "_started",
    )  # fmt: skip

    def __init__(self, model: str, message_id: str | None = None) -> None:
        super().__init__()
        self._model = _encode(model)
        self._message_id = _encode(message_id or "msg_" + secrets.token_hex(12))
        self._started = self._refused = False
        self._blocks = 0  # blocks opened so far: the open one is the last
        self._open: int | None = None  # _TEXT, the key of a tool call, or None
        self._calls: dict[int, _Call] = {}
        self._last_call: int | None = None
        self._finish: str | None = None
        self._sequence: str | None = None

    def error_event(self, status: int, message: str) -> bytes:
        """An Anthropic ``error`` event, for the proxy to end a broken stream with."""
        return _ERROR % (_encode(anthropic_error_type(status)), _encode(message))

    def _event(self, event: bytes, out: list[bytes]) -> None:
        name, data = _fields(event)
        if data is None:
            return  # a comment, a keep-alive, or nothing
        if data[:6] == b"[DONE]":
            self._ended(out)
            return
        try:
            chunk = _decode_chunk(data)
        except msgspec.DecodeError:  # ValidationError is one too
            if name != b"error":
                self.broken = True
                return
            chunk = _Chunk(error=data.decode(errors="replace"))
        if chunk.error is not None or name == b"error":
            out.append(_ERROR % (_encode(_anthropic_kind(chunk.error)), _encode(_message(chunk.error))))
            self.errored = True
            return
        usage = chunk.usage
        if not self._started:
            cached = 0 if usage is None else usage.cached_tokens
            prompt = 0 if usage is None else usage.prompt_tokens - cached
            out.append(_MESSAGE_START % (self._message_id, self._model, prompt, cached) + _PING)
            self._started = True
        if usage is not None:
            self.usage = usage
        for choice in chunk.choices or ():
            if choice.index == 0 and self._finish is None:
                self._choice(choice, out)

    def _choice(self, choice: _Choice, out: list[bytes]) -> None:
        delta = choice.delta
        if delta is not None:
            if delta.content:
                self._text(delta.content, out)
            if delta.refusal:
                self._refused = True
                self._text(delta.refusal, out)
            for piece in delta.tool_calls or ():
                self._call(piece, out)
        if choice.finish_reason:  # some servers send "" until the end
            self._finish = choice.finish_reason
            if isinstance(choice.stop_reason, str):
                self._sequence = choice.stop_reason
            self._close(out)
            if any(call.block < 0 for call in self._calls.values()):
                self.broken = True  # a tool call that never got a name

    def _text(self, text: str, out: list[bytes]) -> None:
        if self._open != _TEXT:
            self._close(out)
            out.append(_TEXT_START % self._blocks)
            self._blocks += 1
            self._open = _TEXT
        out.append(_TEXT_DELTA % (self._blocks - 1, _encode(text)))

    def _call(self, piece: _CallPiece, out: list[bytes]) -> None:
        key = piece.index
        if key is None:  # servers that leave it out send each call whole: a new id, a new call
            last = self._last_call
            new = last is None or (piece.id is not None and piece.id != self._calls[last].id)
            key = len(self._calls) if new or last is None else last
        elif key < 0:
            self.broken = True
            return
        self._last_call = key
        function = piece.function
        arguments = function.arguments if function is not None else None
        if key == self._open:
            if arguments:
                out.append(_JSON_DELTA % (self._blocks - 1, _encode(arguments)))
            return
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = _Call()
        elif call.block >= 0:  # closed when another block opened: a piece can't go back in
            self.broken = self.broken or bool(arguments)
            return
        if piece.id and call.id is None:
            call.id = piece.id
        if function is not None and function.name and call.name is None:
            call.name = function.name
        if arguments:
            call.pending.append(arguments)
        if call.name is None:
            return
        self._close(out)
        call.block, self._open = self._blocks, key
        self._blocks += 1
        call_id = call.id or "toolu_" + secrets.token_hex(12)
        out.append(_TOOL_START % (call.block, _encode(call_id), _encode(call.name)))
        if call.pending:
            out.append(_JSON_DELTA % (call.block, _encode("".join(call.pending))))

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(_BLOCK_STOP % (self._blocks - 1))
            self._open = None

    def _ended(self, out: list[bytes]) -> None:
        """The message's end, once its finish reason was seen; else the stream is broken."""
        finish = self._finish
        if finish is None:
            self.broken = True
            return
        sequence: str | None = None
        if self._calls and finish in _TOOL_FINISHES:
            reason = "tool_use"
        elif finish == "stop" and self._sequence is not None:
            reason, sequence = "stop_sequence", self._sequence
        elif finish == "stop" and self._refused:
            reason = "refusal"
        else:
            reason = STOP_REASON_OF_FINISH.get(finish, "end_turn")
        usage = self.usage
        counts = b'{"output_tokens":0}'
        if usage is not None:
            cached = usage.cached_tokens
            counts = _COUNTS % (usage.prompt_tokens - cached, cached, usage.completion_tokens)
        out.append(_MESSAGE_END % (_encode(reason), _encode(sequence), counts))
        self.complete = True


def _message(failure: _Failure | str | None) -> str:
    text = failure.message if isinstance(failure, _Failure) else failure
    return text or "the backend failed"


# --- Anthropic events to OpenAI chunks -----------------------------------------------------------

_STATUS_OF_KIND = {kind: status for status, kind in ANTHROPIC_ERROR_TYPES.items()}
_USAGE = (
    b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,'
    b'"prompt_tokens_details":{"cached_tokens":%d}}'
)


class ChatFromMessagesStream(_Translation):
    """An Anthropic backend's Messages events, as OpenAI ``chat.completion.chunk`` events.

    ``message_start`` gives the role chunk, text deltas content chunks, each ``tool_use`` block a
    tool call (its index counting tool blocks only) whose arguments follow piece by piece,
    ``message_delta`` the finish chunk, and ``message_stop`` the usage-only chunk (with
    ``include_usage``) and ``[DONE]``. A tool call whose block brought no input pieces gets its
    start input as arguments (``{}`` for none), which an OpenAI client can parse. An ``error``
    event becomes OpenAI's in-band error (its ``code`` the Anthropic type), the last event.
    """

    __slots__ = ("_finished", "_head", "_started", "_tally", "_tools", "_trail", "_unsent", "include_usage")

    def __init__(
        self, model: str, include_usage: bool, completion_id: str | None = None, created: int | None = None
    ) -> None:
        super().__init__()
        self.include_usage = include_usage
        self._head = (
            b'data: {"id":%b,"object":"chat.completion.chunk","created":%d,"model":%b,"choices":['
            % (
                _encode(completion_id or "chatcmpl-" + secrets.token_hex(12)),
                int(time.time()) if created is None else created,
                _encode(model),
            )
        )
        self._trail = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
        self._started = self._finished = False
        self._tools: dict[int, int] = {}  # block index -> tool call index
        self._unsent: dict[int, bytes] = {}  # block index -> input of its start, until a piece comes
        self._tally = _Counts()

    def error_event(self, status: int, message: str) -> bytes:
        """OpenAI's in-band error event, for the proxy to end a broken stream with."""
        error = {"message": message, "type": openai_error_type(status), "param": None, "code": None}
        return b"data: " + _encode({"error": error}) + b"\n\n"

    def _event(self, event: bytes, out: list[bytes]) -> None:
        name, data = _fields(event)
        if data is None:
            return
        try:
            parsed = _decode_event(data)
        except msgspec.DecodeError:
            if name != b"error":
                self.broken = True
                return
            parsed = _Event("error", error=_Failure(data.decode(errors="replace")))
        kind = parsed.type
        if kind == "content_block_delta":  # first: nearly every event is one
            delta = parsed.delta
            if delta is None:
                pass
            elif delta.type == "text_delta" and delta.text:
                out.append(self._chunk(b'{"content":%b}' % _encode(delta.text)))
            elif delta.type == "input_json_delta" and delta.partial_json and parsed.index in self._tools:
                self._unsent.pop(parsed.index, b"")
                out.append(self._arguments(self._tools[parsed.index], _encode(delta.partial_json)))
        elif kind == "content_block_start":
            self._start(out)
            block = parsed.content_block or _Block()
            if block.type == "text" and block.text:
                out.append(self._chunk(b'{"content":%b}' % _encode(block.text)))
            elif block.type == "tool_use":
                call = self._tools[parsed.index] = len(self._tools)
                opening = b'{"index":%d,"id":%b,"type":"function","function":{"name":%b,"arguments":""}}'
                ids = (call, _encode(block.id or ""), _encode(block.name or ""))
                out.append(self._chunk(b'{"tool_calls":[%b]}' % (opening % ids)))
                given = bytes(block.input).strip() if isinstance(block.input, Raw) else b""
                self._unsent[parsed.index] = given or b"{}"
        elif kind == "content_block_stop":
            unsent = self._unsent.pop(parsed.index, None)
            if unsent is not None:
                out.append(self._arguments(self._tools[parsed.index], _encode(unsent.decode())))
        elif kind == "message_start":
            self._start(out)
            self.usage = self._tally.add(parsed.message.usage if parsed.message is not None else None)
        elif kind == "message_delta":
            self.usage = self._tally.add(parsed.usage)
            reason = parsed.delta.stop_reason if parsed.delta is not None else None
            self._finish(FINISH_REASON_OF_STOP.get(reason or "", "stop"), out)
        elif kind == "message_stop":
            self._finish("stop", out)
            if self.include_usage:
                out.append(self._head + b'],"usage":' + self._usage() + b"}\n\n")
            out.append(b"data: [DONE]\n\n")
            self.complete = True
        elif kind == "error" or name == b"error":
            problem = parsed.error or _Failure()
            anthropic = problem.type or "api_error"
            kind = openai_error_type(_STATUS_OF_KIND.get(anthropic, 500))
            error = {"message": problem.message or "the backend failed", "type": kind, "param": None}
            out.append(b"data: " + _encode({"error": {**error, "code": anthropic}}) + b"\n\n")
            self.errored = True
        # ping, and event types added to the API later: nothing to say

    def _chunk(self, delta: bytes, finish: bytes = b"null") -> bytes:
        choice = b'{"index":0,"delta":%b,"logprobs":null,"finish_reason":%b}' % (delta, finish)
        return self._head + choice + self._trail

    def _arguments(self, call: int, piece: bytes) -> bytes:
        return self._chunk(b'{"tool_calls":[{"index":%d,"function":{"arguments":%b}}]}' % (call, piece))

    def _start(self, out: list[bytes]) -> None:
        if not self._started:
            out.append(self._chunk(b'{"role":"assistant","content":""}'))
            self._started = True

    def _finish(self, reason: str, out: list[bytes]) -> None:
        if not self._finished:
            self._start(out)
            out.append(self._chunk(b"{}", _encode(reason)))
            self._finished = True

    def _usage(self) -> bytes:
        usage = self.usage
        if usage is None:
            return b"null"
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        return _USAGE % (prompt, completion, prompt + completion, usage.cached_tokens)


class MessagesUsageTap:
    """Reads the usage of an Anthropic stream relayed unchanged.

    Only ``message_start`` and ``message_delta`` carry usage, two events per stream, so a chunk
    is searched for their names (a name in quotes can't occur inside a JSON string, where quotes
    are escaped) and decoded only when one is there. Lines are read whole, a partial last line
    waiting for the next chunk; Anthropic writes an event's data on one line, ended by LF or CRLF.
    """

    __slots__ = ("_tail", "_tally", "usage")

    broken = False  # what passes is relayed as it came: a backend's stream is the client's

    def __init__(self) -> None:
        self._tail = b""
        self._tally = _Counts()
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> bytes:
        """Reads ``chunk``; returns it, unchanged."""
        data = self._tail + chunk if self._tail else chunk
        end = data.rfind(b"\n") + 1
        self._tail = data[end:] if 0 < len(data) - end <= _MAX_TAP_LINE else b""
        if end and data.find(b'"message_', 0, end) >= 0:
            self._read(data[:end])
        return chunk

    def finish(self) -> bytes:
        """Reads what was left unfinished; returns nothing (everything was relayed)."""
        tail, self._tail = self._tail, b""
        if b'"message_' in tail:
            self._read(tail)
        return b""

    def _read(self, lines: bytes) -> None:
        for line in lines.split(b"\n"):
            if line[:5] == b"data:" and (b'"message_start"' in line or b'"message_delta"' in line):
                try:
                    event = _decode_event(line[5:])
                except msgspec.DecodeError:
                    continue
                if event.type == "message_start" and event.message is not None:
                    self.usage = self._tally.add(event.message.usage)
                elif event.type == "message_delta":
                    self.usage = self._tally.add(event.usage)
