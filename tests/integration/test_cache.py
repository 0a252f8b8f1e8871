"""The response cache and the sharing of identical calls in flight, through the proxy, against
the mock backends (which count what really reached them)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from bench.mock_backend import BackendHandle
from tests.integration.test_metrics import scrape, total
from tests.support import ProxyClient

GREEDY = {"model": "fast", "messages": [{"role": "user", "content": "Is 7 prime?"}], "temperature": 0}


@pytest.fixture
def cached(proxy_with: Callable[..., ProxyClient]) -> Callable[..., ProxyClient]:
    """An in-process proxy on the standard backends, with ``cache`` settings (and more) as given."""

    def make(cache: dict[str, Any] | None = None, **sections: Any) -> ProxyClient:
        return proxy_with(cache=cache or {}, **sections)

    return make


def calls(mock: BackendHandle) -> int:
    return int(mock.stats()["requests"])


def outcome(response: httpx.Response) -> str:
    return response.headers["x-tiermux-cache"]


def sse_payloads(data: bytes) -> list[Any]:
    text = data.decode()
    assert text.endswith("\n\n"), text[-200:]
    blocks = [block for block in text.split("\n\n") if block]
    assert blocks[-1] == "data: [DONE]"
    return [json.loads(block[len("data: ") :]) for block in blocks[:-1]]


def streamed_text(data: bytes) -> str:
    return "".join(
        choice["delta"].get("content") or "" for chunk in sse_payloads(data) for choice in chunk["choices"]
    )


# --- what is the same request ------------------------------------------------------------------


def test_the_same_request_is_answered_once_then_from_the_cache(
    cached: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    client = cached()
    first = client.chat(GREEDY)
    second = client.chat(GREEDY)
    assert (first.status_code, second.status_code) == (200, 200)
    assert (outcome(first), outcome(second)) == ("MISS", "HIT")
    assert second.json() == first.json()
    assert second.headers["x-tiermux-backend"] == "local-9b"
    assert int(second.headers["age"]) >= 0
    assert calls(vllm) == 1


def test_key_order_and_whitespace_do_not_make_another_request(
    cached: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    client = cached()
    client.chat(GREEDY)
    reordered = (
        b'{ "temperature" : 0.0,\n "messages":[{"content":"Is 7 prime?","role":"user"}],"model":"fast"}'
    )
    response = client.post(
        "/v1/chat/completions", content=reordered, headers={"content-type": "application/json"}
    )
    assert outcome(response) == "HIT"
    assert calls(vllm) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"stop": ["\n"]},
        {"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]},
        {"response_format": {"type": "json_object"}},
        {"max_tokens": 5},
        {"seed": 3},
        {"top_p": 0.5},
        {"messages": [{"role": "user", "content": "Is 9 prime?"}]},  # never a "similar" answer
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Is 7 prime?"},
            ]
        },
        {"model": "smart"},  # another tier: another backend and model
    ],
)
def test_whatever_changes_the_answer_misses(
    cached: Callable[..., ProxyClient], change: dict[str, Any]
) -> None:
    client = cached()
    assert outcome(client.chat(GREEDY)) == "MISS"
    assert outcome(client.chat({**GREEDY, **change})) == "MISS"
    assert outcome(client.chat({**GREEDY, **change})) == "HIT"


def test_services_never_see_each_others_answers(
    cached: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    client = cached(services={"billing": {}, "search": {}})
    as_billing = {"x-tiermux-service": "billing"}
    assert outcome(client.post("/v1/chat/completions", json=GREEDY, headers=as_billing)) == "MISS"
    assert (
        outcome(client.post("/v1/chat/completions", json=GREEDY, headers={"x-tiermux-service": "search"}))
        == "MISS"
    )
    assert outcome(client.post("/v1/chat/completions", json=GREEDY, headers=as_billing)) == "HIT"
    assert calls(vllm) == 2


def test_what_does_not_change_the_answer_still_hits(cached: Callable[..., ProxyClient]) -> None:
    client = cached()
    client.chat(GREEDY)
    assert outcome(client.chat({**GREEDY, "user": "someone-else", "metadata": {"trace": "x"}})) == "HIT"


# --- what may be cached ------------------------------------------------------------------------


def test_sampled_requests_bypass_the_cache_unless_told_otherwise(
    cached: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    client = cached()
    sampled = {**GREEDY, "temperature": 0.8}
    assert [outcome(client.chat(sampled)) for _ in range(2)] == ["BYPASS", "BYPASS"]
    assert calls(vllm) == 2
    seeded = {**sampled, "seed": 42}
    assert [outcome(client.chat(seeded)) for _ in range(2)] == ["MISS", "HIT"]

    everything = cached({"only_deterministic": False})
    assert [outcome(everything.chat(sampled)) for _ in range(2)] == ["MISS", "HIT"]


def test_cache_control_no_store_and_no_cache_are_respected(
    cached: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    client = cached()
    no_store = {"cache-control": "no-store"}
    assert outcome(client.post("/v1/chat/completions", json=GREEDY, headers=no_store)) == "BYPASS"
    assert outcome(client.chat(GREEDY)) == "MISS"  # no-store kept nothing
    no_cache = {"cache-control": "no-cache"}
    assert outcome(client.post("/v1/chat/completions", json=GREEDY, headers=no_cache)) == "MISS"
    assert calls(vllm) == 3  # no-cache asked the backend again...
    assert outcome(client.chat(GREEDY)) == "HIT"  # ...and kept its fresh answer
    assert outcome(client.chat(GREEDY)) == "HIT"  # (now a known hit)
    assert calls(vllm) == 3
    assert outcome(client.post("/v1/chat/completions", json=GREEDY, headers=no_cache)) == "MISS"
    assert calls(vllm) == 4  # known or not, no-cache asks the backend


def test_failed_and_unfinished_answers_are_not_kept(
    cached: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    client = cached()
    vllm.configure(fail_rate=1.0, fail_status=400)
    failed = client.chat(GREEDY)
    assert (failed.status_code, outcome(failed)) == (400, "MISS")
    vllm.configure(fail_rate=0.0)
    assert outcome(client.chat(GREEDY)) == "MISS"
    vllm.configure(fail_mode="die-mid-stream", fail_rate=1.0)
    broken = client.chat({**GREEDY, "stream": True, "messages": [{"role": "user", "content": "other"}]})
    assert b"error" in broken.content
    vllm.configure(fail_rate=0.0)
    again = client.chat({**GREEDY, "stream": True, "messages": [{"role": "user", "content": "other"}]})
    assert outcome(again) == "MISS"


def test_entries_expire_after_the_ttl(cached: Callable[..., ProxyClient], vllm: BackendHandle) -> None:
    client = cached({"ttl": 0.3})
    assert outcome(client.chat(GREEDY)) == "MISS"
    assert outcome(client.chat(GREEDY)) == "HIT"
    time.sleep(0.35)
    assert outcome(client.chat(GREEDY)) == "MISS"
    assert calls(vllm) == 2


def test_embeddings_are_cached_and_a_disabled_cache_says_nothing(
    cached: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    client = cached()
    body = {"model": "fast", "input": "tiermux"}
    assert [outcome(client.post("/v1/embeddings", json=body)) for _ in range(2)] == ["MISS", "HIT"]
    off = cached({"enabled": False})
    response = off.chat(GREEDY)
    assert response.status_code == 200 and "x-tiermux-cache" not in response.headers


def test_a_request_answered_again_and_again_is_the_same_answer_booked_each_time(
    cached: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    # From the third time on, the request's bytes find everything its hit needs prepared.
    client = cached()
    answers = [client.chat(GREEDY) for _ in range(6)]
    assert [outcome(a) for a in answers] == ["MISS"] + ["HIT"] * 5
    assert all(a.content == answers[0].content for a in answers)
    hits = answers[1:]
    assert {a.headers["x-tiermux-backend"] for a in hits} == {"local-9b"}
    assert all(a.headers["x-tiermux-tier"] == answers[0].headers["x-tiermux-tier"] for a in hits)
    ids = [a.headers["x-tiermux-request-id"] for a in answers]
    assert len(set(ids)) == 6
    assert all(i.rsplit("-", 1)[0] == ids[0].rsplit("-", 1)[0] for i in ids)  # category and tier
    streamed = [client.chat({**GREEDY, "stream": True}) for _ in range(3)]
    assert [outcome(s) for s in streamed] == ["HIT"] * 3
    assert {streamed_text(s.content) for s in streamed} == {
        answers[0].json()["choices"][0]["message"]["content"]
    }
    stats = client.get("/stats").json()
    assert (stats["total"]["requests"], stats["total"]["cache_answers"], stats["cache"]["hits"]) == (9, 8, 8)
    assert stats["cache"]["worker_known_hits"] == 2  # the JSON request and the streaming one
    assert stats["total"]["cache_saved_usd"] == pytest.approx(8 * stats["total"]["spend_usd"])
    samples = scrape(client)
    assert total(samples, "tiermux_requests_total", backend="local-9b", status="200") == 9
    assert calls(vllm) == 1


# --- either form from either form --------------------------------------------------------------


def test_a_json_answer_is_replayed_as_a_stream_and_a_stream_as_json(
    cached: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    client = cached()
    answer = client.chat(GREEDY).json()
    replayed = client.chat({**GREEDY, "stream": True})
    assert outcome(replayed) == "HIT"
    assert replayed.headers["content-type"].startswith("text/event-stream")
    assert streamed_text(replayed.content) == answer["choices"][0]["message"]["content"]
    assert all("usage" not in chunk or chunk["usage"] is None for chunk in sse_payloads(replayed.content))
    with_usage = client.chat({**GREEDY, "stream": True, "stream_options": {"include_usage": True}})
    assert sse_payloads(with_usage.content)[-1]["usage"] == answer["usage"]

    other = {**GREEDY, "messages": [{"role": "user", "content": "stream me"}]}
    streamed = client.chat({**other, "stream": True})
    assert outcome(streamed) == "MISS"
    as_json = client.chat(other)
    assert outcome(as_json) == "HIT"
    assert as_json.headers["content-type"].startswith("application/json")
    message = as_json.json()["choices"][0]
    assert message["message"]["content"] == streamed_text(streamed.content)
    assert message["finish_reason"] == "stop"
    assert as_json.json()["usage"]["completion_tokens"] > 0  # read off the stream tiermux asked usage of
    assert calls(vllm) == 2


# --- one call for identical requests in flight --------------------------------------------------


def concurrently(client: ProxyClient, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async def all_at_once() -> list[httpx.Response]:
        return await asyncio.gather(*(client.client.post("/v1/chat/completions", json=b) for b in bodies))

    return client.run(all_at_once())


def test_fifty_identical_requests_in_flight_make_one_upstream_call(
    cached: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    client = cached()
    vllm.configure(latency_ms=300)
    answers = concurrently(client, [GREEDY] * 50)
    assert calls(vllm) == 1
    assert sorted(outcome(a) for a in answers) == ["DEDUP"] * 49 + ["MISS"]
    assert len({a.content for a in answers}) == 1
    stats = client.get("/stats").json()
    assert (stats["cache"]["misses"], stats["cache"]["dedups"]) == (1, 49)
    assert stats["total"]["requests"] == 50 and stats["total"]["cache_answers"] == 49


def test_streams_fan_out_chunk_by_chunk_and_forms_mix(
    cached: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    client = cached()
    vllm.configure(ttft_ms=100, itl_ms=20, tokens=8)
    stream = {**GREEDY, "stream": True}
    answers = concurrently(client, [stream] * 5 + [GREEDY] * 3)
    assert calls(vllm) == 1
    texts = {streamed_text(a.content) for a in answers[:5]}
    assert len(texts) == 1
    assert {a.json()["choices"][0]["message"]["content"] for a in answers[5:]} == texts
    assert all(a.headers["content-type"].startswith("application/json") for a in answers[5:])


def test_when_the_shared_call_fails_every_waiter_gets_its_error_and_nothing_is_kept(
    cached: Callable[..., ProxyClient], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    client = cached()
    for mock in (vllm, cloud):
        mock.configure(latency_ms=200, fail_rate=1.0, fail_status=503)
    answers = concurrently(client, [GREEDY] * 10)
    assert {a.status_code for a in answers} == {503}
    assert len({a.content for a in answers}) == 1  # the same error for all
    # One request's calls down the chain (the last backend is retried once), not ten.
    assert calls(vllm) == 1 and calls(cloud) == 2
    for mock in (vllm, cloud):
        mock.configure(latency_ms=0, fail_rate=0.0)
    assert outcome(client.chat(GREEDY)) == "MISS"


def test_a_waiter_keeps_its_answer_when_the_first_client_leaves(
    cached: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    client = cached()
    vllm.configure(latency_ms=300)

    async def first_leaves() -> httpx.Response:
        first = asyncio.ensure_future(client.client.post("/v1/chat/completions", json=GREEDY))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(client.client.post("/v1/chat/completions", json=GREEDY))
        await asyncio.sleep(0.05)
        first.cancel()
        return await second

    response = client.run(first_leaves())
    assert (response.status_code, outcome(response)) == (200, "DEDUP")
    assert calls(vllm) == 1
    assert outcome(client.chat(GREEDY)) == "HIT"


# --- the books ----------------------------------------------------------------------------------


def test_hits_and_dedups_cost_nothing_and_count_as_savings(
    cached: Callable[..., ProxyClient], cloud: BackendHandle
) -> None:
    client = cached(services={"default": {"budget": {"daily_usd": 10.0}}})
    smart = {**GREEDY, "model": "smart"}
    client.chat(smart)
    before = client.get("/stats").json()
    assert outcome(client.chat(smart)) == "HIT"
    after = client.get("/stats").json()
    assert after["budgets"]["default"]["spent_usd"] == before["budgets"]["default"]["spent_usd"]
    assert after["total"]["spend_usd"] == before["total"]["spend_usd"]
    saved = after["total"]["cache_saved_usd"]
    assert saved == pytest.approx(before["total"]["spend_usd"])  # the same answer, once more, free
    assert after["total"]["savings_usd"] == pytest.approx(before["total"]["savings_usd"] + saved)
    assert (after["total"]["requests"], after["total"]["cache_answers"]) == (2, 1)
    assert after["cache"]["hits"] == 1


def test_a_downgraded_request_finds_the_cheaper_tiers_answer(
    cached: Callable[..., ProxyClient], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    # The frontier's worst case never fits this budget; the local model's does.
    client = cached(
        services={"default": {"budget": {"daily_usd": 0.0001}}},
        tiers={"cheap": ["local-9b"], "capable": ["frontier"]},
    )
    smart = {**GREEDY, "model": "smart"}
    first = client.chat(smart)
    assert (first.headers["x-tiermux-downgraded-from"], outcome(first)) == ("capable", "MISS")
    second = client.chat(smart)
    assert (second.headers["x-tiermux-backend"], outcome(second)) == ("local-9b", "HIT")
    assert second.json() == first.json()
    assert (calls(vllm), calls(cloud)) == (1, 0)
    assert client.get("/stats").json()["budgets"]["default"]["reserved_usd"] == 0


def test_a_hit_is_only_the_answer_of_the_backend_routing_would_choose_now(
    cached: Callable[..., ProxyClient], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    client = cached()
    assert outcome(client.chat(GREEDY)) == "MISS"
    assert outcome(client.chat(GREEDY)) == "HIT"
    client.app.health.mark_down("local-9b", "maintenance")  # the cheap tier now plans the frontier
    moved = client.chat(GREEDY)
    assert (outcome(moved), moved.headers["x-tiermux-backend"]) == ("MISS", "frontier")
    assert outcome(client.chat(GREEDY)) == "HIT"
    assert (calls(vllm), calls(cloud)) == (1, 1)


def test_routing_headers_are_part_of_what_was_asked(cached: Callable[..., ProxyClient]) -> None:
    routing = {"aliases": {"fast": "cheap"}, "allow_header_override": True, "classifier": {"enabled": False}}
    client = cached(routing=routing)
    assert outcome(client.chat(GREEDY)) == "MISS"
    capable = {"x-tiermux-tier": "capable"}
    lifted = client.post("/v1/chat/completions", json=GREEDY, headers=capable)
    assert (outcome(lifted), lifted.headers["x-tiermux-backend"]) == ("MISS", "frontier")
    assert outcome(client.post("/v1/chat/completions", json=GREEDY, headers=capable)) == "HIT"
    assert outcome(client.chat(GREEDY)) == "HIT"


def test_a_body_routing_cannot_read_bypasses_the_cache_but_not_the_budget(
    cached: Callable[..., ProxyClient], cloud: BackendHandle
) -> None:
    client = cached(services={"default": {"budget": {"daily_usd": 0.0001, "policy": "reject"}}})
    odd = {"model": "smart", "temperature": 0, "messages": "a vendor's own shape"}
    refused = client.chat(odd)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    assert calls(cloud) == 0
    allowed = cached()
    assert [outcome(allowed.chat(odd)) for _ in range(2)] == ["BYPASS", "BYPASS"]


def test_without_dedup_identical_requests_in_flight_each_make_their_call(
    cached: Callable[..., ProxyClient], vllm: BackendHandle
) -> None:
    client = cached({"dedup": False})
    vllm.configure(latency_ms=200)
    answers = concurrently(client, [GREEDY] * 4)
    assert calls(vllm) == 4
    assert sorted(outcome(a) for a in answers) == ["MISS"] * 4
    assert outcome(client.chat(GREEDY)) == "HIT"  # each kept its answer; the cache still serves
