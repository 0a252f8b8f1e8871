"""Whether a worker takes on a check now: checks yield to the requests the worker serves.

A check runs on the same event loop as the requests: a reference call, reading and scoring two
answers, a few hundred microseconds of a core. While the loop keeps up, that time is free and
every check is taken. Once it falls behind (``LoopLag`` above ``busy_lag``), each check would
make some client wait, so the worker takes on at most ``per_second`` of them (a token bucket
holding one second's worth) and sheds the rest, until the lag is back under half the line (a
loop hovering at the line would otherwise flip between the two with every tick, and take on a
burst of checks at each dip). The trickle keeps the window filling on a proxy
that is loaded all day; the bucket keeps what it costs negligible.

The default line, a millisecond of lag, is where waiting for the loop already costs a request
more than tiermux's own work on it (a few hundred microseconds): past it, work is queueing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from tiermux.telemetry.loop_lag import LoopLag

__all__ = ["CheckPacing"]


class CheckPacing:
    def __init__(
        self,
        lag: LoopLag,
        busy_lag: float,
        per_second: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lag = lag
        self.busy_lag = busy_lag if busy_lag > 0 else math.inf  # 0: never busy
        self.calm_lag = self.busy_lag / 2
        self.busy = False
        lag.on_tick = self.follow
        self.per_second = per_second
        self._burst = max(1.0, per_second) if per_second > 0 else 0.0  # a second's worth, at least one
        self._tokens = self._burst
        self._clock = clock
        self._last = clock()

    def __repr__(self) -> str:
        busy = f"busy above {self.busy_lag * 1000:g} ms"
        return f"<CheckPacing {busy}, then {self.per_second:g}/s; {self.lag!r}>"

    def follow(self, lag: float) -> None:
        """The loop's lag, newly measured (``LoopLag`` calls this on every tick)."""
        self.busy = lag > (self.calm_lag if self.busy else self.busy_lag)

    def spare(self) -> bool:
        """Whether a check could be taken on now (without taking it)."""
        return not self.busy or self._refill() >= 1

    def admits(self) -> bool:
        """Whether to take on one more check now (a busy worker spends a token on it)."""
        if not self.busy:
            return True
        if self._refill() < 1:
            return False
        self._tokens -= 1
        return True

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self.per_second)
        self._last = now
        return self._tokens
