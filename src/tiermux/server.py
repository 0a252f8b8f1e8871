"""Run tiermux under Granian: ASGI interface, uvloop, N worker processes.

Granian's defaults are not ours: its default interface is RSGI and ``loop=auto`` may pick rloop, so
both are set explicitly. Workers import :func:`tiermux.app.create_app` as a factory and read the
config path from the environment, which they inherit from this process.

On SIGTERM or SIGINT Granian stops accepting connections and lets each worker finish the
requests it holds; a worker still busy after ``drain_timeout`` seconds is killed.

The shared-state segment (``tiermux.state``) is created here, before any worker starts, so that
every worker (a respawned one too) attaches the same one; it is removed when ``serve`` returns.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from tiermux.app import CONFIG_ENV, HOST_ENV

__all__ = ["serve"]


def segment_path(port: int) -> Path:
    """Where the ``serve`` on ``port`` keeps its shared state (one per user and port: /dev/shm is
    shared by every user of the machine)."""
    state_dir = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return Path(state_dir) / f"tiermux-{os.getuid()}-{port}.state"


def serve(
    config_path: Path,
    *,
    host: str,
    port: int,
    workers: int,
    drain_timeout: float = 30.0,
    backlog: int = 1024,
    log_level: str = "info",
) -> None:
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    from tiermux.config import load_config
    from tiermux.state import STATE_ENV, Segment, layout_for

    os.environ[CONFIG_ENV] = str(config_path)
    os.environ[HOST_ENV] = host
    segment = Segment.create(segment_path(port), layout_for(load_config(config_path)))
    os.environ[STATE_ENV] = str(segment.path)
    server = Server(
        "tiermux.app:create_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        loop=Loops.uvloop,
        workers=workers,
        backlog=backlog,
        workers_kill_timeout=max(1, math.ceil(drain_timeout)),
        respawn_failed_workers=True,
        log_level=LogLevels(log_level),
    )
    try:
        server.serve()
    finally:
        segment.close(remove=True)
