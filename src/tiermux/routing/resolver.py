"""From the ``model`` a client sends to the chain of backends that will be tried, in order.

- ``auto`` goes to the default tier (the first tier unless ``routing.default_tier`` says otherwise);
- a configured alias goes to its tier;
- a backend's name or its model name is honoured as asked: that backend alone (pinned).

Every decision is computed once, when the config is loaded; resolving is one dict lookup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tiermux.api.errors import ModelNotFound
from tiermux.config import Config

__all__ = ["AUTO", "Resolver", "Route"]

AUTO = "auto"


class Route:
    """A resolved decision: which tier, which backends in failover order, and why."""

    __slots__ = ("backends", "pinned", "tier")

    def __init__(self, tier: str, backends: Sequence[str], pinned: bool) -> None:
        self.tier = tier
        self.backends = tuple(backends)
        self.pinned = pinned

    def __repr__(self) -> str:
        kind = "pinned" if self.pinned else "tier"
        return f"<Route {kind} {self.tier} -> {list(self.backends)}>"


class Resolver:
    """Maps model names to routes."""

    def __init__(self, config: Config) -> None:
        routes: dict[str, Route] = {}
        # Concrete names first, so that an alias or "auto" can never shadow a real model.
        for backend in config.backends:
            tier = next((t for t, chain in config.tiers.items() if backend.name in chain), "pinned")
            pinned = Route(tier, [backend.name], pinned=True)
            routes.setdefault(backend.model, pinned)
            routes.setdefault(backend.name, pinned)
        for alias, tier in config.routing.aliases.items():
            routes.setdefault(alias, Route(tier, config.tiers[tier], pinned=False))
        default = config.default_tier
        routes.setdefault(AUTO, Route(default, config.tiers[default], pinned=False))
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
