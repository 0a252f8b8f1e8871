"""What Prometheus metrics cost on the hot path: ``python -m bench.throughput --metrics``.

Interleaved wrk rounds (the harness of ``bench.throughput``) against nginx and tiermux instances in
front of the same mock, identical but for their ``metrics`` and ``access_log`` sections (classifier
on in all, the product default, and the response cache off, so that only what is measured differs):

* ``metrics-off``: ``metrics: {enabled: false}``: nothing recorded, ``GET /metrics`` answers 404;
* ``metrics-on``: ``metrics: {enabled: true}`` (the product default, written out): every proxied
  request is counted (by category, tier, backend and status), timed into the duration and upstream
  histograms, and its routing decision counted, all in shared memory;
* ``metrics+access-log``: the same, plus ``access_log: {enabled: true, path: ...}``, one JSON line
  per request appended to a file in the run's temporary directory: what the access log costs on
  top, reported without a target.

Before the rounds, ``GET /metrics`` must answer 200 with ``tiermux_requests_total`` on every
instance with metrics on and 404 on metrics-off, and the access log must have a line for a probe
request; otherwise the run stops with a :class:`BenchError`. A Prometheus server scrapes, and what
a scrape costs the workers is part of the price of metrics: during every run of an instance with
metrics on (warm-up and repeated attempts included), a thread of this process GETs its
``/metrics`` 1 s into the run and every 5 s after, inside the window whose CPU is measured.

Target: metrics cost at most 5% of throughput (metrics-on / metrics-off >= 0.95).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import re
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.throughput import (
    MOCK_MODEL,
    RESULTS_DIR,
    BenchError,
    Processes,
    Runner,
    Service,
    WrkResult,
    _grouping_line,
    _machine_lines,
    children,
    command_line,
    cpu_section,
    group_by_target,
    load_line,
    machine_info,
    md_table,
    median_proxy_cpu_us,
    pair_ratios,
    process_tree,
    quiet_section,
    ratio,
    route_probe,
    run_rounds,
    runs_section,
    start_mock,
    start_nginx,
    start_tiermux,
    summary_rows,
    tiermux_groups,
    verdict,
    write_report,
    wrk_runner,
)

__all__ = ["run_metrics"]

TARGET_RATIO = 0.95  # req/s with metrics on, against metrics off: metrics cost at most 5%
SCRAPE_FIRST = 1.0  # seconds into a run of a metrics-on target before its first scrape
SCRAPE_INTERVAL = 5.0  # seconds between scrapes after that
METRICS_PATH = "/metrics"
COUNTER = "tiermux_requests_total"
METRICS_OFF = "metrics:\n  enabled: false\n"
METRICS_ON = "metrics:\n  enabled: true\n"
LABELS = {
    "nginx": "nginx (1 worker)",
    "metrics-off": "tiermux, metrics off ({workers} workers)",
    "metrics-on": "tiermux, metrics on ({workers} workers)",
    "metrics+access-log": "tiermux, metrics on + access log ({workers} workers)",
}
_SAMPLE = re.compile(rf"^{COUNTER}(?:\{{[^}}]*\}})? (\S+)$", re.M)


@dataclass
class Scrape:
    """One ``GET /metrics``: its status (0 when nothing answered), how long it took, its size."""

    status: int
    seconds: float
    size: int
    body: bytes = b""


def get_metrics(url: str, timeout: float = 10.0) -> Scrape:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    start = time.perf_counter()
    try:
        conn.request("GET", METRICS_PATH)
        response = conn.getresponse()
        body = response.read()
        return Scrape(response.status, time.perf_counter() - start, len(body), body)
    except (OSError, http.client.HTTPException):
        return Scrape(0, time.perf_counter() - start, 0)
    finally:
        conn.close()


def requests_counted(body: bytes) -> int:
    """The sum of every ``tiermux_requests_total`` series in a scrape."""
    return int(sum(float(value) for value in _SAMPLE.findall(body.decode(errors="replace"))))


def check_metrics_endpoints(servers: dict[str, Service], enabled: dict[str, bool]) -> dict[str, Scrape]:
    """``GET /metrics`` on each instance: 200 with the request counter where metrics are on, 404
    where they are off. Anything else stops the run: the comparison would mean nothing."""
    found = {}
    for target, server in servers.items():
        scrape = get_metrics(server.url)
        if enabled[target]:
            if scrape.status != 200 or COUNTER.encode() not in scrape.body:
                raise BenchError(
                    f"{target}: GET {METRICS_PATH} answered HTTP {scrape.status} "
                    f"{'with' if COUNTER.encode() in scrape.body else 'without'} {COUNTER} "
                    f"(expected 200 with it: metrics are not served)"
                )
        elif scrape.status != 404:
            raise BenchError(
                f"{target}: GET {METRICS_PATH} answered HTTP {scrape.status} (expected 404: metrics "
                "are not disabled)"
            )
        found[target] = scrape
    return found


def log_lines(path: Path) -> tuple[int, int]:
    """(lines, bytes) of the access log so far."""
    lines = size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                lines += chunk.count(b"\n")
                size += len(chunk)
    except OSError:
        pass
    return lines, size


class Scraper:
    """Wraps a :data:`Runner`: while a run of a target in ``urls`` lasts, a thread GETs its
    ``/metrics`` ``SCRAPE_FIRST`` s into the run and every ``SCRAPE_INTERVAL`` s after, as a
    Prometheus server would, so that the scrapes' cost lands in the CPU and req/s of that run."""

    def __init__(self, one: Runner, urls: dict[str, str]) -> None:
        self.one, self.urls = one, urls
        self.runs: list[tuple[WrkResult, list[Scrape]]] = []
        self.requests = dict.fromkeys(urls, 0)
        """Requests wrk completed against each scraped target over every run, warm-up included."""

    def __call__(self, target: str, duration: float) -> WrkResult:
        if target not in self.urls:
            return self.one(target, duration)
        scrapes: list[Scrape] = []
        stop = threading.Event()
        start = time.monotonic()

        def scrape_loop() -> None:
            due = start + min(SCRAPE_FIRST, duration / 2)
            while not stop.wait(max(0.0, due - time.monotonic())):
                scrape = get_metrics(self.urls[target])
                scrape.body = b""  # only its size is kept
                scrapes.append(scrape)
                due += SCRAPE_INTERVAL

        thread = threading.Thread(target=scrape_loop, name=f"scrape {target}", daemon=True)
        thread.start()
        try:
            result = self.one(target, duration)
        finally:
            stop.set()
            thread.join()
        self.requests[target] += result.requests
        self.runs.append((result, scrapes))
        return result

    def of(self, results: list[WrkResult]) -> list[Scrape]:
        """The scrapes made during these runs."""
        return [s for result, scrapes in self.runs if any(result is r for r in results) for s in scrapes]


def run_metrics(args: argparse.Namespace) -> int:
    info = machine_info()
    with Processes(keep_logs=args.keep_logs) as procs:
        mock = start_mock(procs, tokens=args.tokens)
        nginx = start_nginx(procs, mock.url)
        access_log = procs.workdir / "access.log"
        configs = {
            "metrics-off": METRICS_OFF,
            "metrics-on": METRICS_ON,
            "metrics+access-log": METRICS_ON + f"access_log:\n  enabled: true\n  path: '{access_log}'\n",
        }
        enabled = {t: t != "metrics-off" for t in configs}
        # Every instance stays up for the whole run (only the measured one is loaded), with the
        # product's classifier setting (on); start_tiermux leaves the response cache off.
        servers = {
            target: start_tiermux(
                procs, mock.url, workers=args.workers, name=f"tiermux-{target}", classifier=True, extra=extra
            )
            for target, extra in configs.items()
        }
        targets = ("nginx", *servers)
        probes = {t: route_probe(s.url) for t, s in servers.items()}
        endpoints = check_metrics_endpoints(servers, enabled)
        logged_before = log_lines(access_log)
        if logged_before[0] < 1:
            raise BenchError(f"metrics+access-log: no access log line in {access_log} after a probe request")
        workers = {t: children(s.pid) for t, s in servers.items()}
        print(
            f"mock {mock.url}  nginx {nginx.url}  "
            + "  ".join(f"{t} {s.url} (workers {workers[t]})" for t, s in servers.items()),
            flush=True,
        )
        urls = {"nginx": nginx.url} | {t: s.url for t, s in servers.items()}
        models = {"nginx": MOCK_MODEL} | {t: "auto" for t in servers}
        proxies = {"nginx": {"nginx": process_tree(nginx.pid)}} | {
            t: tiermux_groups(s, workers[t]) for t, s in servers.items()
        }
        scraper = Scraper(
            wrk_runner(args, mock, urls, models, proxies, servers),
            {t: s.url for t, s in servers.items() if enabled[t]},
        )
        rounds = run_rounds(args, targets, scraper)
        for t, s in servers.items():
            if children(s.pid) != workers[t]:
                print(f"note: {t} workers changed during the run: {workers[t]} -> {children(s.pid)}")
        after = {t: get_metrics(s.url) for t, s in servers.items() if enabled[t]}
        logged_after = log_lines(access_log)
    report = metrics_report(
        args, info, targets, rounds, probes, endpoints, scraper, after, logged_before, logged_after
    )
    write_report(args.out or RESULTS_DIR / "metrics.md", report)
    return 0


def _probe_text(headers: dict[str, str]) -> str:
    tier = f"tier `{headers.get('x-tiermux-tier', '?')}`"
    if "x-tiermux-category" not in headers:
        return f"{tier}, not classified"
    return f"{tier}, category `{headers['x-tiermux-category']}`"


def _scrape_rows(
    scraper: Scraper, by_target: dict[str, list[WrkResult]], label: dict[str, str]
) -> list[list[object]]:
    rows: list[list[object]] = []
    for t in scraper.urls:
        scrapes = scraper.of(by_target[t])
        ok = [s for s in scrapes if s.status == 200]
        ms = [s.seconds * 1000 for s in scrapes]
        rows.append(
            [
                label[t],
                len(scrapes),
                f"{len(ok)} of {len(scrapes)}",
                f"{statistics.median(ms):.1f}" if ms else "-",
                f"{max(ms):.1f}" if ms else "-",
                f"{statistics.median(s.size for s in ok) / 1024:.1f}" if ok else "-",
            ]
        )
    return rows


def metrics_report(
    args: argparse.Namespace,
    info: dict[str, str],
    targets: tuple[str, ...],
    rounds: list[list[WrkResult]],
    probes: dict[str, dict[str, str]],
    endpoints: dict[str, Scrape],
    scraper: Scraper,
    after: dict[str, Scrape],
    logged_before: tuple[int, int],
    logged_after: tuple[int, int],
) -> str:
    by_target = group_by_target(rounds, targets)
    label = {t: LABELS[t].format(workers=args.workers) for t in targets}
    cpu_us = {t: median_proxy_cpu_us(by_target[t]) for t in targets}
    rows = summary_rows(targets, label, by_target)
    pairs = [
        ("metrics-on", "metrics-off"),
        ("metrics+access-log", "metrics-off"),
        ("metrics+access-log", "metrics-on"),
        ("metrics-off", "nginx"),
        ("metrics-on", "nginx"),
    ]
    ratios, ratio_rows = pair_ratios(by_target, pairs)
    on_ratio = ratios[("metrics-on", "metrics-off")]
    tiermux = [t for t in targets if t != "nginx"]
    errors = sum(r.non2xx + r.socket_errors for t in tiermux for r in by_target[t])
    measured_scrapes = [s for t in scraper.urls for s in scraper.of(by_target[t])]
    scrapes_ok = sum(s.status == 200 for s in measured_scrapes)
    checks = [
        [
            "metrics on / metrics off (median req/s)",
            f"{on_ratio:.2f}",
            f">= {TARGET_RATIO:.2f}",
            verdict(on_ratio >= TARGET_RATIO),
        ],
        ["non-2xx + socket errors (tiermux instances)", str(errors), "0", verdict(errors == 0)],
        [
            "scrapes answered 200 during the kept runs",
            f"{scrapes_ok} of {len(measured_scrapes)}",
            "all",
            verdict(scrapes_ok == len(measured_scrapes)),
        ],
    ]
    off_us, on_us, log_us = (cpu_us[t] for t in ("metrics-off", "metrics-on", "metrics+access-log"))
    cost_lines = []
    if off_us is not None and on_us is not None:
        cost_lines.append(
            f"Metrics cost **{on_us - off_us:+.0f} µs of proxy CPU per request** (median per-request CPU "
            f"of the tiermux processes: metrics on {on_us:.0f} µs, metrics off {off_us:.0f} µs, "
            f"{ratio(on_us - off_us, off_us):+.1%})."
        )
    if on_us is not None and log_us is not None:
        cost_lines.append(
            f"The access log adds **{log_us - on_us:+.0f} µs** on top of metrics "
            f"(metrics on + access log {log_us:.0f} µs); it has no target."
        )
    counted = {t: requests_counted(s.body) if s.status == 200 else None for t, s in after.items()}
    counted_lines = [
        f"- {label[t]}: `{COUNTER}` sums to {counted[t]:,} at the end; wrk completed "
        f"{scraper.requests[t]:,} requests against it over every run (warm-up and repeated attempts "
        f"included; up to {args.connections} more per run were cut off in flight when wrk stopped, "
        "and the probe request counts too)"
        if counted[t] is not None
        else f"- {label[t]}: GET {METRICS_PATH} answered HTTP {after[t].status} after the run"
        for t in after
    ]
    lines = [
        "# Metrics cost: tiermux recording Prometheus metrics vs not (and nginx)",
        "",
        f"Run on {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Load: `{load_line(args)}` (MODEL is `auto` for tiermux, the backend's model name for nginx),",
        f"{args.rounds} round(s), targets interleaved and the order rotated each round, after a warm-up",
        "run per target. The backend is `python -m bench.mock_backend --flavor vllm` answering",
        f"{args.tokens} tokens with no added latency; wrk, the mock and the proxies all share this machine.",
        "",
        f"Every tiermux instance ({args.workers} workers) has the mock in one tier, the classifier on (the",
        "product default: each `auto` request is classified) and the response cache off; they differ only",
        "in these sections:",
        "",
        "- **metrics-off**: `metrics: {enabled: false}`; nothing is recorded and `GET /metrics` answers 404;",
        "- **metrics-on**: `metrics: {enabled: true}` (the product default, written out): each proxied",
        "  request is counted by category, tier, backend and status, timed into the request-duration and",
        "  upstream histograms, and its routing decision counted, in shared memory; wrk's requests are",
        "  not streamed, so the time-to-first-token histogram is not touched;",
        "- **metrics+access-log**: metrics on and `access_log: {enabled: true, path: <file in the run's",
        "  temporary directory>}`: one JSON line per request on top, for information (no target).",
        "",
        "All instances run for the whole run; only the one being measured is loaded. Before the rounds,",
        "a probe request to each (`auto`, one user message) and `GET /metrics` checked that each does",
        "what its name says:",
        "",
        *(
            f"- {label[t]}: {_probe_text(probes[t])}; `GET /metrics` answered HTTP {endpoints[t].status}"
            + (f" ({endpoints[t].size:,} bytes, `{COUNTER}` in it)" if endpoints[t].status == 200 else "")
            for t in probes
        ),
        f"- the access log had {logged_before[0]} line(s) after the probe; at the end, "
        f"{logged_after[0]:,} lines ({logged_after[1] / 1e6:.1f} MB)",
        "",
        "**Scraping.** A Prometheus server scrapes `/metrics`, and that costs the workers too: during",
        "every run of an instance with metrics on (metrics-on and metrics+access-log; warm-up and",
        f"repeated attempts included), a thread of the harness GETs its `/metrics` {SCRAPE_FIRST:g} s into",
        f"the run and every {SCRAPE_INTERVAL:g} s after, inside the window whose req/s and CPU are measured",
        "(the scraping client's own CPU counts as `other`). Nothing scrapes metrics-off: it serves no",
        "metrics.",
        "",
        "After the run:",
        "",
        *counted_lines,
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
        f"**metrics on / metrics off = {on_ratio:.2f}** (median req/s against median req/s)",
        "",
        *md_table(
            ["ratio of req/s", "median", "per round (targets of one round ran back to back)"], ratio_rows
        ),
        "",
        *cost_lines,
        "",
        "Scrapes during the kept runs (answered while wrk loaded the instance):",
        "",
        *md_table(
            ["target", "scrapes", "answered 200", "median ms", "max ms", "size KiB"],
            _scrape_rows(scraper, by_target, label),
        ),
        "",
        "## Targets",
        "",
        *md_table(["check", "measured", "target", "verdict"], checks),
        "",
        *quiet_section(args, by_target, label),
        "",
        *cpu_section(by_target, label),
        "",
        *runs_section(args, rounds),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it as: python -m bench.throughput --metrics")
