"""Request bodies translated between Anthropic Messages and OpenAI Chat Completions: every block
both ways, exact output for representative requests, round trips, and every refusal."""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import msgspec
import pydantic
import pytest
from anthropic.types import message_create_params
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import completion_create_params

from tiermux.api.errors import BadRequest
from tiermux.dialects import Untranslatable
from tiermux.dialects.requests import chat_from_messages, messages_from_chat

Json = dict[str, Any]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def to_chat(request: Json) -> Json:
    out = chat_from_messages(json.dumps(request).encode())
    assert out.startswith(b'{"model":')
    said: Json = json.loads(out)
    return said


def to_messages(request: Json, **kwargs: Any) -> Json:
    out = messages_from_chat(json.dumps(request).encode(), **kwargs)
    assert out.startswith(b'{"model":')
    said: Json = json.loads(out)
    return said


def ask(*messages: Json, **top: Any) -> Json:
    """An Anthropic request."""
    return {"model": "claude-x", "max_tokens": 256, "messages": list(messages), **top}


def chat(*messages: Json, **top: Any) -> Json:
    """An OpenAI request."""
    return {"model": "gpt-x", "messages": list(messages), **top}


def user(content: Any) -> Json:
    return {"role": "user", "content": content}


def assistant(content: Any, **more: Any) -> Json:
    return {"role": "assistant", "content": content, **more}


def text(value: str, **more: Any) -> Json:
    return {"type": "text", "text": value, **more}


def tool_use(ident: str, name: str, arguments: Json) -> Json:
    return {"type": "tool_use", "id": ident, "name": name, "input": arguments}


def tool_result(ident: str, content: Any = None, **more: Any) -> Json:
    block = {"type": "tool_result", "tool_use_id": ident, **more}
    if content is not None:
        block["content"] = content
    return block


def call(ident: str, name: str, arguments: str) -> Json:
    return {"id": ident, "type": "function", "function": {"name": name, "arguments": arguments}}


CACHE = {"cache_control": {"type": "ephemeral"}}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


# --- the official SDKs' request shapes ------------------------------------------------------------


@functools.cache
def _adapters() -> tuple[pydantic.TypeAdapter[Any], pydantic.TypeAdapter[Any]]:
    return (
        pydantic.TypeAdapter(completion_create_params.CompletionCreateParamsNonStreaming),
        pydantic.TypeAdapter(message_create_params.MessageCreateParamsNonStreaming),
    )


def _force(value: Any) -> None:
    """Iterate whatever pydantic validates lazily (``Iterable`` fields), so that it is checked."""
    if isinstance(value, dict):
        for item in value.values():
            _force(item)
    elif not isinstance(value, str | bytes | int | float | type(None)):  # lists and lazy iterables
        for item in value:
            _force(item)


def valid_chat(request: Json) -> None:
    """``request`` has the shape of an OpenAI chat request, as the OpenAI SDK types it."""
    _force(_adapters()[0].validate_python({**request, "stream": False}))


def valid_messages(request: Json) -> None:
    """``request`` has the shape of an Anthropic Messages request, as the Anthropic SDK types it."""
    _force(_adapters()[1].validate_python({**request, "stream": False}))


# --- Anthropic -> OpenAI: exact output ----------------------------------------------------------

CONVERSATION = ask(
    user("What's the weather in Paris and Rome?"),
    assistant(
        [
            text("Let me look."),
            tool_use("toolu_1", "weather", {"city": "Paris"}),
            tool_use("toolu_2", "weather", {"city": "Rome", "unit": "°C"}),
        ]
    ),
    user(
        [
            tool_result("toolu_1", "18°C"),
            tool_result("toolu_2", [text("21"), text("sunny")], is_error=False),
            text("And in Oslo?"),
        ]
    ),
    system=[text("You are terse.", **CACHE)],
    tools=[{"name": "weather", "description": "Weather now", "input_schema": WEATHER, **CACHE}],
    tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    stop_sequences=["END"],
    temperature=0.3,
    top_p=0.9,
    top_k=40,
    metadata={"user_id": "user-7"},
    stream=True,
)


def test_a_conversation_with_tools_is_said_in_openai_terms() -> None:
    assert to_chat(CONVERSATION) == {
        "model": "claude-x",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What's the weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    call("toolu_1", "weather", '{"city":"Paris"}'),
                    call("toolu_2", "weather", '{"city":"Rome","unit":"°C"}'),
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18°C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "21\nsunny"},
            {"role": "user", "content": "And in Oslo?"},
        ],
        "max_tokens": 256,
        "tools": [
            {
                "type": "function",
                "function": {"name": "weather", "description": "Weather now", "parameters": WEATHER},
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "stop": ["END"],
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 40,
        "user": "user-7",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    valid_chat(to_chat(CONVERSATION))


def test_the_model_comes_first_whatever_the_client_order() -> None:
    body = b'{"max_tokens":5,"messages":[{"role":"user","content":"hi"}],"model":"m"}'
    assert (
        chat_from_messages(body)
        == b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5}'
    )


@pytest.mark.parametrize(
    ("system", "said"),
    [
        ("Be brief.", [{"role": "system", "content": "Be brief."}]),
        ([text("Be brief.")], [{"role": "system", "content": "Be brief."}]),
        (
            [text("One.", **CACHE), text("Two.")],
            [{"role": "system", "content": [text("One."), text("Two.")]}],
        ),
        ("", []),
        ([], []),
        (None, []),
    ],
)
def test_system_becomes_a_first_system_message(system: Any, said: list[Json]) -> None:
    assert to_chat(ask(user("hi"), system=system))["messages"] == [*said, {"role": "user", "content": "hi"}]


def test_a_system_message_among_the_messages_keeps_its_place() -> None:
    request = ask(user("hi"), {"role": "system", "content": [text("Now in French.")]}, user("salut"))
    assert to_chat(request)["messages"][1] == {"role": "system", "content": "Now in French."}


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("hello", "hello"),
        ([text("hello", **CACHE)], "hello"),
        ([text("a"), text("b")], [text("a"), text("b")]),
        (
            [
                text("What is this?"),
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            ],
            [
                text("What is this?"),
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        ),
        (
            [{"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}, **CACHE}],
            [{"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}],
        ),
        ([], ""),
    ],
)
def test_user_content(content: Any, said: Any) -> None:
    assert to_chat(ask(user(content)))["messages"] == [{"role": "user", "content": said}]
    valid_chat(to_chat(ask(user(content))))


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("Sure.", {"content": "Sure."}),
        ([text("Sure.")], {"content": "Sure."}),
        ([text("a"), text("b")], {"content": [text("a"), text("b")]}),
        ([], {"content": ""}),
        (
            [tool_use("t1", "f", {})],
            {"content": None, "tool_calls": [call("t1", "f", "{}")]},
        ),
        (
            [tool_use("t1", "f", {"q": [1, 2.5, None, True], "s": 'a "quote"'}), text("after")],
            {
                "content": "after",
                "tool_calls": [call("t1", "f", '{"q":[1,2.5,null,true],"s":"a \\"quote\\""}')],
            },
        ),
    ],
)
def test_assistant_content(content: Any, said: Json) -> None:
    assert to_chat(ask(user("q"), assistant(content)))["messages"][1] == {"role": "assistant", **said}


@pytest.mark.parametrize(
    ("block", "content"),
    [
        (tool_result("t1", "42"), "42"),
        (tool_result("t1"), ""),
        (tool_result("t1", []), ""),
        (tool_result("t1", [text("a", **CACHE), text("b")]), "a\nb"),
        (tool_result("t1", "no such city", is_error=True), "Error: no such city"),
        (tool_result("t1", [text("boom")], is_error=True), "Error: boom"),
        (tool_result("t1", is_error=True), "Error"),
        (tool_result("t1", "fine", is_error=False, **CACHE), "fine"),
    ],
)
def test_tool_results_become_tool_messages(block: Json, content: str) -> None:
    request = ask(user("q"), assistant([tool_use("t1", "f", {})]), user([block]))
    assert to_chat(request)["messages"][2:] == [{"role": "tool", "tool_call_id": "t1", "content": content}]


def test_tool_results_come_before_the_rest_of_their_turn() -> None:
    request = ask(
        user("q"),
        assistant([tool_use("a", "f", {}), tool_use("b", "f", {})]),
        user([text("Here you go:"), tool_result("a", "1"), text("and"), tool_result("b", "2")]),
    )
    assert to_chat(request)["messages"][2:] == [
        {"role": "tool", "tool_call_id": "a", "content": "1"},
        {"role": "tool", "tool_call_id": "b", "content": "2"},
        {"role": "user", "content": [text("Here you go:"), text("and")]},
    ]
    valid_chat(to_chat(request))


def test_tools_and_their_settings() -> None:
    tools = [
        {"name": "plain", "input_schema": {"type": "object"}},
        {
            "type": "custom",
            "name": "strict",
            "description": "d",
            "input_schema": WEATHER,
            "strict": True,
            **CACHE,
        },
        {"name": "loose", "input_schema": WEATHER, "strict": False, "description": None},
    ]
    assert to_chat(ask(user("q"), tools=tools))["tools"] == [
        {"type": "function", "function": {"name": "plain", "parameters": {"type": "object"}}},
        {
            "type": "function",
            "function": {"name": "strict", "description": "d", "parameters": WEATHER, "strict": True},
        },
        {"type": "function", "function": {"name": "loose", "parameters": WEATHER}},
    ]
    assert "tools" not in to_chat(ask(user("q"), tools=[]))


@pytest.mark.parametrize(
    ("choice", "said"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "weather"},
            {"tool_choice": {"type": "function", "function": {"name": "weather"}}},
        ),
        (
            {"type": "any", "disable_parallel_tool_use": True},
            {"tool_choice": "required", "parallel_tool_calls": False},
        ),
        (
            {"type": "tool", "name": "w", "disable_parallel_tool_use": True},
            {"tool_choice": {"type": "function", "function": {"name": "w"}}, "parallel_tool_calls": False},
        ),
        ({"type": "auto", "disable_parallel_tool_use": False}, {"tool_choice": "auto"}),
    ],
)
def test_tool_choice(choice: Json, said: Json) -> None:
    out = to_chat(ask(user("q"), tool_choice=choice))
    assert {key: out[key] for key in ("tool_choice", "parallel_tool_calls") if key in out} == said


@pytest.mark.parametrize(
    ("top", "said"),
    [
        ({"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
        ({"stream": False}, {"stream": False}),
        ({"stop_sequences": ["a", "b"]}, {"stop": ["a", "b"]}),
        ({"stop_sequences": []}, {}),
        ({"metadata": {"user_id": "u1"}}, {"user": "u1"}),
        ({"metadata": {"user_id": None}}, {}),
        ({"metadata": {}}, {}),
        ({"temperature": 0, "top_p": 1, "top_k": 5}, {"temperature": 0, "top_p": 1, "top_k": 5}),
        ({"thinking": {"type": "disabled"}}, {}),
        ({"thinking": {"type": "adaptive"}}, {}),
        ({"cache_control": {"type": "ephemeral"}}, {}),
        ({"mcp_servers": [], "service_tier": None, "container": None}, {}),
    ],
)
def test_settings(top: Json, said: Json) -> None:
    out = to_chat(ask(user("q"), **top))
    assert out == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": "q"}],
        "max_tokens": 256,
        **said,
    }


# --- Anthropic -> OpenAI: refusals --------------------------------------------------------------

SERVER_TOOLS = [
    "web_search_20250305",
    "web_fetch_20250910",
    "bash_20250124",
    "computer_20250124",
    "text_editor_20250728",
    "code_execution_20250825",
    "memory_20250818",
]
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
DOCUMENT = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}}


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (ask(user("q"), thinking={"type": "enabled", "budget_tokens": 2048}), "thinking"),
        (ask(user("q"), thinking={"type": "between_tools"}), "thinking"),
        (
            ask(user("q"), assistant([{"type": "thinking", "thinking": "hm", "signature": "s"}])),
            "messages[1].content[0].type",
        ),
        (
            ask(user("q"), assistant([text("a"), {"type": "redacted_thinking", "data": "x"}])),
            "messages[1].content[1].type",
        ),
        (ask(user([text("read"), DOCUMENT])), "messages[0].content[1].type"),
        (
            ask(user([{"type": "search_result", "source": "s", "title": "t", "content": []}])),
            "messages[0].content[0].type",
        ),
        (
            ask(
                user("q"),
                assistant([{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]),
            ),
            "messages[1].content[0].type",
        ),
        (ask(user([{"type": "container_upload", "file_id": "f"}])), "messages[0].content[0].type"),
        (
            ask(user([{"type": "web_search_tool_result", "tool_use_id": "s", "content": []}])),
            "messages[0].content[0].type",
        ),
        (ask(user([tool_result("t", [text("see"), IMAGE])])), "messages[0].content[0].content[1].type"),
        (ask(user([tool_result("t", [DOCUMENT])])), "messages[0].content[0].content[0].type"),
        (
            ask(user([{"type": "image", "source": {"type": "file", "file_id": "f"}}])),
            "messages[0].content[0].source.type",
        ),
        (ask(user([{**IMAGE, "transformations": {"crop": 1}}])), "messages[0].content[0].transformations"),
        (
            ask(user([text("x", citations=[{"type": "char_location", "cited_text": "x"}])])),
            "messages[0].content[0].citations",
        ),
        (ask(user("q"), system=[text("s", citations=[{"type": "x"}])]), "system[0].citations"),
        (ask(user([tool_result("t", "1", toolset_name="kit")])), "messages[0].content[0].toolset_name"),
        (
            ask(user("q"), assistant([{**tool_use("t", "f", {}), "caller": {"type": "x"}}])),
            "messages[1].content[0].caller",
        ),
        (ask({**user("q"), "name": "bob"}), "messages[0].name"),
        *[(ask(user("q"), tools=[{"type": kind, "name": "x"}]), "tools[0].type") for kind in SERVER_TOOLS],
        (
            ask(user("q"), tools=[{"name": "f", "input_schema": WEATHER, "input_examples": [{}]}]),
            "tools[0].input_examples",
        ),
        (
            ask(user("q"), tools=[{"name": "f", "input_schema": WEATHER, "defer_loading": True}]),
            "tools[0].defer_loading",
        ),
        (ask(user("q"), service_tier="auto"), "service_tier"),
        (ask(user("q"), container="container_1"), "container"),
        (ask(user("q"), mcp_servers=[{"type": "url", "url": "https://x", "name": "x"}]), "mcp_servers"),
        (ask(user("q"), output_config={"format": {"type": "json_schema", "schema": {}}}), "output_config"),
        (ask(user("q"), context_management={"edits": [{}]}), "context_management"),
        (ask(user("q"), speed="fast"), "speed"),
        (ask(user("q"), frobnicate=1), "frobnicate"),
        (ask(user("q"), metadata={"user_id": "u", "tenant": "t"}), "metadata.tenant"),
        (ask(user("q"), tool_choice={"type": "auto", "hint": "x"}), "tool_choice.hint"),
    ],
)
def test_what_openai_cant_say_is_refused(request_: Json, param: str) -> None:
    with pytest.raises(Untranslatable) as caught:
        chat_from_messages(json.dumps(request_).encode())
    assert caught.value.status == 400
    assert caught.value.param == param
    assert caught.value.code == "untranslatable"
    assert "OpenAI" in caught.value.message or "Unknown" in caught.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": []}', "model"),
        (b'{"model": 3, "messages": []}', "model"),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": {"role": "user"}}', "messages"),
        (b'{"model": "m", "messages": ["hi"]}', "messages[0]"),
        (b'{"model": "m", "messages": [{"role": "tool", "content": "x"}]}', "messages[0].role"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"model": "m", "messages": [{"role": "assistant", "content": {}}]}', "messages[0].content"),
        (b'{"model": "m", "messages": [{"role": "user", "content": ["hi"]}]}', "messages[0].content[0]"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": [{"text": "hi"}]}]}',
            "messages[0].content[0].type",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}',
            "messages[0].content[0].text",
        ),
        (b'{"model": "m", "messages": [], "system": 5}', "system"),
        (b'{"model": "m", "messages": [], "system": [{"type": "image"}]}', "system[0].type"),
        (
            b'{"model":"m","messages":[{"role":"user","content":[{"type":"image"}]}]}',
            "messages[0].content[0].source",
        ),
        (
            b'{"model":"m","messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64"}}]}]}',
            "messages[0].content[0].source",
        ),
        (
            b'{"model":"m","messages":[{"role":"user","content":[{"type":"image","source":{"type":"url"}}]}]}',
            "messages[0].content[0].source.url",
        ),
        (
            b'{"model":"m","messages":[{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f"}]}]}',
            "messages[0].content[0].input",
        ),
        (
            b'{"model":"m","messages":[{"role":"assistant","content":[{"type":"tool_use","input":{}}]}]}',
            "messages[0].content[0]",
        ),
        (
            b'{"model":"m","messages":[{"role":"user","content":[{"type":"tool_result"}]}]}',
            "messages[0].content[0].tool_use_id",
        ),
        (
            b'{"model":"m","messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":3}]}]}',
            "messages[0].content[0].content",
        ),
        (b'{"model": "m", "messages": [], "stream": "yes"}', "stream"),
        (b'{"model": "m", "messages": [], "stop_sequences": [1]}', "stop_sequences"),
        (b'{"model": "m", "messages": [], "metadata": "u"}', "metadata"),
        (b'{"model": "m", "messages": [], "tools": {}}', "tools"),
        (b'{"model": "m", "messages": [], "tools": ["f"]}', "tools[0]"),
        (b'{"model": "m", "messages": [], "tools": [{"input_schema": {}}]}', "tools[0].name"),
        (b'{"model": "m", "messages": [], "tools": [{"name": "f"}]}', "tools[0].input_schema"),
        (b'{"model": "m", "messages": [], "tool_choice": "auto"}', "tool_choice"),
        (b'{"model": "m", "messages": [], "tool_choice": {"type": "maybe"}}', "tool_choice.type"),
        (b'{"model": "m", "messages": [], "tool_choice": {"type": "tool"}}', "tool_choice.name"),
    ],
)
def test_what_is_not_a_messages_request_is_a_bad_request(body: bytes, param: str | None) -> None:
    with pytest.raises(BadRequest) as caught:
        chat_from_messages(body)
    assert caught.value.status == 400
    assert caught.value.param == param


def test_an_unknown_block_type_is_refused_by_name() -> None:
    with pytest.raises(Untranslatable, match="`hologram`"):
        chat_from_messages(json.dumps(ask(user([{"type": "hologram"}]))).encode())


# --- OpenAI -> Anthropic: exact output ----------------------------------------------------------

CHAT_CONVERSATION = chat(
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            call("call_1", "weather", '{"city": "Paris"}'),
            call("call_2", "weather", '{"city":"Rome"}'),
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
    {"role": "tool", "tool_call_id": "call_2", "content": [text("21"), text("sunny")]},
    {
        "role": "user",
        "content": [
            text("And Oslo?"),
            {"type": "image_url", "image_url": {"url": "https://x.org/o.png", "detail": "high"}},
        ],
    },
    tools=[
        {
            "type": "function",
            "function": {"name": "weather", "description": "Weather now", "parameters": WEATHER},
        }
    ],
    tool_choice="required",
    parallel_tool_calls=False,
    max_completion_tokens=300,
    stop="END",
    temperature=0.5,
    top_p=0.9,
    user="user-7",
    stream=True,
    stream_options={"include_usage": True},
    n=1,
    store=False,
    metadata={"team": "x"},
)


def test_a_chat_conversation_with_tools_is_said_in_anthropic_terms() -> None:
    assert to_messages(CHAT_CONVERSATION) == {
        "model": "gpt-x",
        "max_tokens": 300,
        "system": "You are terse.",
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": [
                    tool_use("call_1", "weather", {"city": "Paris"}),
                    tool_use("call_2", "weather", {"city": "Rome"}),
                ],
            },
            {
                "role": "user",
                "content": [
                    tool_result("call_1", "18°C"),
                    tool_result("call_2", [text("21"), text("sunny")]),
                    text("And Oslo?"),
                    {"type": "image", "source": {"type": "url", "url": "https://x.org/o.png"}},
                ],
            },
        ],
        "tools": [{"name": "weather", "description": "Weather now", "input_schema": WEATHER}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "top_p": 0.9,
        "metadata": {"user_id": "user-7"},
        "stream": True,
    }
    valid_messages(to_messages(CHAT_CONVERSATION))


@pytest.mark.parametrize(
    ("leading", "system"),
    [
        ([{"role": "system", "content": "A."}], "A."),
        ([{"role": "developer", "content": "A."}], "A."),
        ([{"role": "system", "content": [text("A."), text("B.")]}], [text("A."), text("B.")]),
        ([{"role": "system", "content": "A."}, {"role": "developer", "content": "B."}], "A.\n\nB."),
        (
            [{"role": "system", "content": [text("A."), text("B.")]}, {"role": "system", "content": "C."}],
            "A.\nB.\n\nC.",
        ),
    ],
)
def test_leading_system_messages_become_the_system_prompt(leading: list[Json], system: Any) -> None:
    out = to_messages(chat(*leading, user("hi")))
    assert out["system"] == system
    assert out["messages"] == [user("hi")]


def test_no_system_message_no_system() -> None:
    assert to_messages(chat(user("hi"))) == {"model": "gpt-x", "max_tokens": 4096, "messages": [user("hi")]}
    assert to_messages(chat(user("hi")), default_max_tokens=50)["max_tokens"] == 50


@pytest.mark.parametrize(
    ("part", "block"),
    [
        (text("hi"), text("hi")),
        (
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/webp;base64,AAAA", "detail": "low"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "AAAA"}},
        ),
        (
            {"type": "image_url", "image_url": {"url": "http://x.org/a.gif", "detail": "auto"}},
            {"type": "image", "source": {"type": "url", "url": "http://x.org/a.gif"}},
        ),
    ],
)
def test_user_parts(part: Json, block: Json) -> None:
    assert to_messages(chat(user([part])))["messages"] == [user([block])]
    valid_messages(to_messages(chat(user([part]))))


@pytest.mark.parametrize(
    ("message", "content"),
    [
        (assistant("Sure."), "Sure."),
        (assistant([text("a"), text("b")]), [text("a"), text("b")]),
        (assistant(None, refusal="I can't."), [text("I can't.")]),
        (assistant([{"type": "refusal", "refusal": "No."}]), [text("No.")]),
        (assistant("", tool_calls=[call("c", "f", "")]), [tool_use("c", "f", {})]),
        (
            assistant("Let me see.", tool_calls=[call("c", "f", '{"x": [1, {"y": null}]}')]),
            [text("Let me see."), tool_use("c", "f", {"x": [1, {"y": None}]})],
        ),
        (assistant("x", tool_calls=[]), "x"),
        (assistant("x", name=None, audio=None, function_call=None), "x"),
    ],
)
def test_assistant_messages(message: Json, content: Any) -> None:
    assert to_messages(chat(user("q"), message))["messages"][1] == {"role": "assistant", "content": content}


def test_turns_of_one_role_merge_and_tool_results_lead_their_turn() -> None:
    request = chat(
        user("one"),
        user([text("two")]),
        assistant("a"),
        assistant(None, tool_calls=[call("c1", "f", "{}")]),
        user("interjection"),
        {"role": "tool", "tool_call_id": "c1", "content": "r1"},
        user("three"),
    )
    assert to_messages(request)["messages"] == [
        user([text("one"), text("two")]),
        assistant([text("a"), tool_use("c1", "f", {})]),
        user([tool_result("c1", "r1"), text("interjection"), text("three")]),
    ]


@pytest.mark.parametrize(
    ("top", "said"),
    [
        ({"max_tokens": 10}, {"max_tokens": 10}),
        ({"max_tokens": 10, "max_completion_tokens": 20}, {"max_tokens": 20}),
        ({"max_completion_tokens": 20, "max_tokens": 10}, {"max_tokens": 20}),
        ({"max_tokens": None}, {}),
        ({"stop": ["a", "b"]}, {"stop_sequences": ["a", "b"]}),
        ({"stop": "a"}, {"stop_sequences": ["a"]}),
        ({"stop": []}, {}),
        ({"temperature": 1}, {"temperature": 1}),
        ({"temperature": 0.0, "top_p": 0.5}, {"temperature": 0.0, "top_p": 0.5}),
        ({"top_k": 20}, {"top_k": 20}),
        ({"top_k": -1}, {}),
        ({"user": "u"}, {"metadata": {"user_id": "u"}}),
        ({"user": "u", "safety_identifier": "s"}, {"metadata": {"user_id": "s"}}),
        ({"safety_identifier": "s", "user": "u"}, {"metadata": {"user_id": "s"}}),
        ({"stream": True, "stream_options": {"include_usage": True}}, {"stream": True}),
        ({"stream": False}, {"stream": False}),
        ({"parallel_tool_calls": True}, {}),
        (
            {"parallel_tool_calls": False},
            {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
        ),
        ({"tool_choice": "none", "parallel_tool_calls": False}, {"tool_choice": {"type": "none"}}),
        ({"tool_choice": "auto"}, {"tool_choice": {"type": "auto"}}),
        ({"tool_choice": "required"}, {"tool_choice": {"type": "any"}}),
        (
            {"tool_choice": {"type": "function", "function": {"name": "f"}}},
            {"tool_choice": {"type": "tool", "name": "f"}},
        ),
        (
            {"parallel_tool_calls": False, "tool_choice": {"type": "function", "function": {"name": "f"}}},
            {"tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True}},
        ),
        (
            {"n": 1, "presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": False, "top_logprobs": 0},
            {},
        ),
        (
            {
                "response_format": {"type": "text"},
                "logit_bias": {},
                "modalities": ["text"],
                "verbosity": "medium",
            },
            {},
        ),
        ({"seed": None, "audio": None, "reasoning_effort": None, "functions": None}, {}),
        ({"metadata": {"a": "b"}, "store": True, "service_tier": "flex", "prompt_cache_key": "k"}, {}),
        ({"prompt_cache_retention": "24h", "prompt_cache_options": {"mode": "explicit"}}, {}),
    ],
)
def test_chat_settings(top: Json, said: Json) -> None:
    out = to_messages(chat(user("q"), **top))
    assert out == {"model": "gpt-x", "max_tokens": 4096, "messages": [user("q")], **said}


def test_function_tools_become_custom_tools() -> None:
    tools = [
        {"type": "function", "function": {"name": "a"}},
        {
            "type": "function",
            "function": {"name": "b", "description": "B", "parameters": WEATHER, "strict": True},
        },
        {
            "type": "function",
            "function": {"name": "c", "parameters": WEATHER, "strict": False, "description": None},
        },
    ]
    assert to_messages(chat(user("q"), tools=tools))["tools"] == [
        {"name": "a", "input_schema": {"type": "object", "properties": {}}},
        {"name": "b", "description": "B", "strict": True, "input_schema": WEATHER},
        {"name": "c", "input_schema": WEATHER},
    ]
    assert "tools" not in to_messages(chat(user("q"), tools=[]))
    valid_messages(to_messages(chat(user("q"), tools=tools)))


# --- OpenAI -> Anthropic: refusals --------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (chat(user("q"), n=2), "n"),
        (chat(user("q"), logprobs=True), "logprobs"),
        (chat(user("q"), top_logprobs=3), "top_logprobs"),
        (chat(user("q"), response_format={"type": "json_object"}), "response_format"),
        (
            chat(user("q"), response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
            "response_format",
        ),
        (chat(user("q"), seed=7), "seed"),
        (chat(user("q"), logit_bias={"50256": -100}), "logit_bias"),
        (chat(user("q"), presence_penalty=0.5), "presence_penalty"),
        (chat(user("q"), frequency_penalty=-1), "frequency_penalty"),
        (chat(user("q"), audio={"voice": "alloy", "format": "mp3"}), "audio"),
        (chat(user("q"), modalities=["text", "audio"]), "modalities"),
        (chat(user("q"), prediction={"type": "content", "content": "x"}), "prediction"),
        (chat(user("q"), web_search_options={}), "web_search_options"),
        (chat(user("q"), reasoning_effort="high"), "reasoning_effort"),
        (chat(user("q"), verbosity="low"), "verbosity"),
        (chat(user("q"), moderation={"model": "m"}), "moderation"),
        (chat(user("q"), functions=[{"name": "f"}]), "functions"),
        (chat(user("q"), function_call="auto"), "function_call"),
        (chat(user("q"), min_p=0.1), "min_p"),
        (chat(user("q"), temperature=1.5), "temperature"),
        (chat(user("q"), {"role": "system", "content": "late"}), "messages[1].role"),
        (chat(user("q"), {"role": "developer", "content": "late"}), "messages[1].role"),
        (
            chat(user("q"), assistant(None, function_call={"name": "f", "arguments": "{}"})),
            "messages[1].function_call",
        ),
        (chat(user("q"), {"role": "function", "name": "f", "content": "1"}), "messages[1].role"),
        (chat({**user("q"), "name": "bob"}), "messages[0].name"),
        (chat({"role": "system", "content": "s", "name": "boss"}, user("q")), "messages[0].name"),
        (chat(user("q"), assistant("a", audio={"id": "audio_1"})), "messages[1].audio"),
        (chat(user("q"), assistant("a", reasoning_content="hm")), "messages[1].reasoning_content"),
        (
            chat(user([{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}])),
            "messages[0].content[0].type",
        ),
        (chat(user([{"type": "file", "file": {"file_id": "f"}}])), "messages[0].content[0].type"),
        (
            chat(user([{"type": "image_url", "image_url": {"url": "data:image/svg+xml,<svg/>"}}])),
            "messages[0].content[0].image_url.url",
        ),
        (
            chat(user("q"), assistant(None, tool_calls=[{"id": "c", "type": "custom", "custom": {}}])),
            "messages[1].tool_calls[0].type",
        ),
        (
            chat(user("q"), assistant(None, tool_calls=[call("c", "f", "{oops")])),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            chat(user("q"), assistant(None, tool_calls=[call("c", "f", "[1, 2]")])),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            chat(user("q"), assistant(None, tool_calls=[call("c", "f", '"text"')])),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (chat(user("q"), tools=[{"type": "custom", "custom": {"name": "x"}}]), "tools[0].type"),
        (
            chat(user("q"), tools=[{"type": "function", "function": {"name": "x", "examples": [1]}}]),
            "tools[0].function.examples",
        ),
        (chat(user("q"), tool_choice={"type": "allowed_tools", "allowed_tools": {}}), "tool_choice.type"),
        (chat(user("q"), tool_choice={"type": "custom", "custom": {"name": "x"}}), "tool_choice.type"),
    ],
)
def test_what_anthropic_cant_say_is_refused(request_: Json, param: str) -> None:
    with pytest.raises(Untranslatable) as caught:
        messages_from_chat(json.dumps(request_).encode())
    assert caught.value.status == 400
    assert caught.value.param == param
    assert caught.value.code == "untranslatable"


def test_a_refusal_says_why() -> None:
    with pytest.raises(Untranslatable, match="temperature from 0 to 1"):
        messages_from_chat(json.dumps(chat(user("q"), temperature=1.2)).encode())
    with pytest.raises(Untranslatable, match="one system prompt"):
        messages_from_chat(json.dumps(chat(user("q"), {"role": "system", "content": "x"})).encode())
    with pytest.raises(Untranslatable, match="`n` must be 1"):
        messages_from_chat(json.dumps(chat(user("q"), n=3)).encode())
    with pytest.raises(Untranslatable, match="use `tools`"):
        messages_from_chat(json.dumps(chat(user("q"), functions=[])).encode())


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"", None),
        (b'"text"', None),
        (b'{"messages": []}', "model"),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": [3]}', "messages[0]"),
        (b'{"model": "m", "messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
        (b'{"model": "m", "messages": [{"content": "x"}]}', "messages[0].role"),
        (b'{"model": "m", "messages": [{"role": "user"}]}', "messages[0].content"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}',
            "messages[0].content[0]",
        ),
        (b'{"model": "m", "messages": [{"role": "user", "content": [7]}]}', "messages[0].content[0]"),
        (b'{"model": "m", "messages": [{"role": "system", "content": 7}]}', "messages[0].content"),
        (
            b'{"model": "m", "messages": [{"role": "system", "content": [{"type": "text"}]}]}',
            "messages[0].content[0]",
        ),
        (b'{"model": "m", "messages": [{"role": "assistant", "content": 7}]}', "messages[0].content"),
        (b'{"model": "m", "messages": [{"role": "assistant", "tool_calls": {}}]}', "messages[0].tool_calls"),
        (
            b'{"model": "m", "messages": [{"role": "assistant", "tool_calls": [1]}]}',
            "messages[0].tool_calls[0]",
        ),
        (
            b'{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","function":{}}]}]}',
            "messages[0].tool_calls[0]",
        ),
        (b'{"model": "m", "messages": [{"role": "tool", "content": "x"}]}', "messages[0].tool_call_id"),
        (b'{"model": "m", "messages": [{"role": "tool", "tool_call_id": "c"}]}', "messages[0].content"),
        (
            b'{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}',
            "messages[0].content[0].image_url",
        ),
        (
            b'{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":"ftp://x/a.png"}]}]}',
            "messages[0].content[0].image_url.url",
        ),
        (b'{"model": "m", "messages": [], "temperature": "hot"}', "temperature"),
        (b'{"model": "m", "messages": [], "stream": 1}', "stream"),
        (b'{"model": "m", "messages": [], "stop": [1]}', "stop"),
        (b'{"model": "m", "messages": [], "user": 1}', "user"),
        (b'{"model": "m", "messages": [], "parallel_tool_calls": "no"}', "parallel_tool_calls"),
        (b'{"model": "m", "messages": [], "tools": "f"}', "tools"),
        (b'{"model": "m", "messages": [], "tools": [1]}', "tools[0]"),
        (b'{"model": "m", "messages": [], "tools": [{"type": "function"}]}', "tools[0].function"),
        (b'{"model": "m", "messages": [], "tool_choice": "sometimes"}', "tool_choice"),
        (b'{"model": "m", "messages": [], "tool_choice": {"type": "function"}}', "tool_choice.function"),
    ],
)
def test_what_is_not_a_chat_request_is_a_bad_request(body: bytes, param: str | None) -> None:
    with pytest.raises(BadRequest) as caught:
        messages_from_chat(body)
    assert caught.value.status == 400
    assert caught.value.param == param


# --- round trips --------------------------------------------------------------------------------


def _without_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_cache_control(v) for v in value]
    return value


def _result_after_trip(block: Json) -> Json:
    content = block.get("content")
    if isinstance(content, list):
        content = "\n".join(inner["text"] for inner in content)
    elif content is None:
        content = ""
    if block.get("is_error"):
        content = f"Error: {content}" if content else "Error"
    return tool_result(block["tool_use_id"], content)


def _content_after_trip(role: str, content: Any) -> Any:
    if isinstance(content, str):
        return content
    if role == "user":
        results = [_result_after_trip(b) for b in content if b["type"] == "tool_result"]
        rest = [b for b in content if b["type"] != "tool_result"]
        if not results and len(rest) == 1 and rest[0]["type"] == "text":
            return rest[0]["text"]
        return results + rest if results or rest else ""
    texts = [b for b in content if b["type"] == "text"]
    calls = [b for b in content if b["type"] == "tool_use"]
    if calls:
        texts = [b for b in texts if b["text"]]
    if not calls and len(texts) <= 1:
        return texts[0]["text"] if texts else ""
    return texts + calls


def after_trip(request: Json) -> Json:
    """An Anthropic request as it reads after a trip through OpenAI's dialect: the documented
    normalisation (cache_control dropped, one text block as a string, tool results first and as
    strings with is_error said in the text, an assistant's text before its tool calls)."""
    out: Json = _without_cache_control(copy.deepcopy(request))
    system = out.get("system")
    if isinstance(system, list) and len(system) == 1:
        out["system"] = system[0]["text"]
    if not out.get("system"):
        out.pop("system", None)
    out["messages"] = [
        {"role": m["role"], "content": _content_after_trip(m["role"], m["content"])} for m in out["messages"]
    ]
    for key in ("tools", "stop_sequences"):
        if not out.get(key):
            out.pop(key, None)
    for tool in out.get("tools", []):
        tool.pop("type", None)
        if not tool.get("strict"):
            tool.pop("strict", None)
    choice = out.get("tool_choice")
    if choice is not None and (not choice.get("disable_parallel_tool_use") or choice["type"] == "none"):
        choice.pop("disable_parallel_tool_use", None)
    if out.get("metadata", {}).get("user_id") is None:
        out.pop("metadata", None)
    return out


ROUND_TRIPS = [
    CONVERSATION,
    ask(user("hi")),
    ask(user([text("hi", **CACHE)]), system="s"),
    ask(user([text("a"), text("b")]), system=[text("s1"), text("s2", **CACHE)]),
    ask(user([IMAGE, {"type": "image", "source": {"type": "url", "url": "https://x.org/c.jpg"}}, text("?")])),
    ask(
        user("q"),
        assistant([tool_use("t1", "f", {"a": {"b": [1, "2", None]}}), text("waiting")]),
        user([tool_result("t1", "boom", is_error=True)]),
        assistant("done"),
    ),
    ask(user("q"), assistant([tool_use("t1", "f", {})]), user([tool_result("t1"), text("more")])),
    *[ask(user("q"), tool_choice=choice) for choice in ({"type": "auto"}, {"type": "any"}, {"type": "none"})],
    ask(user("q"), tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True}),
    ask(
        user("q"), stop_sequences=["x", "y"], metadata={"user_id": "u"}, stream=False, temperature=1, top_k=3
    ),
    ask(user("q"), tools=[{"name": "f", "input_schema": WEATHER, "strict": True, "type": "custom"}]),
]


@pytest.mark.parametrize("request_", ROUND_TRIPS)
def test_anthropic_to_openai_and_back(request_: Json) -> None:
    chat_request = to_chat(request_)
    valid_chat(chat_request)
    back = to_messages(chat_request)
    valid_messages(back)
    assert back == after_trip(request_)


def test_openai_to_anthropic_and_back() -> None:
    back = to_chat(to_messages(CHAT_CONVERSATION))
    assert back == {
        **{
            k: v
            for k, v in CHAT_CONVERSATION.items()
            if k not in ("n", "store", "metadata", "max_completion_tokens")
        },
        "messages": [
            {"role": "system", "content": "You are terse."},
            user("Weather in Paris and Rome?"),
            assistant(
                None,
                tool_calls=[
                    call("call_1", "weather", '{"city":"Paris"}'),
                    call("call_2", "weather", '{"city":"Rome"}'),
                ],
            ),
            {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "21\nsunny"},
            user([text("And Oslo?"), {"type": "image_url", "image_url": {"url": "https://x.org/o.png"}}]),
        ],
        "max_tokens": 300,
        "stop": ["END"],
    }


# Requests built from every block type, in alternating turns, for the round trip.
_texts = st.text(max_size=12).filter(bool)
_ids = st.from_regex(r"toolu_[a-z0-9]{1,6}", fullmatch=True)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_cache = st.sampled_from([{}, CACHE])
_text_blocks = st.builds(lambda t, c: text(t, **c), _texts, _cache)
_images = st.builds(
    lambda source, c: {"type": "image", "source": source, **c},
    st.builds(
        lambda d: {"type": "base64", "media_type": "image/png", "data": d},
        st.from_regex(r"[A-Za-z0-9+/]{4,12}", fullmatch=True),
    )
    | st.builds(
        lambda p: {"type": "url", "url": f"https://x.org/{p}.png"},
        st.from_regex(r"[a-z]{1,8}", fullmatch=True),
    ),
    _cache,
)
_tool_uses = st.builds(
    tool_use,
    _ids,
    st.sampled_from(["f", "get_weather", "search"]),
    st.dictionaries(st.text(max_size=5), _json, max_size=3),
)
_tool_results = st.builds(
    lambda ident, content, error, c: tool_result(
        ident, content, **({"is_error": error} if error is not None else {}), **c
    ),
    _ids,
    st.none() | _texts | st.lists(_text_blocks, max_size=3),
    st.none() | st.booleans(),
    _cache,
)
_user_content = _texts | st.lists(_text_blocks | _images | _tool_results, max_size=4)
_assistant_content = _texts | st.lists(_text_blocks | _tool_uses, max_size=4)


@st.composite
def _anthropic_requests(draw: st.DrawFn) -> Json:
    turns = draw(st.lists(st.tuples(_user_content, _assistant_content), min_size=1, max_size=3))
    messages = [m for u, a in turns for m in (user(u), assistant(a))]
    if draw(st.booleans()):
        messages.pop()
    top: Json = {}
    if draw(st.booleans()):
        top["system"] = draw(_texts | st.lists(_text_blocks, max_size=3))
    if draw(st.booleans()):
        top["tools"] = [{"name": "f", "description": "d", "input_schema": WEATHER}]
        top["tool_choice"] = draw(
            st.sampled_from(
                [{"type": "auto"}, {"type": "any"}, {"type": "none"}, {"type": "tool", "name": "f"}]
            )
        )
        if draw(st.booleans()):
            top["tool_choice"]["disable_parallel_tool_use"] = draw(st.booleans())
    if draw(st.booleans()):
        top["stop_sequences"] = draw(st.lists(_texts, max_size=3))
    if draw(st.booleans()):
        top["temperature"] = draw(st.floats(0, 1))
    if draw(st.booleans()):
        top["stream"] = draw(st.booleans())
    if draw(st.booleans()):
        top["metadata"] = {"user_id": draw(st.none() | _texts)}
    return ask(*messages, **top)


@given(_anthropic_requests())
def test_any_anthropic_request_survives_the_trip(request_: Json) -> None:
    chat_request = to_chat(request_)
    valid_chat(chat_request)
    assert to_messages(chat_request) == after_trip(request_)


# --- anything else is refused, never an exception of another kind -------------------------------

_FIELDS = [
    "model",
    "messages",
    "system",
    "role",
    "content",
    "type",
    "text",
    "source",
    "tool_use_id",
    "id",
    "name",
    "input",
    "tools",
    "tool_choice",
    "tool_calls",
    "function",
    "arguments",
    "image_url",
    "url",
    "data",
    "media_type",
    "stop",
    "stop_sequences",
    "max_tokens",
    "temperature",
    "stream",
    "metadata",
    "user",
    "is_error",
    "refusal",
    "tool_call_id",
    "parallel_tool_calls",
    "thinking",
    "n",
]
_VALUES = st.sampled_from(
    [
        "user",
        "assistant",
        "tool",
        "system",
        "text",
        "image",
        "image_url",
        "tool_use",
        "tool_result",
        "function",
        "auto",
        "any",
        "base64",
        "url",
        "data:image/png;base64,AA",
        "https://x",
        "{}",
        "[]",
        "",
        "m",
    ]
)
_anything = st.recursive(
    _scalars | _VALUES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_FIELDS), inner, max_size=5),
    max_leaves=25,
)


@given(st.dictionaries(st.sampled_from(_FIELDS), _anything, max_size=6).map(lambda d: {"model": "m", **d}))
def test_any_json_translates_or_is_a_bad_request(request_: Json) -> None:
    body = msgspec.json.encode(request_)
    for translate in (chat_from_messages, messages_from_chat):
        try:
            msgspec.json.decode(translate(body))
        except BadRequest as exc:
            assert exc.status == 400
            assert exc.message


def test_blocks_in_the_wrong_turn_are_bad_requests() -> None:
    for request, param in [
        (ask(user([tool_use("t", "f", {})])), "messages[0].content[0].type"),
        (ask(user("q"), assistant([tool_result("t", "1")])), "messages[1].content[0].type"),
        (ask(user("q"), assistant([IMAGE])), "messages[1].content[0].type"),
        (ask(user([tool_result("t", [tool_result("u", "1")])])), "messages[0].content[0].content[0].type"),
    ]:
        with pytest.raises(BadRequest, match="can't be in") as caught:
            chat_from_messages(json.dumps(request).encode())
        assert not isinstance(caught.value, Untranslatable)
        assert caught.value.param == param


def test_parts_of_openai_messages() -> None:
    cached = {"type": "text", "text": "long context", **CACHE}
    assert to_messages(chat({"role": "system", "content": [cached]}, user([cached, text("q")]))) == {
        "model": "gpt-x",
        "max_tokens": 4096,
        "system": [text("long context")],
        "messages": [user([text("long context"), text("q")])],
    }
    for request, param in [
        (chat(user([{**text("q"), "annotations": [1]}])), "messages[0].content[0].annotations"),
        (chat({"role": "system", "content": [{**text("s"), "extra": 1}]}), "messages[0].content[0].extra"),
        (
            chat(user([{"type": "image_url", "image_url": {"url": "https://x.org/a.png", "crop": "1:1"}}])),
            "messages[0].content[0].image_url.crop",
        ),
        (
            chat(user([{"type": "image_url", "image_url": {"url": "https://x.org/a.png"}, "meta": 1}])),
            "messages[0].content[0].meta",
        ),
        (
            chat({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}),
            "messages[0].content[0].type",
        ),
        (
            chat(user("q"), {"role": "tool", "tool_call_id": "c", "content": [{"type": "image_url"}]}),
            "messages[1].content[0].type",
        ),
    ]:
        with pytest.raises(Untranslatable) as caught:
            messages_from_chat(json.dumps(request).encode())
        assert caught.value.param == param
