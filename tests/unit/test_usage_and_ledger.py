"""Usage read off answers and streams, and the books it goes into."""

from __future__ import annotations

import itertools
import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiermux.accounting.ledger import PICO, Ledger, ledger_cells
from tiermux.accounting.usage import Usage, UsageTap, ask_for_usage, usage_of
from tiermux.config import Config
from tiermux.state import Layout, Segment

STREAM = (
    b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2,'
    b'"prompt_tokens_details":{"cached_tokens":8}}}\n\n'
    b"data: [DONE]\n\n"
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_a_stripped_stream_is_the_stream_without_its_usage_chunk(cuts: list[int]) -> None:
    """However the backend's bytes are cut into chunks."""
    tap = UsageTap(strip=True)
    relayed = b"".join(tap.feed(chunk) for chunk in _split(STREAM, cuts)) + tap.finish()
    assert relayed == STREAM.replace(STREAM.split(b"\n\n")[2] + b"\n\n", b"")
    assert tap.usage is not None
    assert (tap.usage.prompt_tokens, tap.usage.completion_tokens, tap.usage.cached_tokens) == (12, 2, 8)


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_a_stream_that_asked_for_usage_is_relayed_untouched_and_read(cuts: list[int]) -> None:
    tap = UsageTap(strip=False)
    chunks = _split(STREAM, cuts)
    relayed = [tap.feed(chunk) for chunk in chunks]
    assert relayed == chunks  # chunk for chunk, nothing held back
    assert tap.finish() == b""
    assert tap.usage is not None and tap.usage.completion_tokens == 2


def test_a_content_chunk_that_also_carries_usage_is_kept() -> None:
    """Some servers put usage on the last content chunk: that one is the client's."""
    event = (
        b'data: {"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
    )
    tap = UsageTap(strip=True)
    assert tap.feed(event) == event
    assert tap.usage is not None


def test_ask_for_usage_only_for_streams_that_say_nothing_of_stream_options() -> None:
    asked = ask_for_usage(b' {"model": "auto", "stream": true, "messages": []}')
    assert asked is not None
    assert json.loads(asked)["stream_options"] == {"include_usage": True}
    assert json.loads(asked)["messages"] == []
    assert ask_for_usage(b'{"model": "auto", "stream": false}') is None
    assert ask_for_usage(b'{"model": "auto"}') is None
    assert ask_for_usage(b'{"stream": true, "stream_options": {"include_usage": false}}') is None


def test_usage_of_answers() -> None:
    usage = usage_of(b'{"id": "x", "usage": {"prompt_tokens": 7, "completion_tokens": 3}}')
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (
        7,
        3,
        0,
    )
    assert usage_of(b'{"id": "x"}') is None
    assert usage_of(b"not json") is None
    assert usage_of(b'{"usage": {"prompt_tokens": "seven"}}') is None


def _config() -> Config:
    return msgspec.convert(
        {
            "backends": [
                {
                    "name": "local",
                    "base_url": "http://127.0.0.1:1/v1",
                    "model": "m",
                    "price": {"input": 0.005, "output": 0.01},
                },
                {
                    "name": "cloud",
                    "base_url": "http://127.0.0.1:2/v1",
                    "model": "m",
                    "price": {"input": 3.0, "output": 15.0, "cached_input": 0.3},
                },
            ],
            "tiers": {"cheap": ["local"], "capable": ["cloud"]},
        },
        Config,
    )


@pytest.fixture
def ledger() -> Ledger:
    config = _config()
    segment = Segment.anonymous(Layout({"ledger": ledger_cells(config)}))
    return Ledger(config, segment.cells("ledger"), "cloud")


def test_costs_are_exact_and_savings_are_against_the_capable_backend(ledger: Ledger) -> None:
    usage = msgspec.convert(
        {"prompt_tokens": 1000, "completion_tokens": 500, "prompt_tokens_details": {"cached_tokens": 400}},
        Usage,
    )
    ledger.record("default", "local", "cheap", "extraction", usage)
    ledger.record("default", "cloud", "capable", "code", usage)
    ledger.record("default", "local", "cheap", None, None)  # answered, no usage reported
    stats = ledger.snapshot()
    local_cost = (1000 * 0.005 + 500 * 0.01) / 1e6  # no cached price: cached input at the input price
    cloud_cost = (600 * 3.0 + 400 * 0.3 + 500 * 15.0) / 1e6
    total = stats["total"]
    assert isinstance(total, dict)
    assert total["requests"] == 3 and total["unmetered_requests"] == 1
    assert total["spend_usd"] == pytest.approx(local_cost + cloud_cost, abs=1 / PICO)
    assert total["baseline_usd"] == pytest.approx(2 * cloud_cost, abs=1 / PICO)
    assert total["savings_usd"] == pytest.approx(cloud_cost - local_cost, abs=1 / PICO)
    by_category = stats["by_category"]
    assert isinstance(by_category, dict)
    assert set(by_category) == {"extraction", "code", "none"}
    assert stats["by_tier"]["cheap"]["requests"] == 2  # type: ignore[index]
