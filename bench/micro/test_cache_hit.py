"""A cache hit in process: the whole ASGI app answering a request it has answered from the cache
before (a known hit, prepared by that request's first hit), with the product's defaults
(classifier, metrics, request ids).

No server and no upstream: the app is called directly with a fake ``receive`` and ``send`` (none of
them waits, so each call runs to its end in one step). The stored answer is put in the worker's
store by hand, as a backend's answer would have been; the backend's address is never dialled.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from bench.micro.test_classify import _percentiles

from tiermux.app import TiermuxApp
from tiermux.cache.store import Entry
from tiermux.config import load_config

CONFIG = """\
backends:
  - name: local
    type: openai
    base_url: http://127.0.0.1:9/v1
    model: qwen-9b
tiers:
  cheap: [local]
cache:
  enabled: true
  ttl: 3600
"""
SYSTEM = "You are a concise assistant for an online bookshop. Answer in at most two sentences."
USER = "A customer writes: 'The tracking page still says label created.' Summarise what they want."
BODY = json.dumps(
    {
        "model": "auto",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
        "max_tokens": 64,
        "temperature": 0,
    },
    separators=(",", ":"),
).encode()
ANSWER = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"qwen-9b",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"They want to know what '
    b'label created means."},"finish_reason":"stop"}],"usage":{"prompt_tokens":40,'
    b'"completion_tokens":9,"total_tokens":49}}'
)
HEADERS = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]


def _drive(coroutine: Coroutine[Any, Any, None]) -> None:
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise AssertionError("a cache hit waited for something")


@pytest.fixture
def hit(tmp_path: Path) -> Callable[[], list[dict[str, Any]]]:
    """One request through the app; what it sent. The cache holds its answer."""
    config = tmp_path / "hit.yaml"
    config.write_text(CONFIG)
    app = TiermuxApp(load_config(config))
    forwarder, cache = app.forwarder, app.cache
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": HEADERS}
    decision = forwarder.decide("/chat/completions", BODY, scope)
    asked = cache.asked(BODY, "/chat/completions", "default", b"")
    assert asked is not None
    cache.remember(asked, decision)
    cache.store(cache.answer_key(asked, "local", "qwen-9b"), Entry(ANSWER, "local", time.time()))
    message = {"type": "http.request", "body": BODY, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    def one() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(event: dict[str, Any]) -> None:
            sent.append(event)

        _drive(app(dict(scope), receive, send))
        return sent

    return one


def _in_a_loop(call: Callable[[], None]) -> None:
    """The app starts its background tasks on the first request: that needs a running loop."""

    async def main() -> None:
        call()

    asyncio.run(main())


@pytest.mark.benchmark(group="cache hit, the whole app in process")
def test_known_hit(benchmark: Any, hit: Callable[[], list[dict[str, Any]]]) -> None:
    def measure() -> None:
        first, second = hit(), hit()  # the first hit prepares what the next ones reuse
        for sent in (first, second):
            headers = dict(sent[0]["headers"])
            assert headers[b"x-tiermux-cache"] == b"HIT" and sent[1]["body"] == ANSWER
        benchmark(hit)
        p50, p99 = _percentiles(hit, 20_000)
        benchmark.extra_info.update({"p50_us": round(p50, 2), "p99_us": round(p99, 2)})

    _in_a_loop(measure)
