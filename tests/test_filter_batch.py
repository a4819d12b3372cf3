"""The filter and batch actors: what passes, when batches flush, and how they stop (mock clock)."""

from __future__ import annotations

import functools
import math

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from weir.actors.batch import BatchPolicy, run_batch
from weir.actors.filter import run_filter
from weir.events import Chunk, Event


def make_event(position: int, fid: int = 1, size: int = 10) -> Event:
    return Event(source="t", partition="p", position=position, kind="MERGE_MESSAGE", payload=b"x" * size, fields={"fid": fid})


def make_chunk(positions: list[int], through: int | None = None, **kw) -> Chunk:
    events = [make_event(p, **kw) for p in positions]
    return Chunk(partition="p", events=events, through=through if through is not None else max(positions))


async def test_filter_keeps_matching_events_and_always_forwards_the_cursor() -> None:
    in_send, in_recv = trio.open_memory_channel(10)
    out_send, out_recv = trio.open_memory_channel(10)
    stopping = trio.Event()
    seen = []
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_filter(stopping, receive=in_recv, send=out_send,
                                                           predicate=lambda e: e.fields["fid"] == 2,
                                                           on_filtered=lambda p, k, d: seen.append((k, d)),
                                                           task_status=task_status))
        chunk = Chunk(partition="p", events=[make_event(1, fid=1), make_event(2, fid=2), make_event(3, fid=1)], through=3)
        await in_send.send(chunk)
        await in_send.send(make_chunk([4, 5], fid=1))
        out1 = await out_recv.receive()
        out2 = await out_recv.receive()
        stopping.set()
    assert [e.position for e in out1.events] == [2] and out1.through == 3
    assert out2.events == [] and out2.through == 5  # nothing kept, but the cursor still moves
    assert seen == [(1, 2), (0, 2)]


async def test_filter_drains_what_is_queued_when_stopped() -> None:
    in_send, in_recv = trio.open_memory_channel(10)
    out_send, out_recv = trio.open_memory_channel(10)
    stopping = trio.Event()
    for p in range(1, 4):
        in_send.send_nowait(make_chunk([p]))
    stopping.set()
    with trio.fail_after(1):
        await run_filter(stopping, receive=in_recv, send=out_send, predicate=None)
    assert [out_recv.receive_nowait().through for _ in range(3)] == [1, 2, 3]
    with pytest.raises(trio.WouldBlock):
        out_recv.receive_nowait()


async def _collect_batches(policy: BatchPolicy, feed, *, consumer_delay: float = 0.0):
    """Run a batch actor between ``feed`` (async fn sending chunks) and a consumer; return batches."""
    in_send, in_recv = trio.open_memory_channel(100)
    out_send, out_recv = trio.open_memory_channel(0)
    stopping = trio.Event()
    batches: list[tuple[float, list[int]]] = []

    async def consume() -> None:
        async for batch in out_recv:
            batches.append((trio.current_time(), [c.through for c in batch]))
            if consumer_delay:
                await trio.sleep(consumer_delay)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        async with trio.open_nursery() as actor:
            await actor.start(lambda task_status: run_batch(stopping, receive=in_recv, send=out_send, policy=policy, task_status=task_status))
            await feed(in_send)
            stopping.set()  # the batch actor flushes what it holds and returns...
        out_send.close()  # ...then the consumer sees the end (the actor does not own the channel)
    return batches


async def test_batch_flushes_at_max_events(autojump_clock) -> None:
    policy = BatchPolicy(max_events=3, max_bytes=1 << 20, max_age=math.inf, eager=False)

    async def feed(send):
        for p in range(1, 8):
            await send.send(make_chunk([p]))

    batches = await _collect_batches(policy, feed)
    assert [b for _, b in batches] == [[1, 2, 3], [4, 5, 6], [7]]  # the rest is flushed on stop


async def test_batch_flushes_at_max_bytes(autojump_clock) -> None:
    policy = BatchPolicy(max_events=1000, max_bytes=250, max_age=math.inf, eager=False)

    async def feed(send):
        for p in range(1, 6):
            await send.send(make_chunk([p], size=100))

    batches = await _collect_batches(policy, feed)
    assert [b for _, b in batches] == [[1, 2, 3], [4, 5]]


async def test_batch_flushes_at_max_age(autojump_clock) -> None:
    policy = BatchPolicy(max_events=1000, max_bytes=1 << 20, max_age=0.2, eager=False)

    first_sent: list[float] = []

    async def feed(send):
        first_sent.append(trio.current_time())
        await send.send(make_chunk([1]))
        await trio.sleep(0.05)
        await send.send(make_chunk([2]))
        await trio.sleep(0.5)

    batches = await _collect_batches(policy, feed)
    assert [b for _, b in batches] == [[1, 2]]
    # flushed when the oldest chunk turned 0.2 s old, not at stop (0.55 s)
    assert batches[0][0] - first_sent[0] == pytest.approx(0.2, abs=1e-6)


async def test_batch_flushes_at_max_age_when_the_float_difference_falls_short(autojump_clock) -> None:
    # (1.5 + 0.2) - 1.5 < 0.2 in floats: judged as ``now - since >= max_age`` the batch was never
    # due at its own deadline, and the actor spun there (time stood still under the mock clock).
    policy = BatchPolicy(max_events=1000, max_bytes=1 << 20, max_age=0.2, eager=False)
    assert (1.5 + 0.2) - 1.5 < 0.2

    async def feed(send):
        await trio.sleep_until(1.5)
        await send.send(make_chunk([1]))
        await trio.sleep(1.0)

    batches = await _collect_batches(policy, feed)
    assert batches == [(1.5 + 0.2, [1])]


async def test_eager_batch_hands_over_at_once_when_the_sink_is_idle(autojump_clock) -> None:
    policy = BatchPolicy(max_events=1000, max_bytes=1 << 20, max_age=10.0, eager=True)
    t0 = trio.current_time()

    async def feed(send):
        await send.send(make_chunk([1]))
        await trio.sleep(1)

    batches = await _collect_batches(policy, feed)
    assert batches[0][1] == [1]
    assert batches[0][0] - t0 < 0.01  # not held for max_age


async def test_eager_batch_groups_while_the_sink_is_busy(autojump_clock) -> None:
    policy = BatchPolicy(max_events=1000, max_bytes=1 << 20, max_age=10.0, eager=True)

    async def feed(send):
        for p in range(1, 11):
            await send.send(make_chunk([p]))
            await trio.sleep(0.01)

    # the consumer takes 0.035 s per batch: chunks arriving meanwhile are grouped
    batches = await _collect_batches(policy, feed, consumer_delay=0.035)
    flat = [t for _, b in batches for t in b]
    assert flat == list(range(1, 11))  # order kept, nothing lost or doubled
    assert len(batches) < 10 and max(len(b) for _, b in batches) >= 3


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=25), max_events=st.integers(1, 60), eager=st.booleans(),
       gap=st.sampled_from([0.0, 0.01, 0.3]), consumer_delay=st.sampled_from([0.0, 0.02, 1.0]))
def test_a_batch_holds_at_most_max_events_minus_one_plus_a_chunk(sizes, max_events, eager, gap, consumer_delay) -> None:
    """What the chaos suite's in-flight bound counts for each of the batch and persist actors
    (weir/chaos/backpressure.py): a batch goes once it reaches max_events, so it holds at most
    max_events - 1 events plus the chunk that got it there, however the sink keeps up."""
    policy = BatchPolicy(max_events=max_events, max_bytes=1 << 20, max_age=0.2, eager=eager)
    size_of: dict[int, int] = {}

    async def feed(send):
        position = 0
        for size in sizes:
            await send.send(make_chunk(list(range(position + 1, position + size + 1))))
            position += size
            size_of[position] = size
            await trio.sleep(gap)

    collect = functools.partial(_collect_batches, policy, feed, consumer_delay=consumer_delay)
    batches = trio.run(collect, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [t for _, b in batches for t in b] == list(size_of)  # every chunk once, in order
    assert max(sum(size_of[t] for t in b) for _, b in batches) <= max_events - 1 + max(sizes)
