"""The books: requests, tokens and cost, by service, backend, tier and category, in shared cells.

Costs are integers of pico-dollars (1e-12 USD; a price of $0.005 per million tokens is 5,000 a
token), so that additions from every worker are exact and their sum is the sum of the parts. Next
to each cost, the same tokens are priced at the capable tier's first backend: the **baseline**
the savings are measured against (what sending everything to the capable tier would have cost).

Answers that cost nothing (a cache hit, a request that shared an identical call in flight) are
booked too: counted as requests and as ``cache_answers``, their tokens priced at the baseline (so
that they count fully as savings) and at the backend that first answered (``cache_saved``, what
the cache itself saved); their tokens are not added to the tokens paid for.
"""

from __future__ import annotations

from collections.abc import Sequence

from tiermux._speedups import atomics
from tiermux.accounting.usage import Usage
from tiermux.config import Config, Price
from tiermux.routing.categories import CATEGORIES

__all__ = ["FIELDS", "FreeBooking", "Ledger", "ledger_cells"]

REQUESTS, UNMETERED, INPUT, CACHED, OUTPUT, COST, BASELINE, CACHE_ANSWERS, CACHE_SAVED = range(9)
FIELDS = 9
NO_CATEGORY = "none"
PINNED_TIER = "pinned"
PICO = 10**12


def ledger_cells(config: Config) -> int:
    """Cells the ledger needs for ``config``."""
    services = len(config.service_names)
    return services * len(config.backends) * (len(config.tiers) + 1) * (len(CATEGORIES) + 1) * FIELDS


def _per_token(price: float) -> int:
    """USD per million tokens -> pico-USD per token."""
    return round(price * 1_000_000)


class _Prices:
    __slots__ = ("cached", "input", "output")

    def __init__(self, price: Price) -> None:
        self.input = _per_token(price.input)
        self.cached = _per_token(price.input if price.cached_input is None else price.cached_input)
        self.output = _per_token(price.output)

    def cost(self, usage: Usage) -> int:
        cached = usage.cached_tokens
        return (
            (usage.prompt_tokens - cached) * self.input
            + cached * self.cached
            + usage.completion_tokens * self.output
        )


class FreeBooking:
    """The booking of one answer that cost nothing: its cells and values, priced once."""

    __slots__ = ("_base", "_baseline", "_cells", "saved", "usage")

    def __init__(
        self, cells: atomics.Cells, base: int, usage: Usage | None, saved: int, baseline: int
    ) -> None:
        self._cells = cells
        self._base = base
        self.usage = usage
        self.saved = saved  # what the backend call would have cost, pico-USD
        self._baseline = baseline

    def book(self) -> int:
        """Book it once more; what it saved."""
        cells = self._cells
        base = self._base
        cells.add(base + REQUESTS, 1)
        cells.add(base + CACHE_ANSWERS, 1)
        if self.usage is None:
            cells.add(base + UNMETERED, 1)
            return 0
        cells.add(base + CACHE_SAVED, self.saved)
        cells.add(base + BASELINE, self._baseline)
        return self.saved


class Ledger:
    def __init__(self, config: Config, cells: atomics.Cells, baseline_backend: str) -> None:
        if cells.count < ledger_cells(config):
            raise ValueError("not enough cells for the ledger")
        self._cells = cells
        self.services = config.service_names
        self._service_index = {name: i for i, name in enumerate(self.services)}
        self.backends = [b.name for b in config.backends]
        self.tiers = [*config.tiers, PINNED_TIER]
        self.categories = [*CATEGORIES, NO_CATEGORY]
        self._backend_index = {name: i for i, name in enumerate(self.backends)}
        self._tier_index = {name: i for i, name in enumerate(self.tiers)}
        self._category_index = {name: i for i, name in enumerate(self.categories)}
        self._prices = {b.name: _Prices(b.price) for b in config.backends}
        self.baseline_backend = baseline_backend
        self._baseline = self._prices[baseline_backend]

    def __repr__(self) -> str:
        return f"<Ledger backends={len(self.backends)} baseline={self.baseline_backend}>"

    def _base(self, service: str, backend: str, tier: str, category: str | None) -> int:
        s = self._service_index[service]
        b = self._backend_index[backend]
        t = self._tier_index.get(tier, len(self.tiers) - 1)
        c = self._category_index[category or NO_CATEGORY]
        return (((s * len(self.backends) + b) * len(self.tiers) + t) * len(self.categories) + c) * FIELDS

    def prices(self) -> dict[str, tuple[int, int]]:
        """Each backend's dearest input and its output price, pico-USD per token (for budgets)."""
        return {name: (max(p.input, p.cached), p.output) for name, p in self._prices.items()}

    def record(self, service: str, backend: str, tier: str, category: str | None, usage: Usage | None) -> int:
        """Book one answered request; its cost in pico-USD (0 without usage: counted, unmetered)."""
        cells = self._cells
        base = self._base(service, backend, tier, category)
        cells.add(base + REQUESTS, 1)
        if usage is None:
            cells.add(base + UNMETERED, 1)
            return 0
        cost = self._prices[backend].cost(usage)
        cells.add(base + INPUT, usage.prompt_tokens)
        cells.add(base + CACHED, usage.cached_tokens)
        cells.add(base + OUTPUT, usage.completion_tokens)
        cells.add(base + COST, cost)
        cells.add(base + BASELINE, self._baseline.cost(usage))
        return cost

    def record_free(
        self, service: str, backend: str, tier: str, category: str | None, usage: Usage | None
    ) -> int:
        """Book one request answered without a backend call; what that call would have cost."""
        return self.free_booking(service, backend, tier, category, usage).book()

    def free_booking(
        self, service: str, backend: str, tier: str, category: str | None, usage: Usage | None
    ) -> FreeBooking:
        """What ``record_free`` books, priced once, to be booked for each identical answer."""
        base = self._base(service, backend, tier, category)
        if usage is None:
            return FreeBooking(self._cells, base, None, 0, 0)
        return FreeBooking(
            self._cells, base, usage, self._prices[backend].cost(usage), self._baseline.cost(usage)
        )

    def rows(self) -> list[tuple[tuple[str, str, str, str], list[int]]]:
        """((service, backend, tier, category), the fields) of every combination with requests."""
        rows = []
        for service in self.services:
            for backend in self.backends:
                for tier in self.tiers:
                    for category in self.categories:
                        base = self._base(service, backend, tier, category)
                        if self._cells.load(base + REQUESTS):
                            values = [self._cells.load(base + f) for f in range(FIELDS)]
                            rows.append(((service, backend, tier, category), values))
        return rows

    def snapshot(self) -> dict[str, object]:
        """Totals, and the same by service, backend, tier and category (what ``/stats`` shows)."""
        rows = self.rows()
        return {
            "object": "tiermux.stats",
            "baseline_backend": self.baseline_backend,
            "total": _summary([v for _, v in rows]),
            "by_service": _group(rows, 0),
            "by_backend": _group(rows, 1),
            "by_tier": _group(rows, 2),
            "by_category": _group(rows, 3),
        }


def _group(rows: Sequence[tuple[tuple[str, ...], list[int]]], key: int) -> dict[str, object]:
    groups: dict[str, list[list[int]]] = {}
    for labels, values in rows:
        groups.setdefault(labels[key], []).append(values)
    return {name: _summary(values) for name, values in groups.items()}


def _summary(rows: Sequence[list[int]]) -> dict[str, object]:
    total = [sum(row[f] for row in rows) for f in range(FIELDS)]
    return {
        "requests": total[REQUESTS],
        "unmetered_requests": total[UNMETERED],
        "input_tokens": total[INPUT],
        "cached_input_tokens": total[CACHED],
        "output_tokens": total[OUTPUT],
        "spend_usd": total[COST] / PICO,
        "baseline_usd": total[BASELINE] / PICO,
        "savings_usd": (total[BASELINE] - total[COST]) / PICO,
        "cache_answers": total[CACHE_ANSWERS],
        "cache_saved_usd": total[CACHE_SAVED] / PICO,
    }
