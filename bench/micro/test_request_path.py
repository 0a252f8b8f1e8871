"""The per-request work tiermux does on a body before it reaches the socket.

* ``serialise``: ``Backend.serialise`` builds the upstream request (precomputed head + body);
* ``request prep``: everything from the client's body to the upstream bytes: decode the routing
  fields (msgspec), find ``model`` (jsonscan), splice the backend's model name in, serialise.
  With the compiled and the pure scanner, side by side.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import msgspec
import pytest

from tiermux.api.wire import decode_routing_fields
from tiermux.config import BackendConfig
from tiermux.upstream.backend import Backend


@pytest.fixture(scope="module")
def backend() -> Backend:
    config = msgspec.convert(
        {"name": "local", "base_url": "http://127.0.0.1:8001/v1", "model": "qwen-9b", "api_key": "sk-local"},
        BackendConfig,
    )
    return Backend(config)


@pytest.mark.benchmark(group="Backend.serialise (~2 KB body)")
def test_serialise(benchmark: Any, backend: Backend, body: bytes) -> None:
    data = benchmark(backend.serialise, "POST", "/chat/completions", body)
    assert data.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and data.endswith(body)


@pytest.mark.benchmark(group="request prep: decode + value_span + splice + serialise (~2 KB body)")
def test_request_prep(benchmark: Any, jsonscan: ModuleType, backend: Backend, body: bytes) -> None:
    value_span = jsonscan.value_span
    model_json = backend.model_json

    def prepare() -> bytes:
        fields = decode_routing_fields(body)
        assert fields.model is not None
        start, end = value_span(body, b"model")
        return backend.serialise("POST", "/chat/completions", body[:start] + model_json + body[end:])

    data = benchmark(prepare)
    assert b'"model": "qwen-9b"' in data
