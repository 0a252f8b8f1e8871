"""Classified routing as a client of the official OpenAI SDK sees it: ``model="auto"`` against a real
``tiermux serve`` with the classifier on, reading the routing headers with ``with_raw_response``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from bench.mock_backend import BackendHandle
from tests.support import (
    CLOUD_KEY,
    CLOUD_MODEL,
    VLLM_MODEL,
    ServerProcess,
    recorded_bodies,
    standard_tree,
    write_config,
    write_key_file,
)

from tiermux.routing.categories import CATEGORIES

EXTRACTION: list[Any] = [
    {"role": "system", "content": "You extract structured data from text. Reply with JSON only."},
    {
        "role": "user",
        "content": "Extract the invoice number, the issue date and the total amount due from this email:\n\n"
        "Hi Sam, please find attached invoice INV-20931 dated 3 March 2024. The total due is EUR 1,284.50, "
        "payable within 30 days. Regards, Dana",
    },
]
REASONING: list[Any] = [
    {
        "role": "user",
        "content": "Analyse the trade-offs between moving our on-premise PostgreSQL cluster to a managed "
        "cloud database and keeping it in-house, compare the total cost of ownership over three years, "
        "the operational risk and the migration effort, and recommend which option we should choose.",
    }
]
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "lookup_invoice",
            "description": "Fetch an invoice by number",
            "parameters": {
                "type": "object",
                "properties": {"number": {"type": "string"}},
                "required": ["number"],
            },
        },
    }
]


@pytest.fixture(scope="module")
def routed_server(
    vllm_session: BackendHandle, cloud_session: BackendHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """``tiermux serve`` on the standard config with the classifier on and override headers allowed."""
    directory = tmp_path_factory.mktemp("routed")
    key_file = write_key_file(directory, CLOUD_KEY)
    tree = standard_tree(vllm_session.url, cloud_session.url, key_file, classified=True)
    tree["routing"]["allow_header_override"] = True
    process = ServerProcess(write_config(directory, tree), directory / "serve.log", workers=1).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def sdk(routed_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=routed_server.url + "/v1", api_key="unused", timeout=30.0, max_retries=0
    ) as client:
        yield client


def _routing(headers: Any) -> tuple[str, str, str, int]:
    return (
        headers["x-tiermux-category"],
        headers["x-tiermux-tier"],
        headers["x-tiermux-backend"],
        int(headers["x-tiermux-score"]),
    )


def test_json_extraction_is_routed_cheap(sdk: openai.OpenAI, vllm: BackendHandle) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="auto",
        messages=EXTRACTION,
        response_format={"type": "json_object"},
    )
    category, tier, backend, score = _routing(raw.headers)
    assert (category, tier, backend) == ("extraction", "cheap", "local-9b")
    assert 0 <= score <= 100
    completion = raw.parse()
    assert completion.model == VLLM_MODEL
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)
    assert vllm.stats()["requests"] == 1


def test_reasoning_is_routed_capable(sdk: openai.OpenAI, cloud: BackendHandle, vllm: BackendHandle) -> None:
    raw = sdk.chat.completions.with_raw_response.create(model="auto", messages=REASONING, max_tokens=5)
    assert _routing(raw.headers)[:3] == ("reasoning", "capable", "frontier")
    assert raw.parse().model == CLOUD_MODEL
    assert json.loads(recorded_bodies(cloud)[-1])["model"] == CLOUD_MODEL
    assert vllm.stats()["requests"] == 0


def test_tools_are_routed_capable(sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="auto", messages=EXTRACTION, tools=TOOLS, tool_choice="required"
    )
    assert raw.headers["x-tiermux-tier"] == "capable"
    assert raw.headers["x-tiermux-backend"] == "frontier"
    calls = raw.parse().choices[0].message.tool_calls
    assert calls is not None and calls[0].function.name == "lookup_invoice"  # type: ignore[union-attr]


def test_streaming_answer_carries_the_routing_headers(sdk: openai.OpenAI, cloud: BackendHandle) -> None:
    cloud.configure(tokens=4)
    raw = sdk.chat.completions.with_raw_response.create(model="auto", messages=REASONING, stream=True)
    assert _routing(raw.headers)[:3] == ("reasoning", "capable", "frontier")
    text = []
    with raw.parse() as stream:
        for chunk in stream:
            text.extend(choice.delta.content or "" for choice in chunk.choices)
    assert "".join(text) == " The mock backend answers"


def test_legacy_completion_is_classified(sdk: openai.OpenAI) -> None:
    raw = sdk.completions.with_raw_response.create(
        model="auto", prompt="Rewrite more politely: send me the report now.", max_tokens=3
    )
    category, tier, backend, score = _routing(raw.headers)
    assert category in CATEGORIES
    assert (tier, backend) in (("cheap", "local-9b"), ("capable", "frontier"))
    assert 0 <= score <= 100


def test_pinned_model_wins_over_the_classifier(sdk: openai.OpenAI, cloud: BackendHandle) -> None:
    raw = sdk.chat.completions.with_raw_response.create(model=VLLM_MODEL, messages=REASONING, tools=TOOLS)
    assert raw.headers["x-tiermux-backend"] == "local-9b"
    assert raw.headers["x-tiermux-category"] == "reasoning"
    assert cloud.stats()["requests"] == 0


def test_override_header(sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="auto", messages=EXTRACTION, extra_headers={"X-Tiermux-Tier": "capable"}
    )
    assert _routing(raw.headers)[:3] == ("extraction", "capable", "frontier")


def test_unknown_override_value_raises_bad_request(sdk: openai.OpenAI, vllm: BackendHandle) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model="auto", messages=EXTRACTION, extra_headers={"X-Tiermux-Category": "poetry"}
        )
    assert info.value.status_code == 400
    assert info.value.param == "x-tiermux-category"
    assert vllm.stats()["requests"] == 0


def test_route_endpoint_through_the_sdk_client(
    sdk: openai.OpenAI, vllm: BackendHandle, cloud: BackendHandle
) -> None:
    """``POST /v1/route`` is a dry run: it answers the decision and calls no backend."""
    answer = sdk.post("/route", cast_to=object, body={"model": "auto", "messages": REASONING})
    assert isinstance(answer, dict)
    assert (answer["tier"], answer["backend"], answer["backend_model"]) == (
        "capable",
        "frontier",
        CLOUD_MODEL,
    )
    assert answer["category"] == "reasoning"
    assert vllm.stats()["requests"] == 0 and cloud.stats()["requests"] == 0
