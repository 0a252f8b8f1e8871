"""Pure-Python twin of ``tiermux._ext.atomics``: 64-bit cells shared by processes.

The compiled twin uses C11 atomics on the mapped memory. Python has no atomic read-modify-write on
a mapping, so here every write holds an ``fcntl`` lock on the cell's 8 bytes of the backing file
for its duration: slower, and as safe between processes as the compiled twin while every writer
takes the lock (they are advisory). Loads need none: an aligned 8-byte copy is not torn on the
platforms tiermux runs on.

``fcntl`` locks belong to a process and are dropped when it closes *any* descriptor of the file,
so the cells lock through a duplicate descriptor of their own, and are used from one thread (the
event loop's) at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct

__all__ = ["CELL_SIZE", "Cells"]

CELL_SIZE = 8
_CELL = struct.Struct("=q")


class Cells:
    """``count`` int64 cells at ``offset`` of ``memory``, a shared mapping of the file ``fd``."""

    def __init__(self, memory: mmap.mmap, offset: int, count: int, fd: int) -> None:
        if offset < 0 or offset % CELL_SIZE or count < 0:
            raise ValueError("cells must be 8-byte aligned and not negative in number")
        if offset + count * CELL_SIZE > len(memory):
            raise ValueError("the cells do not fit in the mapping")
        self._memory = memory
        self._offset = offset
        self._fd = os.dup(fd)
        self.count = count

    def __del__(self) -> None:
        with contextlib.suppress(AttributeError, OSError):
            os.close(self._fd)

    def __repr__(self) -> str:
        return f"<Cells {self.count} at {self._offset}>"

    def _at(self, index: int) -> int:
        if not 0 <= index < self.count:
            raise IndexError("cell index out of range")
        return self._offset + index * CELL_SIZE

    def load(self, index: int) -> int:
        value: int = _CELL.unpack_from(self._memory, self._at(index))[0]
        return value

    def load_range(self, index: int, count: int) -> list[int]:
        """The values of ``count`` cells from ``index`` (a reader's view of a range others may
        be writing to, not a snapshot of it)."""
        if count < 0 or index < 0 or index + count > self.count:
            raise IndexError("cell range out of range")
        return list(struct.unpack_from(f"={count}q", self._memory, self._offset + index * CELL_SIZE))

    def store(self, index: int, value: int) -> None:
        at = self._at(index)
        fcntl.lockf(self._fd, fcntl.LOCK_EX, CELL_SIZE, at)
        try:
            _CELL.pack_into(self._memory, at, value)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, CELL_SIZE, at)

    def add(self, index: int, delta: int) -> int:
        """Add ``delta``; the value after."""
        at = self._at(index)
        fcntl.lockf(self._fd, fcntl.LOCK_EX, CELL_SIZE, at)
        try:
            value: int = _CELL.unpack_from(self._memory, at)[0] + delta
            _CELL.pack_into(self._memory, at, value)
            return value
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, CELL_SIZE, at)

    def compare_exchange(self, index: int, expected: int, desired: int) -> bool:
        at = self._at(index)
        fcntl.lockf(self._fd, fcntl.LOCK_EX, CELL_SIZE, at)
        try:
            if _CELL.unpack_from(self._memory, at)[0] != expected:
                return False
            _CELL.pack_into(self._memory, at, desired)
            return True
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, CELL_SIZE, at)

    def add_bounded(self, index: int, delta: int, limit: int) -> bool:
        """Add ``delta`` only if the result stays at or below ``limit``; whether it did."""
        at = self._at(index)
        fcntl.lockf(self._fd, fcntl.LOCK_EX, CELL_SIZE, at)
        try:
            value = _CELL.unpack_from(self._memory, at)[0] + delta
            if value > limit:
                return False
            _CELL.pack_into(self._memory, at, value)
            return True
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, CELL_SIZE, at)
