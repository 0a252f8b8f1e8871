"""The quality safety net through the proxy: cheap answers checked against a reference backend in
the background, categories promoted when their quality drops and returned when it recovers, and
client feedback. The mocks are made to agree or differ with a configured answer text."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from bench.mock_backend import BackendHandle
from tests.support import ProxyClient, wait_until

AGREED = "The invoice total is 42 euros, due on 1 March."
OTHER = "Bananas are yellow and grow in bunches on tall plants."
EXTRACTION = {"x-tiermux-category": "extraction"}


def quality(**settings: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "reference": "frontier",
        "sample_rate": 1.0,
        "window": 10,
        "min_samples": 5,
        "threshold": 0.6,
        "hysteresis": 0.1,
        "shadow_rate": 1.0,
        # These tests count checks. The mocks share the proxy's process (and its GIL), which can
        # make its loop lag: nothing may be shed for load here but where a test asks for it.
        "busy_lag_ms": 0,
        **settings,
    }


@pytest.fixture
def checked(proxy_with: Callable[..., ProxyClient]) -> Callable[..., ProxyClient]:
    """A proxy routing by category (told by header, so that tests pick it), quality on."""

    def make(**settings: Any) -> ProxyClient:
        routing = {
            "default_tier": "cheap",
            "aliases": {"fast": "cheap"},
            "allow_header_override": True,
            "classifier": {"enabled": True},
        }
        return proxy_with(routing=routing, quality=quality(**settings), cache={"enabled": False})

    return make


def ask(client: ProxyClient, headers: dict[str, str] = EXTRACTION, **fields: Any) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": "Pull out the total and due date."}]}
    response = client.post("/v1/chat/completions", json={**body, **fields}, headers=headers)
    assert response.status_code == 200, response.text
    return response


def settle(client: ProxyClient) -> dict[str, Any]:
    """Wait for the background checks; the quality state of /stats."""
    assert client.app.quality is not None
    client.run(client.app.quality.drain())
    state: dict[str, Any] = client.get("/stats").json()["quality"]
    return state


def test_agreeing_answers_are_sampled_scored_and_booked_to_the_quality_service(
    checked: Callable[..., ProxyClient], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    client = checked()
    vllm.configure(text=AGREED)
    cloud.configure(text=AGREED)
    answers = [ask(client) for _ in range(6)]
    assert {a.headers["x-tiermux-tier"] for a in answers} == {"cheap"}
    extraction = settle(client)["categories"]["extraction"]
    assert (extraction["samples"], extraction["window_samples"]) == (6, 6)
    assert extraction["score"] == 1.0 and not extraction["promoted"]
    assert cloud.stats()["requests"] == 6  # every one re-asked of the reference, after the answer
    books = client.get("/stats").json()["by_service"]
    assert books["quality"]["requests"] == 6 and books["quality"]["spend_usd"] > 0


def test_a_quality_drop_promotes_the_category_and_recovery_returns_it(
    checked: Callable[..., ProxyClient], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    client = checked()
    vllm.configure(text=OTHER)
    cloud.configure(text=AGREED)
    for _ in range(5):
        ask(client)
    state = settle(client)["categories"]["extraction"]
    assert state["promoted"] and state["promotions"] == 1 and state["score"] < 0.6
    promoted = ask(client)
    assert promoted.headers["x-tiermux-tier"] == "capable"
    route = client.post(
        "/v1/route",
        json={"model": "auto", "messages": [{"role": "user", "content": "x"}]},
        headers=EXTRACTION,
    )
    assert "quality_promoted" in route.json()["reasons"]
    assert (
        ask(client, {"x-tiermux-category": "summarisation"}).headers["x-tiermux-tier"] == "cheap"
    )  # only it

    # While promoted, the cheap tier is tried in shadow; once it agrees again, the category returns.
    vllm.configure(text=AGREED)
    for _ in range(12):
        ask(client)
        state = settle(client)["categories"]["extraction"]
        if not state["promoted"]:
            break
    assert not state["promoted"] and state["recoveries"] == 1 and state["shadow_samples"] > 0
    assert ask(client).headers["x-tiermux-tier"] == "cheap"


def test_answers_that_fail_a_cheap_check_are_always_checked(
    checked: Callable[..., ProxyClient], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    client = checked(sample_rate=0.0)
    cloud.configure(text=AGREED)
    vllm.configure(text=AGREED)
    ask(client)
    vllm.configure(text="I'm sorry, but I can't help with that.")
    ask(client)
    vllm.configure(text="")
    ask(client)
    state = settle(client)["categories"]["extraction"]
    assert (state["check_failures"], state["samples"]) == (2, 2)
    assert cloud.stats()["requests"] == 2


def test_the_sampling_rate_holds_within_statistical_bounds(
    checked: Callable[..., ProxyClient], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    client = checked(sample_rate=0.2, queue_size=1024, min_samples=1000)
    vllm.configure(text=AGREED)
    cloud.configure(text=AGREED)
    requests = 400
    for _ in range(requests):
        ask(client)
    sampled = settle(client)["categories"]["extraction"]["samples"]
    # Binomial(400, 0.2): mean 80, standard deviation 8; four deviations either side.
    assert 48 <= sampled <= 112, sampled


def test_a_dead_reference_backend_changes_nothing_for_clients(
    checked: Callable[..., ProxyClient], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    client = checked()
    vllm.configure(text=OTHER)
    cloud.configure(fail_rate=1.0, fail_status=503)
    answers = [ask(client) for _ in range(8)]
    assert all(a.json()["choices"][0]["message"]["content"] == OTHER for a in answers)
    state = settle(client)["categories"]["extraction"]
    assert state["samples"] == 0 and not state["promoted"]


def test_an_answer_after_the_checks_are_closed_starts_none_again(
    checked: Callable[..., ProxyClient], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    client = checked()
    vllm.configure(text=AGREED)
    cloud.configure(text=AGREED)
    ask(client)
    settle(client)
    assert client.app.quality is not None
    assert cloud.stats()["requests"] == 1
    client.run(client.app.quality.aclose())  # the worker is shutting down
    ask(client)  # an answer still in flight, sampled
    time.sleep(0.2)
    assert cloud.stats()["requests"] == 1  # no check was started for it


def test_a_full_queue_drops_checks_instead_of_slowing_requests(
    checked: Callable[..., ProxyClient], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    client = checked(queue_size=1, concurrency=1)
    vllm.configure(text=AGREED)
    cloud.configure(text=AGREED, latency_ms=300)
    started = time.monotonic()
    for _ in range(10):
        ask(client)
    assert time.monotonic() - started < 2.5  # ten reference calls in a row would take 3 s
    state = settle(client)
    assert state["dropped"] >= 5


def test_a_busy_worker_sheds_checks_and_still_takes_on_a_trickle(
    checked: Callable[..., ProxyClient], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    # Any lag at all counts as busy here; a busy worker takes on two checks a second.
    client = checked(busy_lag_ms=1e-6, busy_checks_per_second=2)
    vllm.configure(text=AGREED)
    cloud.configure(text=AGREED)
    ask(client)  # starts the checker and the lag's measuring: this check may come before the first tick
    assert client.app.quality is not None
    pacing = client.app.quality.pacing
    assert wait_until(lambda: pacing.busy)  # busy from the lag's first tick on
    assert pacing.busy
    started = time.monotonic()
    for _ in range(6):
        ask(client)
    refilled = int(2 * (time.monotonic() - started))  # tokens the bucket gained meanwhile
    state = settle(client)
    taken = state["categories"]["extraction"]["samples"]
    assert 2 <= taken <= 1 + 2 + refilled, state  # the bucket's two at least (and its refills)
    assert taken + state["shed"] == 7 and state["dropped"] == 0
    assert cloud.stats()["requests"] == taken
    assert "tiermux_quality_shed_total " + str(state["shed"]) in client.get("/metrics").text


def test_a_busy_worker_with_no_check_to_spare_does_not_even_glance_at_answers(
    checked: Callable[..., ProxyClient], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    client = checked(sample_rate=0.0, busy_lag_ms=1e-6, busy_checks_per_second=0)
    cloud.configure(text=AGREED)
    vllm.configure(text=AGREED)
    ask(client)  # starts the checker and the lag's measuring
    assert client.app.quality is not None
    pacing = client.app.quality.pacing
    assert wait_until(lambda: pacing.busy)
    assert pacing.busy and not pacing.spare()
    vllm.configure(text="I'm sorry, but I can't help with that.")
    ask(client)  # a refusal the glance would flag, were there a check to take it on
    state = settle(client)
    # Glanced at, it would have become a check and been shed (counted); unseen, nothing counts it.
    assert state["shed"] == 0 and state["categories"]["extraction"]["check_failures"] == 0
    assert cloud.stats()["requests"] == 0

    async def calm() -> None:  # no more ticks: calm again for good
        pacing.lag.stop()
        pacing.follow(0.0)

    client.run(calm())
    ask(client)  # the same answer, glanced at and checked
    state = settle(client)
    assert state["categories"]["extraction"]["check_failures"] == 1 and cloud.stats()["requests"] == 1


def test_feedback_feeds_the_window_and_needs_an_id_tiermux_gave(
    checked: Callable[..., ProxyClient], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    client = checked(sample_rate=0.0)
    vllm.configure(text=AGREED)
    ids = [ask(client).headers["x-tiermux-request-id"] for _ in range(5)]
    for request_id in ids:
        answer = client.post("/v1/feedback", json={"request_id": request_id, "score": 0.1})
        assert answer.status_code == 200 and answer.json()["recorded"] is True
    state = settle(client)["categories"]["extraction"]
    assert state["feedback"] == 5 and state["promoted"]
    capable = ask(client).headers["x-tiermux-request-id"]  # now from the capable tier: not checked
    assert client.post("/v1/feedback", json={"request_id": capable, "score": 1}).json()["recorded"] is False
    bad = client.post("/v1/feedback", json={"request_id": "made-up", "score": 0.5})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "request_id"
    assert client.post("/v1/feedback", json={"request_id": ids[0], "score": 7}).status_code == 400


def test_quality_shows_in_the_metrics(
    checked: Callable[..., ProxyClient], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    client = checked()
    vllm.configure(text=OTHER)
    cloud.configure(text=AGREED)
    for _ in range(5):
        ask(client)
    settle(client)
    text = client.get("/metrics").text
    assert 'tiermux_quality_promoted{category="extraction"} 1' in text
    assert 'tiermux_quality_samples_total{category="extraction"} 5' in text
    assert 'tiermux_quality_promotions_total{category="extraction"} 1' in text


def _judge_requests(cloud: BackendHandle) -> list[dict[str, Any]]:
    bodies = [json.loads(base64.b64decode(r["body_b64"])) for r in cloud.recorded()]
    return [b for b in bodies if "GRADE: <1-5>" in json.dumps(b.get("messages", []))]


def test_judge_mode_scores_by_the_reference_backends_grade(
    checked: Callable[..., ProxyClient], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    # The answers agree word for word, so text agreement would score 1; the judge's grade rules.
    client = checked(judge=True)
    verdict = "The candidate misses the due date. GRADE: 1"
    vllm.configure(text=verdict)
    cloud.configure(text=verdict)
    for _ in range(5):
        ask(client)
    state = settle(client)["categories"]["extraction"]
    assert state["promoted"] and state["promotions"] == 1 and state["score"] == 0.0
    assert cloud.stats()["requests"] == 10  # a reference answer and a grade per sample
    assert client.get("/stats").json()["by_service"]["quality"]["requests"] == 10
    judged = _judge_requests(cloud)
    assert len(judged) == 5
    request = judged[0]
    assert (request["temperature"], request["stream"], request["max_tokens"]) == (0, False, 256)
    prompt = request["messages"][-1]["content"]
    assert "Pull out the total and due date." in prompt and verdict in prompt


def test_judge_mode_a_top_grade_scores_one_and_no_grade_falls_back_to_agreement(
    checked: Callable[..., ProxyClient], vllm: BackendHandle, cloud: BackendHandle
) -> None:
    client = checked(judge=True)
    vllm.configure(text=OTHER)  # differs from the reference's words: agreement would be low
    cloud.configure(text="Different words, same facts. GRADE: 5")
    for _ in range(5):
        ask(client)
    state = settle(client)["categories"]["extraction"]
    assert state["score"] == 1.0 and not state["promoted"]

    cloud.configure(text=AGREED)  # no grade in the judge's answer: scored by agreement
    for _ in range(5):
        ask(client)
    state = settle(client)["categories"]["extraction"]
    assert state["samples"] == 10 and state["promoted"] and state["score"] < 0.6


def test_errors_of_proxied_requests_carry_a_request_id_too(checked: Callable[..., ProxyClient]) -> None:
    client = checked()
    missing = client.post("/v1/chat/completions", json={"model": "no-such-model", "messages": []})
    assert missing.status_code == 404
    assert missing.headers["x-tiermux-request-id"].startswith("tmx-none-none-")
