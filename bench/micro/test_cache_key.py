"""The exact-cache key of a ~2,000-character chat request: decode the fields that change the
answer, encode them canonically (sorted keys, no whitespace), XXH3-128 (target: 5 µs, compiled).

Both steps are C (msgspec, xxhash); there is no pure twin to compare with. Decoding the
conversation into objects and encoding it again is most of the time (about 14 µs here, hashing
the bytes alone 0.15 µs), so the target needs a compiled walker that hashes the canonical form in
one pass over the body instead.
"""

from __future__ import annotations

from typing import Any

import pytest
from bench.micro.test_classify import _percentiles

from tiermux.cache.key import cache_key, decode_key_fields


@pytest.mark.benchmark(group="cache key: a ~2 KB chat body")
def test_cache_key(benchmark: Any, body: bytes) -> None:
    def compute() -> bytes:
        return cache_key(decode_key_fields(body), "/chat/completions", "default", "local-9b", "qwen-9b")

    assert len(benchmark(compute)) == 16
    p50, p99 = _percentiles(compute, 20_000)
    benchmark.extra_info.update({"p50_us": round(p50, 2), "p99_us": round(p99, 2), "body_bytes": len(body)})
    print(f"\ncache key ({len(body)} bytes): p50 {p50:.2f} us, p99 {p99:.2f} us")
