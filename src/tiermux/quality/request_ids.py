"""Request ids that say what they identify: ``tmx-<category>-<tier>-<unique>``.

Feedback names an answer by the id it came with; reading the category and tier off the id itself
means no worker has to remember which answer was which (a worker may have been restarted since,
and the feedback may reach another one). Category and tier are only ever names from the config or
the fixed category list, so an id holds nothing a client wrote.
"""

from __future__ import annotations

import re

__all__ = ["decode", "encode"]

_ID = re.compile(r"tmx-([a-z_]{1,40})-([A-Za-z0-9_.:-]{1,64})-([0-9a-f]{1,32})")


def encode(category: str, tier: str, unique: str) -> str:
    return f"tmx-{category}-{tier}-{unique}"


def decode(request_id: str) -> tuple[str, str] | None:
    """(category, tier) of an id made by ``encode``, or None for anything else."""
    match = _ID.fullmatch(request_id)
    if match is None:
        return None
    return match.group(1), match.group(2)
