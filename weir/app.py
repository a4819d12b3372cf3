"""Assemble the service from a Config: Redis, one pipeline per Farcaster shard, the root supervisor.

    root (one_for_one)
     └── farcaster/<shard> (one_for_all: persist, batch, filter, source)

Everything here is wiring; the behaviour lives in the actors, the sink and the supervisor.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from weir.actors.batch import BatchPolicy
from weir.actors.farcaster import SOURCE, GrpcTarget, ShardStats, discover_shards, is_transient, run_shard_connection
from weir.actors.filter import Predicate
from weir.actors.pipeline import PipelineStats, build_pipeline
from weir.bridge import open_asyncio_loop
from weir.codecs.farcaster_keys import MESSAGE_TYPE_BY_NAME, MESSAGE_TYPES
from weir.config import Config, FarcasterSettings
from weir.events import Event
from weir.sinks.embedded_redis import RedisServerConfig, open_embedded_redis
from weir.sinks.redis_sink import Cursor, RedisSink, SinkUnavailable
from weir.supervision import Backoff, ChildSpec, CircuitBreaker, Strategy, Supervisor

log = logging.getLogger("weir.app")

REDIS_URL_FILE = "redis.url"


@attrs.define(eq=False)
class PartitionView:
    """One pipeline's live statistics."""

    name: str
    source: ShardStats
    sink: PipelineStats


@attrs.define(eq=False)
class Service:
    """The running service, handed to the caller once every pipeline has started."""

    redis_url: str
    root: Supervisor
    partitions: list[PartitionView]
    breaker: CircuitBreaker
    node_breaker: CircuitBreaker

    def stop(self) -> None:
        self.root.stop()


def farcaster_predicate(settings: FarcasterSettings) -> Predicate | None:
    """The local filter, on scanned keys: event types, fids, message types (all must match)."""
    kinds = frozenset(name.upper() for name in settings.event_types)
    fids = settings.fids
    types = frozenset(MESSAGE_TYPES[MESSAGE_TYPE_BY_NAME[name.upper()]] for name in settings.message_types)
    if not (kinds or fids or types):
        return None

    def accept(event: Event) -> bool:
        if kinds and event.kind not in kinds:
            return False
        if fids and event.fields.get("fid") not in fids:
            return False
        if types and event.fields.get("type") not in types:
            return False
        return True

    return accept


@asynccontextmanager
async def open_redis_url(config: Config) -> AsyncIterator[str]:
    """The configured Redis URL, or a private embedded redis-server (AOF on) for the duration."""
    if config.redis.url:
        yield config.redis.url
        return
    data_dir = Path(config.redis.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    async with open_embedded_redis(RedisServerConfig(data_dir=data_dir, appendfsync=config.redis.appendfsync)) as server:
        (data_dir / REDIS_URL_FILE).write_text(server.url + "\n")
        log.info("embedded Redis at %s (data in %s, AOF %s); connect with: redis-cli -p %d",
                 server.url, data_dir, config.redis.appendfsync, server.port)
        try:
            yield server.url
        finally:
            (data_dir / REDIS_URL_FILE).unlink(missing_ok=True)


async def discover_with_retry(settings: FarcasterSettings, backoff: Backoff, rng: random.Random) -> list[int]:
    """GetInfo until the node answers: at start-up a node that is down is waited for, loudly."""
    target = GrpcTarget.from_url(settings.url)
    attempt = 0
    while True:
        try:
            shards = await discover_shards(target, timeout=settings.connect_timeout)
        except Exception as exc:
            if not is_transient(exc):
                raise
            delay = backoff.delay(attempt, rng)
            attempt += 1
            log.warning("GetInfo on %s failed (%s); retrying in %.2fs", target, exc, delay)
            await trio.sleep(delay)
            continue
        if not shards:
            raise RuntimeError(f"{target} reports no user shards")
        log.info("%s has user shards %s", target, shards)
        return shards


async def read_cursor_patiently(
    sink: RedisSink, partition: str, breaker: CircuitBreaker, backoff: Backoff, rng: random.Random
) -> Cursor | None:
    """The partition's persisted cursor, waiting (behind the Redis breaker) while Redis is down.

    Without it a pipeline starting while Redis is unreachable would crash until its restart
    intensity escalated, although nothing is wrong that time will not cure.
    """
    attempt = 0
    while True:
        try:
            return await breaker.call(sink.read_cursor, partition)
        except SinkUnavailable as exc:
            delay = backoff.delay(attempt, rng)
            if attempt == 0:
                log.warning("partition %s: cannot read the cursor (%s); waiting for Redis", partition, exc)
            attempt += 1
            await trio.sleep(delay)


async def _unless_stopped(stopping: trio.Event, work):
    """Await ``work`` unless ``stopping`` is set first (then return None)."""
    result = None
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            nonlocal result
            result = await work
            nursery.cancel_scope.cancel()

        async def watch() -> None:
            await stopping.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(run)
        nursery.start_soon(watch)
    return result


async def serve(
    config: Config,
    *,
    stopping: trio.Event | None = None,
    task_status: trio.TaskStatus[Service | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service until ``stopping`` is set (ordered drain) or the root supervisor gives up.

    Hands the caller the running :class:`Service` once every pipeline has started (``None`` if it
    was stopped before it could start).
    """
    if stopping is None:
        stopping = trio.Event()
    rng = random.Random()
    sup = config.supervision
    backoff = Backoff(initial=sup.backoff_initial, maximum=sup.backoff_max)
    async with open_asyncio_loop(), open_redis_url(config) as redis_url:
        sink = RedisSink(redis_url, prefix=config.redis.prefix, source=SOURCE, socket_timeout=config.redis.socket_timeout)
        await sink.open()
        try:
            settings = config.farcaster
            shards = list(settings.shards) or await _unless_stopped(stopping, discover_with_retry(settings, backoff, rng))
            if shards is None:
                log.info("stopped before the node answered GetInfo")
                task_status.started(None)
                return
            breaker = CircuitBreaker("redis", failure_threshold=sup.breaker_failures, reset_timeout=sup.breaker_reset)
            node_breaker = CircuitBreaker(
                f"snapchain {settings.url}", failure_threshold=sup.breaker_failures, reset_timeout=sup.breaker_reset
            )
            policy = BatchPolicy(
                max_events=config.batch.max_events,
                max_bytes=config.batch.max_bytes,
                max_age=config.batch.max_age_ms / 1000,
                eager=config.batch.eager,
            )
            predicate = farcaster_predicate(settings)
            children = []
            views = []
            for shard in shards:
                name = f"{SOURCE}/{shard}"
                view = PartitionView(name=name, source=ShardStats(), sink=PipelineStats())
                views.append(view)

                async def read_cursor(shard: int = shard) -> int | None:
                    cursor = await read_cursor_patiently(sink, str(shard), breaker, backoff, rng)
                    return None if cursor is None else cursor.position

                source = functools.partial(
                    run_shard_connection,
                    settings=settings,
                    shard=shard,
                    read_cursor=read_cursor,
                    stats=view.source,
                    backoff=backoff,
                    breaker=node_breaker,
                    rng=rng,
                )
                pipeline = build_pipeline(
                    name,
                    partition=str(shard),
                    source=source,
                    predicate=predicate,
                    policy=policy,
                    sink=sink,
                    breaker=breaker,
                    backoff=backoff,
                    stats=view.sink,
                    max_restarts=sup.max_restarts,
                    period=sup.period,
                    rng=rng,
                )
                children.append(ChildSpec(name=name, target=pipeline.run, shutdown_grace=30.0))
            root = Supervisor(
                "root",
                children,
                strategy=Strategy.ONE_FOR_ONE,
                max_restarts=sup.max_restarts,
                period=sup.period,
                backoff=backoff,
                rng=rng,
            )
            service = Service(redis_url=redis_url, root=root, partitions=views, breaker=breaker, node_breaker=node_breaker)

            async with trio.open_nursery() as nursery:
                await nursery.start(root.run, stopping)
                task_status.started(service)
        finally:
            with trio.CancelScope(shield=True):
                await sink.aclose()
