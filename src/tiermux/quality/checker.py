"""Checking cheap answers after the client has them: sampling, the background queue, reference
calls, scores, promotion and recovery.

The proxy hands over every answer a watched tier gave (``observe``) and, for a promoted category,
a share of the answers its higher tier gave (``shadow``). ``observe`` draws the sample and glances
at the answer's bytes (is there any text; do its opening words look like a refusal); only answers
in the sample, answers to JSON-mode requests and suspect ones become jobs on a bounded queue. A
full queue drops the job and counts it: checking never slows a request. Each worker process runs
``concurrency`` tasks that take jobs off its queue. Checks yield to requests: a worker whose event
loop falls behind takes on only a trickle of them and sheds the rest, also counted
(``tiermux.quality.pacing``). Each job is handled so:

* an answer from a watched tier is read (a stream is assembled first) and checked cheaply (empty,
  a refusal, not the JSON asked for); it is re-asked of the reference backend when it failed that
  check or falls in the category's sample, and scored against the reference's answer;
* a shadow job asks the category's own tier again and scores that answer against the one the
  client got from the higher tier.

A score is the agreement of the two answers' texts (``scoring.score``) or, with ``quality.judge``,
the grade the reference backend gives the answer against its own when asked with a fixed rubric
(``scoring.judge_prompt``; an answer without a grade falls back to agreement).

Scores go into the category's window, shared by the workers. When the windowed mean of a
category with at least ``min_samples`` scores falls below ``threshold``, it is promoted (routing
sends it one tier up, everywhere); when a promoted category's mean is back above ``threshold +
hysteresis``, it returns. Both are logged and counted. In distributed mode each score also goes to
the fleet's window in Redis, which decides instead of the machine's own while Redis answers
(``tiermux.state.redis_quality``). The calls made here are booked to the ``quality.service``
service, so that they show in the books and budgets like any other.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from tiermux._speedups import jsonscan
from tiermux.accounting.ledger import Ledger
from tiermux.background import stop_tasks
from tiermux.cache.replay import assemble
from tiermux.config import Config
from tiermux.dialects import Untranslatable
from tiermux.dialects.passage import OPENAI_SPEAKER, passage
from tiermux.quality.pacing import CheckPacing
from tiermux.quality.scoring import cheap_check, judge_prompt, parse_grade, score
from tiermux.quality.window import QualityWindow
from tiermux.routing.request import decode_chat, decode_completion, from_chat, from_completion
from tiermux.state.redis_quality import PROMOTED, RECOVERED, FleetVerdict, RedisQuality
from tiermux.telemetry.loop_lag import LoopLag
from tiermux.upstream.backend import Backend
from tiermux.upstream.errors import UpstreamError

__all__ = ["JUDGE_MAX_TOKENS", "QualityChecker", "answer_text", "request_text"]

logger = logging.getLogger("tiermux.quality")

JUDGE_MAX_TOKENS = 256  # three sentences of reasons and the grade line


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


def request_text(endpoint: str, body: bytes) -> str:
    """The text a request asks about: its last user message (a completion's prompt); "" when
    the body can't be read."""
    try:
        if endpoint == "/completions":
            return from_completion(decode_completion(body)).last
        return from_chat(decode_chat(body)).last
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""


class _Job:
    __slots__ = ("answer", "body", "category", "endpoint", "json_expected", "own_tier", "sampled", "streamed")

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
        self.sampled = False  # in the category's sample (else checked only for a cheap failure)


class QualityChecker:
    def __init__(
        self,
        config: Config,
        window: QualityWindow,
        backends: dict[str, Backend],
        ledger: Ledger,
        first_backend: Callable[[tuple[str, ...]], str],
        fleet: RedisQuality | None = None,
    ) -> None:
        quality = config.quality
        assert quality.reference is not None
        self.settings = quality
        self.window = window
        self.backends = backends
        self.ledger = ledger
        self.reference = backends[quality.reference]
        self.fleet = fleet  # the fleet's window in Redis (distributed mode)
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
        self.pacing = CheckPacing(LoopLag(), quality.busy_lag_ms / 1000, quality.busy_checks_per_second)
        self._tasks: list[asyncio.Task[None]] = []  # the workers, and the fleet's mirror
        self._sharing: set[asyncio.Task[None]] = set()  # feedback on its way to the fleet's window
        self._closed = False  # closed: an answer that comes in late starts no checks again
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
        """A watched tier's answer, to check when there is room: when it falls in the sample, or
        when a glance at its bytes suggests it may fail a cheap check (the check itself, which
        parses the answer, runs in the background; most answers cost only this glance, and a busy
        worker's not even that)."""
        sampled = self._random.random() < self._rates.get(category, self.settings.sample_rate)
        pacing = self.pacing
        if pacing.busy and not pacing.spare():
            # Busy, with no check to spare: the glance would only choose checks to shed.
            if sampled:
                self.window.shed()
            return
        if sampled or json_expected or _suspect(answer, streamed):
            job = _Job(category, endpoint, body, answer, streamed, json_expected)
            job.sampled = sampled
            self._put(job)

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
        if not self.pacing.admits():
            self.window.shed()
            return
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.window.dropped()
            return
        if not self._tasks:
            self.start()

    # --- the background side ------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers, and the mirror of the fleet's promotions in distributed mode (needs
        a running loop; cheap to call again)."""
        if self._tasks or self._closed:
            return
        loop = asyncio.get_running_loop()
        self.pacing.lag.start()
        self._tasks = [loop.create_task(self._work()) for _ in range(self.settings.concurrency)]
        if self.fleet is not None:
            self._tasks.append(loop.create_task(self.fleet.run(self.window)))

    async def drain(self) -> None:
        """Wait until every queued job is done (tests, and a clean shutdown)."""
        await self._queue.join()
        if self._sharing:
            await asyncio.gather(*self._sharing, return_exceptions=True)

    async def aclose(self) -> None:
        self._closed = True
        self.pacing.lag.stop()
        tasks = [*self._tasks, *self._sharing]
        self._tasks = []
        self._sharing.clear()
        await stop_tasks(tasks, "the quality checks")

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
                await self._score(job, own, client, "shadow_samples")
            return
        failed = cheap_check(client, json_expected=job.json_expected)
        if failed is not None:
            self.window.count(job.category, "check_failures")
            logger.info("a %s answer failed a cheap check (%s): asking the reference", job.category, failed)
        elif not job.sampled:
            return
        reference = await self._ask(job, self.reference.name)
        if reference is not None:
            await self._score(job, client, reference, "samples")

    async def _ask(self, job: _Job, backend_name: str) -> str | None:
        """The same request, as JSON, of ``backend_name``; its answer's text (None if it failed)."""
        body = _as_json_request(job.body, self.backends[backend_name])
        if body is None:
            return None
        return await self._call(backend_name, job.endpoint, body, job.category)

    async def _call(self, backend_name: str, endpoint: str, body: bytes, category: str) -> str | None:
        """``body`` to ``backend_name``, booked to the quality service; the answer's text (None if
        the call failed)."""
        backend = self.backends[backend_name]
        way = passage(OPENAI_SPEAKER, backend.dialect)  # a reference may speak Anthropic's dialect
        try:
            target = way.endpoint(endpoint)
            response = await backend.send("POST", target, way.request(body, backend.config))
            try:
                payload = await response.read_all()
            finally:
                response.close()
        except (UpstreamError, Untranslatable) as exc:
            logger.warning("quality check: backend %s failed: %s", backend_name, exc)
            return None
        if response.status != 200:
            logger.warning("quality check: backend %s answered %d", backend_name, response.status)
            return None
        usage = way.usage(payload)
        payload = way.answer(payload, response.status)
        self.ledger.record(self.settings.service, backend_name, self._tier_of[backend_name], category, usage)
        return answer_text(payload)

    async def _score(self, job: _Job, cheap: str, reference: str, counter: str) -> None:
        value = await self._judge(job, cheap, reference) if self.settings.judge else None
        if value is None:
            value = score(job.category, cheap, reference, json_expected=job.json_expected)
        self.window.add(job.category, value, counter)
        await self._decide(job.category, value)

    async def _judge(self, job: _Job, cheap: str, reference: str) -> float | None:
        """The reference backend's grade of ``cheap`` against ``reference`` (0..1); None when it
        gave none."""
        messages = judge_prompt(job.category, request_text(job.endpoint, job.body), cheap, reference)
        request = {
            "model": self.reference.config.model,
            "messages": messages,
            "max_tokens": JUDGE_MAX_TOKENS,
            "temperature": 0,
            "stream": False,
        }
        verdict = await self._call(
            self.reference.name, "/chat/completions", msgspec.json.encode(request), job.category
        )
        if verdict is None:
            return None  # the call failed (logged): scored by agreement instead
        grade = parse_grade(verdict)
        if grade is None:
            logger.info("the judge gave a %s answer no grade: scored by agreement instead", job.category)
        return grade

    def feedback(self, category: str, value: float) -> None:
        self.window.add(category, value, "feedback")
        if self.fleet is None:
            self.evaluate(category)
        else:  # to the fleet's window in the background: a client never waits on Redis
            self._spawn(self._decide(category, value))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._sharing.add(task)
        task.add_done_callback(self._sharing.discard)
        self.start()

    async def _decide(self, category: str, value: float) -> None:
        """After ``value`` went into the window: promote or return ``category`` by the fleet's
        window when there is one and Redis answers, else by this machine's."""
        verdict = None
        if self.fleet is not None:
            try:
                verdict = await self.fleet.record(category, value)
            except Exception:
                logger.exception("sharing a %s score through Redis failed", category)
        if verdict is None:
            self.evaluate(category)
        else:
            self._follow(category, verdict)

    def _follow(self, category: str, verdict: FleetVerdict) -> None:
        """Take a promotion or return this call made (counted here: once in the fleet). A verdict
        that decided nothing is not applied: another score's verdict, sent later, may have been
        taken already, and the state this one saw would undo it; the mirror brings decisions
        made elsewhere."""
        if verdict.action not in (PROMOTED, RECOVERED):
            return
        if self.fleet is not None:
            self.fleet.followed(category)
        self.window.mirror(category, verdict.promoted_at)
        if verdict.action == PROMOTED:
            self.window.count(category, "promotions")
            logger.warning(
                "quality of %s fell to %.3f over the fleet's %d scores (threshold %.2f): "
                "promoted to the next tier",
                category, verdict.mean, verdict.samples, self.settings.threshold,
            )  # fmt: skip
        elif verdict.action == RECOVERED:
            self.window.count(category, "recoveries")
            logger.warning(
                "quality of %s recovered to %.3f over the fleet's %d scores: back on its own tier",
                category, verdict.mean, verdict.samples,
            )  # fmt: skip

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


# What an answer that fails a cheap check looks like in its bytes: no text anywhere (a stream's
# first delta's empty content doesn't count), or the words refusals are made of in its opening
# (with any apostrophe, as sent or JSON-escaped). Every watched answer gets this glance, so it is
# two compiled scans of the bytes, no decoding; whatever it flags is checked properly in the
# background, and it flags more than that check would rather than less.
_APOSTROPHES = (b"'", "\u2019".encode(), b"\\u2019")  # ', the right single quote, its JSON escape
_REFUSAL_WORDS = jsonscan.AnyOf(
    (
        b"sorry",
        b"apologi",
        b"as an ai",
        b"decline",
        b"refuse",
        b"i cannot",
        b"i can not",
        b"i will not",
        b"i am unable",
        b"i am not able",
        b"i cant",
        b"i wont",
        *(b"i can" + a + b"t" for a in _APOSTROPHES),
        *(b"i won" + a + b"t" for a in _APOSTROPHES),
        *(b"i" + a + b"m unable" for a in _APOSTROPHES),
        *(b"i" + a + b"m not able" for a in _APOSTROPHES),
    )
)
# A refusal opens an answer: the bytes looked at from its first text (a stream spreads its opening
# words over several events, each wrapped in its own JSON, so it gets more of them).
_OPENING = 300
_STREAM_OPENING = 1500


def _suspect(answer: bytes, streamed: bool) -> bool:
    at = jsonscan.first_text(answer)
    if at < 0:
        return True
    return _REFUSAL_WORDS.search(answer, at, at + (_STREAM_OPENING if streamed else _OPENING)) >= 0


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
