"""``GET /metrics``: everything operators watch, in the Prometheus text format (version 0.0.4).

Read at scrape time from the shared state, so whichever worker answers, the numbers are those of
the whole ``serve``: the request counters and histograms (``metrics``), the books (tokens, spend
and savings, from the ledger), the cache counters, today's budgets, and each backend's health and
in-flight requests. Money is in USD as a float; the books keep exact integers underneath.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tiermux.accounting.budget import Budgets
from tiermux.accounting.ledger import BASELINE, CACHED, COST, INPUT, OUTPUT, PICO, Ledger
from tiermux.cache.responses import ResponseCache
from tiermux.quality.window import QualityWindow
from tiermux.telemetry.metrics import BUCKETS, Histogram, Metrics
from tiermux.upstream.health import Health

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: str) -> None:
        if labels:
            text = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
            self.lines.append(f"{name}{{{text}}} {_number(value)}")
        else:
            self.lines.append(f"{name} {_number(value)}")

    def histogram(self, name: str, help_text: str, histogram: Histogram, label: str) -> None:
        self.family(name, "histogram", help_text)
        for value in histogram.labels:
            counts, total = histogram.read(value)
            if not counts[-1]:
                continue
            for bound, count in zip((*(_number(b) for b in BUCKETS), "+Inf"), counts, strict=True):
                self.sample(f"{name}_bucket", count, **{label: value, "le": bound})
            self.sample(f"{name}_sum", total, **{label: value})
            self.sample(f"{name}_count", counts[-1], **{label: value})

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _sum_by(rows: Iterable[tuple[tuple[str, ...], int]]) -> dict[tuple[str, ...], int]:
    totals: dict[tuple[str, ...], int] = {}
    for key, value in rows:
        totals[key] = totals.get(key, 0) + value
    return totals


async def render(
    metrics: Metrics,
    ledger: Ledger,
    health: Health,
    cache: ResponseCache,
    budgets: Budgets,
    quality: QualityWindow | None = None,
) -> bytes:
    out = _Writer()

    out.family(
        "tiermux_requests_total", "counter", "Proxied requests answered, by where they went and status."
    )
    for category, tier, backend, status, count in metrics.requests():
        labels = {"category": category, "tier": tier, "backend": backend, "status": status}
        out.sample("tiermux_requests_total", count, **labels)

    out.family("tiermux_routing_decisions_total", "counter", "Routing decisions, by category and tier.")
    for category, tier, count in metrics.decisions():
        out.sample("tiermux_routing_decisions_total", count, category=category, tier=tier)

    out.histogram(
        "tiermux_request_duration_seconds",
        "Time from a request's arrival to the end of its answer, by tier.",
        metrics.duration,
        "tier",
    )
    out.histogram(
        "tiermux_time_to_first_token_seconds",
        "Time from a streaming request's arrival to its first chunk sent, by backend.",
        metrics.first_token,
        "backend",
    )
    out.histogram(
        "tiermux_upstream_duration_seconds",
        "Time a backend took to answer (its headers for a stream, the whole body otherwise).",
        metrics.upstream,
        "backend",
    )

    rows = ledger.rows()
    tokens = _sum_by(
        ((direction, labels[1]), values[field])
        for labels, values in rows
        for direction, field in (("input", INPUT), ("cached_input", CACHED), ("output", OUTPUT))
    )
    out.family("tiermux_tokens_total", "counter", "Tokens backends processed (input includes cached_input).")
    for (direction, backend), count in sorted(tokens.items()):
        out.sample("tiermux_tokens_total", count, direction=direction, backend=backend)

    cost = _sum_by(((labels[0], labels[1]), values[COST]) for labels, values in rows)
    out.family("tiermux_cost_usd_total", "counter", "Spend at the backends' prices, by service and backend.")
    for (service, backend), pico in sorted(cost.items()):
        out.sample("tiermux_cost_usd_total", pico / PICO, service=service, backend=backend)

    savings = _sum_by(((labels[0],), values[BASELINE] - values[COST]) for labels, values in rows)
    out.family(
        "tiermux_savings_usd_total",
        "counter",
        "What sending every request to the capable tier would have cost, less what was spent.",
    )
    for (service,), saved in sorted(savings.items()):
        out.sample("tiermux_savings_usd_total", saved / PICO, service=service)

    counts = cache.snapshot()
    for name, key, help_text in (
        ("hits", "hits", "Requests answered from the response cache."),
        ("misses", "misses", "Cacheable requests sent to a backend."),
        ("dedups", "dedups", "Requests that shared an identical request's upstream call."),
        ("bypasses", "bypasses", "Requests that did not use the cache (sampled, or Cache-Control)."),
        ("stored", "stored", "Answers kept in the cache."),
        ("evictions", "evicted", "Answers evicted from a worker's cache to make room."),
    ):
        out.family(f"tiermux_cache_{name}_total", "counter", help_text)
        out.sample(f"tiermux_cache_{name}_total", int(counts[key]))  # type: ignore[call-overload]

    states = await budgets.snapshot()
    for name, key, help_text in (
        ("limit", "daily_usd", "Today's spending limit."),
        ("spent", "spent_usd", "Spent today."),
        ("remaining", "remaining_usd", "Left to reserve today (limit less spent and reserved)."),
    ):
        out.family(f"tiermux_budget_{name}_usd", "gauge", help_text)
        for service, state in states.items():
            out.sample(f"tiermux_budget_{name}_usd", state[key], service=service)  # type: ignore[index]

    out.family("tiermux_backend_up", "gauge", "1 while a backend takes requests, 0 while it is down.")
    for name, state in health.state.items():
        out.sample("tiermux_backend_up", 0 if state.down else 1, backend=name)
    out.family("tiermux_backend_in_flight", "gauge", "Requests in flight to a backend, over all workers.")
    for name, count in metrics.in_flight().items():
        out.sample("tiermux_backend_in_flight", count, backend=name)
    if quality is not None:
        _quality(out, quality)
    return out.text()


_QUALITY_COUNTERS = {
    "samples": "Cheap answers scored against the reference.",
    "shadow_samples": "A promoted category's own tier, asked in the background and scored.",
    "check_failures": "Cheap answers that failed a cheap check (empty, a refusal, not the JSON asked for).",
    "feedback": "Scores sent by clients to /v1/feedback.",
    "promotions": "Times a category was promoted to the next tier for its quality.",
    "recoveries": "Times a promoted category returned to its own tier.",
    "escalations": "Unsure cheap answers escalated to the next tier before answering (confidence cascade).",
}


def _quality(out: _Writer, quality: QualityWindow) -> None:
    state = quality.snapshot()
    rows: dict[str, dict[str, Any]] = state["categories"]  # type: ignore[assignment]
    out.family("tiermux_quality_score", "gauge", "Windowed mean score of a category's checked answers (0-1).")
    for category, row in rows.items():
        if row["score"] is not None:
            out.sample("tiermux_quality_score", row["score"], category=category)
    out.family("tiermux_quality_window_samples", "gauge", "Scores in a category's window.")
    for category, row in rows.items():
        out.sample("tiermux_quality_window_samples", row["window_samples"], category=category)
    out.family("tiermux_quality_promoted", "gauge", "1 while a category is promoted to the next tier.")
    for category, row in rows.items():
        out.sample("tiermux_quality_promoted", int(row["promoted"]), category=category)
    for counter, help_text in _QUALITY_COUNTERS.items():
        out.family(f"tiermux_quality_{counter}_total", "counter", help_text)
        for category, row in rows.items():
            out.sample(f"tiermux_quality_{counter}_total", row[counter], category=category)
    for name, help_text in (
        ("dropped", "Checks dropped because a worker's queue was full."),
        ("shed", "Checks a worker busy serving requests did not take on."),
    ):
        out.family(f"tiermux_quality_{name}_total", "counter", help_text)
        out.sample(f"tiermux_quality_{name}_total", int(state[name]))  # type: ignore[call-overload]
