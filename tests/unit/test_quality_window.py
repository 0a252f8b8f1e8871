"""The quality window in shared cells: the last N scores younger than T, promotion and recovery
decided once, the epoch that tells routing its remembered decisions are stale."""

from __future__ import annotations

from tiermux.quality.window import QualityWindow, window_cells
from tiermux.state import Layout, Segment


def make(size: int = 4, minutes: float = 1.0) -> QualityWindow:
    segment = Segment.anonymous(Layout({"quality": window_cells(size)}))
    return QualityWindow(segment.cells("quality"), size, minutes)


def test_the_mean_is_over_the_last_n_scores_younger_than_the_span() -> None:
    window = make(size=4, minutes=1.0)
    assert window.mean("extraction") == (None, 0)
    for score in (0.0, 0.0, 1.0, 1.0, 1.0, 1.0):  # the first two fall out of a ring of four
        window.add("extraction", score, now=1000.0)
    assert window.mean("extraction", now=1000.0) == (1.0, 4)
    window.add("extraction", 0.0, now=1050.0)
    assert window.mean("extraction", now=1055.0) == (0.75, 4)  # it took the oldest slot
    assert window.mean("extraction", now=1100.0) == (0.0, 1)  # only the youngest is in the span
    assert window.mean("summarisation") == (None, 0)
    window.add("code", 0.5, now=1.0)  # so early that the empty slots' time 0 is in the span
    assert window.mean("code", now=1.0) == (0.5, 1)
    assert window.snapshot()["categories"]["extraction"]["samples"] == 7  # type: ignore[index]


def test_promotion_and_recovery_happen_once_and_move_the_epoch() -> None:
    window = make()
    assert window.epoch() == 0
    assert window.promote("code", now=1.0) and not window.promote("code", now=2.0)
    assert window.promoted("code") and window.promoted_categories() == ["code"]
    assert window.epoch() == 1
    assert window.recover("code") and not window.recover("code")
    assert not window.promoted("code") and window.epoch() == 2
    row = window.snapshot()["categories"]["code"]  # type: ignore[index]
    assert (row["promotions"], row["recoveries"]) == (1, 1)


def test_a_mirrored_state_changes_routing_but_counts_nothing() -> None:
    window = make()
    assert window.mirror("reasoning", 5000) and window.promoted("reasoning") and window.epoch() == 1
    assert not window.mirror("reasoning", 5000)  # already so
    assert window.mirror("reasoning", 0) and window.epoch() == 2
    row = window.snapshot()["categories"]["reasoning"]  # type: ignore[index]
    assert (row["promotions"], row["recoveries"]) == (0, 0)
