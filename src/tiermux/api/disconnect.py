"""Notice a client that leaves while its request is being served, and stop working for it.

An LLM answer can take minutes and cost money; a client that has gone should not keep a backend
busy. Once the request body is read, the next ASGI ``receive()`` resolves only with
``http.disconnect``, so :class:`DisconnectWatch` keeps one pending and, when it resolves, cancels
the task serving the request: the upstream exchange is then aborted wherever it stands (waiting
for headers, reading a body, relaying a stream).

Granian's ``receive()`` returns a future-like object, so the watch is a done-callback and costs
no task; other servers return a coroutine, which gets a task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["DisconnectWatch"]


class DisconnectWatch:
    """Cancels the current task when the client disconnects; use as a context manager."""

    __slots__ = ("_pending", "_task", "gone")

    def __init__(self, receive: Callable[[], Awaitable[MutableMapping[str, Any]]]) -> None:
        self.gone = False
        self._task = asyncio.current_task()
        pending: Any = receive()
        if not hasattr(pending, "add_done_callback"):
            pending = asyncio.ensure_future(pending)
        pending.add_done_callback(self._on_message)
        self._pending = pending

    def __repr__(self) -> str:
        return f"<DisconnectWatch gone={self.gone}>"

    def _on_message(self, pending: Any) -> None:
        if pending.cancelled() or pending.exception() is not None:
            return
        if pending.result().get("type") == "http.disconnect" and self._task is not None:
            self.gone = True
            self._task.cancel()

    def __enter__(self) -> DisconnectWatch:
        return self

    def __exit__(self, *exc_info: object) -> bool:
        """Stop watching; swallow the cancellation this watch caused (nobody is left to answer)."""
        self._pending.remove_done_callback(self._on_message)
        self._pending.cancel()
        if self.gone and exc_info[0] is asyncio.CancelledError and self._task is not None:
            self._task.uncancel()
            return True
        return False
