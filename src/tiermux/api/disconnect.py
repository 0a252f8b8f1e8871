"""Notice a client that leaves while its request is being served, and stop working for it.

An LLM answer can take minutes and cost money; a client that has gone should not keep a backend
busy. Once the request body is read, the next ASGI ``receive()`` resolves only with
``http.disconnect``, so a watch keeps one pending and, when it resolves, cancels the task serving
the request: the upstream exchange is then aborted wherever it stands (waiting for headers,
reading a body, relaying a stream).

Watching is not free (on Granian, ``receive()`` sets up a waiter on the Rust side), and most
fast answers are done long before a departure could matter. So watches are armed per tick, not
per request: :class:`DisconnectWatcher` tracks the requests in flight and, every
``ARM_AFTER`` seconds, arms the ones older than that. A request answered sooner costs a set
insertion and removal.

Granian's ``receive()`` returns a future-like object, so an armed watch is a done-callback and
costs no task; other servers return a coroutine, which gets a task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ARM_AFTER", "DisconnectWatch", "DisconnectWatcher"]

ARM_AFTER = 0.05

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class DisconnectWatch:
    """One request's watch; a context manager that swallows the cancellation it caused."""

    __slots__ = ("_pending", "_receive", "_task", "_watcher", "gone", "since")

    def __init__(self, watcher: DisconnectWatcher, receive: Receive, since: float) -> None:
        self.gone = False
        self.since = since
        self._watcher = watcher
        self._receive = receive
        self._task = asyncio.current_task()
        self._pending: Any = None

    def __repr__(self) -> str:
        state = "gone" if self.gone else "armed" if self._pending is not None else "waiting"
        return f"<DisconnectWatch {state}>"

    @property
    def armed(self) -> bool:
        return self._pending is not None

    def arm(self) -> None:
        """Start listening for the client's departure."""
        if self._pending is not None:
            return
        pending: Any = self._receive()
        if not hasattr(pending, "add_done_callback"):
            pending = asyncio.ensure_future(pending)
        pending.add_done_callback(self._on_message)
        self._pending = pending

    def _on_message(self, pending: Any) -> None:
        if pending.cancelled() or pending.exception() is not None:
            return
        if pending.result().get("type") == "http.disconnect" and self._task is not None:
            self.gone = True
            self._task.cancel()

    def __enter__(self) -> DisconnectWatch:
        self._watcher._add(self)
        return self

    def __exit__(self, *exc_info: object) -> bool:
        self._watcher._discard(self)
        pending = self._pending
        if pending is not None:
            pending.remove_done_callback(self._on_message)
            pending.cancel()
        if self.gone and exc_info[0] is asyncio.CancelledError and self._task is not None:
            self._task.uncancel()
            return True
        return False


class DisconnectWatcher:
    """The requests in flight in one worker, and the tick that arms their watches."""

    def __init__(self, arm_after: float = ARM_AFTER) -> None:
        self.arm_after = arm_after
        self._watches: set[DisconnectWatch] = set()
        self._ticker: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<DisconnectWatcher in_flight={len(self._watches)}>"

    def watch(self, receive: Receive) -> DisconnectWatch:
        """A watch for the current request; use it as ``with watcher.watch(receive):``."""
        return DisconnectWatch(self, receive, asyncio.get_running_loop().time())

    def _add(self, watch: DisconnectWatch) -> None:
        self._watches.add(watch)
        if self._ticker is None:
            loop = asyncio.get_running_loop()
            self._ticker = loop.call_later(self.arm_after, self._tick, loop)

    def _discard(self, watch: DisconnectWatch) -> None:
        self._watches.discard(watch)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = loop.time() - self.arm_after
        for watch in self._watches:
            if not watch.armed and watch.since <= deadline:
                watch.arm()
        self._ticker = loop.call_later(self.arm_after, self._tick, loop) if self._watches else None

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
