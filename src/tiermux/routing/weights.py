"""The classifier's weights file: what ``tiermux train`` writes and the proxy loads.

Layout (little-endian)::

    b"TMXW" | u32 header length | header (JSON) | zlib(int8 table, n_buckets x n_classes)

The header names the classes, the bucket count, the float scale and biases that turn the table's
integer sums into logits, the feature-scheme version the weights were trained with, and free-form
``meta`` (data, seed, held-out scores). A file written by ``train`` with the same data and seed is
the same byte for byte.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from importlib import resources
from pathlib import Path
from typing import Any

from tiermux._speedups import classify

__all__ = ["BUNDLED", "Weights", "WeightsError", "load_weights"]

MAGIC = b"TMXW"
BUNDLED = "classifier.tmxw"  # inside the tiermux.routing package


class WeightsError(ValueError):
    """A weights file that can't be used: wrong format, wrong version, inconsistent sizes."""


class Weights:
    """A trained linear model: classes, biases, scale and an int8 table of buckets x classes."""

    def __init__(
        self,
        classes: list[str],
        bias: list[float],
        scale: float,
        table: bytes,
        meta: dict[str, Any] | None = None,
        features_version: int = classify.FEATURES_VERSION,
    ) -> None:
        if len(bias) != len(classes):
            raise WeightsError("one bias per class is needed")
        # A NaN here would make every probability NaN, and every confidence check pass.
        if not all(math.isfinite(b) for b in bias) or not (math.isfinite(scale) and scale > 0):
            raise WeightsError("biases and scale must be finite numbers (scale above 0)")
        if features_version != classify.FEATURES_VERSION:
            raise WeightsError(
                f"trained with feature scheme {features_version}, this tiermux computes "
                f"{classify.FEATURES_VERSION}: retrain with `tiermux train`"
            )
        self.classes = list(classes)
        self.bias = [float(b) for b in bias]
        self.scale = float(scale)
        self.table = table
        self.meta = meta or {}
        self.features_version = features_version
        try:
            self.model = classify.Model(table, len(classes), self.bias, self.scale)
        except ValueError as exc:
            raise WeightsError(str(exc)) from None

    def __repr__(self) -> str:
        return f"<Weights classes={len(self.classes)} buckets={self.model.n_buckets}>"

    def to_bytes(self) -> bytes:
        header = json.dumps(
            {
                "format": 1,
                "features": self.features_version,
                "classes": self.classes,
                "buckets": self.model.n_buckets,
                "scale": self.scale,
                "bias": self.bias,
                "meta": self.meta,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        return MAGIC + struct.pack("<I", len(header)) + header + zlib.compress(self.table, 9)

    @classmethod
    def from_bytes(cls, data: bytes) -> Weights:
        if data[:4] != MAGIC or len(data) < 8:
            raise WeightsError("not a tiermux weights file")
        (size,) = struct.unpack("<I", data[4:8])
        try:
            header = json.loads(data[8 : 8 + size])
            if not isinstance(header, dict):
                raise WeightsError("corrupt weights file: the header is not an object")
            if header.get("format") != 1:
                raise WeightsError(f"unknown weights format {header.get('format')!r}")
            unpacker = zlib.decompressobj()
            table = unpacker.decompress(data[8 + size :])
            if not unpacker.eof or unpacker.unused_data:
                raise WeightsError("corrupt weights file: the table is truncated or followed by junk")
            classes = header["classes"]
            meta = header.get("meta") or {}
            if len(table) != header["buckets"] * len(classes):
                raise WeightsError("the table does not match the header")
            if not isinstance(meta, dict):
                raise WeightsError("corrupt weights file: meta is not an object")
            return cls(classes, header["bias"], header["scale"], table, meta, header["features"])
        except WeightsError:
            raise
        except (KeyError, TypeError, ValueError, zlib.error) as exc:
            raise WeightsError(f"corrupt weights file: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())


def load_weights(path: str | Path | None = None) -> Weights:
    """Weights from ``path``, or the ones bundled with tiermux."""
    if path is None:
        data = resources.files("tiermux.routing").joinpath(BUNDLED).read_bytes()
    else:
        data = Path(path).read_bytes()
    return Weights.from_bytes(data)
