"""A fast mock LLM backend for tests, benchmarks and demos.

It plays a local vLLM server (``--flavor vllm``), an OpenAI-like cloud API (``--flavor cloud``)
or the Anthropic Messages API (``--flavor anthropic``) and answers every completion with a canned
text of ``--tokens`` words.

Quality tests can shape the answers:

* ``text`` (``--text``): every chat and text completion answers with exactly this text instead,
  also in JSON mode. It is sent as word-like pieces, split before each run of whitespace
  (``"a b  c"`` is ``"a"``, ``" b"``, ``"  c"``); ``tokens`` and the request's ``max_tokens`` cap
  the number of pieces, with ``finish_reason`` ``"length"`` when the text was cut, and usage
  counts the pieces sent. ``null`` (the default) restores the canned answer.
* ``logprob`` (``--logprob``, default -0.05): a chat request with ``"logprobs": true`` gets
  OpenAI-shaped ``choices[i].logprobs.content`` entries, one per piece (per chunk when streamed),
  each with this log-probability. With ``top_logprobs`` = k > 0 each entry lists the chosen piece
  and k - 1 made-up alternatives sharing the remaining probability, most likely first. Set e.g.
  -2.5 to play an unsure model.

The Anthropic flavour serves ``POST /v1/messages`` (also streamed, as named server-sent events),
``POST /v1/messages/count_tokens`` and ``GET /v1/models`` in Anthropic's shapes, and none of the
OpenAI endpoints. It requires the ``anthropic-version`` header and takes the key from ``x-api-key``
(or ``Authorization: Bearer``, which the official SDK uses too); errors come as
``{"type": "error", "error": {"type": ..., "message": ...}}`` with a ``request-id`` header. The
answer is the chat flavour's (same text, token counts, ``max_tokens`` cap and input token
estimate); with ``tools`` it is a ``tool_use`` block unless ``tool_choice`` is ``none``, and
``stop_sequences`` cut the text where they occur. In ``die-mid-stream`` failures a stream ends
with an ``overloaded_error`` event instead of a cut connection, as the real API does. The
request-independent parts live in :mod:`bench.mock_anthropic`.

Keys and rate limits work in every flavour (Bearer in the OpenAI ones):

* ``api_keys`` (``--api-key KEY[,KEY...]``; ``api_key`` from Python): any listed key is accepted,
  anything else gets 401. No key configured accepts any.
* ``rate_limited_keys`` (``--rate-limited-key KEY=SECONDS``, repeatable): requests with such a key
  get 429 with ``retry-after`` (whole seconds, rounded up) until the option changes.
* ``rate_limit_every`` (``--rate-limit-every N``): every Nth request gets 429 (retry after 1 s).

The server is a raw :class:`asyncio.Protocol` on uvloop with :mod:`httptools` parsing, so that a
single process stays well ahead of a proxy driven at tens of thousands of requests per second.
Everything that does not depend on the request (status lines, header fragments, canned answers,
the model list) is built once; request bodies are decoded with msgspec into small structs that
hold only the fields the mock needs.

Besides the API endpoints it serves a small control API under ``/_mock/`` so that tests can see
what the proxy really sent and change latency or failure injection on a running backend:

* ``GET /_mock/requests`` / ``DELETE /_mock/requests``: recorded requests (last 512), or clear them.
* ``GET /_mock/stats``: request counters and connection gauges. ``by_key`` and
  ``rate_limited_by_key`` count, per API key, the requests let through and those refused with 429;
  they are kept whenever keys are checked (always in the Anthropic flavour, in the others when keys
  or rate limits are configured), and a key appears only as its last four characters (half of a
  key shorter than eight), never whole.
* ``GET|POST /_mock/config``: read or change latency, token count, answer text, logprob, failure
  injection and rate limits (``{"text": null}`` switches back to the canned answer).

Run ``python -m bench.mock_backend --help`` for the command line, or use :class:`MockBackend` /
:func:`run_in_thread` from Python.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import http
import itertools
import math
import random
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, TypeVar

import httptools
import msgspec
import uvloop

from bench import mock_anthropic

__all__ = [
    "BackendHandle",
    "MockBackend",
    "MockOptions",
    "main",
    "parse_args",
    "run_in_thread",
]

_T = TypeVar("_T")
Flavor = Literal["vllm", "cloud", "anthropic"]
FailMode = Literal["status", "reset", "hang", "die-mid-stream", "slow-stream"]
Millis = Annotated[float, msgspec.Meta(ge=0)]
TokenCount = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
ErrorStatus = Annotated[int, msgspec.Meta(ge=400, le=599)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
LogProb = Annotated[float, msgspec.Meta(ge=-9999.0, le=0.0)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=1e9)]
EveryNth = Annotated[int, msgspec.Meta(ge=0)]


class MockOptions(msgspec.Struct, kw_only=True):
    """Everything that shapes the mock's behaviour; the CLI flags map one to one onto these."""

    flavor: Flavor = "vllm"
    host: str = "127.0.0.1"
    port: Port = 0
    model: str = "qwen-9b"
    lora: tuple[str, ...] = ()
    api_key: str | None = None  # one more accepted key, for Python callers (--api-key fills api_keys)
    api_keys: tuple[str, ...] = ()
    latency_ms: Millis = 0.0
    ttft_ms: Millis = 0.0
    itl_ms: Millis = 0.0
    tokens: TokenCount = 16
    fail_rate: Probability = 0.0
    fail_mode: FailMode = "status"
    fail_status: ErrorStatus = 500
    seed: int = 0
    text: str | None = None
    logprob: LogProb = -0.05
    rate_limited_keys: dict[str, Seconds] = msgspec.field(default_factory=dict)
    rate_limit_every: EveryNth = 0


class _ConfigPatch(msgspec.Struct, forbid_unknown_fields=True):
    """The options that may change while the server runs (``POST /_mock/config``).

    A field left out (or ``null``) keeps its value, except ``text``, where ``null`` clears it.
    """

    latency_ms: Millis | None = None
    ttft_ms: Millis | None = None
    itl_ms: Millis | None = None
    tokens: TokenCount | None = None
    fail_rate: Probability | None = None
    fail_mode: FailMode | None = None
    fail_status: ErrorStatus | None = None
    seed: int | None = None
    text: str | msgspec.UnsetType | None = msgspec.UNSET
    logprob: LogProb | None = None
    rate_limited_keys: dict[str, Seconds] | None = None
    rate_limit_every: EveryNth | None = None


# --------------------------------------------------------------------------------------------
# Request bodies: only the fields the mock looks at. Prompts and messages stay msgspec.Raw, so
# they are syntax-checked and required but never turned into Python objects.
# --------------------------------------------------------------------------------------------

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
TopLogprobs = Annotated[int, msgspec.Meta(ge=0, le=20)]
ChoiceCount = Annotated[int, msgspec.Meta(ge=1, le=128)]


class _StreamOptions(msgspec.Struct):
    include_usage: bool | None = False


class _FunctionRef(msgspec.Struct):
    name: str = ""


class _Tool(msgspec.Struct):
    type: str = "function"
    function: _FunctionRef | None = None


class _ResponseFormat(msgspec.Struct):
    type: str = "text"


class _ChatRequest(msgspec.Struct):
    messages: msgspec.Raw
    model: str | None = None
    stream: bool | None = False
    stream_options: _StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    n: ChoiceCount | None = None
    tools: list[_Tool] | None = None
    tool_choice: str | _Tool | None = None
    response_format: _ResponseFormat | None = None
    logprobs: bool | None = False
    top_logprobs: TopLogprobs | None = None


class _CompletionRequest(msgspec.Struct):
    prompt: msgspec.Raw
    model: str | None = None
    stream: bool | None = False
    stream_options: _StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    n: ChoiceCount | None = None


class _EmbeddingRequest(msgspec.Struct):
    input: str | list[Any]
    model: str | None = None
    encoding_format: Literal["float", "base64"] | None = None


_CHAT_DECODER = msgspec.json.Decoder(_ChatRequest)
_COMPLETION_DECODER = msgspec.json.Decoder(_CompletionRequest)
_EMBEDDING_DECODER = msgspec.json.Decoder(_EmbeddingRequest)
_MESSAGES_DECODER = msgspec.json.Decoder(mock_anthropic.MessagesRequest)
_COUNT_TOKENS_DECODER = msgspec.json.Decoder(mock_anthropic.CountTokensRequest)
_PATCH_DECODER = msgspec.json.Decoder(_ConfigPatch)
_ENCODER = msgspec.json.Encoder()
_encode = _ENCODER.encode


# --------------------------------------------------------------------------------------------
# Precomputed protocol fragments.
# --------------------------------------------------------------------------------------------

_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in http.HTTPStatus}
_JSON_TYPE = b"content-type: application/json\r\n"
_SSE_TYPE = b"content-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n"
_CHUNKED = b"transfer-encoding: chunked\r\n"
_CONNECTION_CLOSE = b"connection: close\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# What a 429 says about the remaining request budget, in each API's header.
_OPENAI_REMAINING = b"x-ratelimit-remaining-requests: 0\r\n"
_ANTHROPIC_REMAINING = b"anthropic-ratelimit-requests-remaining: 0\r\n"
# "[DONE]" sentinel followed by the zero-length chunk that ends the chunked body.
_STREAM_END = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
# Response documents are filled into byte templates: every field but the few that vary per
# request is fixed, and %-formatting bytes is several times cheaper than building and encoding
# an object. Strings that come from the client (the model name) are JSON-encoded first.
_COMPLETION_TEMPLATE = (
    b'{"id":"%s%s","object":"%s","created":%d,"model":%s,"choices":%s,'
    b'"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}'
)
_CHUNK_PREFIX_TEMPLATE = b'data: {"id":"%s%s","object":"%s","created":%d,"model":%s,"choices":'
_USAGE_CHUNK_TEMPLATE = b'[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}'
_FAST_JSON_TEMPLATE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\nx-request-id: %s\r\n\r\n%s"
)
_JSON_FORMATS = frozenset(("json_object", "json_schema"))
_SLOW_STREAM_ITL = 0.2  # seconds between tokens in the slow-stream failure mode
_RECORD_LIMIT = 512
_MAX_BODY = 32 * 1024 * 1024  # larger bodies are answered with 413 instead of buffered
_MAX_PIPELINE = 64  # queued requests on one connection before we stop reading from it
_CACHE_LIMIT = 1024
_EMBEDDING_DIMS = 8
_TOOL_CALL_TOKENS = 2  # a tool call is "generated" as two deltas: its header, then its arguments
_PIECE = re.compile(r"\s*\S+|\s+")  # a configured text's pieces: whitespace run, then a word
_MIN_LOGPROB = -9999.0  # what OpenAI reports for "practically impossible"

# Cycled to build the canned answer; plain ASCII words so they never need JSON escaping.
_WORDS = (
    "The", "mock", "backend", "answers", "every", "request", "with", "this", "short", "canned",
    "reply", "so", "that", "proxies", "can", "be", "measured", "without", "a", "real", "model",
    "behind", "them", "and", "tests", "stay", "fast", "deterministic", "simple", "cheap",
)  # fmt: skip


def _status_line(status: int) -> bytes:
    """The HTTP/1.1 status line, precomputed for every status the stdlib knows."""
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


def _error_type(status: int) -> str:
    """The OpenAI error ``type`` that usually goes with an HTTP status."""
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _error_body(message: str, type_: str, code: str | int | None, param: str | None = None) -> bytes:
    """An OpenAI-shaped error document."""
    return _encode({"error": {"message": message, "type": type_, "param": param, "code": code}})


def _prompt_tokens(body: bytes) -> int:
    """A deliberately crude token estimate: about four bytes of request per token."""
    return max(1, len(body) // 4)


def _answer_tokens(count: int, json_mode: bool) -> tuple[str, ...]:
    """The canned answer as tokens, each a word with a leading space.

    The concatenation of the tokens is exactly the non-streaming content, so a client that joins
    streamed deltas sees the same text. In JSON mode the first and last tokens carry the braces of
    ``{"answer": "..."}`` so that the joined text is a valid JSON object.
    """
    tokens = [" " + _WORDS[i % len(_WORDS)] for i in range(count)]
    if json_mode:
        tokens[0] = '{"answer": "' + tokens[0][1:]
        tokens[-1] += '"}'
    return tuple(tokens)


def _text_pieces(text: str) -> tuple[str, ...]:
    """A configured answer text as streamed pieces; they join to exactly ``text``."""
    return tuple(_PIECE.findall(text))


def _top_logprobs(token: str, logprob: float, top: int) -> list[dict[str, Any]]:
    """``top`` candidates for one position: ``token`` and made-up alternatives, likeliest first.

    The alternatives share the probability that ``token`` leaves over, evenly.
    """
    if top <= 0:
        return []
    candidates = [(token, logprob)]
    others = top - 1
    if others:
        rest = 1.0 - math.exp(logprob)
        alternative = max(math.log(rest / others), _MIN_LOGPROB) if rest > 0.0 else _MIN_LOGPROB
        words = (word for word in (" " + w for w in _WORDS) if word != token)
        candidates.extend((word, alternative) for word in itertools.islice(words, others))
    candidates.sort(key=lambda candidate: -candidate[1])  # stable: the chosen token wins ties
    return [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in candidates]


def _logprobs_content(tokens: Sequence[str], logprob: float, top: int) -> list[dict[str, Any]]:
    """The ``logprobs.content`` entries of a chat answer: one per token, all with ``logprob``."""
    return [
        {
            "token": token,
            "logprob": logprob,
            "bytes": list(token.encode()),
            "top_logprobs": _top_logprobs(token, logprob, top),
        }
        for token in tokens
    ]


def _sse_chunk(prefix: bytes, choices: bytes) -> bytes:
    """One ``data: {...}`` event, framed as a single HTTP chunk.

    ``prefix`` is the shared start of the chunk object up to and including ``"choices":``.
    """
    # The event is prefix + choices + "}\n\n"; its length is known without building it first.
    return b"%x\r\n%s%s}\n\n\r\n" % (len(prefix) + len(choices) + 3, prefix, choices)


def _chosen_tool(request: _ChatRequest) -> str | None:
    """The function the mock "decides" to call: the forced one, else the first tool offered."""
    if not request.tools or request.tool_choice == "none":
        return None
    choice = request.tool_choice
    if isinstance(choice, _Tool) and choice.function is not None and choice.function.name:
        return choice.function.name
    first = request.tools[0].function
    return first.name if first is not None and first.name else "tool"


def _embedding(item: Any) -> list[float]:
    """Eight floats in [-1, 1] derived from the input, stable across runs and processes."""
    raw = item.encode() if isinstance(item, str) else _encode(item)
    digest = hashlib.blake2b(raw, digest_size=_EMBEDDING_DIMS).digest()
    return [round((b - 127.5) / 127.5, 6) for b in digest]


def _embedding_inputs(value: str | list[Any]) -> list[Any]:
    """Split an embeddings ``input`` into items: a string, strings, or token id arrays."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [value]  # a single pre-tokenised input
    return value


def _key_label(key: bytes) -> str:
    """How a key appears in stats: its last four characters (half of a shorter key), never whole."""
    shown = min(4, len(key) // 2)
    return key[len(key) - shown :].decode("utf-8", "replace")


def _key_counts(counts: dict[bytes, int]) -> dict[str, int]:
    labelled: dict[str, int] = {}
    for key, n in counts.items():
        label = _key_label(key)
        labelled[label] = labelled.get(label, 0) + n
    return labelled


def _tool_call_id(rid: bytes, index: int) -> str:
    return f"call_{rid.decode('ascii')}{index}"


def _tool_call_deltas(rid: bytes, index: int, name: str) -> list[dict[str, Any]]:
    """The streamed form of a tool call: header (id, name) first, then the arguments.

    There are ``_TOOL_CALL_TOKENS`` deltas, matching the usage reported for a tool call.
    """
    header = {
        "index": 0,
        "id": _tool_call_id(rid, index),
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }
    arguments = {"index": 0, "function": {"arguments": "{}"}}
    return [{"tool_calls": [header]}, {"tool_calls": [arguments]}]


def _tool_choice(rid: bytes, index: int, name: str) -> dict[str, Any]:
    """A non-streamed choice that calls ``name`` with empty arguments."""
    call = {
        "id": _tool_call_id(rid, index),
        "type": "function",
        "function": {"name": name, "arguments": "{}"},
    }
    return {
        "index": index,
        "message": {"role": "assistant", "content": None, "tool_calls": [call]},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }


# When a stream frame is due: after the time to first token, at once (together with the frame
# before it), or one inter-token gap after the frame before it.
_AT_TTFT, _AT_ONCE, _AT_ITL = 0, 1, 2
EncodedFrames = list[tuple[int, bytes]]  # (when due, encoded "choices" array) per frame


def _chat_frames(
    per_choice: list[list[dict[str, Any]]], finish: str, logprobs: Sequence[Any] | None = None
) -> EncodedFrames:
    """The ``choices`` of every frame of a chat stream: role, one per delta, finish.

    The role frame is due at TTFT together with the first delta; later deltas one ITL apart.
    With several choices, each step has one frame per choice, all due at the same moment.
    ``logprobs``, if given, holds the ``logprobs`` value of each delta step (same for all choices).
    """
    n = len(per_choice)
    steps: list[list[dict[str, Any]]] = [[{"role": "assistant", "content": ""}] * n]
    steps.extend(list(step) for step in zip(*per_choice, strict=True))
    steps.append([{}] * n)
    deltas = len(steps) - 2
    slots = [_AT_TTFT, *[_AT_ONCE] * min(deltas, 1), *[_AT_ITL] * (deltas - 1), _AT_ONCE]
    reasons = [None] * (len(steps) - 1) + [finish]
    extras = [None, *(logprobs if logprobs is not None else [None] * deltas), None]
    frames: EncodedFrames = []
    for step, slot, reason, extra in zip(steps, slots, reasons, extras, strict=True):
        for index, delta in enumerate(step):
            choice = {"index": index, "delta": delta, "logprobs": extra, "finish_reason": reason}
            frames.append((slot if index == 0 else _AT_ONCE, _encode([choice])))
    return frames


def _completion_frames(n: int, tokens: Sequence[str], finish: str) -> EncodedFrames:
    """The ``choices`` of every frame of a text completion stream: one per token, then finish."""
    texts = [*tokens, ""]
    frames: EncodedFrames = []
    for step, text in enumerate(texts):
        last = step == len(texts) - 1
        slot = _AT_TTFT if step == 0 else (_AT_ONCE if last else _AT_ITL)
        reason = finish if last else None
        for index in range(n):
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
            frames.append((slot if index == 0 else _AT_ONCE, _encode([choice])))
    return frames


class _Answer:
    """What a completion request gets, decided once and shared by both renderings."""

    __slots__ = ("count", "created", "finish", "model", "n", "pieces", "prompt", "rid")

    def __init__(
        self,
        rid: bytes,
        model: bytes,
        created: int,
        n: int,
        prompt: int,
        count: int,
        finish: str,
        pieces: tuple[str, ...] | None = None,
    ) -> None:
        self.rid = rid
        self.model = model  # already JSON-encoded, quotes included
        self.created = created
        self.n = n  # choices
        self.prompt = prompt  # estimated prompt tokens
        self.count = count  # tokens per choice
        self.finish = finish
        self.pieces = pieces  # the configured text's tokens (already cut), None for the canned one

    def usage(self, completion_tokens: int) -> tuple[int, int, int]:
        """Prompt, completion and total tokens, in template order."""
        return self.prompt, completion_tokens, self.prompt + completion_tokens


class _Request:
    """One parsed HTTP request, exactly as received (body already de-chunked)."""

    __slots__ = ("auth", "body", "headers", "keep_alive", "method", "too_large", "url")

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
        auth: bytes | None,
        too_large: bool,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.auth = auth
        self.too_large = too_large


class _Stream:
    """A streamed answer: the response head, then (delay seconds, framed chunk) pairs."""

    __slots__ = ("frames", "head")

    def __init__(self, head: bytes, frames: list[tuple[float, bytes]]) -> None:
        self.head = head
        self.frames = frames


# How a _Plan ends: keep the connection, drop it (FIN, like a crashed server), reset it (RST),
# or leave the client waiting forever.
_DONE, _ABORT, _RESET, _HANG = 0, 1, 2, 3
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, timeout 0: close() sends an RST


class _Plan:
    """A reply that cannot be written at once: timed writes, then finish, abort or hang."""

    __slots__ = ("due", "end", "pos", "steps")

    def __init__(self, steps: list[tuple[float, bytes]], end: int = _DONE) -> None:
        self.steps = steps
        self.end = end
        self.pos = 0
        self.due = False  # the step at ``pos`` has already waited for its delay


Reply = bytes | _Plan
Handler = Callable[[_Request, bytes, bool], bytes | _Stream]
Gate = Callable[[_Request, bytes, bytes], bytes | None]  # (request, path, rid) -> refusal or None


class _Connection(asyncio.Protocol):
    """One client connection.

    Requests are parsed as bytes arrive and answered strictly in arrival order, which is what
    makes pipelining safe: while a delayed or streamed reply is in progress, later requests wait
    in a queue. Immediate replies are written synchronously from the parser callback.
    """

    __slots__ = (
        "_auth",
        "_backend",
        "_body",
        "_body_size",
        "_closed",
        "_headers",
        "_keep_alive",
        "_loop",
        "_parser",
        "_paused",
        "_plan",
        "_queue",
        "_timer",
        "_transport",
        "_url",
    )

    def __init__(self, backend: MockBackend, loop: asyncio.AbstractEventLoop) -> None:
        self._backend = backend
        self._loop = loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._auth: bytes | None = None
        self._queue: collections.deque[_Request] = collections.deque()
        self._plan: _Plan | None = None
        self._keep_alive = True
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._paused = False

    # asyncio callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._backend._connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        self._plan = None
        self._backend._connection_closed(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject("protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._reject(f"malformed HTTP request: {exc}")

    # httptools callbacks ----------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url  # may arrive in pieces when the request line is split across reads

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        # Length checks first: they reject almost every header without a lower() call.
        size = len(name)
        if size == 13 and name.lower() == b"authorization":
            self._auth = value
        elif size == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self._send_continue()

    def _send_continue(self) -> None:
        """Invite the body now, unless earlier replies are still owed (they must come first)."""
        if self._plan is None and not self._queue and self._transport is not None:
            self._transport.write(_CONTINUE)

    def on_body(self, data: bytes) -> None:
        self._body_size += len(data)
        if self._body_size <= _MAX_BODY:
            self._body.append(data)

    def on_message_complete(self) -> None:
        parts = self._body
        request = _Request(
            self._parser.get_method(),
            self._url,
            self._headers,
            parts[0] if len(parts) == 1 else b"".join(parts),
            self._parser.should_keep_alive(),
            self._auth,
            self._body_size > _MAX_BODY,
        )
        # Reset here instead of in on_message_begin: one Python callback fewer per request.
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0
        self._auth = None
        if self._closed:
            return  # pipelined leftovers after we decided to drop the connection
        if self._plan is None and not self._queue:
            self._serve(request)  # the common case: no earlier reply is still owed
            return
        self._queue.append(request)
        if len(self._queue) >= _MAX_PIPELINE and not self._paused:
            # A client pipelining far ahead of a slow reply: stop reading until we catch up.
            self._paused = True
            self._transport.pause_reading()  # type: ignore[union-attr]

    # reply machinery --------------------------------------------------------------------------

    def _serve(self, request: _Request) -> None:
        """Answer one request: write it now, or start its timed plan."""
        try:
            reply = self._backend._route(request)
        except Exception as exc:  # a mock bug should surface as a 500, not a dead connection
            reply = self._backend._internal_error(request, exc)
        if isinstance(reply, bytes):
            self._transport.write(reply)  # type: ignore[union-attr]
            if not request.keep_alive:
                self._close()
        else:
            self._plan = reply
            self._keep_alive = request.keep_alive
            self._step()

    def _pump(self) -> None:
        """Answer queued requests in order until one needs to wait."""
        while self._queue and self._plan is None and not self._closed:
            self._serve(self._queue.popleft())
        if self._paused and not self._queue and not self._closed:
            self._paused = False
            self._transport.resume_reading()  # type: ignore[union-attr]

    def _step(self) -> None:
        """Write every step of the current plan that is due, then wait, finish or give up."""
        plan = self._plan
        assert plan is not None and self._transport is not None
        steps = plan.steps
        pos = plan.pos
        out: list[bytes] = []
        while pos < len(steps):
            delay, data = steps[pos]
            if delay > 0.0 and not plan.due:
                plan.due = True
                break
            plan.due = False
            out.append(data)
            pos += 1
        plan.pos = pos
        if out:
            # Coalesce frames that are due together into one write (one syscall).
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        if pos < len(steps):
            self._timer = self._loop.call_later(steps[pos][0], self._on_timer)
        elif plan.end == _ABORT:
            self.abort()
        elif plan.end == _RESET:
            self.abort(reset=True)
        elif plan.end == _DONE:
            self._plan = None
            if not self._keep_alive:
                self._close()
        # _HANG: keep the plan in place, so nothing more is ever answered on this connection.

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed or self._plan is None:
            return
        self._step()
        if self._plan is None:
            self._pump()

    def _reject(self, message: str) -> None:
        """Answer a request we could not parse with 400 (if nothing is in flight) and close."""
        if self._closed:
            return
        if self._plan is None and not self._queue and self._transport is not None:
            body = _error_body(message, "invalid_request_error", None)
            self._transport.write(
                b"%s%scontent-length: %d\r\n%s\r\n%s"
                % (_status_line(400), _JSON_TYPE, len(body), _CONNECTION_CLOSE, body)
            )
        self._close()

    def _close(self) -> None:
        """Close after the buffered writes are flushed."""
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    def abort(self, reset: bool = False) -> None:
        """Drop the connection at once, discarding unsent data; ``reset`` makes it an RST."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self._transport
        if transport is None:
            return
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()


class MockBackend:
    """The mock server. Create it, ``await start()``, and ``await close()`` when done.

    Options come either as a :class:`MockOptions` or as keyword arguments with the same names
    (keywords override the fields of a given ``options``). All methods must be called on the
    event loop that runs the server; :func:`run_in_thread` wraps that for synchronous tests.
    """

    def __init__(self, options: MockOptions | None = None, **overrides: Any) -> None:
        base = msgspec.structs.asdict(options) if options is not None else {}
        # convert() validates types and ranges, which the Struct constructor does not.
        self.options: MockOptions = msgspec.convert({**base, **overrides}, MockOptions)
        opts = self.options
        self._rng = random.Random(opts.seed)
        self._cloud = opts.flavor == "cloud"
        self._anthropic = opts.flavor == "anthropic"
        keys = (*opts.api_keys, opts.api_key) if opts.api_key else opts.api_keys
        self._keys = frozenset(key.encode() for key in keys)  # empty: any key, or none, will do
        # Per-key checks, None when there is nothing to check (see _refresh_gate).
        self._gate: Gate | None = None
        self._limited: dict[bytes, int] = {}  # rate-limited key -> retry-after seconds
        self._gated = 0  # requests let through, for rate_limit_every
        self._by_key: dict[bytes, int] = {}
        self._limited_by_key: dict[bytes, int] = {}
        self._id_prefix = secrets.token_hex(6).encode()
        self._id_counter = 0
        self._created = int(time.time())
        self._models_body = self._build_models_body()
        self._cache: dict[tuple[Any, ...], Any] = {}  # encoded fragments, see _remember()
        self._pieces: tuple[str | None, tuple[str, ...]] = (None, ())  # (text, its pieces)
        self._records: collections.deque[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = (
            collections.deque(maxlen=_RECORD_LIMIT)
        )
        self._by_path: dict[bytes, int] = {}  # requests per path, since the last reset
        self._connections: set[_Connection] = set()
        self._connections_total = 0
        self._server: asyncio.Server | None = None
        self._routes: dict[bytes, dict[bytes, Handler]]
        if self._anthropic:
            self._routes = {
                b"/v1/messages": {b"POST": self._messages},
                b"/v1/messages/count_tokens": {b"POST": self._count_tokens},
                b"/v1/models": {b"GET": self._anthropic_models},
            }
        else:
            self._routes = {
                b"/v1/models": {b"GET": self._models},
                b"/v1/chat/completions": {b"POST": self._chat},
                b"/v1/completions": {b"POST": self._completions},
                b"/v1/embeddings": {b"POST": self._embeddings},
            }
            if not self._cloud:
                self._routes[b"/health"] = {b"GET": self._health}
        self._refresh_gate()

    # lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start accepting connections (``port=0`` picks a free port)."""
        if self._server is not None:
            raise RuntimeError("mock backend already started")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self, loop),
            self.options.host,
            self.options.port,
            reuse_address=True,
            backlog=4096,
        )
        self.options.port = self.port  # the real one, also with port=0

    async def close(self) -> None:
        """Stop listening and drop every open connection, including hung ones."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # A connection accepted just before the listener closed has its connection_made still
        # queued: abort again after letting the loop run it, or it would stay open, unanswered.
        for _ in range(3):
            for connection in list(self._connections):
                connection.abort()
            await asyncio.sleep(0)
        await server.wait_closed()
        # Let the transports deliver connection_lost before the loop may be closed.
        for _ in range(3):
            if not self._connections:
                break
            await asyncio.sleep(0)

    @property
    def port(self) -> int:
        """The port actually bound (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("mock backend is not running")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def root_url(self) -> str:
        """``http://host:port`` with a connectable host even when bound to a wildcard address."""
        host = self.options.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:8000/v1`` (Anthropic clients take root_url)."""
        return self.root_url + "/v1"

    # introspection ----------------------------------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change run-time options (latency_ms, ttft_ms, itl_ms, tokens, fail_*, seed, text, logprob,
        rate_limited_keys, rate_limit_every).

        ``text=None`` switches back to the canned answer; ``None`` leaves any other option as is.
        """
        self._apply(msgspec.convert(changes, _ConfigPatch))

    def stats(self) -> dict[str, Any]:
        """Request counters since the last reset, and connection gauges."""
        return {
            "requests": sum(self._by_path.values()),
            "by_path": {path.decode("latin-1"): n for path, n in self._by_path.items()},
            "open_connections": len(self._connections),
            "connections_total": self._connections_total,
            "by_key": _key_counts(self._by_key),
            "rate_limited_by_key": _key_counts(self._limited_by_key),
        }

    def recorded(self) -> list[dict[str, Any]]:
        """The recorded requests, oldest first, in the ``GET /_mock/requests`` shape."""
        return [
            {
                "method": method.decode("latin-1"),
                "path": url.decode("latin-1"),
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers],
                "body_b64": base64.b64encode(body).decode("ascii"),
            }
            for method, url, headers, body in self._records
        ]

    def reset(self) -> None:
        """Forget recorded requests and zero the counters."""
        self._records.clear()
        self._by_path.clear()
        self._connections_total = 0
        self._by_key.clear()
        self._limited_by_key.clear()
        self._gated = 0

    def _apply(self, patch: _ConfigPatch) -> None:
        for name in patch.__struct_fields__:
            value = getattr(patch, name)
            if value is msgspec.UNSET or (value is None and name != "text"):
                continue
            setattr(self.options, name, value)
        if patch.seed is not None:
            self._rng.seed(patch.seed)
        if patch.rate_limited_keys is not None or patch.rate_limit_every is not None:
            self._refresh_gate()

    def _refresh_gate(self) -> None:
        """Decide which per-key checks run, after the keys or rate limits changed.

        The OpenAI flavours skip them entirely unless keys or limits are configured (the
        benchmark's hot path); the Anthropic flavour always checks its headers.
        """
        opts = self.options
        self._limited = {key.encode(): math.ceil(delay) for key, delay in opts.rate_limited_keys.items()}
        if self._anthropic:
            self._gate = self._anthropic_gate
        elif self._keys or self._limited or opts.rate_limit_every:
            self._gate = self._openai_gate
        else:
            self._gate = None

    def _connection_opened(self, connection: _Connection) -> None:
        self._connections.add(connection)
        self._connections_total += 1

    def _connection_closed(self, connection: _Connection) -> None:
        self._connections.discard(connection)

    # dispatch ---------------------------------------------------------------------------------

    def _route(self, request: _Request) -> Reply:
        """Turn one request into its reply: bytes to write now, or a timed plan."""
        url = request.url
        query = url.find(b"?")
        path = url if query < 0 else url[:query]
        self._id_counter += 1  # inlined _next_id(): this runs for every request
        rid = b"%s%x" % (self._id_prefix, self._id_counter)
        if path.startswith(b"/_mock/"):
            return self._control(request, path, rid)

        self._records.append((request.method, url, request.headers, request.body))
        self._by_path[path] = self._by_path.get(path, 0) + 1

        if request.too_large:
            return self._error(request, rid, 413, "request body too large")
        methods = self._routes.get(path)
        if methods is None:
            message = f"Invalid URL ({request.method.decode('latin-1')} {path.decode('latin-1')})"
            return self._error(request, rid, 404, message, code="unknown_url")
        handler = methods.get(request.method)
        if handler is None:
            return self._not_allowed(request, rid, b", ".join(methods))
        gate = self._gate
        if gate is not None:
            refusal = gate(request, path, rid)
            if refusal is not None:
                return refusal

        opts = self.options
        rate = opts.fail_rate
        if rate > 0.0 and (rate >= 1.0 or self._rng.random() < rate):
            return self._inject_failure(opts.fail_mode, handler, request, rid)
        reply = handler(request, rid, False)
        if isinstance(reply, _Stream):
            return _Plan([(0.0, reply.head), *reply.frames])
        if opts.latency_ms > 0.0:
            return _Plan([(opts.latency_ms / 1000.0, reply)])
        return reply

    def _openai_gate(self, request: _Request, path: bytes, rid: bytes) -> bytes | None:
        """Bearer key and rate limits, for the API endpoints only (not ``/health``)."""
        if not path.startswith(b"/v1/"):
            return None
        auth = request.auth
        key = auth[7:] if auth is not None and auth.startswith(b"Bearer ") else None
        if self._keys and key not in self._keys:
            message = "Incorrect API key provided."
            return self._error(request, rid, 401, message, code="invalid_api_key")
        return self._limit(request, rid, key)

    def _anthropic_gate(self, request: _Request, path: bytes, rid: bytes) -> bytes | None:
        """``x-api-key`` (or a Bearer key), the required ``anthropic-version``, rate limits."""
        key: bytes | None = None
        version = False
        for name, value in request.headers:
            size = len(name)  # length checks first: they rule out most headers without lower()
            if size == 9 and name.lower() == b"x-api-key":
                key = value
            elif size == 17 and name.lower() == b"anthropic-version":
                version = True
        if key is None:
            auth = request.auth
            if auth is not None and auth.startswith(b"Bearer "):
                key = auth[7:]
        if self._keys and key not in self._keys:
            return self._error(request, rid, 401, "invalid x-api-key")
        if not version:
            return self._error(request, rid, 400, "anthropic-version: header is required")
        return self._limit(request, rid, key)

    def _limit(self, request: _Request, rid: bytes, key: bytes | None) -> bytes | None:
        """Refuse with 429 a rate-limited key, or every Nth request; count what passes per key."""
        retry = self._limited.get(key) if key else None
        every = self.options.rate_limit_every
        if retry is None and every:
            self._gated += 1
            if self._gated % every == 0:
                retry = 1
        if retry is not None:
            if key:
                self._limited_by_key[key] = self._limited_by_key.get(key, 0) + 1
            remaining = _ANTHROPIC_REMAINING if self._anthropic else _OPENAI_REMAINING
            extra = b"retry-after: %d\r\n%s" % (retry, remaining)
            message = "Number of requests has exceeded your rate limit."
            return self._error(request, rid, 429, message, code="rate_limit_exceeded", extra=extra)
        if key:
            self._by_key[key] = self._by_key.get(key, 0) + 1
        return None

    def _internal_error(self, request: _Request, exc: Exception) -> bytes:
        return self._error(request, self._next_id(), 500, f"mock backend error: {exc!r}")

    def _inject_failure(self, mode: str, handler: Handler, request: _Request, rid: bytes) -> Reply:
        """Misbehave in the configured way instead of answering normally."""
        opts = self.options
        if mode == "status":
            status = opts.fail_status
            code = "rate_limit_exceeded" if status == 429 else None
            message = f"injected failure ({status}) from mock backend"
            return self._error(request, rid, status, message, code=code)
        if mode == "reset":
            return _Plan([], _RESET)
        if mode == "hang":
            return _Plan([], _HANG)
        latency = opts.latency_ms / 1000.0
        if mode == "die-mid-stream":
            reply = handler(request, rid, False)
            if isinstance(reply, _Stream):
                if self._anthropic:
                    # The real API reports a failure after the stream began as an error event,
                    # then ends the body properly: the opening events, a delta, the error.
                    kept = reply.frames[: min(2, len(reply.frames) - 1)]
                    return _Plan([(0.0, reply.head), *kept, (0.0, mock_anthropic.STREAM_ERROR)])
                return _Plan([(0.0, reply.head), *reply.frames[:2]], _ABORT)
            body_start = reply.find(b"\r\n\r\n") + 4
            cut = body_start + (len(reply) - body_start) // 2
            return _Plan([(latency, reply[:cut])], _ABORT)
        # slow-stream: a generation that crawls; non-streaming requests wait for all of it.
        reply = handler(request, rid, True)
        if isinstance(reply, _Stream):
            return _Plan([(0.0, reply.head), *reply.frames])
        return _Plan([(latency + _SLOW_STREAM_ITL * opts.tokens, reply)])

    # response building ------------------------------------------------------------------------

    def _next_id(self) -> bytes:
        """A request id, unique per process: random prefix plus a counter."""
        self._id_counter += 1
        return b"%s%x" % (self._id_prefix, self._id_counter)

    def _head(
        self,
        request: _Request,
        rid: bytes,
        status: int,
        content_type: bytes,
        length: int | None,
        processing_ms: float = 0.0,
        extra: bytes = b"",
    ) -> bytes:
        """Status line and headers; ``length=None`` means a chunked body."""
        framing = _CHUNKED if length is None else b"content-length: %d\r\n" % length
        if self._cloud:
            extra += b"openai-processing-ms: %d\r\n" % int(processing_ms)
        if not request.keep_alive:
            extra += _CONNECTION_CLOSE
        return b"%s%s%sx-request-id: %s\r\n%s\r\n" % (
            _status_line(status),
            content_type,
            framing,
            rid,
            extra,
        )

    def _json(self, request: _Request, rid: bytes, body: bytes) -> bytes:
        """A complete 200 JSON response: head and body in one buffer, written with one call."""
        if request.keep_alive and not self._cloud:
            return _FAST_JSON_TEMPLATE % (len(body), rid, body)  # the benchmark's hot path
        return self._head(request, rid, 200, _JSON_TYPE, len(body), self.options.latency_ms) + body

    def _error(
        self,
        request: _Request,
        rid: bytes,
        status: int,
        message: str,
        *,
        code: str | None = None,
        extra: bytes = b"",
    ) -> bytes:
        if self._anthropic:
            body = mock_anthropic.error_body(status, message)
            return self._anthropic_head(request, rid, status, _JSON_TYPE, len(body), extra) + body
        body = _error_body(message, _error_type(status), code)
        return self._head(request, rid, status, _JSON_TYPE, len(body), 0.0, extra) + body

    def _bad_request(self, request: _Request, rid: bytes, exc: Exception) -> bytes:
        return self._error(request, rid, 400, f"invalid request body: {exc}")

    def _remember(self, key: tuple[Any, ...], value: _T) -> _T:
        """Store an encoded fragment that depends only on a few small request parameters."""
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()  # keys may include client-chosen values; stay bounded
        self._cache[key] = value
        return value

    def _answer(
        self, rid: bytes, model: str | None, n: int | None, body: bytes, limit: int | None
    ) -> _Answer:
        """Decide what a completion request gets: how many tokens, why it stops, usage."""
        opts = self.options
        count = opts.tokens
        finish = "stop"
        if limit is not None and limit < count:
            count, finish = limit, "length"
        pieces = None
        if opts.text is not None:
            pieces = self._text_pieces(opts.text)
            if len(pieces) > count:
                pieces, finish = pieces[:count], "length"
            else:
                count, finish = len(pieces), "stop"
        return _Answer(
            rid,
            _encode(model or opts.model),
            int(time.time()),
            n or 1,
            _prompt_tokens(body),
            count,
            finish,
            pieces,
        )

    def _text_pieces(self, text: str) -> tuple[str, ...]:
        """The pieces of the configured text, split once per change of the text."""
        known, pieces = self._pieces
        if known != text:
            pieces = _text_pieces(text)
            self._pieces = (text, pieces)
        return pieces

    def _timing(self, slow: bool) -> tuple[float, float]:
        """Seconds before the first token and between tokens."""
        opts = self.options
        return opts.ttft_ms / 1000.0, _SLOW_STREAM_ITL if slow else opts.itl_ms / 1000.0

    def _full(
        self,
        request: _Request,
        answer: _Answer,
        id_prefix: bytes,
        object_: bytes,
        choices: bytes,
        completion_tokens: int,
    ) -> bytes:
        """A complete (non-streamed) completion document with usage."""
        prompt = answer.prompt
        body = _COMPLETION_TEMPLATE % (
            id_prefix,
            answer.rid,
            object_,
            answer.created,
            answer.model,
            choices,
            prompt,
            completion_tokens,
            prompt + completion_tokens,
        )
        return self._json(request, answer.rid, body)

    def _stream(
        self,
        request: _Request,
        answer: _Answer,
        id_prefix: bytes,
        object_: bytes,
        encoded: EncodedFrames,
        completion_tokens: int,
        include_usage: bool,
        slow: bool,
    ) -> _Stream:
        """Frame a stream: every chunk, the usage chunk if asked for, ``[DONE]``, the last chunk."""
        ttft, itl = self._timing(slow)
        prefix = _CHUNK_PREFIX_TEMPLATE % (id_prefix, answer.rid, object_, answer.created, answer.model)
        due = (ttft, 0.0, itl)  # indexed by _AT_TTFT, _AT_ONCE, _AT_ITL
        frames = [(due[slot], _sse_chunk(prefix, choices)) for slot, choices in encoded]
        if include_usage:
            usage = _USAGE_CHUNK_TEMPLATE % answer.usage(completion_tokens)
            frames.append((0.0, _sse_chunk(prefix, usage)))
        frames.append((0.0, _STREAM_END))
        head = self._head(request, answer.rid, 200, _SSE_TYPE, None, ttft * 1000.0)
        return _Stream(head, frames)

    # endpoints --------------------------------------------------------------------------------

    def _build_models_body(self) -> bytes:
        opts = self.options
        if self._anthropic:
            return mock_anthropic.models_body((opts.model,), self._created)
        if self._cloud:
            data = [
                {
                    "id": opts.model,
                    "object": "model",
                    "created": self._created,
                    "owned_by": "mock-cloud",
                }
            ]
        else:
            data = [
                {
                    "id": model_id,
                    "object": "model",
                    "created": self._created,
                    "owned_by": "vllm",
                    "root": opts.model,
                    "parent": None if model_id == opts.model else opts.model,
                    "max_model_len": 32768,
                }
                for model_id in (opts.model, *opts.lora)
            ]
        return _encode({"object": "list", "data": data})

    def _models(self, request: _Request, rid: bytes, slow: bool) -> bytes:
        return self._json(request, rid, self._models_body)

    def _health(self, request: _Request, rid: bytes, slow: bool) -> bytes:
        return self._head(request, rid, 200, b"", 0)

    def _chat(self, request: _Request, rid: bytes, slow: bool) -> bytes | _Stream:
        try:
            body = _CHAT_DECODER.decode(request.body)
        except msgspec.DecodeError as exc:
            return self._bad_request(request, rid, exc)
        answer = self._answer(
            rid, body.model, body.n, request.body, body.max_completion_tokens or body.max_tokens
        )
        tool = _chosen_tool(body) if body.tools else None
        fmt = body.response_format
        json_mode = fmt is not None and fmt.type in _JSON_FORMATS
        if tool is not None:
            answer.finish = "tool_calls"
        n = answer.n
        # The canned answer without logprobs takes the cached paths; anything else is built here.
        custom = tool is None and (answer.pieces is not None or bool(body.logprobs))
        tokens = answer.pieces
        if custom and tokens is None:
            tokens = _answer_tokens(answer.count, json_mode)
        logprobs = None
        if custom and body.logprobs:
            assert tokens is not None
            logprobs = _logprobs_content(tokens, self.options.logprob, body.top_logprobs or 0)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            if tool is not None:
                per_choice = [_tool_call_deltas(rid, i, tool) for i in range(n)]
                encoded = _chat_frames(per_choice, answer.finish)  # ids differ: not cacheable
                completion = _TOOL_CALL_TOKENS * n
            elif tokens is not None:
                deltas = [{"content": token} for token in tokens]
                per_token = None if logprobs is None else [{"content": [entry]} for entry in logprobs]
                encoded = _chat_frames([deltas] * n, answer.finish, per_token)
                completion = answer.count * n
            else:
                encoded = self._chat_stream_frames(n, answer.count, json_mode, answer.finish)
                completion = answer.count * n
            return self._stream(
                request,
                answer,
                b"chatcmpl-",
                b"chat.completion.chunk",
                encoded,
                completion,
                include_usage,
                slow,
            )

        if tool is not None:
            choices = _encode([_tool_choice(rid, i, tool) for i in range(n)])
            completion = _TOOL_CALL_TOKENS * n
        elif tokens is not None:
            message = {"role": "assistant", "content": "".join(tokens)}
            document = None if logprobs is None else {"content": logprobs}
            choices = _encode(
                [
                    {"index": i, "message": message, "logprobs": document, "finish_reason": answer.finish}
                    for i in range(n)
                ]
            )
            completion = answer.count * n
        else:
            choices = self._chat_choices(n, answer.count, json_mode, answer.finish)
            completion = answer.count * n
        return self._full(request, answer, b"chatcmpl-", b"chat.completion", choices, completion)

    def _chat_choices(self, n: int, count: int, json_mode: bool, finish: str) -> bytes:
        """The encoded ``choices`` of a canned chat answer (the throughput benchmark's hot path)."""
        key = ("chat", n, count, json_mode, finish)
        cached: bytes | None = self._cache.get(key)
        if cached is not None:
            return cached
        message = {"role": "assistant", "content": "".join(_answer_tokens(count, json_mode))}
        choices = [
            {"index": i, "message": message, "logprobs": None, "finish_reason": finish} for i in range(n)
        ]
        return self._remember(key, _encode(choices))

    def _chat_stream_frames(self, n: int, count: int, json_mode: bool, finish: str) -> EncodedFrames:
        """The encoded frames of a canned chat stream; only the per-request prefix varies."""
        key = ("chat-stream", n, count, json_mode, finish)
        cached: EncodedFrames | None = self._cache.get(key)
        if cached is not None:
            return cached
        deltas = [{"content": token} for token in _answer_tokens(count, json_mode)]
        return self._remember(key, _chat_frames([deltas] * n, finish))

    def _completions(self, request: _Request, rid: bytes, slow: bool) -> bytes | _Stream:
        try:
            body = _COMPLETION_DECODER.decode(request.body)
        except msgspec.DecodeError as exc:
            return self._bad_request(request, rid, exc)
        answer = self._answer(rid, body.model, body.n, request.body, body.max_tokens)
        n, count, pieces = answer.n, answer.count, answer.pieces
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            encoded: EncodedFrames | None
            if pieces is not None:
                encoded = _completion_frames(n, pieces, answer.finish)
            else:
                key = ("text-stream", n, count, answer.finish)
                encoded = self._cache.get(key)
                if encoded is None:
                    frames = _completion_frames(n, _answer_tokens(count, False), answer.finish)
                    encoded = self._remember(key, frames)
            return self._stream(
                request, answer, b"cmpl-", b"text_completion", encoded, count * n, include_usage, slow
            )
        if pieces is not None:
            text = "".join(pieces)
            documents = [
                {"index": i, "text": text, "logprobs": None, "finish_reason": answer.finish} for i in range(n)
            ]
            return self._full(request, answer, b"cmpl-", b"text_completion", _encode(documents), count * n)
        key = ("text", n, count, answer.finish)
        choices = self._cache.get(key)
        if choices is None:
            text = "".join(_answer_tokens(count, False))
            documents = [
                {"index": i, "text": text, "logprobs": None, "finish_reason": answer.finish} for i in range(n)
            ]
            choices = self._remember(key, _encode(documents))
        return self._full(request, answer, b"cmpl-", b"text_completion", choices, count * n)

    def _embeddings(self, request: _Request, rid: bytes, slow: bool) -> bytes:
        try:
            body = _EMBEDDING_DECODER.decode(request.body)
        except msgspec.DecodeError as exc:
            return self._bad_request(request, rid, exc)
        items = _embedding_inputs(body.input)
        if not items:
            return self._error(request, rid, 400, "input must not be empty")
        as_base64 = body.encoding_format == "base64"
        data = []
        for index, item in enumerate(items):
            vector = _embedding(item)
            embedding: Any = vector
            if as_base64:
                # Same layout as OpenAI: little-endian float32, base64-encoded.
                packed = struct.pack(f"<{len(vector)}f", *vector)
                embedding = base64.b64encode(packed).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        prompt = _prompt_tokens(request.body)
        document = {
            "id": "embd-" + rid.decode("ascii"),
            "object": "list",
            "created": int(time.time()),
            "model": body.model or self.options.model,
            "data": data,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        return self._json(request, rid, _encode(document))

    # Anthropic endpoints ----------------------------------------------------------------------

    def _anthropic_head(
        self,
        request: _Request,
        rid: bytes,
        status: int,
        content_type: bytes,
        length: int | None,
        extra: bytes = b"",
    ) -> bytes:
        """Status line and headers in the Anthropic style; ``length=None`` means a chunked body."""
        framing = _CHUNKED if length is None else b"content-length: %d\r\n" % length
        if not request.keep_alive:
            extra += _CONNECTION_CLOSE
        return b"%s%s%srequest-id: req_%s\r\n%s\r\n" % (
            _status_line(status),
            content_type,
            framing,
            rid,
            extra,
        )

    def _anthropic_json(self, request: _Request, rid: bytes, body: bytes) -> bytes:
        return self._anthropic_head(request, rid, 200, _JSON_TYPE, len(body)) + body

    def _anthropic_models(self, request: _Request, rid: bytes, slow: bool) -> bytes:
        return self._anthropic_json(request, rid, self._models_body)

    def _count_tokens(self, request: _Request, rid: bytes, slow: bool) -> bytes:
        try:
            body = _COUNT_TOKENS_DECODER.decode(request.body)
        except msgspec.DecodeError as exc:
            return self._bad_request(request, rid, exc)
        if not body.messages:
            return self._error(request, rid, 400, "messages: at least one message is required")
        return self._anthropic_json(request, rid, b'{"input_tokens":%d}' % _prompt_tokens(request.body))

    def _messages(self, request: _Request, rid: bytes, slow: bool) -> bytes | _Stream:
        try:
            body = _MESSAGES_DECODER.decode(request.body)
        except msgspec.DecodeError as exc:
            return self._bad_request(request, rid, exc)
        if not body.messages:
            return self._error(request, rid, 400, "messages: at least one message is required")
        answer = self._answer(rid, body.model, 1, request.body, body.max_tokens)
        tool = mock_anthropic.chosen_tool(body)
        if tool is not None:
            arguments = mock_anthropic.tool_input(tool)
            if body.stream:
                # The block opens with an empty input, which follows as two input_json_delta
                # pieces (like the chat flavour's two deltas).
                block = mock_anthropic.tool_use_block(rid, tool, {})
                encoded = _encode(arguments).decode()
                half = len(encoded) // 2
                pieces = mock_anthropic.json_deltas((encoded[:half], encoded[half:]))
                return self._anthropic_stream(
                    request, answer, block, pieces, "tool_use", None, _TOOL_CALL_TOKENS, slow
                )
            block = mock_anthropic.tool_use_block(rid, tool, arguments)
            document = mock_anthropic.message(
                rid, answer.model, _encode([block]), "tool_use", None, answer.prompt, _TOOL_CALL_TOKENS
            )
            return self._anthropic_json(request, rid, document)

        stop = mock_anthropic.stop_reason(answer.finish)
        count, tokens, matched = answer.count, answer.pieces, None
        if body.stop_sequences:
            words = tokens if tokens is not None else _answer_tokens(count, False)
            cut, matched = mock_anthropic.cut_at_stop_sequence(words, body.stop_sequences)
            if matched is not None:
                count, tokens, stop = len(cut), cut, "stop_sequence"
        # The canned answer takes the cached paths; a configured or cut text is built here.
        if body.stream:
            deltas: list[bytes] | None
            if tokens is not None:
                deltas = mock_anthropic.text_deltas(tokens)
            else:
                key = ("anthropic-stream", count)
                deltas = self._cache.get(key)
                if deltas is None:
                    deltas = self._remember(key, mock_anthropic.text_deltas(_answer_tokens(count, False)))
            return self._anthropic_stream(request, answer, None, deltas, stop, matched, count, slow)
        content: bytes | None
        if tokens is not None:
            content = mock_anthropic.text_content("".join(tokens))
        else:
            key = ("anthropic", count)
            content = self._cache.get(key)
            if content is None:
                text = "".join(_answer_tokens(count, False))
                content = self._remember(key, mock_anthropic.text_content(text))
        document = mock_anthropic.message(rid, answer.model, content, stop, matched, answer.prompt, count)
        return self._anthropic_json(request, rid, document)

    def _anthropic_stream(
        self,
        request: _Request,
        answer: _Answer,
        block: dict[str, Any] | None,
        deltas: list[bytes],
        stop: str,
        stop_sequence: str | None,
        output_tokens: int,
        slow: bool,
    ) -> _Stream:
        """Time a Messages stream like the chat stream.

        The opening events come at TTFT together with the first delta, later deltas one ITL
        apart, and the closing events right after the last.
        """
        ttft, itl = self._timing(slow)
        frames = [(ttft, mock_anthropic.stream_start(answer.rid, answer.model, answer.prompt, block))]
        frames.extend((itl if i else 0.0, delta) for i, delta in enumerate(deltas))
        frames.append((0.0, mock_anthropic.stream_end(stop, stop_sequence, output_tokens)))
        return _Stream(self._anthropic_head(request, answer.rid, 200, _SSE_TYPE, None), frames)

    # control API ------------------------------------------------------------------------------

    def _control(self, request: _Request, path: bytes, rid: bytes) -> bytes:
        """The ``/_mock/`` endpoints: never recorded, counted or failure-injected."""
        method = request.method
        if path == b"/_mock/requests":
            if method == b"GET":
                return self._json(request, rid, _encode(self.recorded()))
            if method == b"DELETE":
                self.reset()
                return self._json(request, rid, b'{"cleared":true}')
            return self._not_allowed(request, rid, b"GET, DELETE")
        if path == b"/_mock/stats":
            if method == b"GET":
                return self._json(request, rid, _encode(self.stats()))
            return self._not_allowed(request, rid, b"GET")
        if path == b"/_mock/config":
            if method == b"POST":
                try:
                    self._apply(_PATCH_DECODER.decode(request.body))
                except msgspec.DecodeError as exc:
                    return self._bad_request(request, rid, exc)
            elif method != b"GET":
                return self._not_allowed(request, rid, b"GET, POST")
            return self._json(request, rid, _encode(self.options))
        message = f"Invalid URL ({path.decode('latin-1')})"
        return self._error(request, rid, 404, message, code="unknown_url")

    def _not_allowed(self, request: _Request, rid: bytes, allow: bytes) -> bytes:
        extra = b"allow: %s\r\n" % allow
        return self._error(request, rid, 405, "Method Not Allowed", extra=extra)


class BackendHandle:
    """A :class:`MockBackend` running on its own event loop in a daemon thread.

    Use it as a context manager or call :meth:`stop`. ``url`` is the OpenAI base URL.
    """

    def __init__(self, backend: MockBackend) -> None:
        self.backend = backend
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="mock-backend", daemon=True)

    @property
    def port(self) -> int:
        return self.backend.port

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def root_url(self) -> str:
        return self.backend.root_url

    def _start(self, timeout: float) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("mock backend did not start in time")
        if self._error is not None:
            self._thread.join()
            raise self._error

    def _main(self) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            await self.backend.start()
        except BaseException as exc:  # reported to the caller of run_in_thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await self.backend.close()

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``function`` on the backend's loop and return its result (thread-safe)."""
        if self._loop is None or not self._thread.is_alive():
            raise RuntimeError("mock backend is not running")

        async def invoke() -> Any:
            return function(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(timeout=10)

    def configure(self, **changes: Any) -> None:
        """Thread-safe :meth:`MockBackend.configure`."""
        self.call(self.backend.configure, **changes)

    def stats(self) -> dict[str, Any]:
        """Thread-safe :meth:`MockBackend.stats`."""
        return self.call(self.backend.stats)  # type: ignore[no-any-return]

    def recorded(self) -> list[dict[str, Any]]:
        """Thread-safe :meth:`MockBackend.recorded`."""
        return self.call(self.backend.recorded)  # type: ignore[no-any-return]

    def stop(self, timeout: float = 5.0) -> None:
        """Close the server and its connections, then end the thread and its loop."""
        loop, event = self._loop, self._stop_event
        if self._thread.is_alive() and loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop finished meanwhile
                loop.call_soon_threadsafe(event.set)
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def __enter__(self) -> BackendHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_in_thread(
    options: MockOptions | None = None, *, start_timeout: float = 10.0, **overrides: Any
) -> BackendHandle:
    """Start a mock backend in a daemon thread and return once it accepts connections.

    Defaults to an ephemeral port on 127.0.0.1; pass ``MockOptions`` and/or option keywords.
    """
    handle = BackendHandle(MockBackend(options, **overrides))
    handle._start(start_timeout)
    return handle


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


def _split_lora(value: str) -> tuple[str, ...]:
    """``a,b`` or vLLM-style ``a=/path,b=/path``: adapter names only."""
    names = (part.split("=", 1)[0].strip() for part in value.split(","))
    return tuple(name for name in names if name)


def _split_keys(value: str) -> tuple[str, ...]:
    return tuple(key for key in (part.strip() for part in value.split(",")) if key)


def _rate_limited_key(value: str) -> tuple[str, float]:
    """``KEY=SECONDS`` as a pair; the key itself may contain ``=``, the seconds may not."""
    key, sep, seconds = value.rpartition("=")
    try:
        delay = float(seconds)
    except ValueError:
        delay = -1.0
    if not sep or not key or not delay >= 0.0:
        raise argparse.ArgumentTypeError(f"expected KEY=SECONDS with SECONDS >= 0, got {value!r}")
    return key, delay


def parse_args(argv: Sequence[str] | None = None) -> MockOptions:
    """Parse command-line flags into validated :class:`MockOptions`."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.mock_backend",
        description="Mock LLM backend: vLLM, OpenAI-like cloud or Anthropic Messages API flavour.",
    )
    parser.add_argument("--flavor", choices=("vllm", "cloud", "anthropic"), default="vllm")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--model", default="qwen-9b")
    parser.add_argument("--lora", type=_split_lora, default=(), help="comma-separated adapter names")
    parser.add_argument(
        "--api-key",
        dest="api_keys",
        type=_split_keys,
        default=(),
        metavar="KEY[,KEY...]",
        help="accept only these keys, sent as 'Authorization: Bearer KEY' (the anthropic flavour "
        "also takes 'x-api-key: KEY'); default: any key, or none",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay of non-streaming answers")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="delay before the first token")
    parser.add_argument("--itl-ms", type=float, default=0.0, help="delay between tokens")
    parser.add_argument("--tokens", type=int, default=16, help="words in the canned answer")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="probability of a failure")
    parser.add_argument(
        "--fail-mode",
        choices=("status", "reset", "hang", "die-mid-stream", "slow-stream"),
        default="status",
    )
    parser.add_argument("--fail-status", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="seed for failure injection")
    parser.add_argument(
        "--text",
        default=None,
        help="answer every completion with exactly this text (split into pieces before each run of "
        "whitespace; --tokens and max_tokens cap the pieces) instead of the canned words",
    )
    parser.add_argument(
        "--logprob",
        type=float,
        default=-0.05,
        help="log-probability of every token when a chat request asks for logprobs (<= 0)",
    )
    parser.add_argument(
        "--rate-limited-key",
        dest="rate_limited_keys",
        type=_rate_limited_key,
        action="append",
        default=[],
        metavar="KEY=SECONDS",
        help="answer requests with this key with 429 and 'retry-after: SECONDS' (rounded up) until "
        "/_mock/config changes it; repeatable",
    )
    parser.add_argument(
        "--rate-limit-every",
        type=int,
        default=0,
        metavar="N",
        help="answer every Nth request with 429 and 'retry-after: 1' (0: never)",
    )
    args = parser.parse_args(argv)
    values = vars(args)
    values["rate_limited_keys"] = dict(values["rate_limited_keys"])
    try:
        return msgspec.convert(values, MockOptions)
    except msgspec.ValidationError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


async def _serve_forever(options: MockOptions) -> int:
    backend = MockBackend(options)
    await backend.start()
    host = options.host if ":" not in options.host else f"[{options.host}]"
    print(f"mock-backend listening on http://{host}:{backend.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await backend.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m bench.mock_backend``."""
    options = parse_args(argv)
    return uvloop.run(_serve_forever(options))


if __name__ == "__main__":
    sys.exit(main())
