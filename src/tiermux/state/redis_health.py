"""Backend health shared between tiermux instances through Redis.

Each machine keeps deciding health on its own (shared cells, ``tiermux.upstream.health``); this
mirror makes the fleet agree. Every backend has one field in the hash ``{prefix}:health``:
``down:<ms>`` or ``up:<ms>``, the last transition any instance saw, with its wall-clock time.
Every ``MIRROR_INTERVAL`` seconds each worker

- publishes a transition its machine made since it last looked (this machine marked a backend
  down after its failures, or a probe brought it back), and
- applies a newer transition of another instance: a backend another instance found down is taken
  out of rotation here too (and probed from here on its own schedule); one it found answering
  again is put back.

The last transition wins, so one success anywhere brings a backend back, as it does between the
workers of one machine. While Redis is away the machine goes on with its own health.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tiermux.state.redis_link import RedisLink
from tiermux.upstream.health import Health

logger = logging.getLogger("tiermux.state")

__all__ = ["MIRROR_INTERVAL", "RedisHealthMirror"]

MIRROR_INTERVAL = 1.0


def _parse(value: bytes | None) -> tuple[bool | None, int]:
    """(down, stamp) of a field; (None, 0) when absent or unreadable."""
    if not value:
        return None, 0
    state, _, stamp = value.partition(b":")
    try:
        return state == b"down", int(stamp)
    except ValueError:
        return None, 0


class RedisHealthMirror:
    def __init__(self, link: RedisLink, interval: float = MIRROR_INTERVAL) -> None:
        self.link = link
        self.interval = interval
        self.key = link.key("health")
        self._seen: dict[str, bool] = {}  # each backend's local state at the last look
        self._applied: dict[str, int] = {}  # stamp of the last transition published or applied

    def __repr__(self) -> str:
        return f"<RedisHealthMirror {self.link.where}>"

    async def run(self, health: Health) -> None:
        self._seen = {name: s.down for name, s in health.state.items()}
        broken = False  # an unexpected error was logged (once, until a look succeeds)
        while True:
            try:
                await self.sync(health)
            except Exception:  # the mirror must outlive whatever Redis answers (a key of another type)
                if not broken:
                    logger.exception("sharing backend health through Redis failed")
                broken = True
            else:
                broken = False
            await asyncio.sleep(self.interval)

    async def sync(self, health: Health) -> None:
        link = self.link
        if link.away:
            return
        try:
            remote = await link.client.hgetall(self.key)
            for name, state in health.state.items():
                down = state.down
                remote_down, stamp = _parse(remote.get(name.encode()))
                if down != self._seen.get(name, down) or (remote_down is None and down):
                    # This machine changed its mind since the last look: tell the others.
                    self._seen[name] = down
                    if remote_down != down:
                        now = int(time.time() * 1000)
                        await link.client.hset(self.key, name, f"{'down' if down else 'up'}:{now}")
                        self._applied[name] = now
                    continue
                self._seen[name] = down
                if remote_down is None or stamp <= self._applied.get(name, 0):
                    continue
                self._applied[name] = stamp
                if remote_down and not down:
                    health.mark_down(name, "(reported by another tiermux instance)")
                elif down and not remote_down:
                    health.bring_up(name, "reported up by another tiermux instance")
                self._seen[name] = remote_down
        except link.errors as exc:
            link.failed(exc)
        else:
            link.succeeded()
