"""Whether the quality safety net slows the hot path: ``python -m bench.throughput --quality``.

With ``quality`` enabled, every answer of a tier cheaper than the reference backend's gets a
glance after the client has it; a ``sample_rate`` share of them (and the suspect ones) go onto a
bounded per-worker queue, and background tasks of the same worker take them off, re-ask them of
the reference backend and score the two answers; a worker busy serving requests sheds most of
them. The client never waits for any of it: this mode measures whether that holds under load.

Two mocks: the measured backend, ``mock`` in tier ``cheap``, and a second mock process, the
reference (``reference`` in tier ``capable``), so that the background calls do not share the
measured backend's process. Interleaved wrk rounds (the harness of ``bench.throughput``) against
nginx and three tiermux instances, all up for the whole run, identical (classifier on, response
cache off) but for their ``quality`` section:

* ``quality-off``: ``quality: {enabled: false}``;
* ``quality-5%``: ``enabled: true, reference: reference, sample_rate: 0.05``, the rest defaults:
  what a user gets. A worker busy serving requests sheds most checks (``quality.shed``);
* ``quality-100%``: ``sample_rate: 1.0`` and ``busy_lag_ms: 0``: every answer re-asked in the
  background and nothing shed, the worst case. The queue fills and drops (``quality.dropped``).

Before the rounds, the wrk body (``bench/wrk/chat.lua``) is posted to ``/v1/route`` and as a chat
completion to each instance: it must be classified into a category whose tier is ``cheap`` and be
answered by ``mock``, and ``/stats`` must have a ``quality`` section exactly where quality is on;
the quality-100% instance must then score its probe against the reference. Otherwise the run
stops with a :class:`BenchError`. The reference mock's CPU is watched during the tiermux runs and
reported apart from the proxy's; its request counter gives the checks really made.

Then quality-off and quality-5% again, below saturation: interleaved rounds at a fixed pace (a few
connections, each pausing before each of its requests: ``bench/wrk/chat_paced.lua``), where the
machine has idle time, so that latency measures what a client waits rather than the queue.

Target: with 5% sampled, p50 and p99 within 5% of quality-off, at saturation and at the fixed
pace, and req/s at saturation >= 0.95 of it (the hot path's latency is unchanged by sampling).
The 100% case is reported without a target.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import statistics
import sys
import time
from typing import Any

from bench.cache import chat_body, mock_chat_requests
from bench.throughput import (
    BENCH_DIR,
    MOCK_MODEL,
    RESULTS_DIR,
    BenchError,
    Processes,
    Runner,
    Service,
    WrkLoad,
    WrkResult,
    _grouping_line,
    _machine_lines,
    _wait,
    children,
    command_line,
    cpu_section,
    free_port,
    group_by_target,
    http_get,
    load_line,
    machine_info,
    md_table,
    median_proxy_cpu_us,
    medians,
    process_tree,
    quiet_section,
    ratio,
    run_rounds,
    runs_section,
    start_mock,
    start_nginx,
    tiermux_groups,
    verdict,
    write_report,
    wrk_runner,
)
from tiermux.config import QualityConfig

__all__ = ["run_quality"]

TARGET_RPS_RATIO = 0.95  # req/s with 5% sampled, against quality off
TARGET_LATENCY_RATIO = 1.05  # p50 and p99 with 5% sampled: at most 5% above quality off
REFERENCE = "reference"  # the reference backend's name in the config
REFERENCE_GROUP = "reference mock"  # its CPU group: watched, but not the proxy's CPU
CHEAP_TIER = "cheap"
ROUTE_PATH = "/v1/route"
CHAT_PATH = "/v1/chat/completions"
QUALITY_OFF = "quality:\n  enabled: false\n"
QUALITY_ON = {  # the settings of the quality section besides enabled and reference
    "quality-5%": {"sample_rate": 0.05},
    "quality-100%": {"sample_rate": 1.0, "busy_lag_ms": 0},
}
LABELS = {
    "nginx": "nginx (1 worker)",
    "quality-off": "tiermux, quality off ({workers} workers)",
    "quality-5%": "tiermux, quality on, 5% sampled ({workers} workers)",
    "quality-100%": "tiermux, quality on, every answer re-asked, none shed ({workers} workers)",
}
DEFAULTS = QualityConfig()

# Latency below saturation: a few connections, each pausing before every request, so that the
# machine has idle time; the question is whether sampling ever makes a client wait.
PACED_TARGETS = ("quality-off", "quality-5%")
PACED_CONNECTIONS = 8
PACE_MS = 5
PACED_LOAD = WrkLoad(script=BENCH_DIR / "wrk" / "chat_paced.lua", args=(str(PACE_MS),))


def quality_on(settings: dict[str, float]) -> str:
    lines = ["quality:", "  enabled: true", f"  reference: {REFERENCE}"]
    return "\n".join([*lines, *(f"  {field}: {value}" for field, value in settings.items())]) + "\n"


def quality_config(cheap_url: str, reference_url: str, quality: str) -> str:
    """Two backends, each its own mock process: ``mock`` in ``cheap`` (the one measured) and the
    reference in ``capable``; the classifier on (the product default), the response cache off
    (wrk sends one fixed deterministic body); ``quality`` is the section that differs."""
    lines = ["# written by bench/quality.py", "backends:"]
    for name, url in (("mock", cheap_url), (REFERENCE, reference_url)):
        lines += [
            f"  - name: {name}",
            "    type: openai",
            f"    base_url: {url}/v1",
            f"    model: {MOCK_MODEL}",
            "    max_connections: 256",
        ]
    lines += [
        "tiers:",
        f"  {CHEAP_TIER}: [mock]",
        "  # a second mock process: the reference's calls do not share the measured backend's",
        f"  capable: [{REFERENCE}]",
        "routing:",
        f"  default_tier: {CHEAP_TIER}",
        "  classifier:",
        "    enabled: true",
        "cache:",
        "  enabled: false",
    ]
    return "\n".join([*lines, ""]) + quality


def start_instance(procs: Processes, name: str, config_text: str, workers: int) -> Service:
    """``python -m tiermux serve`` with ``config_text``; returns once every worker is up."""
    config = procs.workdir / f"{name}.yaml"
    config.write_text(config_text)
    port = free_port()
    argv = [sys.executable, "-m", "tiermux", "serve", "--config", str(config), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    service = procs.spawn(name, argv)
    service.url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        return len(children(service.pid)) >= workers and http_get("127.0.0.1", port, "/health") == 200

    _wait(service, ready, 30.0, f"not answering /health with {workers} workers")
    return service


def call(url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request: status, headers (lower-cased names) and body."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    headers = {"content-type": "application/json", "authorization": "Bearer bench-key"}
    conn = http.client.HTTPConnection(host, int(port), timeout=10.0)
    try:
        conn.request(method, path, body=body, headers=headers if body is not None else {})
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"{url}: {method} {path} failed: {exc!r}") from exc
    finally:
        conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def get_stats(server: Service) -> dict[str, Any]:
    status, _, data = call(server.url, "GET", "/stats")
    if status != 200:
        raise BenchError(f"{server.name}: GET /stats answered HTTP {status}: {data[:300]!r}")
    stats: dict[str, Any] = json.loads(data)
    return stats


def check_route(target: str, server: Service) -> dict[str, str]:
    """Where the wrk body goes: ``/v1/route``'s decision and a real answer's ``x-tiermux-*``
    headers. Both must say tier ``cheap`` (backend ``mock``), classified, in the same category."""
    body = chat_body("auto")
    status, _, data = call(server.url, "POST", ROUTE_PATH, body)
    if status != 200:
        raise BenchError(f"{target}: POST {ROUTE_PATH} answered HTTP {status}: {data[:300]!r}")
    decision = json.loads(data)
    status, headers, data = call(server.url, "POST", CHAT_PATH, body)
    if status != 200:
        raise BenchError(f"{target}: the wrk body answered HTTP {status}: {data[:300]!r}")
    found = {
        "tier": str(decision.get("tier")),
        "category": str(decision.get("category")),
        "backend": str(decision.get("backend")),
        "reasons": ", ".join(decision.get("reasons") or []),
        "answer tier": headers.get("x-tiermux-tier", "?"),
        "answer category": headers.get("x-tiermux-category", "?"),
        "answer backend": headers.get("x-tiermux-backend", "?"),
    }
    if (
        found["tier"] != CHEAP_TIER
        or found["answer tier"] != CHEAP_TIER
        or found["answer backend"] != "mock"
        or decision.get("category") is None
        or found["answer category"] != found["category"]
    ):
        raise BenchError(
            f"{target}: the wrk body does not land on tier {CHEAP_TIER!r} (backend mock), classified: "
            f"{found} (the quality safety net only watches tiers below the reference's)"
        )
    return found


def check_quality_sections(servers: dict[str, Service]) -> None:
    """``/stats`` has a ``quality`` section exactly on the instances with quality on."""
    for target, server in servers.items():
        has = "quality" in get_stats(server)
        if has != (target in QUALITY_ON):
            raise BenchError(
                f"{target}: /stats {'has' if has else 'has no'} quality section: quality is not "
                f"{'off' if has else 'on'} as the target's name says"
            )


def wait_for_sample(target: str, server: Service, category: str, timeout: float = 10.0) -> int:
    """The instance re-asking every answer must score its probe against the reference."""
    deadline = time.monotonic() + timeout
    while True:
        samples = int(get_stats(server)["quality"]["categories"][category]["samples"])
        if samples >= 1:
            return samples
        if time.monotonic() > deadline:
            raise BenchError(
                f"{target}: no answer scored against the reference within {timeout:g}s of a probe "
                "(sample_rate 1.0): the background checks are not running"
            )
        time.sleep(0.1)


def settle(reference: Service, quiet: float = 1.0, timeout: float = 30.0) -> int:
    """The reference mock's chat completions once its counter stops moving (queues drained)."""
    deadline = time.monotonic() + timeout
    count = mock_chat_requests(reference)
    while True:
        time.sleep(quiet)
        now = mock_chat_requests(reference)
        if now == count or time.monotonic() > deadline:
            return now
        count = now


class ReferenceCalls:
    """For every run of the runners it wraps (``counting``): the reference mock's chat completions
    during the run, and its CPU per request, taken out of the proxy's (it is watched, so that it
    does not count as other load, but it is the reference backend's work, not the proxy's)."""

    def __init__(self, reference: Service, targets: tuple[str, ...]) -> None:
        self.reference = reference
        self.runs: list[tuple[WrkResult, int, float | None]] = []
        self.requests = dict.fromkeys(targets, 0)
        """Requests wrk completed against each target over every run, warm-up included."""

    def counting(self, one: Runner) -> Runner:
        def run(target: str, duration: float) -> WrkResult:
            before = mock_chat_requests(self.reference)
            result = one(target, duration)
            calls = mock_chat_requests(self.reference) - before
            self.runs.append((result, calls, result.cpu_us.pop(REFERENCE_GROUP, None)))
            self.requests[target] += result.requests
            return result

        return run

    def of(self, results: list[WrkResult]) -> tuple[int, int, list[float]]:
        """Reference calls, requests and reference-mock CPU µs/request of these runs."""
        runs = [(r, c, us) for r, c, us in self.runs if any(r is x for x in results)]
        return (
            sum(c for _, c, _ in runs),
            sum(r.requests for r, _, _ in runs),
            [us for _, _, us in runs if us is not None],
        )


def run_quality(args: argparse.Namespace) -> int:
    info = machine_info()
    with Processes(keep_logs=args.keep_logs) as procs:
        mock = start_mock(procs, tokens=args.tokens)
        reference = start_mock(procs, tokens=args.tokens, name="reference-mock")
        nginx = start_nginx(procs, mock.url)
        sections = {"quality-off": QUALITY_OFF} | {t: quality_on(q) for t, q in QUALITY_ON.items()}
        # Every instance stays up for the whole run; only the measured one is loaded.
        servers = {
            target: start_instance(
                procs,
                f"tiermux-{target.replace('%', 'pct')}",
                quality_config(mock.url, reference.url, section),
                args.workers,
            )
            for target, section in sections.items()
        }
        targets = ("nginx", *servers)
        check_quality_sections(servers)
        routes = {t: check_route(t, s) for t, s in servers.items()}
        category = routes["quality-off"]["category"]
        wait_for_sample("quality-100%", servers["quality-100%"], category)
        workers = {t: children(s.pid) for t, s in servers.items()}
        print(
            f"mock {mock.url}  reference {reference.url}  nginx {nginx.url}  "
            + "  ".join(f"{t} {s.url} (workers {workers[t]})" for t, s in servers.items()),
            flush=True,
        )
        urls = {"nginx": nginx.url} | {t: s.url for t, s in servers.items()}
        models = {"nginx": MOCK_MODEL} | {t: "auto" for t in servers}
        proxies = {"nginx": {"nginx": process_tree(nginx.pid)}} | {
            t: tiermux_groups(s, workers[t]) | {REFERENCE_GROUP: [reference.pid]} for t, s in servers.items()
        }
        reference_before = settle(reference)
        counter = ReferenceCalls(reference, targets)
        saturating = wrk_runner(args, mock, urls, models, proxies, servers)
        rounds = run_rounds(args, targets, counter.counting(saturating))
        paced_args = argparse.Namespace(**{**vars(args), "connections": PACED_CONNECTIONS})
        loads = dict.fromkeys(PACED_TARGETS, PACED_LOAD)
        paced_runner = wrk_runner(paced_args, mock, urls, models, proxies, servers, loads=loads)
        paced = run_rounds(paced_args, PACED_TARGETS, counter.counting(paced_runner))
        for t, s in servers.items():
            if children(s.pid) != workers[t]:
                print(f"note: {t} workers changed during the run: {workers[t]} -> {children(s.pid)}")
        reference_after = settle(reference)
        after = {t: get_stats(s) for t, s in servers.items()}
    report = quality_report(
        args, info, targets, rounds, paced, routes, counter, after, (reference_before, reference_after)
    )
    write_report(args.out or RESULTS_DIR / "quality.md", report)
    return 0


def _quality_lines(
    label: dict[str, str], after: dict[str, dict[str, Any]], counter: ReferenceCalls, category: str
) -> list[str]:
    lines = []
    for t, stats in after.items():
        booked = stats.get("by_backend", {}).get(REFERENCE, {}).get("requests", 0)
        if "quality" not in stats:
            lines.append(
                f"- {label[t]}: no quality section in `/stats`; {booked:,} request(s) booked to the "
                f"reference; wrk completed {counter.requests[t]:,} requests against it"
            )
            continue
        quality = stats["quality"]
        row = quality["categories"][category]
        promotions = sum(int(c["promotions"]) for c in quality["categories"].values())
        lines.append(
            f"- {label[t]}: wrk completed {counter.requests[t]:,} requests against it; `quality.dropped` "
            f"{quality['dropped']:,}, `quality.shed` {quality['shed']:,}; `{category}`: `samples` "
            f"{row['samples']:,} (answers scored against "
            f"the reference), `check_failures` {row['check_failures']:,}, window score "
            f"{_score(row['score'])} over {row['window_samples']} score(s), promoted "
            f"{str(row['promoted']).lower()}; promotions in any category {promotions}; {booked:,} "
            f"reference call(s) booked (`by_backend.{REFERENCE}`)"
        )
    return lines


def _shedding_lines(
    counter: ReferenceCalls, saturated: list[WrkResult], paced: list[WrkResult], stats: dict[str, Any]
) -> list[str]:
    """How many checks the default settings really made at each load."""
    return [
        "How many of its answers quality-5% checked: the reference calls per 1,000 requests were "
        f"{_per_thousand(*counter.of(saturated)[:2])} at saturation and "
        f"{_per_thousand(*counter.of(paced)[:2])} at the fixed pace (5% is 50). A worker whose event "
        "loop lags is busy serving and sheds checks; over the whole run the instance shed "
        f"{stats['quality']['shed']:,} and checked {_samples(stats):,}.",
    ]


def _samples(stats: dict[str, Any]) -> int:
    return sum(int(row["samples"]) for row in stats["quality"]["categories"].values())


def _latency_check(name: str, measured: float) -> list[str]:
    """A row of the targets table: a latency ratio against its ceiling."""
    return [
        name,
        f"{measured:.3f}",
        f"<= {TARGET_LATENCY_RATIO:.2f}",
        verdict(measured <= TARGET_LATENCY_RATIO),
    ]


def _per_thousand(calls: int, requests: int) -> str:
    return f"{1000 * calls / requests:.1f}" if requests else "-"


def _score(value: object) -> str:
    return "-" if value is None else f"{value}"


def _promotions(after: dict[str, dict[str, Any]]) -> int:
    return sum(
        int(c["promotions"]) + int(bool(c["promoted"]))
        for stats in after.values()
        if "quality" in stats
        for c in stats["quality"]["categories"].values()
    )


def quality_report(
    args: argparse.Namespace,
    info: dict[str, str],
    targets: tuple[str, ...],
    rounds: list[list[WrkResult]],
    paced: list[list[WrkResult]],
    routes: dict[str, dict[str, str]],
    counter: ReferenceCalls,
    after: dict[str, dict[str, Any]],
    reference_count: tuple[int, int],
) -> str:
    by_target = group_by_target(rounds, targets)
    med = medians(by_target)
    label = {t: LABELS[t].format(workers=args.workers) for t in targets}
    cpu_us = {t: median_proxy_cpu_us(by_target[t]) for t in targets}
    kept = {t: counter.of(by_target[t]) for t in targets}
    rows = []
    for t in targets:
        calls, requests, ref_us = kept[t]
        rows.append(
            [
                label[t],
                f"{med[t]['rps']:,.0f}",
                f"{med[t]['p50_ms']:.2f}",
                f"{med[t]['p99_ms']:.2f}",
                f"{cpu_us[t]:.0f}" if cpu_us[t] is not None else "-",
                f"{statistics.median(ref_us):.0f}" if ref_us else "-",
                _per_thousand(calls, requests) if t != "nginx" else "-",
                sum(r.non2xx + r.socket_errors for r in by_target[t]),
                ", ".join(f"{r.rps:,.0f}" for r in by_target[t]),
            ]
        )
    pairs = [("quality-5%", "quality-off"), ("quality-100%", "quality-off"), ("quality-off", "nginx")]
    keys = ("rps", "p50_ms", "p99_ms")
    ratios = {(a, b): {k: ratio(med[a][k], med[b][k]) for k in keys} for a, b in pairs}
    # The targets of one round ran back to back: their ratio cancels slow drift on the machine.
    per_round = {
        (a, b): {
            k: [ratio(getattr(x, k), getattr(y, k)) for x, y in zip(by_target[a], by_target[b], strict=True)]
            for k in keys
        }
        for a, b in pairs
    }
    ratio_rows = [
        [
            f"{a} / {b}",
            *(f"{ratios[(a, b)][k]:.3f}" for k in keys),
            *(", ".join(f"{x:.2f}" for x in per_round[(a, b)][k]) for k in ("rps", "p99_ms")),
        ]
        for a, b in pairs
    ]
    five = ratios[("quality-5%", "quality-off")]
    full = ratios[("quality-100%", "quality-off")]
    paced_by = group_by_target(paced, PACED_TARGETS)
    paced_med = medians(paced_by)
    paced_five = {k: ratio(paced_med["quality-5%"][k], paced_med["quality-off"][k]) for k in keys}
    paced_rounds = {
        k: [
            ratio(getattr(x, k), getattr(y, k))
            for x, y in zip(paced_by["quality-5%"], paced_by["quality-off"], strict=True)
        ]
        for k in keys
    }
    tiermux = [t for t in targets if t != "nginx"]
    errors = sum(r.non2xx + r.socket_errors for t in tiermux for r in by_target[t])
    errors += sum(r.non2xx + r.socket_errors for t in PACED_TARGETS for r in paced_by[t])
    promoted = _promotions(after)
    checks = [
        [
            "quality-5% / quality-off, median req/s",
            f"{five['rps']:.3f}",
            f">= {TARGET_RPS_RATIO:.2f}",
            verdict(five["rps"] >= TARGET_RPS_RATIO),
        ],
        _latency_check("quality-5% / quality-off, median p50", five["p50_ms"]),
        _latency_check("quality-5% / quality-off, median p99", five["p99_ms"]),
        _latency_check(
            f"at a fixed pace ({PACED_CONNECTIONS} connections, {PACE_MS} ms pauses): "
            "quality-5% / quality-off, median p50",
            paced_five["p50_ms"],
        ),
        _latency_check("same, median p99", paced_five["p99_ms"]),
        ["quality-100% / quality-off, median req/s", f"{full['rps']:.3f}", "(none: worst case)", ""],
        ["quality-100% / quality-off, median p50", f"{full['p50_ms']:.3f}", "(none: worst case)", ""],
        ["quality-100% / quality-off, median p99", f"{full['p99_ms']:.3f}", "(none: worst case)", ""],
        ["non-2xx + socket errors (tiermux instances)", str(errors), "0", verdict(errors == 0)],
        [
            "categories promoted during the run (the measured traffic stayed on cheap)",
            str(promoted),
            "0",
            verdict(promoted == 0),
        ],
    ]
    paced_rows = [
        [
            label[t],
            f"{paced_med[t]['rps']:,.0f}",
            f"{paced_med[t]['p50_ms']:.2f}",
            f"{paced_med[t]['p99_ms']:.2f}",
            _per_thousand(*counter.of(paced_by[t])[:2]),
            sum(r.non2xx + r.socket_errors for r in paced_by[t]),
            ", ".join(f"{r.p50_ms:.2f}" for r in paced_by[t]),
            ", ".join(f"{r.p99_ms:.2f}" for r in paced_by[t]),
        ]
        for t in PACED_TARGETS
    ]
    off_us, five_us, full_us = (cpu_us[t] for t in ("quality-off", "quality-5%", "quality-100%"))
    cost_lines = []
    if off_us is not None and five_us is not None and full_us is not None:
        cost_lines.append(
            f"Proxy CPU per request: quality off {off_us:.0f} µs, 5% sampled {five_us:.0f} µs "
            f"(**{five_us - off_us:+.0f} µs**, {ratio(five_us - off_us, off_us):+.1%}), every answer "
            f"re-asked {full_us:.0f} µs ({full_us - off_us:+.0f} µs, "
            f"{ratio(full_us - off_us, off_us):+.1%}). "
            "This includes the background checks, which run on the same workers' event loops."
        )
    category = routes["quality-off"]["category"]
    before, end = reference_count
    booked = sum(s.get("by_backend", {}).get(REFERENCE, {}).get("requests", 0) for s in after.values())
    route_lines = [
        f"- {label[t]}: `{ROUTE_PATH}` tier `{r['tier']}` (backend `{r['backend']}`), category "
        f"`{r['category']}` (reasons `{r['reasons']}`); answered from tier `{r['answer tier']}` by "
        f"`{r['answer backend']}`, category `{r['answer category']}`"
        for t, r in routes.items()
    ]
    lines = [
        "# Quality safety net: does checking answers in the background slow the hot path?",
        "",
        f"Run on {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Load: `{load_line(args)}` (MODEL is `auto` for tiermux, the backend's model name for nginx),",
        f"{args.rounds} round(s), targets interleaved and the order rotated each round, after a warm-up",
        "run per target. Both backends are `python -m bench.mock_backend --flavor vllm` answering",
        f"{args.tokens} tokens with no added latency, each its own process: `mock`, the one measured",
        "(tier `cheap`), and `reference` (tier `capable`), which only the background checks call. wrk,",
        "both mocks and the proxies all share this machine.",
        "",
        f"Every tiermux instance ({args.workers} workers) has the same two tiers, the classifier on (the",
        "product default) and the response cache off; they differ only in their `quality` section:",
        "",
        "- **quality-off**: `quality: {enabled: false}`;",
        f"- **quality-5%**: `quality: {{enabled: true, reference: {REFERENCE}, sample_rate: 0.05}}` (the",
        "  default rate, written out), the rest defaults: what a user gets;",
        "- **quality-100%**: `sample_rate: 1.0` and `busy_lag_ms: 0`: every answer is re-asked of the",
        "  reference and none is shed, the worst case.",
        "",
        "With quality on, every answer of the cheap tier gets a glance at its bytes after the client",
        "has it; the sampled (and suspect) ones go onto a bounded per-worker queue",
        f"(`queue_size` {DEFAULTS.queue_size}), and `concurrency` ({DEFAULTS.concurrency}) background",
        "tasks per worker take them off it, re-ask them of the reference and score them. A full queue",
        "drops the check and counts it (`quality.dropped`). Checks yield to requests: once a worker's",
        f"event loop lags more than `busy_lag_ms` ({DEFAULTS.busy_lag_ms:g} ms, smoothed), until it is back",
        "under half of that, it takes on at most `busy_checks_per_second` "
        f"({DEFAULTS.busy_checks_per_second:g}) and sheds the rest (`quality.shed`).",
        "The reference calls per 1,000 requests below show how many checks each load really got.",
        "",
        "All instances run for the whole run; only the one being measured is loaded. The reference",
        f"mock's CPU is watched during the tiermux runs (`{REFERENCE_GROUP}` in the CPU table) and kept",
        "out of the proxy's CPU per request. Before the rounds, the wrk body went to each instance as",
        f"`POST {ROUTE_PATH}` and as a chat completion:",
        "",
        *route_lines,
        "",
        "and `/stats` had a `quality` section exactly where quality is on; the quality-100% instance",
        "scored its probe against the reference before the rounds began.",
        "",
        "**After the run** (queues drained: the reference mock's counter stopped moving):",
        "",
        f"- the reference mock received **{end:,} chat completions** in all ({end - before:,} during the",
        "  runs, warm-up and repeated attempts included; the rest answered the probes); the instances",
        f"  booked {booked:,} calls to `{REFERENCE}` in `/stats` (a difference would be failed calls);",
        *_quality_lines(label, after, counter, category),
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
            [
                "target",
                "req/s",
                "p50 ms",
                "p99 ms",
                "proxy CPU µs/request",
                "reference mock CPU µs/request",
                "reference calls per 1,000 requests",
                "errors",
                "req/s per round",
            ],
            rows,
        ),
        "",
        "Reference calls per 1,000 requests: the reference mock's chat completions during the kept",
        "runs of the target, over the requests wrk completed in them.",
        "",
        f"**quality-5% / quality-off: req/s {five['rps']:.3f}, p50 {five['p50_ms']:.3f}, "
        f"p99 {five['p99_ms']:.3f}** (medians against medians)",
        "",
        *md_table(
            [
                "ratio",
                "req/s",
                "p50",
                "p99",
                "req/s per round (a round's runs were back to back)",
                "p99 per round",
            ],
            ratio_rows,
        ),
        "",
        *cost_lines,
        "",
        "## Below saturation: latency at a fixed pace",
        "",
        "At saturation every request waits behind the others, so latency there follows req/s. Here",
        f"wrk keeps {PACED_CONNECTIONS} connections, each pausing {PACE_MS} ms before each of its requests",
        "(`bench/wrk/chat_paced.lua`), which leaves the machine idle time: whether a client ever waits",
        f"for the checks. {args.rounds} more interleaved round(s), after a warm-up run per target:",
        "",
        *md_table(
            [
                "target",
                "req/s",
                "p50 ms",
                "p99 ms",
                "reference calls per 1,000 requests",
                "errors",
                "p50 per round",
                "p99 per round",
            ],
            paced_rows,
        ),
        "",
        f"**quality-5% / quality-off at a fixed pace: p50 {paced_five['p50_ms']:.3f}, p99 "
        f"{paced_five['p99_ms']:.3f}** (medians against medians; per round, p50 "
        + ", ".join(f"{x:.2f}" for x in paced_rounds["p50_ms"])
        + ", p99 "
        + ", ".join(f"{x:.2f}" for x in paced_rounds["p99_ms"])
        + ")",
        "",
        "Latency at this pace moves with the CPU other processes and the hypervisor take (the",
        "`other + steal CPU` column of every run below).",
        "",
        *quiet_section(args, paced_by, label),
        "",
        *_shedding_lines(counter, by_target["quality-5%"], paced_by["quality-5%"], after["quality-5%"]),
        "",
        "## Targets",
        "",
        "The hot path's latency is unchanged by sampling: with 5% of answers sampled (the other",
        "settings default), p50 and p99 within 5% of quality-off (at most 1.05 times it), at",
        "saturation and at a fixed pace below it, and req/s at saturation at least 0.95 of it. The",
        "100% case has no target.",
        "",
        *md_table(["check", "measured", "target", "verdict"], checks),
        "",
        *quiet_section(args, by_target, label),
        "",
        *cpu_section(by_target, label),
        "",
        *runs_section(args, rounds),
        "",
        *runs_section(args, paced, "Every run at a fixed pace"),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it as: python -m bench.throughput --quality")
