"""The AT Protocol ordering rule (weir/codecs/atproto_order.py), without sockets.

The property: a Jetstream server that reorders events around every replay-to-live cutover (some
live events ahead of the last replayed ones, by at most a window) and repeats some, a pipeline that
crashes at any point keeping only what its atomic writes made durable (persist.lua's rule: an event
above the cursor and above the stream's last id is appended, the cursor becomes the highest
``through``), restarts rebuilt from the stored cursor and the stream's latest entries: every event
ends in the stream exactly once, stream ids only grow, and no write ever asks the cursor to go back.
"""

from __future__ import annotations

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from weir.codecs.atproto_order import (
    BEFORE_START,
    DUPLICATE,
    LATE,
    NEW,
    STALE,
    JetstreamOrder,
    RevTracker,
    commit_identity,
    event_identity,
    identity_of_fields,
)


@attrs.frozen
class Ev:
    time_us: int
    identity: tuple
    did: str
    rev: str


@attrs.define
class Redis:
    """persist.lua's rule over a list of (position, event) entries."""

    cursor: int | None = None
    stream: list[tuple[int, Ev]] = attrs.Factory(list)

    def write(self, chunk: tuple[list[tuple[int, Ev]], int]) -> None:
        events, through = chunk
        assert self.cursor is None or through >= self.cursor, "a write would move the cursor back"
        for position, event in events:
            top = self.stream[-1][0] if self.stream else -1
            # The reader never hands on what is durable, and never an id below the stream's top:
            # either would be skipped by the script (a loss, or a stale id).
            assert self.cursor is None or position > self.cursor, (position, self.cursor)
            assert position > top, (position, top)
            self.stream.append((position, event))
        self.cursor = through if self.cursor is None else max(self.cursor, through)

    def since(self, position: int) -> list[tuple[int, tuple, str, str]]:
        return [(e.time_us, e.identity, e.did, e.rev) for p, e in self.stream if p >= position]


def history(draw, size: int) -> list[Ev]:
    dids = [f"did:plc:{n}" for n in range(3)]
    events, time_us = [], 1_000
    for index in range(size):
        time_us += draw(st.integers(0, 20))  # equal times happen: identities tell them apart
        did = draw(st.sampled_from(dids))
        if draw(st.booleans()):
            events.append(Ev(time_us, commit_identity(did, f"{time_us:013d}", "app.bsky.feed.post", f"r{index}", "create", ""),
                             did, f"{time_us:013d}"))  # revs grow with time per DID, as repositories' do
        else:
            events.append(Ev(time_us, event_identity("identity", did, time_us * 100 + index), did, ""))
    return events


def delivery(draw, events: list[Ev], cursor: int | None, window: int) -> list[Ev]:
    """What one connection receives from ``cursor`` on (inclusive): in order, then some events moved
    ahead of earlier ones (by at most ``window`` µs of lateness) and some sent again within it."""
    out = [e for e in events if cursor is None or e.time_us >= cursor]
    for _ in range(draw(st.integers(0, 6))):
        if len(out) < 2:
            break
        j = draw(st.integers(1, len(out) - 1))
        i = j
        while i > 0 and out[j].time_us - out[i - 1].time_us <= window:
            i -= 1
        out.insert(draw(st.integers(i, j)), out.pop(j))
    for _ in range(draw(st.integers(0, 3))):
        if not out:
            break
        j = draw(st.integers(0, len(out) - 1))
        newest, places = out[j].time_us, []
        for p in range(j + 1, len(out) + 1):
            places.append(p)
            if p < len(out):
                newest = max(newest, out[p].time_us)
                if newest - out[j].time_us > window:
                    break
        out.insert(draw(st.sampled_from(places)), out[j])
    return out


def read(order: JetstreamOrder, received: list[Ev], verdicts: list[str]) -> list[tuple[list[tuple[int, Ev]], int]]:
    """One chunk per message, as the reader makes them."""
    chunks = []
    for event in received:
        admission = order.admit(event.time_us, event.identity, did=event.did, rev=event.rev)
        verdicts.append(admission.verdict)
        chunks.append(([(admission.position, event)] if admission.persist else [], order.high))
    return chunks


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_reordering_repeats_and_restarts_persist_every_event_exactly_once(data):
    draw = data.draw
    events = history(draw, draw(st.integers(1, 40)))
    window = draw(st.integers(0, 100))
    margin = window + 50  # positions bumped by late events run ahead of time_us by at most one µs each
    redis = Redis()
    verdicts: list[str] = []
    for _ in range(draw(st.integers(0, 4))):  # sessions that crash
        order = new_order(redis, margin)
        session: list[tuple[list[tuple[int, Ev]], int]] = []
        for _ in range(draw(st.integers(1, 3))):  # connections; each but the last is dropped part way
            received = delivery(draw, events, order.resume_cursor(), window)
            session += read(order, received[: draw(st.integers(0, len(received)))], verdicts)
        for chunk in session[: draw(st.integers(0, len(session)))]:  # what became durable before the crash
            redis.write(chunk)
    order = new_order(redis, margin)
    for _ in range(draw(st.integers(0, 2))):  # a dropped connection, then one that reads to the end
        received = delivery(draw, events, order.resume_cursor(), window)
        for chunk in read(order, received[: draw(st.integers(0, len(received)))], verdicts):
            redis.write(chunk)
    for chunk in read(order, delivery(draw, events, order.resume_cursor(), window), verdicts):
        redis.write(chunk)

    stored = [event.identity for _, event in redis.stream]
    assert sorted(stored) == sorted(e.identity for e in events)  # each once, none missing, nothing else
    assert STALE not in verdicts  # revs that grow with time are never stale, however late they arrive
    assert set(verdicts) <= {NEW, LATE, DUPLICATE}


def new_order(redis: Redis, margin: int) -> JetstreamOrder:
    if redis.cursor is None:
        return JetstreamOrder(margin=margin)  # start = oldest: everything from the first event
    return JetstreamOrder.resumed(redis.cursor, redis.since(redis.cursor - margin), margin=margin)


def test_a_late_event_gets_a_position_above_the_highest_and_is_counted_late():
    order = JetstreamOrder(margin=1_000)
    assert order.admit(500, ("a",)).verdict == NEW
    assert order.admit(700, ("c",)).position == 700
    late = order.admit(600, ("b",))
    assert (late.verdict, late.position, late.beyond_margin) == (LATE, 701, False)
    assert order.admit(600, ("b",)).verdict == DUPLICATE
    assert order.admit(701, ("d",)).position == 702  # an in-order time already taken by a bumped one
    assert order.resume_cursor() == 1  # never below 1 (Jetstream reads 0 as "live")


def test_the_window_forgets_old_identities_and_flags_events_beyond_it():
    order = JetstreamOrder(margin=100)
    order.admit(1_000, ("a",))
    order.admit(1_200, ("b",))
    assert not order.known(("a",)) and order.known(("b",)) and order.remembered() == 1
    very_late = order.admit(1_050, ("c",))
    assert very_late.verdict == LATE and very_late.beyond_margin  # persisted, with a warning
    assert order.resume_cursor() == 1_101


def test_a_configured_start_skips_what_is_at_or_below_it():
    order = JetstreamOrder(margin=100, high=5_000, floor=5_000)
    assert order.resume_cursor() == 5_000  # no rewind below a start: nothing before it was asked for
    assert order.admit(4_990, ("a",)).verdict == BEFORE_START
    assert order.admit(5_001, ("b",)).verdict == NEW


def test_stale_revs_only_in_time_order():
    """A commit older in time than the DID's last is reordered, not stale; one newer in time with
    an older rev is stale (and the cursor passes it)."""
    order = JetstreamOrder(margin=10_000)
    order.admit(2_000, ("c2",), did="d", rev="0002")
    assert order.admit(1_000, ("c1",), did="d", rev="0001").verdict == LATE
    stale = order.admit(3_000, ("c3",), did="d", rev="0001")
    assert stale.verdict == STALE and order.high == 3_000
    assert order.admit(4_000, ("c4",), did="d", rev="0002").verdict == NEW  # the same commit's next op


def test_a_restart_rebuilds_identities_and_revs_from_the_persisted_entries():
    fields = [
        {"kind": "commit", "did": "d", "rev": "0005", "collection": "c", "rkey": "r", "action": "create", "cid": "x",
         "time_us": "900"},
        {"kind": "identity", "did": "d", "time_us": "950"},
        {"kind": "commit"},  # not one of weir's: ignored
    ]
    entries = [identity for identity in map(identity_of_fields, fields) if identity is not None]
    order = JetstreamOrder.resumed(1_000, entries, margin=200)
    assert order.resume_cursor() == 800
    assert order.admit(900, commit_identity("d", "0005", "c", "r", "create", "x"), did="d", rev="0005").verdict == DUPLICATE
    assert order.admit(950, event_identity("identity", "d", 950)).verdict == DUPLICATE
    assert order.admit(1_100, ("new",), did="d", rev="0004").verdict == STALE
    assert order.admit(980, ("lost",)).position == 1_101  # recovered after the crash: above the cursor


def test_rev_tracker_is_bounded():
    tracker = RevTracker(capacity=2)
    assert tracker.advance("a", "1") and tracker.advance("b", "1") and tracker.advance("c", "1")
    assert tracker.advance("a", "0")  # forgotten, so accepted again
    assert not tracker.advance("c", "0")
