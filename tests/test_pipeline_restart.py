"""A pipeline that crashes mid-stream restarts (one_for_all) and still loses and doubles nothing.

The source here is scripted (it replays positions from the persisted cursor, as a network source
does); the channels, actors, supervisor, sink and Redis are the real ones.
"""

from __future__ import annotations

import random

import pytest
import trio

from weir.actors.batch import BatchPolicy
from weir.actors.pipeline import PipelineStats, build_pipeline
from weir.events import Chunk, Event
from weir.sinks.redis_sink import open_redis_sink
from weir.supervision import Backoff, CircuitBreaker

pytestmark = pytest.mark.integration

PART = "p"
TOTAL = 600
PER_CHUNK = 10


class Boom(Exception):
    pass


def scripted_source(sink, starts: list[int]):
    async def run(stopping: trio.Event, *, send, task_status=trio.TASK_STATUS_IGNORED) -> None:
        cursor = await sink.read_cursor(PART)
        first = (cursor.position if cursor else 0) + 1
        starts.append(first)
        task_status.started()
        async with trio.open_nursery() as nursery:  # like a real source, stop at once when asked

            async def stop_when_asked() -> None:
                await stopping.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_when_asked)
            for start in range(first, TOTAL + 1, PER_CHUNK):
                positions = range(start, min(start + PER_CHUNK, TOTAL + 1))
                events = [Event(source="t", partition=PART, position=p, kind="K", payload=b"%d" % p) for p in positions]
                await send.send(Chunk(partition=PART, events=events, through=positions[-1]))

    return run


@pytest.mark.parametrize("crash_at", [95, 305])
async def test_a_crash_in_the_filter_loses_nothing(redis_server, redis_client, crash_at: int) -> None:
    crashed = []

    def predicate(event: Event) -> bool:
        if event.position == crash_at and not crashed:
            crashed.append(event.position)
            raise Boom(f"filter bug at {event.position}")
        return True

    starts: list[int] = []
    stats = PipelineStats()
    async with open_redis_sink(redis_server.url, source="t") as sink:
        pipeline = build_pipeline(
            "t/p",
            partition=PART,
            source=scripted_source(sink, starts),
            predicate=predicate,
            policy=BatchPolicy(max_events=50, max_age=0.01),
            sink=sink,
            breaker=CircuitBreaker("redis"),
            backoff=Backoff(initial=0.001, maximum=0.01),
            stats=stats,
            max_restarts=3,
            period=10.0,
            rng=random.Random(1),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(pipeline.run)
            with trio.fail_after(20):
                while stats.cursor != TOTAL:
                    await trio.sleep(0.01)
            pipeline.stop()

    assert crashed == [crash_at]
    assert len(starts) == 2 and starts[1] <= crash_at  # restarted, resumed at or before the loss
    ids = [entry_id for entry_id, _ in await redis_client("XRANGE", "{weir:t:p}:events", "-", "+")]
    assert ids == [b"%d-0" % p for p in range(1, TOTAL + 1)]
    assert pipeline.statistics().restarts == 1
