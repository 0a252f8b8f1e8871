"""Backend health: circuit breaking, the order a chain is tried in, and re-probing.

Decisions are sync and pure (``plan``, ``record_*``); the only I/O is the probe loop, which asks
each down backend's pool whether it can connect. The state lives in this worker for now: each
worker learns about a failing backend from its own requests.

- **Down**: ``failure_threshold`` consecutive failures (connection error, timeout, 5xx answer)
  mark a backend down; one success brings it back.
- **Re-probing**: every ``probe_interval`` seconds each down backend, cloud or local, is probed
  (a TCP/TLS connection); a backend that answers goes back into rotation, so nothing stays down
  forever.
- **Order**: within a chain, backends that are up come first, cheapest first; backends of equal
  price are balanced by least in-flight requests, and a saturated one (in-flight at its pool's
  ``max_connections``) waits behind the others. A pricier backend is used only when the cheaper
  ones are down, saturated or failing, never alternated with them. Down backends are tried only
  when no backend of the chain is up (they may have recovered since the last probe).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence

from tiermux.upstream.backend import Backend

__all__ = ["BackendHealth", "Health"]

logger = logging.getLogger("tiermux.health")

# Weight of the newest sample in the latency average (about the last ten requests).
EWMA_ALPHA = 0.1


class BackendHealth:
    """What this worker knows about one backend."""

    __slots__ = (
        "capacity",
        "consecutive_failures",
        "down_since",
        "errors",
        "in_flight",
        "latency_ewma",
        "name",
        "price",
        "probing",
        "requests",
    )

    def __init__(self, name: str, price: float, capacity: int) -> None:
        self.name = name
        self.price = price
        self.capacity = capacity
        self.consecutive_failures = 0
        self.down_since: float | None = None
        self.probing = False
        self.in_flight = 0
        self.requests = 0
        self.errors = 0
        self.latency_ewma: float | None = None

    def __repr__(self) -> str:
        return (
            f"<BackendHealth {self.name} {self.status} failures={self.consecutive_failures} "
            f"in_flight={self.in_flight}>"
        )

    @property
    def status(self) -> str:
        if self.down_since is None:
            return "up"
        return "probing" if self.probing else "down"

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "in_flight": self.in_flight,
            "latency_ewma_ms": None if self.latency_ewma is None else round(self.latency_ewma * 1000, 3),
            "consecutive_failures": self.consecutive_failures,
            "requests": self.requests,
            "errors": self.errors,
        }


class Health:
    """The health of every backend, as this worker sees it."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        failure_threshold: int = 3,
        probe_interval: float = 5.0,
    ) -> None:
        self.backends = backends
        self.failure_threshold = failure_threshold
        self.probe_interval = probe_interval
        self.state = {
            name: BackendHealth(
                name,
                backend.config.price.input + backend.config.price.output,
                backend.config.max_connections,
            )
            for name, backend in backends.items()
        }
        self._prober: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        down = [s.name for s in self.state.values() if s.down_since is not None]
        return f"<Health threshold={self.failure_threshold} down={down}>"

    # --- decisions -----------------------------------------------------------------------------

    def plan(self, chain: Sequence[str]) -> list[str]:
        """The order to try ``chain`` in (see the module docstring)."""
        state = self.state
        up = [name for name in chain if state[name].down_since is None]
        if not up:
            return list(chain)
        if len(up) > 1:
            position = {name: i for i, name in enumerate(chain)}

            def key(name: str) -> tuple[bool, float, int, int]:
                s = state[name]
                return (s.in_flight >= s.capacity, s.price, s.in_flight, position[name])

            up.sort(key=key)
        return up

    def started(self, name: str) -> None:
        s = self.state[name]
        s.in_flight += 1
        s.requests += 1

    def finished(self, name: str) -> None:
        self.state[name].in_flight -= 1

    def record_success(self, name: str, latency: float) -> None:
        s = self.state[name]
        s.consecutive_failures = 0
        ewma = s.latency_ewma
        s.latency_ewma = latency if ewma is None else ewma + EWMA_ALPHA * (latency - ewma)
        if s.down_since is not None:
            self._mark_up(s, "answered a request")

    def record_failure(self, name: str, reason: str) -> None:
        s = self.state[name]
        s.errors += 1
        s.consecutive_failures += 1
        if s.down_since is None and s.consecutive_failures >= self.failure_threshold:
            s.down_since = time.monotonic()
            logger.warning(
                "backend %s is down after %d consecutive failures (last: %s); re-probing every %gs",
                name,
                s.consecutive_failures,
                reason,
                self.probe_interval,
            )

    def _mark_up(self, s: BackendHealth, why: str) -> None:
        down_for = time.monotonic() - (s.down_since or time.monotonic())
        s.down_since = None
        s.probing = False
        s.consecutive_failures = 0
        logger.warning("backend %s is up again (%s, after %.1fs down)", s.name, why, down_for)

    def snapshot(self) -> list[dict[str, object]]:
        return [self.state[name].as_dict() | {"model": self.backends[name].model} for name in self.state]

    # --- probing -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start re-probing down backends (needs a running loop; cheap to call again)."""
        if self._prober is None:
            self._prober = asyncio.get_running_loop().create_task(self._probe_forever())

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            await self.probe_down(self.state.values())

    async def probe_down(self, states: Iterable[BackendHealth]) -> None:
        """Probe every down backend once; the ones that connect are up again."""
        down = [s for s in states if s.down_since is not None]
        if not down:
            return
        for s in down:
            s.probing = True
        results = await asyncio.gather(
            *(self.backends[s.name].pool.probe() for s in down), return_exceptions=True
        )
        for s, ok in zip(down, results, strict=True):
            if ok is True and s.down_since is not None:
                self._mark_up(s, "probe connected")
            else:
                s.probing = False
