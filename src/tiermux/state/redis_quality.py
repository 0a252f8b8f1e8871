"""The quality window of a fleet: every instance with the same Redis prefix adds its scores to one
window per category, and a category promoted by one is promoted on all.

Per category, the list ``{prefix}:quality:{category}`` holds the last ``quality.window`` scores as
``<epoch ms>:<milli-score>``; the hash ``{prefix}:quality:promoted`` maps each promoted category to
the epoch millisecond it was promoted at. Adding a score and deciding on the windowed mean (the
scores younger than ``quality.window_minutes``) is one Lua script, so one step on the Redis server
whatever the number of instances: exactly one call promotes a category (or returns it), and that
instance counts it.

This runs off the hot path only (the background checks, and a mirror task per worker). Routing
reads the promotion state from the machine's shared segment, into which every worker copies the
fleet's every ``MIRROR_INTERVAL`` seconds (``QualityWindow.mirror``). While Redis is away each
machine scores and decides on its own window; once it answers again, the fleet's state wins (the
scores taken meanwhile stay this machine's).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import NamedTuple

from tiermux.config import QualityConfig
from tiermux.quality.window import QualityWindow
from tiermux.routing.categories import CATEGORIES
from tiermux.state.redis_link import RedisLink

__all__ = ["MIRROR_INTERVAL", "FleetVerdict", "RedisQuality"]

logger = logging.getLogger("tiermux.quality")

MIRROR_INTERVAL = 1.0
KEPT, PROMOTED, RECOVERED = 0, 1, 2

# KEYS: the category's list, the promoted hash. ARGV: category, entry, window size, list TTL (ms),
# cutoff (ms), min_samples, threshold, recovery level, now (ms). Returns the action (KEPT,
# PROMOTED, RECOVERED), the sum of the windowed milli-scores, their count and the promoted-at ms
# (0 when not promoted) after the call.
_RECORD = """
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local cutoff = tonumber(ARGV[5])
local total, count = 0, 0
for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local at, milli = string.match(entry, '^(%d+):(%d+)$')
  if at and tonumber(at) >= cutoff then
    total = total + tonumber(milli)
    count = count + 1
  end
end
local promoted = redis.call('HGET', KEYS[2], ARGV[1])
local action = 0
if count > 0 and count >= tonumber(ARGV[6]) then
  local mean = total / count / 1000
  if not promoted and mean < tonumber(ARGV[7]) then
    promoted = ARGV[9]
    redis.call('HSET', KEYS[2], ARGV[1], promoted)
    action = 1
  elseif promoted and mean >= tonumber(ARGV[8]) then
    promoted = false
    redis.call('HDEL', KEYS[2], ARGV[1])
    action = 2
  end
end
return {action, total, count, promoted or '0'}
"""


class FleetVerdict(NamedTuple):
    action: int  # KEPT, PROMOTED or RECOVERED: what this call did
    mean: float | None
    samples: int  # the windowed scores it is over
    promoted_at: int  # ms; 0 when the category is not promoted


def _stamp(value: bytes | str | None) -> int:
    """The promoted-at ms of a hash field; 0 when absent, 1 when present but unreadable."""
    if value is None:
        return 0
    try:
        return max(0, int(value))
    except ValueError:
        return 1


class RedisQuality:
    def __init__(self, link: RedisLink, settings: QualityConfig, interval: float = MIRROR_INTERVAL) -> None:
        self.link = link
        self.interval = interval
        self.size = settings.window
        self.span_ms = int(settings.window_minutes * 60_000)
        self._decision_args = (
            settings.min_samples,
            repr(settings.threshold),
            repr(settings.threshold + settings.hysteresis),
        )
        self.promoted_key = link.key("quality", "promoted")
        self._keys = {name: link.key("quality", name) for name in CATEGORIES}
        self._record = link.client.register_script(_RECORD)
        self._broken = False  # an unexpected error was logged (once, until a look succeeds)
        self._followed: dict[str, float] = {}  # category -> when a score's answer last decided it

    def __repr__(self) -> str:
        return f"<RedisQuality {self.link.where}>"

    async def record(self, category: str, score: float, now: float | None = None) -> FleetVerdict | None:
        """Add ``score`` to the fleet's window of ``category`` and decide on it; None when Redis
        can't be reached (the caller decides on the machine's own window instead)."""
        link = self.link
        if link.away:
            return None
        now_ms = int((time.time() if now is None else now) * 1000)
        milli = round(max(0.0, min(1.0, score)) * 1000)
        keys = [self._keys[category], self.promoted_key]
        args = [category, f"{now_ms}:{milli}", self.size, self.span_ms, now_ms - self.span_ms]
        try:
            action, total, count, promoted = await self._record(
                keys=keys, args=[*args, *self._decision_args, now_ms]
            )
        except link.errors as exc:
            link.failed(exc)
            return None
        link.succeeded()
        count = int(count)
        mean = int(total) / count / 1000 if count else None
        return FleetVerdict(int(action), mean, count, _stamp(promoted))

    # --- the mirror ---------------------------------------------------------------------------

    def followed(self, category: str) -> None:
        """This worker just took the fleet's decision on ``category`` from a score's answer: a
        look at the hash that started before it is older and must not undo it."""
        self._followed[category] = time.monotonic()

    async def run(self, window: QualityWindow) -> None:
        """Copy the fleet's promotions into ``window`` every ``interval`` seconds, for good."""
        while True:
            try:
                await self.sync(window)
            except Exception:  # the mirror must outlive whatever Redis answers
                if not self._broken:
                    self._broken = True
                    logger.exception("reading the fleet's quality promotions from Redis failed")
            await asyncio.sleep(self.interval)

    async def sync(self, window: QualityWindow) -> None:
        """One look: the fleet's promotion state, taken by ``window``."""
        link = self.link
        if link.away:
            return
        asked_at = time.monotonic()
        try:
            remote = await link.client.hgetall(self.promoted_key)
        except link.errors as exc:
            link.failed(exc)
            return
        link.succeeded()
        self._broken = False
        for name in CATEGORIES:
            if self._followed.get(name, 0.0) > asked_at:
                continue  # this worker took a newer decision while the look was on its way
            promoted_at = _stamp(remote.get(name.encode()))
            if window.mirror(name, promoted_at):
                logger.warning(
                    "%s %s, as the fleet's quality window in Redis decided",
                    name,
                    "promoted to the next tier" if promoted_at else "back on its own tier",
                )
