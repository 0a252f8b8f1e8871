"""The exact-cache key: what changes it, and what must not."""

from __future__ import annotations

import json
from typing import Any

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from tiermux._speedups import canonical
from tiermux.cache import key as key_module
from tiermux.cache.key import KEY_FIELDS, CacheKeyError, cache_key, deterministic, sampling_of

BASE: dict[str, Any] = {
    "model": "auto",
    "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Is 7 prime?"},
    ],
    "temperature": 0,
}


def key(
    body: dict[str, Any] | bytes, service: str = "default", backend: str = "local", model: str = "m"
) -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return cache_key(raw, "/chat/completions", service, backend, model)


def test_a_key_is_sixteen_bytes_and_stable() -> None:
    assert len(key(BASE)) == 16
    assert key(BASE) == key(dict(BASE))


@pytest.mark.parametrize(
    "change",
    [
        {"messages": [{"role": "user", "content": "Is 9 prime?"}]},
        {"stop": ["\n"]},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"tool_choice": "none"},
        {"response_format": {"type": "json_object"}},
        {"temperature": 0.5},
        {"top_p": 0.9},
        {"seed": 1},
        {"max_tokens": 10},
        {"max_completion_tokens": 10},
        {"n": 2},
        {"presence_penalty": 0.1},
        {"frequency_penalty": 0.1},
        {"logit_bias": {"50256": -100}},
        {"logprobs": True},
        {"top_logprobs": 2},
    ],
    ids=lambda change: next(iter(change)),
)
def test_every_field_that_changes_the_answer_changes_the_key(change: dict[str, Any]) -> None:
    assert key(BASE | change) != key(BASE)


def test_service_backend_model_and_endpoint_change_the_key() -> None:
    assert key(BASE, service="team-a") != key(BASE, service="team-b")
    assert key(BASE, backend="a") != key(BASE, backend="b")
    assert key(BASE, model="a") != key(BASE, model="b")
    body = json.dumps(BASE).encode()
    assert cache_key(body, "/chat/completions", "s", "b", "m") != cache_key(
        body, "/completions", "s", "b", "m"
    )


def test_a_key_is_the_digest_of_the_route_then_the_canonical_form() -> None:
    # Keys outlive a process (shared caches, rolling restarts): how they are made must not drift.
    body = json.dumps(BASE).encode()
    expected = xxhash.xxh3_128_digest(
        b"default\0local\0m\0/chat/completions\0" + canonical.canonical(body, KEY_FIELDS)
    )
    assert key(body) == expected


def test_remembered_and_forgotten_routes_give_the_same_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps(BASE).encode()
    first = [cache_key(body, "/chat/completions", f"s{i}", "b", "m") for i in range(5)]
    monkeypatch.setattr(key_module, "_routes", {})
    monkeypatch.setattr(key_module, "_MAX_ROUTES", 2)
    again = [cache_key(body, "/chat/completions", f"s{i}", "b", "m") for i in range(5)]
    assert again == first
    assert len(set(first)) == 5
    assert len(key_module._routes) <= 2


def test_key_order_whitespace_and_number_spelling_do_not() -> None:
    reordered = (
        b'{ "temperature" : 0.0 ,"messages":[{"content":"Answer briefly.","role":"system"},\n'
        b'  {"content": "Is 7 prime?", "role": "user"}], "model": "auto"}'
    )
    assert key(reordered) == key(BASE)


def test_fields_that_do_not_change_the_text_do_not_change_the_key() -> None:
    extra = {"stream": True, "stream_options": {"include_usage": True}, "user": "u-1", "metadata": {"a": 1}}
    assert key(BASE | extra) == key(BASE)
    assert key(BASE | {"model": "something-else"}) == key(BASE)  # the routed backend/model count


def test_a_body_that_is_not_a_json_object_is_refused() -> None:
    for body in (b"[]", b"not json", b'{"messages": [1, 2}', b'{"a": 1} trailing'):
        with pytest.raises(CacheKeyError):
            cache_key(body, "/chat/completions", "s", "b", "m")
    with pytest.raises(CacheKeyError):
        sampling_of(b'{"temperature": "hot"}')


def test_only_greedy_or_seeded_requests_are_deterministic() -> None:
    assert deterministic(sampling_of(b'{"temperature": 0}'))
    assert deterministic(sampling_of(b'{"temperature": 0.0, "messages": []}'))
    assert deterministic(sampling_of(b'{"temperature": 0.7, "seed": 3}'))
    assert not deterministic(sampling_of(b'{"temperature": 0.7}'))
    assert not deterministic(sampling_of(b"{}"))  # the backend's default temperature


@given(st.text(max_size=200), st.text(max_size=200))
def test_different_questions_never_share_a_key(first: str, second: str) -> None:
    a = BASE | {"messages": [{"role": "user", "content": first}]}
    b = BASE | {"messages": [{"role": "user", "content": second}]}
    assert (key(a) == key(b)) == (first == second)
