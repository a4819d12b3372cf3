"""The trio <-> asyncio bridge: batches cross intact, and a cancel always ends the asyncio side."""

from __future__ import annotations

import asyncio
import functools

import pytest
import trio

from weir import bridge
from weir.bridge import call_asyncio, open_asyncio_loop, pump_batches, trio_sender


async def _swallows_one_cancel(events: list[str]) -> None:  # asyncio side
    """Like asyncio code hit by gh-86296: the first cancel is lost, then it waits forever."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        events.append("swallowed")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        events.append("cancelled again")
        raise


async def test_a_swallowed_cancel_is_repeated_until_the_asyncio_side_ends(monkeypatch):
    monkeypatch.setattr(bridge, "RECANCEL_AFTER", 0.05)
    events: list[str] = []
    async with open_asyncio_loop():
        with trio.fail_after(10):  # without the repeated cancel this call never returns
            with trio.move_on_after(0.01):
                await call_asyncio(_swallows_one_cancel, events)
    assert events == ["swallowed", "cancelled again"]


async def test_a_call_that_returns_is_not_cancelled_by_the_watchdog(monkeypatch):
    monkeypatch.setattr(bridge, "RECANCEL_AFTER", 0.01)

    async def slow() -> str:
        await asyncio.sleep(0.1)
        return "done"

    async with open_asyncio_loop():
        assert await call_asyncio(slow) == "done"


class _Source:
    """An async iterable (asyncio side) of ``items``, then ``error`` if given, else it waits forever."""

    def __init__(self, items: list[int], error: Exception | None = None) -> None:
        self.items, self.error = items, error

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        for item in self.items:
            await asyncio.sleep(0)
            yield item
        if self.error is not None:
            raise self.error
        await asyncio.Event().wait()


async def test_pump_delivers_everything_in_order_then_the_error():
    send, receive = trio.open_memory_channel[list[int]](0)
    got: list[int] = []
    async with open_asyncio_loop():
        async with trio.open_nursery() as nursery:
            async def consume() -> None:
                async for batch in receive:
                    assert 1 <= len(batch) <= 7
                    got.extend(batch)
                    await trio.sleep(0)

            nursery.start_soon(consume)
            with pytest.raises(ConnectionResetError):
                await call_asyncio(functools.partial(pump_batches, max_batch=7), _Source(list(range(500)), ConnectionResetError("gone")), trio_sender(send))
            send.close()
    assert got == list(range(500))


async def test_a_cancelled_pump_ends_while_its_batch_waits_for_the_consumer():
    send, _receive = trio.open_memory_channel[list[int]](0)  # nobody receives: deliver blocks
    async with open_asyncio_loop():
        with trio.fail_after(10):
            with trio.move_on_after(0.2) as scope:
                await call_asyncio(functools.partial(pump_batches, max_batch=8), _Source(list(range(50))), trio_sender(send))
    assert scope.cancelled_caught
