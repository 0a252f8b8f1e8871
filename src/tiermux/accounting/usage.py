"""Token usage, read off answers as they pass: the ``usage`` object of a JSON answer, or of the
final chunk of a stream.

Streams report usage only when asked (``stream_options.include_usage``), so tiermux asks for it
when the client did not (``ask_for_usage``), and ``UsageTap`` then takes that final usage-only
chunk out of what the client sees: the client gets exactly the stream it asked for. A client
that asked for usage gets the chunk, and tiermux reads it too.
"""

from __future__ import annotations

import msgspec

from tiermux._speedups import jsonscan

__all__ = ["Usage", "UsageTap", "ask_for_usage", "usage_of", "wants_usage"]

_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'
MAX_EVENT_BYTES = 1 << 20  # a longer event than this is relayed without being looked at


class PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: PromptDetails | None = None

    @property
    def cached_tokens(self) -> int:
        details = self.prompt_tokens_details
        return min(details.cached_tokens or 0, self.prompt_tokens) if details is not None else 0


class _WithUsage(msgspec.Struct):
    usage: Usage | None = None
    choices: list[msgspec.Raw] | None = None


_decode = msgspec.json.Decoder(_WithUsage).decode


def usage_of(answer: bytes) -> Usage | None:
    """The ``usage`` of a JSON answer, or None (no usage, or not JSON)."""
    try:
        return _decode(answer).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class _StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class _Streamed(msgspec.Struct):
    stream_options: _StreamOptions | None = None


_decode_streamed = msgspec.json.Decoder(_Streamed).decode


def wants_usage(body: bytes) -> bool:
    """Whether a streaming request asked for the usage chunk (``stream_options.include_usage``)."""
    try:
        options = _decode_streamed(body).stream_options
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return options is not None and bool(options.include_usage)


def ask_for_usage(body: bytes) -> bytes | None:
    """``body`` with ``stream_options.include_usage`` added, if it streams and says nothing about
    stream options; None when it is to be forwarded as it is."""
    try:
        start, end = jsonscan.value_span(body, b"stream")
        if start < 0 or body[start:end] != b"true":
            return None
        if jsonscan.value_span(body, b"stream_options")[0] >= 0:
            return None  # the client chose; its stream is left alone (and read if it has usage)
    except jsonscan.ScanError:
        return None
    brace = body.index(b"{")
    return body[: brace + 1] + _INCLUDE_USAGE + body[brace + 1 :]


class UsageTap:
    """Watches an SSE stream for its usage; with ``strip``, relays all but the usage-only chunk.

    ``feed`` returns what to relay now. Events are relayed whole: a chunk that ends mid-event
    keeps its unfinished event for the next one (a backend's chunks are whole events in practice,
    so nothing waits).
    """

    __slots__ = ("_tail", "strip", "usage")

    broken = False  # an OpenAI stream passes as it came (a translation may find one broken)

    def __init__(self, strip: bool) -> None:
        self.strip = strip
        self.usage: Usage | None = None
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._tail + chunk if self._tail else chunk
        cut = data.rfind(b"\n\n") + 2  # 1 when there is none
        complete, tail = (data[:cut], data[cut:]) if cut > 1 else (b"", data)
        overflow = len(tail) > MAX_EVENT_BYTES
        self._tail = b"" if overflow else tail
        if b'"usage"' in complete:
            kept = []
            for event in complete.split(b"\n\n")[:-1]:
                if b'"usage"' in event and self._read(event) and self.strip:
                    continue
                kept.append(event + b"\n\n")
            complete = b"".join(kept)
        if not self.strip:
            return chunk
        return complete + tail if overflow else complete

    def finish(self) -> bytes:
        """Whatever is still held back when the stream ends."""
        tail, self._tail = self._tail, b""
        if tail and b'"usage"' in tail:
            self._read(tail)
        return tail if self.strip else b""

    def _read(self, event: bytes) -> bool:
        """Record the usage of a usage-only event; whether it was one."""
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    parsed = _decode(line[5:].strip())
                except (msgspec.DecodeError, msgspec.ValidationError):
                    return False
                if parsed.usage is not None:
                    self.usage = parsed.usage
                    return not parsed.choices
        return False
