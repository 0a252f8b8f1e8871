# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``tiermux._pure.canonical``: the canonical JSON of a body's top-level members.

One pass with a C pointer, writing into one growing C buffer: no Python object per token. An
object's members are written as they come, each remembered by where it lies in the buffer; then
they are sorted by key (``qsort``, ties broken by position, so that the last of duplicate keys is
the one kept) and copied back in that order. Strings without escapes or control characters are
copied as they are. Same bytes out as the pure twin, always, and the same ``CanonicalError``.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.math cimport fabs, isfinite
from libc.stdlib cimport qsort
from libc.string cimport memchr, memcmp, memcpy, memmove

from tiermux._pure.canonical import MAX_DEPTH as _MAX_DEPTH
from tiermux._pure.canonical import CanonicalError

__all__ = ["MAX_DEPTH", "CanonicalError", "canonical"]

MAX_DEPTH = _MAX_DEPTH
cdef int C_MAX_DEPTH = _MAX_DEPTH


cdef extern from "Python.h":
    ctypedef struct PyObject
    double PyOS_string_to_double(const char* s, char** endptr, PyObject* overflow_exception) except? -1.0
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags, int* ptype) except NULL
    int Py_DTSF_ADD_DOT_0


cdef struct Buffer:
    char* data
    Py_ssize_t size
    Py_ssize_t capacity


cdef int _reserve(Buffer* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = b.size + extra, capacity
    cdef char* grown
    if need <= b.capacity:
        return 0
    capacity = b.capacity * 2 if b.capacity * 2 > need else need
    grown = <char*>PyMem_Realloc(b.data, capacity)
    if grown == NULL:
        raise MemoryError()
    b.data = grown
    b.capacity = capacity
    return 0


cdef inline int _put(Buffer* b, const char* s, Py_ssize_t n) except -1:
    if b.size + n > b.capacity:
        _reserve(b, n)
    memcpy(b.data + b.size, s, n)
    b.size += n
    return 0


cdef inline int _byte(Buffer* b, char c) except -1:
    if b.size + 1 > b.capacity:
        _reserve(b, 1)
    b.data[b.size] = c
    b.size += 1
    return 0


cdef struct Member:
    Py_ssize_t start  # the member ("key":value) in the buffer
    Py_ssize_t end
    Py_ssize_t key_end  # the key is data[start:key_end]
    Py_ssize_t order


cdef const char* _sorting  # the buffer the members being sorted live in (one sort at a time)


cdef int _by_key(const void* a, const void* b) noexcept nogil:
    cdef const Member* x = <const Member*>a
    cdef const Member* y = <const Member*>b
    cdef Py_ssize_t lx = x.key_end - x.start, ly = y.key_end - y.start
    cdef int c = memcmp(_sorting + x.start, _sorting + y.start, lx if lx < ly else ly)
    if c:
        return c
    if lx != ly:
        return -1 if lx < ly else 1
    return -1 if x.order < y.order else 1


cdef inline bint _is_ws(unsigned char c) noexcept nogil:
    return c == 32 or c == 9 or c == 10 or c == 13


cdef inline bint _is_number_byte(unsigned char c) noexcept nogil:
    return (48 <= c <= 57) or c == 45 or c == 43 or c == 46 or c == 101 or c == 69


cdef inline bint _has_control(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    while a < b:
        if p[a] < 32:
            return True
        a += 1
    return False


cdef inline int _hex(unsigned char c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef const char* _HEX = b"0123456789abcdef"


cdef class _Walker:
    cdef const unsigned char* p
    cdef Py_ssize_t n
    cdef Py_ssize_t i
    cdef Buffer out
    cdef object fields

    def __dealloc__(self):
        PyMem_Free(self.out.data)

    cdef inline void skip(self) noexcept:
        while self.i < self.n and _is_ws(self.p[self.i]):
            self.i += 1

    # --- strings -------------------------------------------------------------------------------

    cdef int string(self) except -1:
        cdef const unsigned char* p = self.p
        cdef Py_ssize_t start = self.i, n = self.n, end
        cdef const unsigned char* quote = <const unsigned char*>memchr(p + start + 1, 34, n - start - 1)
        if quote != NULL and memchr(p + start + 1, 92, quote - (p + start + 1)) == NULL:
            end = quote - p
            if not _has_control(p, start + 1, end):
                _put(&self.out, <const char*>p + start, end + 1 - start)
                self.i = end + 1
                return 0
        end = start + 1
        while end < n and p[end] != 34:
            end += 2 if p[end] == 92 else 1
        if end >= n:
            raise CanonicalError(f"unterminated string at byte {start}")
        self.i = end + 1
        return self.unescape(start + 1, end)

    cdef int escaped_unit(self, int unit) except -1:
        cdef char e[6]
        e[0] = 92
        e[1] = 117
        e[2] = _HEX[(unit >> 12) & 15]
        e[3] = _HEX[(unit >> 8) & 15]
        e[4] = _HEX[(unit >> 4) & 15]
        e[5] = _HEX[unit & 15]
        return _put(&self.out, e, 6)

    cdef int code_point(self, int code) except -1:
        cdef char e[4]
        if code < 32 or (0xD800 <= code < 0xE000):
            return self.escaped_unit(code)
        if code == 34 or code == 92:
            e[0] = 92
            e[1] = <char>code
            return _put(&self.out, e, 2)
        if code < 0x80:
            return _byte(&self.out, <char>code)
        if code < 0x800:
            e[0] = <char>(0xC0 | (code >> 6))
            e[1] = <char>(0x80 | (code & 0x3F))
            return _put(&self.out, e, 2)
        if code < 0x10000:
            e[0] = <char>(0xE0 | (code >> 12))
            e[1] = <char>(0x80 | ((code >> 6) & 0x3F))
            e[2] = <char>(0x80 | (code & 0x3F))
            return _put(&self.out, e, 3)
        e[0] = <char>(0xF0 | (code >> 18))
        e[1] = <char>(0x80 | ((code >> 12) & 0x3F))
        e[2] = <char>(0x80 | ((code >> 6) & 0x3F))
        e[3] = <char>(0x80 | (code & 0x3F))
        return _put(&self.out, e, 4)

    cdef int hex4(self, Py_ssize_t at, Py_ssize_t end) except -1:
        cdef int value = 0, digit
        cdef Py_ssize_t k
        if at + 4 > end:
            raise CanonicalError("invalid \\u escape")
        for k in range(at, at + 4):
            digit = _hex(self.p[k])
            if digit < 0:
                raise CanonicalError("invalid \\u escape")
            value = value * 16 + digit
        return value

    cdef int unescape(self, Py_ssize_t k, Py_ssize_t end) except -1:
        cdef const unsigned char* p = self.p
        cdef const unsigned char* backslash
        cdef Py_ssize_t run
        cdef unsigned char c, e
        cdef int unit, low
        _byte(&self.out, 34)
        while k < end:
            backslash = <const unsigned char*>memchr(p + k, 92, end - k)
            run = (backslash - p if backslash != NULL else end) - k
            if not _has_control(p, k, k + run):
                _put(&self.out, <const char*>p + k, run)
                k += run
                run = 0
            while run:
                c = p[k]
                if c < 32:
                    self.escaped_unit(c)
                else:
                    _byte(&self.out, <char>c)
                k += 1
                run -= 1
            if k >= end:
                break
            if k + 1 >= end:
                raise CanonicalError("a string ends in a backslash")
            e = p[k + 1]
            if e == 117:
                unit = self.hex4(k + 2, end)
                k += 6
                if 0xD800 <= unit < 0xDC00 and k + 1 < end and p[k] == 92 and p[k + 1] == 117:
                    low = self.hex4(k + 2, end)
                    if 0xDC00 <= low < 0xE000:
                        unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                        k += 6
                self.code_point(unit)
                continue
            if e == 34 or e == 92:
                self.code_point(e)
            elif e == 47:
                _byte(&self.out, 47)
            elif e == 98:
                self.code_point(8)
            elif e == 102:
                self.code_point(12)
            elif e == 110:
                self.code_point(10)
            elif e == 114:
                self.code_point(13)
            elif e == 116:
                self.code_point(9)
            else:
                raise CanonicalError(f"invalid escape \\{chr(e)}")
            k += 2
        return _byte(&self.out, 34)

    # --- numbers and literals ------------------------------------------------------------------

    cdef int number(self) except -1:
        cdef const unsigned char* p = self.p
        cdef Py_ssize_t start = self.i, j = self.i, digits
        cdef bint integer = True
        cdef char* parsed_end
        cdef char* text
        cdef double value
        cdef bytes token
        while j < self.n and _is_number_byte(p[j]):
            if not (48 <= p[j] <= 57) and not (j == start and p[j] == 45):
                integer = False
            j += 1
        self.i = j
        digits = start + 1 if p[start] == 45 else start
        if integer and j > digits:
            while digits < j - 1 and p[digits] == 48:  # as int() reads it: no leading zeros
                digits += 1
            if j - digits == 1 and p[digits] == 48:
                return _byte(&self.out, 48)  # 0, and -0
            if p[start] == 45:
                _byte(&self.out, 45)
            return _put(&self.out, <const char*>p + digits, j - digits)
        token = PyBytes_FromStringAndSize(<const char*>p + start, j - start)
        try:
            value = PyOS_string_to_double(token, &parsed_end, NULL)  # overflow: inf, refused below
        except ValueError:
            raise CanonicalError(f"invalid number at byte {start}") from None
        if parsed_end != <char*>token + (j - start) or not isfinite(value):
            raise CanonicalError(f"invalid number at byte {start}")
        if value == <double>(<long long>value) and fabs(value) < 9007199254740992.0:
            token = str(<long long>value).encode()
            return _put(&self.out, token, len(token))
        text = PyOS_double_to_string(value, b"r", 0, Py_DTSF_ADD_DOT_0, NULL)
        try:
            token = text
        finally:
            PyMem_Free(text)
        return _put(&self.out, token, len(token))

    cdef int literal(self, const char* word, Py_ssize_t size) except -1:
        if self.n - self.i < size or memcmp(self.p + self.i, word, size):
            raise CanonicalError(f"unexpected byte {chr(self.p[self.i])!r} at {self.i}")
        self.i += size
        return _put(&self.out, word, size)

    # --- values --------------------------------------------------------------------------------

    cdef int value(self, int depth) except -1:
        cdef unsigned char c
        if self.i >= self.n:
            raise CanonicalError("unexpected end of the body")
        c = self.p[self.i]
        if c == 34:
            return self.string()
        if c == 123:
            return self.object(depth + 1, False)
        if c == 91:
            return self.array(depth + 1)
        if c == 116:
            return self.literal(b"true", 4)
        if c == 102:
            return self.literal(b"false", 5)
        if c == 110:
            return self.literal(b"null", 4)
        if _is_number_byte(c):
            return self.number()
        raise CanonicalError(f"unexpected byte {chr(c)!r} at {self.i}")

    cdef int array(self, int depth) except -1:
        if depth > C_MAX_DEPTH:
            raise CanonicalError("nested too deeply")
        _byte(&self.out, 91)
        self.i += 1
        self.skip()
        if self.i < self.n and self.p[self.i] == 93:
            self.i += 1
            return _byte(&self.out, 93)
        while True:
            self.value(depth)
            self.skip()
            if self.i < self.n and self.p[self.i] == 44:
                _byte(&self.out, 44)
                self.i += 1
                self.skip()
                continue
            if self.i < self.n and self.p[self.i] == 93:
                break
            raise CanonicalError(f"expected ',' or ']' at byte {self.i}")
        self.i += 1
        return _byte(&self.out, 93)

    cdef int object(self, int depth, bint top) except -1:
        cdef Member local[16]  # most objects are small: no allocation for them
        cdef Member* members = local
        cdef Member* grown
        cdef Py_ssize_t count = 0, capacity = 16
        if depth > C_MAX_DEPTH:
            raise CanonicalError("nested too deeply")
        try:
            self.i += 1
            self.skip()
            if self.i < self.n and self.p[self.i] == 125:
                self.i += 1
                return _put(&self.out, b"{}", 2)
            while True:
                if self.i >= self.n or self.p[self.i] != 34:
                    raise CanonicalError(f"expected a member name at byte {self.i}")
                if count == capacity:
                    capacity *= 2
                    if members == local:
                        grown = <Member*>PyMem_Malloc(capacity * sizeof(Member))
                        if grown != NULL:
                            memcpy(grown, local, count * sizeof(Member))
                    else:
                        grown = <Member*>PyMem_Realloc(members, capacity * sizeof(Member))
                    if grown == NULL:
                        raise MemoryError()
                    members = grown
                members[count].start = self.out.size
                members[count].order = count
                self.string()
                members[count].key_end = self.out.size
                self.skip()
                if self.i >= self.n or self.p[self.i] != 58:
                    raise CanonicalError(f"expected ':' at byte {self.i}")
                _byte(&self.out, 58)
                self.i += 1
                self.skip()
                if top and self.fields is not None and not self.named(members[count]):
                    self.out.size = members[count].start  # not part of the form: passed over
                    self.pass_over()
                else:
                    self.value(depth)
                    members[count].end = self.out.size
                    count += 1
                self.skip()
                if self.i < self.n and self.p[self.i] == 44:
                    self.i += 1
                    self.skip()
                    continue
                if self.i < self.n and self.p[self.i] == 125:
                    break
                raise CanonicalError(f"expected ',' or '}}' at byte {self.i}")
            self.i += 1
            return self.sorted_members(members, count)
        finally:
            if members != local:
                PyMem_Free(members)

    cdef int pass_over(self) except -1:
        """Move past a value by its brackets and strings alone (as the pure twin's ``_pass_over``)."""
        cdef const unsigned char* p = self.p
        cdef Py_ssize_t i = self.i, n = self.n, depth = 0
        cdef unsigned char c
        while i < n:
            c = p[i]
            if c == 34:
                i += 1
                while i < n and p[i] != 34:
                    i += 2 if p[i] == 92 else 1
                i += 1
                if depth == 0:
                    self.i = i
                    return 0
                continue
            if c == 123 or c == 91:
                depth += 1
            elif c == 125 or c == 93:
                if depth == 0:
                    self.i = i
                    return 0
                depth -= 1
                if depth == 0:
                    self.i = i + 1
                    return 0
            elif c == 44 and depth == 0:
                self.i = i
                return 0
            i += 1
        raise CanonicalError("unexpected end of the body")

    cdef bint named(self, Member m) except -1:
        key = PyBytes_FromStringAndSize(self.out.data + m.start + 1, m.key_end - m.start - 2)
        return key in self.fields

    cdef int sorted_members(self, Member* members, Py_ssize_t count) except -1:
        """The members, written one after the other from ``members[0].start``, rewritten as
        ``{m1,m2,...}`` in key order, the last of equal keys kept."""
        global _sorting
        cdef Py_ssize_t base, k, size, total = 0, at
        cdef char* data
        cdef bint first = True
        if count == 0:
            return _put(&self.out, b"{}", 2)
        base = members[0].start
        for k in range(count):
            total += members[k].end - members[k].start + 1
        _sorting = self.out.data
        qsort(members, count, sizeof(Member), _by_key)
        # The sorted copy is written after the members, then moved down over them.
        _reserve(&self.out, total + 1)
        data = self.out.data
        at = self.out.size
        data[at] = 123
        size = 1
        for k in range(count):
            if k + 1 < count and _by_key_equal(data, members[k], members[k + 1]):
                continue  # a later member has the same key
            if not first:
                data[at + size] = 44
                size += 1
            first = False
            memcpy(data + at + size, data + members[k].start, members[k].end - members[k].start)
            size += members[k].end - members[k].start
        data[at + size] = 125
        size += 1
        memmove(data + base, data + at, size)
        self.out.size = base + size
        return 0


cdef inline bint _by_key_equal(const char* data, Member a, Member b) noexcept nogil:
    cdef Py_ssize_t la = a.key_end - a.start
    return la == b.key_end - b.start and memcmp(data + a.start, data + b.start, la) == 0


def canonical(bytes body, fields=None):
    """The canonical form of the top-level object of ``body``, keeping the members named in
    ``fields`` (all when None)."""
    cdef _Walker walker = _Walker.__new__(_Walker)
    walker.p = <const unsigned char*>body
    walker.n = len(body)
    walker.fields = fields
    walker.out.data = <char*>PyMem_Malloc(len(body) + 64)
    if walker.out.data == NULL:
        raise MemoryError()
    walker.out.capacity = len(body) + 64
    walker.skip()
    if walker.i >= walker.n or walker.p[walker.i] != 123:
        raise CanonicalError("expected a JSON object")
    walker.object(0, True)
    walker.skip()
    if walker.i != walker.n:
        raise CanonicalError(f"unexpected data after the object at byte {walker.i}")
    return PyBytes_FromStringAndSize(walker.out.data, walker.out.size)
