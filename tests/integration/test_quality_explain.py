"""``tiermux explain --live`` against a real ``tiermux serve``: it routes as that serve does now,
showing a category its quality safety net has promoted."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from bench.mock_backend import BackendHandle
from tests.support import ServerProcess, standard_tree, write_config

PROMPT = "Extract the invoice number and the total from this email: Invoice INV-2231, total due 42.50 EUR."


def explain(config: Path, port: int) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tiermux",
            "explain",
            PROMPT,
            "--config",
            str(config),
            "--live",
            "--port",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_explain_live_shows_a_promoted_category(
    vllm: BackendHandle,
    cloud: BackendHandle,
    cloud_key_file: Path,
    tmp_path: Path,
    server_factory: Callable[..., ServerProcess],
) -> None:
    tree = standard_tree(vllm.url, cloud.url, cloud_key_file, classified=True)
    tree["routing"]["allow_header_override"] = True
    tree["quality"] = {"enabled": True, "reference": "frontier", "sample_rate": 0.0, "min_samples": 3}
    config = write_config(tmp_path, tree)
    server = server_factory(config, workers=2)
    before = explain(config, server.port)
    assert "category:    extraction" in before and "is on its own tier" in before
    with httpx.Client(base_url=server.url, timeout=10) as client:
        body = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}]}
        for _ in range(3):
            answer = client.post(
                "/v1/chat/completions", json=body, headers={"x-tiermux-category": "extraction"}
            )
            request_id = answer.headers["x-tiermux-request-id"]
            assert (
                client.post("/v1/feedback", json={"request_id": request_id, "score": 0.0}).status_code == 200
            )
    after = explain(config, server.port)
    assert "quality_promoted" in after and "extraction is promoted from cheap" in after
