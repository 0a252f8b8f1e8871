"""Scoring routing on labelled requests: what ``tiermux eval`` prints.

Two views. As a classifier: per-category precision and recall and the confusion matrix. As a
router, which is what costs money or quality: each label's tier is the tier the policy maps that
category to, and

- **savings recall** is the share of requests whose label belongs on the cheapest tier that were
  sent there (the savings kept);
- **misroute-down** is the share of requests whose label needs a dearer tier that were sent to a
  cheaper one than their label's tier (the quality risked);
- **blended cost** prices every request at its routed tier's first backend, against sending
  everything to the capable tier (the tier of ``reasoning``), with input tokens estimated from the
  text (4 characters a token) and a fixed number of output tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tiermux.config import Config
from tiermux.routing.categories import CATEGORIES
from tiermux.routing.dataset import Example
from tiermux.routing.router import Router

__all__ = ["Evaluation", "evaluate"]

CHARS_PER_TOKEN = 4


class Evaluation:
    """Counts from one run; every figure is derived from them."""

    def __init__(self, tiers: Sequence[str], category_tier: dict[str, str]) -> None:
        self.tiers = list(tiers)
        self.category_tier = category_tier
        self.confusion: dict[str, dict[str, int]] = {a: dict.fromkeys(CATEGORIES, 0) for a in CATEGORIES}
        self.total = 0
        self.cheap_eligible = 0
        self.cheap_kept = 0
        self.needs_dearer = 0
        self.sent_down = 0
        self.cost = 0.0
        self.baseline_cost = 0.0
        self.timings: list[float] = []

    def __repr__(self) -> str:
        return f"<Evaluation n={self.total} accuracy={self.accuracy:.3f}>"

    @property
    def accuracy(self) -> float:
        right = sum(self.confusion[c][c] for c in CATEGORIES)
        return right / self.total if self.total else 0.0

    def precision(self, category: str) -> float:
        predicted = sum(self.confusion[label][category] for label in CATEGORIES)
        return self.confusion[category][category] / predicted if predicted else 0.0

    def recall(self, category: str) -> float:
        support = self.support(category)
        return self.confusion[category][category] / support if support else 0.0

    def support(self, category: str) -> int:
        return sum(self.confusion[category].values())

    @property
    def savings_recall(self) -> float:
        return self.cheap_kept / self.cheap_eligible if self.cheap_eligible else 0.0

    @property
    def misroute_down(self) -> float:
        return self.sent_down / self.needs_dearer if self.needs_dearer else 0.0

    @property
    def savings(self) -> float:
        return 1 - self.cost / self.baseline_cost if self.baseline_cost else 0.0

    def percentile_us(self, q: float) -> float:
        if not self.timings:
            return 0.0
        ordered = sorted(self.timings)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6

    def report(self) -> str:
        lines = [f"{self.total} requests; accuracy {self.accuracy:.3f}", ""]
        lines.append(f"{'category':<17}{'precision':>10}{'recall':>8}{'f1':>7}{'support':>9}  tier")
        for c in CATEGORIES:
            p, r = self.precision(c), self.recall(c)
            f1 = 2 * p * r / (p + r) if p + r else 0.0
            lines.append(f"{c:<17}{p:>10.3f}{r:>8.3f}{f1:>7.3f}{self.support(c):>9}  {self.category_tier[c]}")
        lines += ["", "confusion (rows: label, columns: predicted)"]
        short = [c[:5] for c in CATEGORIES]
        lines.append(" " * 17 + "".join(f"{s:>6}" for s in short))
        for label in CATEGORIES:
            if self.support(label):
                lines.append(f"{label:<17}" + "".join(f"{self.confusion[label][p]:>6}" for p in CATEGORIES))
        lines += [
            "",
            f"savings recall  {self.savings_recall:.3f}  ({self.cheap_kept} of {self.cheap_eligible} "
            f"cheap-eligible requests sent to {self.tiers[0]})",
            f"misroute-down   {self.misroute_down:.3f}  ({self.sent_down} of {self.needs_dearer} "
            "requests that need a dearer tier sent cheaper)",
            f"blended cost    ${self.cost:.4f} against ${self.baseline_cost:.4f} all-capable "
            f"({self.savings:.1%} saved)",
            f"classify time   p50 {self.percentile_us(0.5):.1f} us, p99 {self.percentile_us(0.99):.1f} us "
            "(per request, in this process)",
        ]
        return "\n".join(lines)


def evaluate(
    examples: Sequence[Example],
    config: Config,
    router: Router | None = None,
    output_tokens: int = 300,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    router = router or Router(config)
    policy = router.policy
    tiers = policy.tiers
    index = policy.index
    prices = {}
    for tier, chain in config.tiers.items():
        backend = next(b for b in config.backends if b.name == chain[0])
        prices[tier] = backend.price
    capable = policy.category_tier["reasoning"]
    auto = router.resolve("auto")
    result = Evaluation(tiers, policy.category_tier)
    for n, example in enumerate(examples, 1):
        started = time.perf_counter()
        decision = router.decide(auto, example.request)
        result.timings.append(time.perf_counter() - started)
        classification = decision.classification
        predicted = classification.category if classification is not None else "open_qa"
        result.confusion[example.label][predicted] += 1
        result.total += 1
        needed = index[policy.category_tier[example.label]]
        routed = index[decision.tier]
        if needed == 0:
            result.cheap_eligible += 1
            result.cheap_kept += routed == 0
        else:
            result.needs_dearer += 1
            result.sent_down += routed < needed
        tokens_in = example.request.total_chars / CHARS_PER_TOKEN
        for tier, bucket in ((decision.tier, "cost"), (capable, "baseline_cost")):
            price = prices[tier]
            amount = (tokens_in * price.input + output_tokens * price.output) / 1e6
            setattr(result, bucket, getattr(result, bucket) + amount)
        if progress is not None:
            progress(n, len(examples))
    return result
