"""Checking cheap answers after the client has them: sampling, the background queue, reference
calls, scores, promotion and recovery.

The proxy hands over every answer a watched tier gave (``observe``) and, for a promoted category,
a share of the answers its higher tier gave (``shadow``); both only put a job on a bounded queue
and return. A full queue drops the job and counts it: checking never slows a request. Each worker
process runs ``concurrency`` tasks that take jobs off its queue:

* an answer from a watched tier is read (a stream is assembled first) and checked cheaply (empty,
  a refusal, not the JSON asked for); it is re-asked of the reference backend when it failed that
  check or falls in the category's sample, and scored against the reference's answer;
* a shadow job asks the category's own tier again and scores that answer against the one the
  client got from the higher tier.

Scores go into the category's window, shared by the workers. When the windowed mean of a
category with at least ``min_samples`` scores falls below ``threshold``, it is promoted (routing
sends it one tier up, everywhere); when a promoted category's mean is back above ``threshold +
hysteresis``, it returns. Both are logged and counted. The calls made here are booked to the
``quality.service`` service, so that they show in the books and budgets like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

import msgspec

from tiermux.accounting.ledger import Ledger
from tiermux.accounting.usage import usage_of
from tiermux.cache.replay import assemble
from tiermux.config import Config
from tiermux.quality.scoring import cheap_check, score
from tiermux.quality.window import QualityWindow
from tiermux.upstream.backend import Backend
from tiermux.upstream.errors import UpstreamError

__all__ = ["QualityChecker", "answer_text"]

logger = logging.getLogger("tiermux.quality")


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message | None = None
    text: str | None = None


class _Answer(msgspec.Struct):
    choices: list[_Choice] = []


_decode_answer = msgspec.json.Decoder(_Answer).decode


def answer_text(answer: bytes) -> str | None:
    """The text of a JSON completion's first choice, or None if it is not one."""
    try:
        choices = _decode_answer(answer).choices
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if not choices:
        return None
    first = choices[0]
    if first.message is not None:
        return first.message.content or ""
    return first.text or ""


class _Job:
    __slots__ = ("answer", "body", "category", "endpoint", "json_expected", "own_tier", "streamed")

    def __init__(
        self,
        category: str,
        endpoint: str,
        body: bytes,
        answer: bytes,
        streamed: bool,
        json_expected: bool,
        own_tier: str | None = None,
    ) -> None:
        self.category = category
        self.endpoint = endpoint
        self.body = body
        self.answer = answer  # the client's answer: to check, or (shadow) the reference
        self.streamed = streamed
        self.json_expected = json_expected
        self.own_tier = own_tier  # set for a shadow job: the tier to ask again


class QualityChecker:
    def __init__(
        self,
        config: Config,
        window: QualityWindow,
        backends: dict[str, Backend],
        ledger: Ledger,
        first_backend: Callable[[tuple[str, ...]], str],
    ) -> None:
        quality = config.quality
        assert quality.reference is not None
        self.settings = quality
        self.window = window
        self.backends = backends
        self.ledger = ledger
        self.reference = backends[quality.reference]
        self._first_backend = first_backend  # the backend a tier's chain would use now
        self._chains = {tier: tuple(chain) for tier, chain in config.tiers.items()}
        self._tier_of = {
            b.name: next((t for t, c in config.tiers.items() if b.name in c), "") for b in config.backends
        }
        # The tiers below the highest one the reference serves (all of them when it serves none);
        # answers the reference itself gave (failover within a tier) are not checked against it.
        tiers = list(config.tiers)
        own = [i for i, t in enumerate(tiers) if quality.reference in config.tiers[t]]
        self.watched = frozenset(tiers[: own[-1] if own else len(tiers)])
        self._rates = quality.sample_rates
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(quality.queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._random = random.Random()

    def __repr__(self) -> str:
        return f"<QualityChecker reference={self.reference.name} watched={sorted(self.watched)}>"

    # --- the hot path's side: hand over and return -------------------------------------------

    def observe(
        self,
        category: str,
        tier: str,
        endpoint: str,
        body: bytes,
        answer: bytes,
        streamed: bool,
        json_expected: bool,
    ) -> None:
        """A watched tier's answer, to check when there is room."""
        self._put(_Job(category, endpoint, body, answer, streamed, json_expected))

    def shadow(
        self,
        category: str,
        own_tier: str,
        endpoint: str,
        body: bytes,
        answer: bytes,
        streamed: bool,
        json_expected: bool,
    ) -> None:
        """A promoted category's answer from the higher tier: sometimes, ask its own tier too."""
        if self._random.random() < self.settings.shadow_rate:
            self._put(_Job(category, endpoint, body, answer, streamed, json_expected, own_tier))

    def _put(self, job: _Job) -> None:
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.window.dropped()
            return
        if not self._tasks:
            self.start()

    # --- the background side ------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work()) for _ in range(self.settings.concurrency)]

    async def drain(self) -> None:
        """Wait until every queued job is done (tests, and a clean shutdown)."""
        await self._queue.join()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._check(job)
            except Exception:  # a check must never take its worker down
                logger.exception("quality check of a %s answer failed", job.category)
            finally:
                self._queue.task_done()

    async def _check(self, job: _Job) -> None:
        client = _text(job.answer, job.streamed)
        if client is None:
            return  # not a completion (an error the backend sent as 200, say): nothing to score
        if job.own_tier is not None:
            own = await self._ask(job, self._first_backend(self._chains[job.own_tier]))
            if own is not None:
                self._score(job.category, own, client, job.json_expected, "shadow_samples")
            return
        failed = cheap_check(client, json_expected=job.json_expected)
        if failed is not None:
            self.window.count(job.category, "check_failures")
            logger.info("a %s answer failed a cheap check (%s): asking the reference", job.category, failed)
        elif self._random.random() >= self._rates.get(job.category, self.settings.sample_rate):
            return
        reference = await self._ask(job, self.reference.name)
        if reference is not None:
            self._score(job.category, client, reference, job.json_expected, "samples")

    async def _ask(self, job: _Job, backend_name: str) -> str | None:
        """The same request, as JSON, of ``backend_name``; its answer's text (None if it failed)."""
        backend = self.backends[backend_name]
        body = _as_json_request(job.body, backend)
        if body is None:
            return None
        try:
            response = await backend.send("POST", job.endpoint, body)
            try:
                payload = await response.read_all()
            finally:
                response.close()
        except UpstreamError as exc:
            logger.warning("quality check: backend %s failed: %s", backend_name, exc)
            return None
        if response.status != 200:
            logger.warning("quality check: backend %s answered %d", backend_name, response.status)
            return None
        usage = usage_of(payload)
        self.ledger.record(
            self.settings.service, backend_name, self._tier_of[backend_name], job.category, usage
        )
        return answer_text(payload)

    def _score(self, category: str, cheap: str, reference: str, json_expected: bool, counter: str) -> None:
        value = score(category, cheap, reference, json_expected=json_expected)
        self.window.add(category, value, counter)
        self.evaluate(category)

    def feedback(self, category: str, value: float) -> None:
        self.window.add(category, value, "feedback")
        self.evaluate(category)

    def evaluate(self, category: str) -> None:
        """Promote or return ``category`` by its windowed mean."""
        settings = self.settings
        mean, count = self.window.mean(category)
        if mean is None or count < settings.min_samples:
            return
        if not self.window.promoted(category):
            if mean < settings.threshold and self.window.promote(category):
                logger.warning(
                    "quality of %s fell to %.3f over %d scores (threshold %.2f): promoted to the next tier",
                    category, mean, count, settings.threshold,
                )  # fmt: skip
        elif mean >= settings.threshold + settings.hysteresis and self.window.recover(category):
            logger.warning(
                "quality of %s recovered to %.3f over %d scores: back on its own tier", category, mean, count
            )

    def promoted(self, category: str) -> bool:
        return self.window.promoted(category)


def _text(answer: bytes, streamed: bool) -> str | None:
    if streamed:
        assembled = assemble(answer)
        return None if assembled is None else answer_text(assembled)
    return answer_text(answer)


def _as_json_request(body: bytes, backend: Backend) -> bytes | None:
    """``body`` for ``backend``: its model, no streaming."""
    try:
        request: dict[str, Any] = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(request, dict):
        return None
    request["model"] = backend.config.model
    request["stream"] = False
    request.pop("stream_options", None)
    return msgspec.json.encode(request)
