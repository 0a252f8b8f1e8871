"""What both directions of translation share: how stop reasons, error types and token usage of
one dialect read in the other."""

from __future__ import annotations

from tiermux.accounting.usage import PromptDetails, Usage

__all__ = [
    "ANTHROPIC_ERROR_TYPES",
    "FINISH_REASON_OF_STOP",
    "STOP_REASON_OF_FINISH",
    "anthropic_error_type",
    "openai_error_type",
    "usage_of_anthropic",
]

# Anthropic ``stop_reason`` -> OpenAI ``finish_reason``.
FINISH_REASON_OF_STOP: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
    "model_context_window_exceeded": "length",
}

# OpenAI ``finish_reason`` -> Anthropic ``stop_reason`` (``stop`` is ``stop_sequence`` instead when
# the backend names the sequence that matched, as vLLM does with ``stop_reason``).
STOP_REASON_OF_FINISH: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# HTTP status -> Anthropic error ``type`` (https://docs.anthropic.com/en/api/errors).
ANTHROPIC_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """The Anthropic error type that fits an HTTP status."""
    known = ANTHROPIC_ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if status < 500 else "api_error"


def openai_error_type(status: int) -> str:
    """The OpenAI error type that fits an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def usage_of_anthropic(
    input_tokens: int, output_tokens: int, cache_read: int = 0, cache_creation: int = 0
) -> Usage:
    """Anthropic's usage as OpenAI counts it: prompt tokens include the cached ones (Anthropic's
    ``input_tokens`` leaves out both what was read from and what was written to its cache)."""
    prompt = input_tokens + cache_read + cache_creation
    return Usage(prompt, output_tokens, PromptDetails(cache_read) if cache_read else None)
