"""The exact-cache key of a ~2,000-character chat request: the canonical form of the members that
change the answer (``tiermux._speedups.canonical``, one pass), then XXH3-128 (target: 5 µs,
compiled), with the compiled and the pure canonical twin side by side.
"""

from __future__ import annotations

from typing import Any

import pytest
from bench.micro.conftest import twin
from bench.micro.test_classify import _percentiles

from tiermux.cache import key as cache_key_module


@pytest.fixture(params=["compiled", "pure"])
def canonical(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(cache_key_module, "canonical", twin("canonical", request.param))
    return str(request.param)


@pytest.mark.benchmark(group="cache key: a ~2 KB chat body")
def test_cache_key(benchmark: Any, body: bytes, canonical: str) -> None:
    def compute() -> bytes:
        return cache_key_module.cache_key(body, "/chat/completions", "default", "local-9b", "qwen-9b")

    assert len(benchmark(compute)) == 16
    p50, p99 = _percentiles(compute, 20_000 if canonical == "compiled" else 1_000)
    benchmark.extra_info.update({"p50_us": round(p50, 2), "p99_us": round(p99, 2), "body_bytes": len(body)})
    print(f"\ncache key ({canonical}, {len(body)} bytes): p50 {p50:.2f} us, p99 {p99:.2f} us")
