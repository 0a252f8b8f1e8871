"""Failover under load: mock backends killed and restarted behind a real ``tiermux serve`` with 2
workers while 32 clients keep sending chat completions.

One tier, ``cheap: [local-a, local-b, cloud]``: two local backends of the same price and a pricier
cloud one. Every answer is recorded with when it was sent and received and which backend served it
(``x-tiermux-backend``). The requirement proven here:

- no client sees an error while any backend of the chain is healthy (a request whose backend dies
  before the first byte reaches the client moves to the next healthy one);
- backends of equal price share the load (least in-flight); the pricier one is used only when the
  cheaper ones are down, never alternated with them;
- a backend that comes back serves again within about one probe interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from bench.mock_backend import BackendHandle, run_in_thread
from tests.support import CLOUD_KEY, CLOUD_MODEL, VLLM_MODEL, ServerProcess, backend_entry, write_key_file

pytestmark = [pytest.mark.granian, pytest.mark.slow]

PROBE_INTERVAL = 1.0  # seconds
# The prober wakes every min(probe_interval, 1) / 2 seconds to take a due turn, and the probe and the
# first request after it take a moment on a busy 2-core machine: "within one probe interval", with
# that much slack.
RECOVERY_LIMIT = PROBE_INTERVAL + 1.5
CONCURRENCY = 32
LATENCY_MS = 10
LOCALS = ("local-a", "local-b")
BODY = json.dumps(
    {"model": "auto", "max_tokens": 8, "messages": [{"role": "user", "content": "hello"}]}
).encode()


@dataclass(frozen=True)
class Answer:
    sent: float  # time.monotonic()
    received: float
    status: int  # 0: no HTTP answer at all (the connection failed)
    backend: str  # x-tiermux-backend, "" when absent
    error: str = ""


class Load:
    """``CONCURRENCY`` loops, each sending one request after the other on a kept-alive connection
    of its own, until stopped; every answer (or transport failure) is recorded.

    Raw HTTP/1.1 on asyncio streams: an httpx client on this 2-core machine manages about a tenth
    of the requests and adds its own latency spikes, which would blur the phases.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[Answer] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: tiermux\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
        )

    async def __aenter__(self) -> Load:
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(CONCURRENCY)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _loop(self) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.write(self._request)
                    status, headers, payload = await asyncio.wait_for(_read_response(reader), 15.0)
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                    self.answers.append(Answer(sent, time.monotonic(), 0, "", repr(exc)))
                    if writer is not None:
                        writer.transport.abort()
                        writer = None
                    continue
                backend = headers.get("x-tiermux-backend", "")
                error = "" if status == 200 else payload[:300].decode(errors="replace")
                self.answers.append(Answer(sent, time.monotonic(), status, backend, error))
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    await writer.wait_closed()
                    writer = None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer: status, headers (lower-case names), body (Content-Length or chunked)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() != "chunked":
        raise ValueError(f"an answer without a length: {head!r}")
    chunks = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
    await reader.readuntil(b"\r\n")  # the end of the (empty) trailer section
    return status, headers, b"".join(chunks)


def _served(answers: Iterable[Answer]) -> Counter[str]:
    return Counter(a.backend for a in answers)


def _between(answers: list[Answer], sent_after: float, received_before: float) -> list[Answer]:
    """The answers to requests sent and answered entirely within a phase."""
    return [a for a in answers if a.sent >= sent_after and a.received < received_before]


def _first_served_by(answers: list[Answer], names: Iterable[str], after: float) -> float | None:
    """When the first answer from one of ``names`` came in after ``after``."""
    wanted = set(names)
    times = [a.received for a in answers if a.backend in wanted and a.received >= after]
    return min(times) if times else None


def _errors(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if a.status != 200]


def _describe_errors(answers: list[Answer], origin: float) -> str:
    bad = _errors(answers)
    if not bad:
        return "none"
    lines = [
        f"  sent +{a.sent - origin:.3f}s answered +{a.received - origin:.3f}s: "
        f"{a.status} via {a.backend or '-'} {a.error}"
        for a in bad[:20]
    ]
    return f"{len(bad)} of {len(answers)}, {dict(Counter(a.status for a in bad))}:\n" + "\n".join(lines)


def _timeline(marks: dict[str, float]) -> str:
    return ", ".join(f"{name} +{at - marks['start']:.2f}s" for name, at in marks.items() if name != "start")


def _backend_status(server: ServerProcess) -> dict[str, dict[str, Any]]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        rows = client.get("/v1/backends").json()["data"]
    return {row["name"]: row for row in rows}


def _start_mocks() -> dict[str, BackendHandle]:
    """``local-a`` and ``local-b`` (vLLM flavour) and ``cloud`` (with a key), each on a free port."""
    mocks: dict[str, BackendHandle] = {}
    try:
        for name in LOCALS:
            mocks[name] = _local()
        mocks["cloud"] = run_in_thread(
            flavor="cloud", model=CLOUD_MODEL, api_key=CLOUD_KEY, latency_ms=LATENCY_MS
        )
    except BaseException:
        for mock in mocks.values():
            mock.stop()
        raise
    return mocks


def _local(port: int = 0) -> BackendHandle:
    return run_in_thread(flavor="vllm", model=VLLM_MODEL, latency_ms=LATENCY_MS, port=port)


def _tree(mocks: dict[str, BackendHandle], key_file: Path) -> dict[str, Any]:
    cheap = {"input": 0.1, "output": 0.1}
    return {
        "backends": [
            backend_entry("local-a", mocks["local-a"].url, VLLM_MODEL, price=cheap),
            backend_entry("local-b", mocks["local-b"].url, VLLM_MODEL, price=cheap),
            backend_entry(
                "cloud",
                mocks["cloud"].url,
                CLOUD_MODEL,
                api_key_file=str(key_file),
                price={"input": 3.0, "output": 15.0},
            ),
        ],
        "tiers": {"cheap": ["local-a", "local-b", "cloud"]},
        "routing": {"classifier": {"enabled": False}},
        "health": {"failure_threshold": 2, "probe_interval": PROBE_INTERVAL},
    }


def _assert_balanced(served: Counter[str], phase: str) -> None:
    """Both locals took a fair share of the phase's requests, and the cloud none."""
    total = sum(served.values())
    assert total >= 200, f"{phase}: too few requests to judge ({served})"
    assert served["cloud"] == 0, f"{phase}: the pricier backend was used while both locals were up: {served}"
    for name in LOCALS:
        assert served[name] >= 0.2 * total, f"{phase}: {name} got too little of the load: {served}"


def test_a_local_killed_and_restarted_under_load(
    tmp_path: Path,
    config_file: Callable[[dict[str, Any]], Path],
    server_factory: Callable[..., ServerProcess],
) -> None:
    mocks = _start_mocks()
    try:
        server = server_factory(config_file(_tree(mocks, write_key_file(tmp_path, CLOUD_KEY))), workers=2)
        port_a = mocks["local-a"].port
        marks: dict[str, float] = {}

        async def drive() -> list[Answer]:
            async with Load(server.port) as load:
                marks["start"] = time.monotonic()
                await asyncio.sleep(2.5)
                marks["kill"] = time.monotonic()
                await asyncio.to_thread(mocks["local-a"].stop)
                marks["killed"] = time.monotonic()
                await asyncio.sleep(2.5)
                marks["restart"] = time.monotonic()
                mocks["local-a"] = await asyncio.to_thread(_local, port_a)
                marks["restarted"] = time.monotonic()
                await asyncio.sleep(3.0)
                marks["end"] = time.monotonic()
            return load.answers

        answers = asyncio.run(drive())
        backends = _backend_status(server)
        t0 = marks["start"]

        both_up = _served(a for a in answers if a.received < marks["kill"])
        a_down = _served(_between(answers, marks["killed"], marks["restart"]))
        back = _first_served_by(answers, ["local-a"], marks["restarted"])
        recovered = back - marks["restarted"] if back is not None else None
        settled = _served(a for a in answers if back is not None and a.sent >= back + 0.5)
        print(
            f"\n{len(answers)} requests in {marks['end'] - t0:.1f}s ({_timeline(marks)})"
            f"\nerrors: {_describe_errors(answers, t0)}"
            f"\nboth up: {dict(both_up)}\nlocal-a down: {dict(a_down)}"
            f"\nlocal-a back after {recovered}s; then: {dict(settled)}"
            f"\nall: {dict(_served(answers))}\nbackends: {backends}"
        )

        assert not _errors(answers), f"client-visible errors: {_describe_errors(answers, t0)}"
        _assert_balanced(both_up, "both locals up")
        assert a_down and set(a_down) == {"local-b"}, f"while local-a was down: {a_down}"
        # Never the cloud in this run: one local was healthy the whole time.
        assert _served(answers)["cloud"] == 0, _served(answers)
        assert recovered is not None, "local-a never served again after its restart"
        assert recovered <= RECOVERY_LIMIT, f"local-a served again only {recovered:.2f}s after its restart"
        assert sum(settled.values()) >= 100, settled
        _assert_balanced(settled, "local-a back")

        assert backends["local-a"]["status"] == "up", backends
        assert backends["local-a"]["consecutive_failures"] == 0, backends
        assert backends["local-b"]["status"] == "up", backends
        assert backends["local-b"]["errors"] == 0, backends
        assert backends["cloud"]["requests"] == 0, backends
    finally:
        for mock in mocks.values():
            mock.stop()


def test_both_locals_killed_and_restarted_under_load(
    tmp_path: Path,
    config_file: Callable[[dict[str, Any]], Path],
    server_factory: Callable[..., ServerProcess],
) -> None:
    mocks = _start_mocks()
    try:
        server = server_factory(config_file(_tree(mocks, write_key_file(tmp_path, CLOUD_KEY))), workers=2)
        ports = {name: mocks[name].port for name in LOCALS}
        marks: dict[str, float] = {}

        def kill_locals() -> None:
            for name in LOCALS:
                mocks[name].stop()

        def restart_locals() -> None:
            for name in LOCALS:
                mocks[name] = _local(ports[name])

        async def drive() -> list[Answer]:
            async with Load(server.port) as load:
                marks["start"] = time.monotonic()
                await asyncio.sleep(1.5)
                marks["kill"] = time.monotonic()
                await asyncio.to_thread(kill_locals)
                marks["killed"] = time.monotonic()
                await asyncio.sleep(2.0)
                marks["restart"] = time.monotonic()
                await asyncio.to_thread(restart_locals)
                marks["restarted"] = time.monotonic()
                await asyncio.sleep(3.0)
                marks["end"] = time.monotonic()
            return load.answers

        answers = asyncio.run(drive())
        backends = _backend_status(server)
        t0 = marks["start"]

        both_up = _served(a for a in answers if a.received < marks["kill"])
        locals_down = _served(_between(answers, marks["killed"], marks["restart"]))
        back = _first_served_by(answers, LOCALS, marks["restarted"])
        recovered = back - marks["restarted"] if back is not None else None
        deadline = marks["restarted"] + RECOVERY_LIMIT
        late = _served(a for a in answers if a.sent >= deadline)
        print(
            f"\n{len(answers)} requests in {marks['end'] - t0:.1f}s ({_timeline(marks)})"
            f"\nerrors: {_describe_errors(answers, t0)}"
            f"\nboth up: {dict(both_up)}\nboth locals down: {dict(locals_down)}"
            f"\na local back after {recovered}s; sent after the recovery limit: {dict(late)}"
            f"\nall: {dict(_served(answers))}\nbackends: {backends}"
        )

        assert not _errors(answers), f"client-visible errors: {_describe_errors(answers, t0)}"
        _assert_balanced(both_up, "both locals up")
        assert locals_down and set(locals_down) == {"cloud"}, f"while both locals were down: {locals_down}"
        assert recovered is not None, "no local served again after the restart"
        assert recovered <= RECOVERY_LIMIT, f"the locals served again only {recovered:.2f}s after restart"
        # Past the recovery limit both locals are back: they share the load, the cloud gets none.
        assert late["cloud"] == 0, f"the cloud still took requests sent after the recovery limit: {late}"
        assert all(late[name] > 0 for name in LOCALS), late

        assert all(backends[name]["status"] == "up" for name in LOCALS), backends
        assert backends["cloud"]["errors"] == 0, backends
    finally:
        for mock in mocks.values():
            mock.stop()
