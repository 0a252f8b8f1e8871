"""The exact-cache key of a request: an xxh3-128 digest of the canonical form of everything that
changes the answer.

What goes in: the service (tenants never share answers), the backend and model the request was
routed to, the endpoint, and every body field that changes the output: the conversation
(``messages``, or ``prompt`` / ``input``), tools and tool choice (and the legacy functions),
``response_format``, ``stop``, the sampling parameters (``temperature``, ``top_p``, ``seed``,
the penalties, ``logit_bias``), the length limits, ``n``, ``logprobs`` and ``top_logprobs``.
What stays out: ``stream`` and ``stream_options`` (an answer can be replayed in either form),
``user``, ``metadata`` and the like, which don't change the text.

Canonical form: the fields are decoded (msgspec, C) and encoded again with every object's keys
sorted and no insignificant whitespace, so key order and formatting don't change the key. Scalar
parameters are typed, so ``"temperature": 0`` and ``0.0`` are the same request. Hashing is
xxhash's C implementation of XXH3-128.
"""

from __future__ import annotations

from typing import Any

import msgspec
import xxhash

__all__ = ["CacheKeyError", "KeyFields", "cache_key", "deterministic"]

_UNSET: Any = msgspec.UNSET


class KeyFields(msgspec.Struct, omit_defaults=True):
    """The body fields that change an answer (the rest of the body is ignored)."""

    messages: Any = _UNSET
    prompt: Any = _UNSET
    input: Any = _UNSET
    tools: Any = _UNSET
    tool_choice: Any = _UNSET
    functions: Any = _UNSET
    function_call: Any = _UNSET
    parallel_tool_calls: bool | None = None
    response_format: Any = _UNSET
    stop: Any = _UNSET
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: Any = _UNSET
    logprobs: Any = _UNSET
    top_logprobs: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    dimensions: int | None = None
    encoding_format: str | None = None
    reasoning_effort: str | None = None
    modalities: Any = _UNSET


class CacheKeyError(ValueError):
    """The body can't be keyed (not a JSON object, or a typed parameter of the wrong type)."""


_decode = msgspec.json.Decoder(KeyFields).decode
_canonical = msgspec.json.Encoder(order="sorted").encode


def decode_key_fields(body: bytes) -> KeyFields:
    try:
        return _decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CacheKeyError(str(exc)) from None


def cache_key(fields: KeyFields, endpoint: str, service: str, backend: str, model: str) -> bytes:
    """16 bytes naming the answer to ``fields`` from ``backend``/``model``, for ``service``."""
    canonical = _canonical((service, backend, model, endpoint, fields))
    return xxhash.xxh3_128_digest(canonical)


def deterministic(fields: KeyFields) -> bool:
    """Whether the same request gets the same answer: greedy decoding, or a fixed seed."""
    return fields.temperature == 0 or fields.seed is not None
