"""One upstream call shared by every identical request that arrives while it runs.

The call runs in a task of its own, not in the task of the request that started it: it belongs to
everyone waiting for it. The first request to leave does not cancel it; the last one does (nobody
is left to pay it for). Every subscriber, the first included, reads the same outcome:

* the answer's head (status, headers, who answered) once it is known, or the error that ended the
  call before any answer (every subscriber gets that same error: they asked the same thing of the
  same backend at the same moment, and asking it again N times would only pile onto a backend
  that is failing);
* a JSON answer whole, or a stream chunk by chunk as it arrives (a late subscriber first gets
  what it missed), and whether the stream broke.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tiermux.accounting.usage import Usage
    from tiermux.api.errors import ProxyError
    from tiermux.routing.router import Decision
    from tiermux.upstream.backend import Backend

__all__ = ["Flight", "Head"]


class Head:
    """What every subscriber answers with: the status and headers of the answer, the backend
    that gave it, the decision that sent it there, and whether it streams."""

    __slots__ = ("backend", "decision", "headers", "hit", "status", "streamed")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        backend: Backend,
        decision: Decision,
        streamed: bool,
        hit: bool = False,
    ) -> None:
        self.status = status
        self.headers = headers
        self.backend = backend
        self.decision = decision
        self.streamed = streamed
        self.hit = hit  # answered from the shared cache, not by a backend


class Flight:
    __slots__ = ("_head", "_wake", "broken", "chunks", "done", "payload", "subscribers", "task", "usage")

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._head: asyncio.Future[Head] = loop.create_future()
        self._wake: asyncio.Future[None] = loop.create_future()
        self.chunks: list[bytes] = []
        self.payload: bytes | None = None  # a JSON answer, or a stream assembled into one
        self.broken: ProxyError | None = None
        self.done = False
        self.subscribers = 0
        self.task: asyncio.Task[None] | None = None
        self.usage: Usage | None = None  # what the call cost: what each other subscriber saved

    def __repr__(self) -> str:
        state = "done" if self.done else "flying"
        return f"<Flight {state} subscribers={self.subscribers} chunks={len(self.chunks)}>"

    # --- the call's side ---------------------------------------------------------------------

    def answer(self, head: Head) -> None:
        if not self._head.done():
            self._head.set_result(head)

    def fail(self, error: BaseException) -> None:
        """The call ended before an answer: every subscriber gets ``error``."""
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: nobody subscribed is not an unhandled error
        self.finish()

    def push(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self._notify()

    def finish(self, payload: bytes | None = None, broken: ProxyError | None = None) -> None:
        self.payload = payload
        self.broken = broken
        self.done = True
        self._notify()

    def _notify(self) -> None:
        wake, self._wake = self._wake, asyncio.get_running_loop().create_future()
        wake.set_result(None)

    # --- the subscribers' side ---------------------------------------------------------------

    def join(self) -> None:
        self.subscribers += 1

    def leave(self) -> None:
        """One subscriber is gone; the last one to leave an unfinished call cancels it."""
        self.subscribers -= 1
        if self.subscribers == 0 and not self.done and self.task is not None:
            self.task.cancel()

    async def head(self) -> Head:
        return await asyncio.shield(self._head)

    async def stream(self) -> AsyncIterator[bytes]:
        """Every chunk from the first, as they come, until the call is done."""
        sent = 0
        while True:
            while sent < len(self.chunks):
                yield self.chunks[sent]
                sent += 1
            if self.done:
                return
            await asyncio.shield(self._wake)

    async def finished(self) -> None:
        while not self.done:
            await asyncio.shield(self._wake)
