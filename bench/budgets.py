"""What enforcing budgets and tracking backend health cost: ``python -m bench.throughput --budgets``.

Interleaved wrk rounds (the harness of ``bench.throughput``) against nginx and tiermux instances in
front of the same mock, identical but for their budgets (classifier off in all, so that only what
is measured differs):

* ``pass-through``: the mock priced (so that a budget has something to reserve), no budget;
* ``budget-local``: the same, with a daily budget for the ``default`` service far above what the
  run spends: every request reserves its worst case and settles its cost in shared memory;
* ``budget-redis``: the same budget kept in Redis (``state.backend: redis``), a ``redis-server``
  on loopback; left out when ``redis-server`` is not installed.

Health tracking can't be switched off (every request goes through it), so its cost is measured
apart, in this process: the calls one request makes (``plan``, ``started``, ``record_success``,
``finished``), timed over many iterations, against the proxy CPU per request of pass-through.

Target: budgets and health together cost at most 10% of pass-through throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import http.client
import json
import shutil
import sys
import time

from bench.throughput import (
    RESULTS_DIR,
    BenchError,
    Processes,
    Service,
    WrkResult,
    _grouping_line,
    _machine_lines,
    command_line,
    cpu_section,
    free_port,
    group_by_target,
    load_line,
    machine_info,
    md_table,
    median_proxy_cpu_us,
    medians,
    quiet_section,
    ratio,
    route_probe,
    run_against_nginx,
    runs_section,
    start_mock,
    start_nginx,
    start_tiermux,
    summary_rows,
    verdict,
    write_report,
)

__all__ = ["run_budgets"]

TARGET_COST = 0.10  # budgets and health together, as a share of pass-through throughput
PRICE = (0.2, 0.6)  # USD per 1M tokens, for every instance: only the budget differs
BUDGET = "services:\n  default:\n    budget: {daily_usd: 1000000, policy: reject}\n"
LABELS = {
    "nginx": "nginx (1 worker)",
    "pass-through": "tiermux, no budget ({workers} workers)",
    "budget-local": "tiermux, budget in shared memory ({workers} workers)",
    "budget-redis": "tiermux, budget in Redis ({workers} workers)",
}


def start_redis(procs: Processes) -> Service | None:
    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")
    if binary is None:
        return None
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    service = procs.spawn("redis", argv)
    service.url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while "Ready to accept connections" not in service.log_tail(20):
        if time.monotonic() > deadline or not service.alive():
            raise BenchError(f"redis-server did not start:\n{service.log_tail()}")
        time.sleep(0.05)
    return service


def budget_probe(url: str) -> dict[str, object]:
    """The ``default`` budget's state after a probe request: proof that the instance reserves and
    settles (an instance whose budget did nothing would make the comparison meaningless)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10.0)
    try:
        conn.request("GET", "/stats")
        stats = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    budget: dict[str, object] = stats["budgets"].get("default", {})
    return budget


def health_cost_us(iterations: int = 200_000) -> float:
    """Microseconds of the health calls one request makes, in this process (compiled cells when
    built)."""
    from tiermux.config import parse_config
    from tiermux.state import HEALTH_FIELDS, Layout, Segment
    from tiermux.upstream.backend import Backend
    from tiermux.upstream.health import Health

    config = parse_config(
        "backends:\n"
        "  - {name: a, base_url: 'http://127.0.0.1:1/v1', model: m, price: {input: 0.1, output: 0.1}}\n"
        "  - {name: b, base_url: 'http://127.0.0.1:2/v1', model: m, price: {input: 0.1, output: 0.1}}\n"
        "tiers: {cheap: [a, b]}\n"
    )
    backends = {b.name: Backend(b) for b in config.backends}
    segment = Segment.anonymous(Layout({"health": HEALTH_FIELDS * len(backends)}))
    health = Health(backends, segment.cells("health"))
    chain = ("a", "b")

    def once() -> None:
        name = health.plan(chain)[0]
        health.started(name)
        health.record_success(name, 0.001)
        health.finished(name)

    for _ in range(10_000):
        once()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(iterations):
            once()
        best = min(best, (time.perf_counter() - start) / iterations * 1e6)

    async def close() -> None:
        for backend in backends.values():
            await backend.aclose()

    asyncio.run(close())
    return best


def run_budgets(args: argparse.Namespace) -> int:
    info = machine_info()
    with Processes(keep_logs=args.keep_logs) as procs:
        mock = start_mock(procs, tokens=args.tokens)
        nginx = start_nginx(procs, mock.url)
        redis = start_redis(procs)
        configs = {"pass-through": "", "budget-local": BUDGET}
        if redis is not None:
            configs["budget-redis"] = BUDGET + f"state: {{backend: redis, url: '{redis.url}'}}\n"
        servers = {
            target: start_tiermux(
                procs,
                mock.url,
                workers=args.workers,
                name=f"tiermux-{target}",
                classifier=False,
                price=PRICE,
                extra=extra,
            )
            for target, extra in configs.items()
        }
        targets = ("nginx", *servers)
        for server in servers.values():
            route_probe(server.url)
        budgets = {t: budget_probe(s.url) for t, s in servers.items()}
        for target in servers:
            spent = budgets[target].get("spent_usd", 0)
            if (target != "pass-through") != (isinstance(spent, float) and spent > 0):
                raise BenchError(f"{target}: the budget does not behave as its name says: {budgets[target]}")
        redis_group = {"budget-redis": {"redis-server": [redis.pid]}} if redis is not None else None
        rounds = run_against_nginx(args, mock, nginx, servers, redis_group)
        after = {t: budget_probe(s.url) for t, s in servers.items()}
    health_us = health_cost_us()
    report = budgets_report(args, info, targets, rounds, after, health_us)
    write_report(args.out or RESULTS_DIR / "budgets.md", report)
    return 0


def budgets_report(
    args: argparse.Namespace,
    info: dict[str, str],
    targets: tuple[str, ...],
    rounds: list[list[WrkResult]],
    after: dict[str, dict[str, object]],
    health_us: float,
) -> str:
    by_target = group_by_target(rounds, targets)
    med = medians(by_target)
    label = {t: LABELS[t].format(workers=args.workers) for t in targets}
    cpu_us = {t: median_proxy_cpu_us(by_target[t]) for t in targets}
    rows = summary_rows(targets, label, by_target)
    budgeted = [t for t in targets if t.startswith("budget-")]
    ratios = {t: ratio(med[t]["rps"], med["pass-through"]["rps"]) for t in budgeted}
    per_round = {
        t: [ratio(by_target[t][i].rps, by_target["pass-through"][i].rps) for i in range(len(rounds))]
        for t in budgeted
    }
    base_us = cpu_us["pass-through"] or 0.0
    # Per-request CPU of the whole proxy is spread over its workers: one request's health calls
    # cost health_us of one worker's time, a share of the per-request proxy CPU.
    health_share = health_us / base_us if base_us else 0.0
    local_cost = 1 - ratios["budget-local"] + health_share
    errors = sum(r.non2xx + r.socket_errors for t in targets if t != "nginx" for r in by_target[t])
    checks = [
        [
            "budgets (shared memory) and health: share of pass-through throughput lost",
            f"{local_cost:.1%}",
            f"<= {TARGET_COST:.0%}",
            verdict(local_cost <= TARGET_COST),
        ],
        [
            "non-2xx + socket errors (tiermux instances)",
            str(errors),
            "0",
            verdict(errors == 0),
        ],
    ]
    spent_lines = [
        f"- {label[t]}: spent {after[t].get('spent_usd', 0):.6f} USD, "
        f"reserved {after[t].get('reserved_usd', 0)} USD at the end, store `{after[t].get('store', '-')}`"
        for t in budgeted
    ]
    lines = [
        "# Budget and health cost: tiermux enforcing a daily budget vs without one (and nginx)",
        "",
        f"Run on {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Load: `{load_line(args)}` (MODEL is `auto` for tiermux, the backend's model name for nginx),",
        f"{args.rounds} round(s), targets interleaved and the order rotated each round, after a warm-up",
        "run per target. The backend is `python -m bench.mock_backend --flavor vllm` answering",
        f"{args.tokens} tokens with no added latency; wrk, the mock, the proxies and Redis share this",
        "machine.",
        "",
        f"Every tiermux instance ({args.workers} workers) has the mock in one tier at "
        f"${PRICE[0]}/${PRICE[1]} per 1M tokens and the classifier off; they differ only in the budget of",
        "the `default` service (1,000,000 USD a day, never reached: every request reserves and settles):",
        "none, in shared memory, or in Redis (`redis-server` on loopback, one Lua call to reserve and one",
        "to settle per request). After the run:",
        "",
        *spent_lines,
        "",
        "Health tracking is in every instance; its cost is measured apart: the calls one request makes",
        f"(plan, started, record_success, finished) take **{health_us:.2f} µs** in this process, against",
        f"{base_us:.0f} µs of proxy CPU per request without a budget ({health_share:.1%}).",
        "",
        _grouping_line(args),
        "",
        "## Machine",
        "",
        *_machine_lines(info),
        "",
        "## Results (median over rounds)",
        "",
        *md_table(
            ["target", "req/s", "p50 ms", "p99 ms", "proxy CPU µs/request", "errors", "req/s per round"], rows
        ),
        "",
        *md_table(
            ["ratio", "median", "per round"],
            [
                [f"{t} / pass-through", f"{ratios[t]:.2f}", ", ".join(f"{x:.2f}" for x in per_round[t])]
                for t in budgeted
            ],
        ),
        "",
        "## Targets",
        "",
        *md_table(["check", "measured", "target", "verdict"], checks),
        "",
        *quiet_section(args, by_target, label),
        *cpu_section(by_target, label),
        *runs_section(args, rounds),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it as: python -m bench.throughput --budgets")
