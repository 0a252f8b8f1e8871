"""Stopping a worker's background tasks, and closing its parts, at shutdown.

Every background loop (re-probing, the Redis mirrors, the quality checks) catches and logs its
own errors; one that died anyway must not stop the shutdown from closing the rest. A connection
left open by a shutdown cut short outlives the worker's event loop, which then cannot close.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable

__all__ = ["close_all", "stop_tasks"]

logger = logging.getLogger("tiermux")


async def stop_tasks(tasks: Iterable[asyncio.Task[None]], what: str) -> None:
    """Cancel ``tasks`` and wait until each has ended; one that had died of an error is logged."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    ended = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in ended:
        if isinstance(outcome, Exception):
            logger.error("%s had stopped on an error", what, exc_info=outcome)


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
