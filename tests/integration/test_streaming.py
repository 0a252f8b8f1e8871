"""Streaming through a real ``tiermux serve`` (Granian, two workers): SSE relayed as it comes,
usage and ``[DONE]`` relayed, broken upstreams and departing clients handled cleanly.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from bench.mock_backend import BackendHandle
from tests.support import ServerProcess, wait_until


def _stream_body(**fields: Any) -> dict[str, Any]:
    body = {"model": "auto", "messages": [{"role": "user", "content": "count"}], "stream": True}
    body.update(fields)
    return body


def _events(data: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking that every event is whole."""
    text = data.decode()
    assert text.endswith("\n\n"), f"the stream ends mid-event: {text[-200:]!r}"
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        events.append(block[6:])
    return events


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(10.0)) as http:
        yield http


def test_chunks_arrive_as_they_are_generated(
    server: ServerProcess, vllm: BackendHandle, client: httpx.Client
) -> None:
    vllm.configure(itl_ms=50, tokens=10)
    body = b""
    reads = 0
    first_token_at = done_at = 0.0
    with client.stream("POST", server.url + "/v1/chat/completions", json=_stream_body()) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-tiermux-backend"] == "local-9b"
        assert response.headers["x-tiermux-tier"] == "cheap"
        for chunk in response.iter_raw():
            body += chunk
            reads += 1
            if not first_token_at and b'"content":" The"' in body:
                first_token_at = time.monotonic()
            if not done_at and b"data: [DONE]" in body:
                done_at = time.monotonic()
    events = _events(body)
    assert events[-1] == "[DONE]"
    assert first_token_at and done_at
    # The mock spaces the remaining nine tokens 50 ms apart: a relay that buffered the stream
    # would deliver the first token together with [DONE].
    assert done_at - first_token_at >= 9 * 0.05 * 0.5
    assert reads >= 5
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == " The mock backend answers every request with this short canned"


def test_usage_chunk_and_done_are_relayed(
    server: ServerProcess, vllm: BackendHandle, client: httpx.Client
) -> None:
    vllm.configure(tokens=6)
    response = client.post(
        server.url + "/v1/chat/completions", json=_stream_body(stream_options={"include_usage": True})
    )
    assert response.status_code == 200
    events = _events(response.content)
    assert events[-1] == "[DONE]"
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 6
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + 6
    finish = json.loads(events[-3])
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert events.count("[DONE]") == 1


def test_completions_stream(server: ServerProcess, vllm: BackendHandle, client: httpx.Client) -> None:
    vllm.configure(tokens=3)
    response = client.post(
        server.url + "/v1/completions", json={"model": "fast", "prompt": "hi", "stream": True}
    )
    assert response.status_code == 200
    events = _events(response.content)
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == " The mock backend"


def _backend_errors(client: httpx.Client, url: str, backend: str = "local-9b") -> int:
    rows = client.get(url + "/v1/backends").json()["data"]
    return int(next(row["errors"] for row in rows if row["name"] == backend))


def test_upstream_dying_mid_stream_ends_the_stream_with_an_error_event(
    server: ServerProcess, vllm: BackendHandle, client: httpx.Client
) -> None:
    errors_before = _backend_errors(client, server.url)
    vllm.configure(fail_rate=1.0, fail_mode="die-mid-stream", tokens=8)
    started = time.monotonic()
    with client.stream(
        "POST", server.url + "/v1/chat/completions", json=_stream_body(), timeout=httpx.Timeout(5.0)
    ) as response:
        assert response.status_code == 200
        body = response.read()
    assert time.monotonic() - started < 5
    events = _events(body)
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert set(last) == {"error"}
    assert last["error"]["type"] == "upstream_error"
    assert last["error"]["message"]
    # what the backend did send arrived first, untouched
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    # the broken stream counts against the backend's health
    assert _backend_errors(client, server.url) == errors_before + 1
    # and the server carries on
    vllm.configure(fail_rate=0.0)
    assert (
        client.post(server.url + "/v1/chat/completions", json=_stream_body(stream=False)).status_code == 200
    )


def test_client_leaving_mid_stream_frees_the_upstream_connection(
    server: ServerProcess, vllm: BackendHandle, client: httpx.Client
) -> None:
    vllm.configure(fail_rate=1.0, fail_mode="slow-stream", tokens=40)  # 0.2 s per token: 8 s in all
    with client.stream("POST", server.url + "/v1/chat/completions", json=_stream_body()) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()
        assert next(chunks).startswith(b"data: ")
        assert next(chunks).startswith(b"data: ")  # the stream is live, and its connection open
        during = vllm.stats()["open_connections"]
        assert during >= 1
    # The client is gone; the proxy must drop its exchange with the backend, not let it run on.
    assert wait_until(lambda: vllm.stats()["open_connections"] == during - 1, timeout=4.0), vllm.stats()
    vllm.configure(fail_rate=0.0)
    for _ in range(4):
        response = client.post(server.url + "/v1/chat/completions", json=_stream_body())
        assert response.status_code == 200
        assert _events(response.content)[-1] == "[DONE]"


def test_stream_from_a_failing_first_backend_fails_over_before_the_first_byte(
    server: ServerProcess, vllm: BackendHandle, cloud: BackendHandle, client: httpx.Client
) -> None:
    vllm.configure(fail_rate=1.0, fail_mode="status", fail_status=503)
    response = client.post(server.url + "/v1/chat/completions", json=_stream_body())
    assert response.status_code == 200
    assert response.headers["x-tiermux-backend"] == "frontier"
    events = _events(response.content)
    assert events[-1] == "[DONE]"
    assert json.loads(events[0])["model"] == "big-model"
    assert cloud.stats()["requests"] == 1


def test_client_leaving_before_the_answer_frees_the_upstream_connection(
    server: ServerProcess, vllm: BackendHandle
) -> None:
    """A client that gives up on a slow answer must not leave the backend generating for nobody."""
    vllm.configure(latency_ms=3000)
    body = json.dumps(_stream_body(stream=False)).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: tiermux\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert wait_until(lambda: vllm.stats()["requests"] >= 1, timeout=5)
        during = vllm.stats()["open_connections"]
        assert during >= 1
    # The client is gone while the backend still has seconds of work left.
    started = time.monotonic()
    freed = wait_until(lambda: vllm.stats()["open_connections"] == during - 1, timeout=1.5)
    assert time.monotonic() - started < 2.5
    assert freed, f"the backend is still working for a client that left: {vllm.stats()}"
