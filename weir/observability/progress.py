"""How far behind the network's head a partition is, and when it will catch up (sans-IO).

A source reports :class:`ProgressSample` values (its position and the network's head, in the
same unit: a Farcaster or Ethereum block, a firehose seq; and the network times of both where the
network gives them). :class:`ProgressTracker` turns a partition's samples into :class:`Progress`:

- lag: head − position (never negative: a position past the head announced means the head moved);
- lag in seconds: head time − position time where both are known (Ethereum block timestamps, the
  wall clock against an AT Protocol event's time), else lag ÷ the head's growth rate (how long ago
  the head was where weir is), else 0 at the head and unknown otherwise;
- the catch-up rate: the position's growth per second, smoothed by an exponentially weighted
  moving average whose weight depends on the time between samples (irregular samples are fine);
- the ETA: lag ÷ (rate − the head's growth rate) while behind and gaining, else None.

Without a head (AT Protocol: a relay does not say its newest seq) the same is done on the time
axis: lag = head time − position time, gained at position time's rate − head time's rate.

A stream that follows its head live is a little behind now and then (a block announced before
weir has it, delivery time, clocks that differ), and its rate then only matches the head's, with
noise: an ETA there would flicker between none and anything. So a lag in seconds under
``at_head_seconds`` counts as at the head: no ETA.

No I/O and no clock: the caller passes each sample's time.
"""

from __future__ import annotations

import math

import attrs

#: Seconds over which rates are averaged (the EWMA's time constant).
DEFAULT_WINDOW = 30.0
#: A lag below this many seconds is at the head (no ETA).
AT_HEAD_SECONDS = 5.0


@attrs.frozen(slots=True, kw_only=True)
class ProgressSample:
    """What a source knows at one moment.

    Attributes:
        at: when (a monotonic clock, seconds; trio's).
        position: weir's position, in the head's unit (None: nothing read yet).
        head: the network's head in that unit (None: the network does not say).
        position_time: network time of the position, unix seconds (None: unknown).
        head_time: network time of the head, unix seconds (the wall clock for a live stream).
    """

    at: float
    position: int | None
    head: int | None = None
    position_time: float | None = None
    head_time: float | None = None


@attrs.frozen(slots=True, kw_only=True)
class Progress:
    """A partition's progress toward the head (None: not known).

    Attributes:
        position: weir's position (head's unit).
        head: the network's head (never below ``position``).
        lag: head − position.
        lag_seconds: how far behind in time (see the module docstring).
        rate: the position's smoothed growth, units per second.
        head_rate: the head's smoothed growth, units per second.
        eta_seconds: seconds until the lag is 0 at the current rates; None when not catching up.
        at_head: the lag is 0, or under the tracker's ``at_head_seconds`` (following live).
    """

    position: int | None
    head: int | None
    lag: int | None
    lag_seconds: float | None
    rate: float | None
    head_rate: float | None
    eta_seconds: float | None
    at_head: bool = False

    @property
    def catching_up(self) -> bool:
        return self.eta_seconds is not None


def _ewma(previous: float | None, value: float, dt: float, window: float) -> float:
    if previous is None:
        return value
    weight = 1.0 - math.exp(-dt / window)
    return previous + weight * (value - previous)


def _delta_rate(before: float | None, after: float | None, dt: float) -> float | None:
    """Growth per second between two readings; a fall (a restart replaying) counts as no growth."""
    if before is None or after is None:
        return None
    return max(0.0, after - before) / dt


@attrs.define(eq=False)
class ProgressTracker:
    """One partition's samples in, :class:`Progress` out (:meth:`observe`, :meth:`progress`)."""

    window: float = DEFAULT_WINDOW
    at_head_seconds: float = AT_HEAD_SECONDS
    _last: ProgressSample | None = None
    _rate: float | None = None
    _head_rate: float | None = None
    _time_rate: float | None = None  # network seconds the position gains per second
    _head_time_rate: float | None = None

    def __attrs_post_init__(self) -> None:
        if not self.window > 0:
            raise ValueError(f"window must be positive, got {self.window}")

    def observe(self, sample: ProgressSample) -> None:
        """Take a sample; one not later than the last (a clock that did not move) only replaces it."""
        last = self._last
        if last is not None and sample.at > last.at:
            dt = sample.at - last.at
            head_before = _head_of(last)
            pairs = (
                ("_rate", last.position, sample.position),
                ("_head_rate", head_before, _head_of(sample)),
                ("_time_rate", last.position_time, sample.position_time),
                ("_head_time_rate", last.head_time, sample.head_time),
            )
            for name, before, after in pairs:
                rate = _delta_rate(before, after, dt)
                if rate is not None:
                    setattr(self, name, _ewma(getattr(self, name), rate, dt, self.window))
        self._last = sample

    def progress(self) -> Progress | None:
        """Where the partition stands after the samples so far (None before the first)."""
        sample = self._last
        if sample is None:
            return None
        head = _head_of(sample)
        lag = None if head is None or sample.position is None else head - sample.position
        lag_seconds = self._lag_seconds(sample, lag)
        at_head = lag == 0 or (lag_seconds is not None and lag_seconds < self.at_head_seconds)
        if at_head:
            eta = None  # following live (see the module docstring)
        elif lag is not None:
            eta = _eta(lag, self._rate, self._head_rate)
        elif lag_seconds is not None:
            eta = _eta(lag_seconds, self._time_rate, self._head_time_rate)
        else:
            eta = None
        return Progress(position=sample.position, head=head, lag=lag, lag_seconds=lag_seconds,
                        rate=self._rate, head_rate=self._head_rate, eta_seconds=eta, at_head=at_head)

    def _lag_seconds(self, sample: ProgressSample, lag: int | None) -> float | None:
        if sample.head_time is not None and sample.position_time is not None:
            return max(0.0, sample.head_time - sample.position_time)
        if lag == 0:
            return 0.0
        if lag is not None and self._head_rate:
            return lag / self._head_rate
        return None


def _head_of(sample: ProgressSample) -> int | None:
    """The head, raised to the position when the position passed it (the head moved since it was told)."""
    if sample.head is None or sample.position is None:
        return sample.head
    return max(sample.head, sample.position)


def _eta(lag: float, rate: float | None, head_rate: float | None) -> float | None:
    if lag <= 0 or rate is None:
        return None
    gain = rate - (head_rate or 0.0)
    return lag / gain if gain > 0 else None


def describe(progress: Progress, unit: str = "position") -> str:
    """One short human line, e.g. ``block 1,200 of 1,500: 300 behind (5m00s), +40.0/s, ETA 7s``."""
    if progress.position is None:
        return "nothing read yet"
    where = f"{unit} {progress.position:,}" + (f" of {progress.head:,}" if progress.head is not None else "")
    if progress.lag == 0 or (progress.lag is None and progress.at_head):
        return f"{where}: at the head" + (f" ({duration(progress.lag_seconds)})" if progress.lag_seconds else "")
    behind = [f"{progress.lag:,} behind"] if progress.lag is not None else []
    if progress.lag_seconds is not None:
        behind.append(f"({duration(progress.lag_seconds)})" if behind else f"{duration(progress.lag_seconds)} behind")
    line = f"{where}: {' '.join(behind)}" if behind else where
    if progress.rate is not None and progress.head is not None:
        line += f", +{progress.rate:,.1f}/s"
    if progress.eta_seconds is not None:
        line += f", ETA {duration(progress.eta_seconds)}"
    return line


def duration(seconds: float) -> str:
    """``42s``, ``5m07s``, ``3h05m``, ``2d04h``: two units at most."""
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
