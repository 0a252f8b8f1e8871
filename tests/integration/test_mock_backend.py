"""Tests for the mock OpenAI-compatible backend in ``bench/mock_backend.py``.

Every test starts its own backend on an ephemeral port (``run_in_thread``) and talks to it over
real sockets: httpx for ordinary requests, the official ``openai`` SDK for compatibility, and raw
sockets where the exact bytes on the wire matter (pipelining, Expect, Connection: close).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httptools
import httpx
import openai
import pytest
import uvloop
from bench.mock_backend import BackendHandle, MockBackend, MockOptions, parse_args, run_in_thread

ROOT = Path(__file__).resolve().parents[2]

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Say hello."}]

Start = Callable[..., BackendHandle]


@pytest.fixture
def start() -> Iterator[Start]:
    """Start mock backends with the given options; all are stopped after the test."""
    handles: list[BackendHandle] = []

    def _start(**options: Any) -> BackendHandle:
        handle = run_in_thread(**options)
        handles.append(handle)
        return handle

    yield _start
    for handle in handles:
        handle.stop()


@pytest.fixture
def mock(start: Start) -> BackendHandle:
    return start(lora=("sql-lora", "chat-lora"))


def client_for(handle: BackendHandle, **kwargs: Any) -> httpx.Client:
    kwargs.setdefault("timeout", 2.0)
    return httpx.Client(base_url=handle.root_url, **kwargs)


def data_lines(text: str) -> list[str]:
    """The payloads of the ``data:`` lines of a server-sent event stream."""
    return [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "qwen-9b", "messages": MESSAGES, **extra}


class RawResponses:
    """Collect whole HTTP responses from a raw socket, parsed with httptools."""

    def __init__(self) -> None:
        self.done: list[dict[str, Any]] = []
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._body = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        self.done.append({"status": status, "headers": self._headers, "body": self._body})
        self._headers, self._body = {}, b""

    def read(self, sock: socket.socket, count: int) -> list[dict[str, Any]]:
        while len(self.done) < count:
            data = sock.recv(65536)
            if not data:
                break
            self._parser.feed_data(data)
        return self.done


def raw_connection(handle: BackendHandle) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", handle.port), timeout=2.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def raw_request(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: mock\r\n{headers}"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def wait_for(predicate: Callable[[], bool], timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# --------------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------------


def test_models_lists_the_base_model_and_lora_adapters(mock: BackendHandle) -> None:
    with client_for(mock) as client:
        response = client.get("/v1/models")
    assert response.status_code == 200
    listing = response.json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["qwen-9b", "sql-lora", "chat-lora"]
    base, lora, _ = listing["data"]
    assert base["owned_by"] == "vllm" and base["parent"] is None and base["root"] == "qwen-9b"
    assert base["max_model_len"] == 32768 and isinstance(base["created"], int)
    assert lora["root"] == "qwen-9b" and lora["parent"] == "qwen-9b"


def test_cloud_models_have_no_lora_and_carry_processing_time(start: Start) -> None:
    handle = start(flavor="cloud", model="gpt-mock", lora=("ignored",), latency_ms=20)
    with client_for(handle) as client:
        response = client.get("/v1/models")
        health = client.get("/health")
    assert [m["id"] for m in response.json()["data"]] == ["gpt-mock"]
    assert response.json()["data"][0]["owned_by"] == "mock-cloud"
    assert response.headers["openai-processing-ms"] == "20"
    assert health.status_code == 404  # only the vLLM flavour has /health


def test_chat_completion_document(mock: BackendHandle) -> None:
    with client_for(mock) as client:
        response = client.post(CHAT, json=chat_body(model="sql-lora", n=2))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    document = response.json()
    assert document["id"] == "chatcmpl-" + response.headers["x-request-id"]
    assert document["object"] == "chat.completion"
    assert document["model"] == "sql-lora"  # echoes what the client asked for
    assert [c["index"] for c in document["choices"]] == [0, 1]
    choice = document["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 16
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    usage = document["usage"]
    assert usage["completion_tokens"] == 32
    assert usage["prompt_tokens"] == len(response.request.content) // 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_max_tokens_truncates_with_finish_reason_length(mock: BackendHandle) -> None:
    with client_for(mock) as client:
        document = client.post(CHAT, json=chat_body(max_tokens=3)).json()
    assert len(document["choices"][0]["message"]["content"].split()) == 3
    assert document["choices"][0]["finish_reason"] == "length"
    assert document["usage"]["completion_tokens"] == 3


def test_streaming_chat_frames_in_order_with_usage(mock: BackendHandle) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True})
    with client_for(mock) as client:
        response = client.post(CHAT, json=body)
        full = client.post(CHAT, json=chat_body()).json()
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.headers
    events = data_lines(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    tokens = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert len(tokens) == 16 and all(t.startswith(" ") for t in tokens)
    assert "".join(tokens) == full["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 16


def test_streaming_without_include_usage_sends_no_usage_chunk(mock: BackendHandle) -> None:
    with client_for(mock) as client:
        response = client.post(CHAT, json=chat_body(stream=True, max_tokens=2))
    events = data_lines(response.text)
    assert len(events) == 1 + 2 + 1 + 1  # role, two tokens, finish, [DONE]
    assert all("usage" not in json.loads(e) for e in events[:-1])
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"


def test_streaming_with_several_choices(mock: BackendHandle) -> None:
    body = chat_body(stream=True, n=2, max_tokens=3, stream_options={"include_usage": True})
    with client_for(mock) as client:
        events = data_lines(client.post(CHAT, json=body).text)
    chunks = [json.loads(e) for e in events[:-1]]
    texts = {0: "", 1: ""}
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["delta"].get("content", "")
    assert texts[0] == texts[1] and len(texts[0].split()) == 3
    assert [c["choices"][0]["finish_reason"] for c in chunks[-3:-1]] == ["length", "length"]
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def test_tools_produce_a_tool_call(mock: BackendHandle) -> None:
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
        {"type": "function", "function": {"name": "other", "parameters": {}}},
    ]
    with client_for(mock) as client:
        document = client.post(CHAT, json=chat_body(tools=tools)).json()
        streamed = client.post(CHAT, json=chat_body(tools=tools, stream=True)).text
    choice = document["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": "{}"}
    chunks = [json.loads(e) for e in data_lines(streamed)[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert deltas[2]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_json_response_format_returns_a_json_object(mock: BackendHandle) -> None:
    with client_for(mock) as client:
        for kind in ("json_object", "json_schema"):
            body = chat_body(response_format={"type": kind})
            content = client.post(CHAT, json=body).json()["choices"][0]["message"]["content"]
            assert isinstance(json.loads(content)["answer"], str)
            streamed = client.post(CHAT, json={**body, "stream": True}).text
            deltas = [json.loads(e)["choices"][0]["delta"] for e in data_lines(streamed)[:-1]]
            assert "".join(d.get("content", "") for d in deltas) == content


def test_legacy_completions(mock: BackendHandle) -> None:
    body = {"model": "qwen-9b", "prompt": "Once upon a time", "max_tokens": 4}
    with client_for(mock) as client:
        document = client.post("/v1/completions", json=body).json()
        streamed = client.post(
            "/v1/completions",
            json={**body, "stream": True, "stream_options": {"include_usage": True}},
        ).text
    assert document["object"] == "text_completion" and document["id"].startswith("cmpl-")
    assert len(document["choices"][0]["text"].split()) == 4
    assert document["choices"][0]["finish_reason"] == "length"
    events = data_lines(streamed)
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]"
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == document["choices"][0]["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 4


def test_embeddings_are_deterministic_in_both_encodings(mock: BackendHandle) -> None:
    with client_for(mock) as client:
        floats = client.post("/v1/embeddings", json={"model": "e", "input": ["a", "b"]}).json()
        again = client.post("/v1/embeddings", json={"model": "e", "input": "a"}).json()
        b64 = client.post(
            "/v1/embeddings", json={"model": "e", "input": ["a"], "encoding_format": "base64"}
        ).json()
    assert floats["object"] == "list" and floats["model"] == "e"
    assert [d["index"] for d in floats["data"]] == [0, 1]
    first = floats["data"][0]["embedding"]
    assert len(first) == 8 and all(-1.0 <= x <= 1.0 for x in first)
    assert first != floats["data"][1]["embedding"]
    assert again["data"][0]["embedding"] == first
    decoded = struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"]))
    assert decoded == pytest.approx(first, abs=1e-6)
    assert floats["usage"]["prompt_tokens"] == floats["usage"]["total_tokens"] >= 1


def test_unknown_path_is_404_and_wrong_method_is_405(mock: BackendHandle) -> None:
    with client_for(mock) as client:
        missing = client.post("/v1/nope", json={})
        wrong = client.get(CHAT)
        bad_json = client.post(CHAT, content=b"{not json")
        no_messages = client.post(CHAT, json={"model": "qwen-9b"})
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert "error" in wrong.json()
    assert bad_json.status_code == 400 and "error" in bad_json.json()
    assert no_messages.status_code == 400
    assert "messages" in no_messages.json()["error"]["message"]


def test_api_key_is_enforced(start: Start) -> None:
    handle = start(flavor="cloud", api_key="sekrit")
    with client_for(handle) as client:
        missing = client.post(CHAT, json=chat_body())
        wrong = client.post(CHAT, json=chat_body(), headers={"Authorization": "Bearer nope"})
        right = client.post(CHAT, json=chat_body(), headers={"Authorization": "Bearer sekrit"})
    for response in (missing, wrong):
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert right.status_code == 200
    assert "openai-processing-ms" in right.headers


# --------------------------------------------------------------------------------------------
# Configured answer text and logprobs
# --------------------------------------------------------------------------------------------

TEXT = "The sky is  blue today."
PIECES = ["The", " sky", " is", "  blue", " today."]


def stream_chunks(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON chunks of a stream, ``[DONE]`` checked and left out."""
    events = data_lines(client.post(path, json=body).text)
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_text_replaces_the_canned_answer(mock: BackendHandle) -> None:
    mock.configure(text=TEXT)
    with client_for(mock) as client:
        document = client.post(CHAT, json=chat_body(n=2)).json()
        as_json = client.post(CHAT, json=chat_body(response_format={"type": "json_object"})).json()
        legacy = client.post("/v1/completions", json={"model": "qwen-9b", "prompt": "Hi"}).json()
        config = client.get("/_mock/config").json()
    assert [c["message"]["content"] for c in document["choices"]] == [TEXT, TEXT]
    assert {c["finish_reason"] for c in document["choices"]} == {"stop"}
    assert document["usage"]["completion_tokens"] == 2 * len(PIECES)
    assert as_json["choices"][0]["message"]["content"] == TEXT  # the text wins over JSON mode
    assert legacy["choices"][0]["text"] == TEXT and legacy["choices"][0]["finish_reason"] == "stop"
    assert legacy["usage"]["completion_tokens"] == len(PIECES)
    assert config["text"] == TEXT


def test_text_streams_as_word_pieces(mock: BackendHandle) -> None:
    with client_for(mock) as client:
        assert client.post("/_mock/config", json={"text": TEXT}).status_code == 200
        usage = {"include_usage": True}
        chunks = stream_chunks(client, CHAT, chat_body(stream=True, stream_options=usage))
        legacy = stream_chunks(
            client,
            "/v1/completions",
            {"model": "qwen-9b", "prompt": "Hi", "stream": True, "stream_options": usage},
        )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]] == PIECES
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == len(PIECES)
    assert [c["choices"][0]["text"] for c in legacy[:-2]] == PIECES
    assert legacy[-2]["choices"][0]["finish_reason"] == "stop"
    assert legacy[-1]["usage"]["completion_tokens"] == len(PIECES)


def test_text_is_capped_by_max_tokens_and_tokens(mock: BackendHandle) -> None:
    mock.configure(text=TEXT)
    usage = {"include_usage": True}
    with client_for(mock) as client:
        document = client.post(CHAT, json=chat_body(max_tokens=2)).json()
        chunks = stream_chunks(client, CHAT, chat_body(max_tokens=2, stream=True, stream_options=usage))
        exact = client.post(CHAT, json=chat_body(max_tokens=len(PIECES))).json()
        mock.configure(tokens=3)
        capped = client.post(CHAT, json=chat_body()).json()
    choice = document["choices"][0]
    assert choice["message"]["content"] == "The sky" and choice["finish_reason"] == "length"
    assert document["usage"]["completion_tokens"] == 2
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == "The sky"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 2
    assert exact["choices"][0]["message"]["content"] == TEXT
    assert exact["choices"][0]["finish_reason"] == "stop"
    assert capped["choices"][0]["message"]["content"] == "The sky is"
    assert capped["choices"][0]["finish_reason"] == "length"
    assert capped["usage"]["completion_tokens"] == 3


def test_text_none_restores_the_canned_answer(mock: BackendHandle) -> None:
    body = chat_body(max_tokens=5)
    with client_for(mock) as client:
        before = client.post(CHAT, json=body).json()
        streamed_before = client.post(CHAT, json={**body, "stream": True}).text
        client.post("/_mock/config", json={"text": "Something else entirely."})
        assert (
            client.post(CHAT, json=body).json()["choices"][0]["message"]["content"]
            != (before["choices"][0]["message"]["content"])
        )
        client.post("/_mock/config", json={"tokens": 16})  # other changes keep the text
        assert client.get("/_mock/config").json()["text"] == "Something else entirely."
        config = client.post("/_mock/config", json={"text": None}).json()
        after = client.post(CHAT, json=body).json()
        streamed_after = client.post(CHAT, json={**body, "stream": True}).text
        mock.configure(text="")
        empty = client.post(CHAT, json=body).json()
        empty_chunks = stream_chunks(client, CHAT, {**body, "stream": True})
        mock.configure(text=None)
        again = client.post(CHAT, json=body).json()
    assert config["text"] is None
    for document in (after, again):
        assert document["choices"] == before["choices"]
        assert document["usage"] == before["usage"]
    strip_ids = [{**json.loads(e), "id": "", "created": 0} for e in data_lines(streamed_before)[:-1]]
    assert [{**json.loads(e), "id": "", "created": 0} for e in data_lines(streamed_after)[:-1]] == strip_ids
    assert empty["choices"][0]["message"]["content"] == ""
    assert empty["usage"]["completion_tokens"] == 0
    assert [c["choices"][0]["delta"] for c in empty_chunks] == [{"role": "assistant", "content": ""}, {}]


def test_logprobs_only_when_asked(mock: BackendHandle) -> None:
    mock.configure(text=TEXT)
    with client_for(mock) as client:
        plain = client.post(CHAT, json=chat_body()).json()
        plain_chunks = stream_chunks(client, CHAT, chat_body(stream=True))
        off = client.post(CHAT, json=chat_body(logprobs=False)).json()
    assert plain["choices"][0]["logprobs"] is None and off["choices"][0]["logprobs"] is None
    assert all(c["choices"][0]["logprobs"] is None for c in plain_chunks)


def test_logprobs_carry_the_configured_value(mock: BackendHandle) -> None:
    with client_for(mock) as client:
        canned = client.post(CHAT, json=chat_body(n=2, logprobs=True)).json()
        mock.configure(text=TEXT, logprob=-2.5)
        unsure = client.post(CHAT, json=chat_body(logprobs=True, max_tokens=4)).json()
        config = client.get("/_mock/config").json()
    content = canned["choices"][0]["message"]["content"]
    for choice in canned["choices"]:
        entries = choice["logprobs"]["content"]
        assert "".join(e["token"] for e in entries) == content and len(entries) == 16
        assert {e["logprob"] for e in entries} == {-0.05}
        assert all(bytes(e["bytes"]) == e["token"].encode() and e["top_logprobs"] == [] for e in entries)
    entries = unsure["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in entries] == PIECES[:4]
    assert {e["logprob"] for e in entries} == {-2.5}
    assert config["logprob"] == -2.5


def test_streamed_logprobs_come_per_chunk(mock: BackendHandle) -> None:
    mock.configure(text=TEXT, logprob=-1.0)
    with client_for(mock) as client:
        chunks = stream_chunks(client, CHAT, chat_body(stream=True, n=2, logprobs=True))
    for chunk in chunks:
        (choice,) = chunk["choices"]
        content = choice["delta"].get("content")
        if not content:  # the role and finish frames
            assert choice["logprobs"] is None
            continue
        (entry,) = choice["logprobs"]["content"]
        assert entry["token"] == content and entry["logprob"] == -1.0
        assert bytes(entry["bytes"]) == content.encode()
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for entry in (chunk["choices"][0]["logprobs"] or {"content": []})["content"]:
            texts[chunk["choices"][0]["index"]] += entry["token"]
    assert texts == {0: TEXT, 1: TEXT}


def test_top_logprobs_list_the_chosen_token_and_alternatives(mock: BackendHandle) -> None:
    with client_for(mock) as client:
        sure = client.post(CHAT, json=chat_body(logprobs=True, top_logprobs=3, max_tokens=2)).json()
        mock.configure(logprob=-2.5)
        chunks = stream_chunks(client, CHAT, chat_body(stream=True, logprobs=True, top_logprobs=4))
        too_many = client.post(CHAT, json=chat_body(logprobs=True, top_logprobs=21))
    for entry in sure["choices"][0]["logprobs"]["content"]:
        top = entry["top_logprobs"]
        assert len(top) == 3 and len({t["token"] for t in top}) == 3
        assert top[0] == {"token": entry["token"], "logprob": -0.05, "bytes": entry["bytes"]}
        assert sum(math.exp(t["logprob"]) for t in top) == pytest.approx(1.0)
    (entry,) = chunks[1]["choices"][0]["logprobs"]["content"]
    top = entry["top_logprobs"]
    assert len(top) == 4 and entry["logprob"] == -2.5
    assert top[-1]["token"] == entry["token"]  # an unsure model: the alternatives are likelier
    assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
    assert too_many.status_code == 400


def test_text_and_logprob_options_are_validated(mock: BackendHandle) -> None:
    with client_for(mock) as client:
        positive = client.post("/_mock/config", json={"logprob": 0.5})
        wrong_type = client.post("/_mock/config", json={"text": 3})
    assert positive.status_code == 400 and wrong_type.status_code == 400
    with pytest.raises(Exception, match="logprob"):
        MockBackend(logprob=1.0)
    options = parse_args(["--text", "Yes it is.", "--logprob", "-2.5"])
    assert options.text == "Yes it is." and options.logprob == -2.5
    assert parse_args([]).text is None and parse_args([]).logprob == -0.05


# --------------------------------------------------------------------------------------------
# HTTP/1.1 details
# --------------------------------------------------------------------------------------------


def test_chunked_request_body_is_reassembled(mock: BackendHandle) -> None:
    parts = [b'{"model": "sql-lora", ', b'"messages": [{"role": "user", ', b'"content": "hi"}]}']
    with client_for(mock) as client:
        response = client.post(CHAT, content=iter(parts))
        (record,) = client.get("/_mock/requests").json()
    assert response.status_code == 200
    assert response.json()["model"] == "sql-lora"
    headers = {k.lower(): v for k, v in record["headers"]}
    assert headers["transfer-encoding"] == "chunked"
    assert base64.b64decode(record["body_b64"]) == b"".join(parts)


def test_keep_alive_serves_many_requests_on_one_connection(mock: BackendHandle) -> None:
    with client_for(mock) as client:
        first = client.post(CHAT, json=chat_body())
        second = client.get("/v1/models")
        stats = client.get("/_mock/stats").json()
    assert first.status_code == second.status_code == 200
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert stats["connections_total"] == 1
    assert stats["requests"] == 2
    assert stats["by_path"] == {CHAT: 1, "/v1/models": 1}


def test_pipelined_requests_are_answered_in_order(start: Start) -> None:
    handle = start(latency_ms=50)  # the first reply is delayed, the 404 would be immediate
    body = json.dumps(chat_body()).encode()
    with raw_connection(handle) as sock:
        sock.sendall(
            raw_request("POST", CHAT, body)
            + raw_request("GET", "/v1/nope")
            + raw_request("GET", "/v1/models")
        )
        responses = RawResponses().read(sock, 3)
    assert [r["status"] for r in responses] == [200, 404, 200]
    assert json.loads(responses[0]["body"])["object"] == "chat.completion"
    assert json.loads(responses[2]["body"])["object"] == "list"


def test_connection_close_is_honoured(mock: BackendHandle) -> None:
    with raw_connection(mock) as sock:
        sock.sendall(raw_request("GET", "/v1/models", headers="Connection: close\r\n"))
        (response,) = RawResponses().read(sock, 1)
        assert sock.recv(1) == b""  # the server closed its side after answering
    assert response["status"] == 200
    assert response["headers"]["connection"] == "close"


def test_expect_100_continue(mock: BackendHandle) -> None:
    body = json.dumps(chat_body()).encode()
    head = raw_request("POST", CHAT, headers=f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n")
    with raw_connection(mock) as sock:
        sock.sendall(head)
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        (response,) = RawResponses().read(sock, 1)
    assert response["status"] == 200


def test_malformed_request_gets_400_and_close(mock: BackendHandle) -> None:
    with raw_connection(mock) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in received


# --------------------------------------------------------------------------------------------
# Latency and failure injection
# --------------------------------------------------------------------------------------------


def test_latency_delays_non_streaming_answers(start: Start) -> None:
    handle = start(latency_ms=150)
    with client_for(handle) as client:
        client.get("/_mock/stats")  # connect first, so only the request itself is timed
        began = time.perf_counter()
        response = client.post(CHAT, json=chat_body())
        elapsed = time.perf_counter() - began
    assert response.status_code == 200
    assert 0.14 <= elapsed < 0.9


def test_ttft_and_itl_pace_the_stream(start: Start) -> None:
    handle = start(ttft_ms=100, itl_ms=60, tokens=3)
    arrivals: list[tuple[float, str]] = []
    with client_for(handle) as client:
        client.get("/_mock/stats")
        began = time.perf_counter()
        with client.stream("POST", CHAT, json=chat_body(stream=True)) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    arrivals.append((time.perf_counter() - began, line))
    content_times = [t for t, line in arrivals if '"content":" ' in line]
    assert len(content_times) == 3
    assert content_times[0] >= 0.09  # TTFT
    assert content_times[1] - content_times[0] >= 0.05  # ITL
    assert content_times[2] - content_times[1] >= 0.05
    assert arrivals[-1][0] < 0.9


def test_fail_mode_status(start: Start) -> None:
    handle = start(fail_rate=1.0, fail_mode="status", fail_status=503)
    with client_for(handle) as client:
        response = client.post(CHAT, json=chat_body(stream=True))
        control = client.get("/_mock/stats")  # control endpoints are never failure-injected
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"
    assert control.status_code == 200


def test_fail_mode_status_429_is_a_rate_limit_error(start: Start) -> None:
    handle = start(fail_rate=1.0, fail_status=429)
    with client_for(handle) as client:
        error = client.post(CHAT, json=chat_body()).json()["error"]
    assert error["code"] == "rate_limit_exceeded"


def test_fail_mode_reset_raises_a_connection_error(start: Start) -> None:
    handle = start(fail_rate=1.0, fail_mode="reset")
    with (
        client_for(handle) as client,
        pytest.raises((httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError)),
    ):
        client.post(CHAT, json=chat_body())


def test_fail_mode_hang_times_out_and_does_not_leak(start: Start) -> None:
    handle = start(fail_rate=1.0, fail_mode="hang")
    with client_for(handle, timeout=0.2) as client, pytest.raises(httpx.ReadTimeout):
        client.post(CHAT, json=chat_body())
    # Once the client has given up and closed the connection, the backend forgets it.
    assert wait_for(lambda: handle.stats()["open_connections"] == 0)
    assert handle.stats()["connections_total"] == 1


def test_fail_mode_die_mid_stream(start: Start) -> None:
    handle = start(fail_rate=1.0, fail_mode="die-mid-stream")
    received: list[str] = []
    with client_for(handle) as client:
        # The stream starts fine, delivers two frames, then the connection is cut.
        with (
            pytest.raises(httpx.RemoteProtocolError),
            client.stream("POST", CHAT, json=chat_body(stream=True)) as response,
        ):
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    received.append(line)
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(CHAT, json=chat_body())  # non-streaming: half a body, then gone
    assert len(received) == 2
    assert '"role":"assistant"' in received[0] and '"content":" The"' in received[1]


def test_fail_mode_slow_stream(start: Start) -> None:
    handle = start(fail_rate=1.0, fail_mode="slow-stream", tokens=3)
    with client_for(handle) as client:
        client.get("/_mock/stats")
        began = time.perf_counter()
        response = client.post(CHAT, json=chat_body(stream=True))
        elapsed = time.perf_counter() - began
    assert response.status_code == 200
    assert data_lines(response.text)[-1] == "[DONE]"
    assert 0.38 <= elapsed < 0.95  # two 200 ms gaps between three tokens


def test_fail_rate_is_seeded_and_reproducible(start: Start) -> None:
    def pattern(handle: BackendHandle) -> list[int]:
        with client_for(handle) as client:
            return [client.get("/v1/models").status_code for _ in range(24)]

    first = pattern(start(fail_rate=0.5, seed=7))
    second = pattern(start(fail_rate=0.5, seed=7))
    assert first == second
    assert set(first) == {200, 500}


def test_runtime_config_switches_failures_on_and_off(mock: BackendHandle) -> None:
    with client_for(mock) as client:
        assert client.post(CHAT, json=chat_body()).status_code == 200
        config = client.post("/_mock/config", json={"fail_rate": 1.0, "fail_status": 502})
        assert config.status_code == 200
        assert config.json()["fail_rate"] == 1.0 and config.json()["fail_status"] == 502
        assert client.post(CHAT, json=chat_body()).status_code == 502
        client.post("/_mock/config", json={"fail_rate": 0.0, "tokens": 2})
        document = client.post(CHAT, json=chat_body()).json()
        assert document["usage"]["completion_tokens"] == 2
        rejected = client.post("/_mock/config", json={"fail_rate": 2.0})
        unknown = client.post("/_mock/config", json={"model": "other"})
    assert rejected.status_code == 400 and unknown.status_code == 400


# --------------------------------------------------------------------------------------------
# Introspection
# --------------------------------------------------------------------------------------------


def test_requests_are_recorded_byte_for_byte(mock: BackendHandle) -> None:
    body = b'{"model":"qwen-9b",  "messages":[{"role":"user","content":"h\xc3\xa9llo \\u2713"}]}\n'
    with client_for(mock) as client:
        client.post(CHAT, content=body, headers={"X-Trace": "abc", "Content-Type": "application/json"})
        client.get("/v1/models?limit=1")
        records = client.get("/_mock/requests").json()
        stats = client.get("/_mock/stats").json()
        client.delete("/_mock/requests")
        cleared = client.get("/_mock/requests").json()
        stats_after = client.get("/_mock/stats").json()
    assert [(r["method"], r["path"]) for r in records] == [
        ("POST", CHAT),
        ("GET", "/v1/models?limit=1"),
    ]
    assert base64.b64decode(records[0]["body_b64"]) == body
    assert ["x-trace", "abc"] in [[k.lower(), v] for k, v in records[0]["headers"]]
    assert records[1]["body_b64"] == ""
    assert stats["requests"] == 2 and stats["by_path"] == {CHAT: 1, "/v1/models": 1}
    assert cleared == []
    assert stats_after["requests"] == 0 and stats_after["by_path"] == {}
    assert stats_after["open_connections"] == 1


def test_recording_keeps_only_the_last_512(mock: BackendHandle) -> None:
    payload = b"".join(raw_request("GET", f"/v1/models?i={i}") for i in range(520))
    with raw_connection(mock) as sock:
        sock.sendall(payload)
        responses = RawResponses().read(sock, 520)
    assert len(responses) == 520
    records = mock.recorded()
    assert len(records) == 512
    assert records[0]["path"] == "/v1/models?i=8" and records[-1]["path"] == "/v1/models?i=519"
    assert mock.stats()["requests"] == 520


# --------------------------------------------------------------------------------------------
# Clients, API and command line
# --------------------------------------------------------------------------------------------


def test_official_openai_sdk(mock: BackendHandle) -> None:
    with openai.OpenAI(base_url=mock.url, api_key="x", max_retries=0, timeout=2.0) as client:
        chat = client.chat.completions.create(model="qwen-9b", messages=MESSAGES)
        assert chat.choices[0].message.content is not None
        assert len(chat.choices[0].message.content.split()) == 16
        assert chat.usage is not None and chat.usage.completion_tokens == 16

        with client.chat.completions.create(
            model="qwen-9b",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        ) as stream:
            chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == chat.choices[0].message.content
        assert chunks[-1].choices == []
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16

        tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
        called = client.chat.completions.create(model="qwen-9b", messages=MESSAGES, tools=tools)
        assert called.choices[0].finish_reason == "tool_calls"
        tool_calls = called.choices[0].message.tool_calls
        assert tool_calls is not None and tool_calls[0].function.name == "lookup"

        embeddings = client.embeddings.create(model="qwen-9b", input=["a", "b"])
        assert [len(d.embedding) for d in embeddings.data] == [8, 8]

        ids = [model.id for model in client.models.list()]
        assert ids == ["qwen-9b", "sql-lora", "chat-lora"]


def test_async_api_start_and_close() -> None:
    async def scenario() -> tuple[int, bytes]:
        backend = MockBackend(MockOptions(model="m"), tokens=2)
        await backend.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", backend.port)
            writer.write(raw_request("GET", "/v1/models", headers="Connection: close\r\n"))
            data = await reader.read()
            writer.close()
            await writer.wait_closed()
            return backend.port, data
        finally:
            await backend.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        port, data = runner.run(scenario())
    assert port > 0
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b'"id":"m"' in data


def test_invalid_options_are_rejected() -> None:
    with pytest.raises(Exception, match="fail_rate"):
        MockBackend(fail_rate=1.5)
    with pytest.raises(Exception, match="fail_mode"):
        MockBackend(fail_mode="explode")
    options = parse_args(["--flavor", "cloud", "--lora", "a,b=/path", "--fail-rate", "0.25"])
    assert options.flavor == "cloud" and options.lora == ("a", "b") and options.fail_rate == 0.25


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_command_line_serves_and_exits_cleanly(signum: int) -> None:
    command = [sys.executable, "-m", "bench.mock_backend", "--port", "0", "--flavor", "cloud"]
    command += ["--api-key", "k", "--model", "cloud-model"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            prefix = "mock-backend listening on http://127.0.0.1:"
            assert line.startswith(prefix), line
            port = int(line[len(prefix) :])
            assert port > 0
            response = httpx.get(
                f"http://127.0.0.1:{port}/v1/models",
                headers={"Authorization": "Bearer k"},
                timeout=2.0,
            )
            assert response.json()["data"][0]["id"] == "cloud-model"
            process.send_signal(signum)
            assert process.wait(timeout=5) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
