"""The nine task categories, and which of them a cheap model handles well by default."""

from __future__ import annotations

__all__ = ["CAPABLE_BY_DEFAULT", "CATEGORIES", "CHEAP_BY_DEFAULT"]

CATEGORIES: tuple[str, ...] = (
    "extraction",
    "classification",
    "summarisation",
    "rewriting",
    "open_qa",
    "brainstorming",
    "creative_writing",
    "reasoning",
    "code",
)

# Work whose answer is in the prompt or is short and checkable: small models match frontier ones.
CHEAP_BY_DEFAULT: frozenset[str] = frozenset(
    {"extraction", "classification", "summarisation", "rewriting", "open_qa"}
)
# Multi-step or open-ended generation, where small models fall behind.
CAPABLE_BY_DEFAULT: frozenset[str] = frozenset(CATEGORIES) - CHEAP_BY_DEFAULT
