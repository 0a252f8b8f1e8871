"""Which upstream response headers reach the client, and the ones tiermux adds."""

from __future__ import annotations

__all__ = ["JSON_HEADERS", "SSE_HEADERS", "relayed_headers"]

# Hop-by-hop headers (RFC 9110 section 7.6.1) and the ones the serving layer writes itself.
_NOT_RELAYED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"date",
        b"server",
        # what a provider says about the account behind tiermux's key is not the client's
        b"set-cookie",
        b"openai-organization",
        b"openai-project",
        b"anthropic-organization-id",
    }
)

JSON_HEADERS: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
]


# A translated answer has another body than the backend's: its length is the server's to write.
_NOT_RELAYED_TRANSLATED = _NOT_RELAYED | {b"content-length"}


def relayed_headers(
    upstream: list[tuple[bytes, bytes]], added: list[tuple[bytes, bytes]], translated: bool = False
) -> list[tuple[bytes, bytes]]:
    """The upstream's end-to-end headers (names already lower-case), then ``added``."""
    dropped = _NOT_RELAYED_TRANSLATED if translated else _NOT_RELAYED
    headers = [header for header in upstream if header[0] not in dropped]
    headers.extend(added)
    return headers
