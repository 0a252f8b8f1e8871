"""The routing policy and the router around it: which tier a classification gets and why, what the
``model`` name, the config and the override headers change, the routing config's errors, and
``tiermux explain``.

The policy is fed hand-made classifications and the router a stub classifier, so that these tests
pin the rules, not whatever the bundled model happens to say.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support import DEMO_CONFIG, write_config

from tiermux.api.errors import BadRequest, ModelNotFound
from tiermux.cli import main
from tiermux.config import Config, ConfigError, load_config
from tiermux.routing.categories import CAPABLE_BY_DEFAULT, CATEGORIES, CHEAP_BY_DEFAULT
from tiermux.routing.classifier import SIGNALS, Classification
from tiermux.routing.policy import Policy
from tiermux.routing.request import RequestText
from tiermux.routing.router import Router
from tiermux.routing.weights import Weights, WeightsError

MINUTES_TAIL = (
    "The treasurer presented the accounts for the year. Income from plot fees was slightly higher than "
    "last year because all forty plots were let. The plant sale in May brought in more than expected.\n\n"
) * 12 + "summarise this"


def _backend(name: str) -> dict[str, Any]:
    return {"name": name, "base_url": "http://127.0.0.1:9/v1", "model": f"{name}-model"}


TWO_TIERS: dict[str, Any] = {
    "backends": [_backend("local-9b"), _backend("frontier")],
    "tiers": {"cheap": ["local-9b", "frontier"], "capable": ["frontier"]},
}
THREE_TIERS: dict[str, Any] = {
    "backends": [_backend("small"), _backend("medium"), _backend("large")],
    "tiers": {"small": ["small"], "medium": ["medium"], "large": ["large"]},
}


MakeConfig = Callable[..., Config]


@pytest.fixture
def make_config(tmp_path: Path) -> MakeConfig:
    """Write ``base`` plus a ``routing`` section to a YAML file and load it, as the proxy does."""
    counter = iter(range(1000))

    def make(routing: dict[str, Any] | None = None, base: dict[str, Any] = TWO_TIERS) -> Config:
        tree = {**base, "routing": routing or {}}
        return load_config(write_config(tmp_path, tree, f"routing-{next(counter)}.yaml"))

    return make


def _classified(
    category: str,
    confidence: float = 0.9,
    score: int = 10,
    signals: Sequence[str] = (),
    rest: str = "reasoning",
) -> Classification:
    """A classification as the classifier would make it, with the probability ``category`` does
    not get all on ``rest`` (a capable-tier category unless said otherwise), so that the confidence
    that the request belongs on its category's tier is exactly ``confidence``."""
    if rest == category:
        rest = "code" if category != "code" else "reasoning"
    probs = [0.0] * len(CATEGORIES)
    probs[CATEGORIES.index(category)] = confidence
    probs[CATEGORIES.index(rest)] += 1.0 - confidence
    return Classification(category, confidence, score, tuple(signals), classes=CATEGORIES, probs=probs)


class StubClassifier:
    """Says the same thing about every request, and counts how often it was asked."""

    def __init__(self, classification: Classification) -> None:
        self.classification = classification
        self.calls = 0

    def classify(self, request: RequestText) -> Classification:
        self.calls += 1
        return self.classification


def _router(config: Config, classification: Classification) -> Router:
    return Router(config, StubClassifier(classification))  # type: ignore[arg-type]


# --- the policy --------------------------------------------------------------------------------------


@pytest.mark.parametrize("category", CATEGORIES)
def test_default_category_tiers(make_config: MakeConfig, category: str) -> None:
    tier, reasons = Policy(make_config()).decide(_classified(category))
    assert tier == ("cheap" if category in CHEAP_BY_DEFAULT else "capable")
    assert reasons == (f"category={category}",)


def test_category_tiers_from_config(make_config: MakeConfig) -> None:
    policy = Policy(make_config({"categories": {"code": "cheap", "extraction": "capable"}}))
    assert policy.decide(_classified("code")) == ("cheap", ("category=code",))
    assert policy.decide(_classified("extraction")) == ("capable", ("category=extraction",))
    assert policy.decide(_classified("reasoning"))[0] == "capable"  # the others keep their defaults


def test_with_one_tier_everything_goes_there(make_config: MakeConfig) -> None:
    base = {"backends": [_backend("only")], "tiers": {"only": ["only"]}}
    policy = Policy(make_config({"lift_score": 0}, base=base))
    for category in CATEGORIES:
        assert (
            policy.decide(_classified(category, confidence=0.01, score=100, signals=["tools"]))[0] == "only"
        )


def test_three_tiers_put_hard_categories_on_the_second(make_config: MakeConfig) -> None:
    """ "The other four to the second": the third tier is reached by config, lifting or floors."""
    policy = Policy(make_config(base=THREE_TIERS))
    assert policy.decide(_classified("extraction"))[0] == "small"
    assert policy.decide(_classified("reasoning"))[0] == "medium"


@pytest.mark.parametrize(
    ("confidence", "tier", "reasons"),
    [
        (0.9, "capable", ("category=extraction", "low_confidence")),
        (0.98999, "capable", ("category=extraction", "low_confidence")),
        (0.99, "cheap", ("category=extraction",)),
        (1.0, "cheap", ("category=extraction",)),
    ],
)
def test_low_confidence_goes_to_the_uncertain_tier(
    make_config: MakeConfig, confidence: float, tier: str, reasons: tuple[str, ...]
) -> None:
    """Unset, the uncertain tier is the tier of ``reasoning``."""
    policy = Policy(make_config({"min_confidence": 0.99}))
    assert policy.decide(_classified("extraction", confidence=confidence)) == (tier, reasons)


def test_default_min_confidence(make_config: MakeConfig) -> None:
    config = make_config()
    threshold = config.routing.min_confidence
    assert 0.0 < threshold < 1.0
    policy = Policy(config)
    assert policy.decide(_classified("rewriting", confidence=threshold - 0.01))[0] == "capable"
    assert policy.decide(_classified("rewriting", confidence=threshold + 0.01))[0] == "cheap"


def test_confidence_is_about_the_tier_not_the_category(make_config: MakeConfig) -> None:
    """Unsure between two categories of the same tier is not unsure about the tier."""
    policy = Policy(make_config({"min_confidence": 0.9}))
    torn = _classified("extraction", confidence=0.5, rest="classification")
    assert policy.decide(torn) == ("cheap", ("category=extraction",))
    assert policy.decide(_classified("extraction", confidence=0.5, rest="code"))[0] == "capable"


def test_uncertain_tier_from_config_never_lowers(make_config: MakeConfig) -> None:
    policy = Policy(
        make_config(
            {"min_confidence": 0.99, "uncertain_tier": "medium", "categories": {"reasoning": "large"}},
            base=THREE_TIERS,
        )
    )
    assert policy.decide(_classified("extraction", confidence=0.5)) == (
        "medium",
        ("category=extraction", "low_confidence"),
    )
    # already dearer than the uncertain tier: stays where its category put it
    assert policy.decide(_classified("reasoning", confidence=0.5)) == ("large", ("category=reasoning",))


@pytest.mark.parametrize(
    ("category", "score", "tier", "reasons"),
    [
        ("extraction", 49, "small", ("category=extraction",)),
        ("extraction", 50, "medium", ("category=extraction", "complex")),  # one tier, not two
        ("extraction", 100, "medium", ("category=extraction", "complex")),
        ("reasoning", 50, "large", ("category=reasoning", "complex")),
    ],
)
def test_lift_score_lifts_one_tier(
    make_config: MakeConfig, category: str, score: int, tier: str, reasons: tuple[str, ...]
) -> None:
    policy = Policy(make_config({"lift_score": 50}, base=THREE_TIERS))
    assert policy.decide(_classified(category, score=score)) == (tier, reasons)


def test_no_lift_above_the_top_tier(make_config: MakeConfig) -> None:
    policy = Policy(make_config({"lift_score": 50}))
    assert policy.decide(_classified("code", score=99)) == ("capable", ("category=code",))


def test_lift_score_default_and_off(make_config: MakeConfig) -> None:
    assert Policy(make_config()).decide(_classified("open_qa", score=80))[0] == "capable"
    assert Policy(make_config()).decide(_classified("open_qa", score=79))[0] == "cheap"
    assert Policy(make_config({"lift_score": None})).decide(_classified("open_qa", score=100))[0] == "cheap"


def test_low_confidence_then_lift(make_config: MakeConfig) -> None:
    """Each step starts where the one before left the request."""
    policy = Policy(make_config({"min_confidence": 0.99, "lift_score": 60}, base=THREE_TIERS))
    assert policy.decide(_classified("classification", confidence=0.5, score=60)) == (
        "large",
        ("category=classification", "low_confidence", "complex"),
    )


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("signal", ["tools", "image"])
def test_tools_and_images_go_to_the_tier_of_reasoning_whatever_the_category(
    make_config: MakeConfig, category: str, signal: str
) -> None:
    tier, reasons = Policy(make_config()).decide(_classified(category, signals=["short", signal]))
    assert tier == "capable"
    if category in CHEAP_BY_DEFAULT:
        assert reasons == (f"category={category}", f"signal={signal}")
    else:
        assert reasons == (f"category={category}",)


def test_signal_floor_follows_the_tier_of_reasoning(make_config: MakeConfig) -> None:
    policy = Policy(make_config({"categories": {"reasoning": "large"}}, base=THREE_TIERS))
    assert policy.decide(_classified("extraction", signals=["tools"])) == (
        "large",
        ("category=extraction", "signal=tools"),
    )


def test_only_the_signal_that_moved_the_request_is_a_reason(make_config: MakeConfig) -> None:
    policy = Policy(make_config())
    assert policy.decide(_classified("extraction", signals=["tools", "image"])) == (
        "capable",
        ("category=extraction", "signal=tools"),
    )


def test_signal_tiers_from_config_replace_the_defaults(make_config: MakeConfig) -> None:
    policy = Policy(make_config({"signal_tiers": {"long": "capable"}}))
    assert policy.decide(_classified("summarisation", signals=["long"])) == (
        "capable",
        ("category=summarisation", "signal=long"),
    )
    assert policy.decide(_classified("summarisation", signals=["tools", "image"]))[0] == "cheap"
    assert Policy(make_config({"signal_tiers": {}})).decide(_classified("extraction", signals=["tools"])) == (
        "cheap",
        ("category=extraction",),
    )


def test_alias_floor(make_config: MakeConfig) -> None:
    policy = Policy(make_config(base=THREE_TIERS))
    assert policy.decide(_classified("extraction"), floor=1) == (
        "medium",
        ("category=extraction", "model_floor"),
    )
    assert policy.decide(_classified("extraction"), floor=2) == (
        "large",
        ("category=extraction", "model_floor"),
    )
    # a floor below the category's tier changes nothing
    assert policy.decide(_classified("reasoning"), floor=1) == ("medium", ("category=reasoning",))


@pytest.fixture(scope="module")
def three_tier_policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    path = write_config(
        tmp_path_factory.mktemp("policy"),
        {**THREE_TIERS, "routing": {"signal_tiers": {"tools": "large", "long": "medium"}}},
    )
    return Policy(load_config(path))


@given(
    category=st.sampled_from(CATEGORIES),
    confidence=st.floats(min_value=0.0, max_value=1.0),
    score=st.integers(min_value=0, max_value=100),
    signals=st.lists(st.sampled_from(SIGNALS), unique=True),
    floor=st.integers(min_value=0, max_value=2),
    min_confidence=st.floats(min_value=0.0, max_value=1.0),
    lift_score=st.none() | st.integers(min_value=0, max_value=100),
)
def test_property_the_policy_only_ever_moves_up(
    three_tier_policy: Policy,
    category: str,
    confidence: float,
    score: int,
    signals: list[str],
    floor: int,
    min_confidence: float,
    lift_score: int | None,
) -> None:
    """Whatever the settings, a request never lands below its category's tier, its signals'
    floors or its alias's floor, and every reason after the first is a move up."""
    policy = copy.copy(three_tier_policy)
    policy.min_confidence, policy.lift_score = min_confidence, lift_score
    tier, reasons = policy.decide(_classified(category, confidence, score, signals), floor)
    i = policy.index[tier]
    assert i >= policy.index[policy.category_tier[category]]
    assert i >= floor
    for signal in signals:
        assert i >= policy.signal_floors.get(signal, 0)
    assert reasons[0] == f"category={category}"
    assert len(reasons) == len(set(reasons))
    assert len(reasons) - 1 <= i - policy.index[policy.category_tier[category]]


# --- the router: model names, pins, aliases, the classifier switch ---------------------------------


def test_resolve(make_config: MakeConfig) -> None:
    router = _router(
        make_config({"aliases": {"fast": "cheap", "smart": "capable", "gpt-4o": "auto"}}), _classified("code")
    )
    auto = router.resolve("auto")
    assert (auto.tier, auto.backends, auto.pinned, auto.classified, auto.floor) == (
        "cheap",
        ("local-9b", "frontier"),
        False,
        True,
        0,
    )
    smart = router.resolve("smart")
    assert (smart.tier, smart.pinned, smart.classified, smart.floor) == ("capable", False, True, 1)
    assert router.resolve("gpt-4o") is auto
    for name in ("local-9b", "local-9b-model"):
        pinned = router.resolve(name)
        assert (pinned.backends, pinned.pinned) == (("local-9b",), True)
    with pytest.raises(ModelNotFound):
        router.resolve("gpt-17")


def test_auto_is_classified_and_routed(make_config: MakeConfig) -> None:
    router = _router(make_config(), _classified("reasoning"))
    decision = router.decide(router.resolve("auto"), RequestText("anything"))
    assert (decision.tier, decision.backends, decision.pinned) == ("capable", ("frontier",), False)
    assert decision.classification is not None and decision.classification.category == "reasoning"
    assert decision.reasons == ("category=reasoning",)


@pytest.mark.parametrize("model", ["local-9b", "local-9b-model"])
def test_a_pinned_model_is_honoured_whatever_the_classifier_says(make_config: MakeConfig, model: str) -> None:
    router = _router(make_config(), _classified("reasoning", score=100, signals=["tools", "image"]))
    decision = router.decide(router.resolve(model), RequestText("prove the Riemann hypothesis"))
    assert decision.backends == ("local-9b",)
    assert decision.tier == "cheap"
    assert decision.pinned is True
    assert decision.reasons == ("pinned",)
    # what the classifier said is still reported
    assert decision.classification is not None and decision.classification.category == "reasoning"


def test_a_pinned_backend_outside_every_tier(make_config: MakeConfig) -> None:
    base = {**TWO_TIERS, "backends": [*TWO_TIERS["backends"], _backend("spare")]}
    router = _router(make_config(base=base), _classified("code"))
    decision = router.decide(router.resolve("spare"), RequestText("hi"))
    assert (decision.backends, decision.pinned) == (("spare",), True)


@pytest.mark.parametrize(
    ("model", "category", "tier", "reasons"),
    [
        ("smart", "extraction", "capable", ("category=extraction", "model_floor")),
        ("smart", "code", "capable", ("category=code",)),
        ("fast", "extraction", "cheap", ("category=extraction",)),
        ("fast", "reasoning", "capable", ("category=reasoning",)),  # a floor, not a ceiling
    ],
)
def test_alias_floors(
    make_config: MakeConfig, model: str, category: str, tier: str, reasons: tuple[str, ...]
) -> None:
    router = _router(make_config({"aliases": {"fast": "cheap", "smart": "capable"}}), _classified(category))
    decision = router.decide(router.resolve(model), RequestText("hi"))
    assert (decision.tier, decision.reasons) == (tier, reasons)


def test_classifier_disabled_goes_to_the_default_tier(make_config: MakeConfig) -> None:
    config = make_config(
        {"default_tier": "capable", "aliases": {"fast": "cheap"}, "classifier": {"enabled": False}}
    )
    router = Router(config)
    assert router.classifier is None
    for model, tier in (("auto", "capable"), ("fast", "cheap")):
        decision = router.decide(router.resolve(model), RequestText(MINUTES_TAIL, tools=True))
        assert (decision.tier, decision.classification, decision.reasons) == (tier, None, ("default_tier",))


def test_classifier_disabled_ignores_a_classifier_given(make_config: MakeConfig) -> None:
    stub = StubClassifier(_classified("code"))
    router = Router(make_config({"classifier": {"enabled": False}}), stub)  # type: ignore[arg-type]
    decision = router.decide(router.resolve("auto"), RequestText("hi"))
    assert (decision.tier, decision.classification) == ("cheap", None)
    assert stub.calls == 0


def test_requests_without_text_are_not_classified(make_config: MakeConfig) -> None:
    """Embeddings: no text to classify; they go where the route says."""
    stub = StubClassifier(_classified("code"))
    router = Router(make_config({"aliases": {"smart": "capable"}}), stub)  # type: ignore[arg-type]
    assert router.decide(router.resolve("auto"), None).tier == "cheap"
    decision = router.decide(router.resolve("smart"), None)
    assert (decision.tier, decision.classification, decision.reasons) == ("capable", None, ("default_tier",))
    assert stub.calls == 0


# --- override headers ------------------------------------------------------------------------------


def test_tier_header_overrides_when_allowed(make_config: MakeConfig) -> None:
    router = _router(make_config({"allow_header_override": True}), _classified("extraction"))
    decision = router.decide(router.resolve("auto"), RequestText("hi"), [(b"x-tiermux-tier", b"capable")])
    assert (decision.tier, decision.backends) == ("capable", ("frontier",))
    assert decision.reasons == ("category=extraction", "header_tier")
    # and down as well as up
    router = _router(make_config({"allow_header_override": True}), _classified("code", signals=["tools"]))
    decision = router.decide(router.resolve("auto"), RequestText("hi"), [(b"x-tiermux-tier", b" cheap ")])
    assert decision.tier == "cheap"


def test_category_header_overrides_when_allowed(make_config: MakeConfig) -> None:
    router = _router(make_config({"allow_header_override": True}), _classified("extraction", score=33))
    decision = router.decide(router.resolve("auto"), RequestText("hi"), [(b"x-tiermux-category", b"code")])
    assert decision.tier == "capable"
    assert decision.reasons == ("category=code",)
    classification = decision.classification
    assert classification is not None
    assert (classification.category, classification.confidence, classification.score) == ("code", 1.0, 33)
    assert classification.rules == ("header_category",)


@pytest.mark.parametrize(
    ("header", "param"),
    [
        ((b"x-tiermux-tier", b"gold"), "x-tiermux-tier"),
        ((b"x-tiermux-category", b"poetry"), "x-tiermux-category"),
    ],
)
def test_unknown_override_values_are_bad_requests(
    make_config: MakeConfig, header: tuple[bytes, bytes], param: str
) -> None:
    router = _router(make_config({"allow_header_override": True}), _classified("extraction"))
    with pytest.raises(BadRequest) as info:
        router.decide(router.resolve("auto"), RequestText("hi"), [header])
    assert info.value.param == param
    assert header[1].decode() in info.value.message


def test_override_headers_are_ignored_unless_allowed(make_config: MakeConfig) -> None:
    router = _router(make_config(), _classified("extraction"))
    for headers in (
        [(b"x-tiermux-tier", b"capable"), (b"x-tiermux-category", b"code")],
        [(b"x-tiermux-tier", b"gold"), (b"x-tiermux-category", b"poetry")],
    ):
        decision = router.decide(router.resolve("auto"), RequestText("hi"), headers)
        assert decision.tier == "cheap"
        assert decision.reasons == ("category=extraction",)
        assert decision.classification is not None and decision.classification.category == "extraction"


def test_unknown_tier_header_is_refused_for_a_pinned_model_too(make_config: MakeConfig) -> None:
    router = _router(make_config({"allow_header_override": True}), _classified("extraction"))
    with pytest.raises(BadRequest) as category_error:
        router.decide(router.resolve("local-9b"), RequestText("hi"), [(b"x-tiermux-category", b"poetry")])
    assert category_error.value.param == "x-tiermux-category"
    with pytest.raises(BadRequest):
        router.decide(router.resolve("local-9b"), RequestText("hi"), [(b"x-tiermux-tier", b"gold")])


# --- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("routing", "path", "message"),
    [
        ({"categories": {"poetry": "cheap"}}, "$.routing.categories.poetry", "unknown category"),
        ({"categories": {"code": "gold"}}, "$.routing.categories.code", "unknown tier 'gold'"),
        ({"uncertain_tier": "gold"}, "$.routing.uncertain_tier", "unknown tier 'gold'"),
        ({"signal_tiers": {"tools": "gold"}}, "$.routing.signal_tiers.tools", "unknown tier 'gold'"),
        ({"signal_tiers": {"sarcasm": "capable"}}, "$.routing.signal_tiers.sarcasm", "unknown signal"),
        ({"classifier": {"weights": "missing.tmxw"}}, "$.routing.classifier.weights", "no such file"),
        ({"classifier": {"weigths": "x.tmxw"}}, "$.routing.classifier", "weigths"),
        ({"aliases": {"fast": "gold"}}, "$.routing.aliases.fast", "expected auto or a tier"),
        ({"aliases": {"fast": ""}}, "$.routing.aliases.fast", "expected auto or a tier"),
        ({"default_tier": "gold"}, "$.routing.default_tier", "unknown tier 'gold'"),
        ({"min_confidence": 1.5}, "$.routing.min_confidence", "<= 1"),
        ({"lift_score": 101}, "$.routing.lift_score", "<= 100"),
        ({"lift_score": -1}, "$.routing.lift_score", ">= 0"),
    ],
)
def test_routing_config_errors_name_file_and_field(
    tmp_path: Path, routing: dict[str, Any], path: str, message: str
) -> None:
    config_path = write_config(tmp_path, {**TWO_TIERS, "routing": routing}, "bad-routing.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(config_path)
    error = info.value
    assert error.path == path
    assert message in error.message
    assert str(config_path) in str(error) and path in str(error)


def test_unknown_signal_error_lists_the_signals(tmp_path: Path) -> None:
    config_path = write_config(tmp_path, {**TWO_TIERS, "routing": {"signal_tiers": {"sarcasm": "capable"}}})
    with pytest.raises(ConfigError) as info:
        load_config(config_path)
    assert all(signal in info.value.message for signal in SIGNALS)


def test_every_signal_and_category_is_accepted(make_config: MakeConfig) -> None:
    config = make_config(
        {
            "categories": dict.fromkeys(CATEGORIES, "capable"),
            "signal_tiers": dict.fromkeys(SIGNALS, "cheap"),
            "uncertain_tier": "cheap",
        }
    )
    policy = Policy(config)
    assert set(policy.category_tier.values()) == {"capable"}
    assert set(policy.signal_floors) == set(SIGNALS)


def test_an_alias_named_like_a_file_setting_is_a_model_name(make_config: MakeConfig) -> None:
    config = make_config({"aliases": {"weights": "capable"}})
    assert config.routing.aliases == {"weights": "capable"}


def _biased_weights(category: str) -> Weights:
    bias = [5.0 if name == category else 0.0 for name in CATEGORIES]
    return Weights(list(CATEGORIES), bias, 1.0, bytes(16 * len(CATEGORIES)))


def test_weights_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    directory = tmp_path / "conf"
    directory.mkdir()
    _biased_weights("brainstorming").save(directory / "custom.tmxw")
    config = load_config(
        write_config(directory, {**TWO_TIERS, "routing": {"classifier": {"weights": "custom.tmxw"}}})
    )
    assert config.routing.classifier.weights == str(directory / "custom.tmxw")
    router = Router(config)
    decision = router.decide(router.resolve("auto"), RequestText("Extract the date: 3 May."))
    assert decision.classification is not None
    assert decision.classification.category == "brainstorming"
    assert decision.tier == "capable"


@pytest.mark.parametrize(
    "content",
    [b"not weights at all", b"TMXW\xff\xff\x00\x00{", b""],
    ids=["text", "truncated", "empty"],
)
def test_a_corrupt_weights_file_stops_the_router_and_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    (tmp_path / "bad.tmxw").write_bytes(content)
    config_path = write_config(tmp_path, {**TWO_TIERS, "routing": {"classifier": {"weights": "bad.tmxw"}}})
    config = load_config(config_path)  # the file exists; its content is read when routing starts
    with pytest.raises(WeightsError):
        Router(config)
    assert main(["check", "--config", str(config_path)]) == 2
    assert str(config_path) in capsys.readouterr().err


# --- tiermux explain -------------------------------------------------------------------------------


@pytest.fixture
def explain_config(tmp_path: Path) -> Path:
    return write_config(tmp_path, {**TWO_TIERS, "routing": {"aliases": {"smart": "capable"}}}, "explain.yaml")


def test_explain_prints_the_decision(explain_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", MINUTES_TAIL, "--config", str(explain_config)]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(":", 1) for line in out.splitlines() if ":" in line and not line[0].isspace())
    assert lines["category"].strip() == "summarisation"
    assert lines["tier"].split() == ["cheap", "(category=summarisation)"]
    assert lines["backend"].strip().startswith("local-9b (model local-9b-model); chain local-9b > frontier")
    assert 0 <= int(lines["score"].split("/")[0]) <= 100
    assert "long" in lines["signals"]


def test_explain_json_matches_the_route_endpoint(
    explain_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["explain", "hello there", "--system", "Be brief.", "--model", "smart", "--json"]
    assert main([*args, "--config", str(explain_config)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["object"] == "tiermux.route"
    assert answer["tier"] == "capable"
    assert answer["backend"] == "frontier" and answer["backend_model"] == "frontier-model"
    assert answer["pinned"] is False
    assert answer["category"] in CATEGORIES
    assert "system" in answer["signals"]
    assert set(answer["probabilities"]) == set(CATEGORIES)
    assert answer["reasons"][0] == f"category={answer['category']}"


def test_explain_a_whole_request_with_tools(
    explain_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = tmp_path / "request.json"
    request.write_text(
        json.dumps(
            {
                "model": "auto",
                "messages": [
                    {"role": "user", "content": "Extract the order number: 'Order #A-1182 shipped.'"}
                ],
                "tools": [{"type": "function", "function": {"name": "lookup_order", "parameters": {}}}],
            }
        )
    )
    assert main(["explain", "--request", str(request), "--json", "--config", str(explain_config)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["tier"] == "capable"
    assert "tools" in answer["signals"]
    assert answer["category"] in CAPABLE_BY_DEFAULT or "signal=tools" in answer["reasons"]


def test_explain_with_the_classifier_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, {**TWO_TIERS, "routing": {"classifier": {"enabled": False}}})
    assert main(["explain", "Analyse and compare two options and recommend one.", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tier:        cheap (classifier off)" in out
    assert "category:" not in out


def test_explain_defaults_to_the_demo_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TIERMUX_CONFIG", raising=False)
    assert main(["explain", "hello", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    demo = load_config(DEMO_CONFIG)
    assert answer["tier"] in demo.tiers
    assert answer["category"] in CATEGORIES


def test_explain_errors(explain_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "hi", "--model", "gpt-17", "--config", str(explain_config)]) == 1
    assert "gpt-17" in capsys.readouterr().err
    assert (
        main(["explain", "--request", str(tmp_path / "missing.json"), "--config", str(explain_config)]) == 1
    )
    assert "missing.json" in capsys.readouterr().err
    bad = write_config(tmp_path, {**TWO_TIERS, "routing": {"uncertain_tier": "gold"}}, "bad.yaml")
    assert main(["explain", "hi", "--config", str(bad)]) == 2
    assert "$.routing.uncertain_tier" in capsys.readouterr().err


def test_explain_needs_a_prompt_or_a_request(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain"]) == 2
    assert "needs a prompt" in capsys.readouterr().err


def test_explain_takes_the_model_of_a_request_body(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "qwen-9b", "messages": [{"role": "user", "content": "hi"}]}))
    assert main(["explain", "--request", str(body), "--json"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["pinned"] is True and decision["backend"] == "local-9b"
