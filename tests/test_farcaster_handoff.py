"""A chunk whose hand-off to the pipeline is interrupted is read again after the reconnect.

Regression test for a data-loss bug in ``weir.actors.farcaster._stream_once``. The ``ShardReader``
moves ``reader.last_id`` past a chunk's events as it builds the chunk, *before*
``await send.send(chunk)`` hands the chunk to the pipeline. If that send was interrupted (the
pipeline was full, so the send was blocked, when the stream failed), the chunk was dropped, yet
the reconnect resumed from ``reader.last_id + 1``. The chunk's events never reached the pipeline
and were never asked for again: they were lost. The fix (``reader.last_id = handed_on`` in the
``except BaseException:`` around the send) moves the resume point back to what was handed on.

What can interrupt the blocked send: not the idle watchdog, which guards only the read from the
bridge channel, but the gRPC pump task failing (the nursery then cancels the send). The pump
fails only once it has handed everything it read to the bridge channel (one slot). So the test
makes sure that at most two lists are in flight when the stream is dropped: the simulator's
blocks are BLOCK_CONFIRMED plus at most one message (``max_block_events=1``), and the test
releases them itself, one at a time (its producer releases one block at start, then sleeps).

Everything is real: the simulator serves gRPC over a socket, the actor runs unchanged. The test
plays the pipeline with an unbuffered channel whose receiving end it controls, and waits on
conditions (never on sleeps).
"""

from __future__ import annotations

import functools

import pytest
import trio

from weir.actors.farcaster import ShardStats, run_shard_connection
from weir.bridge import call_asyncio
from weir.config import FarcasterSettings
from weir.events import Chunk
from weir.sim.farcaster_data import SnapchainSimConfig
from weir.sim.snapchain import SnapchainSim
from weir.supervision import Backoff

from helpers import in_process_sim, offered, wait_for

pytestmark = pytest.mark.integration

SHARD = 1
TIMEOUT = 10.0
WARM_UP_BLOCKS = 20
INTERRUPTED_HANDOFFS = 3


async def _release_block(sim: SnapchainSim) -> int:
    return sim.logs[SHARD].release_block()


async def _drop_streams(sim: SnapchainSim) -> int:
    return sim.drop_streams()


class Pipeline:
    """The test's end of the actor's ``send`` channel: receives only when told to."""

    def __init__(self, receive: trio.MemoryReceiveChannel[Chunk]) -> None:
        self.receive = receive
        self.events: list[tuple[int, bytes]] = []  # (id, HubEvent bytes), in the order received
        self.through: int | None = None

    async def take_through(self, last_id: int, *, why: str) -> None:
        """Receive chunks until one covers ``last_id``; fail after TIMEOUT seconds."""
        try:
            with trio.fail_after(TIMEOUT):
                while self.through is None or self.through < last_id:
                    chunk = await self.receive.receive()
                    self.events.extend((event.position, event.payload) for event in chunk.events)
                    self.through = chunk.through
        except trio.TooSlowError:
            raise AssertionError(
                f"{why}: timed out after {TIMEOUT} s waiting for event {last_id} "
                f"(received through {self.through})"
            ) from None


def assert_received_exactly(pipeline: Pipeline, expected: list[tuple[int, bytes]], *, when: str) -> None:
    """Every offered event once, in order (ids strictly increasing), byte-identical."""
    got = [id_ for id_, _ in pipeline.events]
    want = [id_ for id_, _ in expected]
    assert got == want, (
        f"{when}: received {len(got)} events, offered {len(want)}; "
        f"missing {sorted(set(want) - set(got))}, duplicated {len(got) - len(set(got))}, "
        f"unexpected {sorted(set(got) - set(want))}"
    )
    assert pipeline.events == expected, f"{when}: an event's bytes differ from what was offered"


async def test_reconnect_replays_the_chunk_whose_handoff_was_interrupted(asyncio_loop, caplog):
    # rate ~0: the producer releases one block at start, then sleeps ~forever; the test releases
    # the rest. Blocks of 1-2 events reach the actor as at most two lists (see the docstring).
    sim_config = SnapchainSimConfig(shards=1, seed=41, rate=1e-6, history=0, total=None, max_block_events=1)
    stats = ShardStats()
    stopping = trio.Event()
    send, receive = trio.open_memory_channel[Chunk](0)  # a full pipeline: every send blocks
    pipeline = Pipeline(receive)

    async def no_cursor() -> int | None:
        return None

    async with in_process_sim(sim_config) as (sim, url):
        # A long idle timeout: the quiet stream is never reconnected by the watchdog, only by
        # the drops below (which keeps the reconnect count exact).
        settings = FarcasterSettings(url=url, shards=(SHARD,), start="oldest", idle_timeout=60.0, connect_timeout=5.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(
                run_shard_connection, stopping, settings=settings, shard=SHARD, read_cursor=no_cursor,
                send=send, stats=stats, backoff=Backoff(initial=0.01, maximum=0.05),
            ))

            # Warm up: stream some blocks with the pipeline keeping up.
            await wait_for(lambda: sim.logs[SHARD].released > 0, timeout=TIMEOUT, what="the producer's first block")
            for _ in range(WARM_UP_BLOCKS):
                assert await call_asyncio(_release_block, sim) > 0
            await pipeline.take_through(sim.offered(SHARD)[-1][0], why="warm-up")
            assert_received_exactly(pipeline, sim.offered(SHARD), when="warm-up")
            assert stats.reconnects == 0

            for round_ in range(1, INTERRUPTED_HANDOFFS + 1):
                handed_on = pipeline.through
                assert handed_on is not None
                # The pipeline stops receiving; a new block arrives and the actor blocks handing
                # it on (stats.last_id moves when the chunk is built, just before the send).
                assert await call_asyncio(_release_block, sim) > 0
                await wait_for(lambda: stats.last_id is not None and stats.last_id > handed_on,
                               timeout=TIMEOUT, what="the actor to read the new block and block in send")
                # The node drops the stream: the pump fails and cancels the blocked send.
                assert await call_asyncio(_drop_streams, sim) == 1
                await wait_for(lambda: stats.reconnects == round_, timeout=TIMEOUT,
                               what="the dropped stream to end the session")
                lost = [r for r in caplog.records if getattr(r, "event", None) == "disconnect"]
                assert len(lost) == round_ and "UNAVAILABLE" in lost[-1].error, lost[-1].error
                # The resume point is the first event not handed on (without the fix: after the
                # interrupted chunk).
                assert lost[-1].resume_from == handed_on + 1, (lost[-1].resume_from, handed_on + 1)
                assert pipeline.through == handed_on  # the interrupted chunk did not get through
                # The pipeline receives again: the new session must deliver the dropped chunk.
                await pipeline.take_through(sim.offered(SHARD)[-1][0],
                                            why=f"after interrupted hand-off {round_} (lost events?)")
                assert_received_exactly(pipeline, sim.offered(SHARD), when=f"after interrupted hand-off {round_}")

            stopping.set()

    # The simulator offered exactly what its configuration says, and the test got all of it.
    assert_received_exactly(pipeline, offered(sim_config, SHARD, len(pipeline.events)), when="at the end")
    assert stats.reconnects == INTERRUPTED_HANDOFFS and stats.connects == INTERRUPTED_HANDOFFS + 1
    assert stats.duplicates_skipped == 0  # resumed exactly at the first event not handed on
