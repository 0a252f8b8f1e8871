"""Training the classifier: multinomial logistic regression over the hashed features.

Deliberately small: AdaGrad over sparse samples (``classify.train_epoch``, compiled, with a pure
twin), a fixed seed for the sample order, then weights quantised to int8 for a compact, cache-
friendly table. Same data, same seed, same options: the same file, byte for byte.
"""

from __future__ import annotations

import math
import random
from array import array
from collections import Counter
from collections.abc import Callable, Sequence

from tiermux._speedups import classify
from tiermux.routing.categories import CATEGORIES
from tiermux.routing.classifier import signal_buckets, signals_of
from tiermux.routing.dataset import Example
from tiermux.routing.weights import Weights

__all__ = ["TrainOptions", "featurise", "train"]

Sample = tuple["array[int]", "array[float]", int]  # buckets ("l"), values ("d"), class index


class TrainOptions:
    def __init__(
        self,
        buckets: int = 1 << 16,
        epochs: int = 12,
        rate: float = 0.4,
        l2: float = 1e-4,
        seed: int = 7,
    ) -> None:
        if buckets < 2 or buckets & (buckets - 1):
            raise ValueError("buckets must be a power of two")
        self.buckets = buckets
        self.epochs = epochs
        self.rate = rate
        self.l2 = l2
        self.seed = seed

    def __repr__(self) -> str:
        return (
            f"TrainOptions(buckets={self.buckets}, epochs={self.epochs}, rate={self.rate}, "
            f"l2={self.l2}, seed={self.seed})"
        )

    def as_dict(self) -> dict[str, float | int]:
        return {
            "buckets": self.buckets,
            "epochs": self.epochs,
            "rate": self.rate,
            "l2": self.l2,
            "seed": self.seed,
        }


def featurise(model: classify.Model, example: Example, label: int) -> Sample:
    """The sample the serving path would score: text buckets plus signal buckets, each distinct
    bucket valued count / sqrt(total), as ``Model.predict`` scales its sums."""
    request = example.request
    names = signals_of(request, classify.text_stats(request.last))
    mask = model.n_buckets - 1
    buckets = model.features(request.system, request.previous, request.last)
    buckets.extend(h & mask for h in signal_buckets(names))
    counts = Counter(buckets)
    norm = 1.0 / math.sqrt(len(buckets)) if buckets else 0.0
    keys = sorted(counts)
    return array("l", keys), array("d", [counts[k] * norm for k in keys]), label


def train(
    examples: Sequence[Example],
    options: TrainOptions | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    meta: dict[str, object] | None = None,
) -> Weights:
    options = options or TrainOptions()
    classes = list(CATEGORIES)
    index = {name: i for i, name in enumerate(classes)}
    nc = len(classes)
    scratch = classify.Model(bytes(options.buckets * nc), nc)
    samples = [featurise(scratch, ex, index[ex.label]) for ex in examples]
    weights = array("d", bytes(8 * options.buckets * nc))
    squares = array("d", [1e-6]) * (options.buckets * nc)
    bias = array("d", [0.0] * nc)
    bias_squares = array("d", [1e-6] * nc)
    rng = random.Random(options.seed)
    order = list(range(len(samples)))
    for epoch in range(options.epochs):
        rng.shuffle(order)
        loss = classify.train_epoch(
            weights, squares, bias, bias_squares, samples, order, nc, options.rate, options.l2
        )
        if progress is not None:
            progress(epoch + 1, options.epochs, loss)
    scale, table = _quantise(weights)
    info: dict[str, object] = {"examples": len(examples), "options": options.as_dict()}
    if meta:
        info.update(meta)
    return Weights(classes, list(bias), scale, table, info)


def _quantise(weights: array[float]) -> tuple[float, bytes]:
    """int8 weights: the scale maps the 99.99th percentile of |w| to 127; rarer outliers clip."""
    magnitudes = sorted(abs(w) for w in weights if w)
    if not magnitudes:
        return 1.0, bytes(len(weights))
    top = magnitudes[min(len(magnitudes) - 1, int(len(magnitudes) * 0.9999))]
    scale = top / 127 if top else 1.0
    out = bytearray(len(weights))
    for i, w in enumerate(weights):
        if w:
            q = max(-127, min(127, round(w / scale)))
            out[i] = q & 0xFF
    return scale, bytes(out)
