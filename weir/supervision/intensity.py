"""Restart intensity: the sliding window that decides when a supervisor gives up.

Pure bookkeeping over timestamps; the caller supplies the clock. As in OTP, a restart at time
``t`` still counts at time ``now`` while ``now - t <= period``, and the restart being decided is
counted too: with ``max_restarts=3`` the fourth restart inside the window escalates.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import attrs


def in_window(stamps: Iterable[float], now: float, period: float) -> list[float]:
    """Restart times that still count at ``now``.

    Args:
      stamps: Times of earlier restarts, in any order.
      now: The current time.
      period: Width of the window in seconds.

    Returns:
      The stamps with ``now - stamp <= period``, in their original order.
    """
    return [stamp for stamp in stamps if now - stamp <= period]


def exceeds(stamps: Iterable[float], now: float, *, max_restarts: int, period: float) -> bool:
    """Whether one more restart at ``now`` would exceed ``max_restarts`` within ``period``."""
    return len(in_window(stamps, now, period)) + 1 > max_restarts


@attrs.define(eq=False, kw_only=True)
class RestartWindow:
    """Restart times of one supervisor run, pruned as the window slides.

    Attributes:
      max_restarts: Restarts allowed within ``period``.
      period: Width of the window in seconds.
    """

    max_restarts: int
    period: float
    _stamps: deque[float] = attrs.field(factory=deque, init=False)

    def __attrs_post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if self.period < 0:
            raise ValueError(f"period must be >= 0, got {self.period}")

    def record(self, now: float) -> int:
        """Count a restart at ``now``.

        Args:
          now: The time of the restart; not earlier than previously recorded ones.

        Returns:
          The restarts within the window, this one included. More than ``max_restarts`` means
          the supervisor must escalate instead of restarting.
        """
        # Stamps arrive in time order, so the expired ones are all at the left.
        while self._stamps and now - self._stamps[0] > self.period:
            self._stamps.popleft()
        self._stamps.append(now)
        return len(self._stamps)

    def exceeded(self, count: int) -> bool:
        """Whether ``count`` restarts in the window is more than allowed."""
        return count > self.max_restarts

    def count(self, now: float) -> int:
        """Restarts within the window at ``now``, without recording one."""
        return len(in_window(self._stamps, now, self.period))

    def clear(self) -> None:
        """Forget every restart (a fresh supervisor run)."""
        self._stamps.clear()
