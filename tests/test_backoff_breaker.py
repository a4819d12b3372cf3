"""Backoff policy, restart intensity window and circuit breaker state machine."""

from __future__ import annotations

import logging
import random

import pytest
import trio
import trio.testing

from weir.supervision import (
    Backoff,
    BreakerOpen,
    BreakerState,
    CircuitBreaker,
    RestartWindow,
)
from weir.supervision.intensity import exceeds, in_window

# --- backoff -----------------------------------------------------------------------------------


def test_backoff_cap_grows_exponentially_up_to_the_maximum() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2.0)
    assert [backoff.cap(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    # Far past the point where the float power overflows, still the maximum.
    assert backoff.cap(5000) == 1.0


def test_backoff_delay_is_full_jitter_within_the_cap() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, multiplier=3.0)
    rng = random.Random(1)
    for attempt in range(8):
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        cap = backoff.cap(attempt)
        assert all(0.0 <= d <= cap for d in delays)
        # Full jitter: the draws spread over the whole range, not just near the cap.
        assert min(delays) < 0.1 * cap
        assert max(delays) > 0.9 * cap


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    backoff = Backoff()
    assert [backoff.delay(n, random.Random(3)) for n in range(5)] == [
        backoff.delay(n, random.Random(3)) for n in range(5)
    ]


def test_backoff_state_counts_attempts_and_resets() -> None:
    backoff = Backoff(initial=1.0, maximum=100.0, multiplier=10.0)

    class Top(random.Random):
        def random(self) -> float:
            return 1.0

    state = backoff.state(Top())
    assert [state.next_delay() for _ in range(3)] == [1.0, 10.0, 100.0]
    assert state.attempt == 3
    state.reset()
    assert state.next_delay() == 1.0


@pytest.mark.parametrize("kwargs", [{"initial": -1.0}, {"maximum": -0.5}, {"multiplier": 0.5}])
def test_backoff_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_backoff_rejects_negative_attempt() -> None:
    with pytest.raises(ValueError):
        Backoff().cap(-1)


# --- intensity window --------------------------------------------------------------------------


def test_in_window_is_inclusive_of_the_period_edge() -> None:
    assert in_window([0.0, 1.0, 5.0, 9.0], now=10.0, period=5.0) == [5.0, 9.0]
    assert in_window([4.9], now=10.0, period=5.0) == []


def test_exceeds_counts_the_restart_being_decided() -> None:
    assert not exceeds([1.0, 2.0], 3.0, max_restarts=3, period=5.0)
    assert exceeds([1.0, 2.0, 3.0], 3.0, max_restarts=3, period=5.0)
    assert exceeds([], 0.0, max_restarts=0, period=5.0)
    # The old restarts slid out of the window.
    assert not exceeds([1.0, 2.0, 3.0], 8.5, max_restarts=3, period=5.0)


def test_restart_window_record_slides() -> None:
    window = RestartWindow(max_restarts=2, period=5.0)
    counts = [window.record(t) for t in [0.0, 1.0, 2.0, 6.0, 6.5, 20.0]]
    # at 6.0 the stamp 0.0 has expired (6 - 0 > 5), 1.0 is still in (6 - 1 == 5)
    assert counts == [1, 2, 3, 3, 3, 1]
    assert [window.exceeded(c) for c in counts] == [False, False, True, True, True, False]
    assert window.count(20.0) == 1
    assert window.count(26.0) == 0
    window.clear()
    assert window.count(20.0) == 0


def test_restart_window_rejects_negative_limits() -> None:
    with pytest.raises(ValueError):
        RestartWindow(max_restarts=-1, period=1.0)
    with pytest.raises(ValueError):
        RestartWindow(max_restarts=1, period=-1.0)


# --- circuit breaker ---------------------------------------------------------------------------


class Changes:
    def __init__(self) -> None:
        self.seen: list[tuple[float, BreakerState, BreakerState]] = []

    def __call__(self, name: str, old: BreakerState, new: BreakerState) -> None:
        assert name == "redis"
        self.seen.append((trio.current_time(), old, new))


async def test_breaker_opens_at_the_threshold(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker("redis", failure_threshold=3)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    # A success in between resets the consecutive count.
    breaker.record_success()
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.statistics().consecutive_failures == 2
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    stats = breaker.statistics()
    assert (stats.consecutive_failures, stats.opened_count) == (3, 1)


async def test_breaker_half_opens_after_the_timeout_for_one_trial(
    autojump_clock: trio.testing.MockClock,
) -> None:
    changes = Changes()
    breaker = CircuitBreaker("redis", failure_threshold=1, reset_timeout=2.0, on_change=changes)
    breaker.record_failure()
    await trio.sleep(1.999)
    assert not breaker.allow()
    assert breaker.state is BreakerState.OPEN
    await trio.sleep(0.001)
    assert breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN
    # Only one trial while it is in flight.
    assert not breaker.allow()
    assert not breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow() and breaker.allow()
    assert [(old, new) for _, old, new in changes.seen] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert [t for t, _, _ in changes.seen] == pytest.approx([0.0, 2.0, 2.0])


async def test_failed_trials_double_the_timeout_up_to_the_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker("redis", failure_threshold=1, reset_timeout=1.0, max_reset_timeout=5.0)
    breaker.record_failure()
    waits = []
    for _ in range(5):
        opened = trio.current_time()
        await breaker.wait_allowed()
        waits.append(trio.current_time() - opened)
        assert breaker.state is BreakerState.HALF_OPEN
        breaker.record_failure()
        assert breaker.state is BreakerState.OPEN
    assert waits == pytest.approx([1.0, 2.0, 4.0, 5.0, 5.0])
    assert breaker.statistics().opened_count == 6
    # A successful trial closes it and resets the timeout to the initial one.
    await breaker.wait_allowed()
    breaker.record_success()
    assert breaker.statistics().reset_timeout == 1.0
    assert breaker.statistics().consecutive_failures == 0
    breaker.record_failure()
    opened = trio.current_time()
    await breaker.wait_allowed()
    assert trio.current_time() - opened == pytest.approx(1.0)


async def test_late_outcomes_while_open_are_ignored(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker("redis", failure_threshold=1, reset_timeout=1.0)
    breaker.record_failure()
    breaker.record_success()
    assert breaker.state is BreakerState.OPEN
    breaker.record_failure()
    assert breaker.statistics().opened_count == 1


async def test_waiters_wait_for_the_trial_to_finish(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker("redis", failure_threshold=1, reset_timeout=1.0)
    breaker.record_failure()
    admitted: list[float] = []

    async def caller() -> None:
        await breaker.wait_allowed()
        admitted.append(trio.current_time())
        if len(admitted) == 1:
            await trio.sleep(3.0)  # the trial takes 3 s, then succeeds
        breaker.record_success()

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(caller)
    # One trial at t=1; the others are admitted only when it has succeeded, at t=4.
    assert admitted == pytest.approx([1.0, 4.0, 4.0])


async def test_call_records_outcomes_and_reraises(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker("redis", failure_threshold=2, reset_timeout=1.0)

    async def fail() -> None:
        raise ConnectionError("down")

    async def ok(x: int) -> int:
        return x * 2

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await breaker.call(fail)
    assert breaker.state is BreakerState.OPEN
    # call() waits for the trial slot, then the success closes the breaker.
    assert await breaker.call(ok, 21) == 42
    assert trio.current_time() == pytest.approx(1.0)
    assert breaker.state is BreakerState.CLOSED


async def test_a_cancelled_trial_frees_the_slot_without_counting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker("redis", failure_threshold=1, reset_timeout=1.0)
    breaker.record_failure()
    with trio.move_on_after(2.0):
        await breaker.call(trio.sleep_forever)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.statistics().opened_count == 1
    assert breaker.allow()


async def test_acquire_nowait_raises_breaker_open(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker("redis", failure_threshold=1, reset_timeout=2.0)
    breaker.acquire_nowait()
    breaker.record_failure()
    await trio.sleep(0.5)
    with pytest.raises(BreakerOpen) as info:
        breaker.acquire_nowait()
    assert info.value.breaker == "redis"
    assert info.value.retry_after == pytest.approx(1.5)
    await trio.sleep(1.5)
    breaker.acquire_nowait()
    with pytest.raises(BreakerOpen) as info:
        breaker.acquire_nowait()
    assert info.value.retry_after == 0.0


async def test_state_changes_are_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = CircuitBreaker("redis", failure_threshold=1, reset_timeout=1.0)
    with caplog.at_level(logging.INFO, logger="weir.supervision.breaker"):
        breaker.record_failure()
        await breaker.wait_allowed()
        breaker.record_success()
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in messages] == [logging.WARNING, logging.INFO, logging.INFO]
    assert "redis" in messages[0][1] and "closed -> open" in messages[0][1]
    assert "open -> half_open" in messages[1][1]
    assert "half_open -> closed" in messages[2][1]


def test_breaker_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("x", failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker("x", reset_timeout=10.0, max_reset_timeout=1.0)
