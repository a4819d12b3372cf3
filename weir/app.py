"""Assemble the service from a Config: Redis, one pipeline per partition of every enabled network.

    root (one_for_one)
     ├── farcaster/1 (one_for_all: persist, batch, filter, source)
     ├── farcaster/2
     └── <network>/<partition> …

Everything here is wiring; the behaviour lives in the actors, the sink and the supervisor.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from weir.actors.batch import BatchPolicy
from weir.actors.filter import Predicate, all_of
from weir.actors.persist import DurableMark
from weir.actors.pipeline import PipelineStats, build_pipeline
from weir.actors.stopping import until_stopped
from weir.bridge import open_asyncio_loop
from weir.config import Config
from weir.networks import Network, NetworkContext, NetworkFactory, enabled_networks
from weir.observability.http import Observability, open_observability
from weir.observability.progress import Progress
from weir.observability.progress_report import serve_progress
from weir.sinks.embedded_redis import RedisServerConfig, open_embedded_redis
from weir.sinks.server_binary import client_command
from weir.sinks.redis_sink import Cursor, RedisSink, SinkUnavailable
from weir.supervision import Backoff, ChildSpec, CircuitBreaker, Strategy, Supervisor

T = TypeVar("T")

log = logging.getLogger("weir.app")

REDIS_URL_FILE = "redis.url"


@attrs.define(eq=False)
class PartitionView:
    """One pipeline's live statistics."""

    name: str
    source: Any  # the network's source statistics (e.g. ShardStats)
    sink: PipelineStats
    progress: Progress | None = None  # toward the network's head, as last sampled (weir.observability.progress_report)


@attrs.define(eq=False)
class Service:
    """The running service, handed to the caller once every pipeline has started."""

    redis_url: str
    root: Supervisor
    partitions: list[PartitionView]
    breaker: CircuitBreaker
    networks: list[Network]
    observability: Observability | None = None  # the /metrics endpoint (None: disabled or not bound)
    deliveries: Any = None  # weir.deliver.monitor.DeliveryViews with deliver.with_run, else None

    def stop(self) -> None:
        self.root.stop()

    def supervisors(self) -> list[Supervisor]:
        """The root and every running pipeline's supervisor (the levels that restart children)."""
        return [self.root] + [view.sink.supervisor for view in self.partitions if view.sink.supervisor is not None]

    def restarts(self) -> int:
        """Restarts decided by any supervisor: the root's of whole pipelines, each pipeline's of its actors."""
        return sum(supervisor.statistics().restarts for supervisor in self.supervisors())


@asynccontextmanager
async def open_redis_url(config: Config) -> AsyncIterator[str]:
    """The configured Redis URL, or a private embedded redis-server (AOF on) for the duration."""
    if config.redis.url:
        yield config.redis.url
        return
    data_dir = Path(config.redis.data_dir).resolve()
    async with open_embedded_redis(RedisServerConfig(data_dir=data_dir, appendfsync=config.redis.appendfsync)) as server:
        (data_dir / REDIS_URL_FILE).write_text(server.url + "\n")
        log.info("embedded Redis at %s (%s %s from %s; data in %s, AOF %s); connect with: %s -p %d",
                 server.url, server.binary.path.name, ".".join(map(str, server.version or ())), server.binary.origin,
                 data_dir, config.redis.appendfsync, client_command(server.binary), server.port)
        try:
            yield server.url
        finally:
            (data_dir / REDIS_URL_FILE).unlink(missing_ok=True)


async def read_cursor_patiently(
    sink: RedisSink, partition: str, breaker: CircuitBreaker, backoff: Backoff, rng: random.Random
) -> Cursor | None:
    """The partition's persisted cursor, waiting (behind the Redis breaker) while Redis is down.

    Without it a pipeline starting while Redis is unreachable would crash until its restart
    intensity escalated, although nothing is wrong that time will not cure.
    """
    return await _read_patiently(sink.read_cursor, (partition,), "the cursor", partition, breaker, backoff, rng)


async def _read_patiently(read: Callable[..., Awaitable[T]], args: tuple[Any, ...], what: str, partition: str,
                          breaker: CircuitBreaker, backoff: Backoff, rng: random.Random) -> T:
    attempt = 0
    while True:
        try:
            return await breaker.call(read, *args)
        except SinkUnavailable as exc:
            delay = backoff.delay(attempt, rng)
            if attempt == 0:
                log.warning("partition %s: cannot read %s (%s); waiting for Redis", partition, what, exc)
            attempt += 1
            await trio.sleep(delay)


async def _unless_stopped(stopping: trio.Event, work):
    """Await ``work`` unless ``stopping`` is set first (then return None)."""
    result = None
    async with until_stopped(stopping):
        result = await work
    return result


async def serve(
    config: Config,
    *,
    stopping: trio.Event | None = None,
    event_filter: Predicate | None = None,
    networks: Sequence[NetworkFactory] | None = None,
    task_status: trio.TaskStatus[Service | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service until ``stopping`` is set (ordered drain) or the root supervisor gives up.

    Hands the caller the running :class:`Service` once every pipeline has started (``None`` if it
    was stopped before the partitions were known; a service already stopping if the stop came
    while its pipelines were starting). Use it with ``nursery.start`` (docs/embedding.md).

    Args:
        event_filter: ``(event) -> bool``, asked in every pipeline's filter actor after the
            configured filters; an event it refuses is not persisted, and the cursor still moves
            past it. An exception it raises crashes the pipeline (restarted from the cursor, so
            the same event is asked again: one that always raises ends in the root giving up).
        networks: the networks to run, instead of those ``config`` enables (classes, or factories
            called as ``factory(config, context)``); each still reads its settings from ``config``.

    Raises:
        SupervisorEscalation: (in an exception group) the root supervisor gave up.
    """
    if stopping is None:
        stopping = trio.Event()
    rng = random.Random()
    sup = config.supervision
    backoff = Backoff(initial=sup.backoff_initial, maximum=sup.backoff_max)
    breaker = sup.breaker("redis")
    context = NetworkContext(backoff=backoff, rng=rng, redis_breaker=breaker)
    factories = enabled_networks(config) if networks is None else list(networks)
    running = [factory(config, context) for factory in factories]
    if not running:
        raise ValueError("no network is enabled: set one of farcaster.enabled, atproto.enabled, ethereum.enabled to true")
    names = [network.name for network in running]
    if len(set(names)) < len(names):  # they would write to the same Redis keys
        raise ValueError(f"two networks share a name: {sorted(names)}")
    policy = BatchPolicy(
        max_events=config.batch.max_events,
        max_bytes=config.batch.max_bytes,
        max_age=config.batch.max_age_ms / 1000,
        eager=config.batch.eager,
    )
    async with open_asyncio_loop(), open_redis_url(config) as redis_url, AsyncExitStack() as sinks:
        children: list[ChildSpec] = []
        views: list[PartitionView] = []
        for network in running:
            sink = RedisSink(redis_url, prefix=config.redis.prefix, source=network.name, socket_timeout=config.redis.socket_timeout)
            await sink.open()
            sinks.push_async_callback(_close_shielded, sink)
            partitions = await _unless_stopped(stopping, network.partitions())
            if partitions is None:
                log.info("stopped before %s's partitions were known", network.name)
                task_status.started(None)
                return
            for partition in partitions:
                view = PartitionView(name=f"{network.name}/{partition}", source=network.new_source_stats(), sink=PipelineStats())
                views.append(view)
                children.append(
                    ChildSpec(
                        name=view.name,
                        target=_pipeline(network, partition, view, sink, policy, breaker, context, sup, event_filter).run,
                        shutdown_grace=30.0,
                    )
                )
        deliveries = None
        if config.deliver.with_run and config.deliver.pipelines:
            from weir.deliver.monitor import DeliveryViews

            deliveries = DeliveryViews()  # on this service's /metrics
            # The last child: stopped first, so its drain commits what ingestion persisted.
            children.append(ChildSpec(name="deliver", target=_delivery(config, redis_url, views, deliveries),
                                      shutdown_grace=30.0))
        # /metrics, /healthz, /readyz (weir/observability): the root's first child, so it is stopped last.
        observability = await sinks.enter_async_context(open_observability(config.metrics))
        if observability is not None:
            children.insert(0, observability.child_spec())
        root = Supervisor(
            "root", children, strategy=Strategy.ONE_FOR_ONE, max_restarts=sup.max_restarts, period=sup.period,
            backoff=backoff, rng=rng,
        )
        service = Service(redis_url=redis_url, root=root, partitions=views, breaker=breaker, networks=running,
                          observability=observability, deliveries=deliveries)
        if observability is not None:
            observability.attach(service)
        async with trio.open_nursery() as nursery:
            # Progress is sampled while the tree runs, and no longer: its end ends the nursery.
            nursery.start_soon(serve_progress, views, config.progress)

            async def run_root(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await _run_root(root, stopping, task_status=task_status)
                finally:
                    nursery.cancel_scope.cancel()

            await nursery.start(run_root)
            task_status.started(service)


async def _run_root(root: Supervisor, stopping: trio.Event, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """``root.run``, reporting started also when a stop came before every pipeline was up.

    A supervisor stopped while starting returns without ``started()`` (it never was ready); for the
    service that is an ordered stop all the same (a SIGTERM during start-up, or while Redis is not
    there yet), not the start failure trio would make of it.
    """
    ready = False

    class _Status:
        def started(self, value: object = None) -> None:
            nonlocal ready
            ready = True
            task_status.started()

    await root.run(stopping, task_status=_Status())  # type: ignore[arg-type]
    if not ready:
        task_status.started()


def _pipeline(network: Network, partition: str, view: PartitionView, sink: RedisSink, policy: BatchPolicy,
              breaker: CircuitBreaker, context: NetworkContext, sup: Any, event_filter: Predicate | None) -> Supervisor:
    mark = DurableMark(partition)

    async def read_cursor() -> Cursor | None:
        # Called at every start of the source: what it resumes from is what the writes must find.
        cursor = await read_cursor_patiently(sink, partition, breaker, context.backoff, context.rng)
        mark.resumed_from(None if cursor is None else cursor.position)
        return cursor

    async def read_since(position: int) -> list[dict[str, str]]:
        return await _read_patiently(sink.read_since, (partition, position), "the latest entries", partition,
                                     breaker, context.backoff, context.rng)

    return build_pipeline(
        view.name,
        partition=partition,
        source=network.source(partition, read_cursor=read_cursor, read_since=read_since, stats=view.source),
        predicate=all_of(network.predicate(), event_filter),  # the configured filter first
        policy=policy,
        sink=sink,
        breaker=breaker,
        backoff=context.backoff,
        stats=view.sink,
        max_restarts=sup.max_restarts,
        period=sup.period,
        rng=context.rng,
        mark=mark,
    )


def _delivery(config: Config, redis_url: str, views: list[PartitionView], deliveries: Any) -> Callable[..., Awaitable[None]]:
    """``weir deliver``'s tree as a child of the root, on this service's Redis and partitions."""
    from weir.deliver.service import serve_deliver

    pipelines = tuple(
        pipe if pipe.partitions else attrs.evolve(pipe, partitions=tuple(
            view.name.split("/", 1)[1] for view in views if view.name.split("/", 1)[0] == pipe.source))
        for pipe in config.deliver.pipelines
    )
    delivery = attrs.evolve(config, redis=attrs.evolve(config.redis, url=redis_url),
                            deliver=attrs.evolve(config.deliver, pipelines=pipelines))

    async def run(stopping: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_deliver(delivery, stopping=stopping, views=deliveries, task_status=task_status)

    return run


async def _close_shielded(sink: RedisSink) -> None:
    with trio.CancelScope(shield=True):
        await sink.aclose()
