"""How busy a worker's event loop is, by how late it runs what is due.

Every ``interval`` a callback is queued and the time until the loop runs it is taken: it waits
behind every callback that was ready before it (and for as long as the process waited for a core),
so it measures how long work waits for this loop right now. The lag is smoothed (a moving average
over about ten ticks, a quarter of a second), so that one slow turn or a collection pause does not
count as a busy worker and a busy spell is seen within a fraction of a second. Counting requests
in flight could not tell this: an LLM request spends seconds idle upstream, so a worker can hold
hundreds of them and still have nothing to do.

One tick costs a timer and a few float operations, a few dozen times a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["LoopLag"]

_SMOOTHING = 0.1  # the newest tick's weight

# On two cores shared with the load generator and the mocks, the smoothed lag of a worker was
# 0.1-0.4 ms at a fifth of the saturating rate, 0.1-0.5 ms at half of it, and 1-2.5 ms at
# saturation (64 connections).


class LoopLag:
    def __init__(self, interval: float = 0.025) -> None:
        self.interval = interval
        self.seconds = 0.0  # the smoothed lag
        self.on_tick: Callable[[float], None] | None = None  # told the smoothed lag on every tick
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sent = 0.0
        self._timer: asyncio.Handle | None = None

    def __repr__(self) -> str:
        return f"<LoopLag {self.seconds * 1000:.2f} ms every {self.interval * 1000:g} ms>"

    def start(self) -> None:
        """Start measuring on the running loop (cheap to call again)."""
        if self._timer is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_later(self.interval, self._probe)

    def _probe(self) -> None:
        # Measured from here, with the process's own clock, not from the timer's due time: a
        # loop's clock may be coarse (uvloop's counts milliseconds) and read once per turn, so a
        # timer can fire early by as much as it would be late.
        assert self._loop is not None
        self._sent = time.perf_counter()
        self._timer = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        late = time.perf_counter() - self._sent
        self.seconds += _SMOOTHING * (late - self.seconds)
        if self.on_tick is not None:
            self.on_tick(self.seconds)
        self._schedule()
