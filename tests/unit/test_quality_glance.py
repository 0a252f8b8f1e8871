"""The glance every watched answer gets on the hot path: whether its bytes look like they may fail a
cheap check (then it is checked in the background whatever the sample says)."""

from __future__ import annotations

import json

import pytest

from tiermux.quality.checker import _suspect


def chat(content: str | None) -> bytes:
    message = {"role": "assistant", "content": content}
    return json.dumps({"object": "chat.completion", "choices": [{"index": 0, "message": message}]}).encode()


def completion(text: str) -> bytes:
    return json.dumps({"object": "text_completion", "choices": [{"index": 0, "text": text}]}).encode()


def stream(*pieces: str) -> bytes:
    events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    events += [{"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in pieces]
    return b"".join(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events)


@pytest.mark.parametrize(
    ("answer", "streamed", "suspect"),
    [
        (chat("Paris is the capital of France."), False, False),
        (chat(""), False, True),  # no text at all
        (chat(None), False, True),
        (b'{"error": {"message": "overloaded"}}', False, True),
        (chat("Sorry, I can't help with that."), False, True),
        (chat("I CANNOT do this."), False, True),  # any case
        (chat("As an AI language model, I have no opinions."), False, True),
        (chat("I'm unable to browse the web."), False, True),
        (chat("x" * 400 + " sorry"), False, False),  # past the opening: an aside, not a refusal
        (completion("def add(a, b): return a + b"), False, False),
        (completion("I cannot complete that."), False, True),
        (stream("The ", "answer ", "is 4."), True, False),
        (stream("I'm ", "sorry, ", "but I can't ", "help."), True, True),  # spread over events
        (stream(), True, True),  # only the empty first delta
        (b'{"choices":[{"message":{"content": "spaced key, fine"}}]}', False, False),
        (chat("I won't write that."), False, True),
        (chat("I must respectfully decline."), False, True),
        (chat("I\u2019m not able to share that."), False, True),  # the right single quote
        (json.dumps({"choices": [{"message": {"content": "I\u2019m unable to."}}]}).encode(), False, True),
        (
            json.dumps(
                {"choices": [{"message": {"content": "I\u2019m unable to."}}]}, ensure_ascii=False
            ).encode(),
            False,
            True,
        ),
        (chat("I can help: here is the plan."), False, False),  # "I can" is not "I can't"
    ],
)
def test_what_a_glance_flags(answer: bytes, streamed: bool, suspect: bool) -> None:
    assert _suspect(answer, streamed) is suspect
