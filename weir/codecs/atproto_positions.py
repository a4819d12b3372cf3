"""Is an AT Protocol position plausible? Decided before it may move the cursor (sans-IO).

The cursor only ever grows, so one position believed too far ahead turns every later valid event
into a "replay" (firehose) or pushes every later position past it (Jetstream). The judges here
say, for each position in arrival order, ACCEPT, REPLAY, DEAD_LETTER or REFUSE (the verdicts of
:mod:`weir.codecs.farcaster_positions`, whose rules for Snapchain ids these follow).

Firehose (:class:`SeqJudge`). A relay numbers its events one after another (per relay, increasing,
with small gaps); a connection with ``?cursor=N`` is replayed from N on, one without starts at the
relay's current seq. So a seq is accepted only when

- it is above the last accepted one (else it is a replay: skipped, nothing moves);
- it is at most ``max_jump`` above the last accepted one, unless nothing was accepted yet (a first
  connection without a cursor: the relay's current seq is whatever comes first) or the relay just
  said it skips ahead (``#info OutdatedCursor``: the cursor is older than its retention, it
  replays from the oldest event it holds, which may be any distance above).

Jetstream (:class:`TimeJudge`). ``time_us`` is the server's clock when it handled the event; it is
not an identity and not monotonic (:mod:`weir.codecs.atproto_order` judges identity and order), but
it is never far ahead of the wall clock: a ``time_us`` more than ``max_skew_us`` past now is
implausible. Earlier ones are never rejected here (a late one is placed above the highest).

An implausible position is dead-lettered and the cursor stays; ``max_bad_in_row`` of them in a row
and the verdict is REFUSE: the connection is dropped and reported, and reconnects (with backoff)
from the last accepted position.
"""

from __future__ import annotations

import attrs

from weir.codecs.farcaster_positions import ACCEPT, DEAD_LETTER, REFUSE, REPLAY, PositionVerdict

__all__ = ["ACCEPT", "DEAD_LETTER", "REFUSE", "REPLAY", "PositionVerdict", "SeqJudge", "TimeJudge"]

_ACCEPTED = PositionVerdict(ACCEPT)
_REPLAYED = PositionVerdict(REPLAY)


@attrs.define(eq=False)
class _BadRun:
    """Counts implausible positions in a row; the run's length decides DEAD_LETTER or REFUSE."""

    max_bad_in_row: int
    bad_in_row: int = 0

    def bad(self, problem: str) -> PositionVerdict:
        self.bad_in_row += 1
        if self.bad_in_row >= self.max_bad_in_row:
            return PositionVerdict(REFUSE, f"{problem} ({self.bad_in_row} implausible positions in a row)")
        return PositionVerdict(DEAD_LETTER, problem)

    def good(self) -> PositionVerdict:
        self.bad_in_row = 0
        return _ACCEPTED


@attrs.define(eq=False)
class SeqJudge(_BadRun):
    """Judges the seqs of one relay's firehose, in order (one per partition; survives reconnects).

    Args:
        max_jump: how far above the last accepted seq a seq may be.
        max_bad_in_row: implausible seqs in a row that make the verdict REFUSE.
        last: the last accepted seq (the persisted cursor at a start); None: nothing yet.
    """

    max_jump: int = 1_000_000
    last: int | None = None
    skip_announced: bool = False  # the relay said OutdatedCursor: its next seq may be any distance ahead

    def relay_skips_ahead(self) -> None:
        """The relay announced (``#info OutdatedCursor``) that it replays from its oldest event."""
        self.skip_announced = True

    def judge(self, seq: int) -> PositionVerdict:
        """The verdict on ``seq``; an accepted one becomes the last."""
        last = self.last
        if last is not None and seq <= last:
            return _REPLAYED
        if last is not None and seq - last > self.max_jump and not self.skip_announced:
            return self.bad(f"implausible seq {seq}: {seq - last} above the last accepted seq {last} "
                            f"(atproto.max_seq_jump = {self.max_jump})")
        self.last = seq
        self.skip_announced = False
        self.bad_in_row = 0  # self.good(), without the call on every frame
        return _ACCEPTED


@attrs.define(eq=False)
class TimeJudge(_BadRun):
    """Judges Jetstream ``time_us`` against the wall clock (one per partition; survives reconnects).

    Args:
        max_skew_us: how far past the wall clock a time_us may be.
        max_bad_in_row: implausible time_us in a row that make the verdict REFUSE.
    """

    max_skew_us: int = 300_000_000

    def judge(self, time_us: int, *, now_us: int) -> PositionVerdict:
        """ACCEPT (the order decides what it means), DEAD_LETTER or REFUSE."""
        if time_us - now_us > self.max_skew_us:
            return self.bad(f"implausible time_us {time_us}: {(time_us - now_us) / 1e6:.0f} s past the wall clock "
                            f"(atproto.max_future_skew = {self.max_skew_us / 1e6:g} s)")
        return self.good()
