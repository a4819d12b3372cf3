"""Property tests of the AT Protocol position judges (weir/codecs/atproto_positions.py), alone and
inside the readers: random streams with bad positions injected, no valid event after a bad one is
ever lost, the cursor never reaches an unverified position."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from weir.actors.atproto import AtprotoStats, FirehoseReader, JetstreamReader
from weir.actors.ws_bounded import OversizedMessage
from weir.codecs import atproto_cbor as cbor
from weir.codecs.atproto_firehose import seq_of_head
from weir.codecs.atproto_jetstream import time_us_of_head
from weir.codecs.atproto_positions import ACCEPT, DEAD_LETTER, REFUSE, REPLAY, SeqJudge, TimeJudge

MAX_JUMP = 1000
MAX_BAD = 4
NOW_US = 1_754_850_000_000_000
SKEW_US = 300_000_000


def identity_frame(seq: int) -> bytes:
    return cbor.encode({"t": "#identity", "op": 1}) + cbor.encode(
        {"seq": seq, "did": f"did:plc:user{seq % 7}", "time": "2026-01-01T00:00:00.000Z", "handle": f"u{seq}.test"})


def identity_message(time_us: int) -> str:
    did = f"did:plc:user{time_us % 7}"
    return json.dumps({"did": did, "time_us": time_us, "kind": "identity",
                       "identity": {"did": did, "handle": f"u{time_us}.test", "seq": 1, "time": "2026-01-01T00:00:00.000Z"}})


@st.composite
def streams(draw, *, start: int, step: tuple[int, int], bad: st.SearchStrategy[int]):
    """(items, valid): positions in arrival order, each (position, is_valid); bad ones never more
    than MAX_BAD - 1 in a row unless ``refusing``."""
    count = draw(st.integers(1, 60))
    position = start
    items: list[tuple[int, bool]] = []
    run = 0
    for _ in range(count):
        if run < MAX_BAD - 1 and draw(st.integers(0, 4)) == 0:
            items.append((draw(bad), False))
            run += 1
            continue
        position += draw(st.integers(*step))
        items.append((position, True))
        run = 0
    return items


def far_seqs(last_hint: int) -> st.SearchStrategy[int]:
    return st.one_of(st.just(1 << 60), st.integers(last_hint + 10 * MAX_JUMP, 1 << 62))


@settings(max_examples=200, deadline=None)
@given(items=streams(start=5_000, step=(1, 5), bad=far_seqs(20_000)), batch=st.integers(1, 8), persisted=st.booleans())
def test_firehose_no_valid_seq_is_lost_and_the_cursor_never_jumps(items, batch, persisted):
    judge = SeqJudge(max_bad_in_row=MAX_BAD, max_jump=MAX_JUMP, last=5_000 if persisted else None)
    reader = FirehoseReader(partition="p", stats=AtprotoStats(), last_id=5_000 if persisted else None, judge=judge)
    frames = [identity_frame(seq) for seq, _ in items]
    if not persisted:  # nothing to judge the first seq against: a stream begins with a valid one
        first_valid = next((i for i, (_, ok) in enumerate(items) if ok), None)
        if first_valid is None:
            return
        items, frames = items[first_valid:], frames[first_valid:]
    valid = [seq for seq, ok in items if ok]
    bad = [seq for seq, ok in items if not ok]
    got: list[int] = []
    dead = []
    for at in range(0, len(frames), batch):
        chunk = reader.read(frames[at:at + batch], 0.0)
        if chunk is None:
            continue
        assert chunk.through not in bad and chunk.through <= max(valid, default=5_000)  # never at an unverified seq
        got += [event.position for event in chunk.events]
        dead += chunk.dead
    assert got == valid  # every valid one, once, in order
    assert len(dead) == len(bad) and all(letter.position is None for letter in dead)
    assert all("implausible seq" in letter.reason for letter in dead)
    assert reader.refusal is None and reader.stats.implausible_positions == len(bad)


def test_a_run_of_implausible_seqs_refuses_and_a_plausible_one_ends_the_run():
    judge = SeqJudge(max_bad_in_row=3, max_jump=10, last=100)
    assert [judge.judge(s).action for s in (1 << 60, 1 << 60)] == [DEAD_LETTER, DEAD_LETTER]
    assert judge.judge(105).action == ACCEPT and judge.last == 105
    assert [judge.judge(s).action for s in (500, 600, 700)] == [DEAD_LETTER, DEAD_LETTER, REFUSE]
    assert "4 implausible positions in a row" in judge.judge(800).reason
    assert judge.judge(90).action == REPLAY and judge.last == 105


def test_outdated_cursor_lets_the_next_seq_jump_once():
    judge = SeqJudge(max_bad_in_row=3, max_jump=10, last=100)
    judge.relay_skips_ahead()
    assert judge.judge(1_000_000).action == ACCEPT
    assert judge.judge(2_000_000).action == DEAD_LETTER  # only the first seq after the announcement


def test_an_outdated_cursor_info_frame_lets_the_reader_follow_the_relay():
    reader = FirehoseReader(partition="p", stats=AtprotoStats(), last_id=100,
                            judge=SeqJudge(max_bad_in_row=3, max_jump=10, last=100))
    info = cbor.encode({"t": "#info", "op": 1}) + cbor.encode({"name": "OutdatedCursor", "message": "x"})
    chunk = reader.read([info, identity_frame(50_000), identity_frame(50_001)], 0.0)
    assert [e.position for e in chunk.events] == [50_000, 50_001] and chunk.through == 50_001


@settings(max_examples=200, deadline=None)
@given(items=streams(start=NOW_US - 10_000_000, step=(1, 3000),
                     bad=st.one_of(st.just(1 << 60), st.integers(NOW_US + SKEW_US + 1, NOW_US + 10**15))),
       batch=st.integers(1, 8))
def test_jetstream_no_valid_event_is_lost_and_the_cursor_never_goes_to_the_future(items, batch):
    reader = JetstreamReader(partition="p", stats=AtprotoStats(), judge=TimeJudge(max_bad_in_row=MAX_BAD, max_skew_us=SKEW_US),
                             clock=lambda: NOW_US / 1e6)
    valid = [t for t, ok in items if ok]
    bad = [t for t, ok in items if not ok]
    messages = [identity_message(t) for t, _ in items]
    got: list[int] = []
    dead = []
    for at in range(0, len(messages), batch):
        chunk = reader.read(messages[at:at + batch], 0.0)
        if chunk is None:
            continue
        assert chunk.through <= NOW_US  # never a time_us the clock says is not yet
        got += [int(event.fields["time_us"]) for event in chunk.events]
        dead += chunk.dead
    dead += reader._unplaced  # nothing placed yet: they go with the first chunk
    assert got == valid
    assert len(dead) == len(bad) and all(letter.position is None and "implausible time_us" in letter.reason for letter in dead)
    assert reader.refusal is None


def test_a_run_of_future_time_us_refuses():
    reader = JetstreamReader(partition="p", stats=AtprotoStats(), judge=TimeJudge(max_bad_in_row=2, max_skew_us=SKEW_US),
                             clock=lambda: NOW_US / 1e6)
    reader.read([identity_message(NOW_US + 10**12), identity_message(NOW_US + 10**12 + 1)], 0.0)
    assert reader.refusal is not None and "2 implausible positions in a row" in reader.refusal


@settings(max_examples=100, deadline=None)
@given(seq=st.integers(0, 1 << 62), ops=st.integers(0, 200))
def test_the_seq_of_a_huge_commit_is_read_from_its_first_64_kib(seq, ops):
    body = {"seq": seq, "repo": "did:plc:x", "rev": "3l2222222222", "time": "t", "blocks": bytes(200_000),
            "ops": [{"action": "create", "path": f"app.bsky.feed.post/{i:013d}", "cid": None} for i in range(ops)]}
    frame = cbor.encode({"t": "#commit", "op": 1}) + cbor.encode(body)
    assert seq_of_head(frame[:64 << 10]) == seq
    assert seq_of_head(frame[:20]) is None


@given(time_us=st.integers(1, 1 << 62))
def test_the_time_us_of_a_huge_message_is_read_from_its_head(time_us):
    import zstandard

    text = identity_message(time_us).replace('"kind"', '"pad": "' + "x" * 100_000 + '", "kind"').encode()
    assert time_us_of_head(text[:65536]) == time_us
    assert time_us_of_head(zstandard.ZstdCompressor().compress(text)[:200]) == time_us


def test_an_oversized_message_is_dead_lettered_at_its_plausible_seq_or_without_one():
    reader = FirehoseReader(partition="p", stats=AtprotoStats(), last_id=100,
                            judge=SeqJudge(max_bad_in_row=3, max_jump=10, last=100))
    big = identity_frame(103)
    chunk = reader.read([OversizedMessage(9_000_000, big), OversizedMessage(9_000_000, identity_frame(1 << 60)),
                         identity_frame(104)], 0.0)
    assert [(d.position, d.payload == big[:1024]) for d in chunk.dead] == [(103, True), (None, False)]
    assert "frame of 9000000 bytes exceeds" in chunk.dead[0].reason and "implausible seq" in chunk.dead[1].reason
    assert chunk.through == 104 and reader.stats.oversized == 2
