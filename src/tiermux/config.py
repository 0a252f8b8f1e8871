"""Configuration: YAML in, validated msgspec Structs out.

Loading is three steps, each with its own way to fail, and every failure names the file and the
field path (``$.backends[1].price.input``):

1. YAML is parsed (syntax errors carry the line and column);
2. ``${VAR}`` and ``${VAR:-default}`` are expanded in every string, where the path is still known;
3. the tree is converted to Structs (unknown keys and wrong types are rejected by msgspec), then the
   cross-references that types can't express are checked (tiers name backends, aliases name tiers).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import yaml

__all__ = [
    "AuthConfig",
    "BackendConfig",
    "BudgetConfig",
    "BudgetsConfig",
    "Config",
    "ConfigError",
    "Price",
    "RetryConfig",
    "RoutingConfig",
    "ServerConfig",
    "ServiceConfig",
    "StateConfig",
    "Timeouts",
    "exposure_problem",
    "is_loopback",
    "load_config",
    "parse_config",
]

KiB = 1024
MiB = 1024 * 1024
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigError(Exception):
    """A configuration that tiermux refuses to start with; ``str()`` names the file and field."""

    def __init__(self, source: str, path: str, message: str) -> None:
        self.source = source
        self.path = path
        self.message = message
        where = f"{source}: at {path}: " if path else f"{source}: "
        super().__init__(where + message)


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Base of every config Struct: a typo in a key is an error, not a silently ignored setting."""


Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
Score = Annotated[int, msgspec.Meta(ge=0, le=100)]

AUTO = "auto"  # the model name (and alias target) that asks tiermux to choose
DEFAULT_SERVICE = "default"  # whom requests are booked to when neither a key nor a header says


class ServerConfig(_Strict, frozen=True):
    """Where and how tiermux listens."""

    host: str = "127.0.0.1"
    port: Port = 8080
    workers: PositiveInt | None = None
    """Worker processes; ``None`` means one per CPU."""
    max_body_bytes: PositiveInt = 16 * MiB
    allow_unauthenticated: bool = False
    """Serve a non-loopback address without ``auth.keys``; off, because that is an open relay."""
    drain_timeout: PositiveFloat = 30.0
    """Seconds in-flight requests get to finish after SIGTERM before workers are killed."""
    backlog: PositiveInt = 1024


class Price(_Strict, frozen=True):
    """USD per one million tokens."""

    input: NonNegativeFloat = 0.0
    output: NonNegativeFloat = 0.0
    cached_input: NonNegativeFloat | None = None
    """Input tokens the backend reports as cached (``prompt_tokens_details.cached_tokens``);
    the ``input`` price when unset."""


class Timeouts(_Strict, frozen=True):
    """Seconds. ``read`` bounds the silence between two reads, not the whole answer."""

    connect: PositiveFloat = 5.0
    read: PositiveFloat = 300.0


class RetryConfig(_Strict, frozen=True):
    """Retries of a request a backend turned away for now (429, 529, 503) before its answer
    began: another of its keys at once, else another backend of the chain, else the same
    backend again after a jittered, growing pause."""

    attempts: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    """Retries per request, beyond the first try of each backend."""
    backoff: PositiveFloat = 0.5
    """Seconds of the first pause; each retry doubles it, and a random share of it is waited."""
    max_backoff: PositiveFloat = 8.0
    """The longest pause, also for a ``retry-after``: one asking longer is not waited for."""


class BackendConfig(_Strict, frozen=True):
    """One model endpoint. ``base_url`` is what the SDK of its ``type`` would take (``.../v1``)."""

    name: str
    base_url: str
    model: str
    type: Literal["openai", "anthropic"] = "openai"
    """``openai``: Chat Completions (vLLM, Ollama, OpenAI, any compatible API); ``anthropic``:
    Anthropic's Messages API. Requests in the other dialect are translated both ways."""
    api_key: str = ""
    api_keys: list[str] = []
    """Several keys (``${VAR}`` only), used in turn; a key answered 429 rests for its
    ``retry-after``."""
    api_key_file: str | None = None
    """A secrets file with the key (or several, one per line)."""
    anthropic_version: str = "2023-06-01"
    """The ``anthropic-version`` header of an ``anthropic`` backend's requests."""
    default_max_tokens: PositiveInt = 4096
    """``max_tokens`` of a request translated for an ``anthropic`` backend that set none (the
    Messages API requires one)."""
    retry: RetryConfig = RetryConfig()
    price: Price = Price()
    timeout: Timeouts = Timeouts()
    max_connections: PositiveInt = 256
    idle_timeout: PositiveFloat = 60.0
    verify_tls: bool = True
    ca_file: str | None = None
    headers: dict[str, str] = {}

    def __repr__(self) -> str:  # the key must never reach a log line
        keys = ["***"] * (len(self.api_keys) + bool(self.api_key))
        return (
            f"BackendConfig(name={self.name!r}, type={self.type!r}, base_url={self.base_url!r}, "
            f"model={self.model!r}, api_keys={keys})"
        )


class ClassifierConfig(_Strict, frozen=True):
    """The request classifier behind ``model: "auto"``."""

    enabled: bool = True
    """Off: ``auto`` and aliases go to ``default_tier`` (or the alias's tier) unclassified."""
    weights: str | None = None
    """A weights file written by ``tiermux train``; the bundled model when unset."""


class RoutingConfig(_Strict, frozen=True):
    """How a request picks a tier: by the ``model`` it names and, for ``auto``, by its task."""

    default_tier: str | None = None
    """Tier for requests that are not classified (embeddings; ``auto`` with the classifier off);
    the first tier when unset."""
    aliases: dict[str, str] = {}
    """Model names clients may send: ``auto`` (classified) or a tier, the lowest one the request
    may use (classified, and lifted to that tier when the classifier picks a cheaper one)."""
    classifier: ClassifierConfig = ClassifierConfig()
    categories: dict[str, str] = {}
    """Category to tier. Unset categories: extraction, classification, summarisation, rewriting
    and open_qa go to the first tier; the other four to the second (or the first if there is only
    one)."""
    min_confidence: Probability = 0.63
    """A request classified with less confidence goes to ``uncertain_tier`` (if that is dearer)."""
    uncertain_tier: str | None = None
    """Where uncertain requests go; unset: the tier of ``reasoning``."""
    lift_score: Score | None = 80
    """A complexity score at or above this lifts the request one tier; null turns lifting off."""
    signal_tiers: dict[str, str] | None = None
    """Signal to the lowest tier a request with it may use; unset: ``tools`` and ``image`` go at
    least to the tier of ``reasoning`` (cheap local models rarely call tools or see images well)."""
    allow_header_override: bool = False
    """Honour the ``X-Tiermux-Tier`` and ``X-Tiermux-Category`` request headers."""


class HealthConfig(_Strict, frozen=True):
    """When a backend counts as down, and how often down backends are probed again."""

    failure_threshold: PositiveInt = 3
    """Consecutive failures (connection error, timeout, 5xx) that mark a backend down."""
    probe_interval: PositiveFloat = 5.0
    """Seconds between probes of a down backend; one that connects is up again."""


class BudgetConfig(_Strict, frozen=True):
    """A service's daily spending limit, and what happens to requests that would pass it."""

    daily_usd: NonNegativeFloat
    """USD the service may spend per day (days start at midnight in ``budgets.timezone``)."""
    policy: Literal["downgrade", "reject"] = "downgrade"
    """``downgrade``: a request whose worst case no longer fits goes to ``downgrade_tier`` if it
    fits there; ``reject`` (or nothing fits): 429 ``budget_exceeded``."""
    downgrade_tier: str | None = None
    """The cheaper tier over-budget requests go to; the first tier when unset."""


class ServiceConfig(_Strict, frozen=True):
    """A tenant of tiermux: requests with one of its keys are booked to it."""

    keys: list[str] = []
    """Client keys (``${VAR}`` only) that identify this service; they are client keys too."""
    budget: BudgetConfig | None = None


class BudgetsConfig(_Strict, frozen=True):
    """What every service's budget shares."""

    timezone: str = "UTC"
    """The IANA zone whose midnight starts a new budget day."""
    assumed_output_tokens: PositiveInt = 4096
    """Output tokens reserved for a request that sets no ``max_tokens``."""


class StateConfig(_Strict, frozen=True):
    """Where budgets and backend health are kept: in this machine's shared memory (``local``),
    or in Redis, shared by every tiermux instance that names the same ``url`` and ``prefix``."""

    backend: Literal["local", "redis"] = "local"
    url: str | None = None
    """``redis://[:password@]host:port/db`` (``${VAR}`` works for the password)."""
    prefix: str = "tiermux"
    """Namespace of the keys; instances with the same prefix share budgets and health."""
    on_failure: Literal["local", "closed"] = "local"
    """When Redis can't be reached: go on with this machine's state and warn (``local``), or
    refuse requests of services with a budget with 503 until it is back (``closed``)."""
    timeout: PositiveFloat = 1.0
    """Seconds a Redis call may take before it counts as a failure."""
    retry_interval: PositiveFloat = 2.0
    """Seconds between attempts to reach Redis again after a failure."""


class CacheConfig(_Strict, frozen=True):
    """The exact response cache and the deduplication of identical requests in flight.

    Only a byte-for-byte equivalent request (same service, backend, model, conversation and
    every parameter that changes the answer) is answered from the cache: never a merely similar
    one. By default only requests whose answer is reproducible are cached (``temperature: 0``, or
    a ``seed``); embeddings always are."""

    enabled: bool = True
    ttl: PositiveFloat = 300.0
    """Seconds an answer is served from the cache."""
    max_bytes: PositiveInt = 64 * MiB
    """Bytes of answers each worker keeps; the least recently used go first."""
    max_entry_bytes: PositiveInt = 1 * MiB
    """Answers larger than this are not kept."""
    only_deterministic: bool = True
    """Cache only reproducible requests; off, sampled answers are replayed too."""
    dedup: bool = True
    """Identical requests in flight at the same time share one upstream call."""
    shared: bool = False
    """Share answers with every instance through the Redis of ``state`` (needs ``backend: redis``)."""
    shared_max_entry_bytes: PositiveInt = 256 * KiB
    """Answers larger than this stay in the worker's own cache."""


class CascadeRule(_Strict, frozen=True):
    """Ask the cheap tier for logprobs; an answer less sure than ``threshold`` is asked of the
    next tier before the client gets anything."""

    threshold: Annotated[float, msgspec.Meta(le=0)]
    """Log-probability (e.g. -0.5): the answer's confidence below this escalates it."""
    measure: Literal["mean", "min"] = "mean"
    """The answer's confidence: the mean of its tokens' logprobs, or the least sure token's."""


class QualityConfig(_Strict, frozen=True):
    """The quality safety net: a share of the answers of tiers cheaper than the ``reference``
    backend's is asked again of that backend after the client has its answer, in the background,
    and scored against its answer; a category whose windowed score falls below ``threshold`` is
    promoted to the next tier until it recovers."""

    enabled: bool = False
    reference: str | None = None
    """The backend whose answers count as right (required when enabled)."""
    sample_rate: Probability = 0.05
    """Share of cheap answers checked; answers that fail a cheap check (empty, a refusal, not
    the JSON asked for) are always checked."""
    sample_rates: dict[str, Probability] = {}
    """Per-category shares, overriding ``sample_rate``."""
    threshold: Probability = 0.6
    """A category whose windowed mean score falls below this is promoted."""
    hysteresis: Probability = 0.1
    """A promoted category returns when its score is back above ``threshold`` plus this."""
    window: PositiveInt = 50
    """The last N scores of a category..."""
    window_minutes: PositiveFloat = 60.0
    """...that are younger than this."""
    min_samples: PositiveInt = 10
    """Scores a window needs before it can promote or return a category."""
    shadow_rate: Probability = 0.25
    """While a category is promoted, the share of its requests also asked of its own tier in
    the background, to see whether that tier has recovered."""
    queue_size: PositiveInt = 256
    """Checks waiting per worker; past this they are dropped (and counted), never waited for."""
    concurrency: PositiveInt = 2
    """Reference calls in flight per worker."""
    busy_lag_ms: NonNegativeFloat = 1.0
    """A worker whose event loop runs what is due this late (smoothed) is busy serving requests
    until the lag is back under half of it: it takes on at most ``busy_checks_per_second`` checks
    and sheds the rest (counted); 0 never sheds."""
    busy_checks_per_second: NonNegativeFloat = 2.0
    """Checks a busy worker still takes on, so that a fully loaded proxy keeps watching quality."""
    service: str = "quality"
    """The service reference calls are booked to (it shows in /stats and budgets like any other)."""
    judge: bool = False
    """Score by asking the reference to grade the cheap answer against its own (a fixed rubric,
    one more reference call per sample) instead of by text agreement."""
    cascade: dict[str, CascadeRule] = {}
    """Categories whose non-streaming cheap answers are escalated when unsure (by logprobs)."""


class MetricsConfig(_Strict, frozen=True):
    """``GET /metrics`` (Prometheus text), an admin endpoint like ``/stats``."""

    enabled: bool = True


class AccessLogConfig(_Strict, frozen=True):
    """One JSON line per proxied request (no prompt, answer or key in it)."""

    enabled: bool = False
    path: str | None = None
    """Append to this file; standard output when unset."""


class AuthConfig(_Strict, frozen=True):
    """Who may use tiermux: clients send one of ``keys`` as ``Authorization: Bearer`` (or ``x-api-key``)."""

    keys: list[str] = []
    admin_keys: list[str] = []
    """Keys (``${VAR}`` only) for the admin endpoints (``/stats``, ``/metrics``, ``/v1/backends``); without
    them, those are served on a loopback address only."""


class Config(_Strict, frozen=True):
    """The whole file."""

    backends: list[BackendConfig]
    tiers: dict[str, list[str]]
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    routing: RoutingConfig = RoutingConfig()
    health: HealthConfig = HealthConfig()
    services: dict[str, ServiceConfig] = {}
    budgets: BudgetsConfig = BudgetsConfig()
    state: StateConfig = StateConfig()
    cache: CacheConfig = CacheConfig()
    quality: QualityConfig = QualityConfig()
    metrics: MetricsConfig = MetricsConfig()
    access_log: AccessLogConfig = AccessLogConfig()

    @property
    def client_keys(self) -> dict[str, str | None]:
        """Every client key, with the service it identifies (None: the default service)."""
        keys: dict[str, str | None] = dict.fromkeys(self.auth.keys)
        for name, service in self.services.items():
            keys.update(dict.fromkeys(service.keys, name))
        return keys

    @property
    def default_tier(self) -> str:
        return self.routing.default_tier or next(iter(self.tiers))

    @property
    def service_names(self) -> list[str]:
        """Every service, ``default`` first (it may be configured too, for its budget)."""
        names = [DEFAULT_SERVICE, *(name for name in self.services if name != DEFAULT_SERVICE)]
        if self.quality.enabled and self.quality.service not in names:
            names.append(self.quality.service)
        return names

    @property
    def budget_rules(self) -> dict[str, BudgetConfig]:
        return {name: s.budget for name, s in self.services.items() if s.budget is not None}


# --- step 2: environment expansion -------------------------------------------------------------

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# Where secrets live: a literal there would end up in version control and in config dumps.
_SECRET_PATH = re.compile(
    r"\$\.backends\[\d+\]\.api_keys?(\[\d+\])?|\$\.auth\.(admin_)?keys\[\d+\]|\$\.services\.[^.]+\.keys\[\d+\]"
)


# Files named in the config are found relative to the config file, wherever tiermux was started.
_FILE_PATH = re.compile(
    r"\$\.backends\[\d+\]\.(api_key_file|ca_file)|\$\.routing\.classifier\.weights|\$\.access_log\.path"
)


def _expand(node: Any, path: str, env: Mapping[str, str], source: str) -> Any:
    if isinstance(node, str) and node and "${" not in node and _SECRET_PATH.fullmatch(path):
        raise ConfigError(
            source, path, "API keys are read from the environment: write ${VAR} (or use api_key_file)"
        )
    if isinstance(node, dict):
        return {key: _expand(value, f"{path}.{key}", env, source) for key, value in node.items()}
    if isinstance(node, list):
        return [_expand(item, f"{path}[{i}]", env, source) for i, item in enumerate(node)]
    if isinstance(node, str) and _FILE_PATH.fullmatch(path):
        expanded = _substitute(node, path, env, source)
        base = Path(source).parent if source and not source.startswith("<") else Path()
        return str(base / expanded) if expanded and not Path(expanded).is_absolute() else expanded
    return _substitute(node, path, env, source)


def _substitute(node: Any, path: str, env: Mapping[str, str], source: str) -> Any:
    if isinstance(node, str) and "${" in node:

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = env.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    raise ConfigError(source, path, f"environment variable {name} is not set")
                return default
            return value

        return _REFERENCE.sub(substitute, node)
    return node


# --- step 3: cross-references ------------------------------------------------------------------


def _check_references(config: Config, source: str) -> None:
    seen: set[str] = set()
    for i, backend in enumerate(config.backends):
        where = f"$.backends[{i}]"
        if backend.name in seen:
            raise ConfigError(source, f"{where}.name", f"duplicate backend name {backend.name!r}")
        seen.add(backend.name)
        url = urlsplit(backend.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(
                source, f"{where}.base_url", f"expected an http:// or https:// URL, got {backend.base_url!r}"
            )
        secrets = [("api_key", backend.api_key)]
        secrets += [(f"api_keys[{j}]", key) for j, key in enumerate(backend.api_keys)]
        for header, value in [
            *secrets,
            *backend.headers.items(),
            ("anthropic_version", backend.anthropic_version),
        ]:
            if "\r" in value or "\n" in value or "\r" in header or "\n" in header:
                field = header if header.startswith(("api_key", "anthropic")) else f"headers.{header}"
                raise ConfigError(source, f"{where}.{field}", "line breaks are not allowed in header values")
        for j, key in enumerate(backend.api_keys):
            if not key:
                raise ConfigError(
                    source, f"{where}.api_keys[{j}]", "empty key (is its environment variable set?)"
                )
        given = [name for name in ("api_key", "api_keys", "api_key_file") if getattr(backend, name)]
        if len(given) > 1:
            raise ConfigError(
                source, f"{where}.{given[-1]}", "set one of api_key, api_keys and api_key_file, not several"
            )
        if backend.api_key_file and not Path(backend.api_key_file).is_file():
            raise ConfigError(source, f"{where}.api_key_file", f"no such file: {backend.api_key_file}")
    if not config.backends:
        raise ConfigError(source, "$.backends", "at least one backend is required")
    if not config.tiers:
        raise ConfigError(source, "$.tiers", "at least one tier is required")
    for tier, chain in config.tiers.items():
        if not chain:
            raise ConfigError(source, f"$.tiers.{tier}", "a tier needs at least one backend")
        for j, name in enumerate(chain):
            if name not in seen:
                raise ConfigError(source, f"$.tiers.{tier}[{j}]", f"unknown backend {name!r}")
    problem = exposure_problem(config, config.server.host)
    if problem:
        raise ConfigError(source, "$.server.host", problem)
    for i, key in enumerate(config.auth.keys):
        if not key:
            raise ConfigError(source, f"$.auth.keys[{i}]", "empty key (is its environment variable set?)")
    for i, key in enumerate(config.auth.admin_keys):
        if not key:
            raise ConfigError(
                source, f"$.auth.admin_keys[{i}]", "empty key (is its environment variable set?)"
            )
        if key in config.client_keys:
            raise ConfigError(source, f"$.auth.admin_keys[{i}]", "an admin key must not be a client key too")
    seen_keys = set(config.auth.keys)
    for name, service in config.services.items():
        where = f"$.services.{name}"
        if not name:
            raise ConfigError(source, where, "a service needs a name")
        if name == DEFAULT_SERVICE and service.keys:
            raise ConfigError(
                source,
                f"{where}.keys",
                f"{DEFAULT_SERVICE!r} serves requests without a service key; it has no keys of its own",
            )
        downgrade_tier = service.budget.downgrade_tier if service.budget is not None else None
        if downgrade_tier is not None and downgrade_tier not in config.tiers:
            raise ConfigError(source, f"{where}.budget.downgrade_tier", f"unknown tier {downgrade_tier!r}")
        for i, key in enumerate(service.keys):
            if not key:
                raise ConfigError(
                    source, f"{where}.keys[{i}]", "empty key (is its environment variable set?)"
                )
            if key in seen_keys:
                raise ConfigError(
                    source, f"{where}.keys[{i}]", "this key is already given to another service"
                )
            seen_keys.add(key)
    _check_budgets_state_cache_and_log(config, source)
    routing = config.routing
    if routing.default_tier is not None and routing.default_tier not in config.tiers:
        raise ConfigError(source, "$.routing.default_tier", f"unknown tier {routing.default_tier!r}")
    if AUTO in config.tiers:
        raise ConfigError(
            source, f"$.tiers.{AUTO}", f"{AUTO!r} is the name of classified routing; name the tier otherwise"
        )
    for alias, tier in routing.aliases.items():
        if tier != AUTO and tier not in config.tiers:
            raise ConfigError(source, f"$.routing.aliases.{alias}", f"expected auto or a tier, got {tier!r}")
    _check_routing_policy(config, source)


def _check_budgets_state_cache_and_log(config: Config, source: str) -> None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(config.budgets.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            source,
            "$.budgets.timezone",
            f"unknown time zone {config.budgets.timezone!r} (expected e.g. UTC, Europe/Paris)",
        ) from None
    state = config.state
    if state.backend == "redis":
        if not state.url:
            raise ConfigError(
                source, "$.state.url", "the redis state backend needs a url (redis://host:port/db)"
            )
        url = urlsplit(state.url)
        if url.scheme not in ("redis", "rediss", "unix") or not (url.hostname or url.path):
            raise ConfigError(
                source, "$.state.url", "expected redis://host:port/db, rediss://… or unix://path"
            )
    elif state.url:
        raise ConfigError(source, "$.state.url", "a url is only used with backend: redis")
    if not state.prefix or any(c in state.prefix for c in " {}\r\n"):
        raise ConfigError(source, "$.state.prefix", "expected a non-empty name without spaces or braces")
    from tiermux.routing.categories import CATEGORIES

    quality = config.quality
    if quality.enabled:
        names = {backend.name for backend in config.backends}
        if quality.reference is None:
            raise ConfigError(
                source, "$.quality.reference", "name the reference backend (required when enabled)"
            )
        if quality.reference not in names:
            raise ConfigError(source, "$.quality.reference", f"unknown backend {quality.reference!r}")
    for field, by_category in (("cascade", quality.cascade), ("sample_rates", quality.sample_rates)):
        for category in by_category:
            if category not in CATEGORIES:
                raise ConfigError(
                    source,
                    f"$.quality.{field}.{category}",
                    f"unknown category; expected one of {', '.join(CATEGORIES)}",
                )
    log = config.access_log.path
    if config.access_log.enabled and log is not None and not Path(log).parent.is_dir():
        raise ConfigError(source, "$.access_log.path", f"the directory of {log!r} does not exist")
    if config.cache.shared and state.backend != "redis":
        raise ConfigError(
            source, "$.cache.shared", "the shared cache lives in the Redis of state: set state.backend: redis"
        )


def _check_routing_policy(config: Config, source: str) -> None:
    from tiermux.routing.categories import CATEGORIES, SIGNALS

    routing = config.routing
    for category, tier in routing.categories.items():
        if category not in CATEGORIES:
            raise ConfigError(
                source,
                f"$.routing.categories.{category}",
                f"unknown category; expected one of {', '.join(CATEGORIES)}",
            )
        if tier not in config.tiers:
            raise ConfigError(source, f"$.routing.categories.{category}", f"unknown tier {tier!r}")
    if routing.uncertain_tier is not None and routing.uncertain_tier not in config.tiers:
        raise ConfigError(source, "$.routing.uncertain_tier", f"unknown tier {routing.uncertain_tier!r}")
    for signal, tier in (routing.signal_tiers or {}).items():
        if signal not in SIGNALS:
            raise ConfigError(
                source,
                f"$.routing.signal_tiers.{signal}",
                f"unknown signal; expected one of {', '.join(SIGNALS)}",
            )
        if tier not in config.tiers:
            raise ConfigError(source, f"$.routing.signal_tiers.{signal}", f"unknown tier {tier!r}")
    weights = routing.classifier.weights
    if weights is not None and not Path(weights).is_file():
        raise ConfigError(source, "$.routing.classifier.weights", f"no such file: {weights}")


def exposure_problem(config: Config, host: str) -> str | None:
    """Why serving ``host`` with this config would be an open relay, or ``None`` if it isn't."""
    if config.client_keys or config.server.allow_unauthenticated or is_loopback(host):
        return None
    return (
        f"listening on {host} without auth.keys lets anyone who reaches it spend your backends' "
        "API keys; set auth.keys, or server.allow_unauthenticated: true if a gateway in front authenticates"
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _locate(error: msgspec.ValidationError) -> tuple[str, str]:
    """Split msgspec's ``"message - at `$.path`"`` into ``(path, message)``."""
    text = str(error)
    message, sep, where = text.rpartition(" - at ")
    if not sep:
        return "$", text
    return where.strip("`"), message


def _name_the_key(tree: dict[str, Any], path: str) -> str:
    """msgspec writes ``$.services[...].budget`` for a value inside a mapping; find which key's
    value fails (by converting the tree with only that entry), so the message names it."""
    head, sep, rest = path.partition("[...]")
    if not sep:
        return path
    parts = head.removeprefix("$.").split(".")
    parent: Any = tree
    for part in parts[:-1]:
        parent = parent.get(part) if isinstance(parent, dict) else None
    mapping = parent.get(parts[-1]) if isinstance(parent, dict) else None
    if not isinstance(mapping, dict):
        return path
    for key, value in mapping.items():
        parent[parts[-1]] = {key: value}
        try:
            msgspec.convert(tree, Config, strict=False)
        except msgspec.ValidationError as exc:
            if _locate(exc)[0] == path:
                return f"{head}.{key}{rest}"
        finally:
            parent[parts[-1]] = mapping
    return path


def parse_config(text: str, source: str = "<config>", env: Mapping[str, str] | None = None) -> Config:
    """Parse YAML text into a validated :class:`Config`, or raise :class:`ConfigError`."""
    try:
        tree = yaml.load(text, Loader=_YAML_LOADER)  # a safe loader (libyaml when built)
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"invalid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(source, "$", "expected a mapping at the top level")
    tree = _expand(tree, "$", os.environ if env is None else env, source)
    try:
        # strict=False lets "${PORT:-8080}" (a string) fill an int field; types are still checked.
        config = msgspec.convert(tree, Config, strict=False)
    except msgspec.ValidationError as exc:
        path, message = _locate(exc)
        raise ConfigError(source, _name_the_key(tree, path), message) from None
    _check_references(config, source)
    return config


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at ``path``."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    return parse_config(text, source, env)


def read_api_keys(backend: BackendConfig) -> list[str]:
    """The backend's keys, from the environment (already expanded) or its secrets file (one per
    line; blank lines and ``#`` comments are skipped). Empty when it has none."""
    if backend.api_key_file:
        lines = Path(backend.api_key_file).read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if backend.api_keys:
        return list(backend.api_keys)
    return [backend.api_key] if backend.api_key else []
