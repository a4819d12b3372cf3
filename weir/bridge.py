"""The one place that crosses between trio and asyncio (grpclib and redis.asyncio live in asyncio).

Each crossing costs ~110 µs (measured in shared/notes/measured.md), so everything that crosses
carries a batch: a stream read in asyncio is delivered to trio as lists, and a Redis call carries a
whole batch of events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
import trio_asyncio

T = TypeVar("T")


@asynccontextmanager
async def open_asyncio_loop() -> AsyncIterator[None]:
    """Run an asyncio loop on top of trio for the duration of the block (idempotent if nested)."""
    if _has_loop():
        yield
        return
    async with trio_asyncio.open_loop():
        yield


def _has_loop() -> bool:
    try:
        trio_asyncio.current_loop.get()
    except LookupError:
        return False
    return trio_asyncio.current_loop.get() is not None


async def call_asyncio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await an asyncio coroutine function from trio (one crossing)."""
    return await trio_asyncio.aio_as_trio(fn)(*args)


def trio_sender(send: trio.MemorySendChannel[Any]) -> Callable[[Any], Awaitable[None]]:
    """An asyncio-callable that sends one item (a batch) into a trio channel: one crossing each."""
    return trio_asyncio.trio_as_aio(send.send)


async def pump_batches(
    source: AsyncIterable[T],
    deliver: Callable[[list[T]], Awaitable[None]],
    *,
    max_batch: int = 512,
) -> None:
    """Read ``source`` in asyncio and hand it to ``deliver`` as lists (asyncio side).

    A reader task buffers items while the previous list is being delivered, so batches grow
    exactly as large as the consumer is slow (up to ``max_batch``, after which reading pauses:
    that is the backpressure that reaches the network) and stay at one item when it is fast,
    which keeps latency low. When the source fails, what was already read is delivered first,
    then the error is raised.
    """
    buffer: list[T] = []
    have_items = asyncio.Event()
    room = asyncio.Event()
    room.set()
    finished = False
    failure: BaseException | None = None

    async def read() -> None:
        nonlocal finished, failure
        try:
            async for item in source:
                buffer.append(item)
                have_items.set()
                if len(buffer) >= max_batch:
                    room.clear()
                    await room.wait()
        except Exception as exc:  # delivered after the buffer is flushed
            failure = exc
        finally:
            finished = True
            have_items.set()

    reader = asyncio.ensure_future(read())
    try:
        while True:
            await have_items.wait()
            have_items.clear()
            if buffer:
                batch = buffer[:]
                buffer.clear()
                room.set()
                await deliver(batch)
            elif finished:
                break
    finally:
        if not reader.done():
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                pass
    if failure is not None:
        raise failure
