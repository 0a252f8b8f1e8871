"""Budgets on Redis, shared by every tiermux instance with the same ``state.url`` and ``prefix``.

A service's day is one hash, ``{prefix}:budget:{service}:{YYYY-MM-DD}``, with the fields of the
local store (``committed``, ``spent``, ``downgraded``, ``rejected``). Reserving and settling are
Lua scripts, so each is one atomic step on the Redis server whatever number of instances call it:
reserve checks ``committed + amount <= limit`` and adds in the same step. Days expire three days
after they start (a request reserved before midnight still settles on its own day).

The reservations (and, apart, the settlements) a worker makes within one turn of its event loop
go to Redis as one script call: each is still checked and applied on its own, in order, inside
that call, but the worker pays one round trip and one client-library call for all of them, which
is most of what Redis costs per request.

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
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from tiermux.accounting.budget import BudgetStore, BudgetUnavailable
from tiermux.state.budget_cells import LocalBudgetStore
from tiermux.state.redis_link import RedisLink

__all__ = ["RedisBudgetStore"]

logger = logging.getLogger("tiermux.state")

DAY_TTL = 3 * 86_400
MAX_PENDING = 100_000  # settlements kept for Redis during an outage; older ones are logged and dropped

# KEYS: one day hash per reservation; ARGV: amount and limit of each, then the TTL. One 0/1 each.
_RESERVE = """
local ttl = ARGV[#ARGV]
local taken = {}
for i, key in ipairs(KEYS) do
  local committed = tonumber(redis.call('HGET', key, 'committed') or '0')
  if committed + tonumber(ARGV[2 * i - 1]) > tonumber(ARGV[2 * i]) then
    taken[i] = 0
  else
    redis.call('HINCRBY', key, 'committed', ARGV[2 * i - 1])
    if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ttl) end
    taken[i] = 1
  end
end
return taken
"""

# KEYS: one day hash per settlement; ARGV: the change of committed and the cost of each. A day
# that has expired is left alone: its books are closed.
_SETTLE = """
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    if ARGV[2 * i - 1] ~= '0' then redis.call('HINCRBY', key, 'committed', ARGV[2 * i - 1]) end
    if ARGV[2 * i] ~= '0' then redis.call('HINCRBY', key, 'spent', ARGV[2 * i]) end
  end
end
return #KEYS
"""

_COUNT = """
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


Item = TypeVar("Item")
MAX_BATCH = 512  # calls per script run: bounded work for Redis, which runs one script at a time


class _Batcher(Generic[Item]):
    """Gathers the calls made within one turn of the event loop and runs them as one."""

    def __init__(self, run: Callable[[list[Item]], Awaitable[list[int]]]) -> None:
        self._run = run
        self._items: list[tuple[Item, asyncio.Future[int]]] = []
        self._scheduled = False
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, item: Item) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._items.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        items, self._items = self._items, []
        loop = asyncio.get_running_loop()
        for start in range(0, len(items), MAX_BATCH):
            task = loop.create_task(self._send(items[start : start + MAX_BATCH]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _send(self, batch: list[tuple[Item, asyncio.Future[int]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(int(result))


class RedisBudgetStore:
    """The :class:`~tiermux.accounting.budget.BudgetStore` of a fleet, with a local fallback."""

    def __init__(self, link: RedisLink, local: LocalBudgetStore) -> None:
        self.link = link
        self.local = local
        self.closed = link.config.on_failure == "closed"
        client = link.client
        reserve, settle = client.register_script(_RESERVE), client.register_script(_SETTLE)
        self._count = client.register_script(_COUNT)

        async def reserve_all(items: list[tuple[str, int, int]]) -> list[int]:
            args: list[int] = [x for _, amount, limit in items for x in (amount, limit)]
            result: list[int] = await reserve(keys=[key for key, _, _ in items], args=[*args, DAY_TTL])
            return result

        async def settle_all(items: list[tuple[str, str, str]]) -> list[int]:
            args = [x for _, delta, actual in items for x in (delta, actual)]
            await settle(keys=[key for key, _, _ in items], args=args)
            return [1] * len(items)

        self._reserves = _Batcher(reserve_all)
        self._settles = _Batcher(settle_all)
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
            key = self._key(service, day)
            future = self._reserves.submit((key, amount, limit))
            try:
                # Shielded: a caller cancelled mid-call (its client left) must not leave a
                # reservation nobody will settle; it is released as soon as Redis has made it.
                taken = await asyncio.shield(future)
            except asyncio.CancelledError:
                future.add_done_callback(lambda done: self._release_orphan(done, key, amount))
                raise
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

    def _release_orphan(self, done: asyncio.Future[int], key: str, amount: int) -> None:
        if not done.cancelled() and done.exception() is None and done.result():
            item = (key, str(-amount), "0")
            self._settles.submit(item).add_done_callback(lambda settled: self._settled(settled, item))

    def settle(self, service: str, day: int, reserved: int, actual: int) -> None:
        if reserved == actual == 0:
            return
        item = (self._key(service, day), str(actual - reserved), str(actual))
        if self.link.away:
            self._keep(item)
            return
        self._settles.submit(item).add_done_callback(lambda done: self._settled(done, item))

    def _settled(self, done: asyncio.Future[int], item: tuple[str, str, str]) -> None:
        if done.cancelled():
            self._keep(item)
            return
        exc = done.exception()
        if exc is None:
            self._answered()
        elif isinstance(exc, self.link.errors):
            self.link.failed(exc)
            self._keep(item)
        else:
            logger.error("a settlement for %s failed: %r", item[0], exc)

    def _keep(self, item: tuple[str, str, str]) -> None:
        """Hold a settlement Redis could not take, for when it answers again."""
        if len(self._pending) >= MAX_PENDING:
            logger.error("Redis has been away too long: a settlement for %s is dropped", item[0])
            return
        self._pending.append(item)

    def _answered(self) -> None:
        """Redis answered: if it had been away, send what it missed."""
        self.link.succeeded()
        if self._pending:
            self._spawn(self._flush())

    async def _flush(self) -> None:
        pending, self._pending = self._pending, []
        results = await asyncio.gather(*map(self._settles.submit, pending), return_exceptions=True)
        for item, result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, self.link.errors):
                    self.link.failed(result)
                self._keep(item)

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
        await asyncio.sleep(0)  # the batch of this turn is sent on the next one
        tasks = [*self._tasks, *self._reserves.tasks, *self._settles.tasks]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
