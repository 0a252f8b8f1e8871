"""Each category's recent quality scores and whether it is promoted, in the shared segment, so that
every worker of a ``serve`` adds to and reads the same window.

Per category: a ring of the last ``size`` scores (each in milli-points with the time it was taken;
a slot is claimed with one atomic add on the head, so workers never write the same slot), the
promotion state (the epoch millisecond it was promoted at, 0 when it is not), and counters. The
windowed mean is the mean of the ring's scores younger than ``minutes``. One global epoch cell
changes whenever any category is promoted or recovers, so that what was decided under the old
state (the cache's remembered routes) can be dropped at once.

In distributed mode the fleet's window in Redis decides promotion (``tiermux.state.redis_quality``)
and its state is ``mirror``ed here; routing reads it from here only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from tiermux._speedups import atomics
from tiermux.routing.categories import CATEGORIES

__all__ = ["COUNTERS", "QualityWindow", "window_cells"]

HEAD, PROMOTED_AT = 0, 1
COUNTERS = (
    "samples",
    "check_failures",
    "shadow_samples",
    "feedback",
    "promotions",
    "recoveries",
    "escalations",
)
_FIRST_COUNTER = 2
_RING = _FIRST_COUNTER + len(COUNTERS)
EPOCH, DROPPED, SHED = 0, 1, 2  # global cells, before the categories
_GLOBAL = 3


def window_cells(size: int) -> int:
    return _GLOBAL + len(CATEGORIES) * (_RING + 2 * size)


class QualityWindow:
    def __init__(self, cells: atomics.Cells, size: int, minutes: float) -> None:
        if cells.count < window_cells(size):
            raise ValueError("not enough cells for the quality window")
        self._cells = cells
        self.size = size
        self.span_ms = int(minutes * 60_000)
        stride = _RING + 2 * size
        self._base = {name: _GLOBAL + i * stride for i, name in enumerate(CATEGORIES)}

    def __repr__(self) -> str:
        return f"<QualityWindow size={self.size} promoted={self.promoted_categories()}>"

    def add(self, category: str, score: float, counter: str = "samples", now: float | None = None) -> None:
        """One score in [0, 1], counted under ``counter``."""
        base = self._base[category]
        cells = self._cells
        slot = (cells.add(base + HEAD, 1) - 1) % self.size
        at = base + _RING + 2 * slot
        cells.store(at, int(time.time() * 1000 if now is None else now * 1000))
        cells.store(at + 1, 1 + round(max(0.0, min(1.0, score)) * 1000))  # 0 marks an empty slot
        self.count(category, counter)

    def count(self, category: str, counter: str, n: int = 1) -> None:
        self._cells.add(self._base[category] + _FIRST_COUNTER + COUNTERS.index(counter), n)

    def dropped(self, n: int = 1) -> None:
        """Checks a full queue turned away."""
        self._cells.add(DROPPED, n)

    def shed(self, n: int = 1) -> None:
        """Checks a busy worker did not take on (``tiermux.quality.pacing``)."""
        self._cells.add(SHED, n)

    def mean(self, category: str, now: float | None = None) -> tuple[float | None, int]:
        """The windowed mean score and how many scores it is over."""
        cutoff = int((time.time() if now is None else now) * 1000) - self.span_ms
        ring = self._cells.load_range(self._base[category] + _RING, 2 * self.size)
        times, scores = ring[0::2], ring[1::2]  # epoch ms, and score + 1 (0: an empty slot)
        if min(scores) and min(times) >= cutoff:  # a full window, all young enough: the usual case
            return (sum(scores) - self.size) / self.size / 1000, self.size
        young = [score for at, score in zip(times, scores, strict=True) if score and at >= cutoff]
        if not young:
            return None, 0
        return (sum(young) - len(young)) / len(young) / 1000, len(young)

    # --- promotion ----------------------------------------------------------------------------

    def promoted(self, category: str) -> bool:
        return self._cells.load(self._base[category] + PROMOTED_AT) != 0

    def promoted_categories(self) -> list[str]:
        return [name for name in CATEGORIES if self.promoted(name)]

    def epoch(self) -> int:
        return self._cells.load(EPOCH)

    def promote(self, category: str, now: float | None = None) -> bool:
        """Mark ``category`` promoted; whether this call did (another worker may have first)."""
        at = int((time.time() if now is None else now) * 1000)
        if self._cells.compare_exchange(self._base[category] + PROMOTED_AT, 0, at):
            self.count(category, "promotions")
            self._cells.add(EPOCH, 1)
            return True
        return False

    def recover(self, category: str) -> bool:
        """Mark ``category`` back on its own tier; whether this call did."""
        at = self._cells.load(self._base[category] + PROMOTED_AT)
        if at and self._cells.compare_exchange(self._base[category] + PROMOTED_AT, at, 0):
            self.count(category, "recoveries")
            self._cells.add(EPOCH, 1)
            return True
        return False

    def promoted_at(self, category: str) -> int:
        """The epoch millisecond ``category`` was promoted at; 0 when it is not."""
        return self._cells.load(self._base[category] + PROMOTED_AT)

    def mirror(self, category: str, promoted_at: int) -> bool:
        """Take the promotion state decided elsewhere (by the fleet, in Redis): promoted since
        ``promoted_at`` ms, or not when 0. Not counted as a promotion or recovery here; whether
        it changed routing (the epoch moves only then)."""
        cell = self._base[category] + PROMOTED_AT
        current = self._cells.load(cell)
        if current == promoted_at or not self._cells.compare_exchange(cell, current, promoted_at):
            return False  # already so, or another worker changed it just now (the next look sees it)
        if (current == 0) != (promoted_at == 0):
            self._cells.add(EPOCH, 1)
            return True
        return False

    def snapshot(self, categories: Sequence[str] = CATEGORIES) -> dict[str, object]:
        load = self._cells.load
        rows: dict[str, object] = {}
        for name in categories:
            base = self._base[name]
            mean, window = self.mean(name)
            promoted_at = load(base + PROMOTED_AT)
            row: dict[str, object] = {
                "score": None if mean is None else round(mean, 4),
                "window_samples": window,
                "promoted": promoted_at != 0,
                "promoted_since": promoted_at / 1000 if promoted_at else None,
            }
            row.update({counter: load(base + _FIRST_COUNTER + i) for i, counter in enumerate(COUNTERS)})
            rows[name] = row
        return {"dropped": load(DROPPED), "shed": load(SHED), "categories": rows}
