"""The shared-memory segment every worker process of one ``tiermux serve`` attaches.

``serve`` creates it before Granian starts the workers and removes it on exit; each worker attaches
it by the path in ``$TIERMUX_STATE``. It is a file under ``/dev/shm`` that every process maps, not
``multiprocessing.shared_memory``: before Python 3.13 the resource tracker unlinks even attached
segments when one process exits, which would let a dying worker destroy everyone's state.

Layout, version 1 (native byte order; everything after the header is 64-bit cells)::

    0   8s   magic b"TMXSTATE"
    8   u32  layout version
    12  u32  header size (64)
    16  16s  digest of the layout (which blocks, how many cells, for which backends)
    32  u64  number of cells
    40  u64  pid of the creating ``serve``
    64       cells

A segment with another magic, version or digest is refused with a message saying why (another
tiermux with another config on the same port, or an older tiermux), never silently reused; so is
one that a running ``serve`` holds (its ``flock``). All
updates are single-cell atomic operations (``tiermux._speedups.atomics``), so a worker that dies
mid-request leaves no cell half-written.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from tiermux._speedups import atomics

__all__ = ["STATE_ENV", "Layout", "Segment", "SegmentError"]

STATE_ENV = "TIERMUX_STATE"
MAGIC = b"TMXSTATE"
VERSION = 1
_HEADER = struct.Struct("=8sII16sQQ")
HEADER_SIZE = 64


class SegmentError(RuntimeError):
    """A segment that can't be used: missing, foreign, or of another layout."""


class Layout:
    """Named blocks of cells, in order. Two processes agree on a segment iff their layouts'
    descriptions (and so digests) are equal."""

    def __init__(self, blocks: Mapping[str, int], context: Sequence[str] = ()) -> None:
        self.blocks = dict(blocks)
        self.offsets: dict[str, int] = {}
        total = 0
        for name, count in self.blocks.items():
            self.offsets[name] = total
            total += count
        self.cells = total
        description = ";".join([f"v{VERSION}", *(f"{n}={c}" for n, c in self.blocks.items()), *context])
        self.digest = hashlib.sha256(description.encode()).digest()[:16]

    def __repr__(self) -> str:
        return f"<Layout {self.blocks}>"


class Segment:
    """A mapped segment; ``cells(name)`` gives a block's atomic cells."""

    def __init__(self, path: str | None, fd: int, memory: mmap.mmap, layout: Layout, owner: bool) -> None:
        self.path = path
        self.layout = layout
        self.owner = owner
        self._fd = fd
        self._memory = memory
        self._closed = False
        self._blocks = {
            name: atomics.Cells(memory, HEADER_SIZE + 8 * layout.offsets[name], count, fd)
            for name, count in layout.blocks.items()
        }

    def __repr__(self) -> str:
        return f"<Segment {self.path or 'anonymous'} cells={self.layout.cells}>"

    def cells(self, name: str) -> atomics.Cells:
        return self._blocks[name]

    # --- life cycle ----------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], layout: Layout) -> Segment:
        """Create the segment for a ``serve``, refusing one that another live tiermux holds.

        Liveness is an exclusive ``flock`` the creating ``serve`` holds on the file for its whole
        life (not a pid, which can be reused): a file nobody holds is stale and replaced.
        """
        path = os.fspath(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SegmentError(f"{path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SegmentError(f"{path} belongs to a running tiermux; stop it or use another port") from None
        try:
            os.ftruncate(fd, 0)  # whatever a dead serve left is gone
            return cls._initialise(path, fd, layout)
        except BaseException:
            os.close(fd)
            Path(path).unlink(missing_ok=True)
            raise

    @classmethod
    def anonymous(cls, layout: Layout) -> Segment:
        """A segment for one process (the app built in process, tests): unlinked at once."""
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="tiermux-", suffix=".state", dir=directory)
        os.unlink(path)
        return cls._initialise(None, fd, layout)

    @classmethod
    def _initialise(cls, path: str | None, fd: int, layout: Layout) -> Segment:
        size = HEADER_SIZE + 8 * max(layout.cells, 1)
        os.ftruncate(fd, size)
        memory = mmap.mmap(fd, size)
        header = _HEADER.pack(MAGIC, VERSION, HEADER_SIZE, layout.digest, layout.cells, os.getpid())
        memory[: len(header)] = header
        return cls(path, fd, memory, layout, owner=True)

    @classmethod
    def attach(cls, path: str | os.PathLike[str], layout: Layout) -> Segment:
        """Attach a worker to its ``serve``'s segment."""
        path = os.fspath(path)
        _magic, version, digest, pid = _read_header(path)
        if version != VERSION:
            raise SegmentError(f"{path}: layout version {version}, this tiermux uses {VERSION}")
        if digest != layout.digest:
            raise SegmentError(f"{path}: made for another config (other backends?) by pid {pid}")
        fd = os.open(path, os.O_RDWR)
        size = os.fstat(fd).st_size
        if size < HEADER_SIZE + 8 * layout.cells:
            os.close(fd)
            raise SegmentError(f"{path}: truncated")
        return cls(path, fd, mmap.mmap(fd, size), layout, owner=False)

    def close(self, remove: bool | None = None) -> None:
        """Let go of the segment; the owner (or ``remove=True``) also deletes the file.

        Cells handed out keep working until they are dropped (they hold the mapping, and the pure
        ones their own descriptor): a stream still finishing during shutdown may update them.
        The mapping itself is unmapped when its last user is gone. Calling it twice is harmless.
        """
        if self._closed:
            return
        self._closed = True
        self._blocks.clear()
        os.close(self._fd)  # also releases the owner's flock, after the unlink below
        if self.path is not None and (self.owner if remove is None else remove):
            Path(self.path).unlink(missing_ok=True)


def _read_header(path: str) -> tuple[bytes, int, bytes, int]:
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
    except OSError as exc:
        raise SegmentError(f"{path}: {exc.strerror or exc}") from None
    if len(raw) < _HEADER.size:
        raise SegmentError(f"{path}: not a tiermux state segment")
    magic, version, _size, digest, _cells, pid = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise SegmentError(f"{path}: not a tiermux state segment")
    return magic, version, digest, pid
