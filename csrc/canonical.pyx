# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``tiermux._pure.canonical``: the canonical JSON of a body's top-level members.

One pass with a C pointer, writing into one C buffer sized from the body: no Python object per
token. Strings are copied sixteen bytes at a time (eight without SSE2) until a quote, backslash or
control byte, and unescaped in the same pass. An object's members are written as they come, each
remembered by where it lies in the buffer; then they are sorted by key (ties broken by position,
so that the last of duplicate keys is the one kept) and copied back in that order; the top-level
object is copied straight into the bytes returned. Same bytes out as the pure twin, always, and
the same ``CanonicalError``.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.math cimport fabs, isfinite
from libc.stdlib cimport qsort
from libc.string cimport memcmp, memcpy, memmove

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


cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>
    #if defined(__SSE2__) && defined(__GNUC__)
    #include <emmintrin.h>
    #endif

    /* Copy s[0:avail] to d until the first '"', '\\\\' or control byte; return how many bytes
       were copied. d must have room for avail bytes: a whole block is stored before it is
       looked at, so bytes past the returned count (never past avail) may be overwritten. */
    static inline Py_ssize_t tm_plain_run(const unsigned char *s, Py_ssize_t avail, unsigned char *d) {
        Py_ssize_t k = 0;
    #if defined(__SSE2__) && defined(__GNUC__)
        const __m128i quote = _mm_set1_epi8('"');
        const __m128i backslash = _mm_set1_epi8('\\\\');
        const __m128i control = _mm_set1_epi8(0x1F);
        while (k + 16 <= avail) {
            __m128i v = _mm_loadu_si128((const __m128i *)(s + k));
            _mm_storeu_si128((__m128i *)(d + k), v);
            __m128i hit = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                _mm_cmpeq_epi8(_mm_min_epu8(v, control), v));
            int bits = _mm_movemask_epi8(hit);
            if (bits)
                return k + __builtin_ctz((unsigned)bits);
            k += 16;
        }
    #else
        const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        while (k + 8 <= avail) {
            uint64_t v, q, b;
            memcpy(&v, s + k, 8);
            q = v ^ (ones * '"');
            b = v ^ (ones * '\\\\');
            /* Exact about whether the word holds such a byte, not about where: the byte loop
               below finds it. */
            if ((((q - ones) & ~q) | ((b - ones) & ~b) | ((v - ones * 0x20) & ~v)) & highs)
                break;
            memcpy(d + k, &v, 8);
            k += 8;
        }
    #endif
        while (k < avail) {
            unsigned char c = s[k];
            if (c == '"' || c == '\\\\' || c < 0x20)
                break;
            d[k] = c;
            k++;
        }
        return k;
    }

    /* The offset of the first '"' or '\\\\' in s[0:avail], or avail (0 when avail < 0). */
    static inline Py_ssize_t tm_quote_or_backslash(const unsigned char *s, Py_ssize_t avail) {
        Py_ssize_t k = 0;
    #if defined(__SSE2__) && defined(__GNUC__)
        const __m128i quote = _mm_set1_epi8('"');
        const __m128i backslash = _mm_set1_epi8('\\\\');
        while (k + 16 <= avail) {
            __m128i v = _mm_loadu_si128((const __m128i *)(s + k));
            int bits = _mm_movemask_epi8(
                _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)));
            if (bits)
                return k + __builtin_ctz((unsigned)bits);
            k += 16;
        }
    #endif
        while (k < avail && s[k] != '"' && s[k] != '\\\\')
            k++;
        return k;
    }

    /* The canonical spelling of a number written -?D+.D+ (no exponent) into d (room for 32),
       and its length; -1 when it takes the parser and repr() to know. With at most 15
       significant digits (DBL_DIG), the double nearest the literal has that literal, trailing
       zeros dropped, as its shortest round-trip repr, and repr() writes it without an exponent
       while it is at least 1e-4 (it is below 1e15 here); one with no fraction left is the
       integer, exact below 2**53. */
    static Py_ssize_t tm_plain_decimal(const unsigned char *s, Py_ssize_t len, char *d) {
        Py_ssize_t k = 0, ib, ie, fb, fe, zeros = 0, o = 0;
        int negative = 0;
        if (k < len && s[k] == '-') {
            negative = 1;
            k++;
        }
        ib = k;
        while (k < len && s[k] >= '0' && s[k] <= '9')
            k++;
        ie = k;
        if (ie == ib || k >= len || s[k] != '.')
            return -1;
        fb = ++k;
        while (k < len && s[k] >= '0' && s[k] <= '9')
            k++;
        fe = k;
        if (fe == fb || k != len)
            return -1;
        while (ib < ie && s[ib] == '0')
            ib++;
        while (fe > fb && s[fe - 1] == '0')
            fe--;
        if (fe == fb) {
            if (ie - ib > 15)
                return -1;
            if (ib == ie) {
                d[0] = '0';  /* -0.0 too */
                return 1;
            }
            if (negative)
                d[o++] = '-';
            memcpy(d + o, s + ib, ie - ib);
            return o + (ie - ib);
        }
        if (ib == ie) {
            while (s[fb + zeros] == '0')
                zeros++;
            if (zeros > 3 || fe - fb - zeros > 15)
                return -1;
        } else if ((ie - ib) + (fe - fb) > 15) {
            return -1;
        }
        if (negative)
            d[o++] = '-';
        if (ib == ie) {
            d[o++] = '0';
        } else {
            memcpy(d + o, s + ib, ie - ib);
            o += ie - ib;
        }
        d[o++] = '.';
        memcpy(d + o, s + fb, fe - fb);
        return o + (fe - fb);
    }

    /* Decimal digits of v (|v| < 2**53) into d; how many were written (at most 17). */
    static inline Py_ssize_t tm_format_integer(long long v, char *d) {
        char tmp[24];
        Py_ssize_t n = 0, k = 0;
        unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
        do {
            tmp[n++] = (char)('0' + u % 10);
            u /= 10;
        } while (u);
        if (v < 0)
            d[k++] = '-';
        while (n)
            d[k++] = tmp[--n];
        return k;
    }
    """
    Py_ssize_t tm_plain_run(const unsigned char* s, Py_ssize_t avail, unsigned char* d) noexcept nogil
    Py_ssize_t tm_quote_or_backslash(const unsigned char* s, Py_ssize_t avail) noexcept nogil
    Py_ssize_t tm_format_integer(long long v, char* d) noexcept nogil
    Py_ssize_t tm_plain_decimal(const unsigned char* s, Py_ssize_t size, char* d) noexcept nogil


cdef enum:
    SMALL_SORT = 16  # insertion sort up to here: qsort's setup costs more than it saves


cdef struct Buffer:
    char* data
    Py_ssize_t size
    Py_ssize_t capacity
    bint owned  # data is PyMem memory (else the caller's stack)


cdef int _grow(Buffer* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = b.size + extra, capacity
    cdef char* grown
    capacity = b.capacity * 2 if b.capacity * 2 > need else need
    if b.owned:
        grown = <char*>PyMem_Realloc(b.data, capacity)
    else:
        grown = <char*>PyMem_Malloc(capacity)
        if grown != NULL:
            memcpy(grown, b.data, b.size)
    if grown == NULL:
        raise MemoryError()
    b.owned = True
    b.data = grown
    b.capacity = capacity
    return 0


cdef inline int _reserve(Buffer* b, Py_ssize_t extra) except -1:
    if b.size + extra > b.capacity:
        return _grow(b, extra)
    return 0


cdef inline int _put(Buffer* b, const char* s, Py_ssize_t n) except -1:
    if b.size + n > b.capacity:
        _grow(b, n)
    memcpy(b.data + b.size, s, n)
    b.size += n
    return 0


cdef inline int _byte(Buffer* b, char c) except -1:
    if b.size + 1 > b.capacity:
        _grow(b, 1)
    b.data[b.size] = c
    b.size += 1
    return 0


cdef struct Member:
    Py_ssize_t start  # the member ("key":value) in the buffer
    Py_ssize_t end
    Py_ssize_t key_end  # the key is data[start:key_end]
    Py_ssize_t order


cdef const char* _sorting  # the buffer the members being sorted live in (one sort at a time)


cdef inline int _compare(const char* data, const Member* x, const Member* y) noexcept nogil:
    # Keys are short: a loop beats a call to memcmp. Both start with the same quote.
    cdef Py_ssize_t lx = x.key_end - x.start, ly = y.key_end - y.start, k
    cdef Py_ssize_t shorter = lx if lx < ly else ly
    cdef const unsigned char* a = <const unsigned char*>data + x.start
    cdef const unsigned char* b = <const unsigned char*>data + y.start
    for k in range(1, shorter):
        if a[k] != b[k]:
            return -1 if a[k] < b[k] else 1
    if lx != ly:
        return -1 if lx < ly else 1
    return -1 if x.order < y.order else 1


cdef int _by_key(const void* a, const void* b) noexcept nogil:
    return _compare(_sorting, <const Member*>a, <const Member*>b)


cdef void _sort(const char* data, Member* members, Py_ssize_t count) noexcept nogil:
    global _sorting
    cdef Py_ssize_t k, j
    cdef Member m
    if count > SMALL_SORT:
        _sorting = data
        qsort(members, count, sizeof(Member), _by_key)
        return
    for k in range(1, count):
        m = members[k]
        j = k
        while j > 0 and _compare(data, &members[j - 1], &m) > 0:
            members[j] = members[j - 1]
            j -= 1
        members[j] = m


cdef inline bint _is_ws(unsigned char c) noexcept nogil:
    return c == 32 or c == 9 or c == 10 or c == 13


cdef inline bint _is_number_byte(unsigned char c) noexcept nogil:
    return (48 <= c <= 57) or c == 45 or c == 43 or c == 46 or c == 101 or c == 69


cdef inline int _hex(unsigned char c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef const char* _HEX = b"0123456789abcdef"


@cython.final
@cython.no_gc  # refers to a frozenset of bytes only: never part of a cycle
cdef class _Names:
    """A frozenset of member names as C (pointer, length) pairs ordered by length, so that a key
    is looked up with a few ``memcmp`` and no bytes object. Only built when every element is
    exactly ``bytes``; otherwise ``in`` on the set itself decides, whatever its elements are."""

    cdef object fields  # keeps the names, which the pointers point into, alive
    cdef bint exact
    cdef Py_ssize_t count
    cdef Py_ssize_t longest
    cdef const char** names
    cdef Py_ssize_t* sizes
    cdef Py_ssize_t* first  # names of length L are names[first[L]:first[L + 1]]

    def __dealloc__(self):
        PyMem_Free(self.names)
        PyMem_Free(self.sizes)
        PyMem_Free(self.first)

    cdef bint contains(self, const char* key, Py_ssize_t size) noexcept:
        cdef Py_ssize_t k
        if size > self.longest:
            return False
        for k in range(self.first[size], self.first[size + 1]):
            if memcmp(self.names[k], key, size) == 0:
                return True
        return False


cdef _Names _names_of(frozenset fields):
    cdef _Names table = _Names.__new__(_Names)
    cdef Py_ssize_t k, at, size
    cdef list ordered
    table.fields = fields
    table.exact = all(PyBytes_CheckExact(name) for name in fields)
    if not table.exact:
        return table
    ordered = sorted(fields, key=len)
    table.count = len(ordered)
    table.longest = len(ordered[table.count - 1]) if table.count else 0
    table.names = <const char**>PyMem_Malloc((table.count + 1) * sizeof(const char*))
    table.sizes = <Py_ssize_t*>PyMem_Malloc((table.count + 1) * sizeof(Py_ssize_t))
    table.first = <Py_ssize_t*>PyMem_Malloc((table.longest + 2) * sizeof(Py_ssize_t))
    if table.names == NULL or table.sizes == NULL or table.first == NULL:
        raise MemoryError()
    for k in range(table.count):
        table.names[k] = PyBytes_AS_STRING(ordered[k])
        table.sizes[k] = PyBytes_GET_SIZE(ordered[k])
    at = 0
    for size in range(table.longest + 2):
        while at < table.count and table.sizes[at] < size:
            at += 1
        table.first[size] = at
    return table


# The last table built: a caller passes the same frozenset (KEY_FIELDS) on every request.
cdef _Names _last_names = None


@cython.final
@cython.no_gc  # lives for one call, referred to by nothing: tracking it would only feed the GC
cdef class _Walker:
    cdef const unsigned char* p
    cdef Py_ssize_t n
    cdef Py_ssize_t i
    cdef Buffer out
    cdef object fields
    cdef _Names names  # fields as a C table, when it could be built
    cdef object result  # the top-level object, written straight into a bytes object
    cdef bytes prefix  # what the result starts with

    def __dealloc__(self):
        if self.out.owned:
            PyMem_Free(self.out.data)

    cdef inline void skip(self) noexcept:
        while self.i < self.n and _is_ws(self.p[self.i]):
            self.i += 1

    # --- strings -------------------------------------------------------------------------------

    cdef int string(self) except -1:
        cdef const unsigned char* p = self.p
        cdef Py_ssize_t start = self.i, n = self.n, k = start + 1, run
        cdef unsigned char c
        # Plain bytes never grow, so room for the rest of the body is room for the whole string
        # (quotes included) until an escape writes more than it read.
        _reserve(&self.out, n - k + 2)
        self.out.data[self.out.size] = 34
        self.out.size += 1
        while True:
            run = tm_plain_run(p + k, n - k, <unsigned char*>self.out.data + self.out.size)
            k += run
            self.out.size += run
            if k >= n:
                raise CanonicalError(f"unterminated string at byte {start}")
            c = p[k]
            if c == 34:
                self.out.data[self.out.size] = 34
                self.out.size += 1
                self.i = k + 1
                return 0
            if c < 32:
                self.escaped_unit(c)
                k += 1
            else:
                k = self.escape(start, k)
            _reserve(&self.out, n - k + 2)

    cdef Py_ssize_t escape(self, Py_ssize_t start, Py_ssize_t k) except -1:
        """Write the escape at ``p[k]`` (a backslash) resolved; the index after it."""
        cdef const unsigned char* p = self.p
        cdef unsigned char e
        cdef int unit, low
        if k + 1 >= self.n:
            self.refuse(start, "a string ends in a backslash")
        e = p[k + 1]
        if e == 34 or e == 92:
            self.out.data[self.out.size] = 92
            self.out.data[self.out.size + 1] = <char>e
            self.out.size += 2
            return k + 2
        if e == 117:
            unit = self.hex4(start, k + 2)
            k += 6
            if 0xD800 <= unit < 0xDC00 and k + 1 < self.n and p[k] == 92 and p[k + 1] == 117:
                low = self.hex4(start, k + 2)
                if 0xDC00 <= low < 0xE000:
                    unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                    k += 6
            self.code_point(unit)
            return k
        if e == 47:
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
            self.refuse(start, f"invalid escape \\{chr(e)}")
        return k + 2

    cdef int refuse(self, Py_ssize_t start, str reason) except -1:
        """Raise for a bad escape in the string at ``start``; but a string that never ends is
        reported as such first, whatever it holds (the pure twin finds the end before it
        unescapes)."""
        cdef const unsigned char* p = self.p
        cdef Py_ssize_t end = start + 1, n = self.n
        while end < n and p[end] != 34:
            end += 2 if p[end] == 92 else 1
        if end >= n:
            raise CanonicalError(f"unterminated string at byte {start}")
        raise CanonicalError(reason)

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

    cdef int hex4(self, Py_ssize_t start, Py_ssize_t at) except -1:
        cdef int value = 0, digit
        cdef Py_ssize_t k
        if at + 4 > self.n:
            self.refuse(start, "invalid \\u escape")
        for k in range(at, at + 4):
            digit = _hex(self.p[k])  # a closing quote is no hex digit: the string's end is kept
            if digit < 0:
                self.refuse(start, "invalid \\u escape")
            value = value * 16 + digit
        return value

    # --- numbers and literals ------------------------------------------------------------------

    cdef int number(self) except -1:
        cdef const unsigned char* p = self.p
        cdef Py_ssize_t start = self.i, j = self.i, digits
        cdef bint integer = True
        cdef char* parsed_end
        cdef char* text
        cdef double value
        cdef char spelled[32]
        cdef Py_ssize_t size
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
        size = tm_plain_decimal(p + start, j - start, spelled)
        if size >= 0:
            return _put(&self.out, spelled, size)
        # Parsed in place: the parser stops at the first byte that cannot continue a number,
        # and the token ends at one (the body's bytes object is NUL-terminated at worst), so it
        # reads what a copy of the token would hold; anything it makes of more or less is refused.
        try:
            value = PyOS_string_to_double(<const char*>p + start, &parsed_end, NULL)  # overflow: inf
        except ValueError:
            raise CanonicalError(f"invalid number at byte {start}") from None
        if parsed_end != <const char*>p + j or not isfinite(value):
            raise CanonicalError(f"invalid number at byte {start}")
        if value == <double>(<long long>value) and fabs(value) < 9007199254740992.0:
            return _put(&self.out, spelled, tm_format_integer(<long long>value, spelled))
        text = PyOS_double_to_string(value, b"r", 0, Py_DTSF_ADD_DOT_0, NULL)
        try:
            _put(&self.out, text, len(text))
        finally:
            PyMem_Free(text)
        return 0

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
                return self.sorted_members(members, 0, top)
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
            return self.sorted_members(members, count, top)
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
                while True:
                    i += tm_quote_or_backslash(p + i, n - i)
                    if i >= n or p[i] == 34:
                        break
                    i += 2  # past a backslash and what it escapes
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
        cdef const char* key = self.out.data + m.start + 1
        cdef Py_ssize_t size = m.key_end - m.start - 2
        if self.names is not None:
            return self.names.contains(key, size)
        return PyBytes_FromStringAndSize(key, size) in self.fields

    cdef int sorted_members(self, Member* members, Py_ssize_t count, bint top) except -1:
        """The members, written one after the other from ``members[0].start``, rewritten as
        ``{m1,m2,...}`` in key order, the last of equal keys kept: in place, or for the top-level
        object into ``result``."""
        cdef Py_ssize_t base, k, size, total = 2, at
        cdef char* data
        cdef char* into
        base = members[0].start if count else self.out.size  # before sorting: the first written
        if count > 1:
            _sort(self.out.data, members, count)
        for k in range(count):
            if k + 1 < count and _key_equal(self.out.data, &members[k], &members[k + 1]):
                members[k].end = -1  # a later member has the same key
            else:
                total += members[k].end - members[k].start + 1
        if count:
            total -= 1  # one comma fewer than members
        if top:
            self.result = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(self.prefix) + total)
            into = PyBytes_AS_STRING(self.result)
            memcpy(into, PyBytes_AS_STRING(self.prefix), PyBytes_GET_SIZE(self.prefix))
            into += PyBytes_GET_SIZE(self.prefix)
        else:
            # The sorted copy is written after the members, then moved down over them.
            _reserve(&self.out, total)
            into = self.out.data + self.out.size
        data = self.out.data
        into[0] = 123
        at = 1
        for k in range(count):
            if members[k].end < 0:
                continue
            if at > 1:
                into[at] = 44
                at += 1
            size = members[k].end - members[k].start
            memcpy(into + at, data + members[k].start, size)
            at += size
        into[at] = 125
        if not top:
            memmove(data + base, into, total)
            self.out.size = base + total
        return 0


cdef inline bint _key_equal(const char* data, const Member* a, const Member* b) noexcept nogil:
    cdef Py_ssize_t la = a.key_end - a.start
    return la == b.key_end - b.start and memcmp(data + a.start, data + b.start, la) == 0


def canonical(bytes body, fields=None, bytes prefix not None=b""):
    """``prefix`` then the canonical form of the top-level object of ``body``, keeping the
    members named in ``fields`` (all when None)."""
    global _last_names
    cdef char on_stack[8192]
    cdef _Walker walker = _Walker.__new__(_Walker)
    cdef Py_ssize_t capacity
    walker.p = <const unsigned char*>body
    walker.n = len(body)
    walker.fields = fields
    walker.prefix = prefix
    if type(fields) is frozenset:
        if _last_names is None or _last_names.fields is not fields:
            _last_names = _names_of(fields)
        if _last_names.exact:
            walker.names = _last_names
    # Room for the body and for one sorted copy of a nested object without growing (the
    # top-level copy goes straight into the result); on the stack for a body of a few KB,
    # which saves a malloc as large as the body.
    capacity = 2 * walker.n + 64
    if capacity <= sizeof(on_stack):
        walker.out.data = on_stack
        walker.out.capacity = sizeof(on_stack)
    else:
        walker.out.data = <char*>PyMem_Malloc(capacity)
        if walker.out.data == NULL:
            raise MemoryError()
        walker.out.capacity = capacity
        walker.out.owned = True
    walker.skip()
    if walker.i >= walker.n or walker.p[walker.i] != 123:
        raise CanonicalError("expected a JSON object")
    walker.object(0, True)
    walker.skip()
    if walker.i != walker.n:
        raise CanonicalError(f"unexpected data after the object at byte {walker.i}")
    return walker.result
