"""An Anthropic request is routed as its OpenAI equivalent is: the classifier reads the same
texts and signals from either dialect."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.support import DEMO_CONFIG

from tiermux.config import load_config
from tiermux.dialects.requests import chat_from_messages
from tiermux.routing.request import decode_chat, decode_messages, from_chat, from_messages
from tiermux.routing.router import Router

WEATHER = {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}
CALL = {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}
IMAGE = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}

CONVERSATIONS: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "Extract every city from: I moved to Lyon in 2019."}]},
    {
        "system": [{"type": "text", "text": "You are terse."}],
        "messages": [
            {"role": "user", "content": "Write a haiku about autumn."},
            {"role": "assistant", "content": "Leaves fall."},
            {"role": "user", "content": [{"type": "text", "text": "Now one about spring."}, IMAGE]},
        ],
    },
    {
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather in Paris, and should I take an umbrella?"},
            {"role": "assistant", "content": [CALL]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "rain"}]},
        ],
    },
]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_an_anthropic_request_reads_as_its_chat_translation(conversation: dict[str, Any]) -> None:
    body = json.dumps({"model": "auto", "max_tokens": 300, **conversation}).encode()
    anthropic = from_messages(decode_messages(body))
    openai = from_chat(decode_chat(chat_from_messages(body)))
    for name in ("last", "system", "previous", "tools", "image", "max_tokens"):
        assert getattr(anthropic, name) == getattr(openai, name), name
    router = Router(load_config(DEMO_CONFIG, env={}))
    route = router.resolve("auto")
    assert router.decide(route, anthropic, []).tier == router.decide(route, openai, []).tier


def test_a_turn_of_tool_results_alone_does_not_change_the_task() -> None:
    body = json.dumps({"model": "auto", "max_tokens": 10, **CONVERSATIONS[2]}).encode()
    text = from_messages(decode_messages(body))
    assert text.last == "Weather in Paris, and should I take an umbrella?"
    assert text.tools and text.turns == 1
