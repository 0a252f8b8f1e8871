"""Pure-Python twin of ``tiermux._ext.canonical``: the canonical JSON of a body's top-level members.

Canonical form, so that two bodies that mean the same get the same bytes:

- objects: members sorted by key (bytewise, on the canonical key), the last of duplicate keys
  kept; no whitespace anywhere;
- strings: escapes resolved, then written again with only ``"``, ``\\`` and control characters
  escaped (``\\u00XX``), everything else as UTF-8 bytes; a lone surrogate stays ``\\udXXX``;
- numbers: an integer literal as the integer; any other number as a float, written as an integer
  when it is one (below 2**53) and by ``repr`` otherwise, so ``0``, ``0.0`` and ``0e0`` agree;
- ``true``, ``false``, ``null`` as they are.

Only the members of the top-level object whose keys are in ``fields`` are kept (all of them when
``fields`` is None); the values of the others are passed over by their brackets, not read. The
result starts with ``prefix``: a caller that hashes something before the form (the cache key's
route) gets both in one bytes object, without a second copy of the form.
Both twins give the same bytes and raise the same ``CanonicalError``.
"""

from __future__ import annotations

from collections.abc import Collection

__all__ = ["MAX_DEPTH", "CanonicalError", "canonical"]

MAX_DEPTH = 128
_WS = b" \t\n\r"
_SIMPLE_ESCAPES = {
    ord("/"): "/",
    ord("b"): "\b",
    ord("f"): "\f",
    ord("n"): "\n",
    ord("r"): "\r",
    ord("t"): "\t",
}
_NUMBER = frozenset(b"+-0123456789.eE")
_DIGITS = frozenset(b"0123456789")


class CanonicalError(ValueError):
    """Not a JSON object, or not valid JSON where it had to be read."""


def canonical(body: bytes, fields: Collection[bytes] | None = None, prefix: bytes = b"") -> bytes:
    """``prefix`` then the canonical form of the top-level object of ``body``, keeping the
    members named in ``fields`` (all when None)."""
    i = _skip(body, 0)
    if i >= len(body) or body[i] != 0x7B:
        raise CanonicalError("expected a JSON object")
    out, i = _object(body, i, 0, fields)
    i = _skip(body, i)
    if i != len(body):
        raise CanonicalError(f"unexpected data after the object at byte {i}")
    return prefix + out


def _skip(body: bytes, i: int) -> int:
    n = len(body)
    while i < n and body[i] in _WS:
        i += 1
    return i


def _value(body: bytes, i: int, depth: int) -> tuple[bytes, int]:
    if i >= len(body):
        raise CanonicalError("unexpected end of the body")
    c = body[i]
    if c == 0x22:
        return _string(body, i)
    if c == 0x7B:
        return _object(body, i, depth + 1, None)
    if c == 0x5B:
        return _array(body, i, depth + 1)
    for literal in (b"true", b"false", b"null"):
        if body.startswith(literal, i):
            return literal, i + len(literal)
    if c in _NUMBER:
        return _number(body, i)
    raise CanonicalError(f"unexpected byte {chr(c)!r} at {i}")


def _object(body: bytes, i: int, depth: int, fields: Collection[bytes] | None) -> tuple[bytes, int]:
    if depth > MAX_DEPTH:
        raise CanonicalError("nested too deeply")
    members: dict[bytes, bytes] = {}
    i = _skip(body, i + 1)
    if i < len(body) and body[i] == 0x7D:
        return b"{}", i + 1
    while True:
        if i >= len(body) or body[i] != 0x22:
            raise CanonicalError(f"expected a member name at byte {i}")
        key, i = _string(body, i)
        i = _skip(body, i)
        if i >= len(body) or body[i] != 0x3A:
            raise CanonicalError(f"expected ':' at byte {i}")
        i = _skip(body, i + 1)
        if fields is not None and key[1:-1] not in fields:
            i = _pass_over(body, i)  # not part of the form: only its end is looked for
        else:
            value, i = _value(body, i, depth)
            members.pop(key, None)  # the last of duplicates wins, as with most parsers
            members[key] = value
        i = _skip(body, i)
        if i < len(body) and body[i] == 0x2C:
            i = _skip(body, i + 1)
            continue
        if i < len(body) and body[i] == 0x7D:
            break
        raise CanonicalError(f"expected ',' or '}}' at byte {i}")
    return b"{" + b",".join(k + b":" + members[k] for k in sorted(members)) + b"}", i + 1


def _pass_over(body: bytes, i: int) -> int:
    """The end of the value at ``i`` (a top-level member's that is left out), found by brackets
    and strings alone: what it holds is neither read nor checked."""
    n = len(body)
    depth = 0
    while i < n:
        c = body[i]
        if c == 0x22:
            i += 1
            while i < n and body[i] != 0x22:
                i += 2 if body[i] == 0x5C else 1
            i += 1
            if depth == 0:
                return i
            continue
        if c == 0x7B or c == 0x5B:
            depth += 1
        elif c == 0x7D or c == 0x5D:
            if depth == 0:
                return i
            depth -= 1
            if depth == 0:
                return i + 1
        elif c == 0x2C and depth == 0:
            return i
        i += 1
    raise CanonicalError("unexpected end of the body")


def _array(body: bytes, i: int, depth: int) -> tuple[bytes, int]:
    if depth > MAX_DEPTH:
        raise CanonicalError("nested too deeply")
    items: list[bytes] = []
    i = _skip(body, i + 1)
    if i < len(body) and body[i] == 0x5D:
        return b"[]", i + 1
    while True:
        item, i = _value(body, i, depth)
        items.append(item)
        i = _skip(body, i)
        if i < len(body) and body[i] == 0x2C:
            i = _skip(body, i + 1)
            continue
        if i < len(body) and body[i] == 0x5D:
            break
        raise CanonicalError(f"expected ',' or ']' at byte {i}")
    return b"[" + b",".join(items) + b"]", i + 1


def _string(body: bytes, i: int) -> tuple[bytes, int]:
    """``body[i]`` is an opening quote: the canonical string, and the index after it."""
    n = len(body)
    j = i + 1
    plain = True
    while j < n:
        c = body[j]
        if c == 0x22:
            break
        if c == 0x5C:
            plain = False
            j += 2
            continue
        if c < 0x20:
            plain = False
        j += 1
    else:
        raise CanonicalError(f"unterminated string at byte {i}")
    if plain:
        return body[i : j + 1], j + 1
    return b'"' + _unescape(body[i + 1 : j]) + b'"', j + 1


def _unescape(raw: bytes) -> bytes:
    out = bytearray()
    k, n = 0, len(raw)
    while k < n:
        c = raw[k]
        if c != 0x5C:
            if c < 0x20:
                out += b"\\u%04x" % c
            else:
                out.append(c)
            k += 1
            continue
        if k + 1 >= n:
            raise CanonicalError("a string ends in a backslash")
        e = raw[k + 1]
        if e == 0x75:  # \uXXXX, perhaps a surrogate pair
            unit = _hex4(raw, k + 2)
            k += 6
            if 0xD800 <= unit < 0xDC00 and raw[k : k + 2] == b"\\u":
                low = _hex4(raw, k + 2)
                if 0xDC00 <= low < 0xE000:
                    unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                    k += 6
            _put(out, unit)
            continue
        if e == 0x22 or e == 0x5C:
            out += b"\\" + bytes([e])
        elif e in _SIMPLE_ESCAPES:
            _put(out, ord(_SIMPLE_ESCAPES[e]))
        else:
            raise CanonicalError(f"invalid escape \\{chr(e)}")
        k += 2
    return bytes(out)


def _hex4(raw: bytes, at: int) -> int:
    digits = raw[at : at + 4]
    if len(digits) != 4 or any(d not in b"0123456789abcdefABCDEF" for d in digits):
        raise CanonicalError("invalid \\u escape")
    return int(digits, 16)


def _put(out: bytearray, code: int) -> None:
    """Write one code point canonically."""
    if code < 0x20:
        out += b"\\u%04x" % code
    elif code == 0x22 or code == 0x5C:
        out += b"\\" + bytes([code])
    elif 0xD800 <= code < 0xE000:  # a lone surrogate has no UTF-8: keep it escaped
        out += b"\\u%04x" % code
    else:
        out += chr(code).encode()


def _number(body: bytes, i: int) -> tuple[bytes, int]:
    j = i
    n = len(body)
    while j < n and body[j] in _NUMBER:
        j += 1
    token = body[i:j]
    digits = token[1:] if token[:1] == b"-" else token
    try:
        if digits and all(d in _DIGITS for d in digits):
            return str(int(token)).encode(), j
        value = float(token)
    except ValueError:
        raise CanonicalError(f"invalid number at byte {i}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise CanonicalError(f"invalid number at byte {i}")
    if value == int(value) and abs(value) < 2**53:
        return str(int(value)).encode(), j
    return repr(value).encode(), j
