from collections.abc import Sequence

from tiermux._pure.classify import TextStats as TextStats
from tiermux._pure.classify import signal_hash as signal_hash

LAST_HEAD: int
LAST_TAIL: int
MAX_CLASSES: int

def text_stats(text: str) -> TextStats: ...

class Model:
    n_classes: int
    n_buckets: int
    def __init__(self, table: bytes, n_classes: int) -> None: ...
    def features(self, system: str, previous: str, last: str) -> list[int]: ...
    def score(self, system: str, previous: str, last: str, extra: Sequence[int]) -> tuple[list[int], int]: ...
