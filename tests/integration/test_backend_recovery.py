"""A backend that dies and comes back: no client sees an error, and it is used again once it
answers a probe."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.mock_backend import BackendHandle, run_in_thread
from tests.support import CLOUD_MODEL, ProxyClient, backend_entry, wait_until

from tiermux.config import Config, load_config


def test_a_dead_backend_is_skipped_then_used_again_when_it_returns(
    cloud: BackendHandle,
    cloud_key_file: Path,
    config_file: Callable[[dict[str, Any]], Any],
    proxy_factory: Callable[[Config], ProxyClient],
) -> None:
    local = run_in_thread(flavor="vllm", model="qwen-9b")
    port = local.port
    tree = {
        "backends": [
            backend_entry("local", local.url, "qwen-9b", price={"input": 0.01, "output": 0.01}),
            backend_entry(
                "cloud",
                cloud.url,
                CLOUD_MODEL,
                api_key_file=str(cloud_key_file),
                price={"input": 3, "output": 15},
            ),
        ],
        "tiers": {"cheap": ["local", "cloud"]},
        "routing": {"classifier": {"enabled": False}},
        "health": {"failure_threshold": 2, "probe_interval": 0.2},
    }
    client = proxy_factory(load_config(config_file(tree)))
    assert client.chat().headers["x-tiermux-backend"] == "local"
    local.stop()
    try:
        served_by = [client.chat() for _ in range(6)]
        assert [r.status_code for r in served_by] == [200] * 6  # failover hides the dead one
        assert {r.headers["x-tiermux-backend"] for r in served_by} == {"cloud"}
        backends = {row["name"]: row for row in client.get("/v1/backends").json()["data"]}
        assert backends["local"]["status"] in ("down", "probing")
        assert backends["local"]["errors"] == 2  # marked down after two: not tried again since
        assert backends["cloud"]["status"] == "up"
    finally:
        local = run_in_thread(flavor="vllm", model="qwen-9b", port=port)
    try:
        # Back within a probe interval or two, and the cheap backend takes the traffic again.
        assert wait_until(lambda: client.chat().headers["x-tiermux-backend"] == "local", timeout=5.0)
        backends = {row["name"]: row for row in client.get("/v1/backends").json()["data"]}
        assert backends["local"]["status"] == "up"
        assert backends["local"]["consecutive_failures"] == 0
    finally:
        local.stop()
