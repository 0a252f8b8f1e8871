"""Metrics of a real ``tiermux serve`` with four workers: whichever worker answers the scrape, the
counters are those of all four, and a worker killed and respawned takes nothing away."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
from bench.mock_backend import BackendHandle
from prometheus_client.parser import text_string_to_metric_families
from tests.support import ServerProcess, standard_tree, storm, wait_until, write_config

REQUESTS = 400


def scrape(server: ServerProcess) -> dict[str, float]:
    """Each family's samples summed over their labels (name -> total)."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0) + sample.value
    return totals


def in_flight(server: ServerProcess) -> float:
    return scrape(server).get("tiermux_backend_in_flight", 0.0)


def test_counters_of_four_workers_sum_to_the_requests_made(
    vllm: BackendHandle,
    cloud: BackendHandle,
    cloud_key_file: Path,
    tmp_path: Path,
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(
        write_config(tmp_path, standard_tree(vllm.url, cloud.url, cloud_key_file)), workers=4
    )
    body = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "hi"}]}).encode()
    for _ in range(REQUESTS // 100):  # in waves, each on its own connections: every worker takes some
        answers = asyncio.run(storm(server.port, [body] * 100))
        assert {status for status, _, _ in answers} == {200}
    totals = scrape(server)
    assert totals["tiermux_requests_total"] == REQUESTS
    assert totals["tiermux_request_duration_seconds_count"] == REQUESTS
    assert totals["tiermux_routing_decisions_total"] == REQUESTS
    assert totals["tiermux_upstream_duration_seconds_count"] == REQUESTS
    assert vllm.stats()["requests"] == REQUESTS
    for _ in range(8):  # every scrape, whichever worker answers it, says the same
        assert scrape(server)["tiermux_requests_total"] == REQUESTS

    # Requests held open by a slow backend count as in flight, summed over the workers...
    vllm.configure(latency_ms=3000)
    sockets = []
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    try:
        for _ in range(12):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(request)
            sockets.append(sock)
        assert wait_until(lambda: in_flight(server) == 12, timeout=5), in_flight(server)
        # ...and a worker killed with some of them leaves no phantom load and no lost counts.
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == 4, 15)
        assert wait_until(lambda: in_flight(server) < 12, timeout=5), in_flight(server)
        assert scrape(server)["tiermux_requests_total"] >= REQUESTS
    finally:
        for sock in sockets:
            sock.close()
