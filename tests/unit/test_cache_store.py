"""The response cache's parts on their own: entries, the worker's LRU store, who may use the
cache, whether an answer is whole, and a shared call's fan-out."""

from __future__ import annotations

import asyncio

import pytest
from tests.support import run_on

from tiermux.accounting.usage import Usage
from tiermux.api.errors import BadGateway
from tiermux.cache.flight import Flight
from tiermux.cache.responses import Mode, ResponseCache, complete
from tiermux.cache.store import ENTRY_OVERHEAD, Entry, LocalCache, decode_entry, encode_entry
from tiermux.config import CacheConfig
from tiermux.state import CACHE_FIELDS, Layout, Segment


def entry(size: int, created: float = 1000.0, backend: str = "local") -> Entry:
    return Entry(b"x" * (size - ENTRY_OVERHEAD), backend, created, Usage(3, 4))


def test_an_entry_survives_its_trip_through_redis_bytes() -> None:
    original = Entry(b'{"id":"a"}', "local-9b", 1234.5, Usage(10, 2))
    assert decode_entry(encode_entry(original)) == original
    assert decode_entry(b"not msgpack at all") is None
    assert decode_entry(encode_entry(["other", "shape"])) is None


def test_the_store_evicts_the_least_recently_used_past_its_bytes() -> None:
    cache = LocalCache(max_bytes=3000, max_entry_bytes=3000, ttl=60)
    for key in (b"a", b"b", b"c"):
        assert cache.put(key, entry(1000))
    assert cache.get(b"a", now=1001) is not None  # a is now the most recently used
    cache.put(b"d", entry(1000))
    assert cache.get(b"b", now=1001) is None
    assert [k for k in (b"a", b"c", b"d") if cache.get(k, now=1001)] == [b"a", b"c", b"d"]
    assert cache.size == 3000 and cache.evictions == 1


def test_the_store_refuses_what_is_too_large_and_replaces_in_place() -> None:
    cache = LocalCache(max_bytes=10_000, max_entry_bytes=2000, ttl=60)
    assert not cache.put(b"big", entry(2001))
    assert cache.put(b"k", entry(1500))
    assert cache.put(b"k", entry(1800))
    assert (len(cache), cache.size) == (1, 1800)


def test_entries_expire_after_their_ttl() -> None:
    cache = LocalCache(max_bytes=10_000, max_entry_bytes=10_000, ttl=5)
    cache.put(b"k", entry(500, created=1000.0))
    assert cache.get(b"k", now=1004.9) is not None
    assert cache.get(b"k", now=1005.0) is None
    assert (len(cache), cache.size) == (0, 0)


@pytest.mark.parametrize(
    ("answer", "whole"),
    [
        (b'{"choices":[{"index":0,"finish_reason":"stop"}]}', True),
        (b'{"choices":[{"finish_reason":"stop"},{"finish_reason":"length"}]}', True),
        (b'{"choices":[{"finish_reason":"stop"},{"finish_reason":null}]}', False),
        (b'{"object":"list","data":[{"embedding":[0.1]}]}', True),
        (b'{"error":{"message":"no"}}', False),
        (b"not json", False),
        (b'{"choices":"wrong"}', False),
    ],
)
def test_only_whole_answers_are_kept(answer: bytes, whole: bool) -> None:
    assert complete(answer) is whole


def make_cache(**config: object) -> ResponseCache:
    segment = Segment.anonymous(Layout({"cache": CACHE_FIELDS}))
    return ResponseCache(CacheConfig(**config), segment.cells("cache"))  # type: ignore[arg-type]


GREEDY = b'{"model":"m","temperature":0,"messages":[]}'
SAMPLED = b'{"model":"m","temperature":0.7,"messages":[]}'
SEEDED = b'{"model":"m","seed":7,"messages":[]}'


@pytest.mark.parametrize(
    ("endpoint", "body", "headers", "mode"),
    [
        ("/chat/completions", GREEDY, [], Mode.USE),
        ("/chat/completions", SEEDED, [], Mode.USE),
        ("/chat/completions", SAMPLED, [], Mode.BYPASS),
        ("/chat/completions", b'{"model":"m","messages":[]}', [], Mode.BYPASS),  # default temperature 1
        ("/embeddings", b'{"model":"m","input":"x"}', [], Mode.USE),
        ("/chat/completions", GREEDY, [(b"cache-control", b"no-cache")], Mode.REFRESH),
        ("/chat/completions", GREEDY, [(b"cache-control", b"No-Store")], Mode.BYPASS),
        ("/chat/completions", GREEDY, [(b"cache-control", b"max-age=0, no-store")], Mode.BYPASS),
        ("/chat/completions", b'{"temperature":"hot"}', [], Mode.BYPASS),
    ],
)
def test_who_may_use_the_cache(
    endpoint: str, body: bytes, headers: list[tuple[bytes, bytes]], mode: Mode
) -> None:
    assert make_cache().mode(endpoint, body, headers) is mode


def test_sampled_requests_are_cached_when_configured_so_and_nothing_when_disabled() -> None:
    assert make_cache(only_deterministic=False).mode("/chat/completions", SAMPLED, []) is Mode.USE
    assert make_cache(enabled=False).mode("/chat/completions", GREEDY, []) is Mode.BYPASS


def test_counts_and_store_show_in_the_snapshot() -> None:
    cache = make_cache(max_bytes=1500, max_entry_bytes=1200)
    cache.store(b"a", entry(1000))
    cache.store(b"b", entry(1000))  # evicts a
    cache.store(b"c", entry(1300))  # too large
    snapshot = cache.snapshot()
    assert (snapshot["stored"], snapshot["evicted"], snapshot["not_stored"]) == (2, 1, 1)
    assert (snapshot["worker_entries"], snapshot["worker_bytes"]) == (1, 1000)
    assert snapshot["worker_known_hits"] == 0


# --- a shared call ------------------------------------------------------------------------------


def test_a_stream_fans_out_to_early_and_late_subscribers() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        flight = Flight()

        async def read() -> list[bytes]:
            return [chunk async for chunk in flight.stream()]

        early = asyncio.ensure_future(read())
        flight.push(b"one")
        await asyncio.sleep(0)
        flight.push(b"two")
        late = asyncio.ensure_future(read())
        await asyncio.sleep(0)
        flight.push(b"three")
        flight.finish()
        return await early, await late

    early, late = run_on("asyncio", scenario())
    assert early == late == [b"one", b"two", b"three"]


def test_every_subscriber_gets_the_error_of_a_failed_call() -> None:
    async def scenario() -> list[BaseException | object]:
        flight = Flight()
        waiters = [asyncio.ensure_future(flight.head()) for _ in range(3)]
        await asyncio.sleep(0)
        flight.fail(BadGateway("down"))
        return await asyncio.gather(*waiters, return_exceptions=True)

    outcomes = run_on("asyncio", scenario())
    assert all(isinstance(o, BadGateway) and str(o) == "down" for o in outcomes)


def test_the_call_is_cancelled_only_when_its_last_subscriber_leaves() -> None:
    async def scenario() -> tuple[bool, bool]:
        flight = Flight()
        flight.task = asyncio.ensure_future(asyncio.sleep(10))
        flight.join()
        flight.join()
        waiter = asyncio.ensure_future(flight.head())
        await asyncio.sleep(0)
        waiter.cancel()  # a subscriber that leaves does not cancel what the others wait for
        flight.leave()
        await asyncio.sleep(0)
        alive = not flight.task.cancelled()
        flight.leave()
        await asyncio.sleep(0)
        return alive, flight.task.cancelled()

    assert run_on("asyncio", scenario()) == (True, True)
