"""The cache layer every instance shares: entries in the Redis of ``state``, one key each.

Reads happen only when a worker's own cache misses; writes are sent in the background once the
answer has gone out, so a slow Redis never delays a client. A Redis that fails is treated as an
empty cache (the request goes upstream as it would without this layer) and is not asked again
for ``state.retry_interval`` seconds. Values are capped (``cache.shared_max_entry_bytes``): one
large answer must not fill a memory that all instances use.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tiermux.cache.store import Entry, decode_entry, encode_entry
from tiermux.state.redis_link import RedisLink

__all__ = ["SharedCache"]

logger = logging.getLogger("tiermux.cache")

MAX_PENDING_WRITES = 256  # past this, new answers are not shared (Redis is not keeping up)


class SharedCache:
    def __init__(self, link: RedisLink, ttl: float, max_entry_bytes: int) -> None:
        self.link = link
        self.ttl = ttl
        self.max_entry_bytes = max_entry_bytes
        self._writes: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<SharedCache {self.link.where} pending={len(self._writes)}>"

    def _name(self, key: bytes) -> str:
        return self.link.key("cache", key.hex())

    async def get(self, key: bytes) -> Entry | None:
        link = self.link
        if link.away:
            return None
        try:
            data = await link.client.get(self._name(key))
        except link.errors as exc:
            link.failed(exc)
            return None
        link.succeeded()
        if not data:
            return None
        entry = decode_entry(data)
        if entry is None or time.time() - entry.created >= self.ttl:
            return None
        return entry

    def put(self, key: bytes, entry: Entry) -> bool:
        """Share ``entry`` in the background; whether it will be (small enough, Redis keeping up)."""
        data = encode_entry(entry)
        if len(data) > self.max_entry_bytes or len(self._writes) >= MAX_PENDING_WRITES or self.link.away:
            return False
        task = asyncio.get_running_loop().create_task(self._put(self._name(key), data))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return True

    async def _put(self, name: str, data: bytes) -> None:
        link = self.link
        try:
            await link.client.set(name, data, px=max(1, int(self.ttl * 1000)))
        except link.errors as exc:
            link.failed(exc)
        else:
            link.succeeded()

    async def drain(self) -> None:
        """Wait for the writes still on their way (at shutdown)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
