"""The classifier on a 2,000-character conversation: its own time, and the whole routing decision.

* ``classify``: ``Classifier.classify`` on the decoded conversation (text features, hashed model,
  softmax, signals, complexity score), with the compiled and the pure core side by side;
* ``decide``: everything routing adds to a request: decode the chat fields (msgspec), build the
  text view, classify, apply the policy.

pytest-benchmark prints the median; the 99th percentile of single calls is measured separately and
shown in ``extra_info`` (``--benchmark-json``) and on the console, since targets are set on both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from bench.micro.conftest import DEMO_CONFIG, twin

from tiermux.config import load_config
from tiermux.routing.categories import CATEGORIES
from tiermux.routing.classifier import Classifier
from tiermux.routing.request import decode_chat, from_chat
from tiermux.routing.router import Router
from tiermux.routing.weights import BUNDLED, Weights


def _percentiles(call: Callable[[], Any], n: int = 20_000) -> tuple[float, float]:
    """Median and 99th percentile of single calls, in microseconds."""
    times = []
    clock = time.perf_counter_ns
    for _ in range(n):
        started = clock()
        call()
        times.append(clock() - started)
    times.sort()
    return times[n // 2] / 1000, times[int(n * 0.99)] / 1000


@pytest.fixture(params=["compiled", "pure"], scope="module")
def classifier(request: pytest.FixtureRequest) -> Classifier:
    """The bundled weights on the compiled or on the pure core."""
    module: ModuleType = twin("classify", request.param)
    from importlib import resources

    data = resources.files("tiermux.routing").joinpath(BUNDLED).read_bytes()
    weights = Weights.from_bytes(data)
    weights.model = module.Model(weights.table, len(weights.classes), weights.bias, weights.scale)
    return Classifier(weights)


@pytest.mark.benchmark(group="classify: a 2,000-character conversation")
def test_classify(benchmark: Any, classifier: Classifier, body: bytes) -> None:
    request = from_chat(decode_chat(body))
    result = benchmark(classifier.classify, request)
    assert result.category in CATEGORIES
    p50, p99 = _percentiles(lambda: classifier.classify(request), 2_000 if _is_pure(classifier) else 20_000)
    benchmark.extra_info.update({"p50_us": round(p50, 2), "p99_us": round(p99, 2)})
    print(f"\nclassify ({_kind(classifier)}): p50 {p50:.1f} us, p99 {p99:.1f} us")


@pytest.mark.benchmark(group="decide: decode + classify + policy (~2 KB body)")
def test_decide(benchmark: Any, classifier: Classifier, body: bytes) -> None:
    router = Router(load_config(DEMO_CONFIG), classifier)
    auto = router.resolve("auto")

    def decide() -> Any:
        return router.decide(auto, from_chat(decode_chat(body)), ())

    decision = benchmark(decide)
    assert decision.tier in ("cheap", "capable")
    p50, p99 = _percentiles(decide, 2_000 if _is_pure(classifier) else 20_000)
    benchmark.extra_info.update({"p50_us": round(p50, 2), "p99_us": round(p99, 2)})
    print(f"\ndecide ({_kind(classifier)}): p50 {p50:.1f} us, p99 {p99:.1f} us")


def _is_pure(classifier: Classifier) -> bool:
    return type(classifier.weights.model).__module__.startswith("tiermux._pure")


def _kind(classifier: Classifier) -> str:
    return "pure" if _is_pure(classifier) else "compiled"
