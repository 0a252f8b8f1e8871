"""Client authentication: which API keys may use tiermux.

Keys are held as SHA-256 digests, so that a lookup costs the same whatever the key and the plain
keys don't sit in worker memory longer than start-up. Clients send ``Authorization: Bearer KEY``
(the OpenAI SDK) or ``x-api-key: KEY`` (the Anthropic SDK).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from tiermux.api.errors import ProxyError

__all__ = ["Authenticator", "InvalidApiKey"]


class InvalidApiKey(ProxyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class Authenticator:
    """Checks a request's headers against the configured client keys, and says whose key it is."""

    def __init__(self, keys: Mapping[str, str | None]) -> None:
        self._digests = {_digest(key.encode()): service for key, service in keys.items()}

    def __repr__(self) -> str:
        return f"<Authenticator keys={len(self._digests)}>"

    def check(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The service of the key the headers carry (None: a key of no service); raise
        :class:`InvalidApiKey` unless it is a configured key."""
        presented = None
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = token.strip()
                break
            if name == b"x-api-key":
                presented = value.strip()
                break
        if presented is None:
            raise InvalidApiKey("Missing API key: send it as 'Authorization: Bearer KEY'.")
        digest = _digest(presented)
        if digest not in self._digests:
            raise InvalidApiKey("Incorrect API key provided.")
        return self._digests[digest]
