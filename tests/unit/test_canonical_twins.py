"""Canonical JSON (the cache key's form): the compiled and pure twins give the same bytes, and
the bytes mean what the body meant."""

from __future__ import annotations

import contextlib
import importlib
import json
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiermux._pure import canonical as pure


def _twins() -> list[ModuleType]:
    twins = [pure]
    with contextlib.suppress(ImportError):
        twins.append(importlib.import_module("tiermux._ext.canonical"))
    return twins


TWINS = _twins()
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


def _same(body: bytes, fields: Any = None) -> bytes:
    outputs = {twin.__name__: twin.canonical(body, fields) for twin in TWINS}
    assert len(set(outputs.values())) == 1, outputs
    return next(iter(outputs.values()))


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5), st.booleans(), st.booleans())
def test_twins_agree_and_keep_the_meaning(obj: dict[str, Any], ascii_only: bool, indented: bool) -> None:
    body = json.dumps(obj, ensure_ascii=ascii_only, indent=1 if indented else None).encode(
        "utf-8", "surrogatepass"
    )
    out = _same(body)
    assert json.loads(out.decode("utf-8", "surrogatepass")) == json.loads(
        body.decode("utf-8", "surrogatepass")
    )
    # Reordered and re-spaced, it is the same form.
    shuffled = json.dumps(dict(reversed(list(obj.items()))), ensure_ascii=not ascii_only, indent=2).encode(
        "utf-8", "surrogatepass"
    )
    assert _same(shuffled) == out


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"b": 1.0, "a": [1, 2e0, -0, 00, -007, 0.5, 1e16]}', b'{"a":[1,2,0,0,-7,0.5,1e+16],"b":1}'),
        (b'{"k": 1, "k": 2, "j": {"y": 1, "x": 2}}', b'{"j":{"x":2,"y":1},"k":2}'),
        (
            b'{"s": "\\u00e9\\n\\/\\"\\\\ \\ud83d\\ude00 \\ud800"}',
            '{"s":"é\\u000a/\\"\\\\ 😀 \\ud800"}'.encode(),
        ),
        (b' { "a" : { } , "b" : [ ] } ', b'{"a":{},"b":[]}'),
    ],
)
def test_the_canonical_spelling(body: bytes, expected: bytes) -> None:
    assert _same(body) == expected


def test_only_the_named_top_level_members_are_kept() -> None:
    body = b'{"messages": [{"b": 1, "a": 2}], "user": "u", "temperature": 0.0}'
    assert (
        _same(body, frozenset({b"messages", b"temperature", b"b"}))
        == b'{"messages":[{"a":2,"b":1}],"temperature":0}'
    )


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"",
        b'{"a":}',
        b'{"a":1,}',
        b'{"a":"x}',
        b'{"a":1e999}',
        b'{"a":1-2}',
        b'{"a":tru}',
        b'{"a":"\\x"}',
        b'{"a":"\\u12"}',
        b'{"a":1} x',
        b'{"a":[1 2]}',
        b'{"a":' + b"[" * 200 + b"]" * 200 + b"}",
    ],
)
def test_both_twins_refuse_what_is_not_json(body: bytes) -> None:
    for twin in TWINS:
        with pytest.raises(pure.CanonicalError):
            twin.canonical(body)
