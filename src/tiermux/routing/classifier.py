"""The request classifier: category, confidence, complexity score and the signals that fired.

Three parts:

- **signals**: structural facts read off the request (tools, JSON mode, code fences, code or
  maths density, length, turns, ``max_tokens``...). Each becomes a feature of the learned model
  (weighted ``SIGNAL_WEIGHT`` times), so their weight is learned from data rather than guessed;
- **the learned model**: a linear model over hashed word and character n-grams of the instruction
  windows of the text (``tiermux._speedups.classify``), trained by ``tiermux train``; a softmax
  over its logits gives the probabilities;
- **rules** for the two cases unambiguous enough to write down: a closed fence around code is
  ``code``; an instruction that compares options and asks to pick one is ``reasoning``.

The complexity score (0-100) is a transparent sum of capped parts (length, turns, code, maths,
requested output, tools, and how likely the request is one of the hard categories), so that a
policy threshold on it means something a person can reason about.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from tiermux._speedups import classify
from tiermux.routing.categories import CAPABLE_BY_DEFAULT, CATEGORIES, SIGNALS
from tiermux.routing.request import RequestText
from tiermux.routing.weights import Weights, WeightsError

__all__ = ["SIGNALS", "Classification", "Classifier", "complexity", "signals_of"]


# Each signal counts as this many features, so that a structural fact (JSON mode, tools, a code
# fence) keeps its say next to the hundreds of text features of a long request.
SIGNAL_WEIGHT = 10

# Rules, for the few cases unambiguous enough to write down (the model decides everything else):
# - a closed fence around text with code punctuation decides "code";
# - an instruction that asks to compare options and to decide between them decides "reasoning"
#   (English only; in other languages the model has to see it).
RULE_CONFIDENCE = 0.9
_COMPARE = re.compile(r"\b(?:compar\w*|contrast\w*|versus|vs|trade-?offs?|weigh(?:ing)? up)\b")
_DECIDE = re.compile(
    r"\b(?:recommend\w*|which (?:one|option|plan|offer|should|is (?:better|best|cheaper)|would you)"
    r"|should (?:i|we) (?:choose|pick|go with|take|accept)|better (?:choice|option|deal)|decide"
    r"|choose between)\b"
)


class Classification:
    """What the classifier says about one request."""

    __slots__ = ("_classes", "_probs", "category", "confidence", "rules", "score", "signals")

    def __init__(
        self,
        category: str,
        confidence: float,
        score: int,
        signals: tuple[str, ...],
        classes: tuple[str, ...] = (),
        probs: Sequence[float] = (),
        rules: tuple[str, ...] = (),
    ) -> None:
        self.category = category
        self.confidence = confidence
        self.score = score
        self.signals = signals
        self.rules = rules
        self._classes = classes
        self._probs = probs

    def __repr__(self) -> str:
        return (
            f"<Classification {self.category} confidence={self.confidence:.2f} score={self.score} "
            f"signals={list(self.signals)}>"
        )

    @property
    def probs_by_category(self) -> Sequence[float]:
        """Probabilities in ``CATEGORIES`` order."""
        return self._probs

    @property
    def probabilities(self) -> dict[str, float]:
        """Every category's probability (built on demand: the hot path never needs it)."""
        return dict(zip(self._classes, self._probs, strict=True))

    def with_category(self, category: str, rule: str) -> Classification:
        """The same, with the category decided by ``rule`` instead (confidence 1)."""
        return Classification(
            category, 1.0, self.score, self.signals, self._classes, self._probs, (*self.rules, rule)
        )


def signals_of(request: RequestText, stats: classify.TextStats) -> list[str]:
    """The structural signals of a request, by name (each also a model feature)."""
    names: list[str] = []
    if request.tools:
        names.append("tools")
    if request.json_mode:
        names.append("json_mode")
    if request.image:
        names.append("image")
    if request.system:
        names.append("system")
    if request.turns > 1:
        names.append("multi_turn")
    if stats.fences >= 2:
        names.append("code_fence")
    if stats.code_punct >= 8 and stats.code_punct * 40 >= stats.chars:
        names.append("code_dense")
    maths = stats.math_ops + stats.digits
    if stats.math_ops and maths >= 4 and maths * 25 >= stats.chars:
        names.append("math_dense")
    if stats.chars < 80:
        names.append("short")
    elif stats.chars >= 6000:
        names.append("very_long")
    elif stats.chars >= 1500:
        names.append("long")
    if stats.questions >= 3:
        names.append("questions")
    elif stats.questions:
        names.append("question")
    if stats.lines >= 10:
        names.append("multi_line")
    max_tokens = request.max_tokens
    if max_tokens is not None:
        if max_tokens <= 64:
            names.append("max_tokens_small")
        elif max_tokens >= 2000:
            names.append("max_tokens_large")
    temperature = request.temperature
    if temperature is not None and temperature >= 0.9:
        names.append("temperature_high")
    return names


class Classifier:
    """Classifies :class:`RequestText` with trained :class:`Weights`."""

    def __init__(self, weights: Weights) -> None:
        self.weights = weights
        self.classes = tuple(weights.classes)
        if self.classes != CATEGORIES:
            raise WeightsError(f"the weights' classes {list(self.classes)} are not tiermux's categories")
        self._model = weights.model
        self._signal_buckets: dict[str, int] = {}
        hard = [i for i, name in enumerate(self.classes) if name in CAPABLE_BY_DEFAULT]
        self._hard = hard
        self._code = self.classes.index("code")
        self._reasoning = self.classes.index("reasoning")

    def __repr__(self) -> str:
        return f"<Classifier classes={len(self.classes)} buckets={self._model.n_buckets}>"

    def classify(self, request: RequestText) -> Classification:
        stats = classify.text_stats(request.last)
        names = signals_of(request, stats)
        probs = self._model.predict(
            request.system, request.previous, request.last, signal_buckets(names, self._signal_buckets)
        )
        best = 0
        for i, p in enumerate(probs):
            if p > probs[best]:
                best = i
        category = self.classes[best]
        confidence = probs[best]
        rules: tuple[str, ...] = ()
        if category != "code" and _looks_like_fenced_code(names, stats):
            category, rules = "code", ("code_fence",)
            confidence = max(probs[self._code], RULE_CONFIDENCE)
        elif category != "reasoning" and _asks_to_compare_and_decide(request.last):
            category, rules = "reasoning", ("compare_and_decide",)
            confidence = max(probs[self._reasoning], RULE_CONFIDENCE)
        hard = 0.0
        for i in self._hard:
            hard += probs[i]
        score = complexity(request, stats, names, hard)
        return Classification(category, confidence, score, tuple(names), self.classes, probs, rules)


def signal_buckets(names: Sequence[str], cache: dict[str, int] | None = None) -> list[int]:
    """The feature hashes of the signals, each ``SIGNAL_WEIGHT`` times (training and serving)."""
    out = []
    for name in names:
        bucket = cache.get(name) if cache is not None else None
        if bucket is None:
            bucket = classify.signal_hash(name)
            if cache is not None:
                cache[name] = bucket
        out.extend([bucket] * SIGNAL_WEIGHT)
    return out


def _looks_like_fenced_code(names: Sequence[str], stats: classify.TextStats) -> bool:
    """A closed ``` fence plus code punctuation: someone pasted code and asks about it."""
    return "code_fence" in names and stats.code_punct >= 2


def _asks_to_compare_and_decide(text: str) -> bool:
    """Both a comparison and a decision asked for in the instruction windows of the message."""
    head_end, tail_start = classify.instruction_bounds(text)
    instruction = text[:head_end].lower()
    if tail_start < len(text):
        instruction += "\n" + text[tail_start:].lower()
    # Substring tests first (well under a microsecond): most requests compare nothing.
    if not (
        "compar" in instruction
        or "vs" in instruction
        or "trade" in instruction
        or "versus" in instruction
        or "contrast" in instruction
        or "weigh" in instruction
    ):
        return False
    return _COMPARE.search(instruction) is not None and _DECIDE.search(instruction) is not None


_LENGTH_FLOOR = 300  # characters of conversation worth no complexity points...
_LENGTH_SPAN = math.log(20_000 / _LENGTH_FLOOR)  # ...and the (log) span over which 20 are earned
# Points for the signals that make work harder, whatever its category.
_SIGNAL_POINTS = {
    "code_fence": 10.0,
    "code_dense": 10.0,
    "math_dense": 8.0,
    "tools": 8.0,
    "max_tokens_large": 5.0,
    "questions": 4.0,
}


def complexity(
    request: RequestText, stats: classify.TextStats, names: Sequence[str], hard_probability: float
) -> int:
    """0-100: a sum of capped, explainable parts.

    length of the conversation (up to 20, log scale from 300 to 20,000 characters), earlier turns
    (2.5 each, up to 10), the probability of a hard category (up to 35), and the signals of
    ``_SIGNAL_POINTS`` (code counted once).
    """
    chars = request.total_chars
    score = 35.0 * hard_probability
    if chars > _LENGTH_FLOOR:
        length = 20.0 * math.log(chars / _LENGTH_FLOOR) / _LENGTH_SPAN
        score += length if length < 20.0 else 20.0
    turns = request.turns - 1
    if turns > 0:
        score += 2.5 * turns if turns < 4 else 10.0
    code = False
    for name in names:
        points = _SIGNAL_POINTS.get(name)
        if points is not None:
            if name.startswith("code"):
                if code:
                    continue
                code = True
            score += points
    return int(score + 0.5) if score < 100.0 else 100
