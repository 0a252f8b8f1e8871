"""The two API dialects tiermux speaks, on either side: OpenAI's Chat Completions and Anthropic's
Messages.

A client may use either, and so may a backend; when they differ, the request is translated on its
way to the backend and the answer (JSON, stream or error) on its way back. What one dialect can
say and the other can't is refused with a 400 naming the field (``Untranslatable``), never
dropped: a client must not get an answer to a question other than the one it asked.
"""

from __future__ import annotations

from typing import Literal

from tiermux.api.errors import BadRequest

__all__ = ["ANTHROPIC", "OPENAI", "Dialect", "Untranslatable"]

Dialect = Literal["openai", "anthropic"]
OPENAI: Dialect = "openai"
ANTHROPIC: Dialect = "anthropic"


class Untranslatable(BadRequest):
    """A request (or a part of one) that the backend's dialect has no way to say."""

    code = "untranslatable"
