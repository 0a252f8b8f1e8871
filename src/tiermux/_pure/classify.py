"""Pure-Python twin of ``tiermux._ext.classify``: the classifier's text features and linear scores.

The classifier is a linear model over hashed features of a request's text. This module turns text
into feature buckets and sums the model's int8 weight rows over them; everything above that (signals,
softmax, policy) is plain Python in ``tiermux.routing``, shared by both twins.

What is read, and why there:

- the last user message, which sets the task: its instruction windows (``instruction_bounds``:
  up to ``INSTRUCTION_SPAN`` characters at either end, cut at a paragraph or line break) and the
  start and end of the content between them (``BODY_HEAD``, ``BODY_TAIL``): the instruction sits
  before or after a pasted document, rarely in its middle, so a long paste neither dilutes the
  features nor costs time;
- the system prompt's first ``SYSTEM_HEAD`` characters (task-style system prompts);
- the previous user turn's first ``PREVIOUS_HEAD`` characters (context for "now do the same");
- the first words of the message and of its last line, as positional features ("summarise ...",
  "... Translate the above.").

Features: lowercased word unigrams and bigrams (ASCII digits folded to 0), and character
trigrams of the first ``GRAM_WORDS`` words of each instruction window and of the system prompt,
which carry morphology, typos and languages written without spaces. Each is hashed with FNV-1a
over code points, seeded per region and kind, finished with murmur3's mixer and masked to the
table size. Weights are int8, so sums are exact integers and
the twins agree bit for bit.

``text_stats`` scans the last message once (up to ``STATS_LIMIT``) for the structural signals.
Every scan is bounded, so a huge body costs no more than a large one.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

__all__ = [
    "FEATURES_VERSION",
    "MAX_CLASSES",
    "Model",
    "TextStats",
    "instruction_bounds",
    "signal_hash",
    "text_stats",
    "train_epoch",
]

# Bumped whenever a change below moves any feature to another bucket: model files record the
# version they were trained with, and a mismatch is refused at load.
FEATURES_VERSION = 1

INSTRUCTION_SPAN = 300  # the most of either end of a message read as its instruction
BODY_HEAD = 400  # what is read of the content between the two instruction windows: its start...
BODY_TAIL = 200  # ...and its end
SYSTEM_HEAD = 300
PREVIOUS_HEAD = 200
LEAD_WORDS = 4
MAX_GRAMS_PER_WORD = 16  # bounds a long unspaced run (Chinese, Japanese, a URL)
STATS_LIMIT = 1 << 16  # text_stats reads at most this many characters (signals are about shape)
GRAM_WORDS = 32  # character trigrams for this many words of each window: the rest add cost, not sense
MAX_CLASSES = 32

_MASK = 0xFFFFFFFF
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_BOUNDARY = 0x02

# Seeds: one per (region, kind), so that "summarise" in the system prompt and in the message are
# different features.
SEED_INSTRUCTION_WORD = 0x1001
SEED_INSTRUCTION_BIGRAM = 0x1002
SEED_INSTRUCTION_GRAM = 0x1003
SEED_BODY_WORD = 0x1101
SEED_BODY_BIGRAM = 0x1102
SEED_SYSTEM_WORD = 0x2001
SEED_SYSTEM_BIGRAM = 0x2002
SEED_SYSTEM_GRAM = 0x2003
SEED_PREVIOUS_WORD = 0x3001
SEED_LEAD = 0x4000  # + position
SEED_LINE_LEAD = 0x5000  # + position
SEED_SIGNAL = 0x6001


def _fmix(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    h ^= h >> 16
    return h


def _combine(a: int, b: int) -> int:
    return (a ^ ((b + 0x9E3779B9 + ((a << 6) & _MASK) + (a >> 2)) & _MASK)) & _MASK


def _lower(ch: str) -> int:
    # The simple (one code point) lowercase mapping, as the compiled twin's Py_UNICODE_TOLOWER:
    # the only full mapping longer than one code point (U+0130) starts with the simple one.
    # ASCII digits all read as 0: "v2.8.1" and "v3.0.2" are the same kind of token.
    if "0" <= ch <= "9":
        return 0x30
    return ord(ch.lower()[0])


def signal_hash(name: str) -> int:
    """The 32-bit hash of a named signal feature (``tools``, ``json_mode``...), before masking."""
    h = _FNV_OFFSET ^ SEED_SIGNAL
    for ch in name:
        h = ((h ^ ord(ch)) * _FNV_PRIME) & _MASK
    return h


class TextStats:
    """Counts over the whole last message, for rules and the complexity score."""

    __slots__ = ("chars", "code_punct", "digits", "fences", "lines", "math_ops", "questions", "words")

    def __init__(
        self,
        chars: int,
        lines: int,
        words: int,
        fences: int,
        code_punct: int,
        digits: int,
        math_ops: int,
        questions: int,
    ) -> None:
        self.chars = chars
        self.lines = lines
        self.words = words
        self.fences = fences
        self.code_punct = code_punct
        self.digits = digits
        self.math_ops = math_ops
        self.questions = questions

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)}" for name in sorted(self.__slots__))
        return f"TextStats({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TextStats):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


def text_stats(text: str) -> TextStats:
    """Counts over the first ``STATS_LIMIT`` characters (``chars`` says how many were read)."""
    if len(text) > STATS_LIMIT:
        text = text[:STATS_LIMIT]
    chars = len(text)
    lines = 1 if chars else 0
    words = fences = code_punct = digits = math_ops = questions = 0
    in_word = False
    backticks = 0
    for ch in text:
        if ch.isalnum():
            if not in_word:
                words += 1
                in_word = True
            if "0" <= ch <= "9":
                digits += 1
        else:
            in_word = False
            if ch == "\n":
                lines += 1
            elif ch in "{}();[]<>":
                code_punct += 1
            elif ch in "+-*/^=%":
                math_ops += 1
            elif ch == "?" or ch == "\uff1f":
                questions += 1
        if ch == "`":
            backticks += 1
            if backticks == 3:
                fences += 1
                backticks = 0
        else:
            backticks = 0
    return TextStats(chars, lines, words, fences, code_punct, digits, math_ops, questions)


class Model:
    """An int8 weight table of ``n_buckets`` rows by ``n_classes`` columns (row-major)."""

    def __init__(
        self, table: bytes, n_classes: int, bias: Sequence[float] | None = None, scale: float = 1.0
    ) -> None:
        if not 1 <= n_classes <= MAX_CLASSES:
            raise ValueError(f"n_classes must be within 1..{MAX_CLASSES}")
        if len(table) % n_classes:
            raise ValueError("table size is not a multiple of n_classes")
        n_buckets = len(table) // n_classes
        if n_buckets < 2 or n_buckets & (n_buckets - 1):
            raise ValueError("the number of buckets must be a power of two")
        if bias is not None and len(bias) != n_classes:
            raise ValueError("one bias per class is needed")
        self.n_classes = n_classes
        self.n_buckets = n_buckets
        self._mask = n_buckets - 1
        self._table = memoryview(table).cast("b")
        self._bias = [float(b) for b in bias] if bias is not None else [0.0] * n_classes
        self._scale = float(scale)

    def __repr__(self) -> str:
        return f"<Model buckets={self.n_buckets} classes={self.n_classes}>"

    def features(self, system: str, previous: str, last: str) -> list[int]:
        """The feature buckets of a request's text, with repetitions, in a fixed order."""
        out: list[int] = []
        mask = self._mask
        for h in _hashes(system, previous, last):
            out.append(_fmix(h) & mask)
        return out

    def score(self, system: str, previous: str, last: str, extra: Sequence[int]) -> tuple[list[int], int]:
        """Per-class sums of the weight rows of every feature and of ``extra`` buckets, and the
        number of features summed."""
        nc = self.n_classes
        table = self._table
        acc = [0] * nc
        n = 0
        for bucket in self.features(system, previous, last):
            base = bucket * nc
            for c in range(nc):
                acc[c] += table[base + c]
            n += 1
        for bucket in extra:
            base = (bucket & self._mask) * nc
            for c in range(nc):
                acc[c] += table[base + c]
            n += 1
        return acc, n

    def predict(self, system: str, previous: str, last: str, extra: Sequence[int]) -> list[float]:
        """Class probabilities: softmax of ``bias + scale * sums / sqrt(count)``."""
        sums, count = self.score(system, previous, last, extra)
        factor = self._scale / math.sqrt(count) if count else 0.0
        logits = [self._bias[c] + sums[c] * factor for c in range(self.n_classes)]
        top = logits[0]
        for x in logits:
            if x > top:
                top = x
        total = 0.0
        for c in range(self.n_classes):
            logits[c] = math.exp(logits[c] - top)
            total += logits[c]
        return [e / total for e in logits]


def train_epoch(
    weights: array[float],
    squares: array[float],
    bias: array[float],
    bias_squares: array[float],
    samples: Sequence[tuple[Sequence[int], Sequence[float], int]],
    order: Sequence[int],
    n_classes: int,
    rate: float,
    l2: float,
) -> float:
    """One pass of AdaGrad over multinomial logistic loss, in ``order``; returns the mean loss.

    ``weights`` is ``n_buckets * n_classes`` row-major like a model's table; each sample is its
    distinct buckets, their values and its class. ``squares`` hold AdaGrad's running sums and must
    start above zero. Updates are sparse: only the rows a sample touches move (L2 included).
    """
    nc = n_classes
    if not 1 <= nc <= MAX_CLASSES:
        raise ValueError(f"n_classes must be within 1..{MAX_CLASSES}")
    n_buckets = len(weights) // nc
    probs = [0.0] * nc
    loss = 0.0
    count = 0
    for i in order:
        buckets, values, label = samples[i]
        _check_sample(buckets, values, label, nc, n_buckets)
        count += 1
        for c in range(nc):
            probs[c] = bias[c]
        for b, v in zip(buckets, values, strict=False):  # lengths checked above
            base = b * nc
            for c in range(nc):
                probs[c] += weights[base + c] * v
        top = max(probs)
        total = 0.0
        for c in range(nc):
            probs[c] = math.exp(probs[c] - top)
            total += probs[c]
        for c in range(nc):
            probs[c] /= total
        p = probs[label]
        loss -= math.log(p if p > 1e-300 else 1e-300)
        for c in range(nc):
            g = probs[c] - 1.0 if c == label else probs[c]
            bias_squares[c] += g * g
            bias[c] -= rate * g / math.sqrt(bias_squares[c])
            for b, v in zip(buckets, values, strict=False):  # lengths checked above
                k = b * nc + c
                grad = g * v + l2 * weights[k]
                squares[k] += grad * grad
                weights[k] -= rate * grad / math.sqrt(squares[k])
    return loss / count if count else 0.0


def _check_sample(
    buckets: Sequence[int], values: Sequence[float], label: int, nc: int, n_buckets: int
) -> None:
    if not 0 <= label < nc:
        raise ValueError(f"label {label} is not a class index")
    if len(buckets) != len(values):
        raise ValueError("a sample needs one value per bucket")
    for b in buckets:
        if not 0 <= b < n_buckets:
            raise ValueError(f"bucket {b} is outside the table")


def instruction_bounds(text: str) -> tuple[int, int]:
    """``(head_end, tail_start)``: ``text[:head_end]`` and ``text[tail_start:]`` are read as the
    instruction, the rest as content. The head ends at the first paragraph break (else the first
    line break) within ``INSTRUCTION_SPAN``; the tail starts after the last one within that span
    of the end. When they meet, the whole text is instruction."""
    n = len(text)
    span = INSTRUCTION_SPAN
    k = text.find("\n\n", 0, span)
    if k < 0:
        k = text.find("\n", 0, span)
    head_end = k if k >= 0 else min(n, span)
    end = _trimmed_end(text)
    low = max(0, end - span)
    k = text.rfind("\n\n", low, end)
    if k < 0:
        k = text.rfind("\n", low, end)
    tail_start = k + 1 if k >= 0 else low
    return head_end, max(tail_start, head_end)


def _hashes(system: str, previous: str, last: str) -> list[int]:
    out: list[int] = []
    n = len(last)
    head_end, tail_start = instruction_bounds(last)
    instruction = (SEED_INSTRUCTION_WORD, SEED_INSTRUCTION_BIGRAM, SEED_INSTRUCTION_GRAM)
    _words(out, last, 0, head_end, *instruction)
    if tail_start < n:
        _words(out, last, tail_start, n, *instruction)
    if tail_start > head_end:
        body_end = min(tail_start, head_end + BODY_HEAD)
        _words(out, last, head_end, body_end, SEED_BODY_WORD, SEED_BODY_BIGRAM, 0)
        if tail_start > body_end:
            _words(
                out,
                last,
                max(body_end, tail_start - BODY_TAIL),
                tail_start,
                SEED_BODY_WORD,
                SEED_BODY_BIGRAM,
                0,
            )
    _leads(out, last, 0, SEED_LEAD)
    line = _last_line_start(last)
    if line > 0:
        _leads(out, last, line, SEED_LINE_LEAD)
    end = min(len(system), SYSTEM_HEAD)
    _words(out, system, 0, end, SEED_SYSTEM_WORD, SEED_SYSTEM_BIGRAM, SEED_SYSTEM_GRAM)
    end = min(len(previous), PREVIOUS_HEAD)
    _words(out, previous, 0, end, SEED_PREVIOUS_WORD, 0, 0)
    return out


def _words(
    out: list[int], text: str, start: int, end: int, word_seed: int, bigram_seed: int, gram_seed: int
) -> None:
    """Word, bigram and character-trigram features of the words of ``text[start:end]``; a seed of
    0 turns its kind off."""
    prev = -1
    grams_left = GRAM_WORDS if gram_seed else 0
    i = start
    while i < end:
        if not text[i].isalnum():
            i += 1
            continue
        j = i
        h = _FNV_OFFSET ^ word_seed
        while j < end and text[j].isalnum():
            h = ((h ^ _lower(text[j])) * _FNV_PRIME) & _MASK
            j += 1
        out.append(h)
        if bigram_seed:
            if prev >= 0:
                out.append(_combine(prev ^ bigram_seed, h))
            prev = h
        if grams_left:
            _grams(out, text, i, j, gram_seed)
            grams_left -= 1
        i = j


def _grams(out: list[int], text: str, start: int, end: int, seed: int) -> None:
    """Character trigrams of ``text[start:end]`` framed by boundary marks, at most
    ``MAX_GRAMS_PER_WORD`` of them."""
    a = _BOUNDARY
    b = _lower(text[start])
    count = 0
    k = start + 1
    while count < MAX_GRAMS_PER_WORD:
        c = _lower(text[k]) if k < end else _BOUNDARY
        h = _FNV_OFFSET ^ seed
        h = ((h ^ a) * _FNV_PRIME) & _MASK
        h = ((h ^ b) * _FNV_PRIME) & _MASK
        h = ((h ^ c) * _FNV_PRIME) & _MASK
        out.append(h)
        count += 1
        if k >= end:
            break
        a, b = b, c
        k += 1


def _leads(out: list[int], text: str, start: int, seed: int) -> None:
    """The first ``LEAD_WORDS`` words from ``start`` (within ``INSTRUCTION_SPAN``), each seeded
    with its position."""
    n = min(len(text), start + INSTRUCTION_SPAN)
    i = start
    for position in range(LEAD_WORDS):
        while i < n and not text[i].isalnum():
            if text[i] == "\n" and position:
                return
            i += 1
        if i >= n:
            return
        h = _FNV_OFFSET ^ (seed + position)
        while i < n and text[i].isalnum():
            h = ((h ^ _lower(text[i])) * _FNV_PRIME) & _MASK
            i += 1
        out.append(h)


def _last_line_start(text: str) -> int:
    """Where the last non-blank line starts, or 0 when the text is a single line (or the last
    line is longer than ``INSTRUCTION_SPAN``)."""
    end = _trimmed_end(text)
    k = text.rfind("\n", max(0, end - INSTRUCTION_SPAN), end)
    return k + 1 if k >= 0 else 0


def _trimmed_end(text: str) -> int:
    """The end of ``text`` without trailing whitespace (at most ``INSTRUCTION_SPAN`` trimmed)."""
    end = len(text)
    stop = max(0, end - INSTRUCTION_SPAN)
    while end > stop and text[end - 1].isspace():
        end -= 1
    return end
