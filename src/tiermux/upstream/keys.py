"""A backend's API keys, used in turn, with the ones a provider rate-limited left to rest.

A provider limits each key on its own, so a 429 says "this key, not now", not "this backend":
the next request takes the next key that is not resting, and the limited one comes back once its
``retry-after`` has passed. Decisions only, no I/O; the state is this worker's (a key limited
here is tried once more by each other worker, and rested there by its own 429).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["KeyRing"]

# A key due back within this many seconds counts as back: event loop timers may wake a request
# that slept for a key's rest that much early.
SLACK = 0.01


class KeyRing:
    """Round-robin over ``count`` keys (named by index: the keys themselves never leave the
    backend's request heads), skipping the resting ones."""

    __slots__ = ("_clock", "_next", "_resting_until", "count")

    def __init__(self, count: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.count = count
        self._clock = clock
        self._next = 0
        self._resting_until = [0.0] * count

    def __repr__(self) -> str:
        now = self._clock()
        resting = [f"#{i}:{until - now:.1f}s" for i, until in enumerate(self._resting_until) if until > now]
        return f"<KeyRing keys={self.count} next=#{self._next} resting=[{', '.join(resting)}]>"

    def pick(self) -> int | None:
        """The key for the next request, or None when every key is resting (or there is none)."""
        count = self.count
        if count <= 1:
            return 0 if count and self._resting_until[0] <= self._clock() + SLACK else None
        now = self._clock() + SLACK
        start = self._next
        for step in range(count):
            index = (start + step) % count
            if self._resting_until[index] <= now:
                self._next = (index + 1) % count
                return index
        return None

    def rest(self, index: int, seconds: float) -> None:
        """Leave key ``index`` unused for ``seconds`` (a later, longer rest wins)."""
        until = self._clock() + max(seconds, 0.0)
        if until > self._resting_until[index]:
            self._resting_until[index] = until

    def wait(self) -> float:
        """Seconds until a key is usable again (0 when one is now)."""
        if not self.count:
            return 0.0
        wait = min(self._resting_until) - self._clock()
        return wait if wait > SLACK else 0.0
