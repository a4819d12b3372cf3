"""How the persist actor splits a batch after a timeout (pure logic: no Redis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from weir.actors.persist import _split_to, halve
from weir.events import Chunk, DeadLetter, Event


def ev(position: int, sub: int = 0) -> Event:
    return Event(source="t", partition="p", position=position, sub=sub, kind="K", payload=b"x")


def dead(position: int | None) -> DeadLetter:
    return DeadLetter(source="t", partition="p", payload=b"?", reason="bad", position=position)


def test_several_chunks_split_between_chunks() -> None:
    a, b, c = (Chunk(partition="p", events=[ev(i)], through=i) for i in (1, 2, 3))
    assert halve([a, b, c]) == [[a], [b, c]]


def test_one_chunk_splits_between_positions_never_inside_one() -> None:
    chunk = Chunk(partition="p", events=[ev(1), ev(2, 0), ev(2, 1), ev(2, 2), ev(3)], through=9)
    first, second = halve([chunk])
    assert [(e.position, e.sub) for e in first[0].events] == [(1, 0), (2, 0), (2, 1), (2, 2)]
    assert first[0].through == 2  # the first half's cursor stops at what it holds
    assert [(e.position, e.sub) for e in second[0].events] == [(3, 0)]
    assert second[0].through == 9  # the rest keeps the chunk's cursor (filtered events after 3)


def test_a_single_position_or_a_token_cannot_be_split() -> None:
    assert halve([Chunk(partition="p", events=[ev(5, s) for s in range(4)], through=5)]) is None
    assert halve([Chunk(partition="p", events=[ev(1), ev(2)], through=2, token="7:0xab")]) is None


def test_dead_letters_go_with_the_half_that_covers_their_position() -> None:
    chunk = Chunk(partition="p", events=[ev(1), ev(2), ev(4), ev(5)], through=6,
                  dead=[dead(None), dead(2), dead(3), dead(6)])
    first, second = halve([chunk])
    assert first[0].through == 2
    assert [d.position for d in first[0].dead] == [None, 2]
    assert [d.position for d in second[0].dead] == [3, 6]


chunks = st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=6), min_size=1, max_size=5)


@given(chunks, st.integers(1, 8))
def test_parts_keep_every_event_in_order_and_the_last_cursor(shape, limit) -> None:
    batch, position = [], 0
    for counts in shape:  # each chunk: positions with 1..4 events each
        events = []
        for count in counts:
            position += 1
            events += [ev(position, sub) for sub in range(count)]
        position += 1  # a filtered event after each chunk
        batch.append(Chunk(partition="p", events=events, through=position))
    parts = _split_to(batch, limit)
    flat = [(e.position, e.sub) for part in parts for chunk in part for e in chunk.events]
    assert flat == [(e.position, e.sub) for chunk in batch for e in chunk.events]
    assert parts[-1][-1].through == batch[-1].through
    throughs = [chunk.through for part in parts for chunk in part]
    assert throughs == sorted(throughs)  # the cursor never moves back between parts
    for part in parts:  # no position is split across parts
        positions = {e.position for chunk in part for e in chunk.events}
        for other in parts:
            if other is not part:
                assert not positions & {e.position for chunk in other for e in chunk.events}


def test_a_big_chunk_after_small_ones_is_cut_at_the_middle_event() -> None:
    # Under backpressure the network delivers a few small chunks and then one big one: the halves
    # must each hold about half the events, or every retry would still carry the big chunk.
    small = [Chunk(partition="p", events=[ev(i)], through=i) for i in (1, 2, 3)]
    big = Chunk(partition="p", events=[ev(i) for i in range(4, 104)], through=110)
    first, second = halve([*small, big])
    assert sum(len(c.events) for c in first) == 51
    assert sum(len(c.events) for c in second) == 52
    assert first[-1].through == 51 and second[-1].through == 110


def test_an_uncuttable_chunk_goes_to_the_half_it_unbalances_least() -> None:
    a = Chunk(partition="p", events=[ev(1)], through=1)
    tokened = Chunk(partition="p", events=[ev(i) for i in range(2, 12)], through=11, token="11:0xab")
    b = Chunk(partition="p", events=[ev(12)], through=12)
    assert halve([a, tokened, b, b, b, b, b, b]) == [[a, tokened], [b, b, b, b, b, b]]
    assert halve([a, a, a, a, a, a, tokened, b]) == [[a, a, a, a, a, a], [tokened, b]]


def _batch(shape: list[list[int]], tokens: list[bool]) -> list[Chunk]:
    batch, position = [], 0
    for counts, tokened in zip(shape, tokens):  # each chunk: positions with 1..4 events each
        events = []
        for count in counts:
            position += 1
            events += [ev(position, sub) for sub in range(count)]
        position += 1  # a filtered event after each chunk
        batch.append(Chunk(partition="p", events=events, through=position, token="t" if tokened else ""))
    return batch


@given(st.lists(st.integers(0, 30), min_size=1, max_size=6))
def test_halves_of_single_event_positions_differ_by_at_most_one_event(sizes) -> None:
    batch = _batch([[1] * n for n in sizes], [False] * len(sizes))
    halves = halve(batch)
    total = sum(sizes)
    if halves is None:
        assert total < 2 and len(batch) < 2
        return
    first, second = (sum(len(c.events) for c in half) for half in halves)
    assert first + second == total
    if total >= 2:
        assert abs(first - second) <= 1


@given(chunks, st.lists(st.booleans(), min_size=5, max_size=5), st.integers(1, 8))
def test_a_part_over_the_limit_cannot_be_cut_further(shape, tokens, limit) -> None:
    for part in _split_to(_batch(shape, tokens), limit):
        if sum(len(c.events) for c in part) > limit:
            assert halve(part) is None
