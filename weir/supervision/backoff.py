"""Exponential backoff with full jitter."""

from __future__ import annotations

import random

import attrs


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class Backoff:
    """Exponential backoff with full jitter: attempt ``n`` waits ``uniform(0, cap(n))``.

    Full jitter spreads restarts of many failing actors over the whole window instead of
    having them retry in lock-step against a dependency that is just coming back.

    Attributes:
      initial: Cap of the first attempt, in seconds.
      maximum: Upper bound of every cap, in seconds.
      multiplier: Growth of the cap per attempt.
    """

    initial: float = attrs.field(default=0.1, validator=_non_negative)
    maximum: float = attrs.field(default=10.0, validator=_non_negative)
    multiplier: float = attrs.field(default=2.0, validator=_at_least_one)

    def cap(self, attempt: int) -> float:
        """Largest delay attempt ``attempt`` (counted from 0) may get.

        Returns:
          ``min(maximum, initial * multiplier ** attempt)``.
        """
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        try:
            grown = self.initial * self.multiplier**attempt
        except OverflowError:
            # Only reachable after hundreds of attempts; the cap has long been `maximum`.
            grown = self.maximum
        return min(self.maximum, grown)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Draw the delay before attempt ``attempt`` (counted from 0).

        Args:
          attempt: How many delays were drawn since the last reset.
          rng: Source of jitter; pass a seeded one for reproducible runs.

        Returns:
          A delay in seconds, uniform in ``[0, cap(attempt)]``.
        """
        return rng.uniform(0.0, self.cap(attempt))

    def state(self, rng: random.Random) -> BackoffState:
        """Start a fresh attempt counter over this policy."""
        return BackoffState(policy=self, rng=rng)


@attrs.define(eq=False, kw_only=True)
class BackoffState:
    """An attempt counter over a :class:`Backoff` policy.

    Attributes:
      policy: The backoff policy.
      rng: Source of jitter.
      attempt: Number of delays drawn since the last reset.
    """

    policy: Backoff
    rng: random.Random
    attempt: int = 0

    def next_delay(self) -> float:
        """Draw the delay for the current attempt and count it."""
        delay = self.policy.delay(self.attempt, self.rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Start again from the first attempt (after a stable period)."""
        self.attempt = 0
