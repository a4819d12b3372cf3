"""The one place that crosses between trio and asyncio (grpclib and redis.asyncio live in asyncio).

Each crossing costs ~110 µs (measured in shared/notes/measured.md), so everything that crosses
carries a batch: a stream read in asyncio is delivered to trio as lists, and a Redis call carries a
whole batch of events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar

import outcome
import trio
import trio_asyncio

T = TypeVar("T")

log = logging.getLogger("weir.bridge")


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


# After a cancel, how long asyncio code may run on before it is cancelled again.
RECANCEL_AFTER = 2.0


async def call_asyncio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await an asyncio coroutine function from trio (one crossing).

    What trio_asyncio's ``aio_as_trio`` does, with one difference. A cancel of the calling trio
    task cancels the asyncio task, then trio waits for it to end, however long that takes.
    trio_asyncio cancels once: asyncio code that swallows that one cancel (Python 3.11's
    ``asyncio.wait_for`` does when its inner future completes at that moment, gh-86296) would
    hang the trio side for good, and with it a service's shutdown. Here the asyncio task is
    cancelled again every RECANCEL_AFTER seconds until it ends. (Timers only after a cancel:
    the common path costs what aio_as_trio costs.)
    """
    loop = trio_asyncio.current_loop.get()
    future = asyncio.ensure_future(_run(fn, args), loop=loop)
    task = trio.lowlevel.current_task()
    raise_cancel: Callable[[], NoReturn] | None = None

    def done(_: asyncio.Future[T]) -> None:
        trio.lowlevel.reschedule(task, outcome.capture(future.result))

    def recancel() -> None:
        if not future.done():
            log.warning("asyncio call %s still runs %gs after it was cancelled: cancelling it again",
                        getattr(fn, "__qualname__", fn), RECANCEL_AFTER)
            future.cancel()
            loop.call_later(RECANCEL_AFTER, recancel)

    def abort(raise_cancel_: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
        nonlocal raise_cancel
        raise_cancel = raise_cancel_
        future.cancel()
        loop.call_later(RECANCEL_AFTER, recancel)
        return trio.lowlevel.Abort.FAILED  # rescheduled by ``done`` once the asyncio task ended

    future.add_done_callback(done)
    try:
        return await trio.lowlevel.wait_task_rescheduled(abort)
    except asyncio.CancelledError:
        if raise_cancel is None:
            raise  # cancelled from the asyncio side, not by us: pass it on
        raise_cancel()  # the asyncio task ended because trio cancelled us: trio.Cancelled


async def _run(fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
    return await fn(*args)  # called inside the asyncio task, where asyncio libraries expect to be


def trio_sender(send: trio.MemorySendChannel[Any]) -> Callable[[Any], Awaitable[None]]:
    """An asyncio-callable that sends one item (a batch) into a trio channel: one crossing each."""
    return trio_asyncio.trio_as_aio(send.send)


async def pump_batches(
    source: AsyncIterable[Any],
    deliver: Callable[[list[T]], Awaitable[None]],
    *,
    max_batch: int = 512,
    lists: bool = False,
) -> None:
    """Read ``source`` in asyncio and hand it to ``deliver`` as lists (asyncio side).

    A reader task buffers items while the previous list is being delivered, so batches grow
    exactly as large as the consumer is slow (up to ``max_batch``, after which reading pauses:
    that is the backpressure that reaches the network) and stay at one item when it is fast,
    which keeps latency low. When the source fails, what was already read is delivered first,
    then the error is raised. With ``lists`` the source yields lists of items (a bulk read); a
    delivered list still holds at most ``max_batch`` items.
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
                if lists:
                    buffer.extend(item)
                else:
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
            if buffer:
                batch = buffer[:max_batch]
                del buffer[:max_batch]
                if len(buffer) < max_batch:
                    room.set()
                await deliver(batch)
            elif finished:
                # Checked before waiting again: the reader's last items and its end can arrive
                # during one delivery, with a single wake-up for both.
                break
            else:
                await have_items.wait()
                have_items.clear()
    finally:
        if not reader.done():
            reader.cancel()
            # asyncio.wait, not ``await reader``: the reader's CancelledError must not be taken
            # for ours (catching it would swallow a cancel of this task that arrives meanwhile).
            await asyncio.wait([reader])
    if failure is not None:
        raise failure
