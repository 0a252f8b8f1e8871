"""Shutdown: background tasks are stopped and waited for, and every part is closed even when
another fails before it."""

from __future__ import annotations

import asyncio
import logging

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
