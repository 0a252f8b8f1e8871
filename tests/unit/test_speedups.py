"""The picker: which twin is loaded, and that the run was asked for is the one that happened."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

import tiermux._pure.atomics as pure_atomics
import tiermux._pure.classify as pure_classify
import tiermux._pure.h1client as pure_h1client
import tiermux._pure.jsonscan as pure_jsonscan
import tiermux._pure.sse as pure_sse
from tiermux import _speedups
from tiermux.dialects import streams
from tiermux.routing.weights import load_weights
from tiermux.upstream import pool
from tiermux.upstream.errors import UpstreamError

EXPECT_COMPILED = os.environ.get("TIERMUX_EXPECT_COMPILED", "") not in ("", "0")
NO_EXTENSIONS = os.environ.get("TIERMUX_NO_EXTENSIONS", "") not in ("", "0")


def _compiled_available() -> bool:
    try:
        importlib.import_module("tiermux._ext.jsonscan")
        importlib.import_module("tiermux._ext.h1client")
        importlib.import_module("tiermux._ext.classify")
        importlib.import_module("tiermux._ext.atomics")
        importlib.import_module("tiermux._ext.sse")
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not EXPECT_COMPILED, reason="only when the compiled build is expected")
def test_compiled_extensions_are_loaded() -> None:
    assert not NO_EXTENSIONS, "TIERMUX_EXPECT_COMPILED=1 contradicts TIERMUX_NO_EXTENSIONS=1"
    assert _speedups.COMPILED is True
    for module, name in (
        (_speedups.jsonscan, "jsonscan"),
        (_speedups.h1client, "h1client"),
        (_speedups.classify, "classify"),
        (_speedups.atomics, "atomics"),
        (_speedups.canonical, "canonical"),
        (_speedups.sse, "sse"),
    ):
        assert module.__name__ == f"tiermux._ext.{name}"
        assert module.__file__ is not None
        assert module.__file__.endswith(".so"), module.__file__
    # The hot path really uses them.
    assert pool.h1client is _speedups.h1client
    assert pool.h1client.Connection.__module__ == "tiermux._ext.h1client"
    assert pool.h1client.Response.__module__ == "tiermux._ext.h1client"
    assert type(load_weights().model).__module__ == "tiermux._ext.classify"  # the router's model
    assert streams.MessagesFromChatStream.__module__ == "tiermux._ext.sse"  # and the translators


@pytest.mark.skipif(not NO_EXTENSIONS, reason="only when the pure twins are forced")
def test_pure_twins_are_loaded() -> None:
    assert _speedups.NO_EXTENSIONS is True
    assert _speedups.COMPILED is False
    assert _speedups.jsonscan is pure_jsonscan
    assert _speedups.h1client is pure_h1client
    assert _speedups.classify is pure_classify
    assert _speedups.atomics is pure_atomics
    assert _speedups.sse is pure_sse
    assert streams.ChatFromMessagesStream is pure_sse.ChatFromMessagesStream
    assert pool.h1client is pure_h1client
    assert type(load_weights().model) is pure_classify.Model


def test_compiled_flag_matches_the_modules() -> None:
    prefix = "tiermux._ext." if _speedups.COMPILED else "tiermux._pure."
    assert _speedups.jsonscan.__name__.startswith(prefix)
    assert _speedups.h1client.__name__.startswith(prefix)
    assert _speedups.classify.__name__.startswith(prefix)
    assert _speedups.atomics.__name__.startswith(prefix)
    assert _speedups.sse.__name__.startswith(prefix)


def test_twins_share_names_and_exceptions() -> None:
    if not _compiled_available():
        pytest.skip("compiled extensions are not built")
    from tiermux._ext import h1client as c_h1client
    from tiermux._ext import jsonscan as c_jsonscan

    assert set(c_jsonscan.__all__) == set(pure_jsonscan.__all__)
    assert set(c_h1client.__all__) == set(pure_h1client.__all__)
    from tiermux._ext import classify as c_classify

    assert set(c_classify.__all__) == set(pure_classify.__all__)
    assert c_classify.TextStats is pure_classify.TextStats
    from tiermux._ext import sse as c_sse

    assert set(c_sse.__all__) == set(pure_sse.__all__)
    assert c_classify.FEATURES_VERSION == pure_classify.FEATURES_VERSION
    # One exception class, defined in Python, raised by both.
    assert c_jsonscan.ScanError is pure_jsonscan.ScanError
    assert issubclass(c_jsonscan.ScanError, ValueError)
    assert (c_h1client.HIGH_WATER, c_h1client.LOW_WATER) == (
        pure_h1client.HIGH_WATER,
        pure_h1client.LOW_WATER,
    )
    assert issubclass(pure_h1client.ConnectionClosed, UpstreamError)


_PROBE = (
    "import json, tiermux._speedups as s, tiermux.upstream.pool as p; "
    "print(json.dumps([s.COMPILED, s.jsonscan.__name__, s.h1client.__name__, "
    "p.h1client.Connection.__module__]))"
)


def _probe(flag: str | None) -> list[object]:
    env = {k: v for k, v in os.environ.items() if k != "TIERMUX_NO_EXTENSIONS"}
    if flag is not None:
        env["TIERMUX_NO_EXTENSIONS"] = flag
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    result: list[object] = json.loads(out.stdout)
    return result


def test_no_extensions_flag_forces_the_twins_even_when_built() -> None:
    assert _probe("1") == [
        False,
        "tiermux._pure.jsonscan",
        "tiermux._pure.h1client",
        "tiermux._pure.h1client",
    ]


@pytest.mark.parametrize("flag", [None, "0"])
def test_compiled_is_used_when_built_and_not_forced_off(flag: str | None) -> None:
    if not _compiled_available():
        pytest.skip("compiled extensions are not built")
    assert _probe(flag) == [True, "tiermux._ext.jsonscan", "tiermux._ext.h1client", "tiermux._ext.h1client"]


FIRST_IMPORTS = [
    "tiermux.accounting.usage",
    "tiermux._speedups",
    "tiermux._pure.sse",
    "tiermux.dialects.streams",
]


@pytest.mark.parametrize("first", FIRST_IMPORTS)
def test_the_translators_load_whichever_module_is_imported_first(first: str) -> None:
    # tiermux._speedups -> sse -> tiermux.accounting.usage -> tiermux._speedups: sse is loaded on
    # first use, so that no order finds a module half-made.
    code = f"import {first}; from tiermux.dialects.streams import MessagesFromChatStream; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
