"""Gap detection from event ids (retention) and BLOCK_CONFIRMED counts (a skipped subscriber)."""

from __future__ import annotations

from weir.codecs.farcaster_gaps import GapDetector
from weir.codecs.farcaster_keys import BLOCK_CONFIRMED, MERGE_MESSAGE, MERGE_ON_CHAIN_EVENT, BlockCounts, HubEventKeys


def event(block: int, seq: int, event_type: int = MERGE_MESSAGE) -> HubEventKeys:
    return HubEventKeys(event_type, (block << 14) | seq, 1, block, 0, 7, 1, b"h", None)


def confirmed(block: int, counts: dict[int, int]) -> HubEventKeys:
    announced = BlockCounts(block, sum(counts.values()) + 1, counts)
    return HubEventKeys(BLOCK_CONFIRMED, block << 14, 1, block, 0, 0, 0, b"", announced)


def run(detector: GapDetector, keys: list[HubEventKeys]) -> list:
    gaps = []
    for k in keys:
        gaps.extend(detector.observe(k))
    return gaps


def test_complete_blocks_report_nothing() -> None:
    detector = GapDetector()
    detector.subscribed_from(None)
    stream = [confirmed(10, {MERGE_MESSAGE: 2, MERGE_ON_CHAIN_EVENT: 1}), event(10, 1), event(10, 2), event(10, 3, MERGE_ON_CHAIN_EVENT),
              confirmed(11, {MERGE_MESSAGE: 1}), event(11, 1), confirmed(12, {})]
    assert run(detector, stream) == []


def test_a_missing_event_is_reported_when_its_block_ends() -> None:
    detector = GapDetector()
    detector.subscribed_from(None)
    stream = [confirmed(10, {MERGE_MESSAGE: 3}), event(10, 1), event(10, 3), confirmed(11, {})]
    gaps = run(detector, stream)
    assert len(gaps) == 1
    assert gaps[0].kind == "block_count" and gaps[0].missing == 1
    assert "block 10" in gaps[0].detail and "MERGE_MESSAGE 2/3" in gaps[0].detail


def test_types_not_subscribed_are_not_expected() -> None:
    detector = GapDetector(subscribed=[MERGE_MESSAGE, BLOCK_CONFIRMED])
    detector.subscribed_from(None)
    stream = [confirmed(10, {MERGE_MESSAGE: 1, MERGE_ON_CHAIN_EVENT: 4}), event(10, 1), confirmed(11, {})]
    assert run(detector, stream) == []


def test_joining_mid_block_checks_nothing_for_that_block() -> None:
    detector = GapDetector()
    detector.subscribed_from((10 << 14) | 2)
    stream = [event(10, 2), event(10, 3), confirmed(11, {MERGE_MESSAGE: 1}), event(11, 1), confirmed(12, {})]
    assert run(detector, stream) == []


def test_resume_at_next_block_is_not_a_gap() -> None:
    detector = GapDetector()
    detector.subscribed_from((10 << 14) | 5)  # block 10 ended at seq 4
    assert run(detector, [confirmed(11, {})]) == []


def test_resume_past_retention_is_reported() -> None:
    detector = GapDetector()
    detector.subscribed_from((10 << 14) | 5)
    gaps = run(detector, [confirmed(500, {})])
    assert [g.kind for g in gaps] == ["retention"]
    assert "block 10" in gaps[0].detail and "block 500" in gaps[0].detail


def test_resume_skipping_into_the_next_block_is_reported() -> None:
    detector = GapDetector()
    detector.subscribed_from((10 << 14) | 5)
    gaps = run(detector, [event(11, 3)])  # BLOCK_CONFIRMED and events 1-2 of block 11 are gone
    assert [g.kind for g in gaps] == ["retention"]


def test_a_stream_that_jumps_over_whole_blocks_is_reported() -> None:
    # The node skipped a lagging subscriber forward at a block boundary: the block it lands in is
    # complete, so only the block numbers show what was lost.
    detector = GapDetector()
    detector.subscribed_from(None)
    stream = [confirmed(10, {MERGE_MESSAGE: 1}), event(10, 1), confirmed(14, {MERGE_MESSAGE: 1}), event(14, 1)]
    gaps = run(detector, stream)
    assert [g.kind for g in gaps] == ["skipped_blocks"]
    assert "blocks 11..13" in gaps[0].detail


def test_consecutive_blocks_without_events_are_not_a_gap() -> None:
    detector = GapDetector(subscribed=[MERGE_ON_CHAIN_EVENT, BLOCK_CONFIRMED])
    detector.subscribed_from(None)
    assert run(detector, [confirmed(n, {MERGE_MESSAGE: 3}) for n in range(10, 20)]) == []


def test_more_events_than_announced_is_reported() -> None:
    detector = GapDetector()
    detector.subscribed_from(None)
    stream = [confirmed(10, {MERGE_MESSAGE: 1}), event(10, 1), event(10, 2), confirmed(11, {})]
    gaps = run(detector, stream)
    assert [g.kind for g in gaps] == ["block_count"]
    assert "MERGE_MESSAGE 2/1" in gaps[0].detail and gaps[0].missing == 0


def test_starting_from_the_oldest_retained_event_is_not_a_gap() -> None:
    detector = GapDetector()
    detector.subscribed_from(0)  # start = "oldest": from_id 0 asks for whatever the node holds
    assert run(detector, [confirmed(500, {MERGE_MESSAGE: 1}), event(500, 1), confirmed(501, {})]) == []
