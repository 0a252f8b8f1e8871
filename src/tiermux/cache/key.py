"""The exact-cache key of a request: an xxh3-128 digest of the canonical form of everything that
changes the answer.

What goes in: the service (tenants never share answers), the backend and model the request was
routed to, the endpoint, and every body field that changes the output: the conversation
(``messages``, or ``prompt`` / ``input``), tools and tool choice (and the legacy functions),
``response_format``, ``stop``, the sampling parameters (``temperature``, ``top_p``, ``seed``,
the penalties, ``logit_bias``), the length limits, ``n``, ``logprobs`` and ``top_logprobs``.
What stays out: ``stream`` and ``stream_options`` (an answer can be replayed in either form),
``user``, ``metadata`` and the like, which don't change the text.

Canonical form (``tiermux._speedups.canonical``, compiled with a pure twin): the body's members
that matter, objects' keys sorted, no insignificant whitespace, escapes resolved, numbers in one
spelling (``0``, ``0.0`` and ``0e0`` agree), in one pass over the body. The digest is xxhash's C
XXH3-128 of the service, backend, model and endpoint, then that form. Whether a request may be
cached at all (``deterministic``) reads ``temperature`` and ``seed`` apart (msgspec, typed).

A second key, ``asked_key``, names the request as the client asked it (the model as sent instead
of the routed backend): the proxy remembers the routing decision of each request under it, so
that a repeated request finds its answer without being classified again.
"""

from __future__ import annotations

import msgspec
import xxhash

from tiermux._speedups import canonical

__all__ = [
    "KEY_FIELDS",
    "CacheKeyError",
    "Sampling",
    "answer_key",
    "asked_key",
    "cache_key",
    "canonical_form",
    "deterministic",
    "sampling_of",
]

# The body members that change an answer; everything else (stream, stream_options, user,
# metadata, model: the routed backend's model counts instead) is left out of the key.
KEY_FIELDS = frozenset(
    name.encode()
    for name in (
        "messages",
        "prompt",
        "input",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "parallel_tool_calls",
        "response_format",
        "stop",
        "temperature",
        "top_p",
        "seed",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "echo",
        "suffix",
        "best_of",
        "dimensions",
        "encoding_format",
        "reasoning_effort",
        "modalities",
        "top_k",
        "verbosity",
        "web_search_options",
        # Anthropic's Messages API has these too
        "system",
        "stop_sequences",
        "thinking",
        "output_config",
        "context_management",
        "mcp_servers",
        "container",
    )
)

CacheKeyError = canonical.CanonicalError


class Sampling(msgspec.Struct):
    """What decides whether the same request gets the same answer."""

    temperature: float | None = None
    seed: int | None = None


_decode_sampling = msgspec.json.Decoder(Sampling).decode


# The encoded route of each (service, backend, model, endpoint): there are a handful per config,
# and building one costs as much as hashing a short body. Bounded in case names ever come from
# requests.
_routes: dict[tuple[str, str, str, str], bytes] = {}
_MAX_ROUTES = 4096


def _route(service: str, backend: str, model: str, endpoint: str) -> bytes:
    names = (service, backend, model, endpoint)
    route = _routes.get(names)
    if route is None:
        route = f"{service}\0{backend}\0{model}\0{endpoint}\0".encode()
        if len(_routes) >= _MAX_ROUTES:
            _routes.clear()
        _routes[names] = route
    return route


def cache_key(body: bytes, endpoint: str, service: str, backend: str, model: str) -> bytes:
    """16 bytes naming the answer to ``body`` from ``backend``/``model``, for ``service``;
    :class:`CacheKeyError` for a body that is not a JSON object."""
    route = _route(service, backend, model, endpoint)
    return xxhash.xxh3_128_digest(canonical.canonical(body, KEY_FIELDS, route))


def canonical_form(body: bytes) -> bytes:
    """The canonical form of the members of ``body`` that change an answer (``CacheKeyError``
    for a body that is not a JSON object). The proxy computes it once per request and hashes it
    into both keys: ``asked_key`` before routing, ``answer_key`` after."""
    return canonical.canonical(body, KEY_FIELDS)


def answer_key(form: bytes, endpoint: str, service: str, backend: str, model: str) -> bytes:
    """``cache_key`` of the body whose canonical form is ``form``."""
    return xxhash.xxh3_128_digest(_route(service, backend, model, endpoint) + form)


def asked_key(form: bytes, endpoint: str, service: str, asked_model: bytes, overrides: bytes) -> bytes:
    """16 bytes naming a request as the client asked it, before routing: the model as sent (its
    raw JSON) and the routing headers it may carry, in place of the backend routing chose."""
    asked = b"\0".join((service.encode(), endpoint.encode(), asked_model, overrides, b""))
    return xxhash.xxh3_128_digest(b"\1" + asked + form)


def sampling_of(body: bytes) -> Sampling:
    try:
        return _decode_sampling(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CacheKeyError(str(exc)) from None


def deterministic(sampling: Sampling) -> bool:
    """Whether the same request gets the same answer: greedy decoding, or a fixed seed."""
    return sampling.temperature == 0 or sampling.seed is not None
