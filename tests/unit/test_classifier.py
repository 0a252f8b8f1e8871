"""The request classifier: what it reads of a request, the signals it derives, and what the bundled
model says about the requests the spec names (category, then tier through the default policy)."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiermux._speedups import classify
from tiermux.config import Config, parse_config
from tiermux.routing.categories import CAPABLE_BY_DEFAULT, CATEGORIES, CHEAP_BY_DEFAULT
from tiermux.routing.classifier import (
    RULE_CONFIDENCE,
    SIGNALS,
    Classification,
    Classifier,
    complexity,
    signals_of,
)
from tiermux.routing.request import (
    RequestText,
    chat_from_object,
    decode_chat,
    decode_completion,
    from_chat,
    from_completion,
)
from tiermux.routing.router import Router
from tiermux.routing.weights import Weights, load_weights

# --- requests the spec names ---------------------------------------------------------------------

# Meeting minutes pasted whole, then the instruction: a long document a small model summarises well.
MINUTES = """\
Minutes of the Riverside Community Garden annual general meeting, held on Saturday 14 September in \
the parish hall. Twenty-three members attended and apologies were received from six more.

The chair opened the meeting by thanking the volunteers who kept the watering rota going through the \
dry spell in July and August. Without them, she said, the vegetable beds on the north side would have \
been lost, and the harvest festival would not have had the pumpkins that raised most of the money for \
the new shed.

The treasurer presented the accounts for the year. Income from plot fees was slightly higher than \
last year because all forty plots were let and the waiting list now has eleven names on it. The plant \
sale in May brought in more than expected, while spending on tools and repairs stayed within budget. \
The largest single cost was replacing the water butts that cracked during the winter frost. Members \
asked whether plot fees needed to rise; the treasurer recommended keeping them unchanged for one more \
year, since the reserve is healthy, and the meeting agreed.

The secretary reported on the council's proposal to extend the lease by ten years. The new lease \
would require the garden to take on responsibility for the boundary hedge and to open the site to \
local schools for at least four sessions a year. Several members welcomed the school visits, but \
others were worried about insurance and about who would supervise the children. It was agreed that a \
small working group would look into insurance costs and report back before the lease is signed in \
November.

Under any other business, members raised the problem of rats near the compost bays, the need for a \
second wheelbarrow, and a suggestion to start a seed library in the shed. The committee will ask a \
pest controller for a quote, buy a wheelbarrow from the tools budget, and invite volunteers to run \
the seed library over the winter.

The chair closed the meeting at half past twelve and thanked everyone for coming. Tea and cake were \
served afterwards, and the date of the next meeting will be announced in the spring newsletter."""

JSON_EXTRACTION: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "You extract structured data from text. Reply with JSON only."},
        {
            "role": "user",
            "content": "Extract the invoice number, the issue date and the total amount due from this "
            "email:\n\nHi Sam, please find attached invoice INV-20931 dated 3 March 2024. The total due "
            "is EUR 1,284.50, payable within 30 days. Regards, Dana",
        },
    ],
    "response_format": {"type": "json_object"},
}
JSON_EXTRACTION_NO_SYSTEM: dict[str, Any] = {
    "messages": [
        {
            "role": "user",
            "content": "Extract the name, email address and company of the sender from this message and "
            "return them as JSON with the keys name, email and company.\n\nHello, I'm Laura Chen from "
            "Brightwater Logistics. You can reach me at laura.chen@brightwater.example. We'd like a quote "
            "for weekly pallet deliveries.",
        }
    ],
    "response_format": {"type": "json_object"},
}
ANALYSE_COMPARE_RECOMMEND = (
    "Analyse the trade-offs between moving our on-premise PostgreSQL cluster to a managed cloud "
    "database and keeping it in-house, compare the total cost of ownership over three years, the "
    "operational risk and the migration effort, and recommend which option we should choose."
)
ANALYSE_JOB_OFFERS = (
    "Analyse the two job offers below and compare salary, commute and growth prospects, and recommend "
    "which I should accept.\n\nOffer A: 68k, 50 minute commute, large bank, slow promotions.\n"
    "Offer B: 61k, remote, startup with 30 staff, equity."
)
PYTHON_FENCE = (
    "Why does this function return None instead of the total?\n\n```python\ndef total(items):\n"
    "    s = 0\n    for item in items:\n        s += item.price\n```"
)
SQL_FENCE = (
    "This query is slow on a table with 40 million rows, how can I speed it up?\n\n```sql\n"
    "SELECT customer_id, COUNT(*) FROM orders WHERE created_at > now() - interval '30 days' "
    "GROUP BY customer_id ORDER BY 2 DESC LIMIT 10;\n```"
)
# Short enough that the model alone is unsure; the fence rule decides.
JS_FENCE = "Can you review this?\n```js\nfunction add(a, b) { return a + b; }\nconsole.log(add(1, 2));\n```"
POEM_FENCE = "Here is my poem:\n```\nroses are red\nviolets are blue\n```\nWhat do you think?"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}

CONFIG_YAML = """
backends:
  - {name: local-9b, base_url: "http://127.0.0.1:9/v1", model: qwen-9b}
  - {name: frontier, base_url: "http://127.0.0.1:9/v1", model: big-model}
tiers: {cheap: [local-9b, frontier], capable: [frontier]}
routing:
  default_tier: cheap
  aliases: {fast: cheap, smart: capable}
"""


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(load_weights())


@pytest.fixture(scope="module")
def config() -> Config:
    return parse_config(CONFIG_YAML, "routing.yaml")


@pytest.fixture(scope="module")
def router(config: Config, classifier: Classifier) -> Router:
    return Router(config, classifier)


def _route(router: Router, request: RequestText) -> tuple[str, str, tuple[str, ...]]:
    decision = router.decide(router.resolve("auto"), request)
    assert decision.classification is not None
    return decision.classification.category, decision.tier, decision.reasons


# --- what is read of a request ---------------------------------------------------------------------


def test_multi_turn_chat_reads_last_previous_and_system() -> None:
    """The last user turn sets the task; the user turn before it and every system or developer
    message are context; assistant turns are not read as the user's words."""
    request = chat_from_object(
        {
            "messages": [
                {"role": "system", "content": "Be concise."},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "first answer"},
                {"role": "developer", "content": "Answer in French."},
                {"role": "user", "content": "second question"},
                {"role": "assistant", "content": "second answer"},
                {"role": "user", "content": "and now the last one"},
            ]
        }
    )
    assert request.last == "and now the last one"
    assert request.previous == "second question"
    assert request.system == "Be concise.\nAnswer in French."
    assert request.turns == 3
    assert request.total_chars == sum(
        len(t)
        for t in (
            "Be concise.",
            "first question",
            "first answer",
            "Answer in French.",
            "second question",
            "second answer",
            "and now the last one",
        )
    )
    assert (request.tools, request.json_mode, request.image) == (False, False, False)


def test_conversation_ending_with_an_assistant_turn_still_reads_the_last_user_turn() -> None:
    request = chat_from_object(
        {"messages": [{"role": "user", "content": "only question"}, {"role": "assistant", "content": "ok"}]}
    )
    assert (request.last, request.previous, request.turns) == ("only question", "", 1)


def test_no_user_message() -> None:
    request = chat_from_object({"messages": [{"role": "system", "content": "You are terse."}]})
    assert (request.last, request.previous, request.system, request.turns) == ("", "", "You are terse.", 1)
    assert chat_from_object({}).last == ""


def test_content_parts_are_joined_and_images_noticed() -> None:
    request = chat_from_object(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this picture?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                        {"type": "text", "text": "Answer in one word."},
                    ],
                }
            ]
        }
    )
    assert request.last == "What is in this picture?\nAnswer in one word."
    assert request.image is True


@pytest.mark.parametrize(
    ("extra", "tools"),
    [
        ({"tools": [WEATHER_TOOL]}, True),
        ({"tools": []}, False),
        ({"functions": [{"name": "get_weather", "parameters": {}}]}, True),
        ({}, False),
    ],
    ids=["tools", "empty-tools", "legacy-functions", "none"],
)
def test_tools(extra: dict[str, Any], tools: bool) -> None:
    request = chat_from_object({"messages": [{"role": "user", "content": "Weather in Paris?"}], **extra})
    assert request.tools is tools


def test_a_tool_result_turn_counts_as_tools() -> None:
    request = chat_from_object(
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None},
                {"role": "tool", "content": '{"temp": 21}'},
            ]
        }
    )
    assert request.tools is True
    assert request.last == "Weather in Paris?"


@pytest.mark.parametrize(
    ("response_format", "json_mode"),
    [
        ({"type": "json_object"}, True),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}, True),
        ({"type": "text"}, False),
        (None, False),
    ],
)
def test_json_mode(response_format: dict[str, Any] | None, json_mode: bool) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if response_format is not None:
        body["response_format"] = response_format
    assert chat_from_object(body).json_mode is json_mode


def test_max_tokens_and_temperature() -> None:
    base = {"messages": [{"role": "user", "content": "hi"}]}
    request = chat_from_object({**base, "max_tokens": 40, "temperature": 1})
    assert (request.max_tokens, request.temperature) == (40, 1.0)
    # the newer name wins over the deprecated one
    assert chat_from_object({**base, "max_tokens": 40, "max_completion_tokens": 4000}).max_tokens == 4000
    assert chat_from_object(base).max_tokens is None
    assert chat_from_object(base).temperature is None


def test_decode_chat_skips_fields_routing_does_not_read() -> None:
    body = (
        b'{"model": "auto", "stream": true, "n": 2, "logit_bias": {"1": 3}, "seed": 1,'
        b' "messages": [{"role": "user", "content": "hi", "name": "sam"}]}'
    )
    fields = decode_chat(body)
    assert fields.model == "auto"
    assert from_chat(fields).last == "hi"


def test_decode_chat_refuses_a_malformed_body() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_chat(b'{"model": "auto", "messages": "hello"}')
    with pytest.raises(msgspec.DecodeError):
        decode_chat(b'{"model": "auto", "messages": [')


@pytest.mark.parametrize(
    ("prompt", "last"),
    [
        ('"Once upon a time"', "Once upon a time"),
        ('["first", "second"]', "first\nsecond"),
        ('["text", [1, 2, 3], 7]', "text"),  # token ids are not text
        ("null", ""),
    ],
)
def test_from_completion(prompt: str, last: str) -> None:
    body = f'{{"model": "auto", "prompt": {prompt}, "max_tokens": 7, "temperature": 0.2}}'.encode()
    request = from_completion(decode_completion(body))
    assert request.last == last
    assert (request.system, request.previous, request.turns) == ("", "", 1)
    assert (request.max_tokens, request.temperature) == (7, 0.2)


# --- signals ---------------------------------------------------------------------------------------


def _signals(request: RequestText) -> list[str]:
    return signals_of(request, classify.text_stats(request.last))


@pytest.mark.parametrize(
    ("request_text", "expected", "absent"),
    [
        (RequestText("x" * 79), {"short"}, {"long", "very_long"}),
        (RequestText("word " * 16), set(), {"short", "long"}),  # exactly 80 characters
        (RequestText("x" * 1500), {"long"}, {"short", "very_long"}),
        (RequestText("x" * 6000), {"very_long"}, {"long"}),
        (RequestText("Why? How?"), {"question"}, {"questions"}),
        (RequestText("Why? How? When\uff1f"), {"questions"}, {"question"}),
        (RequestText("line\n" * 9 + "end"), {"multi_line"}, set()),
        (RequestText("one\ntwo"), set(), {"multi_line"}),
        (RequestText("```\nnot closed"), set(), {"code_fence"}),
        (RequestText("```\nclosed\n```"), {"code_fence"}, set()),
        (RequestText("hi", "be kind"), {"system"}, set()),
        (RequestText("hi", turns=2), {"multi_turn"}, set()),
        (RequestText("hi", max_tokens=64), {"max_tokens_small"}, {"max_tokens_large"}),
        (RequestText("hi", max_tokens=65), set(), {"max_tokens_small", "max_tokens_large"}),
        (RequestText("hi", max_tokens=2000), {"max_tokens_large"}, set()),
        (RequestText("hi", temperature=0.9), {"temperature_high"}, set()),
        (RequestText("hi", temperature=0.89), set(), {"temperature_high"}),
        (RequestText("hi", tools=True, json_mode=True, image=True), {"tools", "json_mode", "image"}, set()),
        (RequestText("What is 12*(3+4)/7 - 2^3 = ?"), {"math_dense"}, set()),
        (RequestText("for (i = 0; i < n; i++) { a[i] = f(b[i]); }"), {"code_dense"}, set()),
    ],
)
def test_signals(request_text: RequestText, expected: set[str], absent: set[str]) -> None:
    names = _signals(request_text)
    assert expected <= set(names), names
    assert not absent & set(names), names
    assert len(names) == len(set(names))


def test_every_signal_is_declared() -> None:
    """Config validation accepts only ``SIGNALS``: anything ``signals_of`` can name must be there."""
    loud = RequestText(
        "```\n" + "f(x); g[y] = {z};\n" * 200 + "```\n1+2=3? 4*5=20? 6/2? 7-1?",
        "system prompt",
        "previous turn",
        turns=3,
        tools=True,
        json_mode=True,
        image=True,
        max_tokens=4096,
        temperature=1.2,
    )
    names = set(_signals(loud))
    names |= set(_signals(RequestText("short?", max_tokens=10)))
    names |= set(_signals(RequestText("Is it? " * 300)))
    names |= set(_signals(RequestText("a? " * 2100)))
    assert names == set(SIGNALS), set(SIGNALS) ^ names


# --- the complexity score ----------------------------------------------------------------------------


def test_complexity_parts() -> None:
    stats = classify.text_stats("hi")
    assert complexity(RequestText("hi"), stats, [], 0.0) == 0
    assert complexity(RequestText("hi"), stats, [], 1.0) == 35
    assert complexity(RequestText("hi", turns=3), stats, [], 0.0) == 5
    assert complexity(RequestText("hi", turns=50), stats, [], 0.0) == 10  # capped
    assert complexity(RequestText("hi"), stats, ["tools", "code_fence", "math_dense"], 0.0) == 26
    # length: nothing up to 300 characters, 20 from about 20,000 (log scale)
    assert complexity(RequestText("x" * 300), stats, [], 0.0) == 0
    assert complexity(RequestText("x" * 20000), stats, [], 0.0) == 20
    assert complexity(RequestText("x" * 500000), stats, [], 0.0) == 20
    everything = ["code_fence", "math_dense", "questions", "tools", "max_tokens_large"]
    assert complexity(RequestText("x" * 50000, turns=9), stats, everything, 1.0) == 100


# --- the bundled model on the spec's cases ------------------------------------------------------------


def test_bundled_weights_name_the_nine_categories(classifier: Classifier) -> None:
    assert classifier.classes == CATEGORIES
    assert classifier.weights.features_version == classify.FEATURES_VERSION


@pytest.mark.parametrize("body", [JSON_EXTRACTION, JSON_EXTRACTION_NO_SYSTEM], ids=["system", "no-system"])
def test_json_mode_extraction_is_extraction_on_the_cheap_tier(router: Router, body: dict[str, Any]) -> None:
    category, tier, reasons = _route(router, chat_from_object(body))
    assert category == "extraction"
    assert tier == "cheap"
    assert reasons == ("category=extraction",)


def test_a_stricter_min_confidence_sends_the_same_request_to_the_uncertain_tier(
    classifier: Classifier,
) -> None:
    strict = Router(parse_config(CONFIG_YAML + "  min_confidence: 0.99\n", "strict.yaml"), classifier)
    category, tier, reasons = _route(strict, chat_from_object(JSON_EXTRACTION_NO_SYSTEM))
    assert (category, tier, reasons) == ("extraction", "capable", ("category=extraction", "low_confidence"))


@pytest.mark.parametrize(
    "prompt", [ANALYSE_COMPARE_RECOMMEND, ANALYSE_JOB_OFFERS], ids=["database", "job-offers"]
)
def test_analyse_compare_recommend_is_reasoning_on_the_capable_tier(router: Router, prompt: str) -> None:
    category, tier, reasons = _route(router, RequestText(prompt))
    assert category == "reasoning"
    assert tier == "capable"
    assert reasons[0] == "category=reasoning"


@pytest.mark.parametrize("prompt", [PYTHON_FENCE, SQL_FENCE, JS_FENCE], ids=["python", "sql", "js"])
def test_fenced_code_is_code(router: Router, classifier: Classifier, prompt: str) -> None:
    classification = classifier.classify(RequestText(prompt))
    assert classification.category == "code"
    assert "code_fence" in classification.signals
    assert classification.confidence >= min(RULE_CONFIDENCE, classification.probabilities["code"])
    category, tier, _ = _route(router, RequestText(prompt))
    assert (category, tier) == ("code", "capable")


def _biased(category: str, logit: float = 4.0) -> Classifier:
    """A model whose text features weigh nothing: its biases alone pick ``category``."""
    bias = [logit if name == category else 0.0 for name in CATEGORIES]
    return Classifier(Weights(list(CATEGORIES), bias, 1.0, bytes(16 * len(CATEGORIES))))


@pytest.mark.parametrize("prompt", [SQL_FENCE, JS_FENCE], ids=["sql", "js"])
def test_the_fence_rule_decides_when_the_model_does_not(prompt: str) -> None:
    classification = _biased("classification").classify(RequestText(prompt))
    assert max(classification.probabilities, key=classification.probabilities.__getitem__) == "classification"
    assert classification.category == "code"
    assert classification.rules == ("code_fence",)
    assert classification.confidence == RULE_CONFIDENCE
    assert classification.probabilities["code"] < RULE_CONFIDENCE  # the model's view is kept


def test_the_fence_rule_keeps_a_higher_model_confidence() -> None:
    classification = _biased("code", logit=10.0).classify(RequestText(JS_FENCE))
    assert classification.category == "code"
    assert classification.rules == ()
    assert classification.confidence == classification.probabilities["code"] > RULE_CONFIDENCE


@pytest.mark.parametrize(
    "prompt",
    [POEM_FENCE, "```\nunclosed fence with code(); x[1] = {2};", "no fence at all: f(x); g[y] = {z};"],
    ids=["prose-in-fence", "unclosed", "no-fence"],
)
def test_the_fence_rule_needs_a_closed_fence_around_code(prompt: str) -> None:
    classification = _biased("classification").classify(RequestText(prompt))
    assert classification.category == "classification"
    assert classification.rules == ()


def test_a_fence_around_prose_is_not_forced_to_code(classifier: Classifier) -> None:
    classification = classifier.classify(RequestText(POEM_FENCE))
    assert "code_fence" in classification.signals
    assert classification.rules == ()


@pytest.mark.parametrize("instruction", ["summarise this", "Summarise this.", "summarize this"])
def test_long_document_then_summarise_is_summarisation_on_the_cheap_tier(
    router: Router, instruction: str
) -> None:
    assert len(MINUTES) > 2000
    request = RequestText(MINUTES + "\n\n" + instruction)
    category, tier, reasons = _route(router, request)
    assert category == "summarisation"
    assert tier == "cheap"
    assert reasons == ("category=summarisation",)


def test_summarise_instruction_in_a_multi_turn_chat(router: Router) -> None:
    request = chat_from_object(
        {
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of Australia?"},
                {"role": "assistant", "content": "Canberra."},
                {"role": "user", "content": MINUTES + "\n\nsummarise this"},
            ]
        }
    )
    category, tier, _ = _route(router, request)
    assert (category, tier) == ("summarisation", "cheap")


@pytest.mark.parametrize(
    "body",
    [
        JSON_EXTRACTION,
        {"messages": [{"role": "user", "content": MINUTES + "\n\nsummarise this"}]},
        {"messages": [{"role": "user", "content": "What's the weather like in Paris today?"}]},
        {"messages": [{"role": "user", "content": ANALYSE_COMPARE_RECOMMEND}]},
    ],
    ids=["extraction", "summarisation", "question", "reasoning"],
)
def test_tools_go_to_the_capable_tier_whatever_the_category(router: Router, body: dict[str, Any]) -> None:
    request = chat_from_object({**body, "tools": [WEATHER_TOOL]})
    category, tier, reasons = _route(router, request)
    assert tier == "capable"
    if category in CHEAP_BY_DEFAULT:
        assert "signal=tools" in reasons
    else:
        assert category in CAPABLE_BY_DEFAULT


# --- what a classification holds -----------------------------------------------------------------


def _check_classification(classification: Classification) -> None:
    assert classification.category in CATEGORIES
    assert list(classification.probabilities) == list(CATEGORIES)
    assert math.isclose(sum(classification.probabilities.values()), 1.0, rel_tol=1e-9)
    assert all(0.0 <= p <= 1.0 for p in classification.probabilities.values())
    assert 0.0 < classification.confidence <= 1.0
    if not classification.rules:
        assert classification.confidence == classification.probabilities[classification.category]
        assert classification.confidence == max(classification.probabilities.values())
    assert isinstance(classification.score, int) and 0 <= classification.score <= 100
    assert isinstance(classification.signals, tuple) and set(classification.signals) <= set(SIGNALS)


@settings(max_examples=40)
@given(
    last=st.text(max_size=400),
    system=st.text(max_size=60),
    tools=st.booleans(),
    max_tokens=st.none() | st.integers(min_value=1, max_value=10000),
)
def test_property_any_text_gets_a_well_formed_classification(
    classifier: Classifier, last: str, system: str, tools: bool, max_tokens: int | None
) -> None:
    request = RequestText(last, system, tools=tools, max_tokens=max_tokens)
    classification = classifier.classify(request)
    _check_classification(classification)
    again = classifier.classify(request)
    assert (again.category, again.confidence, again.score, again.signals) == (
        classification.category,
        classification.confidence,
        classification.score,
        classification.signals,
    )


def test_empty_request_classifies(classifier: Classifier) -> None:
    _check_classification(classifier.classify(RequestText("")))


def test_harder_requests_score_higher(classifier: Classifier) -> None:
    easy = classifier.classify(RequestText("hello"))
    hard = classifier.classify(
        chat_from_object(
            {
                "messages": [
                    {"role": "user", "content": ANALYSE_JOB_OFFERS},
                    {"role": "assistant", "content": "Offer B, mostly."},
                    {"role": "user", "content": PYTHON_FENCE * 20},
                ],
                "tools": [WEATHER_TOOL],
                "max_tokens": 4000,
            }
        )
    )
    assert easy.score < 20
    assert hard.score >= easy.score + 30


def test_many_system_messages_are_joined_once() -> None:
    """Thousands of system messages: one join, not a copy per message (a body must not be able
    to make routing quadratic)."""
    messages = [{"role": "system", "content": f"rule {i}"} for i in range(20_000)]
    request = chat_from_object({"messages": [*messages, {"role": "user", "content": "hi"}]})
    assert request.system.startswith("rule 0\nrule 1\n")
    assert request.system.count("\n") == 19_999
