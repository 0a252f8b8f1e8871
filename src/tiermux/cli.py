"""The ``tiermux`` command: ``serve`` and ``check``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tiermux import __version__
from tiermux.config import Config, ConfigError, exposure_problem, load_config

__all__ = ["main"]

EXIT_CONFIG = 2


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
        TiermuxApp(config)
    except (OSError, ValueError) as exc:
        print(f"tiermux: config error: {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    tiers = ", ".join(f"{name} -> {' > '.join(chain)}" for name, chain in config.tiers.items())
    print(f"{args.config}: ok ({len(config.backends)} backends; tiers: {tiers})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    from tiermux.server import serve

    server = config.server
    host = args.host or server.host
    problem = exposure_problem(config, host)
    if problem:
        print(f"tiermux: refusing to start: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    serve(
        Path(args.config).resolve(),
        host=host,
        port=args.port or server.port,
        workers=args.workers or server.workers or os.cpu_count() or 1,
        drain_timeout=server.drain_timeout,
        backlog=server.backlog,
        log_level=args.log_level,
    )
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    code: int = args.run(args)
    return code
