"""Whether a worker takes on a check now: checks yield to the requests the worker serves.

A check runs on the same event loop as the requests: a reference call, reading and scoring two
answers, a few hundred microseconds of a core. While the loop keeps up, that time is free and
every check is taken. While it falls behind (``LoopLag`` above ``busy_lag``), each check would
make some client wait, so the worker takes on at most ``per_second`` of them (a token bucket
holding one second's worth) and sheds the rest. The trickle keeps the window filling on a proxy
that is loaded all day; the bucket keeps what it costs negligible.
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
        self.per_second = per_second
        self._burst = max(1.0, per_second) if per_second > 0 else 0.0  # a second's worth, at least one
        self._tokens = self._burst
        self._clock = clock
        self._last = clock()

    def __repr__(self) -> str:
        busy = f"busy above {self.busy_lag * 1000:g} ms"
        return f"<CheckPacing {busy}, then {self.per_second:g}/s; {self.lag!r}>"

    @property
    def busy(self) -> bool:
        return self.lag.seconds > self.busy_lag

    def spare(self) -> bool:
        """Whether a check could be taken on now (without taking it)."""
        return self.lag.seconds <= self.busy_lag or self._refill() >= 1

    def admits(self) -> bool:
        """Whether to take on one more check now (a busy worker spends a token on it)."""
        if self.lag.seconds <= self.busy_lag:
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
