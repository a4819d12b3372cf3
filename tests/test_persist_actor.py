"""The persist actor against a real redis-server that is paused, killed and brought back."""

from __future__ import annotations

import functools
import logging
import random

import pytest
import redis.exceptions as rex
import trio

from weir.actors.persist import DurableMark, run_persist
from weir.events import Chunk, Event
from weir.sinks.keys import partition_keys
from weir.sinks.redis_sink import Cursor, SinkBehind, WriteResult, open_redis_sink
from weir.supervision import Backoff, BreakerState, CircuitBreaker

pytestmark = [pytest.mark.integration, pytest.mark.every_server]

SOURCE = "farcaster"
PART = "2"
KEYS = partition_keys(SOURCE, PART)
TIMEOUT = 15  # seconds any single wait in these tests may take before it is a failure


def batch(first: int, last: int) -> list[Chunk]:
    events = [
        Event(source=SOURCE, partition=PART, position=p, kind="MERGE_MESSAGE", payload=b"event %d" % p)
        for p in range(first, last + 1)
    ]
    return [Chunk(partition=PART, events=events, through=last, token=f"t{last}")]


class Harness:
    """A running persist actor with the channel that feeds it and what it reported."""

    def __init__(self, sink, *, failure_threshold: int = 2) -> None:
        self.send, self.receive = trio.open_memory_channel[object](0)  # hand-over, as in the pipeline
        self.sink = sink
        self.opened = trio.Event()
        self.stopping = trio.Event()
        self.breaker = CircuitBreaker(
            "redis",
            failure_threshold=failure_threshold,
            reset_timeout=0.05,
            max_reset_timeout=0.2,
            on_change=self._on_change,
        )
        self.backoff = Backoff(initial=0.01, maximum=0.05)
        self.written: list[tuple[str, WriteResult, list[Chunk]]] = []
        self.written_changed = trio.Event()

    def _on_change(self, name: str, old: BreakerState, new: BreakerState) -> None:
        if new is BreakerState.OPEN:
            self.opened.set()

    def on_written(self, partition: str, result: WriteResult, chunks: list[Chunk]) -> None:
        self.written.append((partition, result, chunks))
        self.written_changed.set()
        self.written_changed = trio.Event()

    async def start(self, nursery: trio.Nursery, **options: object) -> None:
        await nursery.start(
            functools.partial(
                run_persist,
                self.stopping,
                receive=self.receive,
                sink=self.sink,
                breaker=self.breaker,
                backoff=self.backoff,
                on_written=self.on_written,
                rng=random.Random(1),
                **options,
            )
        )

    async def wait_written(self, count: int) -> None:
        with trio.fail_after(TIMEOUT):
            while len(self.written) < count:
                await self.written_changed.wait()


async def stream_ids(redis_client) -> list[bytes]:
    return [entry_id for entry_id, _ in await redis_client("XRANGE", KEYS.events, "-", "+")]


async def test_writes_each_batch_and_returns_once_stopped(redis_server, redis_client):
    async with open_redis_sink(redis_server.url, source=SOURCE) as sink:
        harness = Harness(sink)
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                await harness.start(nursery)
                await harness.send.send(batch(1, 3))
                await harness.send.send([])  # nothing to write: ignored
                await harness.send.send(batch(4, 6))
                harness.stopping.set()
            # The nursery closed: once stopped, the actor finished its write and returned.

    assert [(p, r.appended, r.cursor) for p, r, _ in harness.written] == [(PART, 3, 3), (PART, 3, 6)]
    assert harness.written[1][2] == batch(4, 6)
    assert await stream_ids(redis_client) == [b"%d-0" % p for p in range(1, 7)]


async def test_returns_when_the_channel_closes(redis_server, asyncio_loop):
    async with open_redis_sink(redis_server.url, source=SOURCE) as sink:
        harness = Harness(sink)
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                await harness.start(nursery)
                await harness.send.aclose()


async def test_retries_the_same_batch_while_redis_is_paused(redis_server, redis_client, caplog):
    caplog.set_level(logging.DEBUG, logger="weir.actors.persist")
    async with open_redis_sink(redis_server.url, source=SOURCE, socket_timeout=0.2) as sink:
        harness = Harness(sink)
        async with trio.open_nursery() as nursery:
            await harness.start(nursery)
            await harness.send.send(batch(1, 2))
            await harness.wait_written(1)

            redis_server.pause()
            try:
                await harness.send.send(batch(3, 5))
                with trio.fail_after(TIMEOUT):
                    await harness.opened.wait()
                # Retrying, the actor does not receive: the reader is held back.
                with pytest.raises(trio.WouldBlock):
                    harness.send.send_nowait(batch(6, 6))
                assert len(harness.written) == 1
            finally:
                redis_server.resume()

            await harness.wait_written(2)
            await harness.send.send(batch(6, 6))
            harness.stopping.set()

    # The EVALSHA sent before a timeout may have run when Redis resumed; the retry then skipped it.
    assert await stream_ids(redis_client) == [b"%d-0" % p for p in range(1, 7)]
    assert await sink_cursor(redis_client) == Cursor(position=6, token="t6")
    assert harness.breaker.state is BreakerState.CLOSED
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "weir.actors.persist" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1 and "sink unavailable" in warnings[0]
    retries = [r for r in caplog.records if r.name == "weir.actors.persist" and r.levelno == logging.DEBUG]
    assert retries  # each further try is logged at debug only
    assert any("available again" in r.getMessage() for r in caplog.records)


async def test_writes_once_after_redis_is_killed_and_restarted(durable_redis_server, asyncio_loop):
    server = durable_redis_server
    async with open_redis_sink(server.url, source=SOURCE, socket_timeout=1.0) as sink:
        harness = Harness(sink)
        async with trio.open_nursery() as nursery:
            await harness.start(nursery)
            await harness.send.send(batch(1, 100))
            await harness.wait_written(1)

            await server.kill()
            await harness.send.send(batch(101, 200))
            with trio.fail_after(TIMEOUT):
                await harness.opened.wait()
            assert len(harness.written) == 1
            await server.start()  # same port and data dir: the AOF replays

            await harness.wait_written(2)
            harness.stopping.set()

        assert harness.written[1][1] == WriteResult(appended=100, skipped=0, dead_appended=0, cursor=200)
        assert await sink.read_cursor(PART) == Cursor(position=200, token="t200")
        # Nothing acknowledged before the kill was lost (appendfsync always), nothing doubled.
        entries = await sink_entries(sink)
        assert entries == [b"%d-0" % p for p in range(1, 201)]


async def test_error_that_retrying_cannot_fix_ends_the_actor(redis_server, redis_client):
    await redis_client("SET", KEYS.events, "not a stream")
    async with open_redis_sink(redis_server.url, source=SOURCE) as sink:
        harness = Harness(sink, failure_threshold=1)
        with pytest.RaisesGroup(pytest.RaisesExc(rex.ResponseError, match="WRONGTYPE")):
            with trio.fail_after(TIMEOUT):
                async with trio.open_nursery() as nursery:
                    await harness.start(nursery)
                    await harness.send.send(batch(1, 1))
    # Redis answered: that is not a reason to open the breaker for every other pipeline.
    assert harness.breaker.state is BreakerState.CLOSED
    assert harness.written == []


async def sink_cursor(redis_client) -> Cursor:
    position, token = await redis_client("HMGET", KEYS.cursor, "position", "token")
    return Cursor(position=int(position), token=token.decode())


async def sink_entries(sink) -> list[bytes]:
    from weir.bridge import call_asyncio

    entries = await call_asyncio(sink._require_client().xrange, KEYS.events)
    return [entry_id for entry_id, _ in entries]


# -- Redis going back in time ---------------------------------------------------------------------


async def dump_partition(redis_client) -> dict[str, bytes | None]:
    return {key: await redis_client("DUMP", key) for key in (KEYS.events, KEYS.cursor)}


async def restore_partition(redis_client, saved: dict[str, bytes | None]) -> None:
    """The state of a Redis that lost every write since ``saved`` although it acknowledged them."""
    for key, value in saved.items():
        await redis_client("DEL", key)
        if value is not None:
            await redis_client("RESTORE", key, 0, value)


@pytest.mark.parametrize("next_batch", [True, False], ids=["the next write", "an idle check"])
async def test_redis_losing_acknowledged_writes_ends_the_actor_instead_of_writing_past_them(
    redis_server, redis_client, next_batch
):
    """A batch written on top of a rolled-back Redis would move the cursor over the lost events,
    and nothing would ever read them again. The actor stops with SinkBehind instead (its pipeline
    then restarts from what Redis holds): found by the next write, or, when no batch comes, by the
    idle check."""
    mark = DurableMark(PART)
    async with open_redis_sink(redis_server.url, source=SOURCE) as sink:
        harness = Harness(sink)
        with pytest.RaisesGroup(SinkBehind) as caught:
            with trio.fail_after(TIMEOUT):
                async with trio.open_nursery() as nursery:
                    await harness.start(nursery, mark=mark, verify_every=0.05 if not next_batch else 3600)
                    mark.resumed_from(None)  # the source starts (after persist) on an empty Redis
                    await harness.send.send(batch(1, 3))
                    await harness.wait_written(1)
                    saved = await dump_partition(redis_client)
                    await harness.send.send(batch(4, 6))
                    await harness.wait_written(2)
                    assert mark.position == 6
                    await restore_partition(redis_client, saved)
                    if next_batch:
                        await harness.send.send(batch(7, 9))
        behind = caught.value.exceptions[0]
        assert (behind.stored, behind.expected) == (3, 6)
        assert await stream_ids(redis_client) == [b"%d-0" % p for p in range(1, 4)]
        assert len(harness.written) == 2
        # Redis answered: not a reason to open the breaker shared by every pipeline.
        assert harness.breaker.state is BreakerState.CLOSED


async def test_a_source_resuming_from_the_stored_cursor_resets_the_expectation(redis_server, redis_client):
    mark = DurableMark(PART)
    async with open_redis_sink(redis_server.url, source=SOURCE) as sink:
        checks: list[int] = []
        checked = trio.Event()
        real_check = sink.check_behind

        async def counted_check(partition: str, expect: int) -> None:
            await real_check(partition, expect)  # the real read, against the real Redis
            checks.append(expect)
            if checks.count(9) >= 3:
                checked.set()

        sink.check_behind = counted_check
        harness = Harness(sink)
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                await harness.start(nursery, mark=mark, verify_every=0.01)
                await harness.send.send(batch(1, 3))
                await harness.wait_written(1)
                saved = await dump_partition(redis_client)
                await harness.send.send(batch(4, 6))
                await harness.wait_written(2)
                await restore_partition(redis_client, saved)
                mark.resumed_from(3)  # the restarted source reads the stored cursor and resumes there
                await harness.send.send(batch(4, 9))  # the lost events, read again
                await harness.wait_written(3)
                await checked.wait()  # idle checks against the new mark pass: Redis holds it
                harness.stopping.set()
        assert await stream_ids(redis_client) == [b"%d-0" % p for p in range(1, 10)]
        assert mark.position == 9
