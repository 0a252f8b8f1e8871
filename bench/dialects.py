"""What translating between API dialects costs: ``python -m bench.throughput --dialects``.

tiermux speaks two client dialects, OpenAI chat completions (``POST /v1/chat/completions``) and
Anthropic Messages (``POST /v1/messages``), to backends of either ``type``, ``openai`` or
``anthropic``. When the client's dialect is not the backend's, it translates the request on the way
in and the answer (document or event stream) on the way out. This mode measures what that costs,
in the harness of ``bench.throughput`` (interleaved wrk rounds, the order rotated each round,
quiet waits, noisy runs repeated, CPU accounting), against ONE tiermux instance with two backends,
each its own mock process:

* ``mock``: ``type: openai``, a mock vLLM (``--flavor vllm``), in tier ``local``, reached with the
  model name ``local-model`` (an alias of ``local``);
* ``claude``: ``type: anthropic``, a mock Anthropic API (``--flavor anthropic``, which checks
  ``x-api-key`` and requires ``anthropic-version``), in tier ``cloud``, reached with
  ``claude-model``; tiermux reads its key from ``api_key_file``.

The classifier is off (an alias goes straight to its tier, unclassified) and the response cache
is off (wrk sends one fixed deterministic body), so that the targets differ only in the dialects.
The targets, each a (path, body, model) against that one instance, and nginx:

* ``openai->openai``: chat completion (``bench/wrk/chat.lua``) to ``mock``: same-dialect pass-through;
* ``anthropic->anthropic``: Messages request (``bench/wrk/messages.lua``, the same system prompt,
  user message and ``max_tokens``) to ``claude``: same-dialect pass-through;
* ``anthropic->openai``: the Messages request to ``mock``: translated both ways;
* ``openai->anthropic``: the chat completion to ``claude``: translated both ways;
* the same four with ``"stream": true`` (the answer an SSE stream, read to its end by wrk);
* ``nginx``: the chat completion straight to the vLLM mock through nginx, the usual reference.

Before the rounds, each target gets one request with the exact body wrk sends, and the run stops
with a :class:`BenchError` unless it answers 200 from the expected backend (``x-tiermux-backend``)
in the client's dialect: a ``message`` for ``/v1/messages``, a ``chat.completion`` for chat (for
streams: Messages events from ``message_start`` to ``message_stop``, or ``chat.completion.chunk``
events ending in ``[DONE]``). A translated target that answered in the backend's dialect, or from
the other backend, would make the comparison meaningless.

Target: translated requests keep at least 80% of the req/s of same-dialect pass-through to the
same backend (``anthropic->openai / openai->openai`` and ``openai->anthropic /
anthropic->anthropic`` >= 0.80). The two backends are different mock processes (the Anthropic
flavour renders other documents), so only pairs with the same backend isolate translation; the
pairs with the same client and each target against nginx are there for context. What translation
costs is read best from the proxy's CPU per request against the pass-through of the same backend.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import statistics
import sys
from dataclasses import dataclass

from bench.cache import _SYSTEM, _USER
from bench.quality import start_instance
from bench.throughput import (
    BENCH_DIR,
    CHAT_PATH,
    MOCK_MODEL,
    RESULTS_DIR,
    BenchError,
    Processes,
    Service,
    WrkLoad,
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
    run_rounds,
    runs_section,
    start_mock,
    start_nginx,
    summary_rows,
    tiermux_groups,
    verdict,
    write_report,
    wrk_runner,
)

__all__ = ["run_dialects"]

TARGET_RATIO = 0.80  # req/s of translated requests, against same-dialect pass-through to the same backend

MESSAGES_PATH = "/v1/messages"
MESSAGES_LUA = BENCH_DIR / "wrk" / "messages.lua"
ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_MODEL = "claude-bench"
# The key the Anthropic mock accepts and tiermux sends (from api_key_file); the client's own key
# (wrk's, the probe's) is another one, so that a key forwarded from the client would be refused.
ANTHROPIC_KEY = "bench-anthropic-key"
BACKEND = {"openai": "mock", "anthropic": "claude"}
ALIAS = {"openai": "local-model", "anthropic": "claude-model"}
PATH = {"openai": CHAT_PATH, "anthropic": MESSAGES_PATH}


@dataclass(frozen=True)
class Target:
    """One (path, body, model) against the tiermux instance: the client's dialect, the dialect of
    the backend its model name leads to, and whether the answer is streamed."""

    client: str
    backend: str
    stream: bool = False

    @property
    def name(self) -> str:
        return f"{self.client}->{self.backend}" + (" stream" if self.stream else "")

    @property
    def translated(self) -> bool:
        return self.client != self.backend

    @property
    def pass_through(self) -> Target:
        """The same-dialect target with the same backend: what this one is compared with."""
        return Target(self.backend, self.backend, self.stream)

    @property
    def load(self) -> WrkLoad:
        args = ("stream",) if self.stream else ()
        if self.client == "anthropic":
            return WrkLoad(MESSAGES_PATH, MESSAGES_LUA, args)
        return WrkLoad(args=args)

    @property
    def label(self) -> str:
        how = "translated" if self.translated else "pass-through"
        streamed = ", streamed" if self.stream else ""
        return f"{self.name} ({how}{streamed})"


TARGETS = [
    Target(client, backend, stream)
    for stream in (False, True)
    for client, backend in (
        ("openai", "openai"),
        ("anthropic", "anthropic"),
        ("anthropic", "openai"),
        ("openai", "anthropic"),
    )
]
BY_NAME = {t.name: t for t in TARGETS}
NGINX_LABEL = "nginx (1 worker), chat completion to the vLLM mock"


def dialects_config(openai_url: str, anthropic_url: str, key_file: str) -> str:
    """One instance, both backend types: ``mock`` (openai) in ``local``, ``claude`` (anthropic) in
    ``cloud``; an alias per tier, the classifier off (an alias goes to its tier unclassified) and
    the response cache off, so that only the dialects differ between targets."""
    lines = [
        "# written by bench/dialects.py",
        "backends:",
        f"  - name: {BACKEND['openai']}",
        "    type: openai",
        f"    base_url: {openai_url}/v1",
        f"    model: {MOCK_MODEL}",
        "    max_connections: 256",
        f"  - name: {BACKEND['anthropic']}",
        "    type: anthropic",
        f"    base_url: {anthropic_url}/v1",
        f"    model: {ANTHROPIC_MODEL}",
        f"    api_key_file: '{key_file}'",
        f"    anthropic_version: '{ANTHROPIC_VERSION}'",
        "    max_connections: 256",
        "tiers:",
        f"  local: [{BACKEND['openai']}]",
        f"  cloud: [{BACKEND['anthropic']}]",
        "routing:",
        "  default_tier: local",
        "  aliases:",
        f"    {ALIAS['openai']}: local",
        f"    {ALIAS['anthropic']}: cloud",
        "  classifier:",
        "    enabled: false",
        "cache:",
        "  enabled: false",
    ]
    return "\n".join([*lines, ""])


def request_body(client: str, model: str, stream: bool = False) -> bytes:
    """The bytes wrk posts for ``client``'s dialect (``bench/wrk/chat.lua`` or ``messages.lua``):
    one system prompt and one user message, ``max_tokens`` 64, ``temperature`` 0."""
    request: dict[str, object] = {"model": model}
    if client == "anthropic":
        request |= {"system": _SYSTEM, "messages": [{"role": "user", "content": _USER}]}
    else:
        request["messages"] = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _USER}]
    request |= {"max_tokens": 64, "temperature": 0}
    if stream:
        request["stream"] = True
    return json.dumps(request, separators=(",", ":")).encode()


def request_headers(client: str) -> dict[str, str]:
    """The headers wrk sends (the client's key is not the backend's: tiermux uses its own)."""
    if client == "anthropic":
        return {
            "content-type": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
            "x-api-key": "bench-key",
        }
    return {"content-type": "application/json", "authorization": "Bearer bench-key"}


@dataclass
class Probe:
    """What one request with wrk's body got: status, headers, the answer's size and its text."""

    status: int
    headers: dict[str, str]
    size: int
    text: str = ""


def post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10.0)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"{url}: POST {path} failed: {exc!r}") from exc
    finally:
        conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def sse_events(data: bytes) -> list[tuple[str, str]]:
    """(event, data) of each server-sent event; ``event`` is empty where none was named."""
    events = []
    for block in data.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, payload = "", []
        for line in block.decode(errors="replace").split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                payload.append(line[5:].strip())
        if name or payload:
            events.append((name, "\n".join(payload)))
    return events


def answer_text(client: str, stream: bool, data: bytes) -> str:
    """The answer's text, read in ``client``'s dialect; raises ``ValueError`` when the answer is
    not a document (or stream) of that dialect."""
    if not stream:
        document = json.loads(data)
        if client == "anthropic":
            if document.get("type") != "message" or document.get("role") != "assistant":
                raise ValueError("not an Anthropic message")
            return "".join(b.get("text", "") for b in document["content"] if b.get("type") == "text")
        if document.get("object") != "chat.completion":
            raise ValueError("not a chat.completion")
        return str(document["choices"][0]["message"].get("content") or "")
    events = sse_events(data)
    if client == "anthropic":
        names = [name for name, _ in events if name != "ping"]
        if not names or names[0] != "message_start" or names[-1] != "message_stop":
            raise ValueError(f"not an Anthropic message stream (events {names[:3]} ... {names[-2:]})")
        deltas = [json.loads(payload)["delta"] for name, payload in events if name == "content_block_delta"]
        return "".join(d.get("text", "") for d in deltas)
    payloads = [payload for _, payload in events]
    if not payloads or payloads[-1] != "[DONE]":
        raise ValueError("not a chat completion stream ending in [DONE]")
    chunks = [json.loads(p) for p in payloads[:-1]]
    if not chunks or any(c.get("object") != "chat.completion.chunk" for c in chunks):
        raise ValueError("not a stream of chat.completion.chunk")
    return "".join(str(ch["delta"].get("content") or "") for c in chunks for ch in c.get("choices", []))


def probe(url: str, target: Target) -> Probe:
    """One request with wrk's body: 200, from the right backend, in the client's dialect."""
    body = request_body(target.client, ALIAS[target.backend], target.stream)
    status, headers, data = post(url, PATH[target.client], body, request_headers(target.client))
    if status != 200:
        raise BenchError(f"{target.name}: HTTP {status}: {data[:300]!r}")
    backend = headers.get("x-tiermux-backend")
    if backend != BACKEND[target.backend]:
        raise BenchError(
            f"{target.name}: answered by backend {backend!r} (x-tiermux-backend), expected "
            f"{BACKEND[target.backend]!r}: the model name did not lead to the backend under test"
        )
    try:
        text = answer_text(target.client, target.stream, data)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise BenchError(
            f"{target.name}: the answer is not in the client's dialect ({target.client}"
            f"{', streamed' if target.stream else ''}): {exc}: {data[:300]!r}"
        ) from exc
    if not text:
        raise BenchError(f"{target.name}: the answer has no text: {data[:300]!r}")
    return Probe(status, headers, len(data), text)


def probe_nginx(nginx: Service) -> Probe:
    """The chat completion through nginx, with the vLLM mock's model name."""
    status, headers, data = post(
        nginx.url, CHAT_PATH, request_body("openai", MOCK_MODEL), request_headers("openai")
    )
    if status != 200:
        raise BenchError(f"nginx: HTTP {status}: {data[:300]!r}")
    try:
        text = answer_text("openai", False, data)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise BenchError(f"nginx: not a chat completion: {exc}: {data[:300]!r}") from exc
    return Probe(status, headers, len(data), text)


def run_dialects(args: argparse.Namespace) -> int:
    info = machine_info()
    with Processes(keep_logs=args.keep_logs) as procs:
        vllm = start_mock(procs, tokens=args.tokens)
        anthropic = start_mock(
            procs,
            flavor="anthropic",
            model=ANTHROPIC_MODEL,
            tokens=args.tokens,
            name="mock-anthropic",
            api_key=ANTHROPIC_KEY,
        )
        nginx = start_nginx(procs, vllm.url)
        key_file = procs.workdir / "anthropic.key"
        key_file.write_text(ANTHROPIC_KEY + "\n")
        key_file.chmod(0o600)
        tiermux = start_instance(
            procs, "tiermux", dialects_config(vllm.url, anthropic.url, str(key_file)), args.workers
        )
        probes = {"nginx": probe_nginx(nginx)} | {t.name: probe(tiermux.url, t) for t in TARGETS}
        workers = children(tiermux.pid)
        print(
            f"mock {vllm.url}  mock-anthropic {anthropic.url}  nginx {nginx.url}  "
            f"tiermux {tiermux.url} (workers {workers})",
            flush=True,
        )
        names = ("nginx", *(t.name for t in TARGETS))
        urls = {"nginx": nginx.url} | {t.name: tiermux.url for t in TARGETS}
        models = {"nginx": MOCK_MODEL} | {t.name: ALIAS[t.backend] for t in TARGETS}
        groups = tiermux_groups(tiermux, workers)
        proxies = {"nginx": {"nginx": process_tree(nginx.pid)}} | {t.name: groups for t in TARGETS}
        one = wrk_runner(
            args,
            vllm,
            urls,
            models,
            proxies,
            {t.name: tiermux for t in TARGETS},
            loads={t.name: t.load for t in TARGETS},
            backends={t.name: anthropic for t in TARGETS if t.backend == "anthropic"},
        )
        rounds = run_rounds(args, names, one)
        if children(tiermux.pid) != workers:
            print(f"note: tiermux workers changed during the run: {workers} -> {children(tiermux.pid)}")
    report = dialects_report(args, info, names, rounds, probes)
    write_report(args.out or RESULTS_DIR / "dialects.md", report)
    return 0


def _probe_line(label: str, found: Probe) -> str:
    backend = found.headers.get("x-tiermux-backend")
    source = f"backend `{backend}`" if backend else "the vLLM mock"
    kind = found.headers.get("content-type", "?").split(";")[0]
    words = len(found.text.split())
    return (
        f"- {label}: HTTP {found.status} from {source}, `{kind}`, {found.size:,} bytes, {words} words of text"
    )


def _cost_rows(
    cpu_us: dict[str, float | None], mock_us: dict[str, float], label: dict[str, str]
) -> list[list[object]]:
    rows: list[list[object]] = []
    for t in TARGETS:
        us, base = cpu_us[t.name], cpu_us[t.pass_through.name]
        if us is None or base is None:
            continue
        rows.append(
            [
                label[t.name],
                f"`{BACKEND[t.backend]}` ({t.backend})",
                f"{us:.0f}",
                f"{base:.0f}",
                f"{us - base:+.0f}" if t.translated else "-",
                f"{ratio(us - base, base):+.1%}" if t.translated else "-",
                f"{mock_us[t.name]:.0f}",
            ]
        )
    return rows


def dialects_report(
    args: argparse.Namespace,
    info: dict[str, str],
    names: tuple[str, ...],
    rounds: list[list[WrkResult]],
    probes: dict[str, Probe],
) -> str:
    by_target = group_by_target(rounds, names)
    label = {"nginx": NGINX_LABEL} | {t.name: t.label for t in TARGETS}
    cpu_us = {n: median_proxy_cpu_us(by_target[n]) for n in names}
    mock_us = {n: statistics.median(r.cpu_us["mock"] for r in by_target[n]) for n in names}
    rows = summary_rows(names, label, by_target)
    translated = [t for t in TARGETS if t.translated]
    target_pairs = [(t.name, t.pass_through.name) for t in translated]
    # The same client to either backend, and the two pass-throughs: these also compare the mocks.
    context_pairs = [(t.name, Target(t.client, t.client, t.stream).name) for t in translated] + [
        (t.name, Target("openai", "openai", t.stream).name)
        for t in TARGETS
        if t.client == t.backend == "anthropic"
    ]
    nginx_pairs = [(t.name, "nginx") for t in TARGETS if not t.stream]
    ratios, ratio_rows = pair_ratios(by_target, [*target_pairs, *context_pairs, *nginx_pairs])
    tiermux_runs = [r for t in TARGETS for r in by_target[t.name]]
    errors = sum(r.non2xx + r.socket_errors for r in tiermux_runs)
    checks: list[list[object]] = [
        [
            f"{a} / {b} (median req/s)",
            f"{ratios[(a, b)]:.2f}",
            f">= {TARGET_RATIO:.2f}",
            verdict(ratios[(a, b)] >= TARGET_RATIO),
        ]
        for a, b in target_pairs
    ]
    checks.append(["non-2xx + socket errors (tiermux targets)", str(errors), "0", verdict(errors == 0)])
    cost_lines = []
    for t in translated:
        us, base = cpu_us[t.name], cpu_us[t.pass_through.name]
        if us is not None and base is not None:
            streamed = "streamed " if t.stream else ""
            cost_lines.append(
                f"- {streamed}{t.client} client to the {t.backend} backend: **{us - base:+.0f} µs of proxy "
                f"CPU per request** ({t.name} {us:.0f} µs against {t.pass_through.name} {base:.0f} µs, "
                f"{ratio(us - base, base):+.1%})"
            )
    headline = ", ".join(
        f"**{a} / {b} = {ratios[(a, b)]:.2f}**" for a, b in target_pairs if "stream" not in a
    )
    messages_load = BY_NAME["anthropic->anthropic"].load
    lines = [
        "# Dialect translation: Anthropic <-> OpenAI through tiermux vs same-dialect pass-through",
        "",
        f"Run on {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Load: `{load_line(args)}` (chat completions) and",
        f"`{load_line(args, messages_load)}` (Messages requests);",
        f"MODEL is `{ALIAS['openai']}` or `{ALIAS['anthropic']}` for tiermux, the backend's model name for "
        "nginx, followed by",
        f"`stream` for the streamed targets. {args.rounds} round(s), targets interleaved and the order "
        "rotated each round,",
        "after a warm-up run per target. The backends are `python -m bench.mock_backend --flavor vllm`",
        f"and `--flavor anthropic`, each answering {args.tokens} tokens with no added latency; wrk, the "
        "mocks and the",
        "proxies all share this machine.",
        "",
        f"One tiermux instance ({args.workers} workers) has both backends, each its own mock process:",
        "",
        f"- `{BACKEND['openai']}`: `type: openai`, the vLLM mock, in tier `local`, reached with the",
        f"  model name `{ALIAS['openai']}` (an alias of `local`);",
        f"- `{BACKEND['anthropic']}`: `type: anthropic`, the Anthropic mock (it checks `x-api-key` and",
        f"  requires `anthropic-version`), in tier `cloud`, reached with `{ALIAS['anthropic']}`;",
        "  tiermux reads its key from `api_key_file` (the client sends another one).",
        "",
        "The classifier is off (an alias goes to its tier unclassified) and the response cache is off, so",
        "that the targets differ only in the dialects. Each target is a (path, body, model) against that",
        "instance:",
        "",
        "- **openai->openai**: chat completion (`bench/wrk/chat.lua`) to `mock`: same-dialect pass-through;",
        "- **anthropic->anthropic**: Messages request (`bench/wrk/messages.lua`: the same system prompt,",
        "  as top-level `system`, the same user message and `max_tokens`, with",
        f"  `anthropic-version: {ANTHROPIC_VERSION}`) to `claude`: same-dialect pass-through;",
        "- **anthropic->openai**: the Messages request to `mock`: the request is translated to a chat",
        "  completion and the answer back to a Messages document;",
        "- **openai->anthropic**: the chat completion to `claude`: translated the other way;",
        '- the same four with `"stream": true` (**... stream**): the answer is an SSE stream, translated',
        "  event by event where the dialects differ, and read to its end by wrk;",
        "- **nginx**: the chat completion straight to the vLLM mock through nginx, for reference.",
        "",
        "Only the pairs with the same backend isolate translation: the two backends are different mock",
        "processes rendering different documents, so pairs with the same client also compare the mocks.",
        "Before the rounds, one request per target with the exact body wrk sends checked that it is",
        "answered 200 by the expected backend (`x-tiermux-backend`) in the client's dialect (a `message`",
        "for `/v1/messages`, a `chat.completion` for chat; for streams, Messages events from",
        "`message_start` to `message_stop`, or `chat.completion.chunk` events ending in `[DONE]`):",
        "",
        *(_probe_line(label[n], probes[n]) for n in names),
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
        f"{headline} (median req/s against median req/s)",
        "",
        *md_table(
            ["ratio of req/s", "median", "per round (targets of one round ran back to back)"], ratio_rows
        ),
        "",
        "## What translation costs",
        "",
        "Proxy CPU per request (median over rounds, the tiermux processes together) of each target",
        "against the same-dialect pass-through to the same backend; the backend's own CPU per request",
        "(the mock's) for context:",
        "",
        *md_table(
            [
                "target",
                "backend",
                "proxy CPU µs/request",
                "pass-through to it µs",
                "difference µs",
                "relative",
                "mock CPU µs/request",
            ],
            _cost_rows(cpu_us, mock_us, label),
        ),
        "",
        *cost_lines,
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
    sys.exit("run it as: python -m bench.throughput --dialects")
