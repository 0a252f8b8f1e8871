"""Stopping a worker's background tasks, and closing its parts, at shutdown.

Every background loop (re-probing, the Redis mirrors, the quality checks) catches and logs its
own errors; one that died anyway, or that does not stop when cancelled, must not stop the
shutdown from closing the rest. A connection left open by a shutdown cut short outlives the
worker's event loop, which then cannot close.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable

__all__ = ["close_all", "stop_tasks"]

logger = logging.getLogger("tiermux")


# A cancellation can be lost inside a library (one that turns it into its own timeout error, say,
# which the loop then catches and goes on): a task still running is asked again this often, and
# given up on (logged) after STOP_SECONDS, so that a shutdown always ends.
RECANCEL_SECONDS = 0.25
STOP_SECONDS = 5.0


async def stop_tasks(tasks: Iterable[asyncio.Task[None]], what: str) -> None:
    """Cancel ``tasks`` and wait until each has ended; one that had died of an error is logged."""
    pending = set(tasks)
    deadline = asyncio.get_running_loop().time() + STOP_SECONDS
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                logger.error("%s had stopped on an error", what, exc_info=task.exception())
        if pending and asyncio.get_running_loop().time() >= deadline:
            logger.error("%s did not stop within %gs of being cancelled: %s", what, STOP_SECONDS, pending)
            return


async def close_all(steps: Iterable[Callable[[], object]]) -> None:
    """Run each closing step in turn (awaiting those that return an awaitable); one that fails is
    logged and the next still runs."""
    for step in steps:
        try:
            done = step()
            if inspect.isawaitable(done):
                await done
        except Exception:
            logger.exception("closing: %s failed; closing the rest", getattr(step, "__qualname__", step))
