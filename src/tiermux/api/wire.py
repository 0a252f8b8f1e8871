"""Wire types: the few request fields tiermux routes on, decoded without touching the rest.

The body itself is forwarded as bytes; these Structs are decoded from it only to decide where it
goes. Unknown fields are ignored on purpose here (every vendor field must pass through), unlike the
strict config Structs.
"""

from __future__ import annotations

import msgspec

__all__ = ["ModelCard", "ModelList", "RoutingFields", "decode_routing_fields"]


class RoutingFields(msgspec.Struct):
    """What routing reads from an OpenAI request body."""

    model: str | None = None
    stream: bool | None = None


decode_routing_fields = msgspec.json.Decoder(RoutingFields).decode


class ModelCard(msgspec.Struct):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "tiermux"


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"
