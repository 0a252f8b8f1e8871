"""The nine task categories, which of them a cheap model handles well by default, and the names
of the structural signals the classifier reports (config refers to both)."""

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

# Every signal ``tiermux.routing.classifier.signals_of`` can name.
SIGNALS: tuple[str, ...] = (
    "tools",
    "json_mode",
    "image",
    "system",
    "multi_turn",
    "code_fence",
    "code_dense",
    "math_dense",
    "short",
    "long",
    "very_long",
    "question",
    "questions",
    "multi_line",
    "max_tokens_small",
    "max_tokens_large",
    "temperature_high",
)
