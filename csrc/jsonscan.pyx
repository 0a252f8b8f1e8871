# cython: language_level=3
"""Compiled twin of ``tiermux._pure.jsonscan``: the byte span of a top-level JSON member's value.

Walks the body once with a C pointer; never decodes. Results and exceptions are those of the pure
twin (``ScanError`` is defined there so that both raise the very same class).
"""

from tiermux._pure.jsonscan import ScanError, _key_matches

__all__ = ["ScanError", "value_span"]


cdef inline bint _is_ws(unsigned char c) noexcept nogil:
    return c == 32 or c == 9 or c == 10 or c == 13


cdef inline Py_ssize_t _skip_ws(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and _is_ws(p[i]):
        i += 1
    return i


cdef Py_ssize_t _string_end(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) except -2:
    """p[i] is an opening quote; the index after the closing quote."""
    cdef Py_ssize_t start = i
    i += 1
    while i < n:
        if p[i] == 92:  # backslash: the next byte is escaped, whatever it is
            i += 2
            continue
        if p[i] == 34:
            return i + 1
        i += 1
    raise ScanError(f"unterminated string at byte {start}")


cdef Py_ssize_t _value_end(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) except -2:
    cdef unsigned char c
    cdef Py_ssize_t depth = 0, start = i
    if i >= n:
        raise ScanError("unexpected end of input")
    c = p[i]
    if c == 34:
        return _string_end(p, i, n)
    if c == 123 or c == 91:
        while i < n:
            c = p[i]
            if c == 34:
                i = _string_end(p, i, n)
                continue
            if c == 123 or c == 91:
                depth += 1
            elif c == 125 or c == 93:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        raise ScanError("unterminated container")
    while i < n:
        c = p[i]
        if _is_ws(c) or c == 44 or c == 125 or c == 93:
            break
        i += 1
    if i == start:
        raise ScanError(f"expected a value at byte {start}")
    return i


def value_span(bytes body not None, bytes key not None):
    """Return ``(start, end)`` of the value of top-level member ``key``, or ``(-1, -1)``.

    With duplicate keys the last one wins, as it does for msgspec and the json module.
    """
    cdef const unsigned char* p = body
    cdef const unsigned char* k = key
    cdef Py_ssize_t n = len(body), klen = len(key)
    cdef Py_ssize_t i, key_end, start
    cdef Py_ssize_t found_start = -1, found_end = -1
    cdef unsigned char c
    cdef bint escaped
    i = _skip_ws(p, 0, n)
    if i >= n or p[i] != 123:
        raise ScanError("expected a JSON object")
    i = _skip_ws(p, i + 1, n)
    if i < n and p[i] == 125:
        return (found_start, found_end)
    while True:
        if i >= n or p[i] != 34:
            raise ScanError(f"expected a member name at byte {i}")
        key_end = _string_end(p, i, n)
        start = i + 1
        i = _skip_ws(p, key_end, n)
        if i >= n or p[i] != 58:
            raise ScanError(f"expected ':' at byte {i}")
        # Compare the name now, while its span is known; the rare escaped name goes to the twin.
        escaped = False
        for j in range(start, key_end - 1):
            if p[j] == 92:
                escaped = True
                break
        if escaped:
            matched = _key_matches(body[start:key_end - 1], key)
        else:
            matched = (key_end - 1 - start) == klen and (klen == 0 or memcmp_eq(p + start, k, klen))
        i = _skip_ws(p, i + 1, n)
        value_start = i
        i = _value_end(p, i, n)
        if matched:
            found_start = value_start
            found_end = i
        i = _skip_ws(p, i, n)
        if i >= n:
            raise ScanError("unterminated object")
        c = p[i]
        if c == 125:
            return (found_start, found_end)
        if c != 44:
            raise ScanError(f"expected ',' or '}}' at byte {i}")
        i = _skip_ws(p, i + 1, n)


cdef extern from "string.h":
    int memcmp(const void* a, const void* b, size_t n) nogil


cdef inline bint memcmp_eq(const unsigned char* a, const unsigned char* b, Py_ssize_t n) noexcept nogil:
    return memcmp(a, b, <size_t>n) == 0
