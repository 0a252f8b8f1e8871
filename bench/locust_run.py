"""Run the locust scenario (bench/locustfile.py) against tiermux in front of slow, realistic backends.

``python -m bench.locust_run [--users 50] [--spawn-rate 10] [--run-time 30s] [--workers 2]``

Starts two mock vLLM servers (a chat model with realistic generation latency and an embedding
model), tiermux in front of both, then locust headless as a subprocess. Locust's CSV files land in
``bench/results/locust_*.csv``; a summary per request type (req/s, failures, p50/p95/p99) is
printed and written to ``bench/results/locust.md``.

Unlike ``bench.throughput``, this is not about the proxy's ceiling: with ~1 s answers, 50 users make
a few dozen requests per second, and what the numbers show is the latency tiermux adds on top of
the backend's own, per request type, under a mixed load that includes long-lived streams.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.throughput import (
    RESULTS_DIR,
    ROOT,
    BenchError,
    CpuProbe,
    Processes,
    children,
    command_line,
    machine_info,
    md_table,
    start_mock,
    start_tiermux,
    wait_for_quiet,
    worker_rss,
    write_report,
)

LOCUSTFILE = ROOT / "bench" / "locustfile.py"
EMBED_MODEL = "embed-small"

# The chat model: a small local model on a busy GPU. Streams: first token after TTFT_MS, then one
# token every ITL_MS; non-streaming answers arrive whole after LATENCY_MS (about the same total).
TTFT_MS = 150
ITL_MS = 15
TOKENS = 48
LATENCY_MS = 850
EMBED_LATENCY_MS = 25


def _seconds(text: str) -> float:
    """Locust's run-time syntax (``30s``, ``2m``, ``1h30m``, ``45``) in seconds."""
    if text.isdigit():
        return float(text)
    parts = re.findall(r"(\d+)\s*([hms])", text)
    if not parts:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    return float(sum(int(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in parts))


def read_stats(prefix: Path) -> list[dict[str, str]]:
    path = Path(f"{prefix}_stats.csv")
    if not path.exists():
        raise BenchError(f"locust wrote no {path}")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_failures(prefix: Path) -> list[dict[str, str]]:
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _ms(value: str) -> str:
    try:
        return f"{float(value):,.0f}"
    except ValueError:
        return value or "-"


def summary(stats: list[dict[str, str]]) -> list[list[str]]:
    rows = []
    for row in stats:
        rows.append(
            [
                f"{row['Type']} {row['Name']}".strip(),
                row["Request Count"],
                row["Failure Count"],
                f"{float(row['Requests/s']):.1f}",
                _ms(row["50%"]),
                _ms(row["95%"]),
                _ms(row["99%"]),
                _ms(row["Max Response Time"]),
            ]
        )
    return rows


def run(args: argparse.Namespace) -> int:
    info = machine_info()
    prefix: Path = args.csv
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for old in prefix.parent.glob(prefix.name + "_*.csv"):
        old.unlink()
    with Processes(keep_logs=args.keep_logs) as procs:
        chat = start_mock(
            procs, ttft_ms=TTFT_MS, itl_ms=ITL_MS, tokens=TOKENS, latency_ms=LATENCY_MS, name="mock-chat"
        )
        embed = start_mock(procs, model=EMBED_MODEL, latency_ms=EMBED_LATENCY_MS, name="mock-embed")
        tiermux = start_tiermux(
            procs, chat.url, workers=args.workers, pinned=[("embed", embed.url, EMBED_MODEL)]
        )
        print(f"mock chat {chat.url}  mock embeddings {embed.url}  tiermux {tiermux.url}", flush=True)
        argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE.relative_to(ROOT)), "--headless"]
        argv += [
            "--users",
            str(args.users),
            "--spawn-rate",
            str(args.spawn_rate),
            "--run-time",
            args.run_time,
        ]
        argv += ["--host", tiermux.url, "--csv", str(prefix), "--only-summary", "--stop-timeout", "10"]
        argv += ["--loglevel", "WARNING"]
        env = os.environ | {"TIERMUX_BENCH_EMBED_MODEL": EMBED_MODEL}
        if args.wait_quiet:
            wait_for_quiet(0.10, args.wait_quiet)
        print("$ " + " ".join(argv[1:]), flush=True)
        watch = {
            "mock chat": [chat.pid],
            "mock embed": [embed.pid],
            "tiermux main": [tiermux.pid],
        } | {f"tiermux worker {i + 1}": [pid] for i, pid in enumerate(children(tiermux.pid))}
        with CpuProbe(watch, child_label="locust") as probe:
            locust = procs.spawn("locust", argv, env=env)
            try:
                code = locust.process.wait(timeout=_seconds(args.run_time) + 120)
            except BaseException:
                locust.stop()
                raise
        rss = worker_rss(tiermux)
        log = locust.log_tail(60)
    print(log, flush=True)
    if code not in (0, 1):  # 1 means "some requests failed", which the summary shows
        raise BenchError(f"locust exited with {code}")
    stats = read_stats(prefix)
    failures = read_failures(prefix)
    cpu = probe.percent()
    header = ["request", "count", "failures", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    rows = summary(stats)
    real = [r for r in stats if r["Type"] not in ("", "SSE") and r["Name"] != "Aggregated"]
    total_rps = sum(float(r["Requests/s"]) for r in real)
    total_failures = sum(int(r["Failure Count"]) for r in real)
    failed = [[f["Method"], f["Name"], f["Error"], f["Occurrences"]] for f in failures]
    lines = [
        "# Locust: a realistic mix through tiermux",
        "",
        f"Run on {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.",
        "",
        f"Command: `{command_line('bench.locust_run')}`",
        "",
        f"{args.users} users (spawn rate {args.spawn_rate}/s) for {args.run_time}, each waiting 0.2-1 s "
        "between calls:",
        "70% chat completions, 25% streaming chat completions (include_usage, whole stream read and",
        "checked), 5% embeddings (pinned to an embedding model). tiermux runs "
        f"{args.workers} workers in front of two mock vLLM servers:",
        "",
        f"- chat: first token after {TTFT_MS} ms, then one every {ITL_MS} ms, {TOKENS} tokens "
        f"(≈ {TTFT_MS + TOKENS * ITL_MS} ms a stream);",
        f"  non-streaming answers after {LATENCY_MS} ms;",
        f"- embeddings: answers after {EMBED_LATENCY_MS} ms.",
        "",
        "So the backend alone accounts for about "
        f"{LATENCY_MS} ms (chat), {TTFT_MS + TOKENS * ITL_MS} ms (chat stream), "
        f"{TTFT_MS} ms (first token) and {EMBED_LATENCY_MS} ms (embeddings); the rest is tiermux, the",
        "network stack and locust itself (a Python client, busy on the same 2 cores).",
        "",
        "## Results",
        "",
        "`chat stream` times the whole stream; `SSE chat stream: first token` the time to its first",
        "body chunk. Locust's `Aggregated` line counts each stream twice (the stream and its first",
        f"token); the HTTP requests alone: **{total_rps:.1f} req/s, {total_failures} failures**.",
        "",
        *md_table(header, rows),
        "",
        "## Failures",
        "",
        *(md_table(["method", "name", "error", "count"], failed) if failed else ["none"]),
        "",
        "## CPU during the run (% of one core)",
        "",
        ", ".join(f"{name} {value:.0f}%" for name, value in cpu.items()),
        "",
        f"tiermux worker RSS at the end: {', '.join(f'{v:.1f} MB' for v in rss.values())}",
        "",
        "## Machine",
        "",
        *(f"- {key}: {value}" for key, value in info.items()),
        "",
        f"Raw locust output: `{prefix.relative_to(ROOT) if prefix.is_relative_to(ROOT) else prefix}_*.csv`.",
        "",
    ]
    write_report(args.out, "\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.locust_run",
        description="A realistic traffic mix through tiermux with locust (headless).",
    )
    parser.add_argument("--users", type=int, default=50, help="concurrent users (default 50)")
    parser.add_argument("--spawn-rate", type=float, default=10, help="users started per second (default 10)")
    parser.add_argument("--run-time", default="30s", help="locust run time, e.g. 30s, 2m (default 30s)")
    parser.add_argument("--workers", type=int, default=2, help="tiermux worker processes (default 2)")
    parser.add_argument(
        "--csv", type=Path, default=RESULTS_DIR / "locust", help="CSV prefix (default bench/results/locust)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "locust.md", help="summary file")
    parser.add_argument("--keep-logs", action="store_true", help="keep server logs and configs")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="first wait up to this long for other load on the machine to stop (0: don't)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _seconds(args.run_time)
    try:
        import locust  # noqa: F401
    except ImportError:
        print("locust is not installed: .venv/bin/pip install locust (or the 'bench' extra)", file=sys.stderr)
        return 1
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench.locust_run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
