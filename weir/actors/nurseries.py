"""A nursery for an actor's helper tasks whose error leaves as itself.

Supervisors and logs should see the real exception an actor failed with, not a one-member
ExceptionGroup from the nursery that ran its watcher or checker beside it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def open_unwrapping_nursery() -> AsyncIterator[trio.Nursery]:
    """``trio.open_nursery()``, except that a single error (not a Cancelled) is raised unwrapped."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], trio.Cancelled):
            raise group.exceptions[0] from None
        raise
