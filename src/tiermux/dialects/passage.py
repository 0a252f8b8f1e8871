"""How a request and its answer cross from a client's dialect to a backend's and back.

A request's endpoint names the client's dialect (``/messages`` is Anthropic's, the others are
OpenAI's); the backend that takes it names its own. When the two are the same, the body goes as
it came (only ``model`` is spliced) and the answer comes back as it was: that is most traffic,
and it pays for no translation. When they differ, the request is translated once per backend
dialect, the answer (JSON, stream or error) on its way back, and the usage is read off what the
backend said, before translation, so that the books count what was really spent.

``Speaker`` is one dialect as a client hears it (what the cache needs to keep and replay its
answers); ``Passage`` is one (client, backend) pair, chosen by :func:`passage`.
"""

from __future__ import annotations

from typing import Protocol

from tiermux.accounting.usage import Usage, UsageTap, usage_of
from tiermux.api.errors import ProxyError
from tiermux.cache import replay as openai_replay
from tiermux.cache.responses import complete as openai_complete
from tiermux.config import BackendConfig
from tiermux.dialects import ANTHROPIC, OPENAI, Dialect, Untranslatable, anthropic_replay
from tiermux.dialects.answers import (
    anthropic_error_from_openai,
    anthropic_error_of,
    chat_completion_from_message,
    message_from_chat_completion,
    openai_error_from_anthropic,
    usage_of_message,
)
from tiermux.dialects.requests import chat_from_messages, messages_from_chat
from tiermux.dialects.streams import ChatFromMessagesStream, MessagesFromChatStream, MessagesUsageTap

__all__ = [
    "ANTHROPIC_SPEAKER",
    "OPENAI_SPEAKER",
    "Form",
    "Passage",
    "Speaker",
    "StreamTap",
    "passage",
    "speaker",
]

MESSAGES = "/messages"
CHAT = "/chat/completions"


class StreamTap(Protocol):
    """What a stream passes through on its way to the client: chunks in, chunks out (the same,
    or translated), and the backend's usage read on the way."""

    @property
    def usage(self) -> Usage | None: ...

    @property
    def broken(self) -> bool:
        """After ``finish``: the stream ended before its answer did (the client is owed an error
        event); a stream relayed as it came is never broken here."""
        ...

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class Speaker:
    """One dialect as a client hears it: how its whole answers are told apart, assembled from a
    stream, replayed as one, and how an error is said inside a stream that has begun."""

    name: Dialect = OPENAI

    def complete(self, answer: bytes) -> bool:
        return openai_complete(answer)

    def assemble(self, stream: bytes) -> bytes | None:
        return openai_replay.assemble(stream)

    def replay(self, answer: bytes, include_usage: bool) -> bytes:
        """The stream of a JSON answer; ``ReplayError`` when it is not an answer object."""
        return openai_replay.replay(answer, include_usage)

    def relay_tap(self, include_usage: bool) -> StreamTap:
        """The tap a stream in this dialect passes to a client of this dialect (the usage chunk
        only for a client that asked for it)."""
        return UsageTap(not include_usage)

    def error_event(self, error: ProxyError) -> bytes:
        return error.sse_event()

    def error_body(self, error: ProxyError) -> bytes:
        return error.body()


class _AnthropicSpeaker(Speaker):
    name: Dialect = ANTHROPIC

    def complete(self, answer: bytes) -> bool:
        return anthropic_replay.message_complete(answer)

    def assemble(self, stream: bytes) -> bytes | None:
        return anthropic_replay.assemble_message(stream)

    def replay(self, answer: bytes, include_usage: bool) -> bytes:
        return anthropic_replay.replay_message(answer)  # its ReplayError is the cache's

    def relay_tap(self, include_usage: bool) -> StreamTap:
        return MessagesUsageTap()  # Anthropic streams always carry their usage

    def error_event(self, error: ProxyError) -> bytes:
        return b"event: error\ndata: " + anthropic_error_of(error) + b"\n\n"

    def error_body(self, error: ProxyError) -> bytes:
        return anthropic_error_of(error)


OPENAI_SPEAKER = Speaker()
ANTHROPIC_SPEAKER = _AnthropicSpeaker()


def speaker(endpoint: str) -> Speaker:
    """The dialect a client speaks, by the endpoint it called."""
    return ANTHROPIC_SPEAKER if endpoint == MESSAGES else OPENAI_SPEAKER


class Form:
    """The form a client asked for: its dialect, a stream or not, and with OpenAI's usage chunk
    or not."""

    __slots__ = ("client", "include_usage", "stream")

    def __init__(self, client: Speaker, stream: bool, include_usage: bool) -> None:
        self.client = client
        self.stream = stream
        self.include_usage = include_usage


class Passage:
    """A client and a backend of the same dialect: nothing to translate."""

    translated = False

    def __init__(self, client: Speaker, backend: Dialect) -> None:
        self.client = client
        self.backend = backend

    def __repr__(self) -> str:
        return f"<Passage {self.client.name} -> {self.backend}>"

    def endpoint(self, endpoint: str) -> str:
        """The backend's endpoint for the client's (``Untranslatable`` when it has none)."""
        return endpoint

    def request(self, body: bytes, backend: BackendConfig) -> bytes:
        """The body in the backend's dialect (``model`` still the client's, to be spliced)."""
        return body

    def usage(self, answer: bytes) -> Usage | None:
        """The usage of a JSON answer as the backend gave it."""
        return usage_of(answer) if self.backend == OPENAI else usage_of_message(answer)

    def answer(self, payload: bytes, status: int) -> bytes:
        """A JSON answer (or error) in the client's dialect."""
        return payload

    def stream(self, model: str, include_usage: bool, strip_usage: bool) -> StreamTap:
        """What the backend's stream goes through to the client: ``include_usage`` says whether
        the client asked for OpenAI's usage chunk, ``strip_usage`` that tiermux asked for it."""
        if self.backend == OPENAI:
            return UsageTap(strip_usage)
        return MessagesUsageTap()


class _ChatToMessages(Passage):
    """An OpenAI client, an Anthropic backend."""

    translated = True

    def endpoint(self, endpoint: str) -> str:
        if endpoint != CHAT:
            raise Untranslatable(f"an Anthropic backend has no {endpoint} endpoint", param="model")
        return MESSAGES

    def request(self, body: bytes, backend: BackendConfig) -> bytes:
        return messages_from_chat(body, backend.default_max_tokens)

    def answer(self, payload: bytes, status: int) -> bytes:
        if status >= 400:
            return openai_error_from_anthropic(status, payload)
        return chat_completion_from_message(payload)

    def stream(self, model: str, include_usage: bool, strip_usage: bool) -> StreamTap:
        return ChatFromMessagesStream(model, include_usage)


class _MessagesToChat(Passage):
    """An Anthropic client, an OpenAI-compatible backend."""

    translated = True

    def endpoint(self, endpoint: str) -> str:
        return CHAT

    def request(self, body: bytes, backend: BackendConfig) -> bytes:
        return chat_from_messages(body)

    def answer(self, payload: bytes, status: int) -> bytes:
        if status >= 400:
            return anthropic_error_from_openai(status, payload)
        return message_from_chat_completion(payload)  # UntranslatableAnswer (502) when it can't

    def stream(self, model: str, include_usage: bool, strip_usage: bool) -> StreamTap:
        return MessagesFromChatStream(model)


_PASSAGES: dict[tuple[str, str], Passage] = {
    (OPENAI, OPENAI): Passage(OPENAI_SPEAKER, OPENAI),
    (OPENAI, ANTHROPIC): _ChatToMessages(OPENAI_SPEAKER, ANTHROPIC),
    (ANTHROPIC, ANTHROPIC): Passage(ANTHROPIC_SPEAKER, ANTHROPIC),
    (ANTHROPIC, OPENAI): _MessagesToChat(ANTHROPIC_SPEAKER, OPENAI),
}


def passage(client: Speaker, backend: str) -> Passage:
    """The passage from a client of ``client``'s dialect to a backend of dialect ``backend``."""
    return _PASSAGES[client.name, backend]
