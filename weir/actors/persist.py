"""The persist actor: writes each batch to the sink, retrying the same batch until it is durable.

A batch is never dropped: while the sink is unavailable the actor retries it with backoff behind a
circuit breaker (which may be shared by every pipeline writing to the same Redis) and does not
receive, so the bounded channel fills and backpressure reaches the
network reader. Retrying is safe because the sink's write is idempotent (persist.lua skips what is
at or below the cursor), even when a failed attempt actually reached Redis.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import trio

from weir.actors.inbox import open_inbox
from weir.events import Chunk
from weir.sinks.redis_sink import RedisSink, SinkUnavailable, WriteResult
from weir.supervision import Backoff, CircuitBreaker

log = logging.getLogger("weir.actors.persist")

OnWritten = Callable[[str, WriteResult, list[Chunk]], None]


async def run_persist(
    stopping: trio.Event,
    *,
    receive: trio.MemoryReceiveChannel[list[Chunk]],
    sink: RedisSink,
    breaker: CircuitBreaker,
    backoff: Backoff,
    on_written: OnWritten | None = None,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Write every batch from ``receive`` to ``sink``, each exactly once as far as Redis shows.

    Once ``stopping`` is set (after the batch actor has stopped: shutdown goes from the source
    down), the batches already queued are written and the actor returns; a write in progress is
    finished first. A hard stop is a cancellation, after which the source resumes from the
    persisted cursor. Also returns when the channel is closed.

    Args:
        receive: batches (lists of chunks of one partition) from the batch actor.
        sink: an open sink.
        breaker: the sink's circuit breaker (shared by every pipeline writing to that Redis).
        backoff: delays between attempts at the same batch.
        on_written: called with (partition, result, batch) once a batch is durable.
        rng: jitter source for the backoff (seed it for reproducible runs).

    Raises:
        Whatever the sink raises other than :class:`SinkUnavailable` (a malformed batch, a key of
        the wrong type): retrying cannot fix those, so the supervisor has to know.
    """
    writer = _Writer(sink=sink, breaker=breaker, backoff=backoff, rng=rng or random.Random())
    async with open_inbox(receive, stopping) as inbox:
        task_status.started()
        while (batch := await inbox.get()) is not None:
            if not batch:
                continue
            result = await writer.write(batch)
            if on_written is not None:
                on_written(batch[0].partition, result, batch)


class _Writer:
    """Retries one batch until it is written; remembers whether the sink is failing (for logs)."""

    def __init__(
        self, *, sink: RedisSink, breaker: CircuitBreaker, backoff: Backoff, rng: random.Random
    ) -> None:
        self.sink = sink
        self.breaker = breaker
        self.backoff = backoff
        self.rng = rng
        self.failing_since: float | None = None
        self.failures = 0

    async def write(self, batch: list[Chunk]) -> WriteResult:
        partition = batch[0].partition
        attempt = 0
        while True:
            # breaker.call waits while the breaker is open, records the outcome, and frees a
            # half-open trial slot if we are cancelled mid-write (the breaker may be shared).
            try:
                outcome = await self.breaker.call(self._attempt, partition, batch)
            except SinkUnavailable as exc:
                self._failed(partition, batch, exc)
                delay = self.backoff.delay(attempt, self.rng)
                attempt += 1
                await trio.sleep(delay)
                continue
            if isinstance(outcome, Exception):
                raise outcome
            self._succeeded(partition, outcome)
            return outcome

    async def _attempt(self, partition: str, batch: list[Chunk]) -> WriteResult | Exception:
        try:
            return await self.sink.write(partition, batch)
        except SinkUnavailable:
            raise
        except Exception as exc:
            # Redis answered (or the batch is malformed): the dependency is up, so this must not
            # count against the breaker. Raised by write() once the breaker has recorded it.
            return exc

    def _failed(self, partition: str, batch: list[Chunk], exc: SinkUnavailable) -> None:
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = trio.current_time()
            log.warning(
                "sink unavailable for partition %s; retrying the batch through position %d until it is "
                "written (reading paused): %s",
                partition,
                batch[-1].through,
                exc,
                extra={"event": "sink_unavailable", "source": getattr(self.sink, "source", None), "partition": partition,
                       "through": batch[-1].through, "error": str(exc)},
            )
        else:
            log.debug("partition %s: attempt %d failed: %s", partition, self.failures, exc)

    def _succeeded(self, partition: str, result: WriteResult) -> None:
        if self.failing_since is not None:
            log.info(
                "sink available again for partition %s after %d failed attempts in %.1f s; cursor %d",
                partition,
                self.failures,
                trio.current_time() - self.failing_since,
                result.cursor,
                extra={"event": "sink_available", "source": getattr(self.sink, "source", None), "partition": partition,
                       "failed_attempts": self.failures,
                       "outage_seconds": round(trio.current_time() - self.failing_since, 3), "cursor": result.cursor},
            )
            self.failing_since = None
            self.failures = 0
        if result.stale:
            log.warning(
                "partition %s: %d events above the cursor were already in the stream (cursor key lost, "
                "or events out of order) and were skipped; cursor now %d",
                partition,
                result.stale,
                result.cursor,
                extra={"event": "stale_skipped", "source": getattr(self.sink, "source", None), "partition": partition,
                       "stale": result.stale, "cursor": result.cursor},
            )
