"""The one place that chooses compiled or pure-Python hot-path code.

Every module built from ``csrc/`` has a twin under ``tiermux._pure`` with the same names, results and
exceptions. ``TIERMUX_NO_EXTENSIONS=1`` forces the twins; otherwise the compiled modules are used
when they were built, and the twins when they were not (an install without a compiler still works).
Nothing else in the package imports ``tiermux._ext`` directly.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ["COMPILED", "NO_EXTENSIONS", "atomics", "canonical", "classify", "h1client", "jsonscan"]

NO_EXTENSIONS: bool = os.environ.get("TIERMUX_NO_EXTENSIONS", "") not in ("", "0")


def _load() -> tuple[bool, ModuleType, ModuleType, ModuleType, ModuleType, ModuleType]:
    if not NO_EXTENSIONS:
        try:
            from tiermux._ext import atomics as c_atomics
            from tiermux._ext import canonical as c_canonical
            from tiermux._ext import classify as c_classify
            from tiermux._ext import h1client as c_h1client
            from tiermux._ext import jsonscan as c_jsonscan
        except ImportError:
            pass
        else:
            return True, c_jsonscan, c_h1client, c_classify, c_atomics, c_canonical
    from tiermux._pure import atomics as py_atomics
    from tiermux._pure import canonical as py_canonical
    from tiermux._pure import classify as py_classify
    from tiermux._pure import h1client as py_h1client
    from tiermux._pure import jsonscan as py_jsonscan

    return False, py_jsonscan, py_h1client, py_classify, py_atomics, py_canonical


if TYPE_CHECKING:  # both twins share one interface; type-check against the pure one
    from tiermux._pure import atomics, canonical, classify, h1client, jsonscan

    COMPILED: bool
else:
    COMPILED, jsonscan, h1client, classify, atomics, canonical = _load()
