"""One worker's connection to the Redis that several tiermux instances share, and whether it is
usable right now.

A failed call marks Redis away for ``state.retry_interval`` seconds: during that time no call is
attempted (callers use their local fallback at once instead of waiting on a dead socket), and the
outage is logged loudly, once, when it starts and when it ends. Passwords in the URL never reach a
log line: Redis is named by host and port only.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any
from urllib.parse import urlsplit

from tiermux.config import StateConfig

__all__ = ["RedisLink", "redis_errors"]

logger = logging.getLogger("tiermux.state")

POOL_SIZE = 64  # connections per worker; callers past it wait for one (never open thousands)


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis call raises when Redis, not the caller, is at fault."""
    from redis.exceptions import ConnectionError, TimeoutError

    return (ConnectionError, TimeoutError, OSError)


class RedisLink:
    def __init__(self, config: StateConfig) -> None:
        try:
            import redis.asyncio as redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:  # pragma: no cover - the extra is installed with tiermux[redis]
            raise RuntimeError(
                "state.backend redis needs the redis package: pip install 'tiermux[redis]'"
            ) from None
        assert config.url is not None
        self.config = config
        self.prefix = config.prefix
        url = urlsplit(config.url)
        self.where = f"{url.hostname or url.path}:{url.port or 6379}" if url.hostname else url.path
        self.pool = pool = redis.BlockingConnectionPool.from_url(
            config.url,
            max_connections=POOL_SIZE,
            timeout=max(5.0, config.timeout),  # waiting for a free connection is not a failure
            socket_timeout=config.timeout,
            socket_connect_timeout=config.timeout,
            retry=Retry(NoBackoff(), 0),  # a failure falls back at once; retries are ours
        )
        self.client: Any = redis.Redis(connection_pool=pool)
        self.errors = redis_errors()
        self._away_until = 0.0
        self._away_since = 0.0
        self.closed = False

    def __repr__(self) -> str:
        return f"<RedisLink {self.where} {'away' if self.away else 'up'}>"

    @property
    def away(self) -> bool:
        """Whether Redis failed recently enough that calls are not even attempted."""
        return self._away_until > time.monotonic()

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def failed(self, exc: BaseException) -> None:
        if self.closed:
            return
        now = time.monotonic()
        first = self._away_since == 0.0
        self._away_until = now + self.config.retry_interval
        if first:
            self._away_since = now
            fallback = (
                "budgets and health are this machine's own"
                if self.config.on_failure == "local"
                else "requests of services with a budget are refused (on_failure: closed)"
            )
            logger.error(
                "Redis at %s is unreachable (%s): %s until it answers again; retrying every %gs",
                self.where,
                type(exc).__name__,
                fallback,
                self.config.retry_interval,
            )

    def succeeded(self) -> None:
        if self._away_since and not self.closed:
            logger.warning(
                "Redis at %s answers again after %.1fs; budgets and health are shared again",
                self.where,
                time.monotonic() - self._away_since,
            )
            self._away_since = 0.0
            self._away_until = 0.0

    async def aclose(self) -> None:
        # Away for good: callers check, so none opens a connection again (a call after the
        # pool's disconnect would reconnect, and leave the connection open past the loop).
        self.closed = True
        self._away_until = math.inf
        await self.client.aclose()
        await self.pool.disconnect()  # the client does not own a pool it was given
