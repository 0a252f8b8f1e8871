"""``make run``: the bundled demo, with no GPU and no API key.

Starts a mock vLLM server (port 8001, model ``qwen-9b``), a mock cloud API (port 8002, model
``big-model``, key ``demo-key``) and a mock Anthropic API (port 8003, model ``claude-mock``, key
``demo-key``), then tiermux on the bundled demo config (port 8080). Ctrl-C or SIGTERM stops them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from importlib.resources import files

MOCKS = [
    ["--flavor", "vllm", "--port", "8001", "--model", "qwen-9b", "--lora", "sql-lora,summary-lora"],
    ["--flavor", "cloud", "--port", "8002", "--model", "big-model", "--api-key", "demo-key"],
    ["--flavor", "anthropic", "--port", "8003", "--model", "claude-mock", "--api-key", "demo-key"],
]
READY_LINE = "mock-backend listening on"
TRY = """
tiermux demo: try
  curl -s http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "auto", "messages": [{"role": "user", "content": "Hello!"}]}'
  curl -s http://127.0.0.1:8080/v1/messages -H 'Content-Type: application/json' \\
    -d '{"model": "auto", "max_tokens": 256, "messages": [{"role": "user", "content": "Hello!"}]}'
"""


def _start_mock(args: list[str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.mock_backend", "--host", "127.0.0.1", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if READY_LINE in line:
            print(line.strip(), flush=True)
            return process
        if process.poll() is not None:
            break
    process.kill()
    raise SystemExit(f"mock backend {' '.join(args)} did not start (is the port free?)")


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a service manager, `kill`) cleans up like Ctrl-C


def main() -> int:
    config = os.environ.get("TIERMUX_DEMO_CONFIG") or str(files("tiermux") / "examples" / "demo.yaml")
    processes: list[subprocess.Popen[str]] = []
    signal.signal(signal.SIGTERM, _stop)
    try:
        for args in MOCKS:
            processes.append(_start_mock(args))
        print(TRY, flush=True)
        server = subprocess.Popen([sys.executable, "-m", "tiermux", "serve", "--config", config])
        processes.append(server)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    raise SystemExit(main())
