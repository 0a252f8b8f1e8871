"""Checks yield to requests: the loop's lag tells a busy worker, which takes on only a trickle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import uvloop

from tiermux.quality.pacing import CheckPacing
from tiermux.telemetry.loop_lag import LoopLag


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pacing(lag_ms: float, busy_lag_ms: float = 1.0, per_second: float = 2.0) -> tuple[CheckPacing, Clock]:
    clock = Clock()
    paced = CheckPacing(LoopLag(), busy_lag_ms / 1000, per_second, clock)
    paced.follow(lag_ms / 1000)
    return paced, clock


def test_a_worker_that_keeps_up_takes_on_every_check() -> None:
    paced, _ = pacing(lag_ms=0.3)
    assert not paced.busy
    assert all(paced.admits() for _ in range(1000))


def test_a_busy_worker_takes_on_a_second_worth_then_the_rate() -> None:
    paced, clock = pacing(lag_ms=2.5, per_second=2)
    assert paced.busy
    assert [paced.admits() for _ in range(4)] == [True, True, False, False]
    clock.now += 0.4  # 0.8 of a token
    assert not paced.admits()
    clock.now += 0.1
    assert paced.admits() and not paced.admits()
    clock.now += 60  # a long wait refills the bucket to one second's worth, no more
    assert [paced.admits() for _ in range(3)] == [True, True, False]


def test_over_a_busy_minute_the_trickle_holds_its_rate() -> None:
    paced, clock = pacing(lag_ms=5, per_second=3)
    taken = 0
    for _ in range(60_000):  # a check offered every millisecond
        clock.now += 0.001
        taken += paced.admits()
    assert 180 <= taken <= 183  # three a second, plus the bucket it started with


def test_spare_tells_whether_a_check_could_be_taken_without_taking_it() -> None:
    paced, clock = pacing(lag_ms=5, per_second=1)
    assert paced.spare() and paced.spare()
    assert paced.admits() and not paced.spare() and not paced.admits()
    clock.now += 1
    assert paced.spare() and paced.admits()
    paced.follow(0.0001)
    assert paced.spare()  # not busy: always


def test_a_rate_below_one_still_admits_whole_checks() -> None:
    paced, clock = pacing(lag_ms=5, per_second=0.5)
    assert paced.admits() and not paced.admits()
    clock.now += 1.9
    assert not paced.admits()
    clock.now += 0.1
    assert paced.admits()


def test_no_rate_sheds_every_check_while_busy_and_none_when_not() -> None:
    paced, _ = pacing(lag_ms=5, per_second=0)
    assert not any(paced.admits() for _ in range(10))
    paced.follow(0.0002)
    assert paced.admits()


def test_a_busy_worker_is_calm_again_only_under_half_the_line() -> None:
    paced, _ = pacing(lag_ms=0.9, per_second=0)
    readings = [0.9, 1.1, 0.9, 0.6, 0.51, 0.49, 0.9, 1.01]  # ms, one per tick
    busy = []
    for ms in readings:
        paced.follow(ms / 1000)
        busy.append(paced.busy)
    assert busy == [False, True, True, True, True, False, False, True]


def test_the_lag_tells_the_pacing_on_every_tick(loop: asyncio.AbstractEventLoop) -> None:
    lag = LoopLag(interval=0.002)
    paced = CheckPacing(lag, busy_lag=1e-9, per_second=0)  # any lag at all is busy

    async def run() -> None:
        lag.start()
        await asyncio.sleep(0.05)
        lag.stop()

    assert not paced.busy
    loop.run_until_complete(run())
    assert paced.busy and not paced.admits()


def test_a_busy_lag_of_zero_never_counts_a_worker_busy() -> None:
    paced, _ = pacing(lag_ms=500, busy_lag_ms=0, per_second=0)
    assert not paced.busy and paced.admits()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


def test_the_lag_stays_small_on_an_idle_loop_and_rises_on_a_blocked_one(
    loop: asyncio.AbstractEventLoop,
) -> None:
    lag = LoopLag(interval=0.005)

    async def run() -> tuple[float, float]:
        lag.start()
        lag.start()  # cheap to call again: still one timer
        await asyncio.sleep(0.3)
        idle = lag.seconds

        async def block() -> None:  # a loop turn that takes 10 ms, over and over
            while True:
                time.sleep(0.01)
                await asyncio.sleep(0)

        blocker = asyncio.create_task(block())
        await asyncio.sleep(0.6)
        busy = lag.seconds
        blocker.cancel()
        lag.stop()
        return idle, busy

    idle, busy = loop.run_until_complete(run())
    assert idle < 0.005, idle  # well under a millisecond when quiet; generous for a loaded machine
    assert busy > 0.004, busy  # every probe waited behind a 10 ms turn
    assert busy > 3 * idle


def test_a_stopped_lag_no_longer_ticks(loop: asyncio.AbstractEventLoop) -> None:
    lag = LoopLag(interval=0.002)

    async def run() -> None:
        lag.start()
        await asyncio.sleep(0.05)
        lag.stop()
        before = lag.seconds
        time.sleep(0.02)  # a blocked loop would show, were it still measured
        await asyncio.sleep(0.05)
        assert lag.seconds == before

    loop.run_until_complete(run())
