"""The response cache as the proxy sees it: whether a request may use it, its key, the entries
(this worker's, then the shared layer's), the calls in flight, and the counts.

Whether a request may use the cache (``mode``):

* ``Cache-Control: no-store`` on the request: neither read nor written, nor joined to a call in
  flight (``BYPASS``);
* ``Cache-Control: no-cache``: a fresh answer is fetched (never read from the cache, never joined
  to a call in flight) and then kept for the next request (``REFRESH``);
* with ``cache.only_deterministic`` (the default), a request whose answer is sampled (no
  ``temperature: 0`` and no ``seed``) is ``BYPASS``; embeddings are always reproducible;
* everything else ``USE``: answered from the cache, joined to an identical call in flight, or
  sent upstream and kept.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from tiermux._speedups import atomics, jsonscan
from tiermux.cache.flight import Flight
from tiermux.cache.hits import KnownHits
from tiermux.cache.key import CacheKeyError, answer_key, asked_key, canonical_form, deterministic, sampling_of
from tiermux.cache.shared import SharedCache
from tiermux.cache.store import Entry, LocalCache
from tiermux.config import CacheConfig
from tiermux.state import CACHE_FIELDS

if TYPE_CHECKING:
    from tiermux.routing.router import Decision

__all__ = ["Asked", "Mode", "Outcome", "ResponseCache", "complete"]


class Mode(enum.Enum):
    USE = "use"
    REFRESH = "refresh"
    BYPASS = "bypass"


class Outcome(enum.IntEnum):
    """How a request was answered, as the ``X-Tiermux-Cache`` header says; also the index of its
    counter in the shared cells."""

    HIT = 0
    MISS = 1
    DEDUP = 2
    BYPASS = 3

    @property
    def header(self) -> tuple[bytes, bytes]:
        return _HEADERS[self]


_HEADERS = {outcome: (b"x-tiermux-cache", outcome.name.encode()) for outcome in Outcome}

# Counters after the four outcomes, summed over workers in the shared segment.
SHARED_HITS, STORED, EVICTED, NOT_STORED = range(4, CACHE_FIELDS)

_NO_STORE = b"no-store"
_NO_CACHE = b"no-cache"


# Routing decisions remembered for requests seen before (see ``ResponseCache.asked``).
MAX_ROUTES = 65_536


class Asked:
    """A request as asked: the canonical form of what changes its answer, and the key naming it
    before routing (service, endpoint, the model as sent, routing headers, that form)."""

    __slots__ = ("endpoint", "form", "key", "service")

    def __init__(self, form: bytes, key: bytes, endpoint: str, service: str) -> None:
        self.form = form
        self.key = key
        self.endpoint = endpoint
        self.service = service


class _Choice(msgspec.Struct):
    finish_reason: str | None = None


class _Answer(msgspec.Struct):
    choices: list[_Choice] | None = None
    error: msgspec.Raw | None = None


_decode_answer = msgspec.json.Decoder(_Answer).decode


def complete(answer: bytes) -> bool:
    """Whether a successful JSON answer is whole: every choice finished (an embedding has none),
    no error object in it. Only whole answers are kept."""
    try:
        parsed = _decode_answer(answer)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    if parsed.error is not None:
        return False
    return all(choice.finish_reason for choice in parsed.choices or ())


class ResponseCache:
    def __init__(self, config: CacheConfig, cells: atomics.Cells, shared: SharedCache | None = None) -> None:
        if cells.count < CACHE_FIELDS:
            raise ValueError("not enough cells for the cache counters")
        self.config = config
        self.enabled = config.enabled
        self.dedup = config.dedup
        self.local = LocalCache(config.max_bytes, config.max_entry_bytes, config.ttl)
        self.shared = shared
        self.flights: dict[bytes, Flight] = {}
        # An identical request is routed identically (the classifier reads only what the key
        # holds, and the model and routing headers are in it): its decision, once made, lets a
        # hit skip classification.
        self.routes: dict[bytes, Decision] = {}
        self.routes_epoch = 0  # of the quality promotions they were decided under
        # Hits seen before, ready to be answered again (see ``tiermux.cache.hits``).
        self.known = KnownHits()
        self._cells = cells

    def __repr__(self) -> str:
        return (
            f"<ResponseCache {self.local!r} shared={self.shared is not None} in_flight={len(self.flights)}>"
        )

    def mode(self, endpoint: str, body: bytes, headers: Iterable[tuple[bytes, bytes]]) -> Mode:
        """How a request may use the cache (``control``, then ``reproducible``)."""
        mode = self.control(headers)
        if mode is not Mode.BYPASS and not self.reproducible(endpoint, body):
            return Mode.BYPASS
        return mode

    def control(self, headers: Iterable[tuple[bytes, bytes]]) -> Mode:
        """What the cache and the request's ``Cache-Control`` allow, before reading the body."""
        if not self.enabled:
            return Mode.BYPASS
        refresh = False
        for name, value in headers:
            if name == b"cache-control":
                directives = value.lower()
                if _NO_STORE in directives:
                    return Mode.BYPASS
                refresh = refresh or _NO_CACHE in directives
        return Mode.REFRESH if refresh else Mode.USE

    def reproducible(self, endpoint: str, body: bytes) -> bool:
        """Whether a request's answer may be kept: reproducible, or sampled ones allowed too."""
        if not self.config.only_deterministic or endpoint == "/embeddings":
            return True
        try:
            return deterministic(sampling_of(body))
        except ValueError:  # not a JSON object with the usual types: the backend will say
            return False

    def asked(self, body: bytes, endpoint: str, service: str, overrides: bytes) -> Asked | None:
        """The request as asked, or None when the body is not one the cache can read."""
        try:
            form = canonical_form(body)
            start, end = jsonscan.value_span(body, b"model")
        except (CacheKeyError, jsonscan.ScanError):
            return None
        if start < 0:
            return None
        return Asked(form, asked_key(form, endpoint, service, body[start:end], overrides), endpoint, service)

    def answer_key(self, asked: Asked, backend: str, model: str) -> bytes:
        """The key of the answer to ``asked`` from ``backend``/``model``."""
        return answer_key(asked.form, asked.endpoint, asked.service, backend, model)

    def follow_promotions(self, epoch: int) -> None:
        """Forget the routes decided before the quality promotions changed (``epoch``)."""
        if epoch != self.routes_epoch:
            self.routes.clear()
            self.known.clear()
            self.routes_epoch = epoch

    def remember(self, asked: Asked, decision: Decision) -> None:
        routes = self.routes
        if asked.key not in routes:
            if len(routes) >= MAX_ROUTES:
                del routes[next(iter(routes))]  # the oldest: a bound, not a recency order
            routes[asked.key] = decision

    def get(self, key: bytes) -> Entry | None:
        """This worker's entry for ``key``, if fresh."""
        return self.local.get(key)

    async def get_shared(self, key: bytes) -> Entry | None:
        """The shared layer's entry for ``key`` (kept here too), if there is a shared layer."""
        if self.shared is None:
            return None
        entry = await self.shared.get(key)
        if entry is not None:
            self._cells.add(SHARED_HITS, 1)
            self.local.put(key, entry)
        return entry

    def store(self, key: bytes, entry: Entry) -> None:
        evicted = self.local.evictions
        kept = self.local.put(key, entry)
        if self.shared is not None:
            kept = self.shared.put(key, entry) or kept
        self._cells.add(STORED if kept else NOT_STORED, 1)
        if self.local.evictions != evicted:
            self._cells.add(EVICTED, self.local.evictions - evicted)

    def count(self, outcome: Outcome) -> None:
        self._cells.add(outcome, 1)

    def snapshot(self) -> dict[str, object]:
        """The counts of every worker, and this worker's own store."""
        load = self._cells.load
        return {
            "enabled": self.enabled,
            "hits": load(Outcome.HIT),
            "shared_hits": load(SHARED_HITS),
            "misses": load(Outcome.MISS),
            "dedups": load(Outcome.DEDUP),
            "bypasses": load(Outcome.BYPASS),
            "stored": load(STORED),
            "not_stored": load(NOT_STORED),
            "evicted": load(EVICTED),
            "worker_entries": len(self.local),
            "worker_bytes": self.local.size,
            "worker_known_hits": len(self.known),
            "in_flight": len(self.flights),
        }

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.drain()
