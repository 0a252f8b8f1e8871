"""Training, the weights file, labelled data and evaluation: ``tiermux train`` and ``tiermux eval``.

Training runs on a tiny hand-written set with few buckets and epochs, so that it is quick with
either twin; evaluation is checked against numbers worked out by hand from a stub classifier.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from tests.support import write_config

from tiermux._speedups import classify
from tiermux.cli import main
from tiermux.config import Config, load_config
from tiermux.routing.categories import CATEGORIES
from tiermux.routing.classifier import Classification, Classifier
from tiermux.routing.dataset import DatasetError, Example, load_examples, split_holdout
from tiermux.routing.evaluate import evaluate
from tiermux.routing.request import RequestText
from tiermux.routing.router import Router
from tiermux.routing.train import TrainOptions, train
from tiermux.routing.weights import MAGIC, Weights, WeightsError, load_weights

# Two requests of each category, in the three forms a data file may hold.
ROWS: list[dict[str, Any]] = [
    {
        "label": "extraction",
        "prompt": "Extract every date mentioned in this note: met on 3 May, call on 9 June.",
    },
    {
        "label": "extraction",
        "request": {
            "messages": [{"role": "user", "content": "Pull the phone number out of: 'call Ana on 555-0142'"}],
            "response_format": {"type": "json_object"},
        },
    },
    {
        "label": "classification",
        "prompt": "Is this review positive or negative? 'The battery died in a day.'",
    },
    {
        "label": "classification",
        "prompt": "Label this ticket as billing, bug or feature request: 'I was charged twice.'",
    },
    {
        "label": "summarisation",
        "prompt": "Summarise this paragraph in one sentence: The council met and agreed...",
    },
    {
        "label": "summarisation",
        "messages": [
            {"role": "user", "content": "Give me a tl;dr of the thread below.\n\nAna: ...\nBo: ..."}
        ],
    },
    {"label": "rewriting", "prompt": "Rewrite this email so it sounds more polite: 'Send the report now.'"},
    {
        "label": "rewriting",
        "prompt": "Make this sentence shorter: 'In the event that it rains, we will stay in.'",
    },
    {"label": "open_qa", "prompt": "What is the capital of Canada?"},
    {"label": "open_qa", "prompt": "Who wrote Pride and Prejudice?"},
    {"label": "brainstorming", "prompt": "Give me ten ideas for a team-building day in winter."},
    {"label": "brainstorming", "prompt": "Brainstorm names for a bakery that sells sourdough."},
    {"label": "creative_writing", "prompt": "Write a short poem about the sea at night."},
    {"label": "creative_writing", "prompt": "Write a bedtime story about a fox who loses his hat."},
    {"label": "reasoning", "prompt": "If a train leaves at 3pm going 60 km/h, when has it covered 150 km?"},
    {
        "label": "reasoning",
        "prompt": "Analyse and compare renting and buying for us over five years and recommend one.",
    },
    {"label": "code", "prompt": "Write a Python function that reverses a linked list."},
    {
        "label": "code",
        "messages": [
            {"role": "user", "content": "Fix this:\n```js\nconst x = [1, 2];\nx.map((y) => { y * 2 });\n```"}
        ],
    },
]

SMALL = TrainOptions(buckets=1 << 10, epochs=2, seed=5)


def _write_rows(path: Path, rows: list[Any], *, raw: list[str] | None = None) -> Path:
    lines = [json.dumps(row) for row in rows] if raw is None else raw
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return _write_rows(tmp_path / "tiny.jsonl", ROWS)


@pytest.fixture
def examples(data_file: Path) -> list[Example]:
    return load_examples([data_file])


# --- training ----------------------------------------------------------------------------------------


def test_same_data_and_seed_give_the_same_file(examples: list[Example]) -> None:
    first = train(examples, SMALL).to_bytes()
    assert train(examples, TrainOptions(buckets=1 << 10, epochs=2, seed=5)).to_bytes() == first
    assert train(examples, TrainOptions(buckets=1 << 10, epochs=2, seed=6)).to_bytes() != first


def test_trained_weights_describe_themselves(examples: list[Example]) -> None:
    weights = train(examples, SMALL, meta={"data": ["tiny.jsonl"]})
    assert weights.classes == list(CATEGORIES)
    assert weights.model.n_buckets == 1 << 10
    assert len(weights.table) == (1 << 10) * len(CATEGORIES)
    assert weights.features_version == classify.FEATURES_VERSION
    assert weights.meta["examples"] == len(ROWS)
    assert weights.meta["options"] == SMALL.as_dict()
    assert weights.meta["data"] == ["tiny.jsonl"]


def test_training_learns_the_training_set(examples: list[Example]) -> None:
    """Not a quality bar: a sanity check that the loss goes down and labels are learnt."""
    losses: list[float] = []
    weights = train(
        examples,
        TrainOptions(buckets=1 << 12, epochs=6, seed=1),
        progress=lambda epoch, total, loss: losses.append(loss),
    )
    assert len(losses) == 6
    assert losses[-1] < losses[0] / 2
    classifier = Classifier(weights)
    right = sum(classifier.classify(ex.request).category == ex.label for ex in examples)
    assert right >= 0.8 * len(examples)


@pytest.mark.parametrize("buckets", [0, 1, 3, 1000])
def test_buckets_must_be_a_power_of_two(buckets: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        TrainOptions(buckets=buckets)


# --- the weights file ----------------------------------------------------------------------------------


def _tiny_weights(**changes: Any) -> Weights:
    fields: dict[str, Any] = {
        "classes": list(CATEGORIES),
        "bias": [i / 10 - 0.3 for i in range(len(CATEGORIES))],
        "scale": 0.0123,
        "table": bytes(range(256)) * (16 * len(CATEGORIES) // 256) + bytes(16 * len(CATEGORIES) % 256),
        "meta": {"data": ["x.jsonl"], "note": "naïve ✓"},
    }
    fields.update(changes)
    return Weights(**fields)


def test_weights_round_trip(tmp_path: Path) -> None:
    weights = _tiny_weights()
    data = weights.to_bytes()
    assert data[:4] == MAGIC
    again = Weights.from_bytes(data)
    assert again.classes == weights.classes
    assert again.bias == weights.bias
    assert again.scale == weights.scale
    assert again.table == weights.table
    assert again.meta == weights.meta
    assert again.features_version == weights.features_version
    assert again.to_bytes() == data
    path = tmp_path / "w.tmxw"
    weights.save(path)
    assert path.read_bytes() == data
    assert load_weights(path).to_bytes() == data


def test_trained_weights_round_trip_and_classify_alike(examples: list[Example], tmp_path: Path) -> None:
    weights = train(examples, SMALL)
    weights.save(tmp_path / "trained.tmxw")
    loaded = load_weights(tmp_path / "trained.tmxw")
    for ex in examples:
        a, b = Classifier(weights).classify(ex.request), Classifier(loaded).classify(ex.request)
        assert (a.category, a.confidence, a.score) == (b.category, b.confidence, b.score)


def test_bundled_weights_load() -> None:
    weights = load_weights()
    assert weights.classes == list(CATEGORIES)
    assert weights.features_version == classify.FEATURES_VERSION
    assert Weights.from_bytes(weights.to_bytes()).to_bytes() == weights.to_bytes()


def _file(header: dict[str, Any] | bytes, table: bytes, *, compress: bool = True) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(raw)) + raw + (zlib.compress(table) if compress else table)


def _header(**changes: Any) -> dict[str, Any]:
    header: dict[str, Any] = {
        "format": 1,
        "features": classify.FEATURES_VERSION,
        "classes": list(CATEGORIES),
        "buckets": 16,
        "scale": 0.01,
        "bias": [0.0] * len(CATEGORIES),
        "meta": {},
    }
    header.update(changes)
    return header


TABLE = bytes(16 * len(CATEGORIES))


def test_a_well_formed_handmade_file_loads() -> None:
    """The corrupt files below differ from this one in one way each."""
    assert Weights.from_bytes(_file(_header(), TABLE)).model.n_buckets == 16


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a tiermux weights file"),
        (b"TMXW", "not a tiermux weights file"),
        (b"GIF89a" + bytes(40), "not a tiermux weights file"),
        (MAGIC + struct.pack("<I", 500) + b'{"format": 1', "corrupt"),
        (_file(b"not json", TABLE), "corrupt"),
        (_file(b"[1, 2]", TABLE), "corrupt"),
        (_file(_header(), TABLE, compress=False), "corrupt"),
        (_file(_header(), zlib.compress(TABLE)[:-5], compress=False), "corrupt"),
        (_file(_header(), TABLE[:-9]), "does not match"),
        (_file(_header(buckets=32), TABLE), "does not match"),
        (_file(_header(format=2), TABLE), "format"),
        (_file({k: v for k, v in _header().items() if k != "bias"}, TABLE), "corrupt"),
        (_file(_header(bias=[0.0] * 3), TABLE), "bias"),
        (_file(_header(bias=["x"] * 9), TABLE), "corrupt"),
        (_file(_header(buckets=3), bytes(3 * len(CATEGORIES))), "power of two"),
    ],
    ids=[
        "empty",
        "magic-only",
        "other-format",
        "truncated-header",
        "header-not-json",
        "header-not-object",
        "table-not-compressed",
        "table-truncated",
        "table-short",
        "buckets-mismatch",
        "format-2",
        "no-bias",
        "bias-count",
        "bias-not-numbers",
        "buckets-not-power-of-two",
    ],
)
def test_corrupt_weights_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        Weights.from_bytes(data)


@pytest.mark.parametrize("version", [classify.FEATURES_VERSION + 1, classify.FEATURES_VERSION - 1, 0])
def test_weights_from_another_feature_scheme_are_refused(version: int, tmp_path: Path) -> None:
    """Buckets would mean other features: the model would silently route at random."""
    path = tmp_path / "old.tmxw"
    path.write_bytes(_file(_header(features=version), TABLE))
    with pytest.raises(WeightsError, match="retrain") as info:
        load_weights(path)
    assert str(version) in str(info.value)


def test_weights_for_other_classes_are_refused_by_the_classifier(tmp_path: Path) -> None:
    weights = Weights(["positive", "negative"], [0.0, 0.0], 1.0, bytes(16 * 2))
    with pytest.raises(WeightsError):
        Classifier(weights)
    reordered = Weights(list(reversed(CATEGORIES)), [0.0] * len(CATEGORIES), 1.0, TABLE)
    with pytest.raises(WeightsError):
        Classifier(reordered)


# --- labelled data ---------------------------------------------------------------------------------------


def test_the_three_forms_load(examples: list[Example], data_file: Path) -> None:
    assert [ex.label for ex in examples] == [row["label"] for row in ROWS]
    assert examples[0].request.last == ROWS[0]["prompt"]
    assert examples[1].request.json_mode is True
    assert examples[5].request.last.startswith("Give me a tl;dr")
    assert examples[0].id == f"{data_file}:1"


def test_ids_blank_lines_and_several_files(tmp_path: Path) -> None:
    first = _write_rows(
        tmp_path / "a.jsonl",
        [],
        raw=[
            '{"id": "q-1", "label": "open_qa", "prompt": "Why is the sky blue?"}',
            "",
            "   ",
            '{"label": "code", "prompt": "x"}',
        ],
    )
    second = _write_rows(tmp_path / "b.jsonl", [{"id": 7, "label": "rewriting", "prompt": "Shorten: ..."}])
    examples = load_examples([first, second])
    assert [ex.id for ex in examples] == ["q-1", f"{first}:4", "7"]
    assert [ex.label for ex in examples] == ["open_qa", "code", "rewriting"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"label": "code", "prompt": "x"', "Expecting"),
        ('{"prompt": "no label"}', "label"),
        ('{"label": "poetry", "prompt": "x"}', "unknown label 'poetry'"),
        ('{"label": "code"}', "one of `prompt`, `messages` or `request`"),
        ('{"label": "code", "prompt": ["a", "b"]}', "must be a string"),
        ('{"label": "code", "messages": "hello"}', "Expected `array`"),
        ('{"label": "code", "request": {"messages": [{"role": 5}]}}', "Expected `str`"),
        ('{"label": "code", "request": "hello"}', "Expected `object`"),
        ('["code", "x"]', ""),
        ("null", ""),
    ],
    ids=[
        "bad-json",
        "no-label",
        "unknown-label",
        "no-request",
        "prompt-not-string",
        "messages-not-list",
        "bad-message",
        "request-not-object",
        "array",
        "null",
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = _write_rows(
        tmp_path / "bad.jsonl", [], raw=['{"label": "code", "prompt": "fine"}', "", line, '{"label": "code"}']
    )
    with pytest.raises(DatasetError) as info:
        load_examples([path])
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DatasetError, match=r"nope\.jsonl"):
        load_examples([missing])


def test_a_file_that_is_not_utf8_is_a_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"label": "open_qa", "prompt": "ok"}\n{"label": "open_qa", "prompt": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r"latin1\.jsonl"):
        load_examples([path])


def test_split_holdout_is_stratified_and_seeded(examples: list[Example]) -> None:
    many = examples * 5  # ten of each label
    kept, held = split_holdout(many, 0.2, seed=3)
    assert len(kept) + len(held) == len(many)
    assert sorted(ex.label for ex in held) == sorted(list(CATEGORIES) * 2)
    again_kept, again_held = split_holdout(many, 0.2, seed=3)
    assert [id(ex) for ex in again_held] == [id(ex) for ex in held]
    assert [id(ex) for ex in again_kept] == [id(ex) for ex in kept]
    assert split_holdout(many, 0.0, seed=3)[1] == []


# --- evaluation ------------------------------------------------------------------------------------------

EVAL_CONFIG: dict[str, Any] = {
    "backends": [
        {
            "name": "small",
            "base_url": "http://127.0.0.1:9/v1",
            "model": "s",
            "price": {"input": 1.0, "output": 2.0},
        },
        {
            "name": "big",
            "base_url": "http://127.0.0.1:9/v1",
            "model": "b",
            "price": {"input": 10.0, "output": 20.0},
        },
    ],
    "tiers": {"cheap": ["small", "big"], "capable": ["big"]},
    "routing": {"lift_score": None},
}


class ScriptedClassifier:
    """Says, for each prompt, the category the test scripted for it (confidence 1)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def classify(self, request: RequestText) -> Classification:
        category = self.answers[request.last]
        probs = [1.0 if c == category else 0.0 for c in CATEGORIES]
        return Classification(category, 1.0, 0, (), classes=CATEGORIES, probs=probs)


@pytest.fixture
def eval_config(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path, EVAL_CONFIG, "eval.yaml"))


def test_evaluation_numbers_by_hand(eval_config: Config) -> None:
    # (label, what the classifier says); every prompt is 400 characters = 100 input tokens
    script = [
        ("extraction", "extraction"),  # cheap, kept cheap
        ("summarisation", "reasoning"),  # cheap-eligible, sent capable: savings lost
        ("reasoning", "reasoning"),  # needs capable, got it
        ("code", "open_qa"),  # needs capable, sent cheap: misrouted down
        ("open_qa", "open_qa"),  # cheap, kept cheap
    ]
    examples = []
    answers = {}
    for n, (label, said) in enumerate(script):
        prompt = f"{n}".ljust(400, ".")
        answers[prompt] = said
        examples.append(Example(f"e{n}", label, RequestText(prompt)))
    router = Router(eval_config, ScriptedClassifier(answers))  # type: ignore[arg-type]
    result = evaluate(examples, eval_config, router, output_tokens=10)

    assert result.total == 5
    assert result.accuracy == pytest.approx(3 / 5)
    assert result.precision("reasoning") == pytest.approx(1 / 2)  # one of two "reasoning" was right
    assert result.recall("reasoning") == 1.0
    assert result.precision("open_qa") == pytest.approx(1 / 2)
    assert result.recall("summarisation") == 0.0
    assert result.recall("code") == 0.0 and result.precision("code") == 0.0
    assert result.confusion["code"]["open_qa"] == 1
    assert result.savings_recall == pytest.approx(2 / 3)  # extraction and open_qa of three
    assert result.misroute_down == pytest.approx(1 / 2)  # code of code and reasoning
    # cheap: (100 x 1 + 10 x 2) / 1e6 each; capable: (100 x 10 + 10 x 20) / 1e6 each
    assert result.cost == pytest.approx(3 * 120e-6 + 2 * 1200e-6)
    assert result.baseline_cost == pytest.approx(5 * 1200e-6)
    assert result.savings == pytest.approx(1 - 2760 / 6000)

    report = result.report()
    assert "5 requests; accuracy 0.600" in report
    assert "(2 of 3 cheap-eligible requests sent to cheap)" in report
    assert "(1 of 2 requests that need a dearer tier sent cheaper)" in report
    assert "$0.0028 against $0.0060 all-capable (54.0% saved)" in report


def test_evaluation_of_nothing(eval_config: Config) -> None:
    result = evaluate([], eval_config, Router(eval_config, ScriptedClassifier({})))  # type: ignore[arg-type]
    assert (result.total, result.accuracy, result.savings_recall, result.misroute_down) == (0, 0.0, 0.0, 0.0)
    assert "0 requests" in result.report()


# --- the commands --------------------------------------------------------------------------------------


def test_cli_train_is_reproducible(
    data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", str(data_file), "--buckets", "1024", "--epochs", "2"]
    assert main([*args, "-o", str(tmp_path / "a.tmxw"), "--seed", "4"]) == 0
    assert f"wrote {tmp_path / 'a.tmxw'}" in capsys.readouterr().out
    assert main([*args, "-o", str(tmp_path / "b.tmxw"), "--seed", "4"]) == 0
    assert main([*args, "-o", str(tmp_path / "c.tmxw"), "--seed", "9"]) == 0
    first = (tmp_path / "a.tmxw").read_bytes()
    assert (tmp_path / "b.tmxw").read_bytes() == first
    assert (tmp_path / "c.tmxw").read_bytes() != first
    weights = load_weights(tmp_path / "a.tmxw")
    assert weights.meta["options"]["seed"] == 4
    assert weights.meta["data"] == [data_file.name]


def test_cli_train_with_a_holdout(
    data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "h.tmxw"
    assert (
        main(
            [
                "train",
                str(data_file),
                "-o",
                str(out),
                "--buckets",
                "1024",
                "--epochs",
                "2",
                "--holdout",
                "0.5",
            ]
        )
        == 0
    )
    assert "held-out accuracy:" in capsys.readouterr().out
    assert load_weights(out).meta["examples"] == len(ROWS) // 2


def test_cli_train_refuses_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_rows(
        tmp_path / "bad.jsonl", [{"label": "code", "prompt": "x"}, {"label": "haiku", "prompt": "y"}]
    )
    assert main(["train", str(path), "-o", str(tmp_path / "x.tmxw")]) == 1
    assert f"{path}:2" in capsys.readouterr().err
    assert not (tmp_path / "x.tmxw").exists()
    assert main(["train", str(path), "--buckets", "1000", "-o", str(tmp_path / "x.tmxw")]) == 1


def _eval_files(tmp_path: Path, enabled: bool) -> tuple[Path, Path, Path]:
    """A config, weights that call everything summarisation, and four labelled prompts."""
    weights = tmp_path / "summarise-everything.tmxw"
    bias = [5.0 if c == "summarisation" else 0.0 for c in CATEGORIES]
    Weights(list(CATEGORIES), bias, 1.0, TABLE).save(weights)
    tree = {**EVAL_CONFIG, "routing": {"lift_score": None, "classifier": {"enabled": enabled}}}
    config = write_config(tmp_path, tree, "eval.yaml")
    data = _write_rows(
        tmp_path / "eval.jsonl",
        [
            {"label": "summarisation", "prompt": "Summarise: the meeting agreed to keep fees unchanged."},
            {"label": "summarisation", "prompt": "tl;dr of the thread please"},
            {"label": "extraction", "prompt": "Extract the date: 3 May."},
            {"label": "code", "prompt": "Write a function that sorts a list."},
        ],
    )
    return config, weights, data


def test_cli_eval_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, weights, data = _eval_files(tmp_path, enabled=True)
    assert main(["eval", str(data), "--config", str(config), "--weights", str(weights)]) == 0
    out = capsys.readouterr().out
    assert "4 requests; accuracy 0.500" in out
    assert "(3 of 3 cheap-eligible requests sent to cheap)" in out
    assert "(1 of 1 requests that need a dearer tier sent cheaper)" in out
    assert "confusion (rows: label, columns: predicted)" in out


def test_cli_eval_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, _weights, data = _eval_files(tmp_path, enabled=True)
    assert main(["eval", str(tmp_path / "none.jsonl"), "--config", str(config)]) == 1
    assert "none.jsonl" in capsys.readouterr().err
    (tmp_path / "bad.tmxw").write_bytes(b"junk")
    assert main(["eval", str(data), "--config", str(config), "--weights", str(tmp_path / "bad.tmxw")]) == 1
    assert "not a tiermux weights file" in capsys.readouterr().err


def test_cli_eval_scores_the_given_weights_even_with_the_classifier_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, weights, data = _eval_files(tmp_path, enabled=False)
    assert main(["eval", str(data), "--config", str(config), "--weights", str(weights)]) == 0
    assert "4 requests; accuracy 0.500" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("bias", "scale"),
    [([float("nan")] + [0.0] * 8, 1.0), ([0.0] * 9, float("inf")), ([0.0] * 9, 0.0), ([0.0] * 9, -1.0)],
    ids=["nan-bias", "inf-scale", "zero-scale", "negative-scale"],
)
def test_weights_that_would_poison_every_probability_are_refused(bias: list[float], scale: float) -> None:
    """A NaN probability would pass every confidence check and send all traffic cheap."""
    with pytest.raises(WeightsError, match="finite"):
        Weights(list(CATEGORIES), bias, scale, bytes(2 * 9))


def test_weights_with_junk_after_the_table_are_refused() -> None:
    data = Weights(list(CATEGORIES), [0.0] * 9, 1.0, bytes(2 * 9)).to_bytes()
    with pytest.raises(WeightsError, match="junk"):
        Weights.from_bytes(data + b"extra")


def test_an_unknown_format_is_named_as_such() -> None:
    header = json.dumps({"format": 2}).encode()
    with pytest.raises(WeightsError, match="unknown weights format 2"):
        Weights.from_bytes(MAGIC + struct.pack("<I", len(header)) + header)


def test_train_refuses_a_holdout_outside_0_to_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"label": "code", "prompt": "write a sort"}) + "\n")
    assert main(["train", str(data), "--holdout", "-0.5", "-o", str(tmp_path / "w.tmxw")]) == 2
    assert "--holdout" in capsys.readouterr().err


def test_train_reports_an_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"label": "code", "prompt": "write a sort"}) + "\n")
    out = tmp_path / "missing-dir" / "w.tmxw"
    assert main(["train", str(data), "--epochs", "1", "--buckets", "1024", "-o", str(out)]) == 1
    assert "cannot write" in capsys.readouterr().err
