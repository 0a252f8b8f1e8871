"""Budgets on Redis, shared by every tiermux instance with the same ``state.url`` and ``prefix``.

A service's day is one hash, ``{prefix}:budget:{service}:{YYYY-MM-DD}``, with the fields of the
local store (``committed``, ``spent``, ``downgraded``, ``rejected``). Reserving and settling are
Lua scripts, so each is one atomic step on the Redis server whatever number of instances call it:
reserve checks ``committed + amount <= limit`` and adds in the same step. Days expire three days
after they start (a request reserved before midnight still settles on its own day).

When Redis can't be reached, ``on_failure: local`` reserves in this machine's shared store instead
(the reservation settles where it was made), so the fleet may overspend by what each instance
spends alone during the outage; ``on_failure: closed`` refuses budgeted requests with 503. A
settlement that can't reach Redis is kept and sent once Redis answers again, so the shared books
lose nothing to a short outage.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Coroutine
from typing import Any

from tiermux.accounting.budget import BudgetStore, BudgetUnavailable
from tiermux.state.budget_cells import LocalBudgetStore
from tiermux.state.redis_link import RedisLink

__all__ = ["RedisBudgetStore"]

logger = logging.getLogger("tiermux.state")

DAY_TTL = 3 * 86_400
MAX_PENDING = 100_000  # settlements kept for Redis during an outage; older ones are logged and dropped

_RESERVE = """
local committed = tonumber(redis.call('HGET', KEYS[1], 'committed') or '0')
if committed + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'committed', ARGV[1])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""

_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '0' then redis.call('HINCRBY', KEYS[1], 'committed', ARGV[1]) end
if ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2]) end
return 1
"""

_COUNT = """
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


class RedisBudgetStore:
    """The :class:`~tiermux.accounting.budget.BudgetStore` of a fleet, with a local fallback."""

    def __init__(self, link: RedisLink, local: LocalBudgetStore) -> None:
        self.link = link
        self.local = local
        self.closed = link.config.on_failure == "closed"
        client = link.client
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._count = client.register_script(_COUNT)
        self._keys: dict[tuple[str, int], str] = {}
        self._pending: list[tuple[str, str, str]] = []  # (key, delta, actual) Redis has not taken yet
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<RedisBudgetStore {self.link.where}>"

    @property
    def name(self) -> str:
        return "local (redis unreachable)" if self.link.away else "redis"

    def _key(self, service: str, day: int) -> str:
        key = self._keys.get((service, day))
        if key is None:
            if len(self._keys) > 1024:
                self._keys.clear()
            date = datetime.date.fromordinal(day).isoformat()
            key = self._keys[(service, day)] = self.link.key("budget", service, date)
        return key

    async def reserve(self, service: str, day: int, amount: int, limit: int) -> BudgetStore | None:
        link = self.link
        if not link.away:
            try:
                taken = await self._reserve(keys=[self._key(service, day)], args=[amount, limit, DAY_TTL])
            except link.errors as exc:
                link.failed(exc)
            else:
                self._answered()
                return self if taken else None
        if self.closed:
            raise BudgetUnavailable(
                "Budgets are kept in a shared store that can't be reached right now; try again shortly."
            )
        return await self.local.reserve(service, day, amount, limit)

    def settle(self, service: str, day: int, reserved: int, actual: int) -> None:
        if reserved == actual == 0:
            return
        self._spawn(self._send_settlement(self._key(service, day), str(actual - reserved), str(actual)))

    async def _send_settlement(self, key: str, delta: str, actual: str) -> None:
        link = self.link
        if not link.away:
            try:
                await self._settle(keys=[key], args=[delta, actual])
            except link.errors as exc:
                link.failed(exc)
            else:
                self._answered()
                return
        if len(self._pending) >= MAX_PENDING:
            logger.error("Redis has been away too long: a settlement for %s is dropped", key)
            return
        self._pending.append((key, delta, actual))

    def _answered(self) -> None:
        """Redis answered: if it had been away, send what it missed."""
        self.link.succeeded()
        if self._pending:
            self._spawn(self._flush())

    async def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for i, (key, delta, actual) in enumerate(pending):
            try:
                await self._settle(keys=[key], args=[delta, actual])
            except self.link.errors as exc:
                self.link.failed(exc)
                self._pending.extend(pending[i:])
                return

    async def count(self, service: str, day: int, downgraded: bool) -> None:
        link = self.link
        if not link.away:
            field = "downgraded" if downgraded else "rejected"
            try:
                await self._count(keys=[self._key(service, day)], args=[field, DAY_TTL])
            except link.errors as exc:
                link.failed(exc)
            else:
                return
        await self.local.count(service, day, downgraded)

    async def totals(self, service: str, day: int) -> tuple[int, int, int, int]:
        link = self.link
        if not link.away:
            try:
                values = await link.client.hmget(
                    self._key(service, day), "spent", "committed", "downgraded", "rejected"
                )
            except link.errors as exc:
                link.failed(exc)
            else:
                self._answered()
                spent, committed, downgraded, rejected = (int(v or 0) for v in values)
                return spent, committed, downgraded, rejected
        return await self.local.totals(service, day)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the settlements in flight (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
