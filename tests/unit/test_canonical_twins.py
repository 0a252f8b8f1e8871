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


def _same(body: bytes, fields: Any = None, prefix: bytes = b"") -> bytes:
    outputs = {twin.__name__: twin.canonical(body, fields, prefix) for twin in TWINS}
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
        # Plain decimals are spelled without the float parser when their digits allow it: the
        # edges of that (15 significant digits, 1e-4, no fraction left) read as repr() has them.
        (
            b'{"a": [0.1, -0.5, 12.340, 00.5, -0.0, 5.000, 0.0001, 0.00001, -0.00012, 123456789012345.0,'
            b" 1234567890123456.0, 0.123456789012345, 0.1234567890123456, 99999999999999.9, .5, 1., +1.5]}",
            b'{"a":[0.1,-0.5,12.34,0.5,0,5,0.0001,1e-05,-0.00012,123456789012345,1234567890123456,'
            b"0.123456789012345,0.1234567890123456,99999999999999.9,0.5,1,1.5]}",
        ),
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
    "fields",
    [
        frozenset({b"stop", b"n", b""}),  # all bytes: looked up without a bytes object
        {b"stop", b"n", b""},
        [b"stop", b"n", b""],
        frozenset({"stop", b"stop", b"n", b""}),  # not all bytes: the set itself decides
    ],
    ids=["frozenset", "set", "list", "mixed-frozenset"],
)
def test_every_kind_of_fields_collection_keeps_the_same_members(fields: Any) -> None:
    # A name is matched once its escapes are resolved; of duplicates the last is kept.
    body = b'{"stop": 1, "stoq": 2, "n": 3, "m": 4, "": 5, "\\u0073top": 6, "user": {"x": [1]}}'
    assert _same(body, fields) == b'{"":5,"n":3,"stop":6}'


def test_the_result_starts_with_the_prefix() -> None:
    body = b'{"b": 1, "a": "x"}'
    assert _same(body, None, b"route\0") == b'route\0{"a":"x","b":1}'
    assert _same(body, frozenset({b"a"}), b"") == b'{"a":"x"}'


@pytest.mark.parametrize(
    "special", ['\\"', "\\\\", "\\n", "\\/", "\\u00e9", "\\ud83d\\ude00", "\x01", "\x1f", "é", ""]
)
def test_strings_read_in_blocks_agree_wherever_the_escape_falls(special: str) -> None:
    for before in range(0, 40):
        for after in (0, 1, 15, 16, 17):
            text = "x" * before + special + "y" * after
            body = ('{"a": "' + text + '", "b": ["' + text + '"]}').encode()
            out = _same(body)
            assert json.loads(out) == json.loads(body, strict=False)


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
        b'{"a":"\\x',  # a string that never ends is that first, whatever it holds
        b'{"a":"abc\\',
        b'{"a":"\\u12',
        b'{"a":"' + b"x" * 40 + b'\\u00zz"}',
        b'{"a":-}',
        b'{"user":"x',
        b'{"a":1}  \n x',
    ],
)
def test_both_twins_refuse_what_is_not_json(body: bytes) -> None:
    reasons = set()
    for twin in TWINS:
        with pytest.raises(pure.CanonicalError) as refused:
            twin.canonical(body)
        reasons.add(str(refused.value))
    assert len(reasons) == 1, reasons


@given(st.from_regex(r"-?[0-9]{1,18}\.[0-9]{1,20}", fullmatch=True))
def test_plain_decimals_are_spelled_as_floats(token: str) -> None:
    out = _same(b'{"a": ' + token.encode() + b"}")
    value = float(token)
    spelled = str(int(value)) if value == int(value) and abs(value) < 2**53 else repr(value)
    assert out == b'{"a":' + spelled.encode() + b"}"
