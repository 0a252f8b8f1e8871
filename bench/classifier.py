"""Build the bundled classifier and measure how well routing generalises.

    python -m bench.classifier            # measure; write bench/results/classifier.md
    python -m bench.classifier --build    # also retrain src/tiermux/routing/classifier.tmxw

The labelled sets in ``bench/data`` were written for different kinds of users (see its README), so
the honest question is not "how well does it do on rows like its training rows" but "how well does
it do on a kind of traffic it has never seen". Three measurements answer it:

1. **leave-one-set-out**: for each training set, train on all the others and score routing on it;
2. **held-out**: the sets in ``HELD_OUT`` are never trained on; the bundled model is scored on them;
3. **external**: the shared sample of real prompts (``--shared``, if present) is split in half per
   label with a fixed seed; one half may be trained on, the other is only ever scored.

Routing is scored with the demo config's tiers and prices and the default policy, exactly as
``tiermux eval`` does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from tiermux.config import Config, load_config
from tiermux.routing.classifier import Classifier
from tiermux.routing.dataset import Example, load_examples, split_holdout
from tiermux.routing.evaluate import Evaluation, evaluate
from tiermux.routing.router import Router
from tiermux.routing.train import TrainOptions, train
from tiermux.routing.weights import Weights

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
BUNDLED = ROOT / "src" / "tiermux" / "routing" / "classifier.tmxw"
DEMO_CONFIG = ROOT / "src" / "tiermux" / "examples" / "demo.yaml"
# The external sample of real prompts, when it sits next to the checkout (or where the variable says).
DEFAULT_SHARED = Path(
    os.environ.get("TIERMUX_SHARED_SAMPLE") or ROOT.parent / "shared" / "data" / "routing-sample.jsonl"
)
RESULTS = ROOT / "bench" / "results" / "classifier.md"

HELD_OUT = ("set-e",)  # never trained on
SHARED_SEED = 3
OPTIONS = TrainOptions(buckets=1 << 16, epochs=12, rate=0.4, l2=1e-4, seed=7)


def data_sets() -> dict[str, list[Example]]:
    return {path.stem: load_examples([path]) for path in sorted(DATA.glob("set-*.jsonl"))}


def line(name: str, result: Evaluation) -> str:
    return (
        f"| {name} | {result.total} | {result.accuracy:.3f} | {result.savings_recall:.3f} | "
        f"{result.misroute_down:.3f} | {result.savings:.1%} |"
    )


HEADER = [
    "| data | requests | accuracy | savings recall | misroute-down | cost saved |",
    "|---|---|---|---|---|---|",
]


def leave_one_out(sets: dict[str, list[Example]], extra: list[Example], config: Config) -> list[str]:
    rows = []
    results = []
    for name, examples in sets.items():
        rest = [e for other, group in sets.items() if other != name for e in group] + extra
        weights = train(rest, OPTIONS)
        result = evaluate(examples, config, Router(config, Classifier(weights)))
        results.append(result)
        rows.append(line(name, result))
        print(rows[-1], flush=True)
    pooled = Evaluation(results[0].tiers, results[0].category_tier)
    for r in results:
        for label, row in r.confusion.items():
            for predicted, count in row.items():
                pooled.confusion[label][predicted] += count
        for field in ("total", "cheap_eligible", "cheap_kept", "needs_dearer", "sent_down"):
            setattr(pooled, field, getattr(pooled, field) + getattr(r, field))
        pooled.cost += r.cost
        pooled.baseline_cost += r.baseline_cost
    rows.append(line("**all folds**", pooled))
    rows.append("")
    rows.append(
        f"Median over folds: savings recall {statistics.median(r.savings_recall for r in results):.3f}, "
        f"misroute-down {statistics.median(r.misroute_down for r in results):.3f}."
    )
    rows.append("")
    rows.append("Pooled over all folds:")
    rows.append("")
    rows.append("```")
    rows.append(pooled.report())
    rows.append("```")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--build", action="store_true", help="retrain the bundled weights first")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared sample (optional)")
    parser.add_argument("--no-cv", action="store_true", help="skip leave-one-set-out (faster)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    config = load_config(DEMO_CONFIG)
    sets = data_sets()
    held = {name: sets.pop(name) for name in HELD_OUT if name in sets}
    shared_train: list[Example] = []
    shared_held: list[Example] = []
    if args.shared.is_file():
        shared_train, shared_held = split_holdout(load_examples([args.shared]), 0.5, SHARED_SEED)
    training = [e for group in sets.values() for e in group] + shared_train

    if args.build:
        started = time.perf_counter()
        weights = train(
            training,
            OPTIONS,
            meta={"data": sorted(sets) + (["shared-sample (half)"] if shared_train else [])},
        )
        weights.save(BUNDLED)
        print(
            f"wrote {BUNDLED.relative_to(ROOT)} ({len(training)} examples, "
            f"{time.perf_counter() - started:.1f} s)"
        )
    weights = Weights.from_bytes(BUNDLED.read_bytes())
    router = Router(config, Classifier(weights))

    out = [
        "# Classifier: routing quality on traffic it was not trained on",
        "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Command: `python -m bench.classifier"
        f"{' --build' if args.build else ''}`.",
        "",
        f"Training sets: {', '.join(sorted(sets))}"
        + (f", and half of the shared sample ({len(shared_train)} rows)" if shared_train else "")
        + f"; {len(training)} requests. Options: {OPTIONS}.",
        f"Never trained on: {', '.join(held) or 'none'}"
        + (f", and the other half of the shared sample ({len(shared_held)} rows)" if shared_held else "")
        + ".",
        "",
        "Routing is scored with the demo config (cheap: local-9b at $0.005/$0.005, capable: frontier at "
        "$3/$15 per 1M tokens) and the default policy; cost assumes 300 output tokens a request.",
        "",
        "## Held out (the bundled model)",
        "",
        *HEADER,
    ]
    for name, examples in held.items():
        out.append(line(name, evaluate(examples, config, router)))
    if shared_held:
        out.append(line("shared sample, held-out half", evaluate(shared_held, config, router)))
    for name, examples in held.items():
        out += ["", f"### {name} in detail", "", "```", evaluate(examples, config, router).report(), "```"]
    if not args.no_cv:
        out += ["", "## Leave one set out (a model per fold, trained on the other sets)", "", *HEADER]
        out += leave_one_out(sets, shared_train, config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(out) + "\n")
    print("\n".join(out))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
