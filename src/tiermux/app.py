"""The ASGI application: dispatch by path and method, lifespan, and the small endpoints.

Raw ASGI on purpose: no per-request Request/Response objects; the header lists and fixed bodies of
the small endpoints are built once here. Errors raised by a handler (always before its response
starts) become OpenAI-style error JSON; nothing escapes as a stack trace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

import msgspec

from tiermux._speedups import jsonscan
from tiermux.accounting.budget import Budgets
from tiermux.accounting.ledger import Ledger
from tiermux.api.auth import Authenticator
from tiermux.api.errors import BadRequest, MethodNotAllowed, NotFound, ProxyError
from tiermux.api.headers import JSON_HEADERS
from tiermux.api.wire import ModelCard, ModelList, encode_decision
from tiermux.background import close_all
from tiermux.cache.responses import ResponseCache
from tiermux.cache.shared import SharedCache
from tiermux.config import Config, is_loopback, load_config
from tiermux.dialects.passage import ANTHROPIC_SPEAKER
from tiermux.proxy import SERVICE_SCOPE_KEY, ClientDisconnected, Forwarder, Receive, Scope, Send
from tiermux.quality import request_ids
from tiermux.quality.checker import QualityChecker
from tiermux.quality.window import QualityWindow
from tiermux.routing.categories import CATEGORIES
from tiermux.routing.router import Router
from tiermux.state import budget_store, open_segment
from tiermux.state.redis_health import RedisHealthMirror
from tiermux.state.redis_link import RedisLink
from tiermux.state.redis_quality import RedisQuality
from tiermux.telemetry.access_log import AccessLog
from tiermux.telemetry.exposition import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tiermux.telemetry.exposition import render
from tiermux.telemetry.metrics import Metrics
from tiermux.telemetry.record import RECORD_SCOPE_KEY, RequestRecord
from tiermux.upstream.backend import Backend
from tiermux.upstream.health import Health

__all__ = ["CONFIG_ENV", "TiermuxApp", "create_app"]

CONFIG_ENV = "TIERMUX_CONFIG"
HOST_ENV = "TIERMUX_HOST"  # the address ``serve`` listens on (the command line may override config)
ADMIN_PATHS = frozenset({"/stats", "/metrics", "/v1/backends"})
# The proxied endpoints: what the metrics and the access log account for.
PROXIED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages"})
# Where clients speak Anthropic's dialect (its other endpoints too): errors are told in its shape.
ANTHROPIC_PATH = "/v1/messages"
READY_CACHE_SECONDS = 2.0
CLIENT_CLOSED = 499  # the status logged for a client that left before its answer (as nginx does)

logger = logging.getLogger("tiermux")

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class TiermuxApp:
    """tiermux as an ASGI application, built from a validated :class:`Config`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.router = Router(config)
        self.resolver = self.router.resolver
        self.backends = {b.name: Backend(b) for b in config.backends}
        self.segment = open_segment(config)
        self.health = Health(
            self.backends,
            self.segment.cells("health"),
            config.health.failure_threshold,
            config.health.probe_interval,
        )
        capable = config.tiers[self.router.policy.category_tier["reasoning"]][0]
        self.ledger = Ledger(config, self.segment.cells("ledger"), capable)
        # Redis, when configured, shares budgets and health with the other instances.
        self.redis = RedisLink(config.state) if config.state.backend == "redis" else None
        if self.redis is not None:
            self.health.mirror = RedisHealthMirror(self.redis)
        self.budgets = Budgets(config, budget_store(config, self.segment, self.redis), self.ledger.prices())
        shared = (
            SharedCache(self.redis, config.cache.ttl, config.cache.shared_max_entry_bytes)
            if self.redis is not None and config.cache.shared
            else None
        )
        self.cache = ResponseCache(config.cache, self.segment.cells("cache"), shared)
        self.metrics = Metrics(config, self.segment.cells("metrics")) if config.metrics.enabled else None
        if self.metrics is not None:
            cells = {name: self.metrics.in_flight_cell(name) for name in self.backends}
            self.health.publish_in_flight(self.metrics.cells, cells)
        self.access_log = AccessLog(config.access_log.path) if config.access_log.enabled else None
        self._observing = self.metrics is not None or self.access_log is not None
        self.quality: QualityChecker | None = None
        if config.quality.enabled:
            window = QualityWindow(
                self.segment.cells("quality"), config.quality.window, config.quality.window_minutes
            )
            # In distributed mode, the fleet's window in Redis decides and every instance follows.
            fleet = RedisQuality(self.redis, config.quality) if self.redis is not None else None
            self.quality = QualityChecker(
                config, window, self.backends, self.ledger, self.health.first, fleet
            )
            self.router.promoted = window.promoted
        self.forwarder = Forwarder(
            self.router,
            self.backends,
            config.server.max_body_bytes,
            self.health,
            self.ledger,
            self.budgets,
            self.cache,
            self.metrics,
            self.quality,
        )
        # Probes stay open to the orchestrator; /v1 and /stats need a key when keys are set, and
        # the admin endpoints an admin key (or, without admin keys, a loopback listener).
        keys = config.client_keys
        self.authenticator = Authenticator(keys) if keys else None
        admin_keys = config.auth.admin_keys
        self.admin = Authenticator(dict.fromkeys(admin_keys)) if admin_keys else None
        self.admin_open = is_loopback(os.environ.get(HOST_ENV, config.server.host))
        forward = self.forwarder
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": lambda s, r, w: forward("/chat/completions", s, r, w)},
            "/v1/completions": {"POST": lambda s, r, w: forward("/completions", s, r, w)},
            "/v1/embeddings": {"POST": lambda s, r, w: forward("/embeddings", s, r, w)},
            "/v1/messages": {"POST": lambda s, r, w: forward("/messages", s, r, w)},
            "/v1/route": {"POST": self._route},
            "/v1/feedback": {"POST": self._feedback},
            "/v1/models": {"GET": self._models},
            "/v1/backends": {"GET": self._backends},
            "/stats": {"GET": self._stats},
            "/metrics": {"GET": self._metrics},
            "/health": {"GET": self._health},
            "/ready": {"GET": self._ready},
        }
        models = ModelList([ModelCard(name) for name in self.resolver.model_names])
        self._models_body = msgspec.json.encode(models)
        self._ready_at = 0.0

    def __repr__(self) -> str:
        return f"<TiermuxApp backends={list(self.backends)} tiers={list(self.config.tiers)}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        method = scope["method"]
        handlers = self._routes.get(path)
        if handlers is None:
            anthropic = _speaks_anthropic(path)
            await _send_error(send, NotFound(f"Invalid URL ({method} {path})"), None, anthropic)
            return
        handler = handlers.get(method)
        if handler is None:
            allowed = ", ".join(handlers)
            await _send_error(
                send,
                MethodNotAllowed(f"Method {method} not allowed; use {allowed}"),
                [(b"allow", allowed.encode())],
                _speaks_anthropic(path),
            )
            return
        if path not in PROXIED_PATHS:
            await self._dispatch(path, handler, scope, receive, send)
            return
        # A proxied request is timed, and what it turned out to be is counted and logged once its
        # answer is out (or it failed, or the client left). The proxy notes the status it
        # answers with; errors are answered by _dispatch.
        record = RequestRecord(time.perf_counter())
        scope[RECORD_SCOPE_KEY] = record
        error = None
        try:
            error = await self._dispatch(path, handler, scope, receive, send)
        finally:
            if self._observing:
                self._account(record, path, error)

    def _account(self, record: RequestRecord, path: str, error: int | None) -> None:
        seconds = time.perf_counter() - record.started
        if error is not None:
            record.status = error
        elif not record.status:
            record.status = CLIENT_CLOSED  # nothing was sent: the client left first
        if self.metrics is not None:
            self.metrics.request(record.category, record.tier, record.backend, record.status, seconds)
        if self.access_log is not None:
            self.access_log.write(record, path, seconds)

    async def _dispatch(
        self, path: str, handler: Handler, scope: Scope, receive: Receive, send: Send
    ) -> int | None:
        """Run the handler; the status of the error answered in its place, if one was."""
        try:
            if path in ADMIN_PATHS:
                self._check_admin(scope)
            elif self.authenticator is not None and path.startswith("/v1/"):
                scope[SERVICE_SCOPE_KEY] = self.authenticator.check(scope["headers"])
            await handler(scope, receive, send)
        except ClientDisconnected:
            return None
        except ProxyError as exc:
            # Handlers raise ProxyError only before their response starts; once a stream has
            # begun, they report failures in-band themselves.
            await _send_error(send, exc, self._request_id(scope), _speaks_anthropic(path))
            return exc.status
        except Exception:
            logger.exception("unhandled error serving %s %s", scope["method"], path)
            error = ProxyError("internal error in tiermux")
            with contextlib.suppress(Exception):  # the response may already have started
                await _send_error(send, error, None, _speaks_anthropic(path))
            return error.status
        return None

    def _request_id(self, scope: Scope) -> list[tuple[bytes, bytes]] | None:
        """The request id header of a proxied request's error answer (errors carry one too)."""
        record = scope.get(RECORD_SCOPE_KEY)
        return None if record is None else [self.forwarder.request_id(record)]

    def _check_admin(self, scope: Scope) -> None:
        """Admin endpoints: an admin key when there are admin keys; else only on a loopback
        listener (with a client key, when there are client keys)."""
        if self.admin is not None:
            self.admin.check(scope["headers"])
        elif not self.admin_open:
            raise _AdminClosed(
                "The admin endpoints of a tiermux listening beyond loopback need an admin key: "
                "set auth.admin_keys."
            )
        elif self.authenticator is not None:
            self.authenticator.check(scope["headers"])

    # --- small endpoints -----------------------------------------------------------------------

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, self._models_body)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The routing decision for a chat (or completion) body, without calling a backend."""
        body = await self.forwarder.receive_body(receive)
        endpoint = "/completions" if _is_completion(body) else "/chat/completions"
        decision = self.forwarder.decide(endpoint, body, scope)
        first = self.backends[self.health.first(decision.backends)]  # where it would go now
        confidence = self.router.tier_confidence(decision)
        await _send_json(send, 200, encode_decision(decision, first.name, first.config.model, confidence))

    async def _feedback(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A client's score of an answer (by its ``X-Tiermux-Request-Id``), added to its
        category's quality window when that answer came from a tier the safety net checks."""
        body = await self.forwarder.receive_body(receive)
        try:
            feedback = _decode_feedback(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BadRequest(f"Invalid feedback: {exc}") from None
        named = request_ids.decode(feedback.request_id)
        if named is None or named[0] not in CATEGORIES:
            raise BadRequest("request_id is not one tiermux gave", param="request_id")
        category, tier = named
        quality = self.quality
        recorded = quality is not None and tier in quality.watched
        if recorded:
            assert quality is not None
            quality.feedback(category, feedback.score)
        answer = {
            "object": "tiermux.feedback",
            "request_id": feedback.request_id,
            "category": category,
            "recorded": recorded,  # false: that tier's answers are not what the safety net checks
        }
        await _send_json(send, 200, msgspec.json.encode(answer))

    async def _backends(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Each backend's health, shared by every worker of this serve."""
        body = msgspec.json.encode({"object": "list", "data": self.health.snapshot()})
        await _send_json(send, 200, body)

    async def _stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Requests, tokens, spend and savings, summed over every worker of this serve, and the
        state of today's budgets."""
        stats = self.ledger.snapshot()
        stats["budgets"] = await self.budgets.snapshot()
        stats["cache"] = self.cache.snapshot()
        if self.quality is not None:
            stats["quality"] = self.quality.window.snapshot()
        await _send_json(send, 200, msgspec.json.encode(stats))

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Prometheus metrics, summed over every worker of this serve."""
        if self.metrics is None:
            raise NotFound("metrics are disabled (metrics.enabled: false)")
        window = self.quality.window if self.quality is not None else None
        body = await render(self.metrics, self.ledger, self.health, self.cache, self.budgets, window)
        await _send_json(send, 200, body, [(b"content-type", METRICS_CONTENT_TYPE)])

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, b'{"status":"ok"}')

    async def _ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Ready when at least one backend accepts a connection (checked at most every 2 s)."""
        now = time.monotonic()
        if now - self._ready_at > READY_CACHE_SECONDS:
            for backend in self.backends.values():
                if await backend.pool.probe():
                    self._ready_at = now
                    break
        if now - self._ready_at <= READY_CACHE_SECONDS:
            await _send_json(send, 200, b'{"status":"ready"}')
        else:
            await _send_error(send, _NotReady("no backend is reachable"))

    # --- lifespan ------------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.health.start()
                if self.quality is not None:
                    self.quality.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        """Stop the background work, then close what it used: Redis once nothing talks to it any
        more, the upstream pools last. A step that fails is logged and the rest still run."""
        steps: list[Callable[[], object]] = [self.health.close, self.cache.aclose]
        if self.quality is not None:
            steps.append(self.quality.aclose)
        if self.metrics is not None:
            steps.append(self.metrics.release_slot)
        if self.access_log is not None:
            steps.append(self.access_log.close)
        if self.redis is not None:
            steps += [self.budgets.drain, self.redis.aclose]
        steps.append(lambda: self.segment.close(remove=False))  # the segment is its serve's to remove
        steps.append(self.forwarder.disconnects.close)
        steps += [backend.aclose for backend in self.backends.values()]
        await close_all(steps)


class _Feedback(msgspec.Struct, forbid_unknown_fields=True):
    request_id: str
    score: Annotated[float, msgspec.Meta(ge=0, le=1)]


_decode_feedback = msgspec.json.Decoder(_Feedback).decode


class _AdminClosed(ProxyError):
    status = 403
    type = "invalid_request_error"
    code = "admin_key_required"


class _NotReady(ProxyError):
    status = 503
    type = "server_error"
    code = "not_ready"


async def _send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or JSON_HEADERS})
    await send({"type": "http.response.body", "body": body})


async def _send_error(
    send: Send, error: ProxyError, extra: list[tuple[bytes, bytes]] | None = None, anthropic: bool = False
) -> None:
    """An error answer, in OpenAI's shape or, for a client of Anthropic's dialect, in its."""
    if error.headers:
        extra = [*(extra or ()), *error.headers]
    body = ANTHROPIC_SPEAKER.error_body(error) if anthropic else error.body()
    await _send_json(send, error.status, body, JSON_HEADERS + extra if extra else None)


def _speaks_anthropic(path: str) -> bool:
    return path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/")


def _is_completion(body: bytes) -> bool:
    """A legacy completion body has a ``prompt`` and no ``messages`` (a body that is not a JSON
    object is left for the chat decoder to refuse)."""
    try:
        return jsonscan.value_span(body, b"messages")[0] < 0 and jsonscan.value_span(body, b"prompt")[0] >= 0
    except jsonscan.ScanError:
        return False


def create_app(config_path: str | None = None) -> TiermuxApp:
    """Build the app from ``config_path`` or the file named by ``$TIERMUX_CONFIG`` (Granian's factory)."""
    path = config_path or os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"no config: pass a path or set {CONFIG_ENV}")
    return TiermuxApp(load_config(path))
