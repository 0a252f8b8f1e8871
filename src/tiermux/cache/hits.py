"""Requests answered from the cache before, answered again for as little as possible.

A hit does no upstream work, so all it costs is tiermux's own: reading the request's cache
fields, computing its key, finding its remembered route and planned backend, then building the
answer's headers, request id and bookings. For a request whose exact bytes were answered from the
cache before, all of that is the same every time, so it is prepared once, as a :class:`KnownHit`,
and found again by the request as received (endpoint, body bytes, service, routing headers).

A known hit only stands for the entry it names; the proxy checks before each use that its
backend is still the one health plans first and that the entry is still kept and fresh, and
otherwise goes the long way (which prepares it again). Identical bytes have the identical
canonical form, so this never answers a request the long way would not: it only skips
recomputing what is known.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tiermux.accounting.ledger import FreeBooking, Ledger
from tiermux.cache.store import Entry

if TYPE_CHECKING:
    from tiermux.dialects.passage import Form
    from tiermux.routing.router import Decision
    from tiermux.upstream.backend import Backend

__all__ = ["MAX_KNOWN_BODY", "MAX_KNOWN_BYTES", "KnownHit", "KnownHits", "Received"]

# What the known hits may hold per worker: the request bodies are their keys. A body larger than
# MAX_KNOWN_BODY goes the long way every time (hashing it costs about what its key does anyway).
MAX_KNOWN_BYTES = 8 * 1024 * 1024
MAX_KNOWN_BODY = 32 * 1024

# A request as received: (endpoint, body, service, routing headers).
Received = tuple[str, bytes, str, bytes]

Header = tuple[bytes, bytes]


class KnownHit:
    """Everything about answering one request from the cache that doesn't change from one
    identical request to the next."""

    __slots__ = (
        "_booked",
        "_booking",
        "_row",
        "answer_key",
        "backend",
        "category",
        "decision",
        "form",
        "id_prefix",
        "json_headers",
        "tier",
    )

    def __init__(
        self,
        answer_key: bytes,
        backend: Backend,
        decision: Decision,
        form: Form,
        json_headers: list[Header],
        category: str,
        tier: str,
        id_prefix: str,
        row: tuple[str, str, str, str | None],
    ) -> None:
        self.answer_key = answer_key
        self.backend = backend
        self.decision = decision
        self.form = form  # the client's dialect, and whether it asked for a stream
        self.json_headers = json_headers  # content type, the route's headers, X-Tiermux-Cache
        self.category = category  # as the metrics and the access log name them
        self.tier = tier
        self.id_prefix = id_prefix  # of the request ids of its answers
        self._row = row  # the ledger's (service, backend, tier, category) of its answers
        self._booked: Entry | None = None
        self._booking: FreeBooking | None = None

    def __repr__(self) -> str:
        return f"<KnownHit {self.category}/{self.tier} -> {self.backend.name}>"

    def booking(self, entry: Entry, ledger: Ledger) -> FreeBooking:
        """What answering with ``entry`` books (priced once per entry: a refreshed entry may
        carry other usage)."""
        if entry is not self._booked:
            self._booking = ledger.free_booking(*self._row, entry.usage)
            self._booked = entry
        assert self._booking is not None
        return self._booking


class KnownHits:
    """The known hits of one worker, by the request as received; bounded by the bytes of the
    bodies they are kept under, the oldest dropped first."""

    def __init__(self, max_bytes: int = MAX_KNOWN_BYTES, max_body: int = MAX_KNOWN_BODY) -> None:
        self._hits: dict[Received, KnownHit] = {}
        self.max_bytes = max_bytes
        self.max_body = max_body
        self.size = 0

    def __repr__(self) -> str:
        return f"<KnownHits {len(self._hits)} requests, {self.size}/{self.max_bytes} bytes>"

    def __len__(self) -> int:
        return len(self._hits)

    def get(self, received: Received) -> KnownHit | None:
        return self._hits.get(received)

    def put(self, received: Received, hit: KnownHit) -> None:
        size = len(received[1])
        if size > self.max_body:
            return
        hits = self._hits
        if received in hits:
            hits[received] = hit
            return
        while hits and self.size + size > self.max_bytes:
            oldest = next(iter(hits))  # insertion order: a bound, not a recency order
            del hits[oldest]
            self.size -= len(oldest[1])
        hits[received] = hit
        self.size += size

    def clear(self) -> None:
        self._hits.clear()
        self.size = 0
