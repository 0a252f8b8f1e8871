# cython: language_level=3
"""Compiled twin of ``tiermux._pure.sse``: the stream translators between the two dialects.

They run once per event of every translated stream, so the framing (finding whole events, their
name and data) is done on C pointers, the per-event steps are C calls on typed state, and the
events that recur (a text delta) are written with one allocation from bytes prepared when their
block opened. The JSON is still decoded by msgspec, with the very Structs of the pure twin, and
the rare paths keep its code: outputs, end states and exceptions are the pure twin's.
"""

import secrets
import time

import msgspec
from msgspec import Raw

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy

from tiermux.dialects.common import (
    FINISH_REASON_OF_STOP,
    STOP_REASON_OF_FINISH,
    anthropic_error_type,
    openai_error_type,
)
from tiermux._pure.sse import (
    _BLOCK_STOP,
    _COUNTS,
    _ERROR,
    _JSON_DELTA,
    _MAX_TAP_LINE,
    _MESSAGE_END,
    _MESSAGE_START,
    _PING,
    _STATUS_OF_KIND,
    _TEXT_START,
    _TOOL_FINISHES,
    _TOOL_START,
    _USAGE,
    MAX_EVENT_BYTES,
    _anthropic_kind,
    _Block,
    _Chunk,
    _Counts,
    _decode_chunk,
    _decode_event,
    _encode,
    _Event,
    _Failure,
    _message,
)

__all__ = ["MAX_EVENT_BYTES", "ChatFromMessagesStream", "MessagesFromChatStream", "MessagesUsageTap"]

cdef Py_ssize_t _MAX_EVENT = MAX_EVENT_BYTES
cdef Py_ssize_t _MAX_LINE = _MAX_TAP_LINE
cdef object _DecodeError = msgspec.DecodeError
cdef object _TEXT = -1  # MessagesFromChatStream._open for a text block (tool calls are keyed by index >= 0)

# A text delta is the bytes prepared when its block opened, the encoded text, and this.
cdef bytes _TEXT_DELTA_HEAD = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"text_delta","text":'
)
cdef bytes _TEXT_DELTA_END = b"}}\n\n"
cdef bytes _CONTENT_HEAD = b'{"index":0,"delta":{"content":'
cdef bytes _CONTENT_END = b'},"logprobs":null,"finish_reason":null}'


cdef bytes _join3(bytes a, bytes b, bytes c):
    """``a + b + c`` with one allocation."""
    cdef Py_ssize_t na = len(a), nb = len(b), nc = len(c)
    cdef object result = PyBytes_FromStringAndSize(NULL, na + nb + nc)
    cdef char* p = PyBytes_AS_STRING(result)
    memcpy(p, PyBytes_AS_STRING(a), na)
    memcpy(p + na, PyBytes_AS_STRING(b), nb)
    memcpy(p + na + nb, PyBytes_AS_STRING(c), nc)
    return <bytes>result


cdef inline bint _is_space(unsigned char c) noexcept nogil:
    # What bytes.strip() takes off.
    return c == 32 or (9 <= c <= 13)


cdef inline bint _named_error(const unsigned char* p, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    """Whether ``p[start:end].strip() == b"error"``."""
    while start < end and _is_space(p[start]):
        start += 1
    while end > start and _is_space(p[end - 1]):
        end -= 1
    return (
        end - start == 5 and p[start] == 101 and p[start + 1] == 114 and p[start + 2] == 114
        and p[start + 3] == 111 and p[start + 4] == 114
    )


cdef inline bint _starts(const unsigned char* p, Py_ssize_t n, Py_ssize_t at, const char* prefix, Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t i
    if at + k > n:
        return False
    for i in range(k):
        if p[at + i] != <unsigned char>prefix[i]:
            return False
    return True


cdef object _data(bytes event, bint* named_error):
    """An event's data (several data lines joined by a newline; None without one); sets
    ``named_error`` to whether its name is ``error``."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(event)
    cdef Py_ssize_t n = len(event), i, cut = -1, lines = 0
    for i in range(n):
        if p[i] == 10:
            lines += 1
            if cut < 0:
                cut = i
    named_error[0] = False
    if lines == 0 and _starts(p, n, 0, b"data:", 5):  # OpenAI's events: one data line
        i = 6 if n > 5 and p[5] == 32 else 5
        return PyBytes_FromStringAndSize(<const char*>p + i, n - i)
    if lines == 1 and _starts(p, n, 0, b"event:", 6) and _starts(p, n, cut + 1, b"data:", 5):
        # Anthropic's: a name, one data line
        named_error[0] = _named_error(p, 6, cut)
        i = cut + 7 if cut + 6 < n and p[cut + 6] == 32 else cut + 6
        return PyBytes_FromStringAndSize(<const char*>p + i, n - i)
    name = b""
    data = None
    for line in event.split(b"\n"):
        if line[:5] == b"data:":
            value = line[6:] if line[5:6] == b" " else line[5:]
            data = value if data is None else data + b"\n" + value
        elif line[:6] == b"event:":
            name = line[6:].strip()
    named_error[0] = name == b"error"
    return data


cdef bint _one_whole_event(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Whether a chunk is one whole event, LF-ended, and nothing more (what backends nearly always
    send)."""
    cdef Py_ssize_t i
    if n < 2 or p[n - 1] != 10 or p[n - 2] != 10:
        return False
    for i in range(n - 2):
        if p[i] == 13 or (p[i] == 10 and p[i + 1] == 10):
            return False
    return True


# --- the frame both translations share -----------------------------------------------------------


cdef class _Translation:
    """Cuts the backend's bytes into whole events, hands each to ``_event`` and keeps the end
    state; ``_ended`` says what the end of the backend's stream adds."""

    cdef list _tail  # what came after the last whole event, in pieces
    cdef Py_ssize_t _waiting  # its size
    cdef public object usage
    cdef public bint complete, errored, broken

    def __init__(self):
        self._tail = []
        self._waiting = 0
        self.usage = None
        self.complete = self.errored = self.broken = False

    def feed(self, chunk):
        """What to send the client for ``chunk`` of the backend's stream."""
        cdef list out
        cdef bytes data, rest, event
        cdef Py_ssize_t cut, n
        cdef bint held
        if self.complete or self.errored or self.broken:
            return b""
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        n = len(<bytes>chunk)
        if not self._tail and _one_whole_event(<const unsigned char*>PyBytes_AS_STRING(chunk), n):
            out = []
            self._event(PyBytes_FromStringAndSize(PyBytes_AS_STRING(chunk), n - 2), out)
            if len(out) == 1:
                return out[0]
            return b"".join(out)
        if self._tail and b"\n" not in chunk and b"\r" not in chunk:
            # It ends no line, so no event: a long event waits in pieces, not copied every time.
            self._tail.append(chunk)
            self._waiting += n
            self.broken = self._waiting > _MAX_EVENT
            return b""
        if self._tail:
            self._tail.append(chunk)
            data = b"".join(self._tail)
        else:
            data = chunk
        if b"\r" in data:
            # A CR last may be the first half of a CRLF: it waits, as a CR, for what follows.
            held = data[-1:] == b"\r"
            data = (data[:-1] if held else data).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                data += b"\r"
        cut = data.rfind(b"\n\n")
        rest = data[cut + 2 :] if cut >= 0 else data
        self._tail = [rest] if rest else []
        self._waiting = len(rest)
        if cut < 0:
            self.broken = len(data) > _MAX_EVENT
            return b""
        out = []
        for event in data[:cut].split(b"\n\n"):
            self._event(event, out)
            if self.complete or self.errored or self.broken:
                break
        return b"".join(out)

    def finish(self):
        """What is left to send once the backend's stream has ended; ``broken`` tells, from
        then on, that it ended before its end and the proxy has to end it with an error event."""
        cdef list out = []
        cdef bytes tail
        if not (self.complete or self.errored or self.broken):
            tail = b"".join(self._tail)
            self._tail = []
            self._event(tail, out)
            if not (self.complete or self.errored or self.broken):
                self._ended(out)
        self.broken = not (self.complete or self.errored)
        return b"".join(out)

    cdef int _event(self, bytes event, list out) except -1:
        raise NotImplementedError

    cdef int _ended(self, list out) except -1:
        """The backend's stream ended, neither complete nor failed."""
        return 0


# --- OpenAI chunks to Anthropic events -----------------------------------------------------------


cdef class _Call:
    """One OpenAI tool call on its way to being a ``tool_use`` block (opened once named)."""

    cdef object id, name
    cdef list pending  # argument pieces that came before the name
    cdef Py_ssize_t block  # its block index, once opened

    def __init__(self):
        self.id = self.name = None
        self.pending = []
        self.block = -1


cdef class MessagesFromChatStream(_Translation):
    """An OpenAI-compatible backend's chat completion stream, as Anthropic Messages events.

    ``message_start`` and ``ping`` go out with the first chunk; text and each tool call get their
    own content block, in order, each closed before the next opens; ``message_delta`` (stop
    reason, usage) and ``message_stop`` wait for ``[DONE]`` or the end of the stream, for the
    usage chunk that follows the finish reason. A backend that says ``stop`` after calling tools
    has it said as ``tool_use``, which is what an Anthropic client acts on; a backend's error
    event becomes an Anthropic ``error`` event, the last.
    """

    cdef bytes _model, _message_id
    cdef bint _started, _refused
    cdef Py_ssize_t _blocks  # blocks opened so far: the open one is the last
    cdef object _open  # _TEXT, the key of a tool call, or None
    cdef dict _calls
    cdef object _last_call, _finish, _sequence
    cdef bytes _text_head  # a text delta's start, for the open text block

    def __init__(self, model, message_id=None):
        _Translation.__init__(self)
        self._model = _encode(model)
        self._message_id = _encode(message_id or "msg_" + secrets.token_hex(12))
        self._started = self._refused = False
        self._blocks = 0
        self._open = None
        self._calls = {}
        self._last_call = None
        self._finish = None
        self._sequence = None
        self._text_head = b""

    def error_event(self, status, message):
        """An Anthropic ``error`` event, for the proxy to end a broken stream with."""
        return _ERROR % (_encode(anthropic_error_type(status)), _encode(message))

    cdef int _event(self, bytes event, list out) except -1:
        cdef bint named_error
        data = _data(event, &named_error)
        if data is None:
            return 0  # a comment, a keep-alive, or nothing
        if (<bytes>data)[:6] == b"[DONE]":
            self._ended(out)
            return 0
        try:
            chunk = _decode_chunk(data)
        except _DecodeError:  # ValidationError is one too
            if not named_error:
                self.broken = True
                return 0
            chunk = _Chunk(error=(<bytes>data).decode(errors="replace"))
        error = chunk.error
        if error is not None or named_error:
            out.append(_ERROR % (_encode(_anthropic_kind(error)), _encode(_message(error))))
            self.errored = True
            return 0
        usage = chunk.usage
        if not self._started:
            cached = 0 if usage is None else usage.cached_tokens
            prompt = 0 if usage is None else usage.prompt_tokens - cached
            out.append(_MESSAGE_START % (self._message_id, self._model, prompt, cached) + _PING)
            self._started = True
        if usage is not None:
            self.usage = usage
        choices = chunk.choices
        if choices:
            for choice in choices:
                if choice.index == 0 and self._finish is None:
                    self._choice(choice, out)
        return 0

    cdef int _choice(self, choice, list out) except -1:
        delta = choice.delta
        if delta is not None:
            text = delta.content
            if text:
                self._text(text, out)
            text = delta.refusal
            if text:
                self._refused = True
                self._text(text, out)
            pieces = delta.tool_calls
            if pieces:
                for piece in pieces:
                    self._call(piece, out)
        finish = choice.finish_reason
        if finish:  # some servers send "" until the end
            self._finish = finish
            if isinstance(choice.stop_reason, str):
                self._sequence = choice.stop_reason
            self._close(out)
            for call in self._calls.values():
                if (<_Call>call).block < 0:
                    self.broken = True  # a tool call that never got a name
                    break
        return 0

    cdef int _text(self, text, list out) except -1:
        if self._open is not _TEXT:
            self._close(out)
            out.append(_TEXT_START % self._blocks)
            self._text_head = _TEXT_DELTA_HEAD % self._blocks
            self._blocks += 1
            self._open = _TEXT
        out.append(_join3(self._text_head, _encode(text), _TEXT_DELTA_END))
        return 0

    cdef int _call(self, piece, list out) except -1:
        cdef _Call call
        key = piece.index
        if key is None:  # servers that leave it out send each call whole: a new id, a new call
            last = self._last_call
            new = last is None or (piece.id is not None and piece.id != (<_Call>self._calls[last]).id)
            key = len(self._calls) if new or last is None else last
        elif key < 0:
            self.broken = True
            return 0
        self._last_call = key
        function = piece.function
        arguments = function.arguments if function is not None else None
        if key == self._open:
            if arguments:
                out.append(_JSON_DELTA % (self._blocks - 1, _encode(arguments)))
            return 0
        found = self._calls.get(key)
        if found is None:
            call = _Call()
            self._calls[key] = call
        else:
            call = <_Call>found
            if call.block >= 0:  # closed when another block opened: a piece can't go back in
                self.broken = self.broken or bool(arguments)
                return 0
        if piece.id and call.id is None:
            call.id = piece.id
        if function is not None and function.name and call.name is None:
            call.name = function.name
        if arguments:
            call.pending.append(arguments)
        if call.name is None:
            return 0
        self._close(out)
        call.block = self._blocks
        self._open = key
        self._blocks += 1
        call_id = call.id or "toolu_" + secrets.token_hex(12)
        out.append(_TOOL_START % (call.block, _encode(call_id), _encode(call.name)))
        if call.pending:
            out.append(_JSON_DELTA % (call.block, _encode("".join(call.pending))))
        return 0

    cdef int _close(self, list out) except -1:
        if self._open is not None:
            out.append(_BLOCK_STOP % (self._blocks - 1))
            self._open = None
        return 0

    cdef int _ended(self, list out) except -1:
        """The message's end, once its finish reason was seen; else the stream is broken."""
        finish = self._finish
        if finish is None:
            self.broken = True
            return 0
        sequence = None
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
        return 0


# --- Anthropic events to OpenAI chunks -----------------------------------------------------------


cdef class ChatFromMessagesStream(_Translation):
    """An Anthropic backend's Messages events, as OpenAI ``chat.completion.chunk`` events.

    ``message_start`` gives the role chunk, text deltas content chunks, each ``tool_use`` block a
    tool call (its index counting tool blocks only) whose arguments follow piece by piece,
    ``message_delta`` the finish chunk, and ``message_stop`` the usage-only chunk (with
    ``include_usage``) and ``[DONE]``. A tool call whose block brought no input pieces gets its
    start input as arguments (``{}`` for none), which an OpenAI client can parse. An ``error``
    event becomes OpenAI's in-band error (its ``code`` the Anthropic type), the last event.
    """

    cdef public object include_usage
    cdef bytes _head, _trail
    cdef bytes _content_head, _content_end  # a content chunk around its encoded text
    cdef bint _started, _finished
    cdef dict _tools  # block index -> tool call index
    cdef dict _unsent  # block index -> input of its start, until a piece comes
    cdef object _tally

    def __init__(self, model, include_usage, completion_id=None, created=None):
        _Translation.__init__(self)
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
        self._content_head = self._head + _CONTENT_HEAD
        self._content_end = _CONTENT_END + self._trail
        self._started = self._finished = False
        self._tools = {}
        self._unsent = {}
        self._tally = _Counts()

    def error_event(self, status, message):
        """OpenAI's in-band error event, for the proxy to end a broken stream with."""
        error = {"message": message, "type": openai_error_type(status), "param": None, "code": None}
        return b"data: " + _encode({"error": error}) + b"\n\n"

    cdef int _event(self, bytes event, list out) except -1:
        cdef bint named_error
        data = _data(event, &named_error)
        if data is None:
            return 0
        try:
            parsed = _decode_event(data)
        except _DecodeError:
            if not named_error:
                self.broken = True
                return 0
            parsed = _Event("error", error=_Failure((<bytes>data).decode(errors="replace")))
        kind = parsed.type
        if kind == "content_block_delta":  # first: nearly every event is one
            delta = parsed.delta
            if delta is None:
                pass
            else:
                change = delta.type
                if change == "text_delta":
                    text = delta.text
                    if text:
                        out.append(_join3(self._content_head, _encode(text), self._content_end))
                elif change == "input_json_delta" and delta.partial_json and parsed.index in self._tools:
                    self._unsent.pop(parsed.index, b"")
                    out.append(self._arguments(self._tools[parsed.index], _encode(delta.partial_json)))
        elif kind == "content_block_start":
            self._start(out)
            block = parsed.content_block or _Block()
            if block.type == "text" and block.text:
                out.append(self._chunk(b'{"content":%b}' % _encode(block.text)))
            elif block.type == "tool_use":
                call = len(self._tools)
                self._tools[parsed.index] = call
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
        elif kind == "error" or named_error:
            problem = parsed.error or _Failure()
            anthropic = problem.type or "api_error"
            kind = openai_error_type(_STATUS_OF_KIND.get(anthropic, 500))
            error = {"message": problem.message or "the backend failed", "type": kind, "param": None}
            out.append(b"data: " + _encode({"error": {**error, "code": anthropic}}) + b"\n\n")
            self.errored = True
        # ping, and event types added to the API later: nothing to say
        return 0

    cdef bytes _chunk(self, bytes delta, bytes finish=b"null"):
        choice = b'{"index":0,"delta":%b,"logprobs":null,"finish_reason":%b}' % (delta, finish)
        return self._head + choice + self._trail

    cdef bytes _arguments(self, call, bytes piece):
        return self._chunk(b'{"tool_calls":[{"index":%d,"function":{"arguments":%b}}]}' % (call, piece))

    cdef int _start(self, list out) except -1:
        if not self._started:
            out.append(self._chunk(b'{"role":"assistant","content":""}'))
            self._started = True
        return 0

    cdef int _finish(self, reason, list out) except -1:
        if not self._finished:
            self._start(out)
            out.append(self._chunk(b"{}", _encode(reason)))
            self._finished = True
        return 0

    cdef bytes _usage(self):
        usage = self.usage
        if usage is None:
            return b"null"
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        return _USAGE % (prompt, completion, prompt + completion, usage.cached_tokens)


cdef class MessagesUsageTap:
    """Reads the usage of an Anthropic stream relayed unchanged.

    Only ``message_start`` and ``message_delta`` carry usage, two events per stream, so a chunk
    is searched for their names (a name in quotes can't occur inside a JSON string, where quotes
    are escaped) and decoded only when one is there. Lines are read whole, a partial last line
    waiting for the next chunk; Anthropic writes an event's data on one line, ended by LF or CRLF.
    """

    cdef bytes _tail
    cdef object _tally
    cdef public object usage

    def __init__(self):
        self._tail = b""
        self._tally = _Counts()
        self.usage = None

    @property
    def broken(self):
        """Never: what passes is relayed as it came, a backend's stream is the client's."""
        return False

    def feed(self, chunk):
        """Reads ``chunk``; returns it, unchanged."""
        data = self._tail + chunk if self._tail else chunk
        end = data.rfind(b"\n") + 1
        self._tail = data[end:] if 0 < len(data) - end <= _MAX_LINE else b""
        if end and data.find(b'"message_', 0, end) >= 0:
            self._read(data[:end])
        return chunk

    def finish(self):
        """Reads what was left unfinished; returns nothing (everything was relayed)."""
        tail = self._tail
        self._tail = b""
        if b'"message_' in tail:
            self._read(tail)
        return b""

    cdef int _read(self, lines) except -1:
        for line in lines.split(b"\n"):
            if line[:5] == b"data:" and (b'"message_start"' in line or b'"message_delta"' in line):
                try:
                    event = _decode_event(line[5:])
                except _DecodeError:
                    continue
                if event.type == "message_start" and event.message is not None:
                    self.usage = self._tally.add(event.message.usage)
                elif event.type == "message_delta":
                    self.usage = self._tally.add(event.usage)
        return 0
