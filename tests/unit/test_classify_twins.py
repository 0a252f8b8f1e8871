"""The classifier's compiled and pure twins give identical features, scores, statistics and training.

The proxy routes with whichever twin is loaded and ``tiermux train`` may run with either, so any
difference (a lowercase mapping, a word boundary, a window off by one, a float summed in another
order) would route the same request differently on two installs. These tests compare
``tiermux._ext.classify`` and ``tiermux._pure.classify`` directly, whatever ``_speedups`` picked.
"""

from __future__ import annotations

import importlib
import json
import math
import random
import sys
import unicodedata
from array import array
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from bench.classifier import DEFAULT_SHARED
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tests.support import ROOT

from tiermux._pure import classify as pure
from tiermux.routing.categories import CATEGORIES
from tiermux.routing.dataset import load_examples
from tiermux.routing.request import RequestText
from tiermux.routing.train import featurise
from tiermux.routing.weights import load_weights


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("tiermux._ext.classify")
    except ImportError:
        return None


COMPILED = _compiled()
pytestmark = pytest.mark.skipif(COMPILED is None, reason="compiled tiermux._ext.classify is not built")

# A compiled model (Any: its module is found at run time) and its pure twin.
Twins = tuple[Any, pure.Model]

N_CLASSES = len(CATEGORIES)
DATA_FILES = sorted((ROOT / "bench" / "data").glob("set-*.jsonl"))
SHARED_SAMPLE = DEFAULT_SHARED  # optional: used when present next to the checkout


def _table(buckets: int, classes: int, seed: int) -> bytes:
    """A pseudo-random int8 table, so that every bucket and every class contributes to a score."""
    return random.Random(seed).randbytes(buckets * classes)


# Small enough that the pure twin is quick, big enough that different features rarely share a bucket.
TABLE = _table(1 << 12, N_CLASSES, seed=11)
BIAS = [round(random.Random(5).uniform(-2, 2), 3) + i / 7 for i in range(N_CLASSES)]
SCALE = 0.037


@pytest.fixture(scope="module")
def models() -> Twins:
    assert COMPILED is not None
    return COMPILED.Model(TABLE, N_CLASSES, BIAS, SCALE), pure.Model(TABLE, N_CLASSES, BIAS, SCALE)


# --- text strategies -----------------------------------------------------------------------------

# Pieces that steer the code paths: line and paragraph breaks (instruction windows, last line),
# backticks (fences), ASCII and other digits (digits read as 0), code and maths punctuation, the
# fullwidth question mark, characters whose lowercase is special (İ, ẞ, Σ, ǅ, the Kelvin sign),
# combining marks, CJK without spaces (trigram cap), emoji with joiners, Unicode spaces and a lone
# surrogate.
PIECES = [
    "\n",
    "\n\n",
    "\n \n",
    "\r\n",
    " ",
    "\t",
    "```",
    "```python\n",
    "``",
    "`",
    "0",
    "7",
    "2024-03-14",
    "v2.8.1",
    "İ",
    "İSTANBUL",
    "ẞ",
    "Σ",
    "ǅ",
    "\u212a",
    "e\u0301",
    "\u0301",
    "a\u0308\u0323",
    "漢字",
    "東京で会いましょう。明日は雨です",
    "😀",
    "👩‍💻",
    "🇫🇷",
    "?",
    "\uff1f",
    "{",
    "}",
    "();",
    "[x]",
    "<div>",
    "+",
    "x^2 = 4 % 3",
    "\u00a0",
    "\u2028",
    "\x85",
    "\u3000",
    "١٢٣",
    "Ⅻ",
    "²",
    "\ud800",
    "Summarise this.",
    "def total(items):",
    "Translate the above.",
]

TEXT = st.lists(st.one_of(st.text(max_size=24), st.sampled_from(PIECES)), max_size=40).map("".join)

# Long texts: paragraphs (and repeated words, as in a pasted document) joined by breaks, so that the
# head, body and tail windows of the last message and the system/previous caps all come into play.
_PARAGRAPH = st.one_of(
    TEXT,
    st.builds(
        lambda word, n: " ".join([word] * n),
        st.sampled_from(["lorem", "données", "İyi", "日本語", "x1", "naïve", "```"]),
        st.integers(min_value=5, max_value=150),
    ),
)
LONG_TEXT = st.builds(
    lambda parts, separator: separator.join(parts),
    st.lists(_PARAGRAPH, min_size=1, max_size=10),
    st.sampled_from(["\n\n", "\n", " ", "\n\n\n"]),
)
EXTRA = st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=6)


def _assert_same(models: Twins, system: str, previous: str, last: str) -> None:
    assert COMPILED is not None
    compiled_model, pure_model = models
    assert compiled_model.features(system, previous, last) == pure_model.features(system, previous, last)
    extra = [pure.signal_hash("tools"), 5, 2**32 - 1]
    assert compiled_model.score(system, previous, last, extra) == pure_model.score(
        system, previous, last, extra
    )
    assert compiled_model.predict(system, previous, last, extra) == pure_model.predict(
        system, previous, last, extra
    )
    assert COMPILED.text_stats(last) == pure.text_stats(last)
    assert COMPILED.instruction_bounds(last) == pure.instruction_bounds(last)


# --- properties ----------------------------------------------------------------------------------


@settings(max_examples=150)
@given(system=TEXT, previous=TEXT, last=TEXT, extra=EXTRA)
@example(system="", previous="", last="", extra=[])
@example(system="İİİ", previous="e\u0301\u0301", last="```\n{}\n```", extra=[0])
@example(system="", previous="", last="\n\n\n", extra=[])
def test_property_features_and_scores_agree(
    models: Twins, system: str, previous: str, last: str, extra: list[int]
) -> None:
    compiled_model, pure_model = models
    assert compiled_model.features(system, previous, last) == pure_model.features(system, previous, last)
    assert compiled_model.score(system, previous, last, extra) == pure_model.score(
        system, previous, last, extra
    )
    probabilities = pure_model.predict(system, previous, last, extra)
    assert compiled_model.predict(system, previous, last, extra) == probabilities
    assert math.isclose(sum(probabilities), 1.0)


@settings(max_examples=50)
@given(system=LONG_TEXT, previous=LONG_TEXT, last=LONG_TEXT)
def test_property_long_texts_agree(models: Twins, system: str, previous: str, last: str) -> None:
    _assert_same(models, system, previous, last)


@settings(max_examples=150)
@given(text=st.one_of(TEXT, LONG_TEXT))
@example(text="```py\nx = [1, 2]\n```\n\uff1f")
@example(text="İ" * 400 + "\n")
def test_property_text_stats_and_bounds_agree(text: str) -> None:
    assert COMPILED is not None
    assert COMPILED.text_stats(text) == pure.text_stats(text)
    head_end, tail_start = COMPILED.instruction_bounds(text)
    assert (head_end, tail_start) == pure.instruction_bounds(text)
    assert 0 <= head_end <= tail_start <= max(len(text), head_end)


@given(name=st.text(max_size=20))
def test_property_signal_hash_agrees(name: str) -> None:
    assert COMPILED is not None
    value = pure.signal_hash(name)
    assert COMPILED.signal_hash(name) == value
    assert 0 <= value < 2**32


def test_constants_agree() -> None:
    assert COMPILED is not None
    assert COMPILED.FEATURES_VERSION == pure.FEATURES_VERSION
    assert COMPILED.MAX_CLASSES == pure.MAX_CLASSES


# --- deterministic edges -------------------------------------------------------------------------


@pytest.mark.parametrize("brk", ["\n", "\n\n", "\n\n\n"])
def test_breaks_around_the_instruction_span(models: Twins, brk: str) -> None:
    """A break just inside, on, or just outside the 300-character windows, from either end."""
    span = pure.INSTRUCTION_SPAN
    for position in range(span - 2, span + 2):
        head = "word " * (position // 5) + "w" * (position % 5)
        for tail_length in (span - 1, span + 1):
            tail = ("tail " * tail_length)[:tail_length]
            for text in (head + brk + tail, head + brk + tail + "\n \t", head + brk, brk + tail):
                _assert_same(models, "", "", text)
            _assert_same(models, head + brk + tail, tail + brk + head, "summarise")


def test_every_code_point(models: Twins) -> None:
    """Character classes and lowercase mappings agree for every code point, not just sampled ones.

    The compiled twin reads CPython's simple case and class tables (``Py_UNICODE_*``); the pure
    one ``str.lower()``/``str.isalnum()``/``str.isspace()``: they must never disagree.
    """
    assert COMPILED is not None
    every = [chr(c) for c in range(sys.maxunicode + 1)]
    # Word boundaries: one word per alphanumeric character, with a separator between them.
    for start in range(0, len(every), 1 << 16):
        text = "\x00".join(every[start : start + (1 << 16)])
        assert COMPILED.text_stats(text) == pure.text_stats(text), f"block U+{start:04X}"
    # Lowercase: every alphanumeric character goes into the hash of one long word, with many
    # buckets so that a different hash is all but certain to land in a different bucket.
    wide = bytes(1 << 20)
    compiled_model, pure_model = COMPILED.Model(wide, 1), pure.Model(wide, 1)
    alnum = [ch for ch in every if ch.isalnum()]
    for start in range(0, len(alnum), 250):
        word = "".join(alnum[start : start + 250])
        if compiled_model.features("", "", word) != pure_model.features("", "", word):
            different = [
                ch for ch in word if compiled_model.features("", "", ch) != pure_model.features("", "", ch)
            ]
            pytest.fail(f"lowercase differs for {[f'U+{ord(ch):04X}' for ch in different]}")
    # Spaces: trailing whitespace is trimmed before the last line is looked for. Every character
    # that is a space, a separator or a control (the only kinds near the whitespace table).
    spacey = [
        ch for ch in every if ch.isspace() or unicodedata.category(ch) in ("Zs", "Zl", "Zp", "Cc", "Cf")
    ]
    assert len(spacey) > 200
    for ch in spacey:
        text = "ab\n" + ch
        expected = 2 if ch.isspace() else 3
        assert COMPILED.instruction_bounds(text) == (2, expected), f"U+{ord(ch):04X}"


@pytest.mark.parametrize(
    ("table", "n_classes", "bias"),
    [
        (bytes(18), 0, None),
        (bytes(18), 33, None),
        (bytes(19), 9, None),
        (bytes(27), 9, None),  # 3 buckets
        (bytes(9), 9, None),  # 1 bucket
        (b"", 9, None),
        (bytes(36), 9, [0.0] * 8),
        (bytes(36), 9, [0.0] * 10),
    ],
)
def test_bad_models_are_refused_alike(table: bytes, n_classes: int, bias: list[float] | None) -> None:
    assert COMPILED is not None
    with pytest.raises(ValueError) as pure_error:
        pure.Model(table, n_classes, bias)
    with pytest.raises(ValueError) as compiled_error:
        COMPILED.Model(table, n_classes, bias)
    assert str(compiled_error.value) == str(pure_error.value)


def test_predict_without_features_is_the_softmax_of_the_biases() -> None:
    assert COMPILED is not None
    bias = [0.0, 1.0, 2.0]
    expected = [math.exp(b - 2.0) for b in bias]
    expected = [e / sum(expected) for e in expected]
    for module in (COMPILED, pure):
        model = module.Model(bytes(2 * 3), 3, bias, 5.0)
        assert model.predict("", "", "", []) == pytest.approx(expected, rel=1e-12)
        # without biases, a zero table says nothing
        assert module.Model(bytes(4 * 3), 3).predict("", "", "anything at all", [7]) == [1 / 3] * 3


# --- real prompts --------------------------------------------------------------------------------


def _real_files() -> list[object]:
    files: list[object] = [pytest.param(path, id=path.name) for path in DATA_FILES]
    files.append(
        pytest.param(
            SHARED_SAMPLE,
            id=SHARED_SAMPLE.name,
            marks=pytest.mark.skipif(not SHARED_SAMPLE.is_file(), reason="no shared routing sample"),
        )
    )
    return files


@pytest.fixture(scope="module")
def bundled_models() -> Twins:
    assert COMPILED is not None
    weights = load_weights()
    return (
        COMPILED.Model(weights.table, N_CLASSES, weights.bias, weights.scale),
        pure.Model(weights.table, N_CLASSES, weights.bias, weights.scale),
    )


def test_data_files_are_there() -> None:
    """The real-prompt comparisons below must not pass by finding nothing to compare."""
    assert len(DATA_FILES) >= 5


@pytest.mark.parametrize("path", _real_files())
def test_real_prompts_agree(bundled_models: Twins, path: Path) -> None:
    """Every labelled prompt shipped with the project, through the bundled model's table."""
    assert COMPILED is not None
    compiled_model, pure_model = bundled_models
    examples = load_examples([path])
    assert examples
    for n, ex in enumerate(examples):
        r = ex.request
        where = f"{path.name}: {ex.id}"
        assert compiled_model.features(r.system, r.previous, r.last) == pure_model.features(
            r.system, r.previous, r.last
        ), where
        assert COMPILED.text_stats(r.last) == pure.text_stats(r.last), where
        assert COMPILED.instruction_bounds(r.last) == pure.instruction_bounds(r.last), where
        if n % 6 == 0:  # the serving path's probabilities; a sample keeps the pure twin's time down
            extra = [pure.signal_hash("system"), pure.signal_hash("long")]
            assert compiled_model.predict(r.system, r.previous, r.last, extra) == pure_model.predict(
                r.system, r.previous, r.last, extra
            ), where


# --- training ------------------------------------------------------------------------------------

TRAIN_BUCKETS = 1 << 10


def _state(n_classes: int) -> tuple[array[float], array[float], array[float], array[float]]:
    size = TRAIN_BUCKETS * n_classes
    return (
        array("d", bytes(8 * size)),
        array("d", [1e-6]) * size,
        array("d", [0.0] * n_classes),
        array("d", [1e-6] * n_classes),
    )


def _run_epochs(
    module: ModuleType,
    samples: list[tuple[array[int], array[float], int]],
    n_classes: int,
    orders: list[list[int]],
    rate: float = 0.4,
    l2: float = 1e-4,
) -> tuple[list[float], tuple[array[float], ...]]:
    state = _state(n_classes)
    losses = [module.train_epoch(*state, samples, order, n_classes, rate, l2) for order in orders]
    return losses, state


def _real_samples(path: Path, per_label: int) -> list[tuple[array[int], array[float], int]]:
    """A few examples of each label, featurised as ``train`` does."""
    scratch = pure.Model(bytes(TRAIN_BUCKETS * N_CLASSES), N_CLASSES)
    taken: dict[str, int] = {}
    samples = []
    for ex in load_examples([path]):
        if taken.get(ex.label, 0) < per_label:
            taken[ex.label] = taken.get(ex.label, 0) + 1
            samples.append(featurise(scratch, ex, CATEGORIES.index(ex.label)))
    return samples


@pytest.mark.parametrize("path", DATA_FILES[:2], ids=[p.name for p in DATA_FILES[:2]])
def test_train_epoch_on_real_samples_agrees(path: Path) -> None:
    """Two epochs over real samples: the weights, AdaGrad sums, biases and losses are identical
    floats, so the trained (then quantised) file does not depend on the twin."""
    assert COMPILED is not None
    samples = _real_samples(path, per_label=3)
    assert len({label for _, _, label in samples}) == N_CLASSES
    rng = random.Random(3)
    orders = []
    for _ in range(2):
        order = list(range(len(samples)))
        rng.shuffle(order)
        orders.append(order)
    compiled_losses, compiled_state = _run_epochs(COMPILED, samples, N_CLASSES, orders)
    pure_losses, pure_state = _run_epochs(pure, samples, N_CLASSES, orders)
    assert compiled_losses == pure_losses
    assert compiled_losses[1] < compiled_losses[0]  # it did learn something
    for compiled_values, pure_values in zip(compiled_state, pure_state, strict=True):
        assert compiled_values == pure_values


_SAMPLE = st.tuples(
    st.lists(st.integers(min_value=0, max_value=TRAIN_BUCKETS - 1), min_size=0, max_size=12, unique=True),
    st.floats(min_value=0.01, max_value=3.0),
    st.integers(min_value=0, max_value=31),
)


@settings(max_examples=60)
@given(
    raw=st.lists(_SAMPLE, min_size=1, max_size=8),
    n_classes=st.integers(min_value=1, max_value=9),
    rate=st.floats(min_value=0.01, max_value=1.0),
    l2=st.sampled_from([0.0, 1e-5, 1e-2]),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_property_train_epoch_agrees(
    raw: list[tuple[list[int], float, int]], n_classes: int, rate: float, l2: float, seed: int
) -> None:
    assert COMPILED is not None
    samples = [
        (array("l", sorted(buckets)), array("d", [value] * len(buckets)), label % n_classes)
        for buckets, value, label in raw
    ]
    order = list(range(len(samples))) * 2
    random.Random(seed).shuffle(order)
    orders = [order, order[::-1]]
    compiled_losses, compiled_state = _run_epochs(COMPILED, samples, n_classes, orders, rate, l2)
    pure_losses, pure_state = _run_epochs(pure, samples, n_classes, orders, rate, l2)
    assert compiled_losses == pure_losses
    for compiled_values, pure_values in zip(compiled_state, pure_state, strict=True):
        assert compiled_values == pure_values


def test_train_epoch_with_nothing_to_do() -> None:
    assert COMPILED is not None
    for module in (COMPILED, pure):
        state = _state(2)
        assert module.train_epoch(*state, [], [], 2, 0.4, 0.0) == 0.0
        assert state[0] == _state(2)[0]


def test_classifier_inputs_from_a_request_agree(models: Twins) -> None:
    """A whole chat request as the proxy reads it (system, previous turn, last turn)."""
    request = RequestText(
        "Thanks. Now do the same for the attached CSV and explain each step:\n\n"
        + "\n".join(f"{i},İtem {i},{i * 3.5}" for i in range(200)),
        system="You are a careful data analyst. Answer in English; 回答は英語で。",
        previous=json.dumps({"rows": [1, 2, 3], "note": "naïve café ✓"}),
    )
    _assert_same(models, request.system, request.previous, request.last)


@pytest.mark.parametrize(
    "sample",
    [
        ([1, 2], [0.5, 0.5], 9),  # label out of range
        ([1, 2], [0.5, 0.5], -1),
        ([1, 2], [0.5], 0),  # one value short
        ([1, 1 << 12], [0.5, 0.5], 0),  # bucket past the table
        ([-1], [0.5], 0),
    ],
    ids=["label-high", "label-negative", "lengths", "bucket-high", "bucket-negative"],
)
def test_train_epoch_refuses_bad_samples_alike(sample: tuple[list[int], list[float], int]) -> None:
    """The compiled loop runs without bounds checks: a bad sample must be refused before it."""
    assert COMPILED is not None
    errors = []
    for module in (COMPILED, pure):
        size = (1 << 12) * N_CLASSES
        weights, squares = array("d", bytes(8 * size)), array("d", [1e-6]) * size
        bias, bias_squares = array("d", [0.0] * N_CLASSES), array("d", [1e-6] * N_CLASSES)
        with pytest.raises(ValueError) as error:
            module.train_epoch(weights, squares, bias, bias_squares, [sample], [0], N_CLASSES, 0.1, 0.0)
        errors.append(str(error.value))
        assert not any(weights)  # nothing was written
    assert errors[0] == errors[1]


def test_train_epoch_takes_any_iterable_order() -> None:
    assert COMPILED is not None
    losses = []
    for module in (COMPILED, pure):
        size = (1 << 12) * N_CLASSES
        weights, squares = array("d", bytes(8 * size)), array("d", [1e-6]) * size
        bias, bias_squares = array("d", [0.0] * N_CLASSES), array("d", [1e-6] * N_CLASSES)
        samples = [([1, 2], [0.5, 0.5], 3), ([7], [1.0], 4)]
        losses.append(
            module.train_epoch(
                weights, squares, bias, bias_squares, samples, iter([1, 0]), N_CLASSES, 0.1, 0.0
            )
        )
    assert losses[0] == losses[1] > 0


def test_huge_inputs_are_read_within_bounds(models: Twins) -> None:
    """A megabyte-long word, trailing blanks or a single line: both twins stop at their windows
    (and agree), so a huge body costs no more than a large one."""
    compiled, python = models
    for text in ("x" * 1_000_000, "summarise this\n" + " " * 500_000, "a " * 400_000 + "\n\nTL;DR?"):
        assert compiled.features("", "", text) == python.features("", "", text)
        assert COMPILED is not None
        assert COMPILED.text_stats(text) == pure.text_stats(text)
        assert pure.text_stats(text).chars == min(len(text), pure.STATS_LIMIT)
