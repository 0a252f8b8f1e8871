"""One JSON line per proxied request, off by default (``access_log.enabled``).

A line holds what an operator needs to account for a request and nothing a client wrote: no
prompt, no answer, no key, no header. Every value comes from config or a fixed set, except the
numbers. Lines go to standard output, or are appended to ``access_log.path``.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys

import msgspec

from tiermux.telemetry.record import RequestRecord

__all__ = ["AccessLine", "AccessLog"]

PICO = 10**12

logger = logging.getLogger("tiermux")


class AccessLine(msgspec.Struct):
    """Every line has every key (null when unknown), so that log pipelines see one schema."""

    time: str
    service: str | None
    category: str
    tier: str
    backend: str
    status: int
    latency_ms: float
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cache: str | None = None
    ttft_ms: float | None = None
    endpoint: str | None = None


class AccessLog:
    """Lines written with one ``write(2)`` each on a descriptor opened for appending: every worker
    appends to the same file, and a line (well under the pipe buffer) never interleaves with
    another worker's. No buffering in the process, so a worker killed loses no line it wrote."""

    def __init__(self, path: str | None) -> None:
        self._owned = path is not None
        self._fd = (
            os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640) if path else sys.stdout.fileno()
        )
        self._encode = msgspec.json.Encoder().encode

    def write(self, record: RequestRecord, endpoint: str, seconds: float) -> None:
        line = AccessLine(
            time=datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            service=record.service or None,
            category=record.category,
            tier=record.tier,
            backend=record.backend,
            status=record.status,
            latency_ms=round(seconds * 1000, 3),
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
            cost_usd=record.cost / PICO,
            cache=record.cache,
            ttft_ms=None if record.first_token is None else round(record.first_token * 1000, 3),
            endpoint=endpoint,
        )
        try:
            os.write(self._fd, self._encode(line) + b"\n")
        except OSError as exc:  # a full disk must not fail requests: say so, once per kind
            _warn_once(exc)

    def close(self) -> None:
        if self._owned:
            os.close(self._fd)
            self._owned = False


_warned: set[int] = set()


def _warn_once(exc: OSError) -> None:
    if exc.errno not in _warned:
        _warned.add(exc.errno or 0)
        logger.error("the access log could not be written: %s", exc)
