# cython: language_level=3
"""Compiled twin of ``tiermux._pure.classify``: the classifier's text features and linear scores.

The pure twin's docstring says what is read and why. Here the text is walked in place (no slices,
no lowercased copies), hashes are 32-bit C integers and the int8 weight rows are summed in one
tight loop, so a request costs one pass over its bounded windows (about 1,700 characters at most)
whatever its length.
Results are those of the pure twin, bit for bit.
"""

cimport cython
from cpython.unicode cimport Py_UNICODE_ISALNUM, Py_UNICODE_ISSPACE, Py_UNICODE_TOLOWER
from libc.math cimport exp, log, sqrt
from libc.stdint cimport int64_t, int8_t, uint32_t


cdef extern from *:
    void __builtin_prefetch(const void* address) nogil


cdef enum:
    # Buckets are collected, then summed in one tight loop: the table (hundreds of KB) mostly
    # misses L2, and a loop of independent loads lets the CPU overlap those misses.
    PENDING = 512
    PREFETCH_AHEAD = 8


cdef extern from "Python.h":
    int PyUnicode_KIND(object o)
    const void* PyUnicode_DATA(object o)
    Py_UCS4 PyUnicode_READ(int kind, const void* data, Py_ssize_t index) nogil


cdef struct Text:
    # A str read in place: indexing a ``str`` from Cython re-checks it on every character.
    int kind
    const void* data
    Py_ssize_t n


cdef inline Text _text(str s):
    cdef Text t
    t.kind = PyUnicode_KIND(s)
    t.data = PyUnicode_DATA(s)
    t.n = len(s)
    return t


cdef inline Py_UCS4 _at(Text t, Py_ssize_t i) noexcept nogil:
    return PyUnicode_READ(t.kind, t.data, i)

from tiermux._pure.classify import FEATURES_VERSION, TextStats, _check_sample, signal_hash

from tiermux._pure.classify import (
    BODY_HEAD, BODY_TAIL, GRAM_WORDS, INSTRUCTION_SPAN, LEAD_WORDS, MAX_CLASSES as _MAX_CLASSES, MAX_GRAMS_PER_WORD,
    PREVIOUS_HEAD, SEED_BODY_BIGRAM, SEED_BODY_WORD, SEED_INSTRUCTION_BIGRAM, SEED_INSTRUCTION_GRAM,
    SEED_INSTRUCTION_WORD, SEED_LEAD, SEED_LINE_LEAD, SEED_PREVIOUS_WORD, SEED_SYSTEM_BIGRAM,
    SEED_SYSTEM_GRAM, SEED_SYSTEM_WORD, STATS_LIMIT, SYSTEM_HEAD,
)

__all__ = [
    "FEATURES_VERSION", "MAX_CLASSES", "Model", "TextStats", "instruction_bounds", "signal_hash",
    "text_stats", "train_epoch",
]

MAX_CLASSES = _MAX_CLASSES

cdef enum:
    C_MAX_CLASSES = 32

cdef uint32_t FNV_OFFSET = 0x811C9DC5u
cdef uint32_t FNV_PRIME = 0x01000193u
cdef Py_UCS4 BOUNDARY = 0x02

cdef Py_ssize_t c_instruction_span = INSTRUCTION_SPAN
cdef Py_ssize_t c_body_head = BODY_HEAD
cdef Py_ssize_t c_body_tail = BODY_TAIL
cdef Py_ssize_t c_system_head = SYSTEM_HEAD
cdef Py_ssize_t c_previous_head = PREVIOUS_HEAD
cdef int c_lead_words = LEAD_WORDS
cdef int c_max_grams = MAX_GRAMS_PER_WORD
cdef int c_gram_words = GRAM_WORDS
cdef Py_ssize_t c_stats_limit = STATS_LIMIT
cdef uint32_t s_instruction_word = SEED_INSTRUCTION_WORD
cdef uint32_t s_instruction_bigram = SEED_INSTRUCTION_BIGRAM
cdef uint32_t s_instruction_gram = SEED_INSTRUCTION_GRAM
cdef uint32_t s_body_word = SEED_BODY_WORD
cdef uint32_t s_body_bigram = SEED_BODY_BIGRAM
cdef uint32_t s_system_word = SEED_SYSTEM_WORD
cdef uint32_t s_system_bigram = SEED_SYSTEM_BIGRAM
cdef uint32_t s_system_gram = SEED_SYSTEM_GRAM
cdef uint32_t s_previous_word = SEED_PREVIOUS_WORD
cdef uint32_t s_lead = SEED_LEAD
cdef uint32_t s_line_lead = SEED_LINE_LEAD


cdef inline uint32_t _fmix(uint32_t h) noexcept nogil:
    h ^= h >> 16
    h *= 0x85EBCA6Bu
    h ^= h >> 13
    h *= 0xC2B2AE35u
    h ^= h >> 16
    return h


cdef inline uint32_t _combine(uint32_t a, uint32_t b) noexcept nogil:
    return a ^ (b + 0x9E3779B9u + (a << 6) + (a >> 2))


cdef inline uint32_t _step(uint32_t h, Py_UCS4 c) noexcept nogil:
    return (h ^ <uint32_t>c) * FNV_PRIME


# Latin-1 fast path: character classes and lowercase of code points below 256, filled at import
# from CPython's own tables (so they agree with ``str.isalnum``/``str.lower`` by construction).
cdef enum:
    K_ALNUM = 1
    K_DIGIT = 2
    K_NEWLINE = 4
    K_CODE = 8
    K_MATH = 16
    K_QUESTION = 32
    K_BACKTICK = 64

cdef unsigned char KIND[256]
cdef Py_UCS4 LOWER[256]


cdef void _fill_tables() noexcept:
    cdef int c
    for c in range(256):
        KIND[c] = 0
        if Py_UNICODE_ISALNUM(<Py_UCS4>c):
            KIND[c] |= K_ALNUM
        LOWER[c] = Py_UNICODE_TOLOWER(<Py_UCS4>c)
    for c in range(48, 58):
        KIND[c] |= K_DIGIT
        LOWER[c] = 48
    KIND[10] |= K_NEWLINE
    for c in b"{}();[]<>":
        KIND[c] |= K_CODE
    for c in b"+-*/^=%":
        KIND[c] |= K_MATH
    KIND[63] |= K_QUESTION
    KIND[96] |= K_BACKTICK


_fill_tables()


cdef inline Py_UCS4 _lower(Py_UCS4 ch) noexcept:
    # ASCII digits all read as 0 (LOWER maps them so): "v2.8.1" and "v3.0.2" are alike.
    if <uint32_t>ch < 256:
        return LOWER[ch]
    return Py_UNICODE_TOLOWER(ch)


cdef inline bint _isalnum(Py_UCS4 ch) noexcept:
    if <uint32_t>ch < 256:
        return KIND[ch] & K_ALNUM
    return Py_UNICODE_ISALNUM(ch)


cdef inline unsigned char _kind(Py_UCS4 ch) noexcept:
    if <uint32_t>ch < 256:
        return KIND[ch]
    if ch == 0xFF1F:  # fullwidth question mark
        return K_QUESTION
    return K_ALNUM if Py_UNICODE_ISALNUM(ch) else 0


def text_stats(str text):
    cdef Text t = _text(text)
    cdef Py_ssize_t i, n = min(t.n, c_stats_limit)
    cdef const unsigned char* latin1 = <const unsigned char*>t.data
    cdef unsigned char k
    cdef long lines = 1 if n else 0
    cdef long words = 0, fences = 0, code_punct = 0, digits = 0, math_ops = 0, questions = 0
    cdef bint in_word = False
    cdef int backticks = 0
    for i in range(n):
        k = KIND[latin1[i]] if t.kind == 1 else _kind(_at(t, i))
        if k & K_ALNUM:
            if not in_word:
                words += 1
                in_word = True
            if k & K_DIGIT:
                digits += 1
        else:
            in_word = False
            if k & K_NEWLINE:
                lines += 1
            elif k & K_CODE:
                code_punct += 1
            elif k & K_MATH:
                math_ops += 1
            elif k & K_QUESTION:
                questions += 1
        if k & K_BACKTICK:
            backticks += 1
            if backticks == 3:
                fences += 1
                backticks = 0
        else:
            backticks = 0
    return TextStats(n, lines, words, fences, code_punct, digits, math_ops, questions)


def train_epoch(double[:] weights, double[:] squares, double[:] bias, double[:] bias_squares,
                samples, order, int n_classes, double rate, double l2):
    """One pass of AdaGrad over multinomial logistic loss, in ``order``; returns the mean loss.
    The same arithmetic in the same order as the pure twin, so both train the same model."""
    cdef double probs[C_MAX_CLASSES]
    cdef double loss = 0.0, top, total, p, g, grad, v
    cdef Py_ssize_t i, j, n, k, base, b
    cdef int c, label
    cdef Py_ssize_t count = 0
    cdef long[:] bucket_view
    cdef double[:] value_view
    cdef Py_ssize_t n_buckets
    if not 1 <= n_classes <= C_MAX_CLASSES:
        raise ValueError(f"n_classes must be within 1..{C_MAX_CLASSES}")
    n_buckets = weights.shape[0] // n_classes
    for i in order:
        buckets, values, label = samples[i]
        _check_sample(buckets, values, label, n_classes, n_buckets)
        bucket_view = _longs(buckets)
        value_view = _doubles(values)
        n = bucket_view.shape[0]
        count += 1
        for c in range(n_classes):
            probs[c] = bias[c]
        for j in range(n):
            base = bucket_view[j] * n_classes
            v = value_view[j]
            for c in range(n_classes):
                probs[c] += weights[base + c] * v
        top = probs[0]
        for c in range(1, n_classes):
            if probs[c] > top:
                top = probs[c]
        total = 0.0
        for c in range(n_classes):
            probs[c] = exp(probs[c] - top)
            total += probs[c]
        for c in range(n_classes):
            probs[c] /= total
        p = probs[label]
        loss -= log(p if p > 1e-300 else 1e-300)
        for c in range(n_classes):
            g = probs[c] - 1.0 if c == label else probs[c]
            bias_squares[c] += g * g
            bias[c] -= rate * g / sqrt(bias_squares[c])
            for j in range(n):
                k = bucket_view[j] * n_classes + c
                grad = g * value_view[j] + l2 * weights[k]
                squares[k] += grad * grad
                weights[k] -= rate * grad / sqrt(squares[k])
    return loss / count if count else 0.0


cdef long[:] _longs(object seq):
    from array import array
    return seq if isinstance(seq, array) and seq.typecode == "l" else array("l", seq)


cdef double[:] _doubles(object seq):
    from array import array
    return seq if isinstance(seq, array) and seq.typecode == "d" else array("d", seq)


@cython.final
cdef class Model:
    """An int8 weight table of ``n_buckets`` rows by ``n_classes`` columns (row-major)."""

    cdef bytes _table
    cdef const int8_t* _rows
    cdef readonly int n_classes
    cdef readonly Py_ssize_t n_buckets
    cdef uint32_t _mask
    # Per-call state: either a list collecting buckets or per-class sums.
    cdef list _sink
    cdef int64_t _acc[C_MAX_CLASSES]
    cdef Py_ssize_t _count
    cdef uint32_t _pending[PENDING]
    cdef Py_ssize_t _n_pending
    cdef double _bias[C_MAX_CLASSES]
    cdef double _scale

    def __init__(self, bytes table not None, int n_classes, bias=None, double scale=1.0):
        cdef Py_ssize_t n_buckets
        cdef int c
        if not 1 <= n_classes <= C_MAX_CLASSES:
            raise ValueError(f"n_classes must be within 1..{C_MAX_CLASSES}")
        if len(table) % n_classes:
            raise ValueError("table size is not a multiple of n_classes")
        n_buckets = len(table) // n_classes
        if n_buckets < 2 or n_buckets & (n_buckets - 1):
            raise ValueError("the number of buckets must be a power of two")
        if bias is not None and len(bias) != n_classes:
            raise ValueError("one bias per class is needed")
        for c in range(C_MAX_CLASSES):
            self._bias[c] = float(bias[c]) if bias is not None and c < n_classes else 0.0
        self._scale = scale
        self._table = table
        self._rows = <const int8_t*><const char*>table
        self.n_classes = n_classes
        self.n_buckets = n_buckets
        self._mask = <uint32_t>(n_buckets - 1)
        self._sink = None

    def __repr__(self):
        return f"<Model buckets={self.n_buckets} classes={self.n_classes}>"

    def features(self, str system not None, str previous not None, str last not None):
        """The feature buckets of a request's text, with repetitions, in a fixed order."""
        self._sink = []
        try:
            self._walk(system, previous, last)
            return self._sink
        finally:
            self._sink = None

    def score(self, str system not None, str previous not None, str last not None, extra):
        """Per-class sums of the weight rows of every feature and of ``extra`` buckets, and the
        number of features summed."""
        cdef int c
        cdef uint32_t bucket
        self._reset()
        self._walk(system, previous, last)
        for item in extra:
            self._emit_bucket(<uint32_t>(<long long>item) & self._mask)
        self._flush()
        return [self._acc[c] for c in range(self.n_classes)], self._count

    def predict(self, str system not None, str previous not None, str last not None, extra):
        """Class probabilities: softmax of ``bias + scale * sums / sqrt(count)``."""
        cdef int c, nc = self.n_classes
        cdef double probs[C_MAX_CLASSES]
        cdef double factor, top, total
        cdef uint32_t bucket
        self._reset()
        self._walk(system, previous, last)
        for item in extra:
            self._emit_bucket(<uint32_t>(<long long>item) & self._mask)
        self._flush()
        factor = self._scale / sqrt(<double>self._count) if self._count else 0.0
        for c in range(nc):
            probs[c] = self._bias[c] + <double>self._acc[c] * factor
        top = probs[0]
        for c in range(nc):
            if probs[c] > top:
                top = probs[c]
        total = 0.0
        for c in range(nc):
            probs[c] = exp(probs[c] - top)
            total += probs[c]
        return [probs[c] / total for c in range(nc)]

    cdef inline void _reset(self) noexcept:
        cdef int c
        for c in range(self.n_classes):
            self._acc[c] = 0
        self._count = 0
        self._n_pending = 0

    cdef void _flush(self) noexcept:
        """Sum the rows of the pending buckets into the per-class totals."""
        cdef Py_ssize_t k, n = self._n_pending
        cdef int c, nc = self.n_classes
        cdef const int8_t* rows = self._rows
        cdef const int8_t* row
        cdef int64_t acc[C_MAX_CLASSES]
        for c in range(nc):
            acc[c] = self._acc[c]
        for k in range(n):
            if k + PREFETCH_AHEAD < n:
                __builtin_prefetch(rows + <Py_ssize_t>self._pending[k + PREFETCH_AHEAD] * nc)
            row = rows + <Py_ssize_t>self._pending[k] * nc
            for c in range(nc):
                acc[c] += row[c]
        for c in range(nc):
            self._acc[c] = acc[c]
        self._count += n
        self._n_pending = 0

    cdef inline void _emit_bucket(self, uint32_t bucket) noexcept:
        self._pending[self._n_pending] = bucket
        self._n_pending += 1
        if self._n_pending == PENDING:
            self._flush()

    cdef inline int _emit(self, uint32_t h) except -1:
        cdef uint32_t bucket = _fmix(h) & self._mask
        if self._sink is None:
            self._emit_bucket(bucket)
        else:
            self._sink.append(bucket)
        return 0

    cdef int _walk(self, str system_str, str previous_str, str last_str) except -1:
        cdef Text last = _text(last_str), system = _text(system_str), previous = _text(previous_str)
        cdef Py_ssize_t n = last.n, line, end, head_end, tail_start, body_end
        _bounds(last, &head_end, &tail_start)
        self._words(last, 0, head_end, s_instruction_word, s_instruction_bigram, s_instruction_gram)
        if tail_start < n:
            self._words(last, tail_start, n, s_instruction_word, s_instruction_bigram, s_instruction_gram)
        if tail_start > head_end:
            body_end = min(tail_start, head_end + c_body_head)
            self._words(last, head_end, body_end, s_body_word, s_body_bigram, 0)
            if tail_start > body_end:
                self._words(last, max(body_end, tail_start - c_body_tail), tail_start, s_body_word,
                            s_body_bigram, 0)
        self._leads(last, 0, s_lead)
        line = _last_line_start(last)
        if line > 0:
            self._leads(last, line, s_line_lead)
        end = min(system.n, c_system_head)
        self._words(system, 0, end, s_system_word, s_system_bigram, s_system_gram)
        end = min(previous.n, c_previous_head)
        self._words(previous, 0, end, s_previous_word, 0, 0)
        return 0

    cdef int _words(self, Text text, Py_ssize_t start, Py_ssize_t end, uint32_t word_seed,
                    uint32_t bigram_seed, uint32_t gram_seed) except -1:
        cdef Py_ssize_t i = start, j
        cdef uint32_t h, prev = 0
        cdef bint has_prev = False
        cdef int grams_left = c_gram_words if gram_seed else 0
        while i < end:
            if not _isalnum(_at(text, i)):
                i += 1
                continue
            j = i
            h = FNV_OFFSET ^ word_seed
            while j < end and _isalnum(_at(text, j)):
                h = _step(h, _lower(_at(text, j)))
                j += 1
            self._emit(h)
            if bigram_seed:
                if has_prev:
                    self._emit(_combine(prev ^ bigram_seed, h))
                prev = h
                has_prev = True
            if grams_left:
                self._grams(text, i, j, gram_seed)
                grams_left -= 1
            i = j
        return 0

    cdef int _grams(self, Text text, Py_ssize_t start, Py_ssize_t end, uint32_t seed) except -1:
        cdef Py_UCS4 a = BOUNDARY, b = _lower(_at(text, start)), c
        cdef int count = 0
        cdef Py_ssize_t k = start + 1
        cdef uint32_t h
        while count < c_max_grams:
            c = _lower(_at(text, k)) if k < end else BOUNDARY
            h = FNV_OFFSET ^ seed
            h = _step(h, a)
            h = _step(h, b)
            h = _step(h, c)
            self._emit(h)
            count += 1
            if k >= end:
                break
            a = b
            b = c
            k += 1
        return 0

    cdef int _leads(self, Text text, Py_ssize_t start, uint32_t seed) except -1:
        cdef Py_ssize_t n = min(text.n, start + c_instruction_span), i = start
        cdef int position
        cdef uint32_t h
        for position in range(c_lead_words):
            while i < n and not _isalnum(_at(text, i)):
                if _at(text, i) == 10 and position:
                    return 0
                i += 1
            if i >= n:
                return 0
            h = FNV_OFFSET ^ (seed + <uint32_t>position)
            while i < n and _isalnum(_at(text, i)):
                h = _step(h, _lower(_at(text, i)))
                i += 1
            self._emit(h)
        return 0


def instruction_bounds(str text):
    """``(head_end, tail_start)``: see the pure twin."""
    cdef Py_ssize_t head_end, tail_start
    _bounds(_text(text), &head_end, &tail_start)
    return head_end, tail_start


cdef inline bint _is_space(Py_UCS4 ch) noexcept:
    return Py_UNICODE_ISSPACE(ch)


cdef Py_ssize_t _find_break(Text t, Py_ssize_t low, Py_ssize_t high, bint double, bint last) noexcept:
    """Like ``str.find``/``rfind`` of a paragraph break (``double``) or a line break in ``[low, high)``."""
    cdef Py_ssize_t width = 2 if double else 1, i
    if high - low < width:
        return -1
    if last:
        i = high - width
        while i >= low:
            if _at(t, i) == 10 and (not double or _at(t, i + 1) == 10):
                return i
            i -= 1
    else:
        i = low
        while i <= high - width:
            if _at(t, i) == 10 and (not double or _at(t, i + 1) == 10):
                return i
            i += 1
    return -1


cdef void _bounds(Text t, Py_ssize_t* head_end, Py_ssize_t* tail_start) noexcept:
    cdef Py_ssize_t n = t.n, span = c_instruction_span, k, end, low, high
    high = min(n, span)
    k = _find_break(t, 0, high, True, False)
    if k < 0:
        k = _find_break(t, 0, high, False, False)
    head_end[0] = k if k >= 0 else high
    end = _trimmed_end(t)
    low = max(0, end - span)
    k = _find_break(t, low, end, True, True)
    if k < 0:
        k = _find_break(t, low, end, False, True)
    tail_start[0] = max(k + 1 if k >= 0 else low, head_end[0])


cdef Py_ssize_t _last_line_start(Text text) noexcept:
    cdef Py_ssize_t end = _trimmed_end(text)
    cdef Py_ssize_t k = _find_break(text, max(0, end - c_instruction_span), end, False, True)
    return k + 1 if k >= 0 else 0


cdef Py_ssize_t _trimmed_end(Text t) noexcept:
    cdef Py_ssize_t end = t.n
    cdef Py_ssize_t stop = max(0, end - c_instruction_span)
    while end > stop and _is_space(_at(t, end - 1)):
        end -= 1
    return end
