"""The disconnect watcher: armed per tick for requests that outlive ARM_AFTER, never for fast ones."""

from __future__ import annotations

import asyncio

from tiermux.api.disconnect import ARM_AFTER, DisconnectWatcher


class Receive:
    """A plain-ASGI receive after the body: resolves with ``http.disconnect`` when told to."""

    def __init__(self) -> None:
        self.calls = 0
        self.leave = asyncio.Event()

    async def __call__(self) -> dict[str, str]:
        self.calls += 1
        await self.leave.wait()
        return {"type": "http.disconnect"}


def test_a_fast_request_is_never_watched() -> None:
    async def scenario() -> int:
        watcher = DisconnectWatcher()
        receive = Receive()
        with watcher.watch(receive):
            await asyncio.sleep(0)
        await asyncio.sleep(ARM_AFTER * 3)
        watcher.close()
        return receive.calls

    assert asyncio.run(scenario()) == 0


def test_a_slow_request_is_cancelled_when_its_client_leaves() -> None:
    async def scenario() -> tuple[bool, int, bool]:
        watcher = DisconnectWatcher()
        receive = Receive()
        finished = False
        with watcher.watch(receive) as watch:
            await asyncio.sleep(ARM_AFTER * 3)  # long enough to be armed
            receive.leave.set()
            await asyncio.sleep(10)  # the backend would still be working: cancelled instead
            finished = True
        watcher.close()
        return watch.gone, receive.calls, finished

    gone, calls, finished = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert gone
    assert calls == 1
    assert not finished


def test_a_slow_request_whose_client_stays_completes() -> None:
    async def scenario() -> tuple[bool, bool]:
        watcher = DisconnectWatcher()
        receive = Receive()
        with watcher.watch(receive) as watch:
            await asyncio.sleep(ARM_AFTER * 3)
            armed = watch.armed
        watcher.close()
        return armed, watch.gone

    armed, gone = asyncio.run(scenario())
    assert armed
    assert not gone
