"""A circuit breaker per external dependency: stop hammering what is down, probe it, recover.

Closed: calls flow, consecutive failures are counted. At ``failure_threshold`` it opens: calls
are refused until ``reset_timeout`` has passed, then it is half-open and lets exactly one trial
call through. The trial's success closes it; its failure opens it again with the timeout
doubled (up to ``max_reset_timeout``). Time is trio's clock, so tests run on a MockClock.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
import trio

logger = logging.getLogger("weir.supervision.breaker")

T = TypeVar("T")


class BreakerState(enum.Enum):
    """State of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerOpen(Exception):
    """The breaker refused a call without waiting (see ``CircuitBreaker.acquire_nowait``).

    Attributes:
      breaker: Name of the breaker.
      retry_after: Seconds until a trial call may be allowed; 0.0 if a trial is in flight.
    """

    def __init__(self, breaker: str, retry_after: float) -> None:
        self.breaker = breaker
        self.retry_after = retry_after
        super().__init__(f"circuit breaker {breaker!r} is open (retry after {retry_after:.3f}s)")


@attrs.frozen(kw_only=True)
class BreakerStatistics:
    """Snapshot of a circuit breaker.

    Attributes:
      name: Name of the breaker (the dependency it guards).
      state: Its current state.
      consecutive_failures: Failures since the last success.
      opened_count: How many times it has opened (including re-opening after a failed trial).
      reset_timeout: Seconds it stays open before the next trial, as currently backed off.
    """

    name: str
    state: BreakerState
    consecutive_failures: int
    opened_count: int
    reset_timeout: float


class CircuitBreaker:
    """Closed / open / half-open breaker guarding one external dependency.

    Args:
      name: Name of the dependency, used in logs and errors.
      failure_threshold: Consecutive failures that open the breaker.
      reset_timeout: Seconds the breaker first stays open before a trial call.
      max_reset_timeout: Cap of the doubled reset timeout after failed trials.
      on_change: Called as ``on_change(name, old_state, new_state)`` on every transition.

    Raises:
      ValueError: On a threshold below 1 or inconsistent timeouts.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 1.0,
        max_reset_timeout: float = 30.0,
        on_change: Callable[[str, BreakerState, BreakerState], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if reset_timeout < 0 or max_reset_timeout < reset_timeout:
            raise ValueError(
                f"need 0 <= reset_timeout <= max_reset_timeout, got {reset_timeout}, "
                f"{max_reset_timeout}"
            )
        self._name = name
        self._failure_threshold = failure_threshold
        self._base_timeout = reset_timeout
        self._max_timeout = max_reset_timeout
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_count = 0
        self._timeout = reset_timeout
        self._opened_at = 0.0
        self._trial_in_flight = False
        # Replaced on every transition, so waiters sleep until something changes.
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self._name!r} {self._state.value}>"

    @property
    def name(self) -> str:
        """Name of the guarded dependency."""
        return self._name

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker turns half-open only when asked via allow())."""
        return self._state

    def allow(self) -> bool:
        """Whether a call may go ahead now; if so, the caller must record its outcome.

        Returns:
          Closed: True. Open: False until ``reset_timeout`` has passed, then the breaker turns
          half-open and this call is the single trial (True). Half-open: False while the
          trial is in flight.
        """
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if trio.current_time() < self._opened_at + self._timeout:
                return False
            self._transition(BreakerState.HALF_OPEN)
        if self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def acquire_nowait(self) -> None:
        """Take a slot like :meth:`allow`, or raise.

        Raises:
          BreakerOpen: The breaker refuses calls right now.
        """
        if not self.allow():
            raise BreakerOpen(self._name, self._retry_after())

    async def wait_allowed(self) -> None:
        """Sleep until :meth:`allow` would return True, then take the slot."""
        while not self.allow():
            if self._state is BreakerState.OPEN:
                # Nothing but the clock reopens the way; sleep until the trial is due.
                await trio.sleep_until(self._opened_at + self._timeout)
            else:
                await self._changed.wait()

    def record_success(self) -> None:
        """Record a successful call: a half-open (or closed) breaker closes and forgets failures.

        A late success reported while open is ignored: the breaker waits for its own trial.
        """
        if self._state is BreakerState.OPEN:
            return
        self._failures = 0
        self._timeout = self._base_timeout
        self._trial_in_flight = False
        if self._state is BreakerState.HALF_OPEN:
            self._transition(BreakerState.CLOSED)

    def record_failure(self) -> None:
        """Record a failed call: open at the threshold, or again (backed off) after a failed trial.

        A late failure reported while open is ignored; it would only extend the outage.
        """
        if self._state is BreakerState.OPEN:
            return
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN:
            self._trial_in_flight = False
            self._timeout = min(self._timeout * 2, self._max_timeout)
            self._open()
        elif self._failures >= self._failure_threshold:
            self._open()

    async def call(self, fn: Callable[..., Awaitable[T]], *args: object) -> T:
        """Wait until allowed, run ``await fn(*args)`` and record its outcome.

        Cancellation is not a failure of the dependency: a cancelled trial only frees the
        slot for the next caller.

        Returns:
          What ``fn`` returned.

        Raises:
          Whatever ``fn`` raised, after recording it as a failure.
        """
        await self.wait_allowed()
        try:
            result = await fn(*args)
        except Exception:
            self.record_failure()
            raise
        except BaseException:
            self.release_trial()
            raise
        self.record_success()
        return result

    def statistics(self) -> BreakerStatistics:
        """Return a snapshot of the breaker."""
        return BreakerStatistics(
            name=self._name,
            state=self._state,
            consecutive_failures=self._failures,
            opened_count=self._opened_count,
            reset_timeout=self._timeout,
        )

    def release_trial(self) -> None:
        """Give back a half-open trial slot without an outcome (the attempt was cancelled)."""
        if self._state is BreakerState.HALF_OPEN and self._trial_in_flight:
            self._trial_in_flight = False
            self._notify()

    def _retry_after(self) -> float:
        if self._state is BreakerState.OPEN:
            return max(0.0, self._opened_at + self._timeout - trio.current_time())
        return 0.0

    def _open(self) -> None:
        self._opened_at = trio.current_time()
        self._opened_count += 1
        self._transition(BreakerState.OPEN)

    def _transition(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
        logger.log(
            level,
            "circuit breaker %s: %s -> %s (failures=%d reset_timeout=%.3fs)",
            self._name,
            old.value,
            new.value,
            self._failures,
            self._timeout,
            extra={
                "event": "breaker_change",
                "breaker": self._name,
                "previous": old.value,
                "state": new.value,
                "failures": self._failures,
                "reset_timeout": self._timeout,
            },
        )
        self._notify()
        if self._on_change is not None:
            try:
                self._on_change(self._name, old, new)
            except Exception:
                logger.exception("circuit breaker %s: on_change callback failed", self._name)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
