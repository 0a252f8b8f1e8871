"""The one place that chooses compiled or pure-Python hot-path code.

Every module built from ``csrc/`` has a twin under ``tiermux._pure`` with the same names, results and
exceptions. ``TIERMUX_NO_EXTENSIONS=1`` forces the twins; otherwise the compiled modules are used
when they were built, and the twins when they were not (an install without a compiler still works).
Nothing else in the package imports ``tiermux._ext`` directly.

``sse`` (the stream translators) is chosen the same way but on first use: it reads
``tiermux.accounting.usage``, which reads ``jsonscan`` from here, so loading it with the others
would make whichever of the two modules is imported first import the other half-made.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ["COMPILED", "NO_EXTENSIONS", "atomics", "canonical", "classify", "h1client", "jsonscan", "sse"]

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


def _load_sse(compiled: bool) -> ModuleType:
    """The translators' module: compiled with the others, or the twin with theirs (and when a build
    predates it, so that the other compiled modules are kept)."""
    if compiled:
        try:
            from tiermux._ext import sse as c_sse
        except ImportError:
            pass
        else:
            return c_sse
    from tiermux._pure import sse as py_sse

    return py_sse


if TYPE_CHECKING:  # both twins share one interface; type-check against the pure one
    from tiermux._pure import atomics, canonical, classify, h1client, jsonscan, sse

    COMPILED: bool
else:
    COMPILED, jsonscan, h1client, classify, atomics, canonical = _load()

    def __getattr__(name: str) -> ModuleType:
        if name == "sse":
            module = globals()["sse"] = _load_sse(COMPILED)
            return module
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
