"""How sure a model was of its answer, read off the logprobs it returned (the confidence cascade).

The cheap tier is asked for ``logprobs`` (when the client did not ask itself); the answer's
confidence is the mean, or the minimum, of its tokens' log-probabilities. Logprobs the client did
not ask for are taken out of the answer again before it is sent.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tiermux._speedups import jsonscan

__all__ = ["ask_for_logprobs", "confidence", "strip_logprobs"]

_ASK = b'"logprobs":true,'


class _Token(msgspec.Struct):
    logprob: float = 0.0


class _Logprobs(msgspec.Struct):
    content: list[_Token] | None = None


class _Choice(msgspec.Struct):
    logprobs: _Logprobs | None = None


class _Answer(msgspec.Struct):
    choices: list[_Choice] = []


_decode = msgspec.json.Decoder(_Answer).decode


def ask_for_logprobs(body: bytes) -> bytes | None:
    """``body`` asking for logprobs, or None when it says something of them itself."""
    try:
        if jsonscan.value_span(body, b"logprobs")[0] >= 0:
            return None
    except jsonscan.ScanError:
        return None
    brace = body.index(b"{")
    return body[: brace + 1] + _ASK + body[brace + 1 :]


def confidence(answer: bytes, measure: str) -> float | None:
    """The mean (or minimum) logprob of the first choice's tokens; None without logprobs."""
    try:
        choices = _decode(answer).choices
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if not choices or choices[0].logprobs is None or not choices[0].logprobs.content:
        return None
    values = [token.logprob for token in choices[0].logprobs.content]
    return min(values) if measure == "min" else sum(values) / len(values)


def strip_logprobs(answer: bytes) -> bytes:
    """``answer`` without the logprobs tiermux asked for (every choice's set to null)."""
    try:
        parsed: Any = msgspec.json.decode(answer)
    except msgspec.DecodeError:
        return answer
    for choice in parsed.get("choices") or () if isinstance(parsed, dict) else ():
        if isinstance(choice, dict) and "logprobs" in choice:
            choice["logprobs"] = None
    return msgspec.json.encode(parsed)
