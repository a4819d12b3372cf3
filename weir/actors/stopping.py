"""Run a block of a source actor until it ends or its ``stopping`` event is set."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from weir.actors.nurseries import open_unwrapping_nursery


@asynccontextmanager
async def until_stopped(stopping: trio.Event) -> AsyncIterator[trio.CancelScope]:
    """Cancel the block as soon as ``stopping`` is set; leave it quietly when that happens.

    The block's own errors leave as themselves (not wrapped in the watcher's ExceptionGroup), so a
    supervisor sees the real exception.
    """
    with trio.CancelScope() as scope:

        async def cancel_when_stopping() -> None:
            await stopping.wait()
            scope.cancel()

        async with open_unwrapping_nursery() as watcher:
            watcher.start_soon(cancel_when_stopping)
            yield scope
            watcher.cancel_scope.cancel()
