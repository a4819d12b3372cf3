"""The delivery targets a chaos scenario can run ``weir deliver`` into, and how each is read back.

A target kind (:class:`DeliveryTargetKind`) says what its pipeline looks like, which guarantee it
claims (:data:`~weir.chaos.delivery_check.EXACTLY_ONCE` or ``AT_LEAST_ONCE``), and opens the
target for a run (:class:`RunningTarget`): a directory, a nats-server process, a receiving HTTP
endpoint. The running target answers "what did you receive?" as
:class:`~weir.chaos.delivery_check.Received` items, each the partition and entry id it carries
and the key a receiver deduplicates on; the checker does the rest.

A target kind is an attrs frozen class with the members of :class:`DeliveryTargetKind`; its
schedule targets (the webhook receiver that answers 500, hangs, closes early) are named in
``schedule_targets`` and in :data:`weir.chaos.schedule.KINDS`, and are control targets with an
``apply_fault`` method.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from weir.chaos.delivery_check import AT_LEAST_ONCE, EXACTLY_ONCE, Received
from weir.chaos.nats_server import NatsServerProcess
from weir.chaos.webhook_endpoint import ChaosEndpoint
from weir.chaos.webhook_receiver import running_receiver

__all__ = ["NATS", "PARQUET", "WEBHOOK", "DeliveryTargetKind", "NatsTarget", "ParquetTarget", "RunningTarget",
           "WebhookTarget"]


@attrs.frozen(kw_only=True)
class RunningTarget:
    """A target, open for one run.

    Attributes:
        pipeline: the ``[[deliver.pipelines]]`` options that point ``weir deliver`` at it (``target``
            and its own options; the engine adds the source, partitions and group).
        targets: the schedule targets it provides, by name (``{"nats": NatsServerProcess}``).
        received: what the target holds once delivery drained, given the source's name.
        open_work: what a consumer (by name) holds open in the target right now (Parquet: its
            temporary files); None where the target has nothing to see (a publish in flight).
        recent: the last ``n`` items the target stored (NATS: the stream's last messages), read
            after a kill to see which of the dead consumer's unacknowledged entries it already
            holds — the ones a restart sends again and the target must drop; None: not measured.
        check: the target's own verdict once the run is over, beyond what it received (the webhook
            receiver: no request with a bad signature, every endpoint fault met a request): adds
            its figures to the measures given and returns its problems; None: nothing more.
    """

    pipeline: Mapping[str, Any]
    targets: Mapping[str, Any] = attrs.field(factory=dict)
    received: Callable[[str], Awaitable[list[Received]]]
    open_work: Callable[[str], int] | None = None
    recent: Callable[[int], Awaitable[list[Received]]] | None = None
    check: Callable[[dict[str, Any]], list[str]] | None = None


class DeliveryTargetKind(Protocol):
    """What the chaos engine needs from a target kind (module docstring)."""

    @property
    def name(self) -> str: ...

    @property
    def guarantee(self) -> str: ...

    @property
    def schedule_targets(self) -> tuple[str, ...]: ...

    def open(self, workdir: Path) -> AbstractAsyncContextManager[RunningTarget]: ...


@attrs.frozen(kw_only=True)
class ParquetTarget:
    """Parquet files in the run's directory: every entry in exactly one committed file.

    Small files and a short ``file_age`` so that, under load, a file is nearly always open: a kill
    lands mid-file.
    """

    name: str = "parquet"
    guarantee: str = EXACTLY_ONCE
    schedule_targets: tuple[str, ...] = ()
    file_age: float = 0.3
    file_rows: int = 1000
    row_group_rows: int = 200

    @asynccontextmanager
    async def open(self, workdir: Path) -> AsyncIterator[RunningTarget]:
        directory = workdir / "parquet"
        directory.mkdir(parents=True, exist_ok=True)

        async def received(source: str) -> list[Received]:
            return await trio.to_thread.run_sync(committed_rows, directory, source)

        def open_work(consumer: str) -> int:
            return sum(1 for _ in directory.rglob(f".part-{consumer}-*.tmp"))

        yield RunningTarget(
            pipeline={"target": "parquet", "directory": str(directory), "file_age": self.file_age,
                      "file_rows": self.file_rows, "row_group_rows": self.row_group_rows},
            received=received, open_work=open_work,
        )  # fmt: skip


def committed_rows(directory: Path, source: str) -> list[Received]:
    """One item per row of every committed file of ``source`` (pyarrow, Hive partitioning)."""
    import pyarrow.dataset as ds  # weir[parquet], as for the target itself

    root = directory / f"source={source}"
    if not any(root.rglob("*.parquet")):
        return []
    table = ds.dataset(root, format="parquet", partitioning="hive").to_table(columns=["partition", "stream_id"])
    return [Received(partition=str(partition), entry_id=entry_id, key=f"{partition}/{entry_id}")
            for partition, entry_id in zip(table.column("partition").to_pylist(), table.column("stream_id").to_pylist(),
                                           strict=True)]


@attrs.frozen(kw_only=True)
class NatsTarget:
    """A JetStream stream on a nats-server this run starts (schedule target ``nats``): every entry
    in the stream exactly once after JetStream's deduplication (``Nats-Msg-Id``)."""

    name: str = "nats"
    guarantee: str = EXACTLY_ONCE
    schedule_targets: tuple[str, ...] = ("nats",)
    stream: str = "WEIR"
    in_flight: int = 200
    ack_timeout: float = 2.0

    @asynccontextmanager
    async def open(self, workdir: Path) -> AsyncIterator[RunningTarget]:
        server = NatsServerProcess(store=workdir / "jetstream", log_path=workdir / "nats-server.log")
        await server.start()
        try:
            async def received(source: str) -> list[Received]:
                return await trio.to_thread.run_sync(read_stream, server.url, self.stream)

            async def recent(count: int) -> list[Received]:
                return await trio.to_thread.run_sync(read_stream, server.url, self.stream, count)

            yield RunningTarget(
                pipeline={"target": "nats", "url": server.url, "stream": self.stream, "in_flight": self.in_flight,
                          "ack_timeout": self.ack_timeout},
                targets={"nats": server}, received=received, recent=recent,
            )  # fmt: skip
        finally:
            with trio.CancelScope(shield=True):
                await server.kill()


def read_stream(url: str, stream: str, last: int | None = None) -> list[Received]:
    """Every message of ``stream`` (or its ``last`` ones) by its ``Nats-Msg-Id`` (``<source>/<partition>/<stream
    id>``), through an ephemeral pull consumer; in a worker thread: nats-py is asyncio."""
    import nats  # weir[nats], as for the target itself
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    async def read() -> list[Received]:
        client = await nats.connect(url)
        try:
            js = client.jetstream()
            state = (await js.stream_info(stream)).state
            total = state.messages if last is None else min(last, state.messages)
            if total == 0:
                return []
            config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                    opt_start_seq=state.last_seq - total + 1, inactive_threshold=30.0)
            subscription = await js.pull_subscribe("weir.>", stream=stream, config=config)
            out: list[Received] = []
            while len(out) < total:
                for msg in await subscription.fetch(min(1000, total - len(out)), timeout=10):
                    key = (msg.headers or {}).get("Nats-Msg-Id", "")
                    _, partition, entry_id = (key.split("/", 2) + ["", ""])[:3]
                    out.append(Received(partition=partition, entry_id=entry_id, key=key))
            return out
        finally:
            await client.close()

    return asyncio.run(read())


@attrs.frozen(kw_only=True)
class WebhookTarget:
    """An HTTP receiver this run serves (schedule target ``endpoint``, :mod:`weir.chaos.webhook_endpoint`):
    every entry answered 200 at least once, every repeat under the same ``Weir-Idempotency-Key``.

    Short ``timeout`` and retries, so endpoint faults of half a second give entries back without
    slowing the run; the circuit breaker (tested on its own in tests/test_deliver_webhook_e2e.py)
    never opens: each fault meets every request sent while it lasts.
    """

    name: str = "webhook"
    guarantee: str = AT_LEAST_ONCE
    schedule_targets: tuple[str, ...] = ("endpoint",)
    secret: str = "chaos-webhook-secret"
    concurrency: int = 16
    timeout: float = 0.5
    breaker_failures: int = 1_000_000

    @asynccontextmanager
    async def open(self, workdir: Path) -> AsyncIterator[RunningTarget]:
        endpoint = ChaosEndpoint(secret=self.secret.encode())
        async with running_receiver(endpoint.respond) as receiver:
            async def received(source: str) -> list[Received]:
                return list(endpoint.accepted)

            async def recent(count: int) -> list[Received]:
                return endpoint.accepted[-count:] if count else []

            yield RunningTarget(
                pipeline={"target": "webhook", "url": receiver.url, "secret": self.secret,
                          "concurrency": self.concurrency, "timeout": self.timeout, "retry_initial": 0.05,
                          "retry_max": 0.2, "breaker_failures": self.breaker_failures},
                targets={"endpoint": endpoint}, received=received, recent=recent, check=endpoint.check,
            )  # fmt: skip


PARQUET = ParquetTarget()
NATS = NatsTarget()
WEBHOOK = WebhookTarget()
