"""Routing policy: from a classification to a tier. Sync and pure; the proxy does the I/O.

In order, each step only ever moves a request to a dearer tier (tiers are listed cheapest first):

1. the category's tier (``routing.categories``);
2. ``uncertain_tier`` when the classifier is not sure enough that the request belongs on its tier:
   the probability of all the categories this tier (or a cheaper one) serves is below
   ``min_confidence``. Summing over the tier rather than taking the top category alone matters:
   "extraction 0.40, classification 0.35, reasoning 0.25" is a confident cheap request;

3. one tier up when the complexity score reaches ``lift_score``;
4. the floor of every signal that fired (``signal_tiers``: tools, images...);
5. the floor of the alias the client named.

The reasons for every move are kept, for the response headers, ``/v1/route`` and ``explain``.
"""

from __future__ import annotations

from tiermux.config import Config
from tiermux.routing.categories import CATEGORIES, CHEAP_BY_DEFAULT
from tiermux.routing.classifier import Classification

__all__ = ["Policy"]


class Policy:
    def __init__(self, config: Config) -> None:
        routing = config.routing
        self.tiers: tuple[str, ...] = tuple(config.tiers)
        self.index = {tier: i for i, tier in enumerate(self.tiers)}
        cheap = self.tiers[0]
        capable = self.tiers[1] if len(self.tiers) > 1 else cheap
        self.category_tier = {
            category: routing.categories.get(category, cheap if category in CHEAP_BY_DEFAULT else capable)
            for category in CATEGORIES
        }
        # For each tier, the indices of the categories it or a cheaper tier serves.
        self._served = [
            [j for j, c in enumerate(CATEGORIES) if self.index[self.category_tier[c]] <= i]
            for i in range(len(self.tiers))
        ]
        hard_tier = self.category_tier["reasoning"]
        self.uncertain = self.index[routing.uncertain_tier or hard_tier]
        self.min_confidence = routing.min_confidence
        self.lift_score = routing.lift_score
        signal_tiers = routing.signal_tiers
        if signal_tiers is None:
            signal_tiers = {"tools": hard_tier, "image": hard_tier}
        self.signal_floors = {signal: self.index[tier] for signal, tier in signal_tiers.items()}

    def __repr__(self) -> str:
        return (
            f"<Policy tiers={list(self.tiers)} min_confidence={self.min_confidence} "
            f"lift_score={self.lift_score} floors={self.signal_floors}>"
        )

    def tier_confidence(self, classification: Classification, tier: int) -> float:
        """The probability that the request's category is one that tier ``tier`` (or a cheaper
        one) serves; 1 when a rule or a header decided the category."""
        if classification.rules:
            return 1.0
        probs = classification.probs_by_category
        total = 0.0
        for j in self._served[tier]:
            total += probs[j]
        return total

    def decide(self, classification: Classification, floor: int = 0) -> tuple[str, tuple[str, ...]]:
        """The tier for a classified request, and why (``category=…`` first, then each lift)."""
        category = classification.category
        i = self.index[self.category_tier[category]]
        reasons = [f"category={category}"]
        # "not >=" rather than "<", so that a NaN counts as unsure.
        if i < self.uncertain and not self.tier_confidence(classification, i) >= self.min_confidence:
            i = self.uncertain
            reasons.append("low_confidence")
        if (
            self.lift_score is not None
            and classification.score >= self.lift_score
            and i + 1 < len(self.tiers)
        ):
            i += 1
            reasons.append("complex")
        floors = self.signal_floors
        if floors:
            for signal in classification.signals:
                level = floors.get(signal)
                if level is not None and level > i:
                    i = level
                    reasons.append(f"signal={signal}")
        if floor > i:
            i = floor
            reasons.append("model_floor")
        return self.tiers[i], tuple(reasons)
