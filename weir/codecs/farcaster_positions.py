"""Is a Snapchain event id plausible? Decided before the id may move the cursor (sans-IO).

An id is ``(block_number << 14) | seq`` (shared/notes/protocols.md §1): BLOCK_CONFIRMED is seq 0
of its block, every other event has seq 1, 2, … in commit order, and a shard's blocks are
numbered one after another. The cursor only ever grows, so one id believed too far ahead turns
every later valid event into a "replay" for good. The judge therefore accepts an id only when

- it is above the last accepted id (else it is a replay: skipped, nothing moves);
- it agrees with the event's own fields: the ``block_number`` field (12) and, for BLOCK_CONFIRMED,
  its body's block number name the id's block; BLOCK_CONFIRMED has seq 0 and nothing else does;
  the event's ``shard_index`` is the stream's shard;
- its block is at most ``max_block_jump`` blocks past the highest block known to exist: the
  height the node announced (GetInfo's ``ShardInfo.max_height``, asked at every connect) or the
  highest block accepted on the stream since, whichever is higher.

An implausible id is dead-lettered and the cursor stays where it was; ``max_bad_in_row`` of them
in a row and the judge says the node is to be refused (disconnected and reported). The jump bound
is a heuristic: an honest node never sends an id above its own height, and its height grows about
one block a second, block by block on a live stream, so only a node that skipped a lagging
subscriber forward by more than ``max_block_jump`` blocks within one connection trips it; then the
refusal reconnects, GetInfo announces the new height, and the events come again and are accepted.
Before an id is dead-lettered for being too far ahead, the actor asks the node's height again
(HOLD): a node that skipped a lagging subscriber forward is then believed, and only an id past
the height the node itself announces is refused. With no height announced and nothing accepted yet there is nothing to judge against: the first
consistent id is accepted (the actor always asks GetInfo first, so this is a node without one).
"""

from __future__ import annotations

import attrs

from weir.codecs.farcaster_gaps import split_event_id
from weir.codecs.farcaster_keys import BLOCK_CONFIRMED

ACCEPT = "accept"
REPLAY = "replay"
DEAD_LETTER = "dead_letter"
REFUSE = "refuse"
HOLD = "hold"  # too far ahead of the height known: ask the node for its height, then judge again


@attrs.frozen(slots=True)
class PositionVerdict:
    """``action`` is ACCEPT, REPLAY, DEAD_LETTER or REFUSE (dead-letter it, then drop the node);
    ``reason`` says why, in one line, for the last two."""

    action: str
    reason: str = ""


_ACCEPTED = PositionVerdict(ACCEPT)
_REPLAYED = PositionVerdict(REPLAY)


@attrs.define(eq=False)
class PositionJudge:
    """Judges the ids of one shard's stream, in order (one per shard; survives reconnects).

    Args:
        shard: the stream's shard; an event naming another is implausible.
        max_block_jump: blocks past the highest known block an id may point.
        max_bad_in_row: implausible ids in a row that make the verdict REFUSE.
    """

    shard: int
    max_block_jump: int
    max_bad_in_row: int
    height: int | None = None  # the highest block known to exist (announced, or accepted)
    bad_in_row: int = 0

    def announce_height(self, max_height: int | None) -> None:
        """The node says its shard is at block ``max_height`` (GetInfo; None or 0: it did not say)."""
        if max_height and (self.height is None or max_height > self.height):
            self.height = max_height

    def judge(
        self,
        event_id: int,
        *,
        last_id: int | None,
        event_type: int | None,
        block_field: int = 0,
        shard_field: int = 0,
        confirmed_block: int | None = None,
        may_hold: bool = False,
    ) -> PositionVerdict:
        """The verdict on ``event_id``, given the last accepted id.

        Args:
            event_type: the HubEventType, None when it could not be read (a damaged event).
            block_field, shard_field: the event's block_number and shard_index (0: absent).
            confirmed_block: a BLOCK_CONFIRMED body's block number, None without one.
            may_hold: an id that is consistent but too far ahead gets HOLD (not counted) instead
                of DEAD_LETTER: the caller asks the node's height again and judges it once more.
        """
        if last_id is not None and event_id <= last_id:
            return _REPLAYED
        problem = self._inconsistency(event_id, event_type, block_field, shard_field, confirmed_block)
        if problem is None:
            problem = self._too_far(event_id, last_id)
            if problem is not None and may_hold:
                return PositionVerdict(HOLD, problem)
        if problem is not None:
            self.bad_in_row += 1
            if self.bad_in_row >= self.max_bad_in_row:
                return PositionVerdict(REFUSE, f"{problem} ({self.bad_in_row} implausible ids in a row)")
            return PositionVerdict(DEAD_LETTER, problem)
        self.bad_in_row = 0
        block = event_id >> 14
        if self.height is None or block > self.height:
            self.height = block
        return _ACCEPTED

    def steady_block(self, last_id: int | None) -> int | None:
        """The block of ``last_id`` while any later event of it is plainly accepted, else None.

        Then ``judge`` accepts an event of that block with an id above ``last_id``, other than a
        BLOCK_CONFIRMED, whose block and shard fields are 0 or agree, and changes nothing: no bad id
        is being counted, and the height is already at the block. The reader decides those events
        inline (tests/test_farcaster_positions.py checks the two agree).
        """
        if last_id is None or self.bad_in_row or self.height is None:
            return None
        block = last_id >> 14
        return block if block <= self.height else None

    def _inconsistency(
        self, event_id: int, event_type: int | None, block_field: int, shard_field: int, confirmed_block: int | None
    ) -> str | None:
        block, seq = split_event_id(event_id)
        if block_field and block_field != block:
            return f"implausible id {event_id}: it names block {block}, the event says block {block_field}"
        if shard_field and shard_field != self.shard:
            return f"implausible id {event_id}: an event of shard {shard_field} on shard {self.shard}'s stream"
        if event_type == BLOCK_CONFIRMED:
            if seq != 0:
                return f"implausible id {event_id}: a BLOCK_CONFIRMED at seq {seq} of block {block} (it is always seq 0)"
            if confirmed_block is not None and confirmed_block != block:
                return f"implausible id {event_id}: it names block {block}, its BLOCK_CONFIRMED body confirms block {confirmed_block}"
        elif event_type is not None and seq == 0:
            return f"implausible id {event_id}: seq 0 of block {block} belongs to its BLOCK_CONFIRMED"
        return None

    def _too_far(self, event_id: int, last_id: int | None) -> str | None:
        known = self.height
        if last_id is not None:
            last_block = last_id >> 14
            if known is None or last_block > known:
                known = last_block
        if known is None:
            return None
        block = event_id >> 14
        if block > known + self.max_block_jump:
            return (
                f"implausible id {event_id}: block {block} is {block - known} blocks past the highest "
                f"known block {known} (farcaster.max_block_jump = {self.max_block_jump})"
            )
        return None
