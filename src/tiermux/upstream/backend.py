"""A configured backend, ready for the hot path: its pool and its request head, precomputed.

Everything that does not change between requests (request line, ``Host``, each API key's header,
static headers, the model name as JSON) is serialised once here, so that forwarding a request is
one concatenation of bytes.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import msgspec

from tiermux import __version__
from tiermux._speedups import h1client
from tiermux.config import BackendConfig, read_api_keys
from tiermux.upstream.errors import UpstreamError
from tiermux.upstream.keys import KeyRing
from tiermux.upstream.pool import ConnectionPool, Origin
from tiermux.upstream.retry import RetryPolicy

__all__ = ["Backend"]

_USER_AGENT = f"tiermux/{__version__}".encode()


class Backend:
    """One model endpoint: name, model, dialect, pool, keys and precomputed request heads."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.name = config.name
        self.model = config.model
        self.dialect = config.type
        self.retry = RetryPolicy(config.retry)
        self.model_json = msgspec.json.encode(config.model)
        self.read_timeout = config.timeout.read
        url = urlsplit(config.base_url)
        scheme = url.scheme
        host = url.hostname or ""
        port = url.port or (443 if scheme == "https" else 80)
        self.origin = Origin(scheme, host, port, verify_tls=config.verify_tls, ca_file=config.ca_file)
        self.pool = ConnectionPool(
            self.origin,
            max_connections=config.max_connections,
            idle_timeout=config.idle_timeout,
            connect_timeout=config.timeout.connect,
        )
        self.base_path = url.path.rstrip("/")
        default_port = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
        host_header = host if default_port else f"{host}:{port}"
        if ":" in host and not default_port:  # an IPv6 literal needs its brackets back
            host_header = f"[{host}]:{port}"
        lines = [f"Host: {host_header}".encode(), b"User-Agent: " + _USER_AGENT]
        if self.dialect == "anthropic":
            lines.append(f"anthropic-version: {config.anthropic_version}".encode())
        lines.extend(f"{name}: {value}".encode() for name, value in config.headers.items())
        self._fixed_headers = b"\r\n".join(lines) + b"\r\n"
        # One header line per key, chosen per request (a backend without a key has one, empty).
        keys = read_api_keys(config)
        key_header = "x-api-key: {}\r\n" if self.dialect == "anthropic" else "Authorization: Bearer {}\r\n"
        self._key_lines = [key_header.format(key).encode() for key in keys] or [b""]
        self.keys = KeyRing(len(self._key_lines))
        self._request_lines: dict[tuple[str, str], bytes] = {}

    def __repr__(self) -> str:
        return f"<Backend {self.name} model={self.model} {self.origin!r}>"

    def _request_line(self, method: str, endpoint: str) -> bytes:
        key = (method, endpoint)
        line = self._request_lines.get(key)
        if line is None:
            line = f"{method} {self.base_path}{endpoint} HTTP/1.1\r\n".encode()
            self._request_lines[key] = line
        return line

    def serialise(
        self, method: str, endpoint: str, body: bytes, extra_headers: bytes = b"", key: int = 0
    ) -> bytes:
        """The complete request for ``endpoint`` (relative to ``base_url``, e.g. ``/chat/completions``),
        with key number ``key`` of the backend's keys."""
        length = b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body) if body else b""
        return b"".join(
            (
                self._request_line(method, endpoint),
                self._fixed_headers,
                self._key_lines[key],
                extra_headers,
                length,
                b"\r\n",
                body,
            )
        )

    async def probe(self, timeout: float | None = None) -> bool:
        """Whether the backend answers a real request (``GET .../models``, with its key) with a
        status below 500 within ``timeout`` (default: its connect timeout plus up to 10 s)."""
        if timeout is None:
            timeout = self.config.timeout.connect + min(self.read_timeout, 10.0)
        try:
            async with asyncio.timeout(timeout):
                response = await self.send("GET", "/models", b"")
                try:
                    await response.read_all()
                finally:
                    response.close()
        except (TimeoutError, UpstreamError):
            return False
        return response.status < 500

    async def send(
        self, method: str, endpoint: str, body: bytes, extra_headers: bytes = b""
    ) -> h1client.Response:
        """Send a request (with the next key that is not resting) and return the answer once
        its headers are in."""
        key = self.keys.pick()
        return await self.pool.request(
            self.serialise(method, endpoint, body, extra_headers, key or 0), self.read_timeout
        )

    async def aclose(self) -> None:
        await self.pool.aclose()
