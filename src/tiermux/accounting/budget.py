"""Daily budgets per service: reserve the worst case before forwarding, settle the actual cost after.

Before a request of a service with a budget is forwarded, its worst-case cost is reserved:

    (estimated input tokens x the dearest input price of its chain)
    + (max_tokens, or ``budgets.assumed_output_tokens``, x n x the dearest output price)

The reservation is atomic against every other request of the service, in every worker (and, with
Redis, every instance), so the committed amount never passes the limit through a reservation.
After the answer, the reservation is replaced by the actual cost from the answer's usage (the very
number the ledger books); a failed request releases it. A request that no longer fits is
downgraded to the service's cheaper tier when its policy says so and it fits there, else refused
with 429 ``budget_exceeded``. Spend can pass the limit only when an answer costs more than its
reservation (a backend ignoring ``max_tokens``, a prompt of unusually many tokens per byte), so by
less than one request's cost.

Days start at midnight in ``budgets.timezone``; a request reserved before midnight settles on the
day it was reserved.
"""

from __future__ import annotations

import datetime
import time
import zoneinfo
from collections.abc import Mapping, Sequence
from typing import Protocol

from tiermux.api.errors import ProxyError
from tiermux.config import BudgetConfig, Config
from tiermux.routing.request import RequestText
from tiermux.routing.router import Decision

__all__ = ["BudgetClock", "BudgetExceeded", "BudgetStore", "BudgetUnavailable", "Budgets", "Reservation"]

PICO = 10**12
# An upper estimate of a request's input tokens from its size: tokenizers average about four
# bytes of English per token, and JSON framing adds bytes, not tokens; three bytes per token plus
# a fixed allowance for the chat template over-reserves a little rather than under.
BYTES_PER_TOKEN = 3
TEMPLATE_TOKENS = 32
NO_OUTPUT_ENDPOINTS = frozenset({"/embeddings"})


class BudgetStore(Protocol):
    """Where the day's commitments live (shared memory, or Redis)."""

    @property
    def name(self) -> str: ...

    async def reserve(self, service: str, day: int, amount: int, limit: int) -> BudgetStore | None:
        """Hold ``amount`` if the day's commitments stay within ``limit``: the store that holds
        it (Redis falls back to this machine's store while it is away), None if it does not fit."""

    def settle(self, service: str, day: int, reserved: int, actual: int) -> None:
        """Replace a reservation by the actual cost; 0 releases it. Never blocks."""

    async def count(self, service: str, day: int, downgraded: bool) -> None: ...

    async def totals(self, service: str, day: int) -> tuple[int, int, int, int]: ...


class BudgetExceeded(ProxyError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class BudgetUnavailable(ProxyError):
    status = 503
    type = "server_error"
    code = "budget_unavailable"


class Reservation:
    """Pico-USD held for one request on one day, in one store."""

    __slots__ = ("amount", "day", "service", "store")

    def __init__(self, store: BudgetStore, service: str, day: int, amount: int) -> None:
        self.store = store
        self.service = service
        self.day = day
        self.amount = amount

    def __repr__(self) -> str:
        return f"<Reservation {self.service} day={self.day} {self.amount / PICO:.6f} USD>"

    def settle(self, actual: int) -> None:
        """Replace the reservation by the actual cost; 0 releases it. Only the first call counts."""
        amount, self.amount = self.amount, -1
        if amount >= 0:
            self.store.settle(self.service, self.day, amount, actual)


class BudgetClock:
    """The budget day (a proleptic ordinal) in a time zone, and when the next one starts."""

    def __init__(self, timezone: str) -> None:
        self.zone = zoneinfo.ZoneInfo(timezone)
        self._day = 0
        self._start = self._next = 0.0  # epoch seconds of the day's midnight and the next one

    def today(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        if not self._start <= now < self._next:  # a new day (or the clock was set back)
            date = datetime.datetime.fromtimestamp(now, self.zone).date()
            self._day = date.toordinal()
            self._start = datetime.datetime.combine(date, datetime.time(), self.zone).timestamp()
            self._next = self.midnight_after(date)
        return self._day

    def midnight_after(self, date: datetime.date) -> float:
        tomorrow = date + datetime.timedelta(days=1)
        return datetime.datetime.combine(tomorrow, datetime.time(), self.zone).timestamp()

    def resets_in(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        self.today(now)
        return max(0.0, self._next - now)


class _Rule:
    __slots__ = ("downgrade", "downgrade_tier", "limit", "usd")

    def __init__(self, budget: BudgetConfig, first_tier: str) -> None:
        self.usd = budget.daily_usd
        self.limit = round(budget.daily_usd * PICO)
        self.downgrade = budget.policy == "downgrade"
        self.downgrade_tier = budget.downgrade_tier or first_tier


class Budgets:
    """The budget rules of every service, and the reservations made against them."""

    def __init__(
        self,
        config: Config,
        store: BudgetStore,
        prices: Mapping[str, tuple[int, int]],
    ) -> None:
        """``prices``: each backend's (input, output) pico-USD per token, the dearest of its
        input prices (cached input may cost less, never more)."""
        first_tier = next(iter(config.tiers))
        self.rules = {name: _Rule(budget, first_tier) for name, budget in config.budget_rules.items()}
        self.store = store
        self.clock = BudgetClock(config.budgets.timezone)
        self.assumed_output = config.budgets.assumed_output_tokens
        self.tiers = {name: tuple(chain) for name, chain in config.tiers.items()}
        self._prices = dict(prices)
        self._chain_prices: dict[tuple[str, ...], tuple[int, int]] = {}

    def __repr__(self) -> str:
        return f"<Budgets {sorted(self.rules)} store={self.store.name}>"

    def _dearest(self, chain: Sequence[str]) -> tuple[int, int]:
        chain = tuple(chain)
        prices = self._chain_prices.get(chain)
        if prices is None:  # once per chain: chains come from config
            prices = self._chain_prices[chain] = (
                max(self._prices[name][0] for name in chain),
                max(self._prices[name][1] for name in chain),
            )
        return prices

    def worst_case(
        self, chain: Sequence[str], endpoint: str, body_size: int, request: RequestText | None
    ) -> int:
        """The most the request can cost on ``chain`` (failover may use any backend of it)."""
        input_price, output_price = self._dearest(chain)
        input_tokens = body_size // BYTES_PER_TOKEN + TEMPLATE_TOKENS
        if endpoint in NO_OUTPUT_ENDPOINTS:
            output_tokens = 0
        else:
            limit = request.max_tokens if request is not None else None
            choices = request.choices if request is not None else 1
            output_tokens = (limit if limit and limit > 0 else self.assumed_output) * max(choices, 1)
        return input_tokens * input_price + output_tokens * output_price

    async def admit(
        self,
        service: str,
        decision: Decision,
        endpoint: str,
        body_size: int,
        request: RequestText | None,
    ) -> tuple[Decision, Reservation | None]:
        """Reserve the request's worst case, downgrading it if its policy says so and it must;
        raise :class:`BudgetExceeded` when it fits nowhere. ``(decision, None)`` for a service
        without a budget, or a request that can't cost anything."""
        rule = self.rules.get(service)
        if rule is None:
            return decision, None
        day = self.clock.today()
        amount = self.worst_case(decision.backends, endpoint, body_size, request)
        if amount == 0:
            return decision, None
        store = self.store
        holder = await store.reserve(service, day, amount, rule.limit)
        if holder is not None:
            return decision, Reservation(holder, service, day, amount)
        if rule.downgrade and not decision.pinned and decision.tier != rule.downgrade_tier:
            chain = self.tiers[rule.downgrade_tier]
            amount = self.worst_case(chain, endpoint, body_size, request)
            holder = await store.reserve(service, day, amount, rule.limit) if amount else None
            if amount == 0 or holder is not None:
                await store.count(service, day, downgraded=True)
                downgraded = Decision(
                    rule.downgrade_tier,
                    chain,
                    decision.classification,
                    (*decision.reasons, f"budget of {service!r} nearly spent: from {decision.tier}"),
                    downgraded_from=decision.tier,
                )
                return downgraded, Reservation(holder, service, day, amount) if holder else None
        await store.count(service, day, downgraded=False)
        raise BudgetExceeded(
            f"The daily budget of service {service!r} (${rule.usd:g}) would be exceeded by this request; "
            f"it resets in {self.clock.resets_in() / 3600:.1f} h.",
            headers=[(b"retry-after", str(int(self.clock.resets_in()) + 1).encode())],
        )

    async def drain(self) -> None:
        """Let settlements still on their way to a shared store arrive (at shutdown)."""
        drain = getattr(self.store, "drain", None)
        if drain is not None:
            await drain()

    async def snapshot(self) -> dict[str, object]:
        """Each budget's state today (what ``/stats`` shows under ``budgets``)."""
        day = self.clock.today()
        date = datetime.date.fromordinal(day)
        resets_at = datetime.datetime.fromtimestamp(self.clock.midnight_after(date), self.clock.zone)
        budgets: dict[str, object] = {}
        for service, rule in self.rules.items():
            spent, committed, downgraded, rejected = await self.store.totals(service, day)
            budgets[service] = {
                "daily_usd": rule.usd,
                "spent_usd": spent / PICO,
                "reserved_usd": (committed - spent) / PICO,
                "remaining_usd": max(0, rule.limit - committed) / PICO,
                "policy": "downgrade" if rule.downgrade else "reject",
                "downgrade_tier": rule.downgrade_tier if rule.downgrade else None,
                "downgraded_requests": downgraded,
                "rejected_requests": rejected,
                "day": date.isoformat(),
                "resets_at": resets_at.isoformat(),
                "store": self.store.name,  # "local", "redis", or "local (redis unreachable)"
            }
        return budgets
