"""What one proxied request turned out to be, filled in as the proxy learns it: whom it was booked
to, where routing sent it, what the cache did, what it cost. The app reads it once the answer is
out, for the metrics and the access log."""

from __future__ import annotations

from tiermux.telemetry.metrics import NONE

__all__ = ["RECORD_SCOPE_KEY", "RequestRecord"]

RECORD_SCOPE_KEY = "tiermux.record"


class RequestRecord:
    __slots__ = (
        "backend",
        "cache",
        "category",
        "cost",
        "first_token",
        "input_tokens",
        "output_tokens",
        "request_id",
        "service",
        "started",
        "status",
        "tier",
    )

    def __init__(self, started: float) -> None:
        self.started = started  # time.perf_counter() when the request came in
        self.service = ""  # unknown until the request is read
        self.category = NONE
        self.tier = NONE
        self.backend = NONE
        self.cache: str | None = None  # HIT, MISS, DEDUP or BYPASS; None with the cache off
        self.status = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost = 0  # pico-USD
        self.first_token: float | None = None  # seconds after ``started``, for streams
        self.request_id: str | None = None

    def __repr__(self) -> str:
        return f"<RequestRecord {self.status} {self.tier}/{self.backend} {self.category} cache={self.cache}>"
