"""Budgets: the shared-cell store (reserve, settle, days), the clock, and the worst-case estimate."""

from __future__ import annotations

import asyncio
import datetime
import multiprocessing
import os
import random
from pathlib import Path

import pytest
import yaml

from tiermux.accounting.budget import BudgetClock, BudgetExceeded, Budgets
from tiermux.config import parse_config
from tiermux.routing.request import RequestText
from tiermux.routing.router import Decision
from tiermux.state import Layout, Segment
from tiermux.state.budget_cells import SLOTS, LocalBudgetStore, budget_cells

SERVICES = ["default", "team"]
DAY = 740_000


def _layout() -> Layout:
    return Layout({"budgets": budget_cells(len(SERVICES))}, ["test"])


@pytest.fixture
def store() -> LocalBudgetStore:
    return LocalBudgetStore(SERVICES, Segment.anonymous(_layout()).cells("budgets"))


def test_reservations_stop_at_the_limit_and_settle_to_the_actual_cost(store: LocalBudgetStore) -> None:
    assert store.try_reserve("team", DAY, 600, 1000)
    assert not store.try_reserve("team", DAY, 500, 1000)  # 1,100 would pass the limit
    assert store.try_reserve("team", DAY, 400, 1000)
    store.settle("team", DAY, 600, 250)  # the first answer cost less than its worst case
    assert store.read("team", DAY)[:2] == (250, 650)
    store.settle("team", DAY, 400, 0)  # the second failed: released
    assert store.read("team", DAY)[:2] == (250, 250)
    assert store.read("default", DAY)[:2] == (0, 0)  # services are apart


def test_a_new_day_starts_empty_and_the_old_day_still_settles(store: LocalBudgetStore) -> None:
    assert store.try_reserve("team", DAY, 900, 1000)
    assert store.try_reserve("team", DAY + 1, 900, 1000)  # midnight: a fresh budget
    store.settle("team", DAY, 900, 800)  # a request from before midnight ends after it
    assert store.read("team", DAY)[:2] == (800, 800)
    assert store.read("team", DAY + 1)[:2] == (0, 900)


def test_a_slot_is_reused_only_days_later_and_stale_settles_are_dropped(store: LocalBudgetStore) -> None:
    assert store.try_reserve("team", DAY, 700, 1000)
    assert store.try_reserve("team", DAY + SLOTS, 100, 1000)  # same slot, new day: reopened
    store.settle("team", DAY, 700, 700)  # that day's books are closed
    assert store.read("team", DAY + SLOTS)[:2] == (0, 100)
    assert store.read("team", DAY) == (0, 0, 0, 0)


def test_downgrades_and_refusals_are_counted(store: LocalBudgetStore) -> None:
    store.add_count("team", DAY, downgraded=True)
    store.add_count("team", DAY, downgraded=False)
    asyncio.run(store.count("team", DAY, downgraded=False))
    assert store.read("team", DAY)[2:] == (1, 2)
    assert store.read("team", DAY + 1)[2:] == (0, 0)  # counted by day


def _spend(path: str, seed: int, rounds: int, limit: int, results: multiprocessing.Queue[int]) -> None:
    """Reserve and settle like a worker: random worst cases, actual costs at or below them."""
    store = LocalBudgetStore(SERVICES, Segment.attach(path, _layout()).cells("budgets"))
    rng = random.Random(seed)
    spent = 0
    for i in range(rounds):
        day = DAY + i // (rounds // 3)  # every process crosses two midnights at about once
        worst = rng.randrange(1, 50)
        if store.try_reserve("team", day, worst, limit):
            actual = rng.randrange(0, worst + 1)
            store.settle("team", day, worst, actual)
            if day == DAY + 2:
                spent += actual
    results.put(spent)


def test_many_processes_never_pass_the_limit_and_lose_no_cost(tmp_path: Path) -> None:
    path = tmp_path / "budgets.state"
    segment = Segment.create(path, _layout())
    try:
        context = multiprocessing.get_context("spawn")
        results: multiprocessing.Queue[int] = context.Queue()
        limit = 20_000
        workers = [
            context.Process(target=_spend, args=(str(path), seed, 3000, limit, results)) for seed in range(4)
        ]
        for worker in workers:
            worker.start()
        spent = [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(30)
            assert worker.exitcode == 0
        store = LocalBudgetStore(SERVICES, segment.cells("budgets"))
        total, committed, _, _ = store.read("team", DAY + 2)
        assert committed == total  # nothing left reserved
        assert total == sum(spent)  # every settled cost, from every process, of the last day
        assert total <= limit
    finally:
        segment.close()


def _reserve_and_die(path: str) -> None:
    store = LocalBudgetStore(SERVICES, Segment.attach(path, _layout()).cells("budgets"))
    assert store.try_reserve("team", DAY, 700, 1000)
    store.settle("team", DAY, 0, 0)  # nothing: a settle of another, empty reservation
    os._exit(0)  # killed mid-request: the reservation is never settled


def test_what_a_dead_worker_held_is_released(tmp_path: Path) -> None:
    path = tmp_path / "budgets.state"
    segment = Segment.create(path, _layout())
    try:
        survivor = LocalBudgetStore(SERVICES, segment.cells("budgets"))
        assert survivor.try_reserve("team", DAY, 100, 1000)
        worker = multiprocessing.get_context("spawn").Process(target=_reserve_and_die, args=(str(path),))
        worker.start()
        worker.join(30)
        assert survivor.read("team", DAY)[1] == 800  # the dead worker's 700 still held
        assert survivor.sweep() == 1
        assert survivor.read("team", DAY)[1] == 100  # released; the survivor's own stays
        assert survivor.sweep() == 0  # and its slot is free again
        survivor.settle("team", DAY, 100, 40)
        assert survivor.read("team", DAY)[:2] == (40, 40)
    finally:
        segment.close()


def test_the_clock_turns_at_midnight_in_its_zone() -> None:
    paris = BudgetClock("Europe/Paris")
    zone = paris.zone
    before = datetime.datetime(2026, 11, 22, 23, 59, 59, tzinfo=zone).timestamp()
    day = paris.today(before)
    assert day == datetime.date(2026, 11, 22).toordinal()
    assert paris.resets_in(before) == pytest.approx(1.0)
    assert paris.today(before + 2) == day + 1
    assert paris.today(before) == day  # a clock that went back is followed
    utc = BudgetClock("UTC")
    # 23:59:59 in Paris is 22:59:59 UTC: still an hour before UTC's midnight.
    assert utc.today(before) == day and utc.resets_in(before) == pytest.approx(3601.0)


def _budgets(**budget: object) -> Budgets:
    text = yaml.safe_dump(
        {
            "backends": [
                {"name": "local", "base_url": "http://127.0.0.1:1/v1", "model": "m"},
                {"name": "cloud", "base_url": "http://127.0.0.1:2/v1", "model": "c"},
            ],
            "tiers": {"cheap": ["local"], "capable": ["cloud", "local"]},
            "services": {"team": {"budget": {"daily_usd": 1.0, **budget}}},
            "budgets": {"assumed_output_tokens": 100},
        }
    )
    config = parse_config(text, "t.yaml")
    store = LocalBudgetStore(config.service_names, Segment.anonymous(_layout()).cells("budgets"))
    return Budgets(config, store, {"local": (10, 20), "cloud": (1000, 5000)})


def test_the_worst_case_takes_the_dearest_backend_of_the_chain() -> None:
    budgets = _budgets()
    chain = ("cloud", "local")
    request = RequestText("hi", max_tokens=50, choices=2)
    input_tokens = 300 // 3 + 32
    assert budgets.worst_case(chain, "/chat/completions", 300, request) == input_tokens * 1000 + 100 * 5000
    # No max_tokens: the configured assumption; unreadable request: one choice of it.
    assert budgets.worst_case(chain, "/chat/completions", 300, RequestText("hi")) == (
        input_tokens * 1000 + 100 * 5000
    )
    assert budgets.worst_case(chain, "/chat/completions", 300, None) == input_tokens * 1000 + 100 * 5000
    assert budgets.worst_case(chain, "/embeddings", 300, None) == input_tokens * 1000
    assert budgets.worst_case(("local",), "/chat/completions", 300, request) == input_tokens * 10 + 100 * 20


def test_admission_downgrades_then_refuses() -> None:
    budgets = _budgets(downgrade_tier="cheap")
    budgets.rules["team"].limit = 50_000  # pico-USD: a capable worst case (92,000) does not fit
    capable = Decision("capable", ("cloud", "local"), None, ())
    request = RequestText("hi", max_tokens=10)

    decision, reservation = asyncio.run(budgets.admit("team", capable, "/chat/completions", 30, request))
    assert decision.tier == "cheap" and decision.backends == ("local",)
    assert reservation is not None and reservation.amount == 42 * 10 + 10 * 20
    assert any("downgraded" in reason or "budget" in reason for reason in decision.reasons)

    pinned = Decision("capable", ("cloud",), None, (), pinned=True)
    with pytest.raises(BudgetExceeded) as refused:
        asyncio.run(budgets.admit("team", pinned, "/chat/completions", 30, request))
    assert refused.value.status == 429
    assert refused.value.headers and refused.value.headers[0][0] == b"retry-after"
    assert asyncio.run(budgets.store.totals("team", budgets.clock.today()))[2:] == (1, 1)
    # Services without a budget pass untouched.
    assert asyncio.run(budgets.admit("default", capable, "/chat/completions", 30, request)) == (capable, None)
