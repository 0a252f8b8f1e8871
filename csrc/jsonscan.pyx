# cython: language_level=3
"""Compiled twin of ``tiermux._pure.jsonscan``: the byte span of a top-level JSON member's value,
and two glances at an answer's bytes (where its first text is, and whether some words are near it).

Walks the bytes with a C pointer; never decodes. Results and exceptions are those of the pure
twin (``ScanError`` is defined there so that both raise the very same class).
"""

from libc.string cimport memchr, memcmp, memset

from tiermux._pure.jsonscan import TEXT_KEYS, ScanError, _key_matches

__all__ = ["AnyOf", "ScanError", "first_text", "value_span"]


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


cdef inline bint memcmp_eq(const unsigned char* a, const unsigned char* b, Py_ssize_t n) noexcept nogil:
    return memcmp(a, b, <size_t>n) == 0


# --- glances at an answer ---------------------------------------------------------------------

cdef Py_ssize_t _find(const unsigned char* p, Py_ssize_t n, Py_ssize_t i, const unsigned char* k,
                      Py_ssize_t klen) noexcept nogil:
    """The index of the first ``k`` in ``p[i:n]``, or -1."""
    cdef const unsigned char* hit
    while i + klen <= n:
        hit = <const unsigned char*>memchr(p + i, k[0], <size_t>(n - klen + 1 - i))
        if hit == NULL:
            return -1
        i = hit - p
        if memcmp(p + i, k, <size_t>klen) == 0:
            return i
        i += 1
    return -1


# The second bytes of TEXT_KEYS (all open with a quote): most quotes in an answer open nothing else.
cdef unsigned char _TEXT_SECOND[256]
memset(_TEXT_SECOND, 0, 256)
for _key in TEXT_KEYS:
    _TEXT_SECOND[(<bytes>_key)[1]] = 1


def first_text(bytes data not None):
    """Where the first non-empty string value of a ``content`` or ``text`` member opens (the
    index of its quote), or -1: an empty value (a stream's first delta has one) doesn't count."""
    cdef const unsigned char* p = data
    cdef Py_ssize_t n = len(data), i = 0, klen
    cdef const unsigned char* hit
    cdef bytes key
    while i + 1 < n:
        hit = <const unsigned char*>memchr(p + i, 34, <size_t>(n - i))
        if hit == NULL:
            return -1
        i = hit - p
        if i + 1 < n and _TEXT_SECOND[p[i + 1]]:
            for key in TEXT_KEYS:  # one pass, so the first key found is the first text
                klen = len(key)
                if i + klen <= n and memcmp(p + i, <const unsigned char*>key, <size_t>klen) == 0:
                    if not (i + klen < n and p[i + klen] == 34):  # an empty value: go on
                        return i + klen - 1
                    break
        i += 1
    return -1


cdef inline unsigned char _lower(unsigned char c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef class AnyOf:
    """Words looked for together in bytes, ignoring ASCII case."""

    cdef readonly tuple words
    cdef tuple _by_first  # the words by their first byte, 256 tuples
    cdef unsigned char _starts[256]  # whether a word starts with this byte (either case)
    cdef unsigned char _pairs[8192]  # a bit per (first, second) lower-case byte pair that opens one
    cdef unsigned char _single[256]  # whether a word is this one byte (either case)

    def __init__(self, words):
        self.words = tuple(word.lower() for word in words)
        if not self.words or not all(self.words):
            raise ValueError("AnyOf needs words, none of them empty")
        memset(self._starts, 0, 256)
        memset(self._pairs, 0, 8192)
        memset(self._single, 0, 256)
        buckets = [[] for _ in range(256)]
        for word in self.words:
            buckets[word[0]].append(word)
            self._starts[word[0]] = 1
            if 97 <= word[0] <= 122:
                self._starts[word[0] - 32] = 1
            if len(word) > 1:
                pair = (word[0] << 8) | word[1]
                self._pairs[pair >> 3] |= 1 << (pair & 7)
            else:
                self._single[word[0]] = 1
                if 97 <= word[0] <= 122:
                    self._single[word[0] - 32] = 1
        self._by_first = tuple(tuple(bucket) for bucket in buckets)

    def __repr__(self):
        return f"<AnyOf {len(self.words)} words>"

    def search(self, bytes data not None, Py_ssize_t start, Py_ssize_t end):
        """Where the first of the words to occur wholly inside ``data[start:end]`` starts, or -1."""
        cdef const unsigned char* p = data
        cdef Py_ssize_t n = len(data), i, j, wlen
        cdef unsigned int pair
        cdef const unsigned char* w
        cdef bytes word
        cdef tuple bucket
        if start < 0:
            start = 0
        if end > n:
            end = n
        for i in range(start, end):
            if not self._starts[p[i]]:
                continue
            if i + 1 < end:  # a word of one byte has no pair: it goes on to the bucket
                pair = (_lower(p[i]) << 8) | _lower(p[i + 1])
                if not self._pairs[pair >> 3] & (1 << (pair & 7)) and not self._single[p[i]]:
                    continue
            bucket = <tuple>self._by_first[_lower(p[i])]
            for word in bucket:
                w = word
                wlen = len(word)
                if i + wlen > end:
                    continue
                j = 1
                while j < wlen and _lower(p[i + j]) == w[j]:
                    j += 1
                if j == wlen:
                    return i
        return -1
