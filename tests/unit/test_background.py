"""Shutdown: background tasks are stopped and waited for, and every part is closed even when
another fails before it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from tiermux.background import close_all, stop_tasks


def test_every_step_runs_even_after_one_fails(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    async def first() -> None:
        ran.append("first")
        raise RuntimeError("the prober had died")

    def second() -> None:
        ran.append("second")

    async def third() -> None:
        await asyncio.sleep(0)
        ran.append("third")

    with caplog.at_level(logging.ERROR, logger="tiermux"):
        asyncio.run(close_all([first, second, third]))
    assert ran == ["first", "second", "third"]
    (record,) = caplog.records
    assert "first" in record.getMessage() and "closing the rest" in record.getMessage()
    assert record.exc_info is not None and "the prober had died" in str(record.exc_info[1])


def test_stopping_tasks_cancels_and_waits_for_them_and_logs_one_that_had_died(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ended: list[str] = []

    async def loop_forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append("loop")

    async def die() -> None:
        raise ValueError("a key of another type")

    async def run() -> list[bool]:
        tasks = [asyncio.ensure_future(loop_forever()), asyncio.ensure_future(die())]
        await asyncio.sleep(0.01)
        await stop_tasks(tasks, "the mirror")
        return [task.done() for task in tasks]

    with caplog.at_level(logging.ERROR, logger="tiermux"):
        assert asyncio.run(run()) == [True, True]
    assert ended == ["loop"]
    (record,) = caplog.records
    assert record.getMessage() == "the mirror had stopped on an error"
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


def test_stopping_no_tasks_is_nothing() -> None:
    asyncio.run(stop_tasks([], "nothing"))


def test_a_task_that_lost_its_cancellation_is_cancelled_again() -> None:
    looks: list[str] = []

    async def mirror() -> None:  # a loop whose call turns a cancellation into an error it catches
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                looks.append("swallowed")
                if len(looks) > 1:
                    raise
            await asyncio.sleep(0.01)

    async def run() -> bool:
        task = asyncio.ensure_future(mirror())
        await asyncio.sleep(0.01)
        await stop_tasks([task], "the mirror")
        return task.cancelled()

    assert asyncio.run(run())
    assert looks == ["swallowed", "swallowed"]


def test_a_task_that_never_stops_is_given_up_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("tiermux.background.STOP_SECONDS", 0.6)

    given_up = False

    async def stubborn() -> None:
        while not given_up:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    async def run() -> tuple[bool, float]:
        nonlocal given_up
        task = asyncio.ensure_future(stubborn())
        await asyncio.sleep(0.01)
        started = time.monotonic()
        await stop_tasks([task], "the stubborn loop")
        waited = time.monotonic() - started
        stopped = task.done()
        given_up = True  # so that the test's own loop can end it
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return stopped, waited

    with caplog.at_level(logging.ERROR, logger="tiermux"):
        stopped, waited = asyncio.run(run())
    assert not stopped and 0.5 <= waited < 2.0
    assert any("did not stop within 0.6s" in r.getMessage() for r in caplog.records)
