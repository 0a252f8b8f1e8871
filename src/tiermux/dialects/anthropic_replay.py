"""An Anthropic Messages answer in either form: a streamed answer (its server-sent events) assembled
into the Message JSON it adds up to, and a Message JSON replayed as the events a streaming client
expects.

The exact cache keeps one form of an answer and serves both, as :mod:`tiermux.cache.replay` does
for OpenAI: ``stream`` stays out of the cache key, so a streaming request and a plain one for the
same prompt share the answer.

``assemble_message(stream)`` returns the Message, or None when the stream is not one whole,
successful answer (no ``message_stop``, an ``error`` event, a delta for a block that was never
started or of a kind that block can't take, an event or delta type unknown here, a tool input that
is not a JSON object, anything unparsable); None just means "don't cache this", so it never raises.
``replay_message(payload)`` returns the events Anthropic would have sent for the message, and
raises :class:`ReplayError` only. ``message_complete(payload)`` tells a whole answer worth keeping.

What is not read is carried as raw JSON, never rebuilt: fields of the message and of its blocks
unknown here go through unchanged. ``assemble_message(replay_message(m))`` is ``m`` up to key order,
except that ``stop_sequence`` and ``usage`` (``input_tokens``, ``output_tokens``) are always there,
and a thinking block always has its ``signature``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType

from tiermux.cache import replay as openai_replay

__all__ = ["ReplayError", "assemble_message", "message_complete", "replay_message", "replay_message_events"]

# Characters of text (or of tool input JSON, cut after a comma) per replayed delta: the same as an
# OpenAI replay's, for the same reasons.
PIECE = openai_replay.PIECE

_NULL = Raw(b"null")
_EMPTY = Raw(b'""')
_NO_INPUT = Raw(b"{}")
_ZERO = Raw(b"0")
_MESSAGE = Raw(b'"message"')
_TOOL_USES = ("tool_use", "server_tool_use")  # blocks whose input streams as JSON pieces
# Usage fields a message_delta carries (cumulative, as Anthropic's newer versions send them).
_DELTA_USAGE = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "server_tool_use")
_KNOWN_EVENTS = frozenset(
    ("message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta")
)


class ReplayError(openai_replay.ReplayError):
    """The payload to replay is not an Anthropic Message (or holds something malformed)."""


# gc=False throughout: these never form cycles, and a long stream decodes hundreds of them.


class _Delta(Struct, gc=False):
    type: str = ""
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    signature: str | None = None
    citation: Raw | UnsetType = UNSET
    stop_reason: Raw | UnsetType = UNSET
    stop_sequence: Raw | UnsetType = UNSET
    stop_details: Raw | UnsetType = UNSET
    container: Raw | UnsetType = UNSET


class _Event(Struct, gc=False):
    type: str = ""
    index: int = -1
    message: dict[str, Raw] | None = None
    content_block: dict[str, Raw] | None = None
    delta: _Delta | None = None
    usage: dict[str, Raw] | None = None


class _Head(Struct, gc=False):
    type: str = ""
    stop_reason: str | None = None


_decode_event = msgspec.json.Decoder(_Event).decode
_decode_head = msgspec.json.Decoder(_Head).decode
_decode_fields = msgspec.json.Decoder(dict[str, Raw]).decode
_decode_blocks = msgspec.json.Decoder(list[dict[str, Raw]]).decode
_decode_list = msgspec.json.Decoder(list[Raw]).decode
_decode_str = msgspec.json.Decoder(str).decode
_decode_any = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


# --- stream -> message ---------------------------------------------------------------------------


def _event_data(stream: bytes) -> list[bytes] | None:
    """The data of each event, or None when there is an ``error`` event. Every SSE spelling (LF,
    CR or CRLF line ends, ``data:`` with or without a space, comments, several data lines)."""
    events: list[bytes] = []
    lines: list[bytes] = []
    for line in (*stream.splitlines(), b""):
        if not line:
            if lines:
                events.append(lines[0] if len(lines) == 1 else b"\n".join(lines))
                lines = []
        elif line[:5] == b"data:":
            lines.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line[:6] == b"event:" and line[6:].strip() == b"error":
            return None
    return events


class _BlockAcc:
    """One content block: its start's fields and the pieces its deltas brought."""

    __slots__ = ("citations", "fields", "kind", "pieces", "signature")

    def __init__(self, fields: dict[str, Raw]) -> None:
        self.fields = fields
        self.kind = _decode_str(fields.get("type", _EMPTY))
        self.pieces: list[str] = []
        self.citations: list[Raw] = []
        self.signature: str | None = None

    def add(self, delta: _Delta) -> bool:
        """Fold one delta in; False for one this block can't take."""
        kind, block = delta.type, self.kind
        if kind == "text_delta" and block == "text" and delta.text is not None:
            self.pieces.append(delta.text)
        elif kind == "input_json_delta" and block in _TOOL_USES and delta.partial_json is not None:
            self.pieces.append(delta.partial_json)
        elif kind == "thinking_delta" and block == "thinking" and delta.thinking is not None:
            self.pieces.append(delta.thinking)
        elif kind == "signature_delta" and block == "thinking" and delta.signature is not None:
            self.signature = delta.signature
        elif kind == "citations_delta" and block == "text" and delta.citation is not UNSET:
            self.citations.append(delta.citation)
        else:
            return False
        return True

    def out(self) -> dict[str, Raw]:
        """The block as the message holds it (raises DecodeError for a tool input that is not an
        object, or a start's field of the wrong type)."""
        fields = self.fields
        if self.kind in _TOOL_USES:
            joined = "".join(self.pieces).strip()
            if joined:
                if not isinstance(_decode_any(joined), dict):
                    raise msgspec.DecodeError("a tool input is not an object")
                fields["input"] = Raw(joined.encode())
        elif self.kind in ("text", "thinking"):
            if self.pieces:
                given = _decode_str(fields.get(self.kind, _EMPTY))
                fields[self.kind] = Raw(_encode(given + "".join(self.pieces)))
            if self.signature is not None:
                fields["signature"] = Raw(_encode(self.signature))
            if self.citations:
                given_list = fields.get("citations", _NULL)
                earlier = [] if given_list == _NULL else _decode_list(given_list)
                fields["citations"] = Raw(_encode(earlier + self.citations))
        return fields


def assemble_message(stream: bytes) -> bytes | None:
    """The Message JSON a whole Anthropic event stream adds up to, or None when ``stream`` is not
    one whole, successful answer (see the module docstring)."""
    datas = _event_data(stream)
    if not datas:
        return None
    try:
        return _fold([_decode_event(data) for data in datas])
    except (msgspec.DecodeError, IndexError):  # ValidationError is a DecodeError
        return None


def _fold(events: list[_Event]) -> bytes | None:
    message: dict[str, Any] | None = None
    usage: dict[str, Raw] = {}
    blocks: list[_BlockAcc] = []
    for event in events:
        kind = event.type
        if kind == "content_block_delta":
            if event.delta is None or event.index < 0 or not blocks[event.index].add(event.delta):
                return None
            continue
        if kind == "message_stop":
            break
        if kind == "ping":
            continue
        if kind not in _KNOWN_EVENTS or (message is None) != (kind == "message_start"):
            return None  # an error, something new, or a message started twice or not at all
        if kind == "message_start":
            if event.message is None or event.message.get("type") != _MESSAGE:
                return None
            message = dict(event.message)
            usage = _decode_fields(message.get("usage", _NO_INPUT))
        elif kind == "content_block_start":
            if event.content_block is None or event.index != len(blocks):
                return None
            blocks.append(_BlockAcc(dict(event.content_block)))
        elif kind == "message_delta" and message is not None:
            delta = event.delta or _Delta()
            for name in ("stop_reason", "stop_sequence", "stop_details", "container"):
                value = getattr(delta, name)
                if value is not UNSET and (value != _NULL or name in ("stop_reason", "stop_sequence")):
                    message[name] = value
            usage.update((k, v) for k, v in (event.usage or {}).items() if v != _NULL)
    else:
        return None  # no message_stop
    if message is None:
        return None
    message["content"] = [block.out() for block in blocks]
    message["usage"] = usage
    message.setdefault("stop_sequence", _NULL)
    return _encode(message)


# --- message -> stream ---------------------------------------------------------------------------


def _sse(kind: str, body: dict[str, Any]) -> bytes:
    return b"event: %b\ndata: %b\n\n" % (kind.encode(), _encode({"type": kind, **body}))


_PING = _sse("ping", {})
_MESSAGE_STOP = _sse("message_stop", {})


def replay_message(payload: bytes) -> bytes:
    """The event stream Anthropic sends for the Message JSON ``payload``: ``message_start``,
    ``ping``, each block's start, deltas and stop, ``message_delta`` and ``message_stop``.

    Raises :class:`ReplayError` when ``payload`` is not a message.
    """
    return b"".join(replay_message_events(payload))


def replay_message_events(payload: bytes) -> list[bytes]:
    """:func:`replay_message`, one event per list item, to send piece by piece."""
    try:
        message = _decode_fields(payload)
        if message.get("type") != _MESSAGE:
            raise ReplayError("not a message: its type is not 'message'")
        content = _decode_blocks(message.get("content", b"[]"))
        usage = _decode_fields(message.get("usage", _NO_INPUT))
        blocks = [_block_events(index, block) for index, block in enumerate(content)]
    except msgspec.DecodeError as exc:
        raise ReplayError(f"not a message: {exc}") from None
    # message_start has everything but the content, the stop and the output count, which the
    # deltas and message_delta bring (usage counts in message_delta are cumulative).
    start: dict[str, Any] = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {"input_tokens": _ZERO, **usage, "output_tokens": _ZERO}
    stop = {
        "stop_reason": message.get("stop_reason", _NULL),
        "stop_sequence": message.get("stop_sequence", _NULL),
    }
    if message.get("stop_details", _NULL) != _NULL:
        start["stop_details"] = None
        stop["stop_details"] = message["stop_details"]
    counts = {name: usage[name] for name in _DELTA_USAGE if usage.get(name, _NULL) != _NULL}
    counts["output_tokens"] = usage.get("output_tokens", _ZERO)
    events = [_sse("message_start", {"message": start}), _PING]
    for block in blocks:
        events.extend(block)
    events.append(_sse("message_delta", {"delta": stop, "usage": counts}))
    events.append(_MESSAGE_STOP)
    return events


def _block_events(index: int, block: dict[str, Raw]) -> list[bytes]:
    """A block's start, deltas and stop: text and thinking in pieces, tool input as JSON pieces;
    blocks of other kinds (redacted thinking, server tool results) whole in their start."""
    kind = _decode_str(block.get("type", _EMPTY))
    start: dict[str, Raw] = dict(block)
    deltas: list[dict[str, Any]] = []
    if kind == "text":
        start["text"] = _EMPTY
        citations = block.get("citations", _NULL)
        if citations != _NULL:
            start["citations"] = Raw(b"[]")
            deltas += [{"type": "citations_delta", "citation": c} for c in _decode_list(citations)]
        text = _decode_str(block.get("text", _EMPTY))
        deltas += [{"type": "text_delta", "text": piece} for piece in _pieces(text)]
    elif kind == "thinking":
        start["thinking"] = start["signature"] = _EMPTY
        thinking = _decode_str(block.get("thinking", _EMPTY))
        deltas += [{"type": "thinking_delta", "thinking": piece} for piece in _pieces(thinking)]
        signature = _decode_str(block.get("signature", _EMPTY))
        if signature:
            deltas.append({"type": "signature_delta", "signature": signature})
    elif kind in _TOOL_USES:
        start["input"] = _NO_INPUT
        given = bytes(block.get("input", _NO_INPUT)).decode().strip()
        if given != "{}":
            deltas += [{"type": "input_json_delta", "partial_json": piece} for piece in _json_pieces(given)]
    events = [_sse("content_block_start", {"index": index, "content_block": start})]
    events += [_sse("content_block_delta", {"index": index, "delta": delta}) for delta in deltas]
    events.append(_sse("content_block_stop", {"index": index}))
    return events


def _pieces(text: str) -> list[str]:
    return [text[i : i + PIECE] for i in range(0, len(text), PIECE)]


def _json_pieces(text: str) -> list[str]:
    """``text`` cut after a comma once a piece has ``PIECE`` characters: never inside an escape,
    which a client parsing partial JSON might choke on."""
    pieces = []
    start = 0
    while len(text) - start > PIECE:
        comma = text.find(",", start + PIECE)
        if comma < 0:
            break
        pieces.append(text[start : comma + 1])
        start = comma + 1
    pieces.append(text[start:])
    return pieces


def message_complete(payload: bytes) -> bool:
    """Whether ``payload`` is a whole, successful message, one that may be cached: its ``type`` is
    ``message`` and it says why it stopped."""
    try:
        head = _decode_head(payload)
    except msgspec.DecodeError:
        return False
    return head.type == "message" and head.stop_reason is not None
