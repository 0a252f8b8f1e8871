"""Routing as the proxy uses it: model name + request text (+ headers) -> a :class:`Decision`.

Puts together the resolver (what the ``model`` names), the classifier (what the request asks
for) and the policy (which tier that needs), plus the per-request overrides a config may allow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tiermux.api.errors import BadRequest
from tiermux.config import Config
from tiermux.routing.categories import CATEGORIES
from tiermux.routing.classifier import Classification, Classifier
from tiermux.routing.policy import Policy
from tiermux.routing.request import RequestText
from tiermux.routing.resolver import Resolver, Route
from tiermux.routing.weights import load_weights

__all__ = ["Decision", "Router"]

TIER_HEADER = b"x-tiermux-tier"
CATEGORY_HEADER = b"x-tiermux-category"


class Decision:
    """Where one request goes, and why."""

    __slots__ = (
        "backends",
        "classification",
        "downgraded_from",
        "pinned",
        "promoted_from",
        "reasons",
        "tier",
    )

    def __init__(
        self,
        tier: str,
        backends: tuple[str, ...],
        classification: Classification | None,
        reasons: tuple[str, ...],
        pinned: bool = False,
        downgraded_from: str | None = None,
        promoted_from: str | None = None,
    ) -> None:
        self.tier = tier
        self.backends = backends
        self.classification = classification
        self.reasons = reasons
        self.pinned = pinned
        self.downgraded_from = downgraded_from  # the tier routing chose, when a budget overruled it
        self.promoted_from = promoted_from  # the category's own tier, while quality promotes it

    def __repr__(self) -> str:
        category = self.classification.category if self.classification else None
        return (
            f"<Decision {self.tier} {list(self.backends)} category={category} reasons={list(self.reasons)}>"
        )


class Router:
    def __init__(self, config: Config, classifier: Classifier | None = None) -> None:
        self.config = config
        self.resolver = Resolver(config)
        self.policy = Policy(config)
        settings = config.routing.classifier
        if classifier is None and settings.enabled:
            classifier = Classifier(load_weights(settings.weights))
        self.classifier = classifier if settings.enabled else None
        self.allow_overrides = config.routing.allow_header_override
        self._chains = {tier: tuple(chain) for tier, chain in config.tiers.items()}
        self._next_tier = dict(zip(config.tiers, list(config.tiers)[1:], strict=False))
        # Whether the quality safety net has promoted a category (set when it is on).
        self.promoted: Callable[[str], bool] | None = None

    def __repr__(self) -> str:
        return f"<Router {self.policy!r} classifier={self.classifier!r}>"

    def escalated(self, decision: Decision) -> Decision | None:
        """The decision one tier up, for an answer the cheap tier was unsure of; None at the top."""
        higher = self._next_tier.get(decision.tier)
        if higher is None:
            return None
        reasons = (*decision.reasons, "escalated_unsure")
        return Decision(higher, self._chains[higher], decision.classification, reasons)

    def resolve(self, model: str) -> Route:
        return self.resolver.resolve(model)

    def tier_confidence(self, decision: Decision) -> float | None:
        """What the policy compared with ``min_confidence``: how sure the classifier is that the
        request belongs on its category's tier or a cheaper one (for explanations)."""
        classification = decision.classification
        if classification is None:
            return None
        policy = self.policy
        tier = policy.category_tier[classification.category]
        return policy.tier_confidence(classification, policy.index[tier])

    def decide(
        self,
        route: Route,
        request: RequestText | None,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> Decision:
        """The decision for a resolved ``route``; ``request`` is None for requests without text
        to classify (embeddings), which go where the route says."""
        # Pinned requests are classified too: their answers carry the category and the score
        # like any other, so that what a client pins is still visible by task.
        classification = None
        if request is not None and self.classifier is not None:
            classification = self.classifier.classify(request)
        tier_override = None
        if self.allow_overrides:
            tier_override, category_override = _overrides(headers)
            if category_override is not None and classification is not None:
                classification = classification.with_category(category_override, "header_category")
        if tier_override is not None and tier_override not in self.config.tiers:
            raise BadRequest(
                f"unknown tier {tier_override!r} in X-Tiermux-Tier; "
                f"expected one of {', '.join(self.config.tiers)}",
                param="x-tiermux-tier",
            )
        if route.pinned:  # a concrete model is honoured as asked, whatever the headers say
            return Decision(route.tier, route.backends, classification, ("pinned",), pinned=True)
        if route.classified and classification is not None:
            tier, reasons = self.policy.decide(classification, route.floor)
        else:
            tier, reasons = route.tier, ("default_tier",)
        promoted_from = None
        if (
            self.promoted is not None
            and classification is not None
            and tier_override is None
            and tier in self._next_tier
            and self.promoted(classification.category)
        ):
            promoted_from, tier, reasons = tier, self._next_tier[tier], (*reasons, "quality_promoted")
        if tier_override is not None:
            tier, reasons = tier_override, (*reasons, "header_tier")
        return Decision(tier, self._chains[tier], classification, reasons, promoted_from=promoted_from)


def _overrides(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    tier = category = None
    for name, value in headers:
        if name == TIER_HEADER:
            tier = value.decode("latin-1").strip()
        elif name == CATEGORY_HEADER:
            category = value.decode("latin-1").strip()
            if category not in CATEGORIES:
                raise BadRequest(
                    f"unknown category {category!r} in X-Tiermux-Category; "
                    f"expected one of {', '.join(CATEGORIES)}",
                    param="x-tiermux-category",
                )
    return tier, category
