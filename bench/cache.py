"""The response cache's hit path against a Granian ceiling: ``python -m bench.throughput --cache``.

A cache hit does no upstream work: tiermux reads the request, routes it, computes the cache key and
replays a stored answer. The most any Python ASGI app can do on this machine with no upstream is
therefore the right yardstick for it, not nginx in front of a backend. Interleaved wrk rounds (the
harness of ``bench.throughput``), every target up for the whole run:

* ``nginx``: the reverse proxy in front of the mock, as in every mode, so that each hot-path number
  can be read against the same reference from the same run;
* ``ceiling``: ``bench/ceiling_app.py``, a raw ASGI app under Granian with tiermux's own serving
  options and worker count, reading each request body and answering the cached answer's bytes
  (same size, same content type) from memory;
* ``cache-hit``: tiermux with the response cache on, wrk posting one fixed deterministic chat
  completion (``bench/wrk/chat.lua``, temperature 0), so that every request is a hit: the entry is
  filled by a probe before the rounds, and its TTL outlasts the run;
* ``miss``: tiermux with the cache off, the same body passed through to the mock, for context.

Before measuring, two identical requests to the cache-hit instance must show
``x-tiermux-cache: HIT`` on the second; otherwise the run stops with a :class:`BenchError`. During
the cache-hit runs the harness counts the chat completions the mock receives: any at all means
some of the measured requests were not hits.

Target: cache-hit reaches at least 80% of the ceiling's req/s.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import sys

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
    medians,
    pair_ratios,
    process_tree,
    quiet_section,
    ratio,
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

__all__ = ["run_cache"]

TARGET_CEILING_RATIO = 0.80  # req/s of cache hits, against the Granian no-upstream ceiling

# The cache-hit instance's `cache:` section (start_tiermux(..., cache=True) adds none of its own;
# without cache=True it writes `cache: {enabled: false}`, as for the miss instance). The run
# (rounds, waits for a quiet machine, repeated noisy runs) can outlast the product's default TTL of
# 300 s; an entry that expired mid-run would send a request upstream and blur the "every measured
# request was a hit" check, so the entry here lives for an hour.
CACHE_ON = """\
cache:
  enabled: true
  ttl: 3600
  max_bytes: 67108864
  only_deterministic: true
  dedup: true
"""
CACHE_HEADER = "x-tiermux-cache"
CHAT_PATH = "/v1/chat/completions"

LABELS = {
    "nginx": "nginx (1 worker) in front of the mock",
    "ceiling": "Granian ceiling, no upstream ({workers} workers)",
    "cache-hit": "tiermux, cache hit ({workers} workers)",
    "miss": "tiermux, cache off, to the mock ({workers} workers)",
}

# The bytes bench/wrk/chat.lua posts (with MODEL), so that the probe fills the very entry wrk hits.
_SYSTEM = (
    "You are a concise assistant for an online bookshop. Answer in at most two sentences "
    "and never invent prices or stock levels."
)
_USER = (
    "A customer writes: 'I ordered The Left Hand of Darkness last Tuesday and the tracking "
    "page still says label created. Can you tell me what that means and when it will arrive?' "
    "Summarise what they want in one line."
)


def chat_body(model: str = "auto") -> bytes:
    """The request wrk sends: two messages, ``max_tokens`` 64, ``temperature`` 0 (deterministic)."""
    request = {
        "model": model,
        "messages": [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _USER}],
        "max_tokens": 64,
        "temperature": 0,
    }
    return json.dumps(request, separators=(",", ":")).encode()


class Answer:
    """One HTTP answer as the probe saw it."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    def __repr__(self) -> str:
        cached = self.header(CACHE_HEADER)
        return f"Answer(status={self.status}, {CACHE_HEADER}={cached!r}, {len(self.body)} B)"


def post_twice(url: str, body: bytes) -> tuple[Answer, Answer]:
    """The same chat completion twice on one keep-alive connection.

    One connection is served by one worker, and each worker keeps its own cache: on two
    connections the second request could land on a worker that has not seen the first.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    headers = {"content-type": "application/json", "authorization": "Bearer bench-key"}
    conn = http.client.HTTPConnection(host, int(port), timeout=10.0)
    answers: list[Answer] = []
    try:
        for _ in range(2):
            conn.request("POST", CHAT_PATH, body=body, headers=headers)
            response = conn.getresponse()
            answers.append(Answer(response.status, response.getheaders(), response.read()))
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"{url}: probe request failed: {exc!r}") from exc
    finally:
        conn.close()
    for answer in answers:
        if answer.status != 200:
            raise BenchError(f"{url}: probe request answered HTTP {answer.status}: {answer.body[:300]!r}")
    return answers[0], answers[1]


def verify_hit(server: Service) -> tuple[Answer, Answer]:
    """Two identical deterministic requests: the second must be a hit, or nothing is measured."""
    first, second = post_twice(server.url, chat_body())
    if second.header(CACHE_HEADER) != "HIT":
        raise BenchError(
            f"tiermux with the response cache on did not answer a repeated deterministic request from "
            f"its cache: {CACHE_HEADER} was {first.header(CACHE_HEADER)!r} then "
            f"{second.header(CACHE_HEADER)!r} (expected 'HIT' the second time): the cache is not working."
        )
    return first, second


def verify_miss(server: Service) -> Answer:
    """The cache-off instance must not answer from a cache: it is the pass-through reference."""
    _, second = post_twice(server.url, chat_body())
    if second.header(CACHE_HEADER) == "HIT":
        raise BenchError(f"tiermux with the cache off answered a repeated request from its cache: {second}")
    return second


def start_ceiling(procs: Processes, answer: Answer, workers: int) -> Service:
    """``python -m bench.ceiling_app`` answering ``answer``'s body and content type."""
    body = procs.workdir / "ceiling-body.json"
    body.write_bytes(answer.body)
    env = os.environ | {
        "BENCH_CEILING_BODY": str(body),
        "BENCH_CEILING_CONTENT_TYPE": answer.header("content-type") or "application/json",
    }
    port = free_port()
    argv = [sys.executable, "-m", "bench.ceiling_app", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--workers", str(workers), "--log-level", "warning"]
    service = procs.spawn("ceiling", argv, env=env)
    service.url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        return len(children(service.pid)) >= workers and http_get("127.0.0.1", port, "/health") == 200

    _wait(service, ready, 30.0, f"not answering with {workers} workers")
    return service


def mock_chat_requests(mock: Service) -> int:
    """Chat completions the mock has received so far (its own counter)."""
    host, port = mock.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5.0)
    try:
        conn.request("GET", "/_mock/stats")
        stats = json.loads(conn.getresponse().read())
    except (OSError, ValueError) as exc:
        raise BenchError(f"mock: /_mock/stats failed: {exc}") from exc
    finally:
        conn.close()
    return int(stats.get("by_path", {}).get(CHAT_PATH, 0))


class UpstreamCount:
    """Requests wrk made to one target and chat completions the mock received meanwhile: hits
    never reach the mock.

    The first run of the target is :func:`run_rounds`' warm-up, counted apart: each worker keeps
    its own cache, so a worker the probe did not reach fills its entry then (once, or once per
    connection without dedup). Every later run, repeated attempts included, should send nothing.
    """

    def __init__(self, mock: Service, target: str, one: Runner) -> None:
        self.mock, self.target, self.one = mock, target, one
        self.warmup: tuple[int, int] | None = None
        """(requests, upstream) of the warm-up run."""
        self.requests = 0
        self.upstream = 0

    def __call__(self, target: str, duration: float) -> WrkResult:
        if target != self.target:
            return self.one(target, duration)
        before = mock_chat_requests(self.mock)
        result = self.one(target, duration)
        upstream = mock_chat_requests(self.mock) - before
        if self.warmup is None:
            self.warmup = (result.requests, upstream)
        else:
            self.requests += result.requests
            self.upstream += upstream
        return result


def run_cache(args: argparse.Namespace) -> int:
    info = machine_info()
    with Processes(keep_logs=args.keep_logs) as procs:
        mock = start_mock(procs, tokens=args.tokens)
        nginx = start_nginx(procs, mock.url)
        servers: dict[str, Service] = {}
        probes: dict[str, Answer] = {}
        servers["cache-hit"] = start_tiermux(
            procs, mock.url, workers=args.workers, name="tiermux-cache-hit", cache=True, extra=CACHE_ON
        )
        probes["cache-miss-first"], probes["cache-hit"] = verify_hit(servers["cache-hit"])
        # The default config of start_tiermux has the cache off.
        servers["miss"] = start_tiermux(procs, mock.url, workers=args.workers, name="tiermux-miss")
        probes["miss"] = verify_miss(servers["miss"])
        # The ceiling answers what a hit replays.
        ceiling = start_ceiling(procs, probes["cache-hit"], args.workers)
        targets = ("nginx", "ceiling", *servers)
        python = {"ceiling": ceiling} | servers
        workers = {t: children(s.pid) for t, s in python.items()}
        print(
            f"mock {mock.url}  nginx {nginx.url}  "
            + "  ".join(f"{t} {s.url} (workers {workers[t]})" for t, s in python.items()),
            flush=True,
        )
        urls = {"nginx": nginx.url, "ceiling": ceiling.url} | {t: s.url for t, s in servers.items()}
        # wrk sends `auto` to everything Python serves (the ceiling reads the same bytes tiermux
        # does) and the backend's model name to nginx, so that the mock gets the same bytes.
        models = {t: "auto" for t in targets} | {"nginx": MOCK_MODEL}
        proxies = {
            "nginx": {"nginx": process_tree(nginx.pid)},
            "ceiling": {"ceiling main": [ceiling.pid]}
            | {f"ceiling worker {i + 1}": [pid] for i, pid in enumerate(workers["ceiling"])},
        } | {t: tiermux_groups(s, workers[t]) for t, s in servers.items()}
        upstream = UpstreamCount(mock, "cache-hit", wrk_runner(args, mock, urls, models, proxies, servers))
        rounds = run_rounds(args, targets, upstream)
        for t, s in python.items():
            if children(s.pid) != workers[t]:
                print(f"note: {t} workers changed during the run: {workers[t]} -> {children(s.pid)}")
    report = cache_report(args, info, targets, rounds, probes, upstream)
    write_report(args.out or RESULTS_DIR / "cache.md", report)
    return 0


def _headers_text(answer: Answer) -> str:
    return ", ".join(f"`{k.lower()}: {v}`" for k, v in answer.headers)


def cache_report(
    args: argparse.Namespace,
    info: dict[str, str],
    targets: tuple[str, ...],
    rounds: list[list[WrkResult]],
    probes: dict[str, Answer],
    upstream: UpstreamCount,
) -> str:
    by_target = group_by_target(rounds, targets)
    med = medians(by_target)
    label = {t: LABELS[t].format(workers=args.workers) for t in targets}
    rows = summary_rows(targets, label, by_target)
    pairs = [
        ("cache-hit", "ceiling"),
        ("cache-hit", "miss"),
        *((t, "nginx") for t in targets if t != "nginx"),
    ]
    _, ratio_rows = pair_ratios(by_target, pairs)
    tiermux_runs = [r for t in targets if t in ("cache-hit", "miss") for r in by_target[t]]
    errors = sum(r.non2xx + r.socket_errors for r in tiermux_runs)
    hit_ratio = ratio(med["cache-hit"]["rps"], med["ceiling"]["rps"])
    headline = f"**cache-hit / ceiling = {hit_ratio:.2f}** (median req/s against median req/s)"
    checks = [
        [
            "cache-hit / ceiling (median req/s)",
            f"{hit_ratio:.2f}",
            f">= {TARGET_CEILING_RATIO:.2f}",
            verdict(hit_ratio >= TARGET_CEILING_RATIO),
        ],
        [
            "chat completions reaching the mock during the measured cache-hit runs",
            f"{upstream.upstream:,} of {upstream.requests:,} requests",
            "0",
            verdict(upstream.upstream == 0),
        ],
    ]
    first, second = (probes[p].header(CACHE_HEADER) for p in ("cache-miss-first", "cache-hit"))
    replayed = probes["cache-hit"]
    warm_requests, warm_upstream = upstream.warmup or (0, 0)
    hit_lines = [
        "Before the rounds, two identical requests (the wrk body, on one connection) to the cache-hit",
        f"instance were answered `{CACHE_HEADER}: {first}` then `{CACHE_HEADER}: {second}`. Each worker",
        "keeps its own cache, so the warm-up run filled the others: the mock received "
        f"{warm_upstream:,} chat completion(s) during its {warm_requests:,} requests.",
        f"The hit's answer had {len(replayed.body)} bytes of body and the headers",
        f"{_headers_text(replayed)}.",
        "The ceiling answers the same body with the same content type (its own headers are only",
        "`content-type` and `content-length`, plus Granian's `server` and `date`): what a hit replays,",
        "from memory, with nothing else done.",
    ]
    checks.append(["non-2xx + socket errors (tiermux instances)", str(errors), "0", verdict(errors == 0)])
    described = {
        "ceiling": [
            f"- **ceiling**: `python -m bench.ceiling_app`, a raw ASGI app under Granian ({args.workers}",
            "  workers, ASGI, uvloop, tiermux's backlog and kill timeout) that reads the request body and",
            "  answers a fixed body: the most a Python ASGI server does here with no upstream.",
        ],
        "cache-hit": [
            f"- **cache-hit**: tiermux ({args.workers} workers, product defaults: classifier on, one tier)",
            "  with `cache: {enabled: true, ttl: 3600, max_bytes: 67108864, only_deterministic: true,",
            "  dedup: true}`; wrk posts one fixed `temperature: 0` chat completion (bench/wrk/chat.lua),",
            "  so every request is a hit (a probe filled the entry; the TTL outlasts the run).",
        ],
        "miss": [
            "- **miss**: the same tiermux with `cache: {enabled: false}`: the same body passed through to",
            "  the mock.",
        ],
        "nginx": ["- **nginx**: the reverse proxy of every mode, in front of the mock."],
    }
    lines = [
        "# Response cache: hits against a Granian ceiling with no upstream (and nginx)",
        "",
        f"Run on {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Load: `{load_line(args)}` (MODEL is `auto` for the Python targets, the backend's model name for",
        f"nginx), {args.rounds} round(s), targets interleaved and the order rotated each round, after a",
        "warm-up run per target. The backend is `python -m bench.mock_backend --flavor vllm` answering",
        f"{args.tokens} tokens with no added latency; wrk, the mock and every server share this machine,",
        "and every server is up for the whole run (only the one measured is loaded).",
        "",
        *(line for t in ("ceiling", "cache-hit", "miss", "nginx") for line in described[t]),
        "",
        *hit_lines,
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
            ["target", "req/s", "p50 ms", "p99 ms", "server CPU µs/request", "errors", "req/s per round"],
            rows,
        ),
        "",
        headline,
        "",
        *md_table(["ratio of req/s", "medians", "per round (a round's runs were back to back)"], ratio_rows),
        "",
        *quiet_section(args, by_target, label),
        "",
        "## Targets",
        "",
        *md_table(["check", "measured", "target", "verdict"], checks),
        "",
        *cpu_section(by_target, label),
        "",
        *runs_section(args, rounds),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it as: python -m bench.throughput --cache")
