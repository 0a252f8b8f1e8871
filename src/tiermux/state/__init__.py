"""State shared by the worker processes of one ``tiermux serve`` (see ``segment``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tiermux.config import Config
from tiermux.state.budget_cells import LocalBudgetStore, budget_cells
from tiermux.state.segment import STATE_ENV, Layout, Segment, SegmentError

if TYPE_CHECKING:
    from tiermux.accounting.budget import BudgetStore
    from tiermux.state.redis_link import RedisLink

__all__ = [
    "CACHE_FIELDS",
    "HEALTH_FIELDS",
    "STATE_ENV",
    "Layout",
    "Segment",
    "SegmentError",
    "budget_store",
    "layout_for",
    "open_segment",
]

# Cells per backend in the "health" block (see tiermux.upstream.health).
HEALTH_FIELDS = 7
# Cells of the response cache's counters (see tiermux.cache.responses).
CACHE_FIELDS = 8


def layout_for(config: Config) -> Layout:
    from tiermux.accounting.ledger import ledger_cells
    from tiermux.quality.window import window_cells
    from tiermux.telemetry.metrics import metrics_cells

    names = [backend.name for backend in config.backends]
    return Layout(
        {
            "health": HEALTH_FIELDS * len(names),
            "ledger": ledger_cells(config),
            "budgets": budget_cells(len(config.service_names)),
            "cache": CACHE_FIELDS,
            "metrics": metrics_cells(config),
            "quality": window_cells(config.quality.window),
        },
        [
            f"backends={','.join(names)}",
            f"tiers={','.join(config.tiers)}",
            f"services={','.join(config.service_names)}",
        ],
    )


def open_segment(config: Config) -> Segment:
    """The segment of the ``serve`` this worker belongs to, or a private one when there is none
    (the app built in process)."""
    path = os.environ.get(STATE_ENV)
    layout = layout_for(config)
    if path:
        return Segment.attach(path, layout)
    return Segment.anonymous(layout)


def budget_store(config: Config, segment: Segment, link: RedisLink | None) -> BudgetStore:
    """Where the budgets of ``config`` are kept: this machine's segment, or Redis in front of it."""
    local = LocalBudgetStore(config.service_names, segment.cells("budgets"))
    if link is None:
        return local
    from tiermux.state.redis_budgets import RedisBudgetStore

    return RedisBudgetStore(link, local)
