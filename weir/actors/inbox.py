"""How a pipeline actor reads its input channel and notices that it should stop.

Shutdown is ordered (the supervisor stops a pipeline's actors from the source down, one at a time),
so when an actor is asked to stop, everything its upstream will ever send is already in its
channel. :class:`Inbox` therefore turns ``stopping`` into "no more waiting": pending items are
still handed out, then ``get`` returns ``None``. Sends are never interrupted by this, so a chunk
is never half-forwarded (a later chunk's cursor could otherwise skip over it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import trio

from weir.actors.nurseries import open_unwrapping_nursery

T = TypeVar("T")


class Inbox(Generic[T]):
    """Receive from ``channel`` until ``stopping`` is set, then only what is already queued.

    Use it through :func:`open_inbox`, which runs :meth:`watch` alongside.
    """

    def __init__(self, channel: trio.MemoryReceiveChannel[T], stopping: trio.Event) -> None:
        self._channel = channel
        self._stopping = stopping
        self._waiting: trio.CancelScope | None = None

    async def watch(self) -> None:
        """Interrupt a pending wait once ``stopping`` is set (run as a background task)."""
        await self._stopping.wait()
        if self._waiting is not None:
            self._waiting.cancel()

    async def get(self) -> T | None:
        """The next item, or ``None`` once stopping and the channel is empty (or closed)."""
        if not self._stopping.is_set():
            with trio.CancelScope() as scope:
                self._waiting = scope
                try:
                    return await self._channel.receive()
                except trio.EndOfChannel:
                    return None
                finally:
                    self._waiting = None
        try:
            return self._channel.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return None


@asynccontextmanager
async def open_inbox(channel: trio.MemoryReceiveChannel[T], stopping: trio.Event) -> AsyncIterator[Inbox[T]]:
    """An :class:`Inbox` with its watcher running for the duration of the block.

    An actor's own error leaves the block as itself, not wrapped in the watcher nursery's
    ExceptionGroup, so supervisors and logs see the real exception.
    """
    inbox = Inbox(channel, stopping)
    async with open_unwrapping_nursery() as nursery:
        nursery.start_soon(inbox.watch)
        yield inbox
        nursery.cancel_scope.cancel()
