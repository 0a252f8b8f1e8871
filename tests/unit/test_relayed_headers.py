"""Which upstream headers reach the client: end-to-end ones, not hop-by-hop ones, not what a
provider says about the account behind tiermux's key, and no length for a rewritten body."""

from __future__ import annotations

from tiermux.api.headers import relayed_headers

UPSTREAM = [
    (b"content-type", b"application/json"),
    (b"content-length", b"123"),
    (b"connection", b"keep-alive"),
    (b"x-request-id", b"req-1"),
    (b"set-cookie", b"session=abc"),
    (b"openai-organization", b"org-secret"),
    (b"openai-project", b"proj-secret"),
    (b"anthropic-organization-id", b"org-uuid"),
    (b"retry-after", b"3"),
]
ADDED = [(b"x-tiermux-backend", b"claude")]


def test_account_and_hop_by_hop_headers_stay_behind() -> None:
    names = [name for name, _ in relayed_headers(UPSTREAM, ADDED)]
    assert names == [
        b"content-type",
        b"content-length",
        b"x-request-id",
        b"retry-after",
        b"x-tiermux-backend",
    ]


def test_a_translated_answer_loses_the_backends_length() -> None:
    names = [name for name, _ in relayed_headers(UPSTREAM, ADDED, translated=True)]
    assert b"content-length" not in names and b"retry-after" in names
