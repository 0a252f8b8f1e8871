"""Cached answers: what one is (``Entry``) and a worker's own store of them (``LocalCache``).

An entry is always the JSON form of a complete, successful answer, whichever form filled it (a
stream is assembled into JSON first, ``tiermux.cache.replay``), so that either form of a later
request can be served from it. It keeps the usage of the call that produced it: a hit costs
nothing, and what it would have cost is counted as saved.

The local store is per worker process, like an nginx worker's memory: a dict in LRU order,
bounded in bytes and by age. Workers and instances share answers through the optional Redis
layer (``tiermux.cache.shared``) instead.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import msgspec

from tiermux.accounting.usage import Usage

__all__ = ["ENTRY_OVERHEAD", "Entry", "LocalCache", "decode_entry", "encode_entry"]

# What an entry costs beyond its body: the dict slot, the key, the Struct and its fields.
ENTRY_OVERHEAD = 320


class Entry(msgspec.Struct, array_like=True, frozen=True):
    body: bytes
    """The JSON answer, as the backend sent it (or as assembled from its stream)."""
    backend: str
    """The backend that answered."""
    created: float
    """When it was answered, epoch seconds (an entry from Redis ages from its first answer)."""
    usage: Usage | None = None

    @property
    def size(self) -> int:
        return len(self.body) + ENTRY_OVERHEAD


encode_entry = msgspec.msgpack.Encoder().encode
_decode_entry = msgspec.msgpack.Decoder(Entry).decode


def decode_entry(data: bytes) -> Entry | None:
    """An entry read back from outside the process, or None if it is not one (another version)."""
    try:
        return _decode_entry(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class LocalCache:
    """Entries by key, least recently used first, at most ``max_bytes`` in all, each at most
    ``ttl`` seconds old and at most ``max_entry_bytes`` large."""

    __slots__ = ("_entries", "evictions", "max_bytes", "max_entry_bytes", "size", "ttl")

    def __init__(self, max_bytes: int, max_entry_bytes: int, ttl: float) -> None:
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self.ttl = ttl
        self.size = 0
        self.evictions = 0

    def __repr__(self) -> str:
        return f"<LocalCache {len(self._entries)} entries, {self.size}/{self.max_bytes} bytes>"

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float | None = None) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if (time.time() if now is None else now) - entry.created >= self.ttl:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, entry: Entry) -> bool:
        """Keep ``entry`` (replacing what ``key`` held); whether it was small enough to keep."""
        if entry.size > self.max_entry_bytes:
            return False
        if key in self._entries:
            self._remove(key)
        self._entries[key] = entry
        self.size += entry.size
        while self.size > self.max_bytes:
            self._remove(next(iter(self._entries)))
            self.evictions += 1
        return True

    def _remove(self, key: bytes) -> None:
        self.size -= self._entries.pop(key).size
