"""Detect missed Farcaster events from ids and BLOCK_CONFIRMED counts (sans-IO, pure logic).

Three kinds of gap are reported:
- retention: after Subscribe(from_id), the first event is past the point the stream should have
  resumed at — the node no longer had the requested events (they are kept ~3 days).
- block count: a BLOCK_CONFIRMED event (seq 0, first in its block) announces how many events of
  each type its block holds; when the block ends, the events received of each subscribed type must
  match. A mismatch means the node skipped us forward (it does so silently to a lagging subscriber).
- skipped blocks: a shard's block numbers are consecutive and every block starts with its
  BLOCK_CONFIRMED (always subscribed), so a stream that jumps from block N to N + 2 or more lost
  the blocks in between, even when the block it lands in is complete.
"""

from __future__ import annotations

from collections.abc import Collection

import attrs

from weir.codecs.farcaster_keys import BLOCK_CONFIRMED, HUB_EVENT_TYPES, BlockCounts, HubEventKeys

SEQ_BITS = 14
SEQ_MASK = (1 << SEQ_BITS) - 1


def split_event_id(event_id: int) -> tuple[int, int]:
    """(block number, sequence in block) of a Snapchain event id."""
    return event_id >> SEQ_BITS, event_id & SEQ_MASK


@attrs.frozen(kw_only=True)
class Gap:
    """A detected gap; ``missing`` is the number of events known to be missed (-1 when unknown)."""

    kind: str  # "retention" | "block_count" | "skipped_blocks"
    detail: str
    missing: int = -1


@attrs.define(eq=False)
class GapDetector:
    """Feed it every event of one shard's stream, in order; it returns the gaps it finds.

    Args:
        subscribed: the HubEventType values the stream carries (empty = all).
    """

    subscribed: Collection[int] = ()
    _resume_from: int | None = None
    _block: int | None = None
    _announced: BlockCounts | None = None
    _counts: dict[int, int] = attrs.Factory(dict)

    def subscribed_from(self, from_id: int | None) -> None:
        """A new subscription starts (``from_id`` None = live): forget the partial block."""
        # from_id 0 is `start = "oldest"`: whatever the node still holds is the beginning, not a gap
        self._resume_from = from_id or None
        self._block = None
        self._announced = None
        self._counts = {}

    def open_counts(self, block: int | None) -> dict[int, int] | None:
        """The per-type counts of ``block`` while the detector is inside it with nothing else to
        check, else None: then observing an event of that block other than a BLOCK_CONFIRMED finds
        no gap and only adds one to its type's count, which the reader does inline."""
        if block is None or block != self._block or self._resume_from is not None:
            return None
        return self._counts

    def observe(self, keys: HubEventKeys) -> list[Gap]:
        gaps: list[Gap] = []
        block, seq = split_event_id(keys.event_id)
        if self._resume_from is not None:
            want_block, _ = split_event_id(self._resume_from)
            # Legitimate first events: anything in the requested block (types may be filtered
            # server-side), or the next block's BLOCK_CONFIRMED.
            if keys.event_id > self._resume_from and not (
                block == want_block or (block == want_block + 1 and seq == 0)
            ):
                gaps.append(
                    Gap(
                        kind="retention",
                        detail=f"asked to resume from event {self._resume_from} (block {want_block}), "
                        f"the stream began at event {keys.event_id} (block {block}); "
                        "the node no longer holds the events in between",
                    )
                )
            self._resume_from = None
        if block != self._block:
            gap = self._close_block()
            if gap is not None:
                gaps.append(gap)
            if self._block is not None and block > self._block + 1:
                gaps.append(
                    Gap(
                        kind="skipped_blocks",
                        detail=f"the stream went from block {self._block} to block {block}: "
                        f"blocks {self._block + 1}..{block - 1} were never received",
                    )
                )
            self._block = block
            self._announced = None
            self._counts = {}
        if keys.event_type == BLOCK_CONFIRMED and keys.block is not None and seq == 0:
            self._announced = keys.block
        else:
            self._counts[keys.event_type] = self._counts.get(keys.event_type, 0) + 1
        return gaps

    def _close_block(self) -> Gap | None:
        announced = self._announced
        if announced is None:  # joined mid-block, or no BLOCK_CONFIRMED: nothing to check
            return None
        missing = 0
        details = []
        for event_type, expected in sorted(announced.counts_by_type.items()):
            if event_type == BLOCK_CONFIRMED:
                continue
            if self.subscribed and event_type not in self.subscribed:
                continue
            got = self._counts.get(event_type, 0)
            if got != expected:
                missing += max(0, expected - got)
                details.append(f"{HUB_EVENT_TYPES.get(event_type, str(event_type))} {got}/{expected}")
        if not details:
            return None
        return Gap(
            kind="block_count",
            detail=f"block {announced.block_number}: received {', '.join(details)} events announced by BLOCK_CONFIRMED",
            missing=missing,
        )
