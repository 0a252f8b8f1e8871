"""The shared-state segment's life cycle: create, attach, refuse what doesn't fit, remove."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tiermux.state import Layout, Segment, SegmentError

LAYOUT = Layout({"health": 16, "spend": 4}, ["backends=a,b"])


def test_create_attach_and_share(tmp_path: Path) -> None:
    path = tmp_path / "s.state"
    owner = Segment.create(path, LAYOUT)
    worker = Segment.attach(path, LAYOUT)
    owner.cells("spend").add(3, 42)
    assert worker.cells("spend").load(3) == 42
    assert worker.cells("health").count == 16
    worker.close()
    assert path.exists()  # a worker never removes it
    owner.close()
    assert not path.exists()


def test_another_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.state"
    owner = Segment.create(path, LAYOUT)
    try:
        with pytest.raises(SegmentError, match="another config"):
            Segment.attach(path, Layout({"health": 16, "spend": 4}, ["backends=a,c"]))
    finally:
        owner.close()


def test_a_foreign_or_missing_file_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "x.state"
    foreign.write_bytes(b"not a segment at all, but long enough to hold a header" * 2)
    with pytest.raises(SegmentError, match="not a tiermux state segment"):
        Segment.attach(foreign, LAYOUT)
    with pytest.raises(SegmentError):
        Segment.attach(tmp_path / "missing.state", LAYOUT)


def test_another_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.state"
    owner = Segment.create(path, LAYOUT)
    try:
        with open(path, "r+b") as f:
            f.seek(8)
            f.write(struct.pack("=I", 99))
        with pytest.raises(SegmentError, match="version 99"):
            Segment.attach(path, LAYOUT)
    finally:
        owner.close()


def test_a_live_serves_segment_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "s.state"
    code = (
        "import sys, time; from tiermux.state import Layout, Segment; "
        "Segment.create(sys.argv[1], Layout({'health': 16, 'spend': 4}, ['backends=a,b'])); "
        "print('ready', flush=True); time.sleep(30)"
    )
    other = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "ready"
        with pytest.raises(SegmentError, match="belongs to a running tiermux"):
            Segment.create(path, LAYOUT)
    finally:
        other.kill()
        other.wait()
        if other.stdout is not None:
            other.stdout.close()
    # Its serve is gone: the stale file is replaced.
    segment = Segment.create(path, LAYOUT)
    assert segment.cells("spend").load(0) == 0
    segment.close()


def test_anonymous_segments_leave_no_file() -> None:
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    segment = Segment.anonymous(LAYOUT)
    segment.cells("health").add(0, 1)
    after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert after == before
    segment.close()


def test_close_is_idempotent_and_handed_out_cells_keep_working(tmp_path: Path) -> None:
    """A stream still finishing during shutdown may update cells after the app let go."""
    path = tmp_path / "s.state"
    segment = Segment.create(path, LAYOUT)
    cells = segment.cells("health")
    segment.close()
    segment.close()
    assert not path.exists()
    assert cells.add(0, 2) == 2
