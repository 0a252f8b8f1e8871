"""Backend health: circuit breaking, the order a chain is tried in, and re-probing.

Decisions are sync (``plan``, ``record_*``); the only I/O is the probe loop, which sends each
down backend a real request. Up/down state, failures and counters live in shared cells
(``tiermux.state``), so every worker process of a ``serve`` sees the same health: one worker's
failures mark a backend down for all of them, and one probe brings it back for all. In-flight
counts stay in each worker, next to the worker's own connection pool they are compared with (and
so that a worker killed mid-request leaves no phantom load behind).

- **Down**: ``failure_threshold`` consecutive failures (connection error, timeout, 5xx answer)
  mark a backend down; one success brings it back.
- **Re-probing**: every ``probe_interval`` seconds each down backend, cloud or local, is probed
  by one worker (whichever takes the backend's probe turn first) with ``GET .../models``; an
  answer below 500 puts it back into rotation, so nothing stays down forever.
- **Order**: within a chain, backends that are up come first, cheapest first; backends of equal
  price are balanced by least in-flight requests, and a saturated one (this worker's in-flight at
  its pool's ``max_connections``) waits behind the others. A pricier backend is used only when the cheaper
  ones are down, saturated or failing, never alternated with them. Down backends are tried only
  when no backend of the chain is up (they may have recovered since the last probe).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from tiermux._speedups import atomics
from tiermux.background import stop_tasks
from tiermux.state import HEALTH_FIELDS
from tiermux.upstream.backend import Backend

__all__ = ["BackendHealth", "Health", "HealthMirror"]

logger = logging.getLogger("tiermux.health")

# Cells of a backend, in its block of HEALTH_FIELDS.
FAILURES, DOWN_SINCE_MS, NEXT_PROBE_MS, REQUESTS, ERRORS, LATENCY_US, PROBING = range(HEALTH_FIELDS)

# Weight of the newest sample in the latency average (about the last ten requests).
EWMA_ALPHA = 0.1


def _now_ms() -> int:
    # CLOCK_MONOTONIC is one clock for every process of the machine, so cells can compare it;
    # 0 means "not down", and the monotonic clock starts well above it.
    return time.monotonic_ns() // 1_000_000 + 1


class HealthMirror(Protocol):
    """Shares up/down with other tiermux instances (``tiermux.state.redis_health``)."""

    async def run(self, health: Health) -> None: ...


class BackendHealth:
    """One backend's cells, and the decisions that read them."""

    __slots__ = ("base", "capacity", "cells", "gauge", "in_flight", "name", "price")

    def __init__(self, name: str, price: float, capacity: int, cells: atomics.Cells, base: int) -> None:
        self.name = name
        self.price = price
        self.capacity = capacity
        self.cells = cells
        self.base = base
        self.in_flight = 0  # this worker's requests to it (see the module docstring)
        self.gauge: tuple[atomics.Cells, int] | None = None  # the same, where /metrics reads it

    def __repr__(self) -> str:
        return (
            f"<BackendHealth {self.name} {self.status} failures={self.failures} in_flight={self.in_flight}>"
        )

    def _load(self, field: int) -> int:
        return self.cells.load(self.base + field)

    @property
    def down(self) -> bool:
        return self._load(DOWN_SINCE_MS) != 0

    @property
    def failures(self) -> int:
        return self._load(FAILURES)

    @property
    def status(self) -> str:
        if not self.down:
            return "up"
        return "probing" if self._load(PROBING) else "down"

    def as_dict(self) -> dict[str, object]:
        latency = self._load(LATENCY_US)
        return {
            "name": self.name,
            "status": self.status,
            "in_flight_this_worker": self.in_flight,
            "latency_ewma_ms": round(latency / 1000, 3) if latency else None,
            "consecutive_failures": self.failures,
            "requests": self._load(REQUESTS),
            "errors": self._load(ERRORS),
        }


class Health:
    """The health of every backend, shared by the worker processes."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        cells: atomics.Cells,
        failure_threshold: int = 3,
        probe_interval: float = 5.0,
    ) -> None:
        if cells.count < HEALTH_FIELDS * len(backends):
            raise ValueError("not enough cells for every backend")
        self.backends = backends
        self.failure_threshold = failure_threshold
        self.probe_interval = probe_interval
        self._cells = cells
        self.state = {
            name: BackendHealth(
                name,
                backend.config.price.input + backend.config.price.output,
                backend.config.max_connections,
                cells,
                i * HEALTH_FIELDS,
            )
            for i, (name, backend) in enumerate(backends.items())
        }
        self._prober: asyncio.Task[None] | None = None
        self._mirroring: asyncio.Task[None] | None = None
        self.mirror: HealthMirror | None = None
        self._positions: dict[tuple[str, ...], dict[str, int]] = {}

    def __repr__(self) -> str:
        down = [s.name for s in self.state.values() if s.down]
        return f"<Health threshold={self.failure_threshold} down={down}>"

    # --- decisions -----------------------------------------------------------------------------

    def plan(self, chain: Sequence[str]) -> list[str]:
        """The order to try ``chain`` in (see the module docstring)."""
        state = self.state
        up = [name for name in chain if not state[name].down]
        if not up:
            return list(chain)
        if len(up) > 1:
            chain = tuple(chain)  # the proxy's chains are tuples already: no copy
            position = self._positions.get(chain)
            if position is None:  # once per chain: chains come from config
                position = self._positions[chain] = {name: i for i, name in enumerate(chain)}

            def key(name: str) -> tuple[bool, float, int, int]:
                s = state[name]
                in_flight = s.in_flight
                return (in_flight >= s.capacity, s.price, in_flight, position[name])

            up.sort(key=key)
        return up

    def first(self, chain: Sequence[str]) -> str:
        """The backend ``plan`` puts first (for a chain of one, that one, without planning)."""
        if len(chain) == 1:
            return chain[0]
        return self.plan(chain)[0]

    def started(self, name: str) -> None:
        s = self.state[name]
        s.in_flight += 1
        s.cells.add(s.base + REQUESTS, 1)
        if s.gauge is not None:
            s.gauge[0].add(s.gauge[1], 1)

    def finished(self, name: str) -> None:
        s = self.state[name]
        s.in_flight -= 1
        if s.gauge is not None:
            s.gauge[0].add(s.gauge[1], -1)

    def publish_in_flight(self, cells: atomics.Cells, cell_of: Mapping[str, int | None]) -> None:
        """Keep each backend's in-flight count of this worker in ``cells`` too (for /metrics)."""
        for name, s in self.state.items():
            cell = cell_of.get(name)
            s.gauge = None if cell is None else (cells, cell)

    def record_success(self, name: str, latency: float) -> None:
        cells = self._cells
        base = self.state[name].base
        if cells.load(base + FAILURES):
            cells.store(base + FAILURES, 0)
        sample = max(1, int(latency * 1_000_000))
        for _ in range(4):  # a lost race costs one sample of an average, never more
            old = cells.load(base + LATENCY_US)
            new = sample if old == 0 else old + int(EWMA_ALPHA * (sample - old))
            if cells.compare_exchange(base + LATENCY_US, old, new):
                break
        down_since = cells.load(base + DOWN_SINCE_MS)
        if down_since:
            self._bring_back(name, down_since, "answered a request")

    def record_failure(self, name: str, reason: str) -> None:
        cells = self._cells
        base = self.state[name].base
        cells.add(base + ERRORS, 1)
        failures = cells.add(base + FAILURES, 1)
        if failures >= self.failure_threshold and not cells.load(base + DOWN_SINCE_MS):
            self.mark_down(name, f"after {failures} consecutive failures (last: {reason})")

    def mark_down(self, name: str, why: str) -> None:
        """Take a backend out of rotation until a probe or a request brings it back."""
        cells = self._cells
        base = self.state[name].base
        now = _now_ms()
        # The first probe turn is set before the backend is marked down, so that no worker
        # probes it at once; one worker wins the transition and says so.
        cells.store(base + NEXT_PROBE_MS, now + int(self.probe_interval * 1000))
        if cells.compare_exchange(base + DOWN_SINCE_MS, 0, now):
            logger.warning("backend %s is down %s; re-probing every %gs", name, why, self.probe_interval)

    def bring_up(self, name: str, why: str) -> None:
        """Put a down backend back into rotation (no-op when it is up)."""
        down_since = self._cells.load(self.state[name].base + DOWN_SINCE_MS)
        if down_since:
            self._bring_back(name, down_since, why)

    def _bring_back(self, name: str, down_since: int, why: str) -> None:
        """Mark up a backend that was down since ``down_since`` (unless another worker already
        did, or it went down again since)."""
        cells = self._cells
        base = self.state[name].base
        cells.store(base + FAILURES, 0)  # before it is up, so that no stale count takes it down
        if cells.compare_exchange(base + DOWN_SINCE_MS, down_since, 0):
            cells.store(base + PROBING, 0)
            seconds = (_now_ms() - down_since) / 1000
            logger.warning("backend %s is up again (%s, after %.1fs down)", name, why, seconds)

    def snapshot(self) -> list[dict[str, object]]:
        return [self.state[name].as_dict() | {"model": self.backends[name].model} for name in self.state]

    # --- probing -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start re-probing down backends, and mirroring health with other instances when there
        is a mirror (needs a running loop; cheap to call again)."""
        if self._prober is None:
            loop = asyncio.get_running_loop()
            self._prober = loop.create_task(self._probe_forever())
            if self.mirror is not None:
                self._mirroring = loop.create_task(self.mirror.run(self))

    async def close(self) -> None:
        tasks = [task for task in (self._prober, self._mirroring) if task is not None]
        self._prober = self._mirroring = None
        await stop_tasks(tasks, "backend health's background work")

    async def _probe_forever(self) -> None:
        # Wake often enough to take a probe turn on time; the turns themselves are shared.
        period = min(self.probe_interval, 1.0) / 2
        while True:
            await asyncio.sleep(period)
            await self.probe_due()

    def _take_probe_turn(self, s: BackendHealth, now: int) -> int:
        """The down time of ``s`` if this worker probes it now (it is down, its turn has come, and
        no other worker took the turn first), else 0."""
        cells = self._cells
        down_since = cells.load(s.base + DOWN_SINCE_MS)
        if not down_since:
            return 0
        due = cells.load(s.base + NEXT_PROBE_MS)
        if now < due:
            return 0
        taken = cells.compare_exchange(s.base + NEXT_PROBE_MS, due, now + int(self.probe_interval * 1000))
        return down_since if taken else 0

    async def probe_due(self, now: int | None = None) -> None:
        """Probe every down backend whose turn has come; the ones that answer are up again."""
        now = _now_ms() if now is None else now
        turns = [
            (s, down_since) for s in self.state.values() if (down_since := self._take_probe_turn(s, now))
        ]
        if not turns:
            return
        cells = self._cells
        for s, _ in turns:
            cells.store(s.base + PROBING, 1)
        results = await asyncio.gather(
            *(self.backends[s.name].probe() for s, _ in turns), return_exceptions=True
        )
        for (s, down_since), ok in zip(turns, results, strict=True):
            if ok is True:
                self._bring_back(s.name, down_since, "answered a probe")
            else:
                cells.store(s.base + PROBING, 0)
