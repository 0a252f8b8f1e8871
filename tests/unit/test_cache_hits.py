"""Known hits: their bound, the booking they prepare, and when they are forgotten."""

from __future__ import annotations

import msgspec
import pytest
from tests.unit.test_cache_store import entry, make_cache
from tests.unit.test_health_decisions import _backend, _health
from tests.unit.test_usage_and_ledger import _config

from tiermux.accounting.ledger import Ledger, ledger_cells
from tiermux.accounting.usage import Usage
from tiermux.cache.hits import KnownHit, KnownHits, Received
from tiermux.dialects.passage import OPENAI_SPEAKER, Form
from tiermux.routing.router import Decision
from tiermux.state import Layout, Segment

USAGE = msgspec.convert({"prompt_tokens": 1000, "completion_tokens": 500}, Usage)


def received(body: bytes, service: str = "default") -> Received:
    return ("/chat/completions", body, service, b"")


def known(ledger: Ledger | None = None) -> KnownHit:
    backend = _backend("local", 0.01)
    decision = Decision("cheap", ("local",), None, ())
    form = Form(OPENAI_SPEAKER, False, False)
    return KnownHit(
        b"k" * 16,
        backend,
        decision,
        form,
        [],
        "none",
        "cheap",
        "tmx-none-cheap-",
        ("default", "local", "cheap", None),
    )


def test_known_hits_are_bounded_by_the_bytes_of_their_bodies_oldest_first() -> None:
    hits = KnownHits(max_bytes=300, max_body=150)
    hit = known()
    for name in (b"a", b"b", b"c"):
        hits.put(received(name * 100), hit)
    assert len(hits) == 3 and hits.size == 300
    hits.put(received(b"d" * 100), hit)  # drops a
    assert hits.get(received(b"a" * 100)) is None
    assert hits.get(received(b"d" * 100)) is hit and hits.size == 300
    hits.put(received(b"e" * 151), hit)  # too large to be kept under
    assert hits.get(received(b"e" * 151)) is None and len(hits) == 3
    hits.put(received(b"d" * 100), hit)  # again: replaced, not counted twice
    assert hits.size == 300
    hits.clear()
    assert (len(hits), hits.size) == (0, 0)


def test_the_same_body_for_another_service_or_endpoint_is_another_request() -> None:
    hits = KnownHits()
    hit = known()
    hits.put(received(b"{}"), hit)
    assert hits.get(received(b"{}", service="beta")) is None
    assert hits.get(("/completions", b"{}", "default", b"")) is None
    assert hits.get(("/chat/completions", b"{}", "default", b"capable")) is None
    assert hits.get(received(b"{}")) is hit


@pytest.fixture
def ledger() -> Ledger:
    config = _config()
    segment = Segment.anonymous(Layout({"ledger": ledger_cells(config)}))
    return Ledger(config, segment.cells("ledger"), "cloud")


@pytest.mark.parametrize("usage", [USAGE, None])
def test_a_prepared_booking_books_what_record_free_does(ledger: Ledger, usage: Usage | None) -> None:
    saved = ledger.record_free("default", "local", "cheap", "extraction", usage)
    once = ledger.snapshot()
    booking = ledger.free_booking("default", "local", "cheap", "extraction", usage)
    assert booking.book() == saved and booking.usage is usage
    twice = ledger.snapshot()
    for field in ("requests", "cache_answers", "unmetered_requests", "cache_saved_usd", "baseline_usd"):
        assert twice["total"][field] == pytest.approx(2 * once["total"][field])  # type: ignore[index]
    assert twice["total"]["spend_usd"] == 0  # type: ignore[index]


def test_a_known_hit_prices_its_booking_once_per_entry(ledger: Ledger) -> None:
    hit = known()
    first = entry(10)
    booking = hit.booking(first, ledger)
    assert hit.booking(first, ledger) is booking
    refreshed = msgspec.structs.replace(first, usage=USAGE)
    again = hit.booking(refreshed, ledger)
    assert again is not booking and again.usage is USAGE and again.saved > 0


def test_promotions_forget_remembered_routes_and_known_hits() -> None:
    cache = make_cache()
    cache.routes[b"k"] = object()  # type: ignore[assignment]
    cache.known.put(received(b"{}"), known())
    cache.follow_promotions(0)  # unchanged
    assert len(cache.routes) == 1 and len(cache.known) == 1
    cache.follow_promotions(1)
    assert len(cache.routes) == 0 and len(cache.known) == 0


def test_first_is_what_plan_puts_first() -> None:
    backends = {"a": _backend("a", 0.01), "b": _backend("b", 0.01), "c": _backend("c", 3.0)}
    health = _health(backends)
    for chain in (("a",), ("c", "a"), ("a", "b", "c"), ("c",)):
        assert health.first(chain) == health.plan(chain)[0]
    health.started("a")
    assert health.first(("a", "b")) == "b" == health.plan(("a", "b"))[0]
    health.mark_down("a", "test")
    assert health.first(("a",)) == "a" == health.plan(("a",))[0]  # nothing up: still tried
    assert health.first(("a", "c")) == "c"
