"""Throughput, latency, streaming TTFT and memory of tiermux, against nginx and the backend itself.

``python -m bench.throughput`` starts one mock vLLM backend and three ways to reach it:

* ``nginx``: an nginx reverse proxy (1 worker, upstream keep-alive), the practical ceiling for a
  proxy on this machine;
* ``tiermux``: ``python -m tiermux serve`` with one backend (the mock) in one tier, as the product
  ships: each ``auto`` request is classified (classifier on), and every category lands on the mock;
* ``direct``: the mock itself, for reference (no proxy hop at all).

Each round runs wrk against each target in turn, the order rotating from round to round so that
drift on the machine (thermal, other load) spreads over all targets. The report gives the median
over rounds, the ratio tiermux/nginx, the CPU each process used during each run, the largest RSS of
a tiermux worker, and the targets next to the numbers.

Other modes:

* ``--routing``: what routing costs. The same interleaved rounds against nginx and two tiermux
  instances in front of the same mock, both up for the whole run: one with the classifier on and
  two tiers (``cheap: [mock]``, ``capable: [mock-capable]``, the same mock again, so that either
  tier does the same upstream work), one passing through (the same tiers, classifier off). The
  report (results/routing.md) gives req/s, latency and proxy CPU per request of each, and the
  ratio routing on / pass-through against its target;
* ``--stream``: time to first token of sequential streaming requests, directly and through
  tiermux, interleaved request by request;
* ``--budgets``: what enforcing budgets and tracking health cost (``bench/budgets.py``);
* ``--cache``: response cache hits against a Granian app answering with no upstream, the most
  Python can serve here (``bench/cache.py``);
* ``--metrics``: what Prometheus metrics (and the access log) cost on the hot path
  (``bench/metrics.py``);
* ``--quality``: whether the quality safety net's background checks slow the hot path (``bench/quality.py``);
* ``--dialects``: what translating between the OpenAI and Anthropic dialects costs, against
  same-dialect pass-through to the same backend (``bench/dialects.py``);
* ``--soak N``: N requests through tiermux in fixed-length wrk segments, sampling worker RSS after
  each segment, to see whether memory stays flat.

Every process started here runs in its own process group and is stopped on exit, on Ctrl-C, on
SIGTERM and on errors. The helpers (:class:`Processes`, :func:`start_mock`,
:func:`start_tiermux`, ...) are reused by ``bench/locust_run.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime
import http.client
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"
CHAT_LUA = BENCH_DIR / "wrk" / "chat.lua"
CHAT_PATH = "/v1/chat/completions"

MOCK_MODEL = "qwen-9b"
READY_LINE = re.compile(r"mock-backend listening on http://(\S+):(\d+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# What tiermux aims for on a 2-core machine with load generator, mock and proxy sharing it.
TARGET_RPS = 12_000
TARGET_NGINX_RATIO = 0.35
TARGET_P99_MS = 15.0
TARGET_TTFT_DELTA_MS = 1.0
TARGET_RSS_MB = 80.0
TARGET_SOAK_GROWTH = 0.05
TARGET_ROUTING_RATIO = 0.90  # req/s with the classifier on, against pass-through

STREAM_TTFT_MS = 20.0
STREAM_ITL_MS = 5.0
STREAM_TOKENS = 8


class BenchError(RuntimeError):
    """Something the benchmark needs did not work (a server did not start, wrk failed...)."""


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


# How each process the harness starts is grouped. By default each gets a session of its own, as
# separate services would; with the kernel's autogroup scheduling (sched_autogroup_enabled=1) a
# session is also a scheduling group, so on an oversubscribed machine the CPU is shared between
# the groups (wrk, mock, proxy) rather than between their threads, and a proxy made of several
# processes and threads gets no more than a one-process one. --one-session keeps everything in
# the harness's session (own process groups, for clean-up), so the kernel schedules threads alone.
ONE_SESSION = False


def autogroup_enabled() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the harness dies without cleaning up."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Service:
    """A server process started by the harness, in a process group of its own."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the whole group, then SIGKILL to whatever is left after ``timeout``."""
        pgid = self.process.pid  # a process group of its own either way: the leader's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        # Workers may outlive their leader for a moment; make sure nothing of the group remains.
        deadline = time.monotonic() + 2.0
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(2.0)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Processes(contextlib.AbstractContextManager["Processes"]):
    """Starts services and stops every one of them on exit, last started first.

    SIGTERM and SIGHUP to the harness are turned into :class:`SystemExit` while the context is
    open, so that ``finally`` blocks and this context's exit run as they do for Ctrl-C.
    """

    def __init__(self, workdir: Path | None = None, keep_logs: bool = False) -> None:
        self.services: list[Service] = []
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="tiermux-bench-"))
        self.keep_logs = keep_logs
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Processes:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, _exit_on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for service in reversed(self.services):
                service.stop()
            self.services.clear()
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]
            if self._own_dir and not self.keep_logs:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Service:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                start_new_session=not ONE_SESSION,
                process_group=0 if ONE_SESSION else None,
                preexec_fn=_die_with_parent,
            )
        service = Service(name, process, log)
        self.services.append(service)
        return service


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the usual bind-to-0 trick; the window is tiny)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait(service: Service, check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise BenchError(f"{service.name} exited while starting:\n{service.log_tail()}")
        if check():
            return
        time.sleep(0.05)
    raise BenchError(f"{service.name}: {what} within {timeout:g}s:\n{service.log_tail()}")


def http_get(host: str, port: int, path: str, timeout: float = 1.0) -> int:
    """Status of a plain GET, or 0 when nothing answers."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


def start_mock(
    procs: Processes,
    *,
    flavor: str = "vllm",
    model: str = MOCK_MODEL,
    ttft_ms: float = 0.0,
    itl_ms: float = 0.0,
    latency_ms: float = 0.0,
    tokens: int = 16,
    name: str = "mock",
    api_key: str = "",
) -> Service:
    """``python -m bench.mock_backend`` on a free port; returns once it prints its address.

    ``api_key``: the only key the mock accepts (any key when empty)."""
    argv = [sys.executable, "-m", "bench.mock_backend", "--flavor", flavor, "--host", "127.0.0.1"]
    argv += ["--port", "0", "--model", model, "--tokens", str(tokens)]
    argv += ["--ttft-ms", f"{ttft_ms:g}", "--itl-ms", f"{itl_ms:g}", "--latency-ms", f"{latency_ms:g}"]
    if api_key:
        argv += ["--api-key", api_key]
    service = procs.spawn(name, argv)
    found: list[re.Match[str]] = []

    def ready() -> bool:
        match = READY_LINE.search(service.log_tail(5))
        if match:
            found.append(match)
        return match is not None

    _wait(service, ready, 15.0, "no 'mock-backend listening on' line")
    host, port = found[0].group(1), found[0].group(2)
    service.url = f"http://{host}:{port}"
    return service


def tiermux_config(
    backend_url: str,
    model: str = MOCK_MODEL,
    max_connections: int = 256,
    pinned: Sequence[tuple[str, str, str]] = (),
    *,
    capable_tier: bool = False,
    classifier: bool = True,
    price: tuple[float, float] | None = None,
    cache: bool = False,
    extra: str = "",
) -> str:
    """A config for the backend at ``backend_url`` (an origin), by default in one tier, ``cheap``.

    The defaults are the product's: ``auto`` is classified (classifier on) and, with one tier,
    every category lands on the same backend. ``capable_tier`` adds a second tier, ``capable``,
    whose backend ``mock-capable`` is the same origin and model again, so that whichever tier the
    classifier picks the upstream work is identical. ``classifier=False`` sends ``auto`` straight
    to ``cheap`` unclassified (pass-through). ``pinned`` adds ``(name, origin, model)`` backends in
    no tier: reachable by their model name. ``price`` (input, output USD per 1M tokens) is given
    to every backend; ``extra`` is YAML appended as it is (top-level sections).

    The response cache is off unless ``cache`` (then ``extra`` may hold its section): wrk sends
    one fixed deterministic body, which would otherwise measure cache hits instead of proxying.
    """
    capable = [("mock-capable", backend_url, model)] if capable_tier else []
    backends = [("mock", backend_url, model), *capable, *pinned]
    lines = ["# written by bench/throughput.py", "backends:"]
    for name, url, backend_model in backends:
        lines += [
            f"  - name: {name}",
            "    type: openai",
            f"    base_url: {url}/v1",
            f"    model: {backend_model}",
            f"    max_connections: {max_connections}",
        ]
        if price is not None:
            lines.append(f"    price: {{input: {price[0]}, output: {price[1]}}}")
    lines += ["tiers:", "  cheap: [mock]"]
    if capable_tier:
        lines += [
            "  # the same mock again: either tier costs the same upstream, only routing differs",
            "  capable: [mock-capable]",
        ]
    enabled = "true" if classifier else "false"
    lines += ["routing:", "  default_tier: cheap", "  classifier:", f"    enabled: {enabled}"]
    if not cache:
        lines += ["cache:", "  enabled: false"]
    return "\n".join([*lines, ""]) + extra


def start_tiermux(
    procs: Processes,
    backend_url: str,
    *,
    workers: int = 2,
    model: str = MOCK_MODEL,
    pinned: Sequence[tuple[str, str, str]] = (),
    name: str = "tiermux",
    capable_tier: bool = False,
    classifier: bool = True,
    price: tuple[float, float] | None = None,
    cache: bool = False,
    extra: str = "",
) -> Service:
    """``python -m tiermux serve`` in front of ``backend_url``; returns once every worker is up.

    ``name`` names the config and the log, so that several instances can run side by side. The
    config is :func:`tiermux_config`'s: the response cache is off unless ``cache``.
    """
    config = procs.workdir / f"{name}.yaml"
    config.write_text(
        tiermux_config(
            backend_url,
            model,
            pinned=pinned,
            capable_tier=capable_tier,
            classifier=classifier,
            price=price,
            cache=cache,
            extra=extra,
        )
    )
    port = free_port()
    argv = [sys.executable, "-m", "tiermux", "serve", "--config", str(config), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    service = procs.spawn(name, argv)
    service.url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        return len(children(service.pid)) >= workers and http_get("127.0.0.1", port, "/health") == 200

    _wait(service, ready, 30.0, f"not answering /health with {workers} workers")
    return service


def route_probe(url: str, model: str = "auto") -> dict[str, str]:
    """The ``x-tiermux-*`` headers tiermux sets on one small chat completion: where it went, and
    whether it was classified (``x-tiermux-category`` is only there when it was)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    body = (
        b'{"model":"' + model.encode() + b'","messages":[{"role":"user","content":"Summarise this '
        b'order status in one line: label created, not yet shipped."}],"max_tokens":64,"temperature":0}'
    )
    headers = {"content-type": "application/json", "authorization": "Bearer bench-key"}
    conn = http.client.HTTPConnection(host, int(port), timeout=10.0)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
    except OSError as exc:
        raise BenchError(f"{url}: probe request failed: {exc}") from exc
    finally:
        conn.close()
    if response.status != 200:
        raise BenchError(f"{url}: probe request answered HTTP {response.status}")
    return {k.lower(): v for k, v in response.getheaders() if k.lower().startswith("x-tiermux-")}


NGINX_CONF = """\
# written by bench/throughput.py: a plain reverse proxy, tuned the way one would for this job
daemon off;
master_process on;
worker_processes 1;
{user}pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 16m;
    keepalive_requests 1000000;

    upstream backend {{
        server {backend};
        keepalive 256;
        keepalive_requests 1000000;
    }}

    server {{
        listen 127.0.0.1:{port} reuseport backlog=1024;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering on;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not found:
        raise BenchError("nginx not found (make system-deps installs it)")
    return found


def start_nginx(procs: Processes, backend_url: str) -> Service:
    """nginx with a generated config; every path it writes is in its own temp dir."""
    directory = procs.workdir / "nginx"
    directory.mkdir(exist_ok=True)
    port = free_port()
    backend = backend_url.removeprefix("http://")
    # As root, nginx would switch its worker to "nobody", who can't write our temp dir.
    user = f"user {_user_name()};\n" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=directory, port=port, backend=backend, user=user))
    argv = [nginx_binary(), "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")]
    service = procs.spawn("nginx", argv)
    service.url = f"http://127.0.0.1:{port}"
    _wait(service, lambda: http_get("127.0.0.1", port, "/v1/models") == 200, 15.0, "not proxying /v1/models")
    return service


def _user_name() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


# --------------------------------------------------------------------------------------------
# /proc: children, RSS, CPU time
# --------------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Granian's workers are children of the serve process)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        with contextlib.suppress(OSError):
            found.extend(int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return sorted(set(found))


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out = [pid]
    for child in children(pid):
        out.extend(process_tree(child))
    return out


def rss_mb(pid: int) -> float:
    """VmRSS of a process in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def system_cpu() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy / CLK_TCK, steal / CLK_TCK, (busy + idle + iowait + steal) / CLK_TCK


def wait_for_quiet(max_busy: float, timeout: float, sample: float = 0.5) -> float:
    """Wait (up to ``timeout``) until the machine is mostly idle; return the last busy share.

    The harness's own servers are idle between runs, so what this sees is someone else's load.
    ``max_busy`` is a fraction of the whole machine (0.15 = 15% of all cores).
    """
    deadline = time.monotonic() + timeout
    while True:
        busy0, _, total0 = system_cpu()
        time.sleep(sample)
        busy1, _, total1 = system_cpu()
        share = (busy1 - busy0) / max(total1 - total0, 1e-9)
        if share <= max_busy or time.monotonic() >= deadline:
            return share


@dataclass
class CpuProbe:
    """CPU seconds used by named groups of processes, and by everything else, over a window."""

    groups: dict[str, list[int]]
    child_label: str = "wrk"
    """Name for the CPU of children reaped inside the window (the load generator)."""
    start: dict[str, float] = field(default_factory=dict)
    busy0: float = 0.0
    steal0: float = 0.0
    children0: float = 0.0
    t0: float = 0.0

    def __enter__(self) -> CpuProbe:
        self.start = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.groups.items()}
        self.busy0, self.steal0, _ = system_cpu()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.children0 = usage.ru_utime + usage.ru_stime
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        self.used = {
            name: sum(cpu_seconds(p) for p in pids) - self.start[name] for name, pids in self.groups.items()
        }
        busy1, steal1, _ = system_cpu()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        # The load generator is the only child reaped inside the window: its CPU time lands in
        # RUSAGE_CHILDREN once it has been waited for.
        self.used[self.child_label] = usage.ru_utime + usage.ru_stime - self.children0
        self.machine_busy = busy1 - self.busy0
        self.steal = steal1 - self.steal0

    def percent(self) -> dict[str, float]:
        """Each group's CPU as % of one core, plus ``other`` (everything else) and ``steal``."""
        out = {name: 100 * used / self.wall for name, used in self.used.items()}
        ours = sum(self.used.values())
        out["other"] = max(0.0, 100 * (self.machine_busy - ours) / self.wall)
        out["steal"] = 100 * self.steal / self.wall
        return out


# --------------------------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    target: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU of each process group over the run, % of one core (plus ``other`` and ``steal``)."""
    cpu_us: dict[str, float] = field(default_factory=dict)
    """CPU of each process group per request, in microseconds."""
    rss_mb: list[float] = field(default_factory=list)
    attempts: int = 1

    @property
    def noise(self) -> float:
        """CPU taken by others during the run (% of one core)."""
        return self.cpu.get("other", 0.0) + self.cpu.get("steal", 0.0)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _latency_ms(text: str, percentile: str) -> float:
    match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    if not match:
        raise BenchError(f"no {percentile}% latency in wrk output:\n{text}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(target: str, text: str) -> WrkResult:
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not done or not rps:
        raise BenchError(f"unexpected wrk output:\n{text}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    counted = re.search(r"^non-2xx: (\d+)", text, re.M)  # from chat.lua
    builtin = re.search(r"Non-2xx or 3xx responses: (\d+)", text)  # wrk's own (>= 400 only)
    non2xx = int(counted.group(1)) if counted else int(builtin.group(1)) if builtin else 0
    return WrkResult(
        target=target,
        requests=int(done.group(1)),
        seconds=float(done.group(2)) * _UNITS_MS[done.group(3)] / 1000,
        rps=float(rps.group(1)),
        p50_ms=_latency_ms(text, "50"),
        p99_ms=_latency_ms(text, "99"),
        non2xx=non2xx,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


@dataclass(frozen=True)
class WrkLoad:
    """What wrk posts: the path, the Lua script that builds the request, and the script's
    arguments after the model. The default is the chat completion of ``bench/wrk/chat.lua``."""

    path: str = CHAT_PATH
    script: Path = CHAT_LUA
    args: tuple[str, ...] = ()


CHAT_LOAD = WrkLoad()


def wrk_command(
    url: str, duration: float, connections: int, threads: int, model: str, load: WrkLoad = CHAT_LOAD
) -> list[str]:
    script = str(load.script.relative_to(ROOT))
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", script]
    return [*argv, f"{url}{load.path}", "--", model, *load.args]


def run_wrk(
    target: str,
    url: str,
    *,
    duration: float,
    connections: int,
    threads: int,
    model: str,
    watch: dict[str, list[int]],
    load: WrkLoad = CHAT_LOAD,
) -> WrkResult:
    """One wrk run; CPU of every group in ``watch`` (and of wrk) is measured over it."""
    argv = wrk_command(url, duration, connections, threads, model, load)
    with CpuProbe(watch) as probe:
        process = subprocess.Popen(
            argv,
            executable=shutil.which("wrk") or "/usr/bin/wrk",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=not ONE_SESSION,
            process_group=0 if ONE_SESSION else None,
            preexec_fn=_die_with_parent,
        )
        try:
            out, _ = process.communicate(timeout=duration + 60)
        finally:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    text = out.decode(errors="replace")
    if process.returncode != 0:
        raise BenchError(f"wrk failed ({process.returncode}):\n{text}")
    result = parse_wrk(target, text)
    result.cpu = probe.percent()
    result.cpu_us = {name: 1e6 * used / max(result.requests, 1) for name, used in probe.used.items()}
    return result


# --------------------------------------------------------------------------------------------
# Report helpers
# --------------------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name, argv in {"nginx": [nginx_binary(), "-v"], "wrk": ["wrk", "-v"]}.items():
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            text = (out.stdout + out.stderr).strip().splitlines()[0]
            versions[name] = text.replace("nginx version: ", "").split(" Copyright")[0]
        except (OSError, IndexError, subprocess.SubprocessError, BenchError):
            versions[name] = "?"
    granian = "?"
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        granian = version("granian")
    compiled = "?"
    with contextlib.suppress(Exception):
        from tiermux._speedups import COMPILED

        compiled = "compiled" if COMPILED else "pure Python (extensions not built)"
    mem = "?"
    with contextlib.suppress(OSError, IndexError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    return {
        "tiermux revision": _revision(),
        "cpus": f"{os.cpu_count()} (nproc {len(os.sched_getaffinity(0))})",
        "cpu model": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "granian": granian,
        "tiermux hot path": compiled,
        "nginx": versions["nginx"],
        "wrk": versions["wrk"],
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _revision() -> str:
    """The checkout's commit, and whether the code under test differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "csrc"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head or '?'}" + (" with uncommitted changes in src/ or csrc/" if dirty else "")


def command_line(module: str = "bench.throughput") -> str:
    """How this run was started, for the report."""
    return f"python -m {module} " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: it is a value that was measured)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def worker_rss(server: Service) -> dict[int, float]:
    return {pid: rss_mb(pid) for pid in children(server.pid)}


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table, as lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _machine_lines(info: dict[str, str]) -> list[str]:
    return [f"- {key}: {value}" for key, value in info.items()]


def write_report(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text, flush=True)
    print(f"(written to {path})", flush=True)


# --------------------------------------------------------------------------------------------
# Interleaved rounds: shared by the throughput and routing modes
# --------------------------------------------------------------------------------------------

Runner = Callable[[str, float], WrkResult]
"""One wrk run against a target (by name) for so many seconds, with its CPU (and RSS) filled in."""


def rotated(targets: Sequence[str], r: int) -> list[str]:
    """The order of round ``r``: each round starts one target later, so that over a multiple of
    ``len(targets)`` rounds every target runs in every position equally often."""
    shift = r % len(targets)
    return [*targets[shift:], *targets[:shift]]


def measure_quietest(args: argparse.Namespace, target: str, r: int, one: Runner, width: int) -> WrkResult:
    """One run of ``target``, repeated (up to ``--retries`` times) while other load on the machine
    makes it noisy; the quietest attempt."""
    attempts: list[WrkResult] = []
    for attempt in range(1, args.retries + 2):
        if args.wait_quiet:
            busy = wait_for_quiet(args.quiet_threshold, args.wait_quiet)
            if busy > args.quiet_threshold:
                print(f"  (machine still {busy:.0%} busy with other work; measuring anyway)")
        result = one(target, args.duration)
        result.attempts = attempt
        attempts.append(result)
        cpu = "  ".join(f"{k} {v:.0f}%" for k, v in result.cpu.items())
        print(
            f"round {r + 1} {target:{width}s} {result.rps:10,.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
            f"p99 {result.p99_ms:6.2f} ms  non-2xx {result.non2xx}  errors {result.socket_errors}"
            f"  | cpu: {cpu}",
            flush=True,
        )
        if result.noise <= args.noisy_cpu:
            break
        if attempt <= args.retries:
            print(f"  (other load took {result.noise:.0f}% of a core during the run: repeating it)")
    # The quietest attempt: chosen by the load others put on the machine, never by result.
    return min(attempts, key=lambda a: a.noise)


def run_rounds(args: argparse.Namespace, targets: Sequence[str], one: Runner) -> list[list[WrkResult]]:
    """A warm-up run per target, then ``--rounds`` rounds over all targets, the order rotated."""
    # Warm-up: pools filled, code paths warm, nothing recorded.
    for target in targets:
        one(target, min(2.0, args.duration))
    width = max(8, *(len(t) for t in targets))
    return [
        [measure_quietest(args, target, r, one, width) for target in rotated(targets, r)]
        for r in range(args.rounds)
    ]


def tiermux_groups(server: Service, workers: Sequence[int]) -> dict[str, list[int]]:
    """CPU groups of one tiermux instance: its main process and each worker."""
    return {"tiermux main": [server.pid]} | {
        f"tiermux worker {i + 1}": [pid] for i, pid in enumerate(workers)
    }


def wrk_runner(
    args: argparse.Namespace,
    mock: Service,
    urls: dict[str, str],
    models: dict[str, str],
    proxies: dict[str, dict[str, list[int]]],
    tiermux: dict[str, Service],
    loads: dict[str, WrkLoad] | None = None,
    backends: dict[str, Service] | None = None,
) -> Runner:
    """Runs wrk against a target, watching the mock and that target's processes (``proxies``);
    for targets in ``tiermux``, the workers' RSS at the end of the run is recorded. ``loads``
    gives a target other requests than chat.lua's chat completion, ``backends`` another mock
    than ``mock`` (the one it loads, watched as ``mock``)."""

    def one(target: str, duration: float) -> WrkResult:
        backend = (backends or {}).get(target, mock)
        result = run_wrk(
            target,
            urls[target],
            duration=duration,
            connections=args.connections,
            threads=args.threads,
            model=models[target],
            watch={"mock": [backend.pid]} | proxies[target],
            load=(loads or {}).get(target, CHAT_LOAD),
        )
        if target in tiermux:
            result.rss_mb = list(worker_rss(tiermux[target]).values())
        return result

    return one


def group_by_target(rounds: list[list[WrkResult]], targets: Sequence[str]) -> dict[str, list[WrkResult]]:
    """Every kept run of each target, in round order."""
    out: dict[str, list[WrkResult]] = {t: [] for t in targets}
    for results in rounds:
        for result in results:
            out[result.target].append(result)
    return out


def medians(by_target: dict[str, list[WrkResult]]) -> dict[str, dict[str, float]]:
    return {
        t: {k: statistics.median(getattr(r, k) for r in rs) for k in ("rps", "p50_ms", "p99_ms")}
        for t, rs in by_target.items()
    }


def summary_rows(
    targets: Sequence[str],
    label: dict[str, str],
    by_target: dict[str, list[WrkResult]],
) -> list[list[object]]:
    """One row per target: median req/s, p50, p99, proxy CPU per request, errors, req/s per round."""
    med = medians(by_target)
    rows: list[list[object]] = []
    for t in targets:
        us = median_proxy_cpu_us(by_target[t])
        rows.append(
            [
                label[t],
                f"{med[t]['rps']:,.0f}",
                f"{med[t]['p50_ms']:.2f}",
                f"{med[t]['p99_ms']:.2f}",
                f"{us:.0f}" if us is not None else "-",
                sum(r.non2xx + r.socket_errors for r in by_target[t]),
                ", ".join(f"{r.rps:,.0f}" for r in by_target[t]),
            ]
        )
    return rows


def pair_ratios(
    by_target: dict[str, list[WrkResult]], pairs: Sequence[tuple[str, str]]
) -> tuple[dict[tuple[str, str], float], list[list[object]]]:
    """The req/s ratio of each pair (median against median), and table rows with it and its value
    per round: the targets of one round ran back to back, so a round's ratio cancels slow drift."""
    med = medians(by_target)
    ratios = {(a, b): ratio(med[a]["rps"], med[b]["rps"]) for a, b in pairs}
    rows: list[list[object]] = [
        [
            f"{a} / {b}",
            f"{ratios[(a, b)]:.2f}",
            ", ".join(f"{ratio(x.rps, y.rps):.2f}" for x, y in zip(by_target[a], by_target[b], strict=True)),
        ]
        for a, b in pairs
    ]
    return ratios, rows


def proxy_cpu_us(result: WrkResult) -> float | None:
    """CPU per request of the proxy (every watched group but the mock and wrk), in µs; None when
    there is no proxy (the mock direct)."""
    proxy = [n for n in result.cpu_us if n not in ("mock", "wrk")]
    return sum(result.cpu_us[n] for n in proxy) if proxy else None


def median_proxy_cpu_us(results: Sequence[WrkResult]) -> float | None:
    values = [v for v in map(proxy_cpu_us, results) if v is not None]
    return statistics.median(values) if values else None


def ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def quiet_section(
    args: argparse.Namespace, by_target: dict[str, list[WrkResult]], label: dict[str, str]
) -> list[str]:
    """Medians from the runs during which others took at most ``--noisy-cpu`` of a core."""
    rows = []
    for t, rs in by_target.items():
        quiet = [r for r in rs if r.noise <= args.noisy_cpu]
        if quiet:
            rows.append(
                [
                    label[t],
                    f"{statistics.median(r.rps for r in quiet):,.0f}",
                    f"{statistics.median(r.p50_ms for r in quiet):.2f}",
                    f"{statistics.median(r.p99_ms for r in quiet):.2f}",
                    f"{len(quiet)} of {len(rs)}",
                ]
            )
        else:
            rows.append([label[t], "-", "-", "-", f"0 of {len(rs)}"])
    return [
        f"The same, from the quiet runs only (other processes took at most {args.noisy_cpu:g}% of a core):",
        "",
        *md_table(["target", "req/s", "p50 ms", "p99 ms", "quiet runs"], rows),
    ]


def cpu_section(by_target: dict[str, list[WrkResult]], label: dict[str, str]) -> list[str]:
    """Where the CPU went during each target's runs, and per request."""
    rows = []
    for t, rs in by_target.items():
        names = list(rs[0].cpu)
        cells = [f"{n} {statistics.median(r.cpu[n] for r in rs):.0f}%" for n in names]
        ours = [n for n in names if n not in ("other", "steal")]
        total = statistics.median(sum(r.cpu[n] for n in ours) for r in rs)
        per_request = median_proxy_cpu_us(rs)
        rows.append(
            [
                label[t],
                ", ".join(cells),
                f"{total:.0f}%",
                f"{per_request:.0f}" if per_request is not None else "-",
                f"{statistics.median(r.cpu_us['mock'] for r in rs):.0f}",
                f"{statistics.median(r.cpu_us['wrk'] for r in rs):.0f}",
            ]
        )
    return [
        "## Where the CPU went (median over rounds; % of one core, the machine has "
        f"{len(os.sched_getaffinity(0)) * 100}%)",
        "",
        "`other` is CPU used by processes outside this benchmark during the run; `steal` is time the",
        "hypervisor gave to other guests. Either one above a few percent makes that run noisy. The",
        "per-request columns divide each process's CPU time by the requests served: they depend much",
        "less on other load than req/s does.",
        "",
        *md_table(
            [
                "target",
                "CPU by process",
                "benchmark total",
                "proxy CPU µs/request",
                "mock CPU µs/request",
                "wrk CPU µs/request",
            ],
            rows,
        ),
    ]


def runs_section(
    args: argparse.Namespace, rounds: list[list[WrkResult]], title: str = "Every run"
) -> list[str]:
    """Every kept run, in the order it ran."""
    rows = [
        [
            i + 1,
            r.target,
            f"{r.rps:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            r.requests,
            r.non2xx,
            r.socket_errors,
            f"{r.noise:.0f}%",
            r.attempts,
        ]
        for i, results in enumerate(rounds)
        for r in results
    ]
    return [
        f"## {title}",
        "",
        f"A run during which other processes took more than {args.noisy_cpu:g}% of a core is repeated "
        f"(up to {args.retries} times);",
        "the quietest attempt is kept (chosen by other load, not by result), and the table says which",
        "one it was and how noisy it still was.",
        "",
        *md_table(
            [
                "round",
                "target",
                "req/s",
                "p50 ms",
                "p99 ms",
                "requests",
                "non-2xx",
                "errors",
                "other + steal CPU",
                "attempt",
            ],
            rows,
        ),
    ]


def load_line(args: argparse.Namespace, load: WrkLoad = CHAT_LOAD) -> str:
    return " ".join(wrk_command("URL", args.duration, args.connections, args.threads, "MODEL", load))


# --------------------------------------------------------------------------------------------
# Mode 1: throughput, interleaved rounds
# --------------------------------------------------------------------------------------------

TARGET_NAMES = ("nginx", "tiermux", "direct")
TARGET_LABELS = {
    "nginx": "nginx (1 worker)",
    "tiermux": "tiermux ({workers} workers)",
    "direct": "mock direct",
}


def run_throughput(args: argparse.Namespace) -> int:
    info = machine_info()
    with Processes(keep_logs=args.keep_logs) as procs:
        mock = start_mock(procs, tokens=args.tokens)
        nginx = start_nginx(procs, mock.url)
        # The product default: classifier on, one tier (every category lands on the mock).
        tiermux = start_tiermux(procs, mock.url, workers=args.workers)
        workers = children(tiermux.pid)
        print(f"mock {mock.url}  nginx {nginx.url}  tiermux {tiermux.url} (workers {workers})", flush=True)
        urls = {"nginx": nginx.url, "tiermux": tiermux.url, "direct": mock.url}
        models = {"nginx": MOCK_MODEL, "tiermux": "auto", "direct": MOCK_MODEL}
        proxies = {
            "nginx": {"nginx": process_tree(nginx.pid)},
            "tiermux": tiermux_groups(tiermux, workers),
            "direct": {},
        }
        one = wrk_runner(args, mock, urls, models, proxies, {"tiermux": tiermux})
        rounds = run_rounds(args, TARGET_NAMES, one)
        if children(tiermux.pid) != workers:
            print(f"note: tiermux workers changed during the run: {workers} -> {children(tiermux.pid)}")
    report = throughput_report(args, info, rounds)
    write_report(args.out or RESULTS_DIR / "throughput.md", report)
    return 0


def throughput_report(args: argparse.Namespace, info: dict[str, str], rounds: list[list[WrkResult]]) -> str:
    by_target = group_by_target(rounds, TARGET_NAMES)
    med = medians(by_target)
    label = {t: TARGET_LABELS[t].format(workers=args.workers) for t in TARGET_NAMES}
    rows = []
    for t in TARGET_NAMES:
        rs = by_target[t]
        rows.append(
            [
                label[t],
                f"{med[t]['rps']:,.0f}",
                f"{med[t]['p50_ms']:.2f}",
                f"{med[t]['p99_ms']:.2f}",
                sum(r.non2xx for r in rs),
                sum(r.socket_errors for r in rs),
                ", ".join(f"{r.rps:,.0f}" for r in rs),
            ]
        )
    nginx_ratio = ratio(med["tiermux"]["rps"], med["nginx"]["rps"])
    rss = max((m for r in by_target["tiermux"] for m in r.rss_mb), default=0.0)
    checks = [
        [
            "tiermux req/s",
            f"{med['tiermux']['rps']:,.0f}",
            f">= {TARGET_RPS:,}",
            verdict(med["tiermux"]["rps"] >= TARGET_RPS),
        ],
        [
            "tiermux / nginx",
            f"{nginx_ratio:.0%}",
            f">= {TARGET_NGINX_RATIO:.0%}",
            verdict(nginx_ratio >= TARGET_NGINX_RATIO),
        ],
        [
            "tiermux p99",
            f"{med['tiermux']['p99_ms']:.2f} ms",
            f"<= {TARGET_P99_MS:g} ms",
            verdict(med["tiermux"]["p99_ms"] <= TARGET_P99_MS),
        ],
        [
            "RSS per worker (max, end of each run)",
            f"{rss:.1f} MB",
            f"<= {TARGET_RSS_MB:g} MB",
            verdict(rss <= TARGET_RSS_MB),
        ],
        [
            "non-2xx + socket errors (tiermux)",
            str(sum(r.non2xx + r.socket_errors for r in by_target["tiermux"])),
            "0",
            verdict(all(r.non2xx + r.socket_errors == 0 for r in by_target["tiermux"])),
        ],
    ]
    lines = [
        "# Throughput: tiermux vs nginx vs the backend directly",
        "",
        f"Run on {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Load: `{load_line(args)}` (MODEL is `auto` for tiermux, the backend's model name otherwise),",
        f"{args.rounds} round(s), targets interleaved and the order rotated each round, after a warm-up",
        "run per target. The backend is `python -m bench.mock_backend --flavor vllm` answering",
        f"{args.tokens} tokens with no added latency; wrk, the mock and the proxy all share this machine.",
        "",
        "tiermux runs the product default: it classifies each request (`auto`, classifier on) and,",
        "with one tier, sends every category to the mock. What the classification costs against",
        "pass-through is measured by `python -m bench.throughput --routing` (results/routing.md).",
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
            ["target", "req/s", "p50 ms", "p99 ms", "non-2xx", "socket errors", "req/s per round"], rows
        ),
        "",
        f"**tiermux / nginx = {nginx_ratio:.2f}** (median req/s against median req/s)",
        "",
        *quiet_section(args, by_target, label),
        "",
        "## Targets",
        "",
        *md_table(["what", "measured", "target", ""], checks),
        "",
        *cpu_section(by_target, label),
        "",
        *runs_section(args, rounds),
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
def run_against_nginx(
    args: argparse.Namespace,
    mock: Service,
    nginx: Service,
    servers: dict[str, Service],
    extra_groups: dict[str, dict[str, list[int]]] | None = None,
) -> list[list[WrkResult]]:
    """Interleaved rounds against nginx and tiermux instances in front of ``mock``, ``auto``
    for tiermux; ``extra_groups`` adds processes whose CPU counts for a target (Redis, say)."""
    workers = {t: children(s.pid) for t, s in servers.items()}
    print(
        f"mock {mock.url}  nginx {nginx.url}  "
        + "  ".join(f"{t} {s.url} (workers {workers[t]})" for t, s in servers.items()),
        flush=True,
    )
    urls = {"nginx": nginx.url} | {t: s.url for t, s in servers.items()}
    models = {"nginx": MOCK_MODEL} | {t: "auto" for t in servers}
    proxies = {"nginx": {"nginx": process_tree(nginx.pid)}} | {
        t: tiermux_groups(s, workers[t]) | (extra_groups or {}).get(t, {}) for t, s in servers.items()
    }
    one = wrk_runner(args, mock, urls, models, proxies, servers)
    rounds = run_rounds(args, ("nginx", *servers), one)
    for t, s in servers.items():
        if children(s.pid) != workers[t]:
            print(f"note: {t} workers changed during the run: {workers[t]} -> {children(s.pid)}")
    return rounds


# Mode 1b: the cost of routing, classifier on against pass-through
# --------------------------------------------------------------------------------------------

ROUTING_TARGETS = ("nginx", "routing-on", "pass-through")
ROUTING_LABELS = {
    "nginx": "nginx (1 worker)",
    "routing-on": "tiermux, routing on ({workers} workers)",
    "pass-through": "tiermux, pass-through ({workers} workers)",
}


def check_probes(probes: dict[str, dict[str, str]]) -> None:
    """Refuse to measure if the two instances don't do what their names say: a routing-on
    instance that does not classify would make the ratio meaningless (and look good)."""
    on, off = probes["routing-on"], probes["pass-through"]
    if "x-tiermux-category" not in on:
        raise BenchError(f"the routing-on instance did not classify a probe request: {on}")
    if "x-tiermux-category" in off or off.get("x-tiermux-tier") != "cheap":
        raise BenchError(
            f"the pass-through instance did not send a probe request to cheap unclassified: {off}"
        )


def run_routing(args: argparse.Namespace) -> int:
    info = machine_info()
    with Processes(keep_logs=args.keep_logs) as procs:
        mock = start_mock(procs, tokens=args.tokens)
        nginx = start_nginx(procs, mock.url)
        # Both instances stay up for the whole run (only the measured one is loaded), so each is
        # measured with the other present: same memory pressure and scheduler state for both.
        servers = {
            "routing-on": start_tiermux(
                procs, mock.url, workers=args.workers, name="tiermux-routing", capable_tier=True
            ),
            "pass-through": start_tiermux(
                procs,
                mock.url,
                workers=args.workers,
                name="tiermux-passthrough",
                capable_tier=True,
                classifier=False,
            ),
        }
        probes = {t: route_probe(s.url) for t, s in servers.items()}
        check_probes(probes)
        rounds = run_against_nginx(args, mock, nginx, servers)
    report = routing_report(args, info, rounds, probes)
    write_report(args.out or RESULTS_DIR / "routing.md", report)
    return 0


def _probe_text(headers: dict[str, str]) -> str:
    tier = f"tier `{headers.get('x-tiermux-tier', '?')}` (backend `{headers.get('x-tiermux-backend', '?')}`)"
    if "x-tiermux-category" not in headers:
        return f"{tier}, not classified"
    return f"{tier}, category `{headers['x-tiermux-category']}`, score {headers.get('x-tiermux-score', '?')}"


def routing_report(
    args: argparse.Namespace,
    info: dict[str, str],
    rounds: list[list[WrkResult]],
    probes: dict[str, dict[str, str]],
) -> str:
    by_target = group_by_target(rounds, ROUTING_TARGETS)
    med = medians(by_target)
    label = {t: ROUTING_LABELS[t].format(workers=args.workers) for t in ROUTING_TARGETS}
    cpu_us = {t: median_proxy_cpu_us(by_target[t]) for t in ROUTING_TARGETS}
    rows = []
    for t in ROUTING_TARGETS:
        rs = by_target[t]
        us = cpu_us[t]
        rows.append(
            [
                label[t],
                f"{med[t]['rps']:,.0f}",
                f"{med[t]['p50_ms']:.2f}",
                f"{med[t]['p99_ms']:.2f}",
                f"{us:.0f}" if us is not None else "-",
                sum(r.non2xx for r in rs),
                sum(r.socket_errors for r in rs),
                ", ".join(f"{r.rps:,.0f}" for r in rs),
            ]
        )
    pairs = [("routing-on", "pass-through"), ("routing-on", "nginx"), ("pass-through", "nginx")]
    ratios, ratio_rows = pair_ratios(by_target, pairs)
    routing_ratio = ratios[("routing-on", "pass-through")]
    tiermux_runs = by_target["routing-on"] + by_target["pass-through"]
    checks = [
        [
            "routing on / pass-through (median req/s)",
            f"{routing_ratio:.2f}",
            f">= {TARGET_ROUTING_RATIO:.2f}",
            verdict(routing_ratio >= TARGET_ROUTING_RATIO),
        ],
        [
            "non-2xx + socket errors (both tiermux instances)",
            str(sum(r.non2xx + r.socket_errors for r in tiermux_runs)),
            "0",
            verdict(all(r.non2xx + r.socket_errors == 0 for r in tiermux_runs)),
        ],
    ]
    on_us, off_us = cpu_us["routing-on"], cpu_us["pass-through"]
    cost = (
        f"Routing costs **{on_us - off_us:+.0f} µs of proxy CPU per request** (median per-request CPU of "
        f"the tiermux processes: routing on {on_us:.0f} µs, pass-through {off_us:.0f} µs)."
        if on_us is not None and off_us is not None
        else ""
    )
    lines = [
        "# Routing cost: tiermux classifying each request vs pass-through (and nginx)",
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
        f"Two tiermux instances ({args.workers} workers each) run in front of the same mock, with the same",
        "two tiers, `cheap: [mock]` and `capable: [mock-capable]`, where `mock-capable` is the same mock",
        "URL and model again: whichever tier a request goes to, the upstream work is identical, and only",
        "the routing differs.",
        "",
        "- **routing on**: `routing.classifier.enabled: true`; each `auto` request is classified (task",
        "  category, complexity score) and the policy picks its tier.",
        "- **pass-through**: `routing.classifier.enabled: false`; `auto` goes straight to",
        "  `default_tier: cheap`, unclassified.",
        "",
        "Both instances run for the whole run; only the one being measured is loaded (the idle one's CPU,",
        "like idle nginx's, counts as `other`). A probe request before the rounds (`auto`, one user",
        "message, not the wrk body) checked that each does what its name says:",
        "",
        *(f"- {label[t]}: {_probe_text(probes[t])}" for t in probes),
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
                "non-2xx",
                "socket errors",
                "req/s per round",
            ],
            rows,
        ),
        "",
        f"**routing on / pass-through = {routing_ratio:.2f}** (median req/s against median req/s)",
        "",
        *md_table(
            ["ratio of req/s", "medians", "per round (targets of one round ran back to back)"], ratio_rows
        ),
        "",
        cost,
        "",
        *quiet_section(args, by_target, label),
        "",
        "## Targets",
        "",
        *md_table(["what", "measured", "target", ""], checks),
        "",
        *cpu_section(by_target, label),
        "",
        *runs_section(args, rounds),
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Mode 2: streaming time to first token
# --------------------------------------------------------------------------------------------


def stream_body(model: str) -> bytes:
    return (
        b'{"model":"' + model.encode() + b'","messages":[{"role":"system","content":"You are a helpful '
        b'assistant."},{"role":"user","content":"Write one sentence about the sea."}],'
        b'"max_tokens":64,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}'
    )


async def _measure_ttft(
    urls: dict[str, str], models: dict[str, str], n: int, warmup: int
) -> dict[str, list[float]]:
    import httpx

    samples: dict[str, list[float]] = {name: [] for name in urls}
    bodies = {name: stream_body(models[name]) for name in urls}
    headers = {"content-type": "application/json", "authorization": "Bearer bench-key"}
    timeout = httpx.Timeout(30.0)
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=4)) as client:
        for i in range(warmup + n):
            names = list(urls)
            order = names[i % len(names) :] + names[: i % len(names)]  # rotate who goes first
            for name in order:
                url = urls[name] + "/v1/chat/completions"
                t0 = time.perf_counter()
                first = 0.0
                async with client.stream("POST", url, content=bodies[name], headers=headers) as response:
                    if response.status_code != 200:
                        raise BenchError(f"{name}: HTTP {response.status_code}: {await response.aread()!r}")
                    async for chunk in response.aiter_raw():
                        if chunk and not first:
                            first = time.perf_counter()
                if not first:
                    raise BenchError(f"{name}: empty stream")
                if i >= warmup:
                    samples[name].append((first - t0) * 1000)
    return samples


def run_stream(args: argparse.Namespace) -> int:
    info = machine_info()
    n = 20 if args.quick else args.requests
    with Processes(keep_logs=args.keep_logs) as procs:
        mock = start_mock(procs, ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, tokens=STREAM_TOKENS)
        tiermux = start_tiermux(procs, mock.url, workers=args.workers)
        nginx = start_nginx(procs, mock.url)
        urls = {"direct": mock.url, "tiermux": tiermux.url, "nginx": nginx.url}
        models = {"direct": MOCK_MODEL, "tiermux": "auto", "nginx": MOCK_MODEL}
        print(f"mock {mock.url} (ttft {args.ttft_ms:g} ms, itl {args.itl_ms:g} ms)  tiermux {tiermux.url}")
        print(f"{n} sequential streaming requests to each path, interleaved...", flush=True)
        if args.wait_quiet:
            wait_for_quiet(args.quiet_threshold, args.wait_quiet)
        watch = {
            "client": [os.getpid()],
            "mock": [mock.pid],
            "tiermux": process_tree(tiermux.pid),
            "nginx": process_tree(nginx.pid),
        }
        with CpuProbe(watch, child_label="-") as probe:
            try:
                import uvloop

                samples = uvloop.run(_measure_ttft(urls, models, n, warmup=10))
            except ImportError:
                samples = asyncio.run(_measure_ttft(urls, models, n, warmup=10))
        rss = worker_rss(tiermux)
    cpu = probe.percent()
    rows = [
        [name, f"{statistics.median(v):.2f}", f"{percentile(v, 99):.2f}", f"{min(v):.2f}", len(v)]
        for name, v in samples.items()
    ]
    # Requests i of both paths ran back to back: their difference cancels slow drift on the machine.
    added: dict[str, list[float]] = {
        proxy: [p - d for p, d in zip(samples[proxy], samples["direct"], strict=True)]
        for proxy in ("tiermux", "nginx")
    }
    added_rows = [
        [f"{proxy} - direct", f"{statistics.median(v):+.2f}", f"{percentile(v, 99):+.2f}"]
        for proxy, v in added.items()
    ]
    delta_median = statistics.median(added["tiermux"])
    rss_max = max(rss.values(), default=0.0)
    checks = [
        [
            "TTFT added by tiermux (median of paired differences)",
            f"{delta_median:+.2f} ms",
            f"<= {TARGET_TTFT_DELTA_MS:g} ms",
            verdict(delta_median <= TARGET_TTFT_DELTA_MS),
        ],
        [
            "TTFT added by nginx, for reference",
            f"{statistics.median(added['nginx']):+.2f} ms",
            "",
            "",
        ],
        [
            "RSS per worker (max)",
            f"{rss_max:.1f} MB",
            f"<= {TARGET_RSS_MB:g} MB",
            verdict(rss_max <= TARGET_RSS_MB),
        ],
    ]
    lines = [
        "# Streaming: time to first token, direct vs through tiermux (and nginx)",
        "",
        f"Run on {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.",
        "",
        f"Command: `{command_line()}`",
        "",
        f"The mock answers after {args.ttft_ms:g} ms with its first token, then one token every "
        f"{args.itl_ms:g} ms ({STREAM_TOKENS} tokens,",
        "usage chunk included). One httpx client sends sequential streaming chat completions: to the mock,",
        "through tiermux and through nginx (the same nginx as in the throughput test), one after the",
        "other, the path that goes first rotating, after 10 warm-up requests each. TTFT is the time from",
        "sending the request to the first body byte; every stream is read to its end. nginx shows",
        "what one hop through a proxy costs on this machine when everything is idle.",
        "",
        "## TTFT (ms)",
        "",
        f"CPU during the measurement (% of one core): client {cpu['client']:.0f}%, mock {cpu['mock']:.0f}%, "
        f"tiermux {cpu['tiermux']:.0f}%, nginx {cpu['nginx']:.0f}%; other processes {cpu['other']:.0f}%, "
        f"steal {cpu['steal']:.0f}%.",
        "",
        *md_table(["path", "median", "p99", "min", "requests"], rows),
        "",
        "Added by the proxy, from paired requests (request i through the proxy minus request i direct):",
        "",
        *md_table(["", "median", "p99"], added_rows),
        "",
        "## Targets",
        "",
        *md_table(["what", "measured", "target", ""], checks),
        "",
        "## Machine",
        "",
        *_machine_lines(info),
        "",
    ]
    write_report(args.out or RESULTS_DIR / "stream.md", "\n".join(lines))
    return 0


# --------------------------------------------------------------------------------------------
# Mode 3: soak
# --------------------------------------------------------------------------------------------


def soak_growth(samples: Sequence[float]) -> float:
    """Growth over the second half: (largest sample of the second half - its first) / its first."""
    half = list(samples[len(samples) // 2 :])
    if len(half) < 2 or half[0] <= 0:
        return 0.0
    return (max(half) - half[0]) / half[0]


def run_soak(args: argparse.Namespace) -> int:
    info = machine_info()
    total = 0
    segments: list[tuple[int, float, float, float, dict[int, float]]] = []
    with Processes(keep_logs=args.keep_logs) as procs:
        mock = start_mock(procs, tokens=args.tokens)
        tiermux = start_tiermux(procs, mock.url, workers=args.workers)
        workers = children(tiermux.pid)
        start_rss = worker_rss(tiermux)
        print(f"soak: {args.soak:,} requests through tiermux {tiermux.url}, {args.segment:g} s segments")
        print(f"  start: RSS {', '.join(f'{v:.1f}' for v in start_rss.values())} MB", flush=True)
        watch = {"mock": [mock.pid], "tiermux": process_tree(tiermux.pid)}
        errors = 0
        while total < args.soak:
            result = run_wrk(
                "tiermux",
                tiermux.url,
                duration=args.segment,
                connections=args.connections,
                threads=args.threads,
                model="auto",
                watch=watch,
            )
            total += result.requests
            errors += result.non2xx + result.socket_errors
            rss = worker_rss(tiermux)
            segments.append((total, result.rps, result.p99_ms, result.noise, rss))
            print(
                f"  {total:>11,} requests  {result.rps:8,.0f} req/s  p99 {result.p99_ms:6.2f} ms  "
                f"RSS {', '.join(f'{v:.1f}' for v in rss.values())} MB",
                flush=True,
            )
        restarted = children(tiermux.pid) != workers
    per_worker: dict[int, list[float]] = {pid: [] for pid in workers}
    for *_, rss in segments:
        for pid in workers:
            per_worker[pid].append(rss.get(pid, 0.0))
    growth = {pid: soak_growth(values) for pid, values in per_worker.items()}
    worst = max(growth.values(), default=0.0)
    flat = worst <= TARGET_SOAK_GROWTH and not restarted
    rss_max = max((v for values in per_worker.values() for v in values), default=0.0)
    rows = [
        [
            i + 1,
            f"{n:,}",
            f"{rps:,.0f}",
            f"{p99:.2f}",
            f"{noise:.0f}%",
            *(f"{rss.get(pid, 0.0):.1f}" for pid in workers),
        ]
        for i, (n, rps, p99, noise, rss) in enumerate(segments)
    ]
    checks = [
        [
            "RSS growth over the second half (worst worker)",
            f"{worst:+.1%}",
            f"<= {TARGET_SOAK_GROWTH:.0%}",
            verdict(flat),
        ],
        [
            "RSS per worker (max)",
            f"{rss_max:.1f} MB",
            f"<= {TARGET_RSS_MB:g} MB",
            verdict(rss_max <= TARGET_RSS_MB),
        ],
        ["non-2xx + socket errors", str(errors), "0", verdict(errors == 0)],
    ]
    lines = [
        "# Soak: worker memory under sustained load",
        "",
        f"Run on {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.",
        "",
        f"Command: `{command_line()}`",
        "",
        f"{total:,} requests through tiermux ({args.workers} workers) in {len(segments)} wrk segments of "
        f"{args.segment:g} s",
        f"(`-t{args.threads} -c{args.connections}`, bench/wrk/chat.lua), VmRSS of each worker sampled after "
        "each segment.",
        "Flat means the largest sample of the second half is at most 5% above the first sample of the",
        "second half." + (" **A worker was restarted during the run.**" if restarted else ""),
        "",
        "## Machine",
        "",
        *_machine_lines(info),
        "",
        "## Targets",
        "",
        *md_table(["what", "measured", "target", ""], checks),
        "",
        "## Samples",
        "",
        f"RSS at start (MB): {', '.join(f'{v:.1f}' for v in start_rss.values())}",
        "",
        *md_table(
            [
                "segment",
                "requests so far",
                "req/s",
                "p99 ms",
                "other + steal CPU",
                *(f"worker {i + 1} RSS MB" for i in range(len(workers))),
            ],
            rows,
        ),
        "",
    ]
    write_report(args.out or RESULTS_DIR / "soak.md", "\n".join(lines))
    return 0


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description="tiermux against nginx and the bare backend: req/s, latency, TTFT, memory; "
        "and what routing (the classifier) costs against pass-through.",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="tiermux worker processes (default 2)")
    parser.add_argument("--tokens", type=int, default=16, help="words in the mock's answers (default 16)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 1 round of 2 s (--stream: 20 requests)"
    )
    parser.add_argument("--out", type=Path, help="report file (default: bench/results/<mode>.md)")
    parser.add_argument("--keep-logs", action="store_true", help="keep server logs and configs")
    parser.add_argument(
        "--one-session",
        action="store_true",
        help="start every process in this session (one scheduling group) instead of one session each",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for other load on the machine to stop (0: don't)",
    )
    parser.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.10,
        metavar="FRACTION",
        help="machine busy share counted as quiet (default 0.10)",
    )
    parser.add_argument(
        "--noisy-cpu",
        type=float,
        default=15.0,
        metavar="PERCENT",
        help="a run during which other processes took more CPU than this (%% of a core) is noisy",
    )
    parser.add_argument("--retries", type=int, default=2, help="times a noisy run is repeated (default 2)")
    routing = parser.add_argument_group("routing cost (--routing)")
    routing.add_argument(
        "--routing",
        action="store_true",
        help="req/s, latency and CPU per request of tiermux with the classifier on against tiermux "
        "passing through (classifier off), with nginx for reference; same rounds as the default mode",
    )
    stream = parser.add_argument_group("streaming (--stream)")
    stream.add_argument("--stream", action="store_true", help="measure streaming TTFT, direct vs tiermux")
    stream.add_argument("--requests", type=int, default=200, help="requests per path (default 200)")
    stream.add_argument("--ttft-ms", type=float, default=STREAM_TTFT_MS, help="mock's time to first token")
    stream.add_argument("--itl-ms", type=float, default=STREAM_ITL_MS, help="mock's time between tokens")
    budgets = parser.add_argument_group("budget cost (--budgets)")
    budgets.add_argument(
        "--budgets",
        action="store_true",
        help="req/s and CPU per request of tiermux enforcing a daily budget (shared memory, and Redis "
        "when redis-server is installed) against the same without one; and the cost of health tracking",
    )
    cache = parser.add_argument_group("response cache (--cache)")
    cache.add_argument(
        "--cache",
        action="store_true",
        help="req/s, latency and CPU per request of tiermux answering from its response cache against "
        "a Granian app answering with no upstream (the ceiling), with the cache off and nginx for context",
    )
    metrics = parser.add_argument_group("metrics cost (--metrics)")
    metrics.add_argument(
        "--metrics",
        action="store_true",
        help="req/s and CPU per request of tiermux recording Prometheus metrics (scraped during the "
        "run) against the same with metrics off, and with the access log on too; nginx for reference",
    )
    quality = parser.add_argument_group("quality safety net (--quality)")
    quality.add_argument(
        "--quality",
        action="store_true",
        help="req/s, latency and CPU per request of tiermux with the quality safety net on (5%% of "
        "answers sampled with the other settings default, which shed checks while a worker is busy; "
        "and 100%% re-asked of a second mock, none shed) against quality off, at saturation and "
        "(5%% only) at a fixed pace below it; nginx for reference",
    )
    dialects = parser.add_argument_group("dialect translation (--dialects)")
    dialects.add_argument(
        "--dialects",
        action="store_true",
        help="req/s, latency and CPU per request of tiermux translating Anthropic Messages requests "
        "for an OpenAI backend and chat completions for an Anthropic one, against same-dialect "
        "pass-through to the same backend; streamed too; nginx for reference",
    )
    soak = parser.add_argument_group("soak (--soak N)")
    soak.add_argument("--soak", type=int, metavar="N", help="drive N requests through tiermux, sampling RSS")
    soak.add_argument("--segment", type=float, default=10.0, help="seconds per soak segment (default 10)")
    return parser


def _grouping_line(args: argparse.Namespace) -> str:
    autogroup = "on" if autogroup_enabled() else "off"
    if args.one_session:
        return f"Processes: all in this session (--one-session); kernel autogroup scheduling {autogroup}."
    return f"Processes: one session each (as separate services); kernel autogroup scheduling {autogroup}."


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    modes = (
        args.routing,
        args.stream,
        args.soak,
        args.budgets,
        args.cache,
        args.metrics,
        args.quality,
        args.dialects,
    )
    if sum(bool(mode) for mode in modes) > 1:
        parser.error(
            "--routing, --budgets, --cache, --metrics, --quality, --dialects, --stream and --soak are "
            "separate modes: pick one"
        )
    if args.one_session:
        global ONE_SESSION
        ONE_SESSION = True
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    if not CHAT_LUA.exists():
        raise SystemExit(f"missing {CHAT_LUA}")
    try:
        if args.stream:
            return run_stream(args)
        if args.soak:
            return run_soak(args)
        if args.routing:
            return run_routing(args)
        if args.budgets:
            from bench.budgets import run_budgets

            return run_budgets(args)
        if args.cache:
            from bench.cache import run_cache

            return run_cache(args)
        if args.metrics:
            from bench.metrics import run_metrics

            return run_metrics(args)
        if args.quality:
            from bench.quality import run_quality

            return run_quality(args)
        if args.dialects:
            from bench.dialects import run_dialects

            return run_dialects(args)
        return run_throughput(args)
    except BenchError as exc:
        print(f"bench.throughput: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run the importable module, not this __main__ copy of it: the modes in other files
    # (bench/budgets.py, bench/cache.py) import bench.throughput, and two copies would hold two
    # BenchError classes (theirs escaping main's handler) and two ONE_SESSION flags.
    from bench.throughput import main as _main

    sys.exit(_main())
