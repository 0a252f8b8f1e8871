"""The hot path: one request (OpenAI's or Anthropic's dialect) from the client to a backend and
its answer back.

    read body (bounded) -> [a request seen before: its answer from the cache, done]
    -> decode routing fields -> route (resolve, classify, policy)
    -> [cacheable: the answer kept, or an identical call in flight joined, or a call started]
    -> reserve the worst case against the service's budget (downgrade or refuse past it)
    -> try the chain's backends, cheapest healthy first, until one answers: each is sent the body
       in its dialect (``model`` spliced; translated when the client speaks the other one) with
       the next of its keys that is not resting
    -> relay the answer in the client's dialect (and keep it, when it is whole and cacheable)

A client that leaves cancels the work done for it (``DisconnectWatcher``). Failover happens only
before the client has received a byte: connection errors, timeouts and 5xx answers move to the
next backend of the chain, answers that say "not now" (429, 503, 529) are retried (another key,
another backend, or a pause), and every outcome feeds the backends' shared health. A
non-streaming answer is read whole before anything is sent, so that a backend failing mid-answer
can still be replaced; a stream is relayed chunk by chunk as it arrives, and if it breaks the
client gets an error event in its dialect and a clean end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any

import msgspec

from tiermux._speedups import h1client, jsonscan
from tiermux.accounting.budget import Budgets, Reservation
from tiermux.accounting.ledger import Ledger
from tiermux.accounting.usage import Usage, ask_for_usage, usage_of, wants_usage
from tiermux.api.disconnect import DisconnectWatcher
from tiermux.api.errors import (
    BadGateway,
    BadRequest,
    GatewayTimeout,
    PayloadTooLarge,
    ProxyError,
    RateLimited,
    UpstreamFailure,
)
from tiermux.api.headers import JSON_HEADERS, SSE_HEADERS, relayed_headers
from tiermux.api.wire import decode_routing_fields
from tiermux.cache.flight import Flight, Head
from tiermux.cache.hits import KnownHit, Received
from tiermux.cache.replay import ReplayError
from tiermux.cache.responses import Asked, Mode, Outcome, ResponseCache
from tiermux.cache.store import Entry
from tiermux.config import DEFAULT_SERVICE, CascadeRule
from tiermux.dialects import OPENAI, Untranslatable
from tiermux.dialects.passage import (
    ANTHROPIC_SPEAKER,
    OPENAI_SPEAKER,
    Form,
    Speaker,
    StreamTap,
    passage,
    speaker,
)
from tiermux.quality import request_ids
from tiermux.quality.checker import QualityChecker
from tiermux.quality.confidence import ask_for_logprobs, confidence, strip_logprobs
from tiermux.routing.request import (
    RequestText,
    decode_chat,
    decode_completion,
    decode_messages,
    from_chat,
    from_completion,
    from_messages,
)
from tiermux.routing.router import Decision, Router
from tiermux.telemetry.metrics import NONE, PINNED, Metrics
from tiermux.telemetry.record import RECORD_SCOPE_KEY, RequestRecord
from tiermux.upstream.backend import Backend
from tiermux.upstream.errors import ConnectTimeout, ReadTimeout, UpstreamError
from tiermux.upstream.health import Health
from tiermux.upstream.retry import DEFAULT_REST, RETRY_STATUSES, retry_after

__all__ = ["SERVICE_SCOPE_KEY", "ClientDisconnected", "Forwarder"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("tiermux.proxy")

# Where the app leaves the service of the request's key, for the handlers.
SERVICE_SCOPE_KEY = "tiermux.service"
SERVICE_HEADER = b"x-tiermux-service"
ANTHROPIC_BETA_HEADER = b"anthropic-beta"

# The ``anthropic-beta`` header line of the Anthropic request being served (b"" when none): it
# turns on features, so an Anthropic backend must see it, and a translation can't honour it.
# Per request, where the request is sent (a flight's task inherits it from the request that
# started it); requests with one bypass the cache, whose key does not hold it.
_ANTHROPIC_BETA: ContextVar[bytes] = ContextVar("tiermux_anthropic_beta", default=b"")
REQUEST_ID_HEADER = b"x-tiermux-request-id"


class ClientDisconnected(Exception):
    """The client left before its request was read; there is nobody to answer."""


_OVERRIDE_HEADERS = frozenset({b"x-tiermux-tier", b"x-tiermux-category"})

# Answers that say "this backend can't serve now" rather than "this request is wrong" (503 and
# 529 say "not now" and are retried first: RETRY_STATUSES).
_FAILOVER_STATUSES = frozenset({500, 502, 504})


def _client_error(exc: UpstreamError, backend: Backend) -> UpstreamFailure:
    """Map a client-layer failure to the most specific error a client may see."""
    if isinstance(exc, ConnectTimeout | ReadTimeout):
        return GatewayTimeout(f"backend {backend.name!r} timed out: {exc}")
    return BadGateway(f"backend {backend.name!r} failed: {exc}")


class Forwarder:
    """Forwards requests for the endpoints that carry a ``model``: OpenAI's and Anthropic's."""

    def __init__(
        self,
        router: Router,
        backends: dict[str, Backend],
        max_body_bytes: int,
        health: Health,
        ledger: Ledger,
        budgets: Budgets,
        cache: ResponseCache | None = None,
        metrics: Metrics | None = None,
        quality: QualityChecker | None = None,
    ) -> None:
        self.router = router
        self.metrics = metrics
        self.quality = quality
        self._cascading = quality is not None and bool(quality.settings.cascade)
        self._id_prefix = os.urandom(5).hex()
        self._id_prefixes: dict[tuple[str, str], str] = {}
        self._answers = 0
        self._tiers = frozenset(router.config.tiers)
        self.cache = cache if cache is not None and cache.enabled else None
        self.backends = backends
        self.health = health
        self.ledger = ledger
        self.budgets = budgets
        self.services = frozenset(ledger.services)
        self.max_body_bytes = max_body_bytes
        # Every combination is built once; all parts come from config and fixed sets.
        self._route_headers: dict[tuple[str, str, str, int, str | None], list[tuple[bytes, bytes]]] = {}
        self.disconnects = DisconnectWatcher()

    def _note(self, record: RequestRecord, decision: Decision) -> None:
        """Where routing sent a request."""
        record.category, record.tier = self._labels(decision)

    def _labels(self, decision: Decision) -> tuple[str, str]:
        """The category and tier of a decision, as the metrics and the access log name them."""
        classification = decision.classification
        category = classification.category if classification is not None else NONE
        return category, decision.tier if decision.tier in self._tiers else PINNED

    def _added_headers(self, decision: Decision, backend: Backend) -> list[tuple[bytes, bytes]]:
        classification = decision.classification
        category, score = (classification.category, classification.score) if classification else ("", -1)
        key = (decision.tier, backend.name, category, score, decision.downgraded_from)
        headers = self._route_headers.get(key)
        if headers is None:
            headers = [
                (b"x-tiermux-tier", decision.tier.encode()),
                (b"x-tiermux-backend", backend.name.encode()),
            ]
            if classification is not None:
                headers.append((b"x-tiermux-category", category.encode()))
                headers.append((b"x-tiermux-score", str(score).encode()))
            if decision.downgraded_from is not None:
                headers.append((b"x-tiermux-downgraded-from", decision.downgraded_from.encode()))
            self._route_headers[key] = headers
        return headers

    async def read_body(self, first: bytes, receive: Receive) -> bytes:
        """The rest of a body that came in several messages (the first one given), refused with
        413 past the limit. A body in one message within the limit never comes here."""
        size = len(first)
        if size > self.max_body_bytes:
            raise PayloadTooLarge(f"request body exceeds {self.max_body_bytes} bytes")
        parts = [first]
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(f"request body exceeds {self.max_body_bytes} bytes")
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    async def receive_body(self, receive: Receive) -> bytes:
        message = await receive()
        body: bytes = message.get("body", b"")
        if message.get("more_body", False) or len(body) > self.max_body_bytes:
            body = await self.read_body(body, receive)
        return body

    def decide(self, endpoint: str, body: bytes, scope: Scope) -> Decision:
        """Route a request body: decode what routing reads, resolve its model, classify, decide."""
        return self._route(endpoint, body, scope)[0]

    def _route(self, endpoint: str, body: bytes, scope: Scope) -> tuple[Decision, RequestText | None]:
        """The decision, and the request as routing read it (None when it could not)."""
        model, request = _routing_input(endpoint, body)
        if model is None:
            raise BadRequest("You must provide a model parameter.", param="model")
        route = self.router.resolve(model)
        return self.router.decide(route, request, scope["headers"]), request

    async def __call__(self, endpoint: str, scope: Scope, receive: Receive, send: Send) -> None:
        self.health.start()
        if self.quality is not None:
            self.quality.start()  # its workers and fleet mirror, once (also without a lifespan)
        body = await self.receive_body(receive)
        record: RequestRecord = scope.get(RECORD_SCOPE_KEY) or RequestRecord(0.0)
        record.service = service = self._service(scope)
        features = b""
        if endpoint == "/messages":
            features = _anthropic_beta(scope)
            _ANTHROPIC_BETA.set(features)
        cache = self.cache
        if cache is None:
            await self._route_and_answer(endpoint, body, record, scope, receive, send)
            return
        mode = cache.control(scope["headers"]) if not features else Mode.BYPASS
        asked = None
        if mode is not Mode.BYPASS:
            if self.quality is not None:  # promotions change routing: forget routes decided before
                cache.follow_promotions(self.quality.window.epoch())
            overrides = self._overrides(scope)
            received = (endpoint, body, service, overrides)
            # A request answered from the cache before is answered again first, for the least
            # work (its exact bytes name it: tiermux.cache.hits); the others pay for their key.
            if mode is Mode.USE:
                known = cache.known.get(received)
                if known is not None and await self._answer_known(known, record, send):
                    return
            if cache.reproducible(endpoint, body):
                asked = cache.asked(body, endpoint, service, overrides)
        if asked is None:  # not to be cached, or not a body the cache can read (routing will say why)
            cache.count(Outcome.BYPASS)
            await self._route_and_answer(endpoint, body, record, scope, receive, send, Outcome.BYPASS.header)
            return
        if mode is Mode.USE and await self._known_hit(asked, received, body, record, send):
            return
        decision, request = self._route(endpoint, body, scope)
        self._note(record, decision)
        if request is None and endpoint != "/embeddings":  # a body routing could not read
            cache.count(Outcome.BYPASS)
            await self._admit_and_answer(
                endpoint, body, None, decision, record, receive, send, Outcome.BYPASS.header
            )
            return
        cache.remember(asked, decision)
        await self._cached(mode, asked, endpoint, body, request, decision, record, receive, send)

    async def _route_and_answer(
        self,
        endpoint: str,
        body: bytes,
        record: RequestRecord,
        scope: Scope,
        receive: Receive,
        send: Send,
        cache_header: tuple[bytes, bytes] | None = None,
    ) -> None:
        decision, request = self._route(endpoint, body, scope)
        self._note(record, decision)
        await self._admit_and_answer(endpoint, body, request, decision, record, receive, send, cache_header)

    async def _admit_and_answer(
        self,
        endpoint: str,
        body: bytes,
        request: RequestText | None,
        decision: Decision,
        record: RequestRecord,
        receive: Receive,
        send: Send,
        cache_header: tuple[bytes, bytes] | None,
    ) -> None:
        """Reserve against the service's budget (which may downgrade or refuse), then answer."""
        if record.service not in self.budgets.rules:
            await self._answer(endpoint, body, request, decision, record, None, receive, send, cache_header)
            return
        decision, reservation = await self.budgets.admit(
            record.service, decision, endpoint, len(body), request
        )
        self._note(record, decision)
        try:
            await self._answer(
                endpoint, body, request, decision, record, reservation, receive, send, cache_header
            )
        finally:
            if reservation is not None:
                reservation.settle(0)  # released, unless booking the answer settled it already

    async def _answer(
        self,
        endpoint: str,
        body: bytes,
        request: RequestText | None,
        decision: Decision,
        record: RequestRecord,
        reservation: Reservation | None,
        receive: Receive,
        send: Send,
        cache_header: tuple[bytes, bytes] | None = None,
    ) -> None:
        # A stream reports its usage only when asked: ask, and take the answer out again.
        sent, strip_usage = body, False
        client = speaker(endpoint)
        if request is not None and request.stream and client is OPENAI_SPEAKER:
            asked = ask_for_usage(body)
            if asked is not None:
                sent, strip_usage = asked, True
        try:
            start, end = jsonscan.value_span(sent, b"model")
        except jsonscan.ScanError as exc:  # JSON msgspec took but the scanner can't walk
            raise BadRequest(f"We could not parse the JSON body of your request: {exc}") from None
        with self.disconnects.watch(receive):
            backend, response, payload, decision, paid = await self._forward_answer(
                decision, endpoint, sent, start, end, request, record
            )
            way = passage(client, backend.dialect)
            if payload is None and way.translated and response.status >= 400:
                payload = await _read_error(response, backend, self.health)  # to translate whole
            record.backend = backend.name
            record.status = response.status
            headers = relayed_headers(
                response.headers, self._added_headers(decision, backend), way.translated
            )
            headers.append(self.request_id(record))
            if cache_header is not None:
                headers.append(cache_header)
                record.cache = cache_header[1].decode()
            watching = client is OPENAI_SPEAKER and self._watching(decision, request, backend)
            if payload is not None:
                if response.status < 400:
                    self._book(record, backend, decision, way.usage(payload), reservation, paid)
                payload = way.answer(payload, response.status)
                if watching and response.status == 200:
                    self._hand_over(decision, endpoint, sent, request, payload, streamed=False)
                await send({"type": "http.response.start", "status": response.status, "headers": headers})
                await send({"type": "http.response.body", "body": payload})
                return
            include_usage = way.translated and not strip_usage and wants_usage(body)
            tap = way.stream(backend.model, include_usage, strip_usage)
            kept: list[bytes] | None = [] if watching and response.status == 200 else None
            whole = False
            try:
                whole = await self._relay_stream(
                    response, headers, send, backend.name, tap, record, client, kept
                )
            finally:
                self.health.finished(backend.name)
                if response.status < 400:
                    self._book(record, backend, decision, tap.usage, reservation)
            if kept is not None and whole:
                self._hand_over(decision, endpoint, sent, request, b"".join(kept), streamed=True)

    # --- answers paid for once ---------------------------------------------------------------

    async def _known_hit(
        self, asked: Asked, received: Received, body: bytes, record: RequestRecord, send: Send
    ) -> bool:
        """Answer a request seen before from the cache, without routing it again: an identical
        request is routed identically, so its decision was remembered the first time. Whether
        it was answered; if so, the next request with the same bytes is a known hit."""
        cache = self.cache
        assert cache is not None
        decision = cache.routes.get(asked.key)
        if decision is None:
            return False
        planned = self.backends[self.health.first(decision.backends)]
        key = cache.answer_key(asked, planned.name, planned.config.model)
        entry = cache.get(key)
        if entry is None:
            return False
        known = self._known(key, entry, decision, asked, _form_of(asked.endpoint, body, _streams(body)))
        cache.known.put(received, known)
        await self._send_hit(known, entry, record, send)
        return True

    async def _answer_known(self, known: KnownHit, record: RequestRecord, send: Send) -> bool:
        """Answer a known hit again, if it still holds: its backend still the one planned
        first, its entry still kept and fresh. Whether it was answered."""
        if self.health.first(known.decision.backends) != known.backend.name:
            return False
        assert self.cache is not None
        entry = self.cache.get(known.answer_key)
        if entry is None:
            return False
        await self._send_hit(known, entry, record, send)
        return True

    def _known(self, key: bytes, entry: Entry, decision: Decision, asked: Asked, form: Form) -> KnownHit:
        """What answering with ``entry`` (kept under ``key``) in ``form`` takes, prepared once."""
        backend = self.backends[entry.backend]
        category, tier = self._labels(decision)
        headers = [*JSON_HEADERS, *self._added_headers(decision, backend), Outcome.HIT.header]
        classification = decision.classification
        row = (
            asked.service,
            backend.name,
            decision.tier,
            classification.category if classification else None,
        )
        prefix = self._id_prefix_of(category, tier)
        return KnownHit(key, backend, decision, form, headers, category, tier, prefix, row)

    async def _cached(
        self,
        mode: Mode,
        asked: Asked,
        endpoint: str,
        body: bytes,
        request: RequestText | None,
        decision: Decision,
        record: RequestRecord,
        receive: Receive,
        send: Send,
    ) -> None:
        """Answer from the cache, or join an identical call in flight, or start one (which keeps
        its answer for the next request)."""
        cache = self.cache
        assert cache is not None
        planned = self.backends[self.health.first(decision.backends)]
        key = cache.answer_key(asked, planned.name, planned.config.model)
        form = _form_of(endpoint, body, request is not None and request.stream)
        flight = None
        if mode is Mode.USE:
            entry = cache.get(key)
            if entry is not None:
                known = self._known(key, entry, decision, asked, form)
                await self._send_hit(known, entry, record, send)
                return
            if cache.dedup:
                flight = cache.flights.get(key)
        first = flight is None
        if flight is None:
            flight = Flight()
            if mode is Mode.USE and cache.dedup:
                cache.flights[key] = flight
            call = _Call(key, asked, planned.name, mode, endpoint, body, request, decision, record)
            flight.task = asyncio.get_running_loop().create_task(self._fly(flight, call))
        flight.join()
        try:
            with self.disconnects.watch(receive):
                await self._serve_flight(flight, first, record, form, send)
        finally:
            flight.leave()
            if flight.subscribers == 0 and not flight.done and cache.flights.get(key) is flight:
                del cache.flights[key]  # abandoned: nobody may join a call being cancelled

    async def _fly(self, flight: Flight, call: _Call) -> None:
        """The upstream call of a flight, in a task of its own: the shared layer, the budget,
        the backends; its answer kept when it is whole."""
        cache = self.cache
        assert cache is not None
        reservation = None
        try:
            decision = call.decision
            if call.mode is Mode.USE and cache.shared is not None:
                entry = await cache.get_shared(call.key)
                if entry is not None and entry.backend in self.backends:
                    self._land(flight, entry, decision)
                    return
            if call.record.service in self.budgets.rules:
                decision, reservation = await self.budgets.admit(
                    call.record.service, decision, call.endpoint, len(call.body), call.request
                )
                self._note(call.record, decision)
                if decision is not call.decision and call.mode is Mode.USE:
                    # Downgraded: the cheaper tier's answer may be kept already.
                    entry = cache.get(
                        self._key_for(call, self.backends[self.health.first(decision.backends)])
                    )
                    if entry is not None:
                        self._land(flight, entry, decision)
                        return
            await self._fetch(flight, call, decision, reservation)
        except ProxyError as exc:
            flight.fail(exc)
        except asyncio.CancelledError:
            flight.fail(BadGateway("the request was cancelled"))
            raise
        except Exception:
            logger.exception("unhandled error fetching an answer to share")
            flight.fail(ProxyError("internal error in tiermux"))
        finally:
            if reservation is not None:
                reservation.settle(0)  # released, unless booking the answer settled it already
            if cache.flights.get(call.key) is flight:
                del cache.flights[call.key]

    async def _fetch(
        self, flight: Flight, call: _Call, decision: Decision, reservation: Reservation | None
    ) -> None:
        body = call.body
        client = speaker(call.endpoint)
        if call.request is not None and call.request.stream and client is OPENAI_SPEAKER:
            body = ask_for_usage(body) or body  # the answer's cost, and the replay's usage chunk
        try:
            start, end = jsonscan.value_span(body, b"model")
        except jsonscan.ScanError as exc:
            raise BadRequest(f"We could not parse the JSON body of your request: {exc}") from None
        backend, response, payload, decision, paid = await self._forward_answer(
            decision, call.endpoint, body, start, end, call.request, call.record
        )
        way = passage(client, backend.dialect)
        status = response.status
        if payload is None and way.translated and status >= 400:
            payload = await _read_error(response, backend, self.health)
        headers = relayed_headers(response.headers, self._added_headers(decision, backend), way.translated)
        watching = (
            client is OPENAI_SPEAKER and status == 200 and self._watching(decision, call.request, backend)
        )
        if payload is not None:
            flight.usage = usage = way.usage(payload) if status < 400 else None
            if status < 400:
                self._book(call.record, backend, decision, usage, reservation, paid)
            payload = way.answer(payload, status)
            flight.answer(Head(status, headers, backend, decision, streamed=False))
            if status == 200 and client.complete(payload):
                self._keep(call, backend, payload, usage)
            flight.finish(payload)
            if watching:
                self._hand_over(decision, call.endpoint, call.body, call.request, payload, streamed=False)
            return
        flight.answer(Head(status, headers, backend, decision, streamed=True))
        # The flight keeps the stream in the client's dialect, with OpenAI's usage chunk (each
        # subscriber's own tap takes it out again for a client that didn't ask for it).
        tap = way.stream(backend.model, True, False)
        broken = None
        try:
            while True:
                try:
                    chunk = await response.read()
                except UpstreamError as exc:
                    logger.warning("stream broken by backend %s: %s", backend.name, exc)
                    self.health.record_failure(backend.name, f"stream broke: {exc}")
                    broken = BadGateway(f"the backend stream broke: {exc}")
                    break
                if not chunk:
                    break
                chunk = tap.feed(chunk)
                if chunk:
                    flight.push(chunk)
                if tap.broken:  # a translation that can't read the stream: the rest won't help
                    break
            chunk = tap.finish()
            if chunk and broken is None and not tap.broken:
                flight.push(chunk)
            if tap.broken and broken is None:
                self.health.record_failure(backend.name, "stream ended before its answer")
                broken = BadGateway("the backend's stream ended before its answer")
        finally:
            response.close()
            self.health.finished(backend.name)
            if status < 400:
                self._book(call.record, backend, decision, tap.usage, reservation)
        flight.usage = tap.usage
        answer = client.assemble(b"".join(flight.chunks)) if status == 200 and broken is None else None
        if answer is not None:
            self._keep(call, backend, answer, tap.usage)
        flight.finish(answer, broken)
        if answer is not None and watching:
            self._hand_over(decision, call.endpoint, call.body, call.request, answer, streamed=False)

    def _land(self, flight: Flight, entry: Entry, decision: Decision) -> None:
        """End a flight with a kept answer instead of a call."""
        backend = self.backends[entry.backend]
        headers = [*JSON_HEADERS, *self._added_headers(decision, backend)]
        flight.answer(Head(200, headers, backend, decision, streamed=False, hit=True))
        flight.usage = entry.usage
        flight.finish(entry.body)

    def _key_for(self, call: _Call, backend: Backend) -> bytes:
        if backend.name == call.planned:
            return call.key
        assert self.cache is not None
        return self.cache.answer_key(call.asked, backend.name, backend.config.model)

    def _keep(self, call: _Call, backend: Backend, answer: bytes, usage: Usage | None) -> None:
        """Keep a whole answer under the key of the backend that gave it (failover or a budget's
        downgrade may have sent the request elsewhere than planned)."""
        assert self.cache is not None
        self.cache.store(self._key_for(call, backend), Entry(answer, backend.name, time.time(), usage))

    async def _serve_flight(
        self, flight: Flight, first: bool, record: RequestRecord, form: Form, send: Send
    ) -> None:
        """Answer one subscriber of a flight, in the form it asked for."""
        cache = self.cache
        assert cache is not None
        head = await flight.head()  # the flight's error, if it failed before any answer
        outcome = Outcome.HIT if head.hit else Outcome.MISS if first else Outcome.DEDUP
        cache.count(outcome)
        record.cache = outcome.name
        record.backend = head.backend.name
        record.status = head.status
        self._note(record, head.decision)
        added = [outcome.header, self.request_id(record)]
        if head.streamed and form.stream:
            await self._fan_out(flight, head, added, form, send, record)
        else:
            await flight.finished()
            payload = flight.payload
            if payload is None and head.status >= 400:  # an error told as a stream: relayed as it came
                await _send_answer(send, head.status, [*head.headers, *added], b"".join(flight.chunks))
            elif payload is None:
                raise flight.broken or BadGateway("the backend's stream could not be read as one answer")
            elif form.stream and head.status == 200:
                await self._send_replay(payload, head.backend, head.decision, form, added, send)
            else:
                headers = head.headers if not head.streamed else self._json_headers(head)
                await _send_answer(send, head.status, [*headers, *added], payload)
        if outcome is not Outcome.MISS and head.status < 400:
            self._book_free(record, head.backend, head.decision, flight.usage)

    async def _fan_out(
        self,
        flight: Flight,
        head: Head,
        added: list[tuple[bytes, bytes]],
        form: Form,
        send: Send,
        record: RequestRecord,
    ) -> None:
        """A stream, chunk by chunk as the flight gets them; the usage chunk only if asked for."""
        tap = form.client.relay_tap(form.include_usage)
        await send({"type": "http.response.start", "status": head.status, "headers": [*head.headers, *added]})
        async for chunk in flight.stream():
            chunk = tap.feed(chunk)
            if chunk:
                if record.first_token is None:
                    self._first_token(record)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if flight.broken is not None:
            event = form.client.error_event(flight.broken)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": tap.finish()})

    async def _send_hit(self, known: KnownHit, entry: Entry, record: RequestRecord, send: Send) -> None:
        """Answer with a kept entry: as JSON, or replayed as the stream the client asked for."""
        assert self.cache is not None
        self.cache.count(Outcome.HIT)
        record.category = known.category
        record.tier = known.tier
        record.backend = known.backend.name
        record.cache = _HIT
        record.status = 200
        booking = known.booking(entry, self.ledger)
        booking.book()
        _count_tokens(record, booking.usage)
        added = [_age_header(entry), self._next_id(record, known.id_prefix)]
        if known.form.stream:
            added.insert(0, Outcome.HIT.header)
            await self._send_replay(entry.body, known.backend, known.decision, known.form, added, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": known.json_headers + added})
        await send({"type": "http.response.body", "body": entry.body})

    async def _send_replay(
        self,
        answer: bytes,
        backend: Backend,
        decision: Decision,
        form: Form,
        added: list[tuple[bytes, bytes]],
        send: Send,
    ) -> None:
        """A JSON answer told as the stream a streaming client asked for."""
        try:
            events = form.client.replay(answer, form.include_usage)
        except ReplayError:  # not a completion object: sent as it is, as a backend would
            headers = [*JSON_HEADERS, *self._added_headers(decision, backend), *added]
            await _send_answer(send, 200, headers, answer)
            return
        headers = [*SSE_HEADERS, *self._added_headers(decision, backend), *added]
        await _send_answer(send, 200, headers, events)

    def _json_headers(self, head: Head) -> list[tuple[bytes, bytes]]:
        return [*JSON_HEADERS, *self._added_headers(head.decision, head.backend)]

    def _book_free(
        self, record: RequestRecord, backend: Backend, decision: Decision, usage: Usage | None
    ) -> None:
        category = decision.classification.category if decision.classification else None
        self.ledger.record_free(record.service, backend.name, decision.tier, category, usage)
        _count_tokens(record, usage)

    def _book(
        self,
        record: RequestRecord,
        backend: Backend,
        decision: Decision,
        usage: Usage | None,
        reservation: Reservation | None,
        paid: int = 0,
    ) -> None:
        """Book an answer in the ledger and settle its reservation at the same cost, together,
        so that the budget's spend and the books never disagree (``paid``: what the request
        already cost before this answer, an unsure answer it was escalated from)."""
        category = decision.classification.category if decision.classification else None
        cost = paid + self.ledger.record(record.service, backend.name, decision.tier, category, usage)
        if reservation is not None:
            reservation.settle(cost)
        _count_tokens(record, usage)
        record.cost = cost

    def _first_token(self, record: RequestRecord) -> None:
        """The first chunk of a stream is about to go out: time to first token."""
        if record.started:
            record.first_token = time.perf_counter() - record.started
            if self.metrics is not None:
                self.metrics.first_token.observe(record.backend, record.first_token)

    def _overrides(self, scope: Scope) -> bytes:
        """The routing headers a request carries, when routing honours them (part of what it asked)."""
        if not self.router.allow_overrides:
            return b""
        return b"\0".join(value for name, value in scope["headers"] if name in _OVERRIDE_HEADERS)

    def _service(self, scope: Scope) -> str:
        """Whom the request is booked to: its key's service; else the service named by the
        ``X-Tiermux-Service`` header (one of the configured ones); else ``default``. A key's
        service can't be overridden by a header."""
        service = scope.get(SERVICE_SCOPE_KEY)
        if service is not None:
            return str(service)
        for name, value in scope["headers"]:
            if name == SERVICE_HEADER:
                named: str = value.decode("latin-1").strip()
                if named not in self.services:
                    raise BadRequest(
                        f"unknown service {named!r} in X-Tiermux-Service", param="x-tiermux-service"
                    )
                return named
        return DEFAULT_SERVICE

    async def _forward(
        self, chain: tuple[str, ...], endpoint: str, body: bytes, start: int, end: int
    ) -> tuple[Backend, h1client.Response, bytes | None]:
        """Try the chain's backends in the order health plans (cheapest up backend first); return
        the first usable answer, and record each outcome for the backend's health.

        Each backend gets the body in its own dialect (translated at most once, when it is
        tried; one that can't take the request is passed over) with the next of its keys that is
        not resting. An answer that says "not now" (429, 503, 529) is tried again, at most the
        backend's ``retry.attempts`` times in all: with another key of the same backend at once
        (429), else on the next backend that can take it, else on the same one after its retry
        policy's pause; when the retries run out, the last such answer is the answer. For a
        non-streaming answer the body is read here too (``payload``), so that a failure while
        reading it still fails over; streams are returned with only their headers read.
        """
        health = self.health
        plan = health.plan(chain)
        outgoing = _Outgoing(endpoint, body, start, end)
        failure: ProxyError | None = None
        refused: tuple[Backend, h1client.Response, bytes] | None = None  # the last "not now"
        retries = 0
        position = 0
        while position < len(plan):
            backend = self.backends[plan[position]]
            sending = outgoing.to(backend)
            if sending is None:  # it can't take the request (see outgoing.refusal)
                position += 1
                continue
            name = backend.name
            target, head, tail, extra = sending
            key = backend.keys.pick()
            if key is None:  # every key of this backend rests after 429s
                wait = backend.keys.wait()
                last = not self._takers_after(plan, position, outgoing)
                pause = backend.retry.pause(retries + 1, wait) if last else None
                if pause is None:
                    failure = RateLimited(f"backend {name!r} is rate limited", wait)
                    position += 1
                else:
                    retries += 1
                    await asyncio.sleep(pause)
                continue
            sent_at = time.monotonic()
            health.started(name)
            try:
                response = await backend.pool.request(
                    backend.serialise("POST", target, head + backend.model_json + tail, extra, key),
                    backend.read_timeout,
                )
            except UpstreamError as exc:
                health.finished(name)
                health.record_failure(name, str(exc))
                failure = _client_error(exc, backend)
                logger.debug("backend %s: %s", name, exc)
                position += 1
                continue
            except BaseException:
                health.finished(name)
                raise
            status = response.status
            if status in RETRY_STATUSES:
                retries += 1
                asked = retry_after(response.headers)
                pause = backend.retry.pause(retries, asked)
                if status == 429:  # the key is limited, not the backend
                    backend.keys.rest(key, asked if asked is not None else pause or DEFAULT_REST)
                    logger.info("backend %s: key #%d rate limited", name, key)
                try:
                    reason = response.take_body() or await response.read_all()
                    refused = (backend, response, reason)
                except UpstreamError as exc:
                    failure = _client_error(exc, backend)
                finally:
                    response.close()
                    health.finished(name)
                again = None  # the pause before this backend is tried again; None: move on
                if retries <= backend.retry.attempts:
                    if status == 429 and backend.keys.wait() == 0.0:
                        again = 0.0  # another of its keys, at once
                    elif not self._takers_after(plan, position, outgoing):
                        again = pause
                if again is None:
                    if status != 429:  # overloaded counts against health once, when given up on
                        health.record_failure(name, f"answered {status}")
                    position += 1
                elif again > 0.0:
                    logger.debug("backend %s answered %d; again in %.2f s", name, status, again)
                    await asyncio.sleep(again)
                continue
            if status >= 500:
                health.record_failure(name, f"answered {status}")
                if status in _FAILOVER_STATUSES and self._takers_after(plan, position, outgoing):
                    logger.debug("backend %s answered %d; trying the next one", name, status)
                    failure = None
                    health.finished(name)
                    with contextlib.suppress(UpstreamError):
                        await response.read_all()  # drain, so the connection stays usable
                    response.close()
                    position += 1
                    continue
            # A translated answer is read whole unless it is an event stream: a JSON answer of
            # unannounced length (chunked) must be translated as JSON, not as events.
            if _is_stream(response) and (response.event_stream or not sending.translated):
                if status < 500:
                    self._answered(name, time.monotonic() - sent_at)
                return backend, response, None  # in flight until the relay ends
            try:
                payload = response.take_body()
                if payload is None:
                    payload = await response.read_all()
            except UpstreamError as exc:
                health.record_failure(name, str(exc))
                failure = _client_error(exc, backend)
                logger.debug("backend %s: %s", name, exc)
                position += 1
                continue
            finally:
                response.close()
                health.finished(name)
            if status < 500:
                self._answered(name, time.monotonic() - sent_at)
            return backend, response, payload
        if refused is not None:
            return refused
        raise failure or outgoing.refusal or BadGateway("no backend of the chain could answer")

    def _takers_after(self, plan: list[str], position: int, outgoing: _Outgoing) -> bool:
        """Whether a backend planned after ``position`` can take the request (translating it for
        them if need be: asked only when a backend failed, not on every request)."""
        return any(outgoing.to(self.backends[name]) is not None for name in plan[position + 1 :])

    async def _forward_answer(
        self,
        decision: Decision,
        endpoint: str,
        body: bytes,
        start: int,
        end: int,
        request: RequestText | None,
        record: RequestRecord,
    ) -> tuple[Backend, h1client.Response, bytes | None, Decision, int]:
        """``_forward``, with the confidence cascade where its category has one: the cheap tier is
        asked for logprobs, and an answer less sure than the rule's threshold is booked and asked
        of the next tier before the client gets anything. Also the decision that answered, and
        what was paid for the unsure answer (0 when there was none)."""
        rule = self._cascade_rule(decision, request) if self._cascading and endpoint != "/messages" else None
        if rule is None:
            backend, response, payload = await self._forward(decision.backends, endpoint, body, start, end)
            return backend, response, payload, decision, 0
        sent = ask_for_logprobs(body)
        span = jsonscan.value_span(sent, b"model") if sent is not None else (start, end)
        backend, response, payload = await self._forward(decision.backends, endpoint, sent or body, *span)
        if payload is None or response.status != 200:
            return backend, response, payload, decision, 0
        sure = confidence(payload, rule.measure)
        higher = self.router.escalated(decision)
        if sure is None or sure >= rule.threshold or higher is None:
            return backend, response, strip_logprobs(payload) if sent is not None else payload, decision, 0
        assert self.quality is not None and decision.classification is not None
        category = decision.classification.category
        paid = self.ledger.record(record.service, backend.name, decision.tier, category, usage_of(payload))
        self.quality.window.count(category, "escalations")
        logger.info("an unsure %s answer (confidence %.2f) was escalated to %s", category, sure, higher.tier)
        backend, response, payload = await self._forward(higher.backends, endpoint, body, start, end)
        return backend, response, payload, higher, paid

    def _cascade_rule(self, decision: Decision, request: RequestText | None) -> CascadeRule | None:
        quality = self.quality
        if quality is None or request is None or request.stream or decision.classification is None:
            return None
        if decision.pinned:
            return None
        rule = quality.settings.cascade.get(decision.classification.category)
        if rule is not None and any(self.backends[name].dialect != OPENAI for name in decision.backends):
            return None  # logprobs come from OpenAI-compatible backends only
        return rule

    def request_id(self, record: RequestRecord) -> tuple[bytes, bytes]:
        """The ``X-Tiermux-Request-Id`` of an answer, made once routing is known: it carries the
        category and tier (so that feedback on it needs no lookup), then this worker's prefix
        and a count (unique across workers and restarts)."""
        return self._next_id(record, self._id_prefix_of(record.category, record.tier))

    def _next_id(self, record: RequestRecord, prefix: str) -> tuple[bytes, bytes]:
        self._answers += 1
        record.request_id = request_id = f"{prefix}{self._answers:x}"
        return (REQUEST_ID_HEADER, request_id.encode())

    def _id_prefix_of(self, category: str, tier: str) -> str:
        """The request ids of answers of ``category`` from ``tier`` start with this (each
        combination is built once: both come from config and fixed sets)."""
        prefix = self._id_prefixes.get((category, tier))
        if prefix is None:
            prefix = self._id_prefixes[(category, tier)] = request_ids.encode(category, tier, self._id_prefix)
        return prefix

    def _watching(self, decision: Decision, request: RequestText | None, backend: Backend) -> bool:
        """Whether the quality safety net wants this answer: a classified request answered by a
        tier it watches (not by the reference itself), or by the tier its promoted category was
        lifted to."""
        quality = self.quality
        if quality is None or request is None or decision.classification is None or decision.pinned:
            return False
        if decision.promoted_from is not None:
            return True
        return decision.tier in quality.watched and backend is not quality.reference

    def _hand_over(
        self,
        decision: Decision,
        endpoint: str,
        body: bytes,
        request: RequestText | None,
        answer: bytes,
        streamed: bool,
    ) -> None:
        quality = self.quality
        assert quality is not None and decision.classification is not None and request is not None
        category = decision.classification.category
        if decision.promoted_from is not None:
            quality.shadow(
                category, decision.promoted_from, endpoint, body, answer, streamed, request.json_mode
            )
        else:
            quality.observe(category, decision.tier, endpoint, body, answer, streamed, request.json_mode)

    def _answered(self, backend: str, seconds: float) -> None:
        self.health.record_success(backend, seconds)
        if self.metrics is not None:
            self.metrics.upstream.observe(backend, seconds)

    async def _relay_stream(
        self,
        response: h1client.Response,
        headers: list[tuple[bytes, bytes]],
        send: Send,
        backend: str,
        tap: StreamTap,
        record: RequestRecord,
        client: Speaker,
        kept: list[bytes] | None = None,
    ) -> bool:
        """Relay chunk by chunk as they arrive, through ``tap`` (keeping what went out in ``kept``
        too); a broken stream ends with an error event in the client's dialect. Whether the
        stream came whole."""
        try:
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            while True:
                try:
                    chunk = await response.read()
                except UpstreamError as exc:
                    logger.warning("stream broken by backend %s: %s", backend, exc)
                    self.health.record_failure(backend, f"stream broke: {exc}")
                    tap.finish()  # its usage, if it came; what it held back is a broken event
                    error = BadGateway(f"the backend stream broke: {exc}")
                    await send({"type": "http.response.body", "body": client.error_event(error)})
                    return False
                if not chunk:
                    break
                chunk = tap.feed(chunk)
                if chunk:
                    if kept is not None:
                        kept.append(chunk)
                    if record.first_token is None:
                        self._first_token(record)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if tap.broken:  # a translation that can't read the stream: the rest won't help
                    break
            rest = tap.finish()
            if tap.broken:  # a translated stream unreadable, or ended before its answer did
                logger.warning("the stream of backend %s ended before its answer", backend)
                self.health.record_failure(backend, "stream ended before its answer")
                rest = client.error_event(BadGateway("the backend's stream ended before its answer"))
            await send({"type": "http.response.body", "body": rest})
            return not tap.broken
        finally:
            response.close()  # an unfinished answer (the client left) costs its connection


class _Sending(tuple[str, bytes, bytes, bytes]):
    """What one backend is sent: its endpoint, the body before and after its ``model`` value,
    and extra header lines; ``translated`` when the body is not the client's."""

    __slots__ = ()
    translated = False


class _Translated(_Sending):
    __slots__ = ()
    translated = True


class _Outgoing:
    """A request as each backend of its chain is sent it: the client's body around its ``model``
    when the backend speaks the client's dialect, else translated, once per backend (a
    translation may depend on the backend's settings). ``to`` is None for a backend that can't
    take the request, and ``refusal`` says why."""

    __slots__ = ("_body", "_client", "_end", "_endpoint", "_extra", "_made", "_start", "refusal")

    def __init__(self, endpoint: str, body: bytes, start: int, end: int) -> None:
        self._endpoint = endpoint
        self._body = body
        self._start = start
        self._end = end
        self._client = client = speaker(endpoint)
        self._extra = _ANTHROPIC_BETA.get() if client is ANTHROPIC_SPEAKER else b""
        self._made: dict[str, _Sending | None] | None = None
        self.refusal: Untranslatable | None = None

    def to(self, backend: Backend) -> _Sending | None:
        made = self._made
        if made is None:
            made = self._made = {}
        elif backend.name in made:
            return made[backend.name]
        sending = made[backend.name] = self._make(backend)
        return sending

    def _make(self, backend: Backend) -> _Sending | None:
        way = passage(self._client, backend.dialect)
        if not way.translated:
            body, start, end = self._body, self._start, self._end
            return _Sending((self._endpoint, body[:start], body[end:], self._extra))
        try:
            if self._extra:
                raise Untranslatable(
                    "anthropic-beta features need an Anthropic backend", param="anthropic-beta"
                )
            target = way.endpoint(self._endpoint)
            body = way.request(self._body, backend.config)
        except Untranslatable as exc:
            self.refusal = self.refusal or exc
            return None
        start, end = jsonscan.value_span(body, b"model")
        return _Translated((target, body[:start], body[end:], b""))


class _Call:
    """What a flight's upstream call needs: the request as it came, as routing saw it."""

    __slots__ = ("asked", "body", "decision", "endpoint", "key", "mode", "planned", "record", "request")

    def __init__(
        self,
        key: bytes,
        asked: Asked,
        planned: str,
        mode: Mode,
        endpoint: str,
        body: bytes,
        request: RequestText | None,
        decision: Decision,
        record: RequestRecord,
    ) -> None:
        self.key = key
        self.asked = asked
        self.planned = planned  # the backend the key names
        self.mode = mode
        self.endpoint = endpoint
        self.body = body
        self.request = request
        self.decision = decision
        self.record = record  # of the request that started the call: it pays for it


async def _read_error(response: h1client.Response, backend: Backend, health: Health) -> bytes:
    """The whole body of an error answer that came as a stream (of unannounced length)."""
    try:
        return await response.read_all()
    except UpstreamError as exc:
        raise _client_error(exc, backend) from None
    finally:
        response.close()
        health.finished(backend.name)


def _anthropic_beta(scope: Scope) -> bytes:
    """The request's ``anthropic-beta`` values as one header line for the backend (b"" if none)."""
    values = [value for name, value in scope["headers"] if name == ANTHROPIC_BETA_HEADER]
    if not values or any(b"\r" in v or b"\n" in v for v in values):
        return b""
    return b"anthropic-beta: " + b",".join(values) + b"\r\n"


def _count_tokens(record: RequestRecord, usage: Usage | None) -> None:
    if usage is not None:
        record.input_tokens = usage.prompt_tokens
        record.output_tokens = usage.completion_tokens


# The Age header of answers kept up to ten minutes, made once.
_AGE_HEADERS = tuple((b"age", str(seconds).encode()) for seconds in range(600))
_HIT = Outcome.HIT.name


def _age_header(entry: Entry) -> tuple[bytes, bytes]:
    seconds = int(time.time() - entry.created)
    if seconds < len(_AGE_HEADERS):
        return _AGE_HEADERS[max(0, seconds)]
    return (b"age", str(seconds).encode())


def _streams(body: bytes) -> bool:
    try:
        start, end = jsonscan.value_span(body, b"stream")
    except jsonscan.ScanError:
        return False
    return body[start:end] == b"true"


def _form_of(endpoint: str, body: bytes, stream: bool) -> Form:
    client = speaker(endpoint)
    return Form(client, stream, stream and client is OPENAI_SPEAKER and wants_usage(body))


async def _send_answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _routing_input(endpoint: str, body: bytes) -> tuple[str | None, RequestText | None]:
    """The ``model`` of a body and, for the endpoints with text to classify, that text.

    Only the JSON itself and ``model`` must be valid here: a body whose messages the classifier
    can't read (a vendor's own content shape, say) is still forwarded, unclassified, and the
    backend judges it, as it did before routing existed.
    """
    try:
        if endpoint == "/chat/completions":
            chat = decode_chat(body)
            return chat.model, from_chat(chat)
        if endpoint == "/messages":
            messages = decode_messages(body)
            return messages.model, from_messages(messages)
        if endpoint == "/completions":
            completion = decode_completion(body)
            return completion.model, from_completion(completion)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise BadRequest(f"We could not parse the JSON body of your request: {exc}") from None
    try:
        return decode_routing_fields(body).model, None
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid request body: {exc}") from None


def _is_stream(response: h1client.Response) -> bool:
    """An answer to relay as it comes: SSE, or any body of unannounced length."""
    return response.event_stream or not response.has_length
