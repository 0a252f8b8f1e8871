"""Build knobs for tiermux's compiled hot path; the metadata lives in pyproject.toml.

Set TIERMUX_NO_EXTENSIONS=1 to install without compiling (the pure-Python twins are used),
TIERMUX_DEBUG_BUILD=1 to build with assertions and without optimisation.
"""

import os

from setuptools import Extension, setup

NO_EXTENSIONS = os.environ.get("TIERMUX_NO_EXTENSIONS", "") not in ("", "0")
DEBUG = os.environ.get("TIERMUX_DEBUG_BUILD", "") not in ("", "0")

# Each csrc/NAME.pyx becomes tiermux._ext.NAME; tiermux/_pure/NAME.py is its twin.
COMPILED_MODULES = ["jsonscan", "h1client", "classify", "atomics", "canonical", "sse"]


def extensions() -> list[Extension]:
    if NO_EXTENSIONS:
        return []
    from Cython.Build import cythonize

    compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
    modules = [
        Extension(
            f"tiermux._ext.{name}", [f"csrc/{name}.pyx"], include_dirs=["csrc"], extra_compile_args=compile_args
        )
        for name in COMPILED_MODULES
    ]
    return cythonize(
        modules,
        language_level=3,
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )


setup(ext_modules=extensions())
