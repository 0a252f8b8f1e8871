"""Shared 64-bit cells: the compiled (C11 atomics) and pure (fcntl locks) twins, in one process
and across processes."""

from __future__ import annotations

import contextlib
import importlib
import mmap
import multiprocessing
import os
import tempfile
from collections.abc import Iterator
from types import ModuleType

import pytest

from tiermux._pure import atomics as pure


def _twins() -> list[ModuleType]:
    twins = [pure]
    with contextlib.suppress(ImportError):
        twins.append(importlib.import_module("tiermux._ext.atomics"))
    return twins


@pytest.fixture
def backing() -> Iterator[tuple[int, mmap.mmap]]:
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    os.ftruncate(fd, 4096)
    memory = mmap.mmap(fd, 4096)
    yield fd, memory
    os.close(fd)


@pytest.mark.parametrize("twin", _twins(), ids=lambda m: m.__name__)
def test_operations(twin: ModuleType, backing: tuple[int, mmap.mmap]) -> None:
    fd, memory = backing
    cells = twin.Cells(memory, 64, 4, fd)
    assert cells.count == 4 and cells.load(3) == 0
    assert cells.add(0, 5) == 5
    assert cells.add(0, -7) == -2
    cells.store(1, 2**62)
    assert cells.load(1) == 2**62
    assert cells.compare_exchange(1, 2**62, 3) is True
    assert cells.compare_exchange(1, 2**62, 4) is False and cells.load(1) == 3
    assert cells.add_bounded(2, 60, 100) is True
    assert cells.add_bounded(2, 41, 100) is False  # would pass the limit: nothing added
    assert cells.add_bounded(2, 40, 100) is True and cells.load(2) == 100
    assert cells.load_range(0, 4) == [-2, 3, 100, 0] and cells.load_range(1, 2) == [3, 100]
    assert cells.load_range(4, 0) == []
    with pytest.raises(IndexError):
        cells.load(4)
    for index, count in ((3, 2), (-1, 1), (0, -1)):
        with pytest.raises(IndexError):
            cells.load_range(index, count)
    with pytest.raises(IndexError):
        cells.add(-1, 1)


@pytest.mark.parametrize("twin", _twins(), ids=lambda m: m.__name__)
def test_bad_geometry_is_refused(twin: ModuleType, backing: tuple[int, mmap.mmap]) -> None:
    fd, memory = backing
    for offset, count in ((3, 1), (-8, 1), (4088, 2), (0, -1)):
        with pytest.raises(ValueError):
            twin.Cells(memory, offset, count, fd)


def test_twins_read_each_others_cells(backing: tuple[int, mmap.mmap]) -> None:
    fd, memory = backing
    twins = [t.Cells(memory, 0, 2, fd) for t in _twins()]
    for i, cells in enumerate(twins):
        cells.add(0, i + 1)
    assert all(cells.load(0) == sum(range(1, len(twins) + 1)) for cells in twins)


def _hammer(module_name: str, path: str, rounds: int) -> None:
    module = importlib.import_module(module_name)
    fd = os.open(path, os.O_RDWR)
    memory = mmap.mmap(fd, 4096)
    cells = module.Cells(memory, 0, 2, fd)
    for _ in range(rounds):
        cells.add(0, 1)
        cells.add_bounded(1, 1, 1000)


@pytest.mark.parametrize("twin", _twins(), ids=lambda m: m.__name__)
def test_concurrent_processes_lose_no_update(twin: ModuleType, tmp_path: object) -> None:
    fd, path = tempfile.mkstemp()
    os.ftruncate(fd, 4096)
    try:
        rounds = 3000 if twin is pure else 20000
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=_hammer, args=(twin.__name__, path, rounds)) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
            assert w.exitcode == 0
        cells = twin.Cells(mmap.mmap(fd, 4096), 0, 2, fd)
        assert cells.load(0) == 4 * rounds  # every increment of every process
        assert cells.load(1) == 1000  # the bound held under contention
    finally:
        os.close(fd)
        os.unlink(path)
