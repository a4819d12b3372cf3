"""``weir deliver``: one supervised delivery actor per (pipeline, partition stream).

    deliver (one_for_one)
     ├── farcaster-parquet/1   (weir.deliver.actor.PartitionDelivery)
     ├── farcaster-parquet/2
     └── <pipeline>/<partition> …

Wiring only; the behaviour is in actor.py, decisions.py and the targets.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import redis.asyncio as aioredis
import trio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from weir.app import REDIS_URL_FILE
from weir.bridge import call_asyncio, open_asyncio_loop
from weir.config import Config, ConfigError
from weir.deliver.actor import DeliveryStats, PartitionDelivery
from weir.deliver.decisions import RollPolicy, partition_problem
from weir.deliver.group import ConsumerGroup
from weir.deliver.monitor import DeliveryViews, sample_groups
from weir.deliver.settings import DeliverPipelineSettings
from weir.deliver.target import Target
from weir.observability.http import Observability, open_observability
from weir.redact import redact_url
from weir.sinks.keys import delivery_dead_key, hash_tag, partition_keys
from weir.sinks.redis_sink import call_redis
from weir.supervision import Backoff, ChildSpec, Strategy, Supervisor

log = logging.getLogger("weir.deliver")


@attrs.define(eq=False)
class DeliverService:
    """The running delivery service, handed to the caller once every actor has started."""

    root: Supervisor
    consumer: str
    stats: dict[str, DeliveryStats]  # by child name, "<pipeline>/<partition>"
    deliveries: DeliveryViews = attrs.field(factory=DeliveryViews)  # what /metrics shows
    observability: Observability | None = None  # standalone `weir deliver`'s own /metrics endpoint
    partitions: tuple[()] = ()  # no ingestion here (the endpoint's collector reads both kinds of service)

    def stop(self) -> None:
        self.root.stop()

    def supervisors(self) -> list[Supervisor]:
        return [self.root]


def build_target(pipe: DeliverPipelineSettings, *, source: str, partition: str, consumer: str, backoff: Backoff,
                 rng: random.Random, endpoint: object = None, claim_idle: float = 60.0) -> Target:
    """The target a pipeline's settings describe, for one partition (``endpoint``: a webhook
    pipeline's shared weir.deliver.webhook.Endpoint)."""
    if pipe.target == "webhook":
        from weir.deliver.webhook import Endpoint, WebhookTarget  # httpx: only when a webhook pipeline runs

        assert isinstance(endpoint, Endpoint)
        # An offer's deliveries are acknowledged long before another instance could claim them.
        return WebhookTarget(endpoint, source=source, partition=partition, offer_within=claim_idle / 3, rng=rng)
    if pipe.target == "nats":
        from weir.deliver.jetstream import NatsTarget  # nats-py: only when a NATS pipeline runs

        return NatsTarget(pipe, source=source, partition=partition, consumer=consumer, backoff=backoff, rng=rng)
    if pipe.target == "parquet":
        from weir.deliver.parquet import ParquetTarget  # pyarrow: only when a Parquet pipeline runs

        return ParquetTarget(directory=Path(pipe.directory), source=source, partition=partition, consumer=consumer,
                             compression=pipe.compression, row_group_rows=pipe.row_group_rows,
                             roll=RollPolicy(max_rows=pipe.file_rows, max_age=pipe.file_age))
    raise ValueError(f"unknown target {pipe.target!r}")  # load_config refuses it first


async def serve_deliver(config: Config, *, stopping: trio.Event | None = None, views: DeliveryViews | None = None,
                        task_status: trio.TaskStatus[DeliverService] = trio.TASK_STATUS_IGNORED) -> None:
    """Run every configured delivery pipeline until ``stopping`` is set (drain: commit and
    acknowledge what is buffered) or the root supervisor gives up.

    ``views``: where to keep the statistics, given by a service that shows them on its own
    endpoint (``weir run`` with deliver.with_run); without it this service opens the ``[metrics]``
    endpoint itself (standalone ``weir deliver``).

    Raises:
        ConfigError: no pipeline configured, no Redis to read, or a source with no partition stream.
        SupervisorEscalation: (in an exception group) the root supervisor gave up.
    """
    if stopping is None:
        stopping = trio.Event()
    deliver = config.deliver
    if not deliver.pipelines:
        raise ConfigError("deliver.pipelines: no delivery pipeline is configured: add a [[deliver.pipelines]] table")
    sup = config.supervision
    backoff = Backoff(initial=sup.backoff_initial, maximum=sup.backoff_max)
    rng = random.Random()
    consumer = deliver.consumer_name()
    own_endpoint = views is None
    views = DeliveryViews() if views is None else views
    async with (open_asyncio_loop(), _redis_client(config) as (client, shown_url),
                open_observability(config.metrics) if own_endpoint else _no_endpoint() as observability):
        children: list[ChildSpec] = []
        stats: dict[str, DeliveryStats] = {}
        for pipe in deliver.pipelines:
            if pipe.target == "nats":
                await _check_nats_stream(pipe)
            name = pipe.name or f"{pipe.source}-{pipe.target}"
            endpoint = _webhook_endpoint(pipe, name) if pipe.target == "webhook" else None
            group_name = pipe.group or name
            partitions = pipe.partitions or await _discover(client, shown_url, config.redis.prefix, pipe.source)
            for partition in partitions:
                keys = partition_keys(pipe.source, partition, prefix=config.redis.prefix)
                group = ConsumerGroup(client, shown_url, stream=keys.events, group=group_name, consumer=consumer,
                                      dead_stream=delivery_dead_key(pipe.source, partition, group_name,
                                                                    prefix=config.redis.prefix))
                child = f"{name}/{partition}"
                stats[child] = views.view(child, pipeline=name, source=pipe.source, partition=partition,
                                          group=group).stats
                actor = PartitionDelivery(
                    name=child, group=group, settings=deliver, start=pipe.start, stats=stats[child],
                    backoff=backoff, rng=rng,
                    make_target=lambda pipe=pipe, partition=partition, endpoint=endpoint: build_target(
                        pipe, source=pipe.source, partition=partition, consumer=consumer, backoff=backoff, rng=rng,
                        endpoint=endpoint, claim_idle=deliver.claim_idle),
                )
                children.append(ChildSpec(name=child, target=actor.run, shutdown_grace=30.0))
        if observability is not None:  # the first child, so it is stopped last
            children.insert(0, observability.child_spec())
        root = Supervisor("deliver", children, strategy=Strategy.ONE_FOR_ONE, max_restarts=sup.max_restarts,
                          period=sup.period, backoff=backoff, rng=rng)
        log.info("delivering %d partition stream(s) as consumer %s", len(children), consumer,
                 extra={"event": "deliver_started", "consumer": consumer, "partitions": len(children)})
        service = DeliverService(root=root, consumer=consumer, stats=stats, deliveries=views,
                                 observability=observability)
        if observability is not None:
            observability.attach(service)

        class _Status:
            def started(self, value: object = None) -> None:
                task_status.started(service)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_groups, views)  # for /metrics, while the tree runs and no longer
            await root.run(stopping, task_status=_Status())  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def _no_endpoint() -> AsyncIterator[None]:
    yield None


@asynccontextmanager
async def _redis_client(config: Config) -> AsyncIterator[tuple[aioredis.Redis, str]]:
    url = config.redis.url or _running_weirs_url(config)
    # A blocking XREADGROUP waits block_ms before it answers: the socket must wait longer.
    timeout = config.redis.socket_timeout + config.deliver.block_ms / 1000

    async def open_aio() -> aioredis.Redis:
        return aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=config.redis.socket_timeout,
                                       retry=Retry(NoBackoff(), 0), retry_on_error=[], health_check_interval=0,
                                       decode_responses=False)

    client = await call_asyncio(open_aio)
    try:
        yield client, redact_url(url)
    finally:
        with trio.CancelScope(shield=True):
            await call_asyncio(client.aclose)


def _running_weirs_url(config: Config) -> str:
    """Without redis.url: the embedded Redis of a `weir run` using the same redis.data_dir."""
    url_file = Path(config.redis.data_dir) / REDIS_URL_FILE
    try:
        return url_file.read_text().strip()
    except OSError:
        raise ConfigError(f"redis.url: not set, and no running weir's embedded Redis in redis.data_dir "
                          f"({str(url_file)!r} not found): set redis.url or start `weir run` first") from None


async def _discover(client: aioredis.Redis, shown_url: str, prefix: str, source: str) -> list[str]:
    """The partitions of ``source`` that have an events stream now (SCAN)."""
    head = hash_tag(source, "x", prefix=prefix)[:-2]  # "{prefix:source:"
    pattern = head.replace("{", "\\{") + "*}:events"

    async def scan() -> list[bytes]:
        return [key async for key in client.scan_iter(match=pattern, count=1000, _type="stream")]

    keys = await call_redis(shown_url, scan)
    partitions = []
    for key in sorted(set(keys)):
        try:
            partition = key.decode()[len(head):-len("}:events")]
        except UnicodeDecodeError:
            partition, problem = repr(key), "its key is not UTF-8"
        else:
            problem = partition_problem(partition)  # a key weir did not write: its name may be a path out
        if problem is None:
            partitions.append(partition)
        else:
            log.warning("%s partition stream %r skipped: %s", source, partition, problem,
                        extra={"event": "deliver_partition_skipped", "source": source, "partition": partition})
    if not partitions:
        raise ConfigError(f"deliver.pipelines: no {source} partition stream under prefix {prefix!r} in {shown_url} "
                          f"yet: set partitions = [...] or start after weir has written some")
    return partitions


async def _check_nats_stream(pipe: DeliverPipelineSettings) -> None:
    """Create or check a NATS pipeline's stream before anything is delivered: a stream configured
    otherwise stops the service with one line (ConfigError). NATS down: its actors wait for it."""
    from weir.deliver.jetstream import NatsUnavailable, check_stream

    try:
        await check_stream(pipe, "weir-deliver-check")
    except NatsUnavailable as exc:
        log.warning("%s: the stream is checked once it is reachable", exc,
                    extra={"event": "deliver_nats_unavailable", "url": redact_url(pipe.url)})


def _webhook_endpoint(pipe: DeliverPipelineSettings, name: str) -> object:
    """A webhook pipeline's endpoint, shared by its partitions: one circuit breaker and one
    concurrency limit per endpoint (ConfigError: its secret's environment variable is not set)."""
    from weir.deliver.webhook import Endpoint

    return Endpoint(pipe, name)
