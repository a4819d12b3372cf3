"""Waiting on a condition of another process (a file, a sample) with a timeout, by polling."""

from __future__ import annotations

from collections.abc import Callable

import trio

__all__ = ["wait_until"]


async def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` s pass (False)."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(interval)
        return True
    return False
