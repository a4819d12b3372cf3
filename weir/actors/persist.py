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

import attrs
import trio

from weir.actors.inbox import open_inbox
from weir.actors.nurseries import open_unwrapping_nursery
from weir.events import Chunk
from weir.sinks.redis_sink import RedisSink, SinkBehind, SinkUnavailable, WriteResult
from weir.supervision import Backoff, CircuitBreaker

log = logging.getLogger("weir.actors.persist")

OnWritten = Callable[[str, WriteResult, list[Chunk]], None]

#: Seconds without a write after which an idle persist actor checks that Redis still holds its
#: cursor (one HMGET per partition; a busy actor is checked by every write instead).
VERIFY_IDLE_EVERY = 2.0


@attrs.define(eq=False)
class DurableMark:
    """The highest cursor this pipeline has seen stored for its partition: Redis must still hold it.

    Set to the cursor the source resumes from (:meth:`resumed_from`, on every source start) and
    raised by each write (:meth:`stored`). Stored cursors never go down, so a stored cursor below
    the mark means Redis lost acknowledged writes.
    """

    partition: str
    position: int | None = None
    resumes: int = 0  # how often the source resumed; an idle check that raced one is discarded
    rollbacks: int = 0  # resumes that found Redis holding less than the mark (it lost writes)

    def resumed_from(self, position: int | None) -> None:
        """The source reads on from ``position`` (None: nothing stored): expect that from now on."""
        if self.position is not None and position is not None and position < self.position:
            self.rollbacks += 1
            log.warning(
                "partition %s: Redis holds cursor %d but %d was acknowledged before; reading the "
                "events in between from the network again", self.partition, position, self.position,
                extra={"event": "resume_behind", "partition": self.partition, "stored": position,
                       "expected": self.position},
            )  # fmt: skip
        elif self.position is not None and position is None:
            # Nothing tells where this partition began: the source can only go by its configured
            # start. Said loudly, because with start=live (or latest) events are skipped.
            self.rollbacks += 1
            log.error(
                "partition %s: Redis has no cursor although %d was acknowledged (it lost all of this "
                "partition's data, evicted it, or the keys were deleted); starting again from the "
                "configured start, so events up to %d are read again only if that start reaches "
                "back to them (e.g. start=oldest)", self.partition, self.position, self.position,
                extra={"event": "resume_behind", "partition": self.partition, "stored": None,
                       "expected": self.position},
            )  # fmt: skip
        self.position = position
        self.resumes += 1

    def stored(self, position: int) -> None:
        """A write returned ``position`` as the stored cursor."""
        if self.position is None or position > self.position:
            self.position = position


async def run_persist(
    stopping: trio.Event,
    *,
    receive: trio.MemoryReceiveChannel[list[Chunk]],
    sink: RedisSink,
    breaker: CircuitBreaker,
    backoff: Backoff,
    on_written: OnWritten | None = None,
    rng: random.Random | None = None,
    mark: DurableMark | None = None,
    verify_every: float = VERIFY_IDLE_EVERY,
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
        on_written: called with (partition, result, chunks) once chunks are durable: once per
            batch, or once per part when a batch had to be written in parts (so progress shows).
        rng: jitter source for the backoff (seed it for reproducible runs).
        mark: the cursor Redis must still hold (None: no check); each write passes it and raises it.
        verify_every: with a mark, check it after this many seconds without a write.

    Raises:
        SinkBehind: Redis holds less than ``mark``: it lost acknowledged writes, and only a restart
            of the pipeline (the source resumes from what Redis holds) gets them back.
        Whatever else the sink raises other than :class:`SinkUnavailable` (a malformed batch, a
        key of the wrong type): retrying cannot fix those, so the supervisor has to know.
    """
    writer = _Writer(sink=sink, breaker=breaker, backoff=backoff, rng=rng or random.Random(), mark=mark)
    async with open_unwrapping_nursery() as nursery:
        if mark is not None:
            nursery.start_soon(_verify_while_idle, writer, mark, verify_every, mark.resumes)
        async with open_inbox(receive, stopping) as inbox:
            task_status.started()
            while (batch := await inbox.get()) is not None:
                if not batch:
                    continue
                await writer.write(batch, on_written)
        nursery.cancel_scope.cancel()


async def _verify_while_idle(writer: _Writer, mark: DurableMark, every: float, resumes_at_start: int) -> None:
    """Raise :class:`SinkBehind` if Redis, while no batch came, lost what this pipeline wrote.

    Without it a partition whose last batches were lost would wait for its next event (maybe for
    hours) to notice; the lost events would sit unread until then.

    Only once the source has resumed in this incarnation: after a restart the mark is still the
    old one until the source reads the cursor (which may wait long behind an open breaker), and
    checking it meanwhile would find the very loss the restart is repairing, again and again.
    """
    while True:
        await trio.sleep(every)
        if mark.resumes == resumes_at_start or mark.position is None:
            continue
        if writer.writing or trio.current_time() - writer.last_activity < every:
            continue  # a write checks the mark itself
        expect, resumes = mark.position, mark.resumes
        try:
            await writer.sink.check_behind(mark.partition, expect)
        except SinkUnavailable:
            continue  # Redis is down: the next check (or write) will see what it comes back with
        except SinkBehind:
            if mark.resumes != resumes:
                continue  # the source resumed from the stored cursor meanwhile: nothing is lost
            raise


class _Writer:
    """Retries one batch until it is written; remembers whether the sink is failing (for logs)."""

    def __init__(
        self, *, sink: RedisSink, breaker: CircuitBreaker, backoff: Backoff, rng: random.Random,
        mark: DurableMark | None = None,
    ) -> None:
        self.sink = sink
        self.mark = mark
        self.writing = False
        self.last_activity = trio.current_time()  # when the last write ended (or the actor started)
        self.breaker = breaker
        self.backoff = backoff
        self.rng = rng
        self.failing_since: float | None = None
        self.failures = 0
        self.part_limit: int | None = None  # max events per write after timeouts; None = whole batches

    async def write(self, batch: list[Chunk], on_written: OnWritten | None = None) -> WriteResult:
        """Write ``batch``, in order, as one script call or (after timeouts) as several.

        A write that times out is retried in halves: on a link too slow to carry a whole batch
        within the socket timeout, retrying the same bytes would fail forever, while halves make
        progress. Splitting is safe because every part moves the cursor only over what it holds,
        and the script skips whatever a timed-out attempt may already have written.
        """
        self.writing = True
        try:
            return await self._write(batch, on_written)
        finally:
            self.writing = False
            self.last_activity = trio.current_time()

    async def _write(self, batch: list[Chunk], on_written: OnWritten | None) -> WriteResult:
        partition = batch[0].partition
        parts = _split_to(batch, self.part_limit)
        total: WriteResult | None = None
        attempt = 0
        shrunk = False
        while parts:
            part = parts[0]
            # breaker.call waits while the breaker is open, records the outcome, and frees a
            # half-open trial slot if we are cancelled mid-write (the breaker may be shared).
            try:
                outcome = await self.breaker.call(self._attempt, partition, part)
            except SinkUnavailable as exc:
                self._failed(partition, part, exc)
                if exc.timed_out and (halves := halve(part)) is not None:
                    # Every write from here on holds at most what the first half holds, not just
                    # the two halves of this part: the parts after it were cut to the old limit.
                    self.part_limit = max(1, _events(halves[0]))
                    parts = _split_to([chunk for each in (*halves, *parts[1:]) for chunk in each], self.part_limit)
                    shrunk = True
                    log.info("partition %s: a write timed out; retrying in parts of at most %d events",
                             partition, self.part_limit, extra={"event": "write_split", "partition": partition,
                                                                 "part_events": self.part_limit})
                delay = self.backoff.delay(attempt, self.rng)
                attempt += 1
                await trio.sleep(delay)
                continue
            if isinstance(outcome, Exception):
                raise outcome
            parts.pop(0)
            attempt = 0
            if self.mark is not None:
                self.mark.stored(outcome.cursor)
            total = outcome if total is None else _combine(total, outcome)
            if on_written is not None:
                on_written(partition, outcome, part)
        if not shrunk and self.part_limit is not None:
            self.part_limit *= 2  # the link keeps up again: grow back towards whole batches
            if self.part_limit >= _events(batch):
                self.part_limit = None
        assert total is not None
        self._succeeded(partition, total)
        return total

    async def _attempt(self, partition: str, batch: list[Chunk]) -> WriteResult | Exception:
        try:
            return await self.sink.write(partition, batch, expect=None if self.mark is None else self.mark.position)
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


def _events(batch: list[Chunk]) -> int:
    return sum(len(chunk.events) for chunk in batch)


def _combine(first: WriteResult, second: WriteResult) -> WriteResult:
    return attrs.evolve(
        second,
        appended=first.appended + second.appended,
        skipped=first.skipped + second.skipped,
        dead_appended=first.dead_appended + second.dead_appended,
        stale=first.stale + second.stale,
    )


def _split_to(batch: list[Chunk], limit: int | None) -> list[list[Chunk]]:
    """``batch`` as parts of at most ``limit`` events where it can be split (in order)."""
    if limit is None or _events(batch) <= limit:
        return [batch]
    halves = halve(batch)
    if halves is None:
        return [batch]
    return [part for half in halves for part in _split_to(half, limit)]


def halve(batch: list[Chunk]) -> list[list[Chunk]] | None:
    """Split a batch in two, in order, with about half its events in each, or None when it cannot be split.

    The cut falls inside the chunk that holds the middle event when that chunk can be cut (see
    :func:`_cut_chunk`), else at the chunk boundary nearer the middle. Halving by events, not by
    chunks, matters under backpressure: the network then delivers a few small chunks followed by
    one big one, and a split by chunk count would peel off the small ones while every retry still
    carried the big one (the chaos suite saw four 1 s timeouts in a row that way).
    """
    target = _events(batch) // 2
    if target == 0:  # fewer than two events: chunks of filtered positions only
        if len(batch) < 2:
            return None
        middle = len(batch) // 2
        return [batch[:middle], batch[middle:]]
    seen = 0
    for i, chunk in enumerate(batch):
        size = len(chunk.events)
        if seen + size <= target:
            seen += size
            continue
        if seen == target:  # the middle falls on this chunk's start (seen > 0, so i > 0)
            return [batch[:i], batch[i:]]
        cut = _cut_chunk(chunk, target - seen)
        if cut is not None:
            first, second = cut
            return [[*batch[:i], first], [second, *batch[i + 1 :]]]
        # This chunk stays whole: put it in the half where it unbalances the least.
        before_possible, after_possible = i > 0, i < len(batch) - 1
        if before_possible and (not after_possible or target - seen <= seen + size - target):
            return [batch[:i], batch[i:]]
        if after_possible:
            return [batch[: i + 1], batch[i + 1 :]]
        return None
    raise AssertionError("the middle event lies in some chunk")


def _cut_chunk(chunk: Chunk, want: int) -> tuple[Chunk, Chunk] | None:
    """``chunk`` cut in two near its ``want``-th event, or None when it cannot be cut.

    A cut falls between two positions, never inside one (a position's events are written
    together), and only in a chunk without a token: a token describes the source's state after
    the whole chunk, so its first part could not store one. The first part's cursor is its last
    event's position; dead letters go with the part whose positions cover theirs (unknown
    positions with the first), so none is skipped as already durable.
    """
    events = chunk.events
    if chunk.token or len(events) < 2:
        return None
    want = min(max(want, 1), len(events) - 1)
    cut = next((i for i in range(want, len(events)) if events[i].position != events[i - 1].position), None)
    if cut is None:
        cut = next((i for i in range(want - 1, 0, -1) if events[i].position != events[i - 1].position), None)
    if cut is None:
        return None
    through = events[cut - 1].position
    first = Chunk(
        partition=chunk.partition,
        events=events[:cut],
        through=through,
        dead=[d for d in chunk.dead if d.position is None or d.position <= through],
    )
    second = attrs.evolve(chunk, events=events[cut:], dead=[d for d in chunk.dead if d.position is not None and d.position > through])
    return first, second
