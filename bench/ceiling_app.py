"""The ceiling of the Python serving layer: a raw ASGI app that answers one fixed body, no upstream.

``python -m bench.ceiling_app --port P --workers N`` serves it under Granian with the options
``tiermux serve`` uses (ASGI interface, uvloop, the same backlog, kill timeout and respawning), so
that the only difference from tiermux is what runs inside the worker. Every request has its body
read to the end and gets the same answer: the bytes of the file named by ``BENCH_CEILING_BODY``
(the harness writes tiermux's cached answer there, so that both send as many bytes), with
``BENCH_CEILING_CONTENT_TYPE`` as content type; without them, a small built-in chat completion.

A cache hit can't be cheaper than this on the same server: reading the request and writing a
stored answer is all this does. ``bench/cache.py`` measures the two side by side.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["BODY_ENV", "CONTENT_TYPE_ENV", "create_app", "main"]

BODY_ENV = "BENCH_CEILING_BODY"
CONTENT_TYPE_ENV = "BENCH_CEILING_CONTENT_TYPE"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_BODY = (
    b'{"id":"chatcmpl-ceiling","object":"chat.completion","created":1700000000,"model":"qwen-9b",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"The customer wants to know what '
    b'label created means and when the order will arrive."},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":64,"completion_tokens":16,"total_tokens":80}}'
)


def create_app() -> App:
    """The app, built once per worker: the answer and its headers exist before the first request,
    so that a request costs only what the server itself costs."""
    path = os.environ.get(BODY_ENV)
    body = Path(path).read_bytes() if path else DEFAULT_BODY
    content_type = os.environ.get(CONTENT_TYPE_ENV, "application/json").encode("latin-1")
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # Read the body as a proxy must (a client's request is consumed before the answer).
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                if not message.get("more_body", False):
                    break
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the app with tiermux's Granian options (``tiermux.server.serve``), its defaults for
    backlog and drain timeout taken from tiermux's own config so that the two stay alike."""
    import math

    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    from tiermux.config import ServerConfig

    defaults = ServerConfig()
    parser = argparse.ArgumentParser(
        prog="python -m bench.ceiling_app", description="A fixed JSON answer under Granian, no upstream."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--log-level", default="warning", choices=[level.value for level in LogLevels])
    args = parser.parse_args(argv)
    server = Server(
        "bench.ceiling_app:create_app",
        factory=True,
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        loop=Loops.uvloop,
        workers=args.workers,
        backlog=defaults.backlog,
        workers_kill_timeout=max(1, math.ceil(defaults.drain_timeout)),
        respawn_failed_workers=True,
        log_level=LogLevels(args.log_level),
    )
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
