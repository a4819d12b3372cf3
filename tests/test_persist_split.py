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
