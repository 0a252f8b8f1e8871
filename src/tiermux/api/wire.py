"""Wire types: the few request fields tiermux routes on, decoded without touching the rest.

The body itself is forwarded as bytes; these Structs are decoded from it only to decide where it
goes. Unknown fields are ignored on purpose here (every vendor field must pass through), unlike the
strict config Structs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from tiermux.routing.router import Decision

__all__ = [
    "ModelCard",
    "ModelList",
    "RouteDecision",
    "RoutingFields",
    "decode_routing_fields",
    "encode_decision",
]


class RoutingFields(msgspec.Struct):
    """The least a body must hold to be forwarded: its ``model`` (embeddings, and bodies whose
    messages the classifier can't read; ``tiermux.routing.request`` reads the rest)."""

    model: str | None = None


decode_routing_fields = msgspec.json.Decoder(RoutingFields).decode


class ModelCard(msgspec.Struct):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "tiermux"


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"


class RouteDecision(msgspec.Struct):
    """The answer of ``POST /v1/route``: where a request would go, and why."""

    tier: str
    backends: list[str]
    backend: str
    backend_model: str
    pinned: bool
    reasons: list[str]
    category: str | None = None
    confidence: float | None = None
    tier_confidence: float | None = None
    score: int | None = None
    signals: list[str] = []
    rules: list[str] = []
    probabilities: dict[str, float] = {}
    object: str = "tiermux.route"


_encode = msgspec.json.Encoder().encode


def encode_decision(
    decision: Decision, backend: str, backend_model: str, tier_confidence: float | None = None
) -> bytes:
    """``backend``: the one a request would go to now (the first of the chain that health puts first)."""
    answer = RouteDecision(
        tier=decision.tier,
        backends=list(decision.backends),
        backend=backend,
        backend_model=backend_model,
        pinned=decision.pinned,
        reasons=list(decision.reasons),
    )
    c = decision.classification
    if c is not None:
        answer.category = c.category
        answer.confidence = round(c.confidence, 4)
        answer.tier_confidence = None if tier_confidence is None else round(tier_confidence, 4)
        answer.score = c.score
        answer.signals = list(c.signals)
        answer.rules = list(c.rules)
        answer.probabilities = {name: round(p, 4) for name, p in c.probabilities.items()}
    return _encode(answer)
