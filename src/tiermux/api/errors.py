"""Errors a client can see, each rendered as OpenAI-style error JSON.

Every failure inside tiermux ends as one of these classes at the ASGI boundary, so a client only
ever reads ``{"error": {"message", "type", "param", "code"}}`` with a fitting status, never a trace.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "BadGateway",
    "BadRequest",
    "ClientError",
    "GatewayTimeout",
    "MethodNotAllowed",
    "ModelNotFound",
    "NotFound",
    "PayloadTooLarge",
    "ProxyError",
    "RateLimited",
    "ServiceUnavailable",
    "UpstreamFailure",
]


class _ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail


_encode = msgspec.json.Encoder().encode


class ProxyError(Exception):
    """Base class: ``status``, OpenAI error ``type`` and ``code``, and a message for the client."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers  # extra response headers (``retry-after``, say)
        if code is not None:
            self.code = code

    def body(self) -> bytes:
        return _encode(_ErrorBody(_ErrorDetail(self.message, self.type, self.param, self.code)))

    def sse_event(self) -> bytes:
        """The error as one server-sent event, for streams whose status line is already sent."""
        return b"data: " + self.body() + b"\n\n"


class ClientError(ProxyError):
    status = 400
    type = "invalid_request_error"


class BadRequest(ClientError):
    pass


class NotFound(ClientError):
    status = 404


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(ClientError):
    status = 413
    code = "request_too_large"


class RateLimited(ProxyError):
    """Every key of the backends that could answer is resting after the provider's 429s."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: float) -> None:
        seconds = str(max(1, int(retry_after + 0.999))).encode()
        super().__init__(message, headers=[(b"retry-after", seconds)])


class UpstreamFailure(ProxyError):
    """No backend of the chain produced an answer."""

    type = "upstream_error"


class BadGateway(UpstreamFailure):
    status = 502
    code = "bad_gateway"


class ServiceUnavailable(UpstreamFailure):
    status = 503
    code = "service_unavailable"


class GatewayTimeout(UpstreamFailure):
    status = 504
    code = "upstream_timeout"
