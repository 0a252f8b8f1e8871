"""Key rotation and retry decisions: which key goes next, how long a limited key rests, how long
to wait before trying again (no I/O, a fake clock)."""

from __future__ import annotations

import email.utils

import pytest

from tiermux.config import RetryConfig
from tiermux.upstream.keys import KeyRing
from tiermux.upstream.retry import RetryPolicy, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_used_in_turn() -> None:
    ring = KeyRing(3, Clock())
    assert [ring.pick() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_a_rate_limited_key_rests_for_its_retry_after_then_comes_back() -> None:
    clock = Clock()
    ring = KeyRing(3, clock)
    ring.rest(1, 30)
    assert [ring.pick() for _ in range(4)] == [0, 2, 0, 2]
    assert "#1:30.0s" in repr(ring) and "key" not in repr(ring).split("keys=")[0]
    clock.now += 30
    assert sorted(ring.pick() for _ in range(3)) == [0, 1, 2]


def test_when_every_key_rests_none_is_given_and_the_wait_is_the_shortest_rest() -> None:
    clock = Clock()
    ring = KeyRing(2, clock)
    ring.rest(0, 5)
    ring.rest(1, 2)
    assert ring.pick() is None
    assert ring.wait() == pytest.approx(2)
    clock.now += 2
    assert ring.pick() == 1 and ring.wait() == 0.0


def test_a_shorter_rest_does_not_cut_a_longer_one() -> None:
    clock = Clock()
    ring = KeyRing(1, clock)
    ring.rest(0, 10)
    ring.rest(0, 1)
    clock.now += 5
    assert ring.pick() is None


def test_a_single_key_and_no_key() -> None:
    clock = Clock()
    assert [KeyRing(1, clock).pick() for _ in range(2)] == [0, 0]
    assert KeyRing(0, clock).pick() is None


def test_backoff_is_a_random_share_of_a_doubling_step_capped() -> None:
    policy = RetryPolicy(RetryConfig(attempts=5, backoff=0.5, max_backoff=3.0), rng=lambda: 1.0)
    assert [policy.pause(n, None) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, None]
    jittered = RetryPolicy(RetryConfig(attempts=2, backoff=0.5), rng=lambda: 0.25)
    assert jittered.pause(2, None) == pytest.approx(0.25)


def test_a_retry_after_is_honoured_only_when_short_enough() -> None:
    policy = RetryPolicy(RetryConfig(attempts=2, max_backoff=8.0))
    assert policy.pause(1, 3.0) == 3.0
    assert policy.pause(1, 30.0) is None
    assert policy.pause(3, 1.0) is None
    assert RetryPolicy(RetryConfig(attempts=0)).pause(1, None) is None


def test_retry_after_in_seconds_milliseconds_and_as_a_date() -> None:
    assert retry_after([(b"retry-after", b"7")]) == 7.0
    assert retry_after([(b"retry-after", b"1.5")]) == 1.5
    assert retry_after([(b"retry-after", b"9"), (b"retry-after-ms", b"250")]) == 0.25
    date = email.utils.formatdate(2000.0 + 42, usegmt=True).encode()
    assert retry_after([(b"retry-after", date)], now=lambda: 2000.0) == pytest.approx(42)
    assert retry_after([(b"retry-after", b"soon")]) is None
    assert retry_after([(b"retry-after", b"-3")]) == 0.0
    assert retry_after([]) is None


def test_a_nonsense_or_huge_retry_after_is_bounded() -> None:
    assert retry_after([(b"retry-after", b"inf")]) is None
    assert retry_after([(b"retry-after", b"nan")]) is None
    assert retry_after([(b"retry-after-ms", b"1e999")]) is None
    assert retry_after([(b"retry-after", b"99999999")]) == 3600.0
