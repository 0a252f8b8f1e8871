"""From the ``model`` a client sends to what routing does with it.

- ``auto`` is classified and routed by the policy (or goes to the default tier with the
  classifier off);
- an alias is ``auto`` or a tier: classified too, never below that tier;
- a backend's name or its model name is honoured as asked: that backend alone (pinned).

Every route is computed once, when the config is loaded; resolving is one dict lookup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tiermux.api.errors import ModelNotFound
from tiermux.config import AUTO, Config

__all__ = ["AUTO", "Resolver", "Route"]


class Route:
    """What a model name means: a tier and its chain, pinned or not, classified or not."""

    __slots__ = ("backends", "classified", "floor", "pinned", "tier")

    def __init__(
        self,
        tier: str,
        backends: Sequence[str],
        pinned: bool,
        classified: bool = False,
        floor: int = 0,
    ) -> None:
        self.tier = tier
        self.backends = tuple(backends)
        self.pinned = pinned
        self.classified = classified
        self.floor = floor

    def __repr__(self) -> str:
        kind = "pinned" if self.pinned else "classified" if self.classified else "tier"
        return f"<Route {kind} {self.tier} -> {list(self.backends)}>"


class Resolver:
    """Maps model names to routes."""

    def __init__(self, config: Config) -> None:
        routes: dict[str, Route] = {}
        tiers = list(config.tiers)
        classified = config.routing.classifier.enabled
        # Concrete names first, so that an alias or "auto" can never shadow a real model.
        for backend in config.backends:
            tier = next((t for t, chain in config.tiers.items() if backend.name in chain), "pinned")
            pinned = Route(tier, [backend.name], pinned=True)
            routes.setdefault(backend.model, pinned)
            routes.setdefault(backend.name, pinned)
        default = config.default_tier
        auto = Route(default, config.tiers[default], pinned=False, classified=classified)
        for alias, tier in config.routing.aliases.items():
            if tier == AUTO:
                routes.setdefault(alias, auto)
            else:
                floor = tiers.index(tier)
                routes.setdefault(alias, Route(tier, config.tiers[tier], False, classified, floor))
        routes.setdefault(AUTO, auto)
        self._routes: Mapping[str, Route] = routes

    def __repr__(self) -> str:
        return f"<Resolver {sorted(self._routes)}>"

    @property
    def model_names(self) -> list[str]:
        """Every name a client may send, in the order ``/v1/models`` lists them."""
        return list(self._routes)

    def resolve(self, model: str) -> Route:
        route = self._routes.get(model)
        if route is None:
            raise ModelNotFound(f"The model `{model}` does not exist", param="model")
        return route
