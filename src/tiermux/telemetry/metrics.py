"""What every worker observes, counted in the shared segment so that ``/metrics`` shows the sum.

Counters and histograms are cells every worker adds to atomically: their totals are those of the
``serve``, and a worker that dies or is respawned takes nothing away (Prometheus sees one process
whose counters only grow). Gauges that belong to a live process (the requests a worker has in
flight to each backend) live in per-worker slots instead: a worker claims a slot with its pid at
start, a slot whose process is gone is taken over (and zeroed) by the next worker to start, and
the exposition adds up the slots of live processes only, so a killed worker leaves no phantom load.

Every label value comes from the config (tiers, backends, services) or a fixed set (categories,
statuses): a client can't create series. A status outside the fixed set is counted as ``other``.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence

from tiermux._speedups import atomics
from tiermux.config import Config
from tiermux.routing.categories import CATEGORIES
from tiermux.state.processes import alive

__all__ = [
    "BUCKETS",
    "NONE",
    "STATUSES",
    "Histogram",
    "Metrics",
    "metrics_cells",
]

NONE = "none"  # the label of what a request never reached (no route, no backend)
PINNED = "pinned"  # the tier of a request that named a backend itself
STATUSES: tuple[str, ...] = (
    "200", "400", "401", "403", "404", "405", "408", "413", "422", "429", "499",
    "500", "502", "503", "504", "529", "other",
)  # fmt: skip
# Seconds; from a cache hit (well under 5 ms) to a long generation (minutes).
BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip
_HISTOGRAM_CELLS = len(BUCKETS) + 2  # one per bucket, +Inf, and the sum in microseconds
MAX_WORKERS = 64  # worker slots for gauges (workers past this serve without their gauges)


def _labels(config: Config) -> tuple[list[str], list[str], list[str]]:
    categories = [*CATEGORIES, NONE]
    tiers = [*config.tiers, PINNED, NONE]
    backends = [*(b.name for b in config.backends), NONE]
    return categories, tiers, backends


def metrics_cells(config: Config) -> int:
    """Cells of the metrics block for ``config``."""
    categories, tiers, backends = _labels(config)
    requests = len(categories) * len(tiers) * len(backends) * len(STATUSES)
    histograms = (len(tiers) + 2 * len(backends)) * _HISTOGRAM_CELLS
    workers = MAX_WORKERS * (1 + len(backends))
    return requests + histograms + workers


class Histogram:
    """One histogram per label value, in cells: non-cumulative bucket counts and a sum."""

    __slots__ = ("_base", "_cells", "labels")

    def __init__(self, cells: atomics.Cells, base: int, labels: Sequence[str]) -> None:
        self._cells = cells
        self._base = {label: base + i * _HISTOGRAM_CELLS for i, label in enumerate(labels)}
        self.labels = tuple(labels)

    def observe(self, label: str, seconds: float) -> None:
        base = self._base[label]
        cells = self._cells
        cells.add(base + bisect.bisect_left(BUCKETS, seconds), 1)
        cells.add(base + _HISTOGRAM_CELLS - 1, int(seconds * 1_000_000))

    def read(self, label: str) -> tuple[list[int], float]:
        """Cumulative counts (one per bucket, then +Inf) and the sum in seconds."""
        base = self._base[label]
        counts, total = [], 0
        for i in range(len(BUCKETS) + 1):
            total += self._cells.load(base + i)
            counts.append(total)
        return counts, self._cells.load(base + _HISTOGRAM_CELLS - 1) / 1_000_000


class Metrics:
    def __init__(self, config: Config, cells: atomics.Cells) -> None:
        if cells.count < metrics_cells(config):
            raise ValueError("not enough cells for the metrics")
        self._cells = cells
        self.categories, self.tiers, self.backends = _labels(config)
        self._category = {name: i for i, name in enumerate(self.categories)}
        self._backend = {name: i for i, name in enumerate(self.backends)}
        # The cell of (category, tier, backend, status) is category * _by_category + tier *
        # _by_tier + backend * _by_backend + status: strides computed once, for the hot path.
        self._by_backend = len(STATUSES)
        self._by_tier = self._by_backend * len(self.backends)
        self._by_category = self._by_tier * len(self.tiers)
        self._status = {int(name): i for i, name in enumerate(STATUSES[:-1])}
        self._other = len(STATUSES) - 1
        self._tier_base = {name: i * self._by_tier for i, name in enumerate(self.tiers)}
        # The cell of each combination seen: labels come from config and fixed sets, statuses
        # are HTTP codes, so there are few.
        self._cell_of: dict[tuple[str, str, str, int], int] = {}
        base = self._by_category * len(self.categories)
        self.duration = Histogram(cells, base, self.tiers)
        base += len(self.tiers) * _HISTOGRAM_CELLS
        self.first_token = Histogram(cells, base, self.backends)
        base += len(self.backends) * _HISTOGRAM_CELLS
        self.upstream = Histogram(cells, base, self.backends)
        base += len(self.backends) * _HISTOGRAM_CELLS
        self._workers = base
        self._slot_size = 1 + len(self.backends)
        self.slot = self._claim_slot()

    def __repr__(self) -> str:
        return f"<Metrics backends={len(self.backends) - 1} tiers={len(self.tiers) - 2} slot={self.slot}>"

    # --- observing (the hot path) --------------------------------------------------------------

    def request(self, category: str, tier: str, backend: str, status: int, seconds: float) -> None:
        """One answered request: its labels, status and how long it took end to end."""
        labels = (category, tier, backend, status)
        index = self._cell_of.get(labels)
        if index is None:
            index = self._cell_of[labels] = (
                self._category[category] * self._by_category
                + self._tier_base[tier]
                + self._backend[backend] * self._by_backend
                + self._status.get(status, self._other)
            )
        self._cells.add(index, 1)
        self.duration.observe(tier, seconds)

    def in_flight_cell(self, backend: str) -> int | None:
        """The cell of this worker's in-flight count for ``backend`` (None without a slot)."""
        if self.slot is None:
            return None
        return self._workers + self.slot * self._slot_size + 1 + self._backend[backend]

    @property
    def cells(self) -> atomics.Cells:
        return self._cells

    # --- reading (the exposition) --------------------------------------------------------------

    def requests(self) -> list[tuple[str, str, str, str, int]]:
        """(category, tier, backend, status, count) of every count that is not zero."""
        rows = []
        load = self._cells.load
        index = 0
        for category in self.categories:
            for tier in self.tiers:
                for backend in self.backends:
                    for status in STATUSES:
                        count = load(index)
                        if count:
                            rows.append((category, tier, backend, status, count))
                        index += 1
        return rows

    def decisions(self) -> list[tuple[str, str, int]]:
        """(category, tier, count): requests routing decided, whatever became of them (the
        request counts of every tier but ``none``, summed over backends and statuses)."""
        totals: dict[tuple[str, str], int] = {}
        for category, tier, _, _, count in self.requests():
            if tier != NONE:
                totals[category, tier] = totals.get((category, tier), 0) + count
        return [(category, tier, count) for (category, tier), count in totals.items()]

    def in_flight(self) -> dict[str, int]:
        """Requests in flight to each backend, summed over the live workers."""
        totals = dict.fromkeys(self.backends[:-1], 0)
        load = self._cells.load
        for slot in range(MAX_WORKERS):
            base = self._workers + slot * self._slot_size
            pid = load(base)
            if pid and alive(pid):
                for i, backend in enumerate(self.backends[:-1]):
                    totals[backend] += load(base + 1 + i)
        return totals

    # --- worker slots --------------------------------------------------------------------------

    def _claim_slot(self) -> int | None:
        """A free slot, or one whose process is gone (zeroed for this one); None when all 64
        belong to live processes."""
        pid = os.getpid()
        cells = self._cells
        for slot in range(MAX_WORKERS):
            base = self._workers + slot * self._slot_size
            owner = cells.load(base)
            if owner == pid:
                return slot
            if (owner == 0 or not alive(owner)) and cells.compare_exchange(base, owner, pid):
                for i in range(1, self._slot_size):
                    cells.store(base + i, 0)
                return slot
        return None

    def release_slot(self) -> None:
        """Give the slot back (a worker that shuts down cleanly)."""
        if self.slot is not None:
            base = self._workers + self.slot * self._slot_size
            self._cells.compare_exchange(base, os.getpid(), 0)
            self.slot = None
