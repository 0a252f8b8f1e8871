"""The ``tiermux`` command: ``serve``, ``check``, and the classifier's ``explain``, ``train``, ``eval``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tiermux import __version__
from tiermux.config import AUTO, Config, ConfigError, exposure_problem, load_config, read_api_keys

if TYPE_CHECKING:
    from tiermux.quality.window import QualityWindow
    from tiermux.upstream.backend import Backend

__all__ = ["main"]

EXIT_CONFIG = 2
EXIT_USAGE = 2


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"tiermux: config error: {exc}", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    # Building the app resolves everything the workers will (key files, TLS contexts, routes).
    from tiermux.app import TiermuxApp

    try:
        app = TiermuxApp(config)
    except (OSError, ValueError) as exc:
        print(f"tiermux: config error: {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    tiers = ", ".join(f"{name} -> {' > '.join(chain)}" for name, chain in config.tiers.items())
    print(f"{args.config}: ok ({len(config.backends)} backends; tiers: {tiers})")
    print(f"backends: {', '.join(_describe_backend(b) for b in app.backends.values())}")
    budgets = [
        f"{service} ${rule.daily_usd:g}/day ("
        + (
            f"downgrade to {rule.downgrade_tier or next(iter(config.tiers))}"
            if rule.policy == "downgrade"
            else "reject"
        )
        + ")"
        for service, rule in config.budget_rules.items()
    ]
    state = config.state
    where = "this machine's shared memory" if state.backend == "local" else f"redis, prefix {state.prefix!r}"
    print(f"budgets: {', '.join(budgets) or 'none'}; state: {where}")
    print(f"cache: {_describe_cache(config)}")
    log = config.access_log
    where = (log.path or "stdout") if log.enabled else "off"
    print(f"metrics: {'on' if config.metrics.enabled else 'off'}; access log: {where}")
    return 0


def _describe_backend(backend: Backend) -> str:
    """A backend's name, dialect and how many keys it rotates (never the keys)."""
    keys = len(read_api_keys(backend.config))
    return f"{backend.name} ({backend.dialect}, {keys} key{'s' if keys != 1 else ''})"


def _describe_cache(config: Config) -> str:
    cache = config.cache
    if not cache.enabled:
        return "off"
    parts = [
        f"{cache.ttl:g}s",
        f"{cache.max_bytes / 2**20:g} MiB per worker",
        "deterministic requests only" if cache.only_deterministic else "sampled requests too",
    ]
    if cache.dedup:
        parts.append("identical requests in flight shared")
    if cache.shared:
        parts.append("shared through redis")
    return "on (" + ", ".join(parts) + ")"


def _serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    from tiermux.server import serve
    from tiermux.state import SegmentError

    server = config.server
    host = args.host or server.host
    problem = exposure_problem(config, host)
    if problem:
        print(f"tiermux: refusing to start: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        serve(
            Path(args.config).resolve(),
            host=host,
            port=args.port or server.port,
            workers=args.workers or server.workers or os.cpu_count() or 1,
            drain_timeout=server.drain_timeout,
            backlog=server.backlog,
            log_level=args.log_level,
        )
    except SegmentError as exc:  # another tiermux already serves this port's state
        print(f"tiermux: cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


DEMO_CONFIG = Path(__file__).parent / "examples" / "demo.yaml"


def _routing_config(path: str | None) -> Config | None:
    """The config the classifier commands route with: --config, $TIERMUX_CONFIG, or the demo."""
    return _load(path or os.environ.get("TIERMUX_CONFIG") or str(DEMO_CONFIG))


def _explain(args: argparse.Namespace) -> int:
    import msgspec

    from tiermux.api.errors import ProxyError
    from tiermux.api.wire import encode_decision
    from tiermux.routing.request import RequestText, chat_from_object
    from tiermux.routing.router import Router
    from tiermux.routing.weights import WeightsError
    from tiermux.state import SegmentError

    if bool(args.request) == bool(args.prompt):
        print("tiermux: explain needs a prompt or --request FILE (one of them)", file=sys.stderr)
        return EXIT_USAGE
    if args.request and args.system:
        print("tiermux: --system goes with a prompt; a --request body has its own", file=sys.stderr)
        return EXIT_USAGE
    config = _routing_config(args.config)
    if config is None:
        return EXIT_CONFIG
    model = args.model
    try:
        router = Router(config)
        window = _live_quality(config, args.port) if args.live else None
        if window is not None:
            router.promoted = window.promoted
        if args.request:
            import json

            body = json.loads(Path(args.request).read_text(encoding="utf-8"))
            request = chat_from_object(body)
            model = model or body.get("model")
        else:
            prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
            request = RequestText(prompt, args.system or "")
        decision = router.decide(router.resolve(model or AUTO), request)
    except (OSError, ValueError, WeightsError, ProxyError, msgspec.ValidationError, SegmentError) as exc:
        print(f"tiermux: {exc}", file=sys.stderr)
        return 1
    backend = next(b for b in config.backends if b.name == decision.backends[0])
    if args.json:
        confidence = router.tier_confidence(decision)
        print(encode_decision(decision, backend.name, backend.model, confidence).decode())
        return 0
    c = decision.classification
    if c is None:
        print(f"tier:        {decision.tier} (classifier off)")
    else:
        top = sorted(c.probabilities.items(), key=lambda kv: -kv[1])[:3]
        print(f"category:    {c.category}")
        print(f"confidence:  {c.confidence:.2f}   ({', '.join(f'{k} {v:.2f}' for k, v in top)})")
        tier_confidence = router.tier_confidence(decision)
        if tier_confidence is not None:
            category_tier = router.policy.category_tier[c.category]
            print(f"             {tier_confidence:.2f} that it belongs on {category_tier} (or cheaper)")
        print(f"score:       {c.score} / 100")
        print(f"signals:     {', '.join(c.signals) or '-'}")
        if c.rules:
            print(f"rules:       {', '.join(c.rules)}")
    print(f"tier:        {decision.tier}   ({'; '.join(decision.reasons)})")
    if window is not None and c is not None:
        mean, count = window.mean(c.category)
        score = "no scores yet" if mean is None else f"windowed score {mean:.2f} over {count}"
        if decision.promoted_from is not None:
            print(f"quality:     {c.category} is promoted from {decision.promoted_from} ({score})")
        else:
            print(f"quality:     {c.category} is on its own tier ({score})")
    print(f"backend:     {backend.name} (model {backend.model}); chain {' > '.join(decision.backends)}")
    return 0


def _live_quality(config: Config, port: int | None) -> QualityWindow:
    """The quality window of the ``serve`` running on this machine with ``config`` (on ``port``,
    else the config's), read from its shared state."""
    from tiermux.quality.window import QualityWindow
    from tiermux.server import segment_path
    from tiermux.state import Segment, layout_for

    segment = Segment.attach(segment_path(port or config.server.port), layout_for(config))
    quality = config.quality
    return QualityWindow(segment.cells("quality"), quality.window, quality.window_minutes)


def _progress(label: str) -> Callable[[int, int], None]:
    """A one-line progress bar on stderr (silent when stderr is not a terminal, but for the end)."""
    tty = sys.stderr.isatty()
    state = {"shown": -1}

    def show(done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if done != total and (not tty or percent == state["shown"]):
            return
        state["shown"] = percent
        filled = 30 * done // max(total, 1)
        end = "\n" if done >= total else ""
        print(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", end=end, file=sys.stderr)

    return show


def _train(args: argparse.Namespace) -> int:
    from tiermux.routing.dataset import DatasetError, Example, load_examples, split_holdout
    from tiermux.routing.train import TrainOptions, train

    try:
        examples = load_examples(args.data)
        options = TrainOptions(args.buckets, args.epochs, args.rate, args.l2, args.seed)
    except (DatasetError, ValueError) as exc:
        print(f"tiermux: {exc}", file=sys.stderr)
        return 1
    if not 0.0 <= args.holdout < 1.0:
        print("tiermux: --holdout is a share of the data, at least 0 and below 1", file=sys.stderr)
        return EXIT_USAGE
    held: list[Example] = []
    if args.holdout:
        examples, held = split_holdout(examples, args.holdout, args.seed)
    if not examples:
        print("tiermux: no examples to train on", file=sys.stderr)
        return 1
    print(f"training on {len(examples)} examples ({options})", file=sys.stderr)
    bar = _progress("epochs")
    weights = train(
        examples,
        options,
        progress=lambda done, total, loss: bar(done, total),
        meta={"data": [Path(p).name for p in args.data], "holdout": args.holdout},
    )
    try:
        weights.save(args.out)
    except OSError as exc:
        print(f"tiermux: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    if held:
        from tiermux.routing.classifier import Classifier

        classifier = Classifier(weights)
        right = sum(classifier.classify(ex.request).category == ex.label for ex in held)
        print(f"held-out accuracy: {right / len(held):.3f} on {len(held)} examples")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import msgspec

    from tiermux.routing.classifier import Classifier
    from tiermux.routing.dataset import DatasetError, load_examples
    from tiermux.routing.evaluate import evaluate
    from tiermux.routing.router import Router
    from tiermux.routing.weights import WeightsError, load_weights

    config = _routing_config(args.config)
    if config is None:
        return EXIT_CONFIG
    try:
        examples = load_examples(args.data)
        classifier = Classifier(load_weights(args.weights or config.routing.classifier.weights))
    except (DatasetError, OSError, WeightsError) as exc:
        print(f"tiermux: {exc}", file=sys.stderr)
        return 1
    if not config.routing.classifier.enabled:  # eval scores the classifier, even one the config turns off
        routing = msgspec.structs.replace(
            config.routing, classifier=msgspec.structs.replace(config.routing.classifier, enabled=True)
        )
        config = msgspec.structs.replace(config, routing=routing)
    router = Router(config, classifier)
    result = evaluate(examples, config, router, args.output_tokens, progress=_progress("classifying"))
    print(result.report())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiermux",
        description="A cost-optimising edge proxy for LLM traffic (OpenAI-compatible).",
    )
    parser.add_argument("--version", action="version", version=f"tiermux {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the proxy", description="Run the proxy with Granian workers."
    )
    serve.add_argument("--config", "-c", required=True, metavar="FILE", help="YAML config file")
    serve.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port, 8080)")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes (default: server.workers, else one per CPU)",
    )
    serve.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default: info"
    )
    serve.set_defaults(run=_serve)

    check = commands.add_parser(
        "check",
        help="validate a config file",
        description="Validate a config; exit 2 naming the field if wrong.",
    )
    check.add_argument("--config", "-c", required=True, metavar="FILE", help="YAML config file")
    check.set_defaults(run=_check)

    explain = commands.add_parser(
        "explain",
        help="show how a prompt would be routed",
        description="Classify a prompt and show category, confidence, score, signals, tier and backend.",
    )
    explain.add_argument("prompt", nargs="?", default="", help="the user message ('-' reads stdin)")
    explain.add_argument("--system", metavar="TEXT", help="a system prompt to go with it")
    explain.add_argument("--request", metavar="FILE", help="a whole chat-completions body (JSON) instead")
    explain.add_argument(
        "--model", help="the model the client names (default: the body's with --request, else auto)"
    )
    explain.add_argument("--config", "-c", metavar="FILE", help=_CONFIG_HELP)
    explain.add_argument("--json", action="store_true", help="print the decision as /v1/route does")
    explain.add_argument(
        "--live",
        action="store_true",
        help="route as the tiermux serving this config on this machine does now: with the categories "
        "its quality safety net has promoted (read from its shared state)",
    )
    explain.add_argument(
        "--port", type=int, help="with --live: the port of that serve (default: the config's)"
    )
    explain.set_defaults(run=_explain)

    trainer = commands.add_parser(
        "train",
        help="train the classifier on labelled requests",
        description="Train the routing classifier on JSONL files of labelled requests (one object "
        'a line: "label" and one of "prompt", "messages" or "request"). Deterministic for a seed.',
    )
    trainer.add_argument("data", nargs="+", metavar="DATA.jsonl")
    trainer.add_argument(
        "--out",
        "-o",
        default="classifier.tmxw",
        metavar="FILE",
        help="weights file to write (default: classifier.tmxw); use it with routing.classifier.weights",
    )
    trainer.add_argument("--seed", type=int, default=7, help="default: 7")
    trainer.add_argument("--epochs", type=int, default=12, help="default: 12")
    trainer.add_argument(
        "--buckets", type=int, default=1 << 16, help="hash buckets, a power of two (default: 65536)"
    )
    trainer.add_argument("--rate", type=float, default=0.4, help="AdaGrad learning rate (default: 0.4)")
    trainer.add_argument("--l2", type=float, default=1e-4, help="L2 penalty (default: 1e-4)")
    trainer.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="hold out this share of each label and report accuracy on it",
    )
    trainer.set_defaults(run=_train)

    evaluator = commands.add_parser(
        "eval",
        help="score routing on labelled requests",
        description="Per-category precision and recall, confusion matrix, savings recall, "
        "misroute-down rate and blended cost against an all-capable baseline.",
    )
    evaluator.add_argument("data", nargs="+", metavar="DATA.jsonl")
    evaluator.add_argument("--config", "-c", metavar="FILE", help=_CONFIG_HELP)
    evaluator.add_argument("--weights", metavar="FILE", help="weights to use instead of the config's")
    evaluator.add_argument(
        "--output-tokens",
        type=int,
        default=300,
        metavar="N",
        help="output tokens assumed per request when pricing (default: 300)",
    )
    evaluator.set_defaults(run=_eval)
    return parser


_CONFIG_HELP = "config with the tiers, policy and prices (default: $TIERMUX_CONFIG, else the demo config)"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    code: int = args.run(args)
    return code
