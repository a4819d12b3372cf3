"""The progress tracker (weir.observability.progress): lag, rates and ETA from samples, no I/O."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weir.observability.progress import ProgressSample, ProgressTracker

# A run of samples: (seconds since the previous, position step, head step); steps may be negative
# (a restart replays from the cursor; a head announced lower by another node).
steps = st.lists(
    st.tuples(st.floats(0.01, 60), st.integers(-50, 1000), st.integers(-5, 200)), min_size=1, max_size=30
)


def track(start_position: int, start_head: int, run: list[tuple[float, int, int]], window: float = 30.0) -> ProgressTracker:
    tracker = ProgressTracker(window=window)
    at, position, head = 0.0, start_position, start_head
    tracker.observe(ProgressSample(at=at, position=position, head=head))
    for dt, gained, grown in run:
        at, position, head = at + dt, max(0, position + gained), max(0, head + grown)
        tracker.observe(ProgressSample(at=at, position=position, head=head))
    return tracker


@given(st.integers(0, 10**9), st.integers(0, 10**9), steps)
def test_lag_and_eta_are_never_negative(position: int, head: int, run: list[tuple[float, int, int]]) -> None:
    progress = track(position, head, run).progress()
    assert progress is not None
    assert progress.lag is not None and progress.lag >= 0
    assert progress.lag_seconds is None or progress.lag_seconds >= 0
    assert progress.eta_seconds is None or progress.eta_seconds > 0
    assert progress.rate is not None and progress.rate >= 0
    assert progress.head is not None and progress.position is not None and progress.head >= progress.position


@given(st.integers(0, 10**9), st.integers(0, 10**6), steps)
def test_at_or_past_the_head_the_lag_is_zero_and_there_is_no_eta(head: int, past: int, run: list[tuple[float, int, int]]) -> None:
    tracker = track(head, head, run)
    last = tracker.progress()
    assert last is not None and last.position is not None
    # The same partition one sample later, at (or past) the head it is told.
    tracker.observe(ProgressSample(at=10_000.0, position=last.position + past, head=last.position))
    progress = tracker.progress()
    assert progress is not None
    assert progress.lag == 0 and progress.lag_seconds == 0.0 and progress.at_head
    assert progress.eta_seconds is None and not progress.catching_up


@given(st.integers(0, 10**6), st.integers(1, 10**6), steps, st.integers(1, 10**4))
def test_getting_further_in_the_same_time_never_delays_the_eta(position: int, behind: int, run: list[tuple[float, int, int]],
                                                               further: int) -> None:
    """Two histories differing only in the last sample's position, the second further on and
    still behind: its lag is smaller and its rate (an average that weighs the last interval
    positively) larger, so it is not further from the head in time: at the head (0) or an ETA not
    later (None while not at the head: never, counts as infinitely late)."""
    slow, fast = track(position, position + behind, run), track(position, position + behind, run)
    last = slow.progress()
    assert last is not None and last.position is not None and last.head is not None
    at = 10_000.0
    head = last.head + 100
    slow.observe(ProgressSample(at=at, position=last.position, head=head))
    fast.observe(ProgressSample(at=at, position=min(head - 1, last.position + further), head=head))
    def remaining(tracker: ProgressTracker) -> float:
        progress = tracker.progress()
        assert progress is not None
        if progress.at_head:
            return 0.0
        return math.inf if progress.eta_seconds is None else progress.eta_seconds

    assert remaining(fast) <= remaining(slow) * (1 + 1e-9)


@given(st.integers(1, 10_000), st.integers(0, 10_000), st.integers(1, 10**6), st.integers(1, 10), st.integers(2, 6))
def test_at_steady_rates_the_eta_is_the_lag_over_the_gain(rate: int, head_rate: int, behind: int, dt: int, count: int) -> None:
    tracker = ProgressTracker(window=5.0)
    for i in range(count):
        tracker.observe(ProgressSample(at=i * dt, position=rate * i * dt, head=behind + head_rate * i * dt))
    progress = tracker.progress()
    assert progress is not None
    at = (count - 1) * dt
    lag = max(0, behind + (head_rate - rate) * at)
    assert progress.lag == lag
    assert progress.rate == pytest.approx(rate)
    following = head_rate > 0 and lag / head_rate < tracker.at_head_seconds  # within seconds of the head
    if lag > 0 and rate > head_rate and not following:
        assert progress.eta_seconds == pytest.approx(lag / (rate - head_rate))
    else:
        assert progress.eta_seconds is None


@given(st.lists(st.floats(0.01, 100), min_size=2, max_size=20), st.lists(st.floats(0, 1000), min_size=2, max_size=20))
def test_the_smoothed_rate_stays_within_the_rates_seen(gaps: list[float], rates: list[float]) -> None:
    """An average of the interval rates: never above the fastest nor below the slowest."""
    tracker = ProgressTracker(window=10.0)
    at, position, seen = 0.0, 0.0, []
    tracker.observe(ProgressSample(at=at, position=0))
    for dt, rate in zip(gaps, rates, strict=False):
        previous = round(position)
        at, position = at + dt, position + rate * dt
        tracker.observe(ProgressSample(at=at, position=round(position)))
        seen.append((round(position) - previous) / dt)
    progress = tracker.progress()
    assert progress is not None and progress.rate is not None
    assert min(seen) - 1e-6 <= progress.rate <= max(seen) + 1e-6


def test_lag_in_seconds_from_network_times_else_from_the_head_rate() -> None:
    timed = ProgressTracker()
    timed.observe(ProgressSample(at=0.0, position=100, head=160, position_time=1000.0, head_time=1720.0))
    assert timed.progress().lag_seconds == 720.0  # type: ignore[union-attr]

    untimed = ProgressTracker()
    untimed.observe(ProgressSample(at=0.0, position=100, head=160))
    assert untimed.progress().lag_seconds is None  # type: ignore[union-attr]  # nothing says how fast the head grows
    untimed.observe(ProgressSample(at=10.0, position=200, head=180))  # past the head told: the head is there
    assert untimed.progress().lag == 0 and untimed.progress().head == 200  # type: ignore[union-attr]
    untimed.observe(ProgressSample(at=20.0, position=210, head=250))
    progress = untimed.progress()
    assert progress is not None and progress.lag == 40 and progress.head_rate is not None
    assert progress.lag_seconds == pytest.approx(40 / progress.head_rate)


def test_without_a_head_the_time_axis_gives_lag_and_eta() -> None:
    """An AT Protocol relay: no head seq, but event times against the wall clock."""
    tracker = ProgressTracker(window=1.0)
    tracker.observe(ProgressSample(at=0.0, position=1, position_time=1000.0, head_time=2000.0))
    tracker.observe(ProgressSample(at=10.0, position=9000, position_time=1100.0, head_time=2010.0))  # 10 s of history per second
    progress = tracker.progress()
    assert progress is not None
    assert progress.lag is None and progress.lag_seconds == 910.0
    assert progress.eta_seconds == pytest.approx(910.0 / 9.0)


def test_a_rewind_is_no_progress_and_a_repeated_time_replaces_the_sample() -> None:
    tracker = ProgressTracker()
    tracker.observe(ProgressSample(at=0.0, position=500, head=1000))
    tracker.observe(ProgressSample(at=5.0, position=100, head=1000))  # a restart from an older cursor
    assert tracker.progress().rate == 0.0 and tracker.progress().eta_seconds is None  # type: ignore[union-attr]
    tracker.observe(ProgressSample(at=5.0, position=200, head=1000))
    assert tracker.progress().position == 200 and tracker.progress().rate == 0.0  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        ProgressTracker(window=0)


@given(st.floats(0, 4.999), st.floats(1.5, 100), st.integers(1, 5))
def test_a_lag_in_seconds_within_the_tolerance_is_at_the_head(lag: float, speed: float, blocks: int) -> None:
    """Following live: a relay's events arrive a little after they are made; a chain's head is
    announced a moment before weir has its block. Neither is a catch-up with an ETA."""
    relay = ProgressTracker(window=1.0, at_head_seconds=5.0)
    relay.observe(ProgressSample(at=0.0, position=1, position_time=1000.0 - lag - speed, head_time=1000.0))
    relay.observe(ProgressSample(at=1.0, position=2, position_time=1001.0 - lag, head_time=1001.0))  # gaining fast
    chain = ProgressTracker(window=1.0, at_head_seconds=5.0)
    chain.observe(ProgressSample(at=0.0, position=100, head=100 + blocks, position_time=0.0, head_time=lag))
    chain.observe(ProgressSample(at=1.0, position=100 + 2 * blocks, head=100 + 3 * blocks, position_time=10.0,
                                 head_time=10.0 + lag))  # gaining a block a second
    for tracker in (relay, chain):
        progress = tracker.progress()
        assert progress is not None and progress.lag_seconds == pytest.approx(lag)
        assert progress.eta_seconds is None and not progress.catching_up and progress.at_head
