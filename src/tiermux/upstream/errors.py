"""What can go wrong talking to a backend. Both h1client twins raise these very classes."""

from __future__ import annotations

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "ReadTimeout",
    "RemoteProtocolError",
    "UpstreamError",
]


class UpstreamError(Exception):
    """Base class. ``response_started`` tells whether any byte of the answer had arrived."""

    response_started = False


class ConnectError(UpstreamError):
    """The TCP or TLS connection could not be made."""


class ConnectTimeout(ConnectError):
    """The connection was not made within the backend's connect timeout."""


class ReadTimeout(UpstreamError):
    """The backend was silent for longer than its read timeout."""


class ConnectionClosed(UpstreamError):
    """The backend closed or reset the connection before the answer was complete."""


class RemoteProtocolError(UpstreamError):
    """The backend's answer was not valid HTTP/1.1."""
