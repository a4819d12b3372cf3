"""One partition's pipeline: source -> filter -> batch -> persist, as a supervised group.

The pipeline owns the channels, so an actor that is restarted gets the same pipes back. The
strategy is one_for_all: after any crash every actor restarts and the source resumes from the
persisted cursor, which is the only truth.

Before the actors start again the channels are emptied. What is left in them was sent after
whatever the crashed actor was holding; writing it first would move the cursor past the lost
chunk, and the source's replay of that chunk would then be skipped as already durable.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from weir.actors.batch import BatchPolicy, run_batch
from weir.actors.filter import Predicate, run_filter
from weir.actors.persist import DurableMark, run_persist
from weir.events import Chunk
from weir.observability.buckets import BATCH_SIZE_BOUNDS, LATENCY_BOUNDS, Buckets
from weir.supervision import Backoff, ChildSpec, CircuitBreaker, Strategy, Supervisor

# Channel bounds, in chunks (each at most a network read batch, 512 events by default). One each:
# a chunk can hold hundreds of events, so with 4 the pipeline buffered ~5,000 events per partition
# before a slow Redis was felt by the reader (the chaos suite's backpressure scenario measured the
# source still reading at ~0.5-0.6x the offered rate during an 8 s stall). Throughput is the same
# within noise: each stage still has one chunk in hand and one queued.
SOURCE_TO_FILTER = 1
FILTER_TO_BATCH = 1
# Zero: batch -> persist is a hand-over, so the batch actor knows when the sink is idle (eager flush).
BATCH_TO_PERSIST = 0

LATENCY_SAMPLES = 100_000


@attrs.define(eq=False)
class PipelineStats:
    """What a pipeline has written (read by the CLI's progress line and the benchmarks)."""

    appended: int = 0
    skipped: int = 0
    dead_appended: int = 0
    batches: int = 0
    purged: int = 0  # chunks discarded from the channels at a restart (the source replays them)
    cursor: int | None = None
    latencies: list[float] = attrs.Factory(list)  # receipt -> durable, seconds (bounded sample)
    # For the metrics (weir/observability), all updated per chunk or per batch, never per event:
    filtered: int = 0  # events the filter dropped
    in_flight: int = 0  # events past the filter and not yet durable (0 after a restart: they are replayed)
    last_write: float | None = None  # trio.current_time() of the last durable write
    started_at: float | None = None  # trio.current_time() of the pipeline's first start
    batch_sizes: Buckets = attrs.Factory(lambda: Buckets(BATCH_SIZE_BOUNDS))  # events per batch
    latency: Buckets = attrs.Factory(lambda: Buckets(LATENCY_BOUNDS))  # receipt -> durable, per chunk
    # Live handles read at scrape time (set by build_pipeline): channel name -> its receive end, and
    # the pipeline's supervisor.
    channels: dict[str, Any] = attrs.Factory(dict)
    supervisor: Any = None
    mark: DurableMark | None = None  # the cursor Redis must still hold (its rollbacks are a metric)

    def on_filtered(self, partition: str, kept: int, dropped: int) -> None:
        self.filtered += dropped
        self.in_flight += kept

    def record(self, result: Any, chunks: list[Chunk]) -> None:
        self.appended += result.appended
        self.skipped += result.skipped
        self.dead_appended += result.dead_appended
        self.batches += 1
        self.cursor = result.cursor
        now = trio.current_time()
        self.last_write = now
        events = 0
        latency = self.latency
        for chunk in chunks:
            if chunk.events:
                # A chunk is one network read: its events share a receipt time (the first one's is
                # the oldest otherwise), so a chunk is one weighted observation.
                events += len(chunk.events)
                latency.observe(now - chunk.events[0].received, len(chunk.events))
        self.batch_sizes.observe(events)
        self.in_flight = max(0, self.in_flight - events)
        room = LATENCY_SAMPLES - len(self.latencies)
        if room > 0:
            for chunk in chunks:
                self.latencies.extend(now - event.received for event in chunk.events[:room])
                room = LATENCY_SAMPLES - len(self.latencies)
                if room <= 0:
                    break


def purge(*channels: trio.MemoryReceiveChannel[Any]) -> int:
    """Discard everything queued in ``channels``; return how many items were dropped."""
    dropped = 0
    for channel in channels:
        while True:
            try:
                channel.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            dropped += 1
    return dropped


SourceTarget = Callable[..., Awaitable[None]]  # called as target(stopping, send=..., task_status=...)


def build_pipeline(
    name: str,
    *,
    partition: str,
    source: SourceTarget,
    predicate: Predicate | None,
    policy: BatchPolicy,
    sink: Any,
    breaker: CircuitBreaker,
    backoff: Backoff,
    stats: PipelineStats,
    max_restarts: int,
    period: float,
    rng: random.Random | None = None,
    on_event: Callable[[Any], None] | None = None,
    mark: DurableMark | None = None,
) -> Supervisor:
    """Wire the four actors of one partition under a one_for_all supervisor.

    ``source`` is a connection actor with the child signature, already bound to everything but
    ``send`` (the pipeline's first channel). ``mark``, when given, is the cursor Redis must still
    hold; the source's cursor read must reset it (:meth:`DurableMark.resumed_from`).
    """
    source_send, filter_receive = trio.open_memory_channel[Any](SOURCE_TO_FILTER)
    filter_send, batch_receive = trio.open_memory_channel[Any](FILTER_TO_BATCH)
    batch_send, persist_receive = trio.open_memory_channel[Any](BATCH_TO_PERSIST)

    def on_written(partition_: str, result: Any, chunks: list[Chunk]) -> None:
        stats.record(result, chunks)

    async def persist_first_after_purge(stopping: trio.Event, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        # persist starts first: under one_for_all every other actor is stopped at this point.
        stats.purged += purge(filter_receive, batch_receive, persist_receive)
        stats.in_flight = 0  # every actor is stopped and the channels are empty: nothing is in flight
        if stats.started_at is None:
            stats.started_at = trio.current_time()
        await run_persist(
            stopping, receive=persist_receive, sink=sink, breaker=breaker, backoff=backoff,
            on_written=on_written, rng=rng, mark=mark, task_status=task_status,
        )

    # restart_grace=0: after a crash nothing in flight is worth waiting for (the channels are
    # purged and the source resumes from the persisted cursor), and when the persist actor is the
    # one that crashed, the stages before it could never hand their data on: each waited out its
    # whole grace (5 s measured after a Redis rollback, docs/resilience.md).
    children = [
        ChildSpec(name=f"{name}/persist", target=persist_first_after_purge, shutdown_grace=10.0, restart_grace=0),
        ChildSpec(
            name=f"{name}/batch",
            target=functools.partial(run_batch, receive=batch_receive, send=batch_send, policy=policy),
            shutdown_grace=5.0,
            restart_grace=0,
        ),
        ChildSpec(
            name=f"{name}/filter",
            target=functools.partial(
                run_filter, receive=filter_receive, send=filter_send, predicate=predicate, on_filtered=stats.on_filtered
            ),
            shutdown_grace=5.0,
            restart_grace=0,
        ),
        ChildSpec(
            name=f"{name}/source", target=functools.partial(source, send=source_send), shutdown_grace=5.0, restart_grace=0
        ),
    ]
    supervisor = Supervisor(
        name,
        children,
        strategy=Strategy.ONE_FOR_ALL,
        max_restarts=max_restarts,
        period=period,
        backoff=backoff,
        rng=rng,
        on_event=on_event,
    )
    stats.channels = {"source_to_filter": filter_receive, "filter_to_batch": batch_receive, "batch_to_persist": persist_receive}
    stats.supervisor = supervisor
    stats.mark = mark
    return supervisor
