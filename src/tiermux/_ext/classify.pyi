from collections.abc import Sequence
from typing import Any

from tiermux._pure.classify import TextStats as TextStats
from tiermux._pure.classify import signal_hash as signal_hash

FEATURES_VERSION: int
MAX_CLASSES: int

def text_stats(text: str) -> TextStats: ...
def instruction_bounds(text: str) -> tuple[int, int]: ...
def train_epoch(
    weights: Any,
    squares: Any,
    bias: Any,
    bias_squares: Any,
    samples: Sequence[tuple[Sequence[int], Sequence[float], int]],
    order: Sequence[int],
    n_classes: int,
    rate: float,
    l2: float,
) -> float: ...

class Model:
    n_classes: int
    n_buckets: int
    def __init__(
        self, table: bytes, n_classes: int, bias: Sequence[float] | None = None, scale: float = 1.0
    ) -> None: ...
    def features(self, system: str, previous: str, last: str) -> list[int]: ...
    def score(self, system: str, previous: str, last: str, extra: Sequence[int]) -> tuple[list[int], int]: ...
    def predict(self, system: str, previous: str, last: str, extra: Sequence[int]) -> list[float]: ...
