"""Whether a process that registered in the shared segment is still there."""

from __future__ import annotations

import os

__all__ = ["alive"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process now has the pid: not ours to judge, so alive
    return True
