"""When an answer that turned a request away is worth another try, and after how long.

Only answers that say "not now" are retried: 429 (rate limited), 529 (Anthropic's overloaded)
and 503 (unavailable), and only before a byte of the answer reached the client. The pause is
"full jitter" exponential backoff (a random share of a doubling step, so that many clients turned
away together don't come back together), or the provider's own ``retry-after`` when it names
one that is short enough to wait for.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable

from tiermux.config import RetryConfig

__all__ = ["DEFAULT_REST", "MAX_RETRY_AFTER", "RETRY_STATUSES", "RetryPolicy", "retry_after"]

RETRY_STATUSES = frozenset({429, 503, 529})
DEFAULT_REST = 1.0  # seconds a key rests after a 429 that named no retry-after (and no retry is left)
MAX_RETRY_AFTER = 3600.0  # the longest a key rests, whatever a backend asks


class RetryPolicy:
    """``RetryConfig`` as decisions: whether to retry, and the pause before retry ``n``."""

    __slots__ = ("_random", "attempts", "backoff", "max_backoff")

    def __init__(self, config: RetryConfig, rng: Callable[[], float] = random.random) -> None:
        self.attempts = config.attempts
        self.backoff = config.backoff
        self.max_backoff = config.max_backoff
        self._random = rng

    def __repr__(self) -> str:
        return f"<RetryPolicy attempts={self.attempts} backoff={self.backoff}s max={self.max_backoff}s>"

    def pause(self, retry: int, asked: float | None) -> float | None:
        """Seconds to wait before retry number ``retry`` (1 for the first), or None when there is
        no retry left, or the backend asked for a longer wait than ``max_backoff``."""
        if retry > self.attempts:
            return None
        if asked is not None:
            return asked if asked <= self.max_backoff else None
        step = min(self.max_backoff, self.backoff * 2.0 ** (retry - 1))
        return step * self._random()


def retry_after(headers: list[tuple[bytes, bytes]], now: Callable[[], float] = time.time) -> float | None:
    """The wait an answer asks for: ``retry-after-ms`` (OpenAI), else ``retry-after`` in seconds
    or as an HTTP date; None when it names none (or nonsense), at most ``MAX_RETRY_AFTER``."""
    seconds = None
    for name, value in headers:
        if name == b"retry-after-ms":
            try:
                return _bounded(float(value) / 1000.0)
            except ValueError:
                continue
        if name == b"retry-after":
            try:
                seconds = _bounded(float(value))
            except ValueError:
                try:
                    when = email.utils.parsedate_to_datetime(value.decode("latin-1"))
                except (TypeError, ValueError):
                    continue
                seconds = _bounded(when.timestamp() - now())
    return seconds


def _bounded(seconds: float) -> float:
    """A wait between 0 and ``MAX_RETRY_AFTER`` (``inf`` and ``nan`` are a backend's nonsense)."""
    if not math.isfinite(seconds):
        raise ValueError(seconds)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
