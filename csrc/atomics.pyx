# cython: language_level=3
"""Compiled twin of ``tiermux._pure.atomics``: 64-bit cells shared by processes, with C11 atomics
(``csrc/atomics.h``). Same signatures, results and exceptions as the pure twin."""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport int64_t

from tiermux._pure.atomics import CELL_SIZE


cdef extern from "atomics.h":
    ctypedef int64_t tmx_cell
    int tmx_cells_lock_free()
    int64_t tmx_load(tmx_cell* cell) nogil
    void tmx_store(tmx_cell* cell, int64_t value) nogil
    int64_t tmx_add(tmx_cell* cell, int64_t delta) nogil
    int tmx_compare_exchange(tmx_cell* cell, int64_t expected, int64_t desired) nogil
    int tmx_add_bounded(tmx_cell* cell, int64_t delta, int64_t limit) nogil


if not tmx_cells_lock_free():
    raise ImportError("64-bit atomics are not lock-free here; the pure twin will be used")

__all__ = ["CELL_SIZE", "Cells"]


cdef class Cells:
    """``count`` int64 cells at ``offset`` of ``memory``, a shared mapping of the file ``fd``."""

    cdef Py_buffer _view
    cdef bint _has_view
    cdef tmx_cell* _cells
    cdef readonly Py_ssize_t count
    cdef Py_ssize_t _offset

    def __cinit__(self):
        self._has_view = False

    def __init__(self, memory, Py_ssize_t offset, Py_ssize_t count, int fd):
        if offset < 0 or offset % CELL_SIZE or count < 0:
            raise ValueError("cells must be 8-byte aligned and not negative in number")
        PyObject_GetBuffer(memory, &self._view, PyBUF_WRITABLE)
        self._has_view = True
        if offset + count * CELL_SIZE > self._view.len:
            raise ValueError("the cells do not fit in the mapping")
        self._cells = <tmx_cell*>(<char*>self._view.buf + offset)
        self._offset = offset
        self.count = count

    def __dealloc__(self):
        if self._has_view:
            PyBuffer_Release(&self._view)

    def __repr__(self):
        return f"<Cells {self.count} at {self._offset}>"

    cdef inline tmx_cell* _at(self, Py_ssize_t index) except NULL:
        if not 0 <= index < self.count:
            raise IndexError("cell index out of range")
        return self._cells + index

    def load(self, Py_ssize_t index):
        return tmx_load(self._at(index))

    def load_range(self, Py_ssize_t index, Py_ssize_t count):
        """The values of ``count`` cells from ``index``, each loaded atomically (a reader's view
        of a range others may be writing to, not a snapshot of it)."""
        if count < 0 or index < 0 or index + count > self.count:
            raise IndexError("cell range out of range")
        cdef tmx_cell* first = self._cells + index
        return [tmx_load(first + i) for i in range(count)]

    def store(self, Py_ssize_t index, int64_t value):
        tmx_store(self._at(index), value)

    def add(self, Py_ssize_t index, int64_t delta):
        """Add ``delta``; the value after."""
        return tmx_add(self._at(index), delta)

    def compare_exchange(self, Py_ssize_t index, int64_t expected, int64_t desired):
        return bool(tmx_compare_exchange(self._at(index), expected, desired))

    def add_bounded(self, Py_ssize_t index, int64_t delta, int64_t limit):
        """Add ``delta`` only if the result stays at or below ``limit``; whether it did."""
        return bool(tmx_add_bounded(self._at(index), delta, limit))
