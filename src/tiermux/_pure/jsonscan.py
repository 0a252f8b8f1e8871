"""Find where a top-level JSON member's value sits in a request body, without decoding it.

tiermux forwards bodies as bytes and rewrites only ``model``; this scanner gives the byte span to
splice. Two glances at an answer's bytes serve the quality safety net, which looks at every answer
and can't afford to decode them: where the first text of an answer is (``first_text``), and
whether any of some words is near it (``AnyOf``). It is the pure twin of ``csrc/jsonscan.pyx``:
same signatures, results and exceptions.
The body is expected to be valid JSON already (msgspec has decoded the routing fields from it);
on anything else the scanner raises :class:`ScanError` rather than reading out of bounds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

__all__ = ["AnyOf", "ScanError", "first_text", "value_span"]


class ScanError(ValueError):
    """The body is not a JSON object the scanner can walk."""


_WS = b" \t\r\n"
# A string's body up to the closing quote: runs of ordinary bytes, each escape with its next byte
# (unrolled, so the regex engine takes whole runs at once instead of one byte per alternation).
_STRING_TAIL = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SCALAR_END = re.compile(rb"[ \t\r\n,}\]]")


def _skip_ws(body: bytes, i: int, n: int) -> int:
    while i < n and body[i] in _WS:
        i += 1
    return i


def _string_end(body: bytes, i: int) -> int:
    """``body[i]`` is an opening quote; return the index after the closing quote."""
    match = _STRING_TAIL.match(body, i + 1)
    if match is None:
        raise ScanError(f"unterminated string at byte {i}")
    return match.end()


def _value_end(body: bytes, i: int, n: int) -> int:
    if i >= n:
        raise ScanError("unexpected end of input")
    c = body[i]
    if c == 0x22:  # "
        return _string_end(body, i)
    if c in b"{[":
        depth = 0
        while i < n:
            c = body[i]
            if c == 0x22:
                i = _string_end(body, i)
                continue
            if c in b"{[":
                depth += 1
            elif c in b"}]":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        raise ScanError("unterminated container")
    match = _SCALAR_END.search(body, i)
    end = n if match is None else match.start()
    if end == i:
        raise ScanError(f"expected a value at byte {i}")
    return end


def _key_matches(raw: bytes, key: bytes) -> bool:
    if b"\\" not in raw:
        return raw == key
    try:  # an escaped key ("mod\u0065l") means the same member to any JSON decoder
        return bool(json.loads(b'"' + raw + b'"').encode() == key)
    except ValueError:
        return False


def value_span(body: bytes, key: bytes) -> tuple[int, int]:
    """Return ``(start, end)`` of the value of top-level member ``key``, or ``(-1, -1)``.

    With duplicate keys the last one wins, as it does for msgspec and the json module.
    """
    n = len(body)
    i = _skip_ws(body, 0, n)
    if i >= n or body[i] != 0x7B:  # {
        raise ScanError("expected a JSON object")
    found = (-1, -1)
    i = _skip_ws(body, i + 1, n)
    if i < n and body[i] == 0x7D:  # }
        return found
    while True:
        if i >= n or body[i] != 0x22:
            raise ScanError(f"expected a member name at byte {i}")
        key_end = _string_end(body, i)
        raw_key = body[i + 1 : key_end - 1]
        i = _skip_ws(body, key_end, n)
        if i >= n or body[i] != 0x3A:  # :
            raise ScanError(f"expected ':' at byte {i}")
        i = _skip_ws(body, i + 1, n)
        start = i
        i = _value_end(body, i, n)
        if _key_matches(raw_key, key):
            found = (start, i)
        i = _skip_ws(body, i, n)
        if i >= n:
            raise ScanError("unterminated object")
        c = body[i]
        if c == 0x7D:
            return found
        if c != 0x2C:  # ,
            raise ScanError(f"expected ',' or '}}' at byte {i}")
        i = _skip_ws(body, i + 1, n)


# How the members holding an answer's text are spelled: compact, or with one space after the colon
# (chat completions and their stream deltas say "content", completions "text").
TEXT_KEYS = (b'"content":"', b'"content": "', b'"text":"', b'"text": "')


def first_text(data: bytes) -> int:
    """Where the first non-empty string value of a ``content`` or ``text`` member opens (the
    index of its quote), or -1: an empty value (a stream's first delta has one) doesn't count."""
    found = -1
    for key in TEXT_KEYS:
        at = data.find(key)
        while at >= 0 and data[at + len(key) : at + len(key) + 1] == b'"':
            at = data.find(key, at + 1)
        if at >= 0 and (found < 0 or at + len(key) - 1 < found):
            found = at + len(key) - 1
    return found


class AnyOf:
    """Words looked for together in bytes, ignoring ASCII case."""

    __slots__ = ("words",)

    def __init__(self, words: Iterable[bytes]) -> None:
        self.words = tuple(word.lower() for word in words)
        if not self.words or not all(self.words):
            raise ValueError("AnyOf needs words, none of them empty")

    def __repr__(self) -> str:
        return f"<AnyOf {len(self.words)} words>"

    def search(self, data: bytes, start: int, end: int) -> int:
        """Where the first of the words to occur wholly inside ``data[start:end]`` starts, or -1."""
        start = max(0, start)
        window = data[start : max(start, end)].lower()  # no wrapping: a negative end means none
        found = -1
        for word in self.words:
            at = window.find(word)
            if at >= 0 and (found < 0 or at < found):
                found = at
        return found if found < 0 else start + found
