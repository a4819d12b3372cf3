"""Event ids are judged before they move the cursor (weir.codecs.farcaster_positions, ShardReader).

Property: over a shard's stream with bad items injected anywhere (ids far ahead of the node's
height, ids that contradict the event's own fields, damaged or oversized events whose id reads as
2^60, replays of older events), cut into reads at random, every valid event comes out exactly once
and in order, every bad item is a dead letter without a position, and the cursor (each chunk's
``through``) is only ever the id of a valid event.
"""

from __future__ import annotations

import functools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weir.actors.farcaster import ShardReader, ShardStats
from weir.codecs.farcaster_gaps import GapDetector
from weir.codecs.farcaster_keys import BLOCK_CONFIRMED, MERGE_MESSAGE, scan_hub_event
from weir.codecs.farcaster_positions import ACCEPT, DEAD_LETTER, HOLD, REFUSE, REPLAY, PositionJudge
from weir.codecs.grpc_frames import SkippedMessage
from weir.codecs.protowire import LEN, encode_varint, iter_fields, read_varint
from weir.sim.farcaster_data import SnapchainSimConfig, compose_hub_event, generate_offered

SHARD = 1
BOGUS = 1 << 60
JUMP = 50


@functools.cache
def stream() -> list[tuple[int, bytes]]:
    return generate_offered(SnapchainSimConfig(shards=2, seed=11), SHARD, 300)


def restamp(payload: bytes, new_id: int) -> bytes:
    """``payload`` with its id (field 2, right after the type) replaced, every other byte kept."""
    _, pos = read_varint(payload, 1)  # the type's value
    assert payload[pos] == 0x10
    _, after_id = read_varint(payload, pos + 1)
    return payload[: pos + 1] + encode_varint(new_id) + payload[after_id:]


def merge_body(payload: bytes) -> bytes:
    for field, wire_type, start, end in iter_fields(payload):
        if field == 3 and wire_type == LEN:
            return payload[start:end]
    raise AssertionError("not a MERGE_MESSAGE")


def a_merge() -> bytes:
    return next(p for _, p in stream() if scan_hub_event(p).event_type == MERGE_MESSAGE)


def bad_item(kind: str, last_valid: int) -> bytes | SkippedMessage:
    """One bad item, placed after the valid event ``last_valid``."""
    block = last_valid >> 14
    merge = a_merge()
    if kind == "bogus_id":  # well-formed, id 2^60
        return restamp(merge, BOGUS)
    if kind == "bogus_block_confirmed":
        block_confirmed = next(p for i, p in stream() if i & 0x3FFF == 0)
        return restamp(block_confirmed, BOGUS)
    if kind == "far_but_consistent":  # every field agrees, but the block is far past the node's height
        far = block + 10 * JUMP + 1_000
        return compose_hub_event(MERGE_MESSAGE, (far << 14) | 1, merge_body(merge), far, SHARD, 100)
    if kind == "wrong_block_field":  # the id names the next block, the event says this one
        return compose_hub_event(MERGE_MESSAGE, ((block + 1) << 14) | 3, merge_body(merge), block, SHARD, 100)
    if kind == "seq0_not_confirmed":
        return compose_hub_event(MERGE_MESSAGE, (block + 1) << 14, merge_body(merge), block + 1, SHARD, 100)
    if kind == "malformed_bogus":  # the body runs past the end, the id still reads as 2^60
        bogus = restamp(merge, BOGUS)
        return bogus[: len(bogus) // 2]
    if kind == "oversized_bogus":
        return SkippedMessage(size=5_243_065, head=restamp(merge, BOGUS)[:40], why="above the 4194304-byte limit")
    raise AssertionError(kind)


BAD_KINDS = ["bogus_id", "bogus_block_confirmed", "far_but_consistent", "wrong_block_field", "seq0_not_confirmed",
             "malformed_bogus", "oversized_bogus"]


def new_reader(max_bad_in_row: int) -> ShardReader:
    events = stream()
    judge = PositionJudge(shard=SHARD, max_block_jump=JUMP, max_bad_in_row=max_bad_in_row)
    judge.announce_height(events[-1][0] >> 14)  # what GetInfo says before the stream begins
    reader = ShardReader(shard=SHARD, partition=str(SHARD), detector=GapDetector(), stats=ShardStats(), judge=judge)
    reader.detector.subscribed_from(0)
    return reader


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    injections=st.lists(st.tuples(st.integers(0, 299), st.sampled_from([*BAD_KINDS, "replay"])), max_size=25),
    cuts=st.lists(st.integers(1, 400), max_size=12),
    max_bad_in_row=st.integers(1, 5),
)
def test_no_valid_event_is_lost_and_the_cursor_never_takes_a_bad_id(injections, cuts, max_bad_in_row):
    events = stream()
    valid_ids = {id_ for id_, _ in events}
    items: list[bytes | SkippedMessage] = []
    bad = 0
    by_index: dict[int, list[str]] = {}
    for index, kind in injections:
        by_index.setdefault(index, []).append(kind)
    for i, (id_, payload) in enumerate(events):
        items.append(payload)
        for kind in by_index.get(i, []):
            if kind == "replay":
                items.append(events[i // 2][1])  # an older event again: skipped, not a dead letter
            else:
                items.append(bad_item(kind, id_))
                bad += 1
    reader = new_reader(max_bad_in_row)
    got: list[int] = []
    dead = []
    throughs: list[int] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(items)]:
        chunk = reader.read(items[start:cut], received=0.0)
        start = max(start, cut)
        if chunk is not None:
            got += [e.position for e in chunk.events]
            dead += chunk.dead
            throughs.append(chunk.through)
        if reader.refusal is not None:  # the actor drops the node; the next connection resumes here
            reader.refusal = None
            reader.judge.bad_in_row = 0
    assert got == [id_ for id_, _ in events]
    assert throughs == sorted(throughs) and set(throughs) <= valid_ids
    assert reader.last_id == events[-1][0]
    assert len(dead) == bad
    assert all(letter.position is None and "implausible id" in letter.reason for letter in dead)
    assert reader.stats.implausible_positions == bad


def judge() -> PositionJudge:
    j = PositionJudge(shard=1, max_block_jump=100, max_bad_in_row=3)
    j.announce_height(1_000)
    return j


def test_replays_are_not_bad_and_do_not_count():
    j = judge()
    assert j.judge(10 << 14, last_id=(10 << 14) | 5, event_type=BLOCK_CONFIRMED).action == REPLAY
    assert j.bad_in_row == 0


def test_the_jump_is_measured_from_the_announced_height_or_the_last_accepted_block():
    j = judge()
    assert j.judge((1_100 << 14) | 1, last_id=None, event_type=MERGE_MESSAGE).action == ACCEPT
    assert j.height == 1_100  # an accepted block raises what is known to exist
    assert j.judge((1_200 << 14) | 1, last_id=(1_100 << 14) | 1, event_type=MERGE_MESSAGE).action == ACCEPT
    verdict = j.judge((1_301 << 14) | 1, last_id=(1_200 << 14) | 1, event_type=MERGE_MESSAGE)
    assert verdict.action == DEAD_LETTER
    assert "101 blocks past the highest known block 1200" in verdict.reason and "farcaster.max_block_jump" in verdict.reason


def test_without_any_height_the_first_consistent_id_is_accepted():
    j = PositionJudge(shard=1, max_block_jump=100, max_bad_in_row=3)
    assert j.judge((5_000 << 14) | 2, last_id=None, event_type=MERGE_MESSAGE, block_field=5_000).action == ACCEPT
    assert j.judge((5_200 << 14) | 2, last_id=(5_000 << 14) | 2, event_type=MERGE_MESSAGE).action == DEAD_LETTER


def test_inconsistent_ids_are_named():
    j = PositionJudge(shard=1, max_block_jump=100, max_bad_in_row=10)
    cases = [
        (dict(event_type=MERGE_MESSAGE, block_field=7), (8 << 14) | 1, "the event says block 7"),
        (dict(event_type=MERGE_MESSAGE, shard_field=2), (8 << 14) | 1, "an event of shard 2 on shard 1's stream"),
        (dict(event_type=BLOCK_CONFIRMED), (8 << 14) | 1, "BLOCK_CONFIRMED at seq 1"),
        (dict(event_type=BLOCK_CONFIRMED, confirmed_block=9), 8 << 14, "confirms block 9"),
        (dict(event_type=MERGE_MESSAGE), 8 << 14, "seq 0 of block 8 belongs to its BLOCK_CONFIRMED"),
    ]
    for fields, event_id, reason in cases:
        verdict = j.judge(event_id, last_id=7 << 14, **fields)
        assert verdict.action == DEAD_LETTER and reason in verdict.reason, (fields, verdict)
    # an unknown type (a damaged event) is judged on what can be read
    assert j.judge(8 << 14, last_id=7 << 14, event_type=None).action == ACCEPT


def test_bad_ids_in_a_row_refuse_the_node_and_a_good_one_resets_the_count():
    j = judge()
    last = 1_000 << 14
    assert j.judge(BOGUS, last_id=last, event_type=MERGE_MESSAGE).action == DEAD_LETTER
    assert j.judge(BOGUS + 1, last_id=last, event_type=MERGE_MESSAGE).action == DEAD_LETTER
    assert j.judge(last + 1, last_id=last, event_type=MERGE_MESSAGE).action == ACCEPT
    assert j.bad_in_row == 0
    for _ in range(2):
        assert j.judge(BOGUS, last_id=last + 1, event_type=MERGE_MESSAGE).action == DEAD_LETTER
    verdict = j.judge(BOGUS, last_id=last + 1, event_type=MERGE_MESSAGE)
    assert verdict.action == REFUSE and "3 implausible ids in a row" in verdict.reason


def test_a_far_but_consistent_id_is_held_for_a_new_height_and_not_counted():
    j = judge()
    far = (1_500 << 14) | 1
    verdict = j.judge(far, last_id=1_000 << 14, event_type=MERGE_MESSAGE, may_hold=True)
    assert verdict.action == HOLD and j.bad_in_row == 0
    j.announce_height(1_450)  # GetInfo again: the node did move on
    assert j.judge(far, last_id=1_000 << 14, event_type=MERGE_MESSAGE).action == ACCEPT
    # inconsistent ids are never held: asking the height cannot make them plausible
    assert j.judge(BOGUS, last_id=far, event_type=MERGE_MESSAGE, may_hold=True).action == DEAD_LETTER


def test_the_reader_leaves_what_follows_a_held_id_for_the_next_read():
    first_block = stream()[0][0] >> 14
    events = [e for e in stream() if (e[0] >> 14) == first_block or (e[0] >> 14) >= first_block + 5]  # a skip forward
    reader = new_reader(10)
    reader.judge.height = first_block  # GetInfo said: only the first block exists
    reader.judge.max_block_jump = 1
    chunk = reader.read([p for _, p in events], received=0.0, may_hold=True)
    held = reader.held
    assert chunk is not None and held is not None and len(chunk.events) + len(held) == len(events)
    assert chunk.dead == [] and chunk.through == chunk.events[-1].position
    reader.held = None
    reader.judge.announce_height(events[-1][0] >> 14)  # GetInfo again: the node did move on
    rest = reader.read(held, received=0.0)
    assert [e.position for e in chunk.events + rest.events] == [id_ for id_, _ in events]
    assert reader.stats.received == len(events) and reader.stats.dead_letters == 0


@settings(max_examples=400)
@given(
    height=st.none() | st.integers(0, 1 << 20),
    bad_in_row=st.integers(0, 2),
    last_id=st.none() | st.integers(0, 1 << 34),
    step=st.integers(-3, 1 << 15),
    event_type=st.sampled_from([MERGE_MESSAGE, BLOCK_CONFIRMED, 2, 9]),
    block_field=st.sampled_from(["none", "same", "other"]),
    shard_field=st.sampled_from([0, SHARD, SHARD + 1]),
    may_hold=st.booleans(),
)
def test_the_steady_block_is_what_judge_accepts_without_a_change(
    height, bad_in_row, last_id, step, event_type, block_field, shard_field, may_hold
) -> None:
    """The reader decides events of ``steady_block`` inline: judge() must agree and stay as it was."""
    judge = PositionJudge(shard=SHARD, max_block_jump=JUMP, max_bad_in_row=5, height=height, bad_in_row=bad_in_row)
    steady = judge.steady_block(last_id)
    event_id = max(0, (last_id or 0) + step)
    block = event_id >> 14
    field = {"none": 0, "same": block, "other": block + 1}[block_field]
    inline = (
        steady is not None and block == steady and event_id > last_id and event_type != BLOCK_CONFIRMED
        and (not field or field == steady) and (not shard_field or shard_field == SHARD)
    )
    before = (judge.height, judge.bad_in_row)
    verdict = judge.judge(event_id, last_id=last_id, event_type=event_type, block_field=field,
                          shard_field=shard_field, may_hold=may_hold)
    if inline:
        assert verdict.action == ACCEPT
        assert (judge.height, judge.bad_in_row) == before
    if steady is not None:
        assert steady == last_id >> 14


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4), st.sampled_from([MERGE_MESSAGE, BLOCK_CONFIRMED, 2, 9])),
                max_size=30),
       st.none() | st.integers(0, 4 << 14))
def test_open_counts_are_what_observe_adds_to(events, resume_from) -> None:
    """An event of the open block other than BLOCK_CONFIRMED: no gap, one more of its type."""
    from weir.codecs.farcaster_keys import BlockCounts, HubEventKeys

    detector = GapDetector()
    detector.subscribed_from(resume_from)
    for block, seq, event_type in events:
        event_id = block << 14 | seq
        body = BlockCounts(block, 3, {MERGE_MESSAGE: 3}) if event_type == BLOCK_CONFIRMED else None
        keys = HubEventKeys(event_type, event_id, SHARD, block, 0, 0, 0, b"", body)
        counts = detector.open_counts(block)
        expected = None if counts is None else {**counts, event_type: counts.get(event_type, 0) + 1}
        gaps = detector.observe(keys)
        if counts is not None and event_type != BLOCK_CONFIRMED:
            assert gaps == []
            assert detector.open_counts(block) == expected
