from tiermux.accounting.usage import Usage

__all__ = ["MAX_EVENT_BYTES", "ChatFromMessagesStream", "MessagesFromChatStream", "MessagesUsageTap"]

MAX_EVENT_BYTES: int

class _Translation:
    usage: Usage | None
    complete: bool
    errored: bool
    broken: bool
    def feed(self, chunk: bytes) -> bytes: ...
    def finish(self) -> bytes: ...

class MessagesFromChatStream(_Translation):
    def __init__(self, model: str, message_id: str | None = None) -> None: ...
    def error_event(self, status: int, message: str) -> bytes: ...

class ChatFromMessagesStream(_Translation):
    include_usage: bool
    def __init__(
        self, model: str, include_usage: bool, completion_id: str | None = None, created: int | None = None
    ) -> None: ...
    def error_event(self, status: int, message: str) -> bytes: ...

class MessagesUsageTap:
    usage: Usage | None
    @property
    def broken(self) -> bool: ...
    def feed(self, chunk: bytes) -> bytes: ...
    def finish(self) -> bytes: ...
