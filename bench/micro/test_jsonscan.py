"""``value_span``: where ``model`` sits in a request body, so that it can be spliced without decoding.

This runs once per proxied request, on the whole body; compiled and pure twins side by side.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.benchmark(group="jsonscan.value_span: model after the messages (~2 KB body)")


def test_value_span(benchmark: Any, jsonscan: ModuleType, body: bytes) -> None:
    start, end = benchmark(jsonscan.value_span, body, b"model")
    assert body[start:end] == b'"auto"'


@pytest.mark.benchmark(group="jsonscan.value_span: key absent (~2 KB body)")
def test_value_span_absent(benchmark: Any, jsonscan: ModuleType, body: bytes) -> None:
    assert benchmark(jsonscan.value_span, body, b"tools") == (-1, -1)
