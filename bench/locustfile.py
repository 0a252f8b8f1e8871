"""A realistic mix of OpenAI-style traffic for tiermux, for locust.

Each simulated user is an application calling the API with a short think time between calls:

* 70% non-streaming chat completions (``model: auto``, tiermux picks the tier);
* 25% streaming chat completions with ``stream_options.include_usage``; the whole stream is read
  and checked (a usage chunk, then ``data: [DONE]``); the time to the first token is reported as
  its own line, ``chat stream: first token``;
* 5% embeddings, pinned to an embedding model by name.

``python -m bench.locust_run`` starts the backends and tiermux and runs this file headless; to run
it by hand against a tiermux you started yourself::

    python -m locust -f bench/locustfile.py --headless -u 50 -r 10 -t 30s --host http://127.0.0.1:8080

``TIERMUX_BENCH_EMBED_MODEL`` names the embedding model (default ``embed-small``).
"""

from __future__ import annotations

import json
import os
import random
import time

from locust import between, task
from locust.contrib.fasthttp import FastHttpUser

EMBED_MODEL = os.environ.get("TIERMUX_BENCH_EMBED_MODEL", "embed-small")
API_KEY = os.environ.get("TIERMUX_BENCH_API_KEY", "bench-key")

SYSTEM_PROMPTS = [
    "You are a concise assistant for an online bookshop. Answer in at most two sentences.",
    "You are a support agent for a cloud storage product. Be precise and friendly.",
    "You extract structured data. Answer with JSON only.",
]
USER_PROMPTS = [
    "My order #48213 still shows 'label created' after five days. What does that mean?",
    "Summarise this review in one line: 'Arrived late, but the print quality is superb and the "
    "binding feels like it will last for years. Would order again, just earlier.'",
    "Extract the city and date from: 'See you in Lisbon on the 14th of March at the usual place.'",
    "Rewrite more politely: 'Your app deleted my files again. Fix it.'",
    "Classify the sentiment of 'not bad at all, honestly' as positive, negative or neutral.",
    "Give me three name ideas for a bakery that only sells sourdough.",
]
HISTORY = [
    {"role": "user", "content": "Hi, I have a question about my account."},
    {"role": "assistant", "content": "Of course. What would you like to know about your account?"},
]
EMBED_INPUTS = [
    "How do I reset my password?",
    ["refund policy for damaged items", "shipping times to Portugal", "gift card balance"],
    "The quick brown fox jumps over the lazy dog.",
]


def chat_body(stream: bool) -> dict[str, object]:
    messages: list[dict[str, str]] = [{"role": "system", "content": random.choice(SYSTEM_PROMPTS)}]
    if random.random() < 0.3:  # some conversations carry history
        messages.extend(HISTORY)
    messages.append({"role": "user", "content": random.choice(USER_PROMPTS)})
    body: dict[str, object] = {
        "model": "auto",
        "messages": messages,
        "max_tokens": random.choice((64, 128, 256)),
        "temperature": random.choice((0, 0.2, 0.7)),
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


class ApiUser(FastHttpUser):
    """One client application."""

    wait_time = between(0.2, 1.0)
    headers = {"Authorization": f"Bearer {API_KEY}"}

    @task(70)
    def chat(self) -> None:
        with self.client.post(
            "/v1/chat/completions",
            json=chat_body(False),
            headers=self.headers,
            name="chat",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                answer = json.loads(response.content)
                ok = isinstance(answer["choices"][0]["message"]["content"], str) and answer["usage"]
            except (ValueError, KeyError, IndexError, TypeError):
                ok = False
            if not ok:
                response.failure(f"unexpected answer: {response.text[:200]}")

    @task(25)
    def chat_stream(self) -> None:
        start = time.perf_counter()
        first_token = 0.0
        with self.client.post(
            "/v1/chat/completions",
            json=chat_body(True),
            headers=self.headers,
            name="chat stream",
            stream=True,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            # One SSE event at a time: FastResponse.iter_content() blocks until it has a whole
            # chunk_size of bytes, which would make the first token look hundreds of ms late.
            raw = response._response
            events: list[bytes] = []
            try:
                while True:
                    event = raw.readline(b"\n\n")
                    if not event:
                        break
                    if not first_token:
                        first_token = time.perf_counter()
                    events.append(event)
            except Exception as exc:  # a broken stream: the network error is the result
                response.failure(f"stream broke after {len(events)} events: {exc!r}")
                return
            elapsed = (time.perf_counter() - start) * 1000
            response.request_meta["response_time"] = elapsed  # the whole stream, not just the head
            response.request_meta["response_length"] = sum(len(e) for e in events)
            problem = _check_stream(events)
            if problem:
                response.failure(problem)
                return
            response.success()
        self.environment.events.request.fire(
            request_type="SSE",
            name="chat stream: first token",
            response_time=(first_token - start) * 1000,
            response_length=0,
            exception=None,
            context={},
        )

    @task(5)
    def embeddings(self) -> None:
        body = {"model": EMBED_MODEL, "input": random.choice(EMBED_INPUTS)}
        with self.client.post(
            "/v1/embeddings", json=body, headers=self.headers, name="embeddings", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                data = json.loads(response.content)["data"]
            except (ValueError, KeyError, TypeError) as exc:
                response.failure(f"unexpected answer ({exc!r})")
                return
            expected = len(body["input"]) if isinstance(body["input"], list) else 1
            if len(data) != expected:
                response.failure(f"{len(data)} embeddings for {expected} inputs")


def _check_stream(events: list[bytes]) -> str | None:
    """``None`` when the SSE events are a whole completion stream with usage, else what's wrong."""
    payloads = [e.strip()[len(b"data:") :].strip() for e in events if e.strip().startswith(b"data:")]
    if not payloads or payloads[-1] != b"[DONE]":
        return f"stream did not end with [DONE] ({len(payloads)} events)"
    try:
        chunks = [json.loads(p) for p in payloads[:-1]]
    except ValueError as exc:
        return f"an SSE event is not JSON: {exc}"
    if any("error" in c for c in chunks):
        return "the stream carried an error event"
    if not chunks or not chunks[-1].get("usage"):
        return "no usage chunk before [DONE] (stream_options.include_usage)"
    if not any(c.get("choices") and c["choices"][0].get("delta", {}).get("content") for c in chunks):
        return "no content in the stream"
    return None
