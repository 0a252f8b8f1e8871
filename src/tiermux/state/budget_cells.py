"""Daily budgets in the shared segment: what every worker of one ``serve`` has committed today.

Each service has a ring of ``SLOTS`` day slots; day ``d`` lives in slot ``d % SLOTS``. A slot is
five cells:

- ``DAY``: the day the slot holds (``-d`` while a worker opens it for day ``d``);
- ``COMMITTED``: settled costs plus outstanding reservations, in pico-USD. Reserving is one
  bounded atomic add (``add_bounded``), so however many workers reserve at once, committed never
  passes the limit through a reservation;
- ``SPENT``: settled costs only (``COMMITTED - SPENT`` is what is reserved right now);
- ``DOWNGRADED`` and ``REJECTED``: requests of the day the budget downgraded or refused.

A request reserved on one day settles on that day's slot even after midnight, which is why a slot
is reused only ``SLOTS`` days later.

A worker killed mid-request never settles its reservations, which would hold that budget until the
day ends. So each worker process registers in one of ``MAX_WORKERS`` slots (its pid) and keeps, per
service and day slot, what it holds reserved; a worker that finds a registered process gone (at
its own start, a respawned worker's first act, and every ``SWEEP_SECONDS`` after) releases what
the dead one held and frees its slot. Opening a slot for a new day is the one step of more than one
cell: a worker claims the slot (``DAY`` from an old day to ``-d``, so exactly one does), zeroes it
and publishes ``d``; the others wait the few instructions that takes. A worker killed inside a
claim would leave ``-d`` behind, so a waiter that has waited long takes the opening over.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from tiermux._speedups import atomics
from tiermux.state.processes import alive

__all__ = ["BUDGET_FIELDS", "LocalBudgetStore", "budget_cells"]

SLOTS = 4
DAY, COMMITTED, SPENT, DOWNGRADED, REJECTED = range(5)
SLOT_FIELDS = 5
BUDGET_FIELDS = SLOTS * SLOT_FIELDS  # cells per service
MAX_WORKERS = 64  # worker processes that can hold reservations at once (more serve unregistered)
SWEEP_SECONDS = 5.0
_CLAIM_SPINS = 100_000  # far longer than an opening takes, far shorter than a human notices
_RECLAIMING = -1  # a worker slot whose dead owner's reservations are being released


def budget_cells(services: int) -> int:
    """Cells of the budgets block: day slots per service, the worker registry, what each holds."""
    return services * BUDGET_FIELDS + MAX_WORKERS + MAX_WORKERS * services * SLOTS


class LocalBudgetStore:
    """Reserve, settle and read the day's budget of each service in shared cells."""

    name = "local"

    def __init__(self, services: Sequence[str], cells: atomics.Cells) -> None:
        if cells.count < budget_cells(len(services)):
            raise ValueError("not enough cells for every service's budget")
        self._cells = cells
        self._base = {name: i * BUDGET_FIELDS for i, name in enumerate(services)}
        self._registry = len(services) * BUDGET_FIELDS
        self._held_base = self._registry + MAX_WORKERS
        self._services = len(services)
        self._index = {name: i for i, name in enumerate(services)}
        self.pid = os.getpid()
        self.worker: int | None = None
        self.next_sweep = 0.0
        self.sweep()
        self.worker = self._register()

    def _register(self) -> int | None:
        """Take a free worker slot (after ``sweep``, the slots of dead workers are free)."""
        cells = self._cells
        for w in range(MAX_WORKERS):
            if cells.load(self._registry + w) == self.pid:
                return w
        for w in range(MAX_WORKERS):
            if cells.compare_exchange(self._registry + w, 0, self.pid):
                return w
        return None  # more live workers than slots: this one's reservations are not tracked

    def _held(self, worker: int, service: str, day: int) -> int:
        return self._held_base + (worker * self._services + self._index[service]) * SLOTS + day % SLOTS

    def sweep(self) -> int:
        """Release the reservations of registered workers that are gone; how many were found."""
        cells = self._cells
        found = 0
        for w in range(MAX_WORKERS):
            pid = cells.load(self._registry + w)
            if pid <= 0 or pid == self.pid or alive(pid):
                continue
            if not cells.compare_exchange(self._registry + w, pid, _RECLAIMING):
                continue  # another worker is on it
            for service, base in self._base.items():
                for slot in range(SLOTS):
                    held = self._held(w, service, slot)
                    amount = cells.load(held)
                    while amount and not cells.compare_exchange(held, amount, 0):
                        amount = cells.load(held)
                    if amount:
                        cells.add(base + slot * SLOT_FIELDS + COMMITTED, -amount)
            cells.store(self._registry + w, 0)
            found += 1
        return found

    def __repr__(self) -> str:
        return f"<LocalBudgetStore services={list(self._base)}>"

    def _slot(self, service: str, day: int) -> int:
        """The first cell of ``service``'s slot for ``day``, opened for it if need be."""
        base = self._base[service] + (day % SLOTS) * SLOT_FIELDS
        if self._cells.load(base + DAY) == day:
            return base
        return self._open(base, day)

    def _open(self, base: int, day: int) -> int:
        cells = self._cells
        for spin in range(_CLAIM_SPINS):
            marked = cells.load(base + DAY)
            if marked == day:
                return base
            if marked == -day:  # another worker is opening it
                if spin % 64 == 63:
                    os.sched_yield()
                continue
            if cells.compare_exchange(base + DAY, marked, -day):
                break
        # Claimed, or the claimer died holding it: either way, open it. What workers held on the
        # slot's old day is void with it (their settlements of that day are dropped).
        for field in range(1, SLOT_FIELDS):
            cells.store(base + field, 0)
        service = base // BUDGET_FIELDS
        for w in range(MAX_WORKERS):
            cells.store(self._held_base + (w * self._services + service) * SLOTS + day % SLOTS, 0)
        cells.store(base + DAY, day)
        return base

    async def reserve(self, service: str, day: int, amount: int, limit: int) -> LocalBudgetStore | None:
        """Hold ``amount`` pico-USD of ``service``'s ``day`` if committed stays within ``limit``;
        the store that holds it (this one), or None when it does not fit."""
        now = time.monotonic()
        if now >= self.next_sweep:
            self.next_sweep = now + SWEEP_SECONDS
            self.sweep()
        return self if self.try_reserve(service, day, amount, limit) else None

    def try_reserve(self, service: str, day: int, amount: int, limit: int) -> bool:
        base = self._slot(service, day)
        if not self._cells.add_bounded(base + COMMITTED, amount, limit):
            return False
        if self.worker is not None:
            self._cells.add(self._held(self.worker, service, day), amount)
        return True

    def settle(self, service: str, day: int, reserved: int, actual: int) -> None:
        """Replace a reservation by the actual cost (0 releases it)."""
        cells = self._cells
        base = self._base[service] + (day % SLOTS) * SLOT_FIELDS
        if cells.load(base + DAY) != day:
            return  # the slot has moved on to a later day: that day's books are closed
        if self.worker is not None:
            cells.add(self._held(self.worker, service, day), -reserved)
        if actual != reserved:
            cells.add(base + COMMITTED, actual - reserved)
        if actual:
            cells.add(base + SPENT, actual)

    async def count(self, service: str, day: int, downgraded: bool) -> None:
        self.add_count(service, day, downgraded)

    def add_count(self, service: str, day: int, downgraded: bool) -> None:
        self._cells.add(self._slot(service, day) + (DOWNGRADED if downgraded else REJECTED), 1)

    async def totals(self, service: str, day: int) -> tuple[int, int, int, int]:
        """Spent and committed on ``day`` (pico-USD), and requests downgraded and refused."""
        return self.read(service, day)

    def read(self, service: str, day: int) -> tuple[int, int, int, int]:
        cells = self._cells
        slot = self._base[service] + (day % SLOTS) * SLOT_FIELDS
        if cells.load(slot + DAY) != day:
            return 0, 0, 0, 0
        load = cells.load
        return load(slot + SPENT), load(slot + COMMITTED), load(slot + DOWNGRADED), load(slot + REJECTED)
