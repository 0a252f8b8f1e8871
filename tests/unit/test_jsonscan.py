"""``value_span``: where the top-level ``model`` value sits, identical for both twins."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tiermux._pure import jsonscan as pure
from tiermux._pure.jsonscan import ScanError


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("tiermux._ext.jsonscan")
    except ImportError:
        return None


COMPILED = _compiled()
TWINS = [pytest.param(pure, id="pure"), pytest.param(COMPILED, id="compiled")]


@pytest.fixture(params=TWINS)
def scanner(request: pytest.FixtureRequest) -> ModuleType:
    if request.param is None:
        pytest.skip("compiled jsonscan is not built")
    module: ModuleType = request.param
    return module


def _value(body: bytes, module: ModuleType, key: bytes = b"model") -> bytes | None:
    start, end = module.value_span(body, key)
    if (start, end) == (-1, -1):
        return None
    return body[start:end]


def _outcome(module: ModuleType, body: bytes, key: bytes = b"model") -> tuple[str, Any]:
    """``("ok", span)`` or ``("error", exception class)``; anything else escapes."""
    try:
        return "ok", module.value_span(body, key)
    except ScanError as exc:
        return "error", type(exc)


# --- spans ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"model":"auto"}', b'"auto"'),
        (b'{"model": "auto", "messages": []}', b'"auto"'),
        (b'  \n{ \t"model"\r\n :\n\t "auto" \n}\n ', b'"auto"'),
        (b'{"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"}', b'"gpt-4o"'),
        # a nested "model" key is not the request's model
        (b'{"meta": {"model": "nested"}, "model": "top"}', b'"top"'),
        (b'{"model": "top", "tools": [{"model": "nested", "x": {"model": 1}}]}', b'"top"'),
        (b'{"meta": {"model": "nested"}}', None),
        (b'{"a": [[{"model": "deep"}]], "b": {"c": {"model": "deeper"}}}', None),
        # strings holding braces, brackets, quotes, escapes and a fake member
        (b'{"prompt": "}{][\\"model\\": \\"fake\\"", "model": "real"}', b'"real"'),
        (b'{"prompt": "a\\\\", "model": "real"}', b'"real"'),
        (b'{"prompt": "\\\\\\"}", "model": "m"}', b'"m"'),
        (
            b'{"model": "with \\"quotes\\" and \\\\ and \\u00e9 and }"}',
            b'"with \\"quotes\\" and \\\\ and \\u00e9 and }"',
        ),
        (b'{"model": "caf\xc3\xa9 \xe6\xa8\xa1\xe5\x9e\x8b"}', b'"caf\xc3\xa9 \xe6\xa8\xa1\xe5\x9e\x8b"'),
        # duplicates: the last one wins, as for msgspec and json
        (b'{"model": "first", "x": 1, "model": "second"}', b'"second"'),
        (b'{"model": "first", "model": {"a": "b"}}', b'{"a": "b"}'),
        # an escaped key names the same member
        (b'{"mod\\u0065l": "escaped"}', b'"escaped"'),
        (b'{"model": "plain", "\\u006dodel": "escaped-last"}', b'"escaped-last"'),
        (b'{"mode\\u006c\\u0000": "not-it"}', None),
        # any JSON value
        (b'{"model": 42}', b"42"),
        (b'{"model": -1.5e+10}', b"-1.5e+10"),
        (b'{"model": null}', b"null"),
        (b'{"model": true}', b"true"),
        (b'{"model":false}', b"false"),
        (b'{"model": ["a", {"b": "]"}]}', b'["a", {"b": "]"}]'),
        (b'{"model": {}}', b"{}"),
        (b'{"model": []}', b"[]"),
        (b'{"model": ""}', b'""'),
        # absent
        (b"{}", None),
        (b"  { }  ", None),
        (b'{"models": "x", "mode": "y", "Model": "z", "model ": "w"}', None),
        (b'{"x": "model"}', None),
    ],
)
def test_span(scanner: ModuleType, body: bytes, expected: bytes | None) -> None:
    assert _value(body, scanner) == expected
    if expected is not None:
        start, end = scanner.value_span(body, b"model")
        assert body[start:end] == expected
        assert json.loads(body)["model"] == json.loads(expected)


def test_other_keys(scanner: ModuleType) -> None:
    body = b'{"model": "m", "stream": true, "n": 3, "": "empty key"}'
    assert _value(body, scanner, b"stream") == b"true"
    assert _value(body, scanner, b"n") == b"3"
    assert _value(body, scanner, b"") == b'"empty key"'
    assert _value(body, scanner, b"missing") is None


def test_span_is_spliceable(scanner: ModuleType) -> None:
    body = b'{"messages":[{"content":"say \\"auto\\""}],\n  "model" :  "auto"  ,"seed":7}'
    start, end = scanner.value_span(body, b"model")
    spliced = body[:start] + b'"qwen-9b"' + body[end:]
    assert spliced == b'{"messages":[{"content":"say \\"auto\\""}],\n  "model" :  "qwen-9b"  ,"seed":7}'
    assert json.loads(spliced)["model"] == "qwen-9b"


MALFORMED = [
    b"",
    b"   ",
    b"[]",
    b'["model", "auto"]',
    b'"model"',
    b"42",
    b"null",
    b"{",
    b'{"model"',
    b'{"model":',
    b'{"model": ',
    b'{"model": "auto"',
    b'{"model": "auto",',
    b'{"model": "aut',
    b'{"model": "auto\\"}',
    b'{"model": {"a": 1}',
    b'{"model": [1, 2',
    b'{"model" "auto"}',
    b'{"model": }',
    b'{"model": ,}',
    b'{model: "auto"}',
    b"{'model': 'auto'}",
    b'{"a": 1 "model": "auto"}',
    b'{"a": 1,}',
    b"{,}",
    b'{"mo',
    b'{"model": "a"',
]


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_raises_scan_error(scanner: ModuleType, body: bytes) -> None:
    with pytest.raises(ScanError) as info:
        scanner.value_span(body, b"model")
    assert type(info.value) is ScanError
    assert isinstance(info.value, ValueError)


TWIN_EDGE_CASES = [
    *MALFORMED,
    b'{"model": "auto"} trailing',
    b'{"model": "auto"}}',
    b'{"model": "auto"}{"model": "other"}',
    b'{"model": [1}, "x": 2}',
    b'{"model": {]}',
    b'{"model": tru}',
    b'{"model": 1 2}',
    b'{"model": "a"\x00}',
    b'{"\\": 1}',
    b'{"mod\\u00": 1}',
    b'{"mod\\u0065l": 1, "model\\": 2}',
    b'{"mod\\ul": "bad escape"}',
    b'{"mod\xffel": "not utf-8"}',
    b'{"mod\\u0065\xff": 1}',
    b"\xef\xbb\xbf{}",
]


@pytest.mark.parametrize("body", TWIN_EDGE_CASES)
def test_twins_agree_on_edge_cases(body: bytes) -> None:
    if COMPILED is None:
        pytest.skip("compiled jsonscan is not built")
    assert _outcome(COMPILED, body) == _outcome(pure, body)


# --- properties ----------------------------------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
    | st.sampled_from(["model", "{", "}", "[", "]", '"', "\\", ":", ",", '"model": "x"', "\\u0000"])
)
_KEYS = st.text(alphabet=st.characters(codec="utf-8"), max_size=8) | st.sampled_from(
    ["model", "Model", "models", "mode", "", "\\", '"model"']
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=4),
    max_leaves=20,
)
_OBJECTS = st.tuples(
    st.dictionaries(_KEYS, _VALUES, max_size=6), st.one_of(st.none(), _VALUES), st.integers(min_value=0)
)
_SEPARATORS = st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t"), ("\r\n,", ":\r\n ")])


def _build(parts: tuple[dict[str, Any], Any, int]) -> dict[str, Any]:
    """An object, with a top-level "model" (or not) at a drawn position among its members."""
    members, model, position = parts
    members = {k: v for k, v in members.items() if k != "model"}
    if model is None:
        return members
    items = list(members.items())
    items.insert(position % (len(items) + 1), ("model", model))
    return dict(items)


@settings(max_examples=200)
@given(
    obj=_OBJECTS.map(_build),
    separators=_SEPARATORS,
    indent=st.sampled_from([None, 0, 2, "\t"]),
    ensure_ascii=st.booleans(),
)
def test_property_span_decodes_to_the_model(
    obj: dict[str, Any], separators: tuple[str, str], indent: int | str | None, ensure_ascii: bool
) -> None:
    body = json.dumps(obj, separators=separators, indent=indent, ensure_ascii=ensure_ascii).encode()
    span = pure.value_span(body, b"model")
    if COMPILED is not None:
        assert COMPILED.value_span(body, b"model") == span
    if "model" in obj:
        start, end = span
        assert json.loads(body[start:end]) == obj["model"]
        # the span is exactly one JSON value: nothing but the value is inside it
        assert body[start:end] == body[start:end].strip()
    else:
        assert span == (-1, -1)


_JSONISH = st.lists(
    st.sampled_from(
        [
            b"{",
            b"}",
            b"[",
            b"]",
            b'"',
            b":",
            b",",
            b"\\",
            b" ",
            b"\n",
            b"model",
            b'"model"',
            b"1",
            b"u",
            b"true",
            b"null",
            b"\xff",
            b"\x00",
            b"\\u0065",
            b"mod",
        ]
    ),
    max_size=30,
).map(b"".join)


def _check_random(body: bytes) -> None:
    outcome = _outcome(pure, body)
    if COMPILED is not None:
        assert _outcome(COMPILED, body) == outcome
    if outcome[0] == "ok":
        start, end = outcome[1]
        assert (start, end) == (-1, -1) or 0 <= start < end <= len(body)


@settings(max_examples=300)
@given(body=st.binary(max_size=64))
@example(body=b'{"model":"x"}')
def test_property_random_bytes(body: bytes) -> None:
    _check_random(body)


@settings(max_examples=500)
@given(body=_JSONISH, prefix=st.sampled_from([b"", b"{", b'{"model":', b'{"a":1,']))
def test_property_json_like_bytes(body: bytes, prefix: bytes) -> None:
    _check_random(prefix + body)


@given(obj=_OBJECTS.map(_build), cut=st.integers(min_value=0))
def test_property_truncated_bodies_fail_alike(obj: dict[str, Any], cut: int) -> None:
    body = json.dumps(obj).encode()
    truncated = body[: cut % len(body)]
    outcome = _outcome(pure, truncated)
    assert outcome == ("error", ScanError)  # a strict prefix of an object never closes it
    if COMPILED is not None:
        assert _outcome(COMPILED, truncated) == outcome


def _both() -> list[Callable[[bytes, bytes], tuple[int, int]]]:
    return [m.value_span for m in (pure, COMPILED) if m is not None]


def test_large_body() -> None:
    filler = json.dumps({"messages": [{"role": "user", "content": "x" * 1000 + '\\"}{'}] * 2000})
    body = (filler[:-1] + ', "model": "auto"}').encode()
    for value_span in _both():
        start, end = value_span(body, b"model")
        assert body[start:end] == b'"auto"'


# --- glances at an answer -------------------------------------------------------------------------


def test_first_text_finds_the_first_non_empty_text(scanner: ModuleType) -> None:
    first_text = scanner.first_text
    chat = b'{"choices":[{"message":{"role":"assistant","content":"Hi"}}]}'
    assert chat[first_text(chat) :].startswith(b'"Hi"')
    stream = b'data: {"delta":{"content":""}}\n\ndata: {"delta":{"content": "Yo"}}\n\n'
    assert stream[first_text(stream) :].startswith(b'"Yo"')
    completion = b'{"choices":[{"text":"def f(): pass"}]}'
    assert completion[first_text(completion) :].startswith(b'"def')
    for nothing in (
        b"",
        b'{"content":""}',
        b'{"content":null}',
        b'{"content":"',
        b'{"error":{"message":"x"}}',
    ):
        assert first_text(nothing) == (len(nothing) - 1 if nothing.endswith(b'"content":"') else -1)


def test_any_of_ignores_ascii_case_and_stays_in_its_window(scanner: ModuleType) -> None:
    words = scanner.AnyOf([b"Sorry", b"i can't", "i can\u2019t".encode()])
    assert words.words == (b"sorry", b"i can't", "i can\u2019t".encode())
    text = "Well. SORRY, I CAN\u2019T.".encode()
    assert words.search(text, 0, len(text)) == 6
    assert words.search(text, 7, len(text)) == 13  # the right single quote, byte for byte
    assert words.search(text, 0, 10) == -1  # "SORRY" would end past the window
    assert words.search(text, -5, 1000) == 6 and words.search(text, 5, 2) == -1
    with pytest.raises(ValueError):
        scanner.AnyOf([])
    with pytest.raises(ValueError):
        scanner.AnyOf([b"ok", b""])


_GLANCED = st.lists(
    st.sampled_from(
        [
            b'"content":"',
            b'"content": "',
            b'"text":"',
            b'"',
            b"I",
            b"i",
            b" ",
            b"'",
            b"can",
            b"CAN'T",
            b"sorry",
            b"SoRrY",
            b"x",
            b"\\",
            b"\xe2\x80\x99",
            b"t",
            b"\n",
            b"{",
            b"}",
        ]
    ),
    max_size=40,
).map(b"".join)


@pytest.mark.skipif(COMPILED is None, reason="compiled jsonscan is not built")
@settings(max_examples=500)
@given(data=_GLANCED, start=st.integers(-3, 60), width=st.integers(-5, 80))
def test_property_twins_glance_alike(data: bytes, start: int, width: int) -> None:
    assert COMPILED is not None
    assert COMPILED.first_text(data) == pure.first_text(data)
    words = [b"sorry", b"i can't", b"can", b"i \xe2\x80\x99", b"x"]
    assert COMPILED.AnyOf(words).search(data, start, start + width) == pure.AnyOf(words).search(
        data, start, start + width
    )
