"""Delivery in a chaos run: ``weir deliver`` as a second process beside ``weir run``, its faults, and its verdict.

A scenario with a :class:`Delivery` runs, besides the ingesting ``weir run``, one ``weir deliver``
(:class:`DeliverProcess`, schedule target ``deliver``: ``kill`` / ``pause`` / ``term`` as for
``weir``, restarted when the fault clears) that reads the same partition streams through the
``redis_link`` proxy — a Redis fault hits both — into the scenario's target
(:mod:`weir.chaos.delivery_targets`), whose own process may be a schedule target too (``nats``).

A ``deliver`` kill lands mid-work: whenever the deliverer holds entries read and not acknowledged
it is frozen (SIGSTOP) and looked at — what its consumer holds, its open files, which of those
entries the target already stored — and killed while frozen if that is mid-work (for Parquet, a
file of its own open; for NATS, entries JetStream stored and Redis has not had acknowledged),
else let run on and looked at again, for at most ``HOLD_TIMEOUT_S``. What each kill held is
recorded (:class:`KillRecord`): a kill that held nothing proves nothing and fails the run.

When ingestion has drained, :meth:`RunningDelivery.finish` waits until every partition's group has
read the whole stream with nothing pending, SIGTERMs ``weir deliver`` (it must exit 0), reads back
what the target received and judges it (:func:`~weir.chaos.delivery_check.check_delivery`).
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from weir.chaos.checker import RespClient, RespError
from weir.chaos.delivery_check import DeliveryReport, Received, check_delivery
from weir.chaos.delivery_targets import DeliveryTargetKind, RunningTarget
from weir.chaos.processes import WeirProcess
from weir.sinks.keys import delivery_dead_key, partition_keys

__all__ = ["GROUP", "HOLD_TIMEOUT_S", "DeliverProcess", "Delivery", "KillRecord", "RunningDelivery", "open_delivery"]

log = logging.getLogger("weir.chaos.delivery")

GROUP = "chaos"
#: How long a ``deliver`` kill waits for the deliverer to hold entries before killing it anyway.
HOLD_TIMEOUT_S = 5.0
#: After a look that was not mid-work, the deliverer runs this long before the next (a look
#: freezes it for a few tens of ms: the NATS target reads its stream's last messages).
INSPECT_GAP_S = 0.05

#: ``weir deliver``'s settings in every delivery scenario: claims within seconds (a restarted
#: instance has a new consumer name and takes the dead one's entries over by XAUTOCLAIM), Redis
#: hangs noticed after 1 s, fast retries.
DELIVER_SETTINGS: tuple[str, ...] = (
    "redis.socket_timeout=1",
    "deliver.claim_idle=3",
    "deliver.claim_interval=0.2",
    "deliver.block_ms=100",
    "metrics.port=0",
    "supervision.backoff_initial=0.05",
    "supervision.backoff_max=0.5",
)


@attrs.frozen(kw_only=True)
class Delivery:
    """What a scenario delivers, and to which target.

    Attributes:
        target: the target kind (:data:`~weir.chaos.delivery_targets.PARQUET`, ``NATS``, …).
        settings: extra ``--set`` for ``weir deliver`` (after :data:`DELIVER_SETTINGS`).
        expect: log events ``weir deliver`` must write during the run (as :attr:`Scenario.expect`).
        drain_timeout: seconds after ingestion drained for every group to have acknowledged everything.
    """

    target: DeliveryTargetKind
    settings: tuple[str, ...] = ()
    expect: tuple[str, ...] = ()
    drain_timeout: float = 60.0

    @property
    def schedule_targets(self) -> tuple[str, ...]:
        return ("deliver", *self.target.schedule_targets)


@attrs.frozen(kw_only=True)
class KillRecord:
    """What the deliverer held when it was killed: its pending entries (all partitions), the work
    it had open in the target, and how many of those entries the target already stored (sent, not
    yet acknowledged in Redis: the restart sends them again); None: nothing the target can show."""

    pid: int
    held: int
    open_work: int | None
    stored: int | None = None

    @property
    def mid_work(self) -> bool:
        """Killed holding entries, with work open in the target and entries the target stored
        (where the target can show those)."""
        return (self.held > 0 and (self.open_work is None or self.open_work > 0)
                and (self.stored is None or self.stored > 0))


def consumer_of(pid: int) -> str:
    """``weir deliver``'s default consumer name for the process ``pid`` on this host."""
    return f"{socket.gethostname()}-{pid}"


@attrs.define(eq=False)
class DeliverProcess:
    """``weir deliver`` as a schedule target: a :class:`WeirProcess` whose kill lands mid-work."""

    process: WeirProcess
    held: Callable[[str], Awaitable[int]]  # entries pending to a consumer, over every partition
    held_ids: Callable[[str], Awaitable[list[tuple[str, str]]]]  # the same as (partition, entry id)
    open_work: Callable[[str], int] | None = None
    recent: Callable[[int], Awaitable[list[Received]]] | None = None
    kills: list[KillRecord] = attrs.Factory(list)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def start(self) -> None:
        await self.process.start()

    async def kill(self) -> None:
        """kill -9 mid-work: freeze it (SIGSTOP) whenever it holds entries, look at what it holds
        (:class:`KillRecord`), and kill it if that is mid-work, else let it run on a moment and
        look again; after ``HOLD_TIMEOUT_S`` it is killed whatever it holds (the run then fails)."""
        pid = self.pid
        if not pid:
            return
        consumer = consumer_of(pid)
        record = None
        with trio.move_on_after(HOLD_TIMEOUT_S):
            while True:
                if await self.held(consumer):
                    self.process.pause()
                    record = await self._inspect(pid, consumer)
                    if record.mid_work:
                        break
                    self.process.resume()
                    await trio.sleep(INSPECT_GAP_S)  # let it work on, or a look every few ms would starve it
                await trio.sleep(0.005)
        with trio.CancelScope(shield=True):
            await self.process.kill()
            if record is None or not record.mid_work:  # timed out: what the kill left
                record = await self._inspect(pid, consumer)
        self.kills.append(record)
        log.info("weir deliver pid %d killed holding %d entries (open work %s, stored %s)", pid, record.held,
                 record.open_work, record.stored)

    async def _inspect(self, pid: int, consumer: str) -> KillRecord:
        """What the (frozen or dead) consumer holds: its pending entries, its open work, and which of
        those entries the target already stored (among the last it received: it was the one sending)."""
        held = await self.held_ids(consumer)
        stored = None
        if self.recent is not None:
            recent = {(r.partition, r.entry_id) for r in await self.recent(len(held))} if held else set()
            stored = sum(1 for entry in held if entry in recent)
        return KillRecord(pid=pid, held=len(held), stored=stored,
                          open_work=None if self.open_work is None else self.open_work(consumer))

    async def terminate(self, timeout: float = 10.0) -> int | None:
        return await self.process.terminate(timeout)

    def pause(self) -> None:
        self.process.pause()

    def resume(self) -> None:
        self.process.resume()


@attrs.define(eq=False)
class RunningDelivery:
    """The deliverer and its target for one run (:func:`open_delivery`)."""

    spec: Delivery
    target: RunningTarget
    deliverer: DeliverProcess
    redis_url: str  # direct, not through the proxy
    source: str
    partitions: tuple[str, ...]

    @property
    def targets(self) -> dict[str, Any]:
        """The schedule targets: ``deliver`` and the target's own."""
        return {"deliver": self.deliverer, **self.target.targets}

    def log_text(self) -> str:
        return self.deliverer.process.log_text()

    async def start(self) -> None:
        await self.deliverer.start()

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until ``weir deliver`` has its group on every partition stream (it reached Redis and
        its actors run), so the schedule's faults find it working; False after ``timeout`` s."""
        with trio.move_on_after(timeout):
            while not await self._groups_exist():
                await trio.sleep(0.05)
            return True
        return False

    async def _groups_exist(self) -> bool:
        async with RespClient.from_url(self.redis_url) as client:
            for partition in self.partitions:
                try:
                    groups = await client.command("XINFO", "GROUPS", partition_keys(self.source, partition).events)
                except RespError:  # no stream yet
                    return False
                if not any(_pairs(g).get(b"name") == GROUP.encode() for g in groups):
                    return False
        return True

    async def group_state(self) -> list[tuple[int, bool]]:
        """Per partition: entries pending in the group, and whether the group has read the whole stream."""
        async with RespClient.from_url(self.redis_url) as client:
            out = []
            for partition in self.partitions:
                key = partition_keys(self.source, partition).events
                try:
                    groups = await client.command("XINFO", "GROUPS", key)
                except RespError:  # no stream yet
                    out.append((0, False))
                    continue
                info = next((_pairs(g) for g in groups if _pairs(g).get(b"name") == GROUP.encode()), None)
                last = await client.command("XREVRANGE", key, "+", "-", "COUNT", 1)
                if info is None:
                    out.append((0, not last))
                else:
                    out.append((int(info[b"pending"]), not last or info[b"last-delivered-id"] == last[0][0]))
            return out

    async def drained(self) -> bool:
        return all(pending == 0 and read_all for pending, read_all in await self.group_state())

    async def finish(self, measures: dict[str, Any]) -> tuple[DeliveryReport | None, list[str]]:
        """Wait for the drain, stop the deliverer (exit 0), read the target back and judge it."""
        problems: list[str] = []
        began = trio.current_time()
        with trio.move_on_after(self.spec.drain_timeout) as waiting:
            while not await self.drained():
                if not self.deliverer.process.running:
                    problems.append(f"weir deliver exited with {self.deliverer.process.returncode} during the run")
                    break
                await trio.sleep(0.05)
        if waiting.cancelled_caught:
            problems.append(f"delivery not drained {self.spec.drain_timeout:g} s after ingestion drained: "
                            f"(pending, read all) per partition {await self.group_state()}")
        else:
            measures["delivery_drain_s"] = round(trio.current_time() - began, 2)
        code = await self.deliverer.terminate(timeout=15)
        if code != 0:
            problems.append(f"weir deliver did not exit 0 on the final SIGTERM (exit code {code})")
        streams, pending, dead = await self._redis_state()
        received = await self.target.received(self.source)
        report = check_delivery(self.spec.target.name, self.spec.target.guarantee, streams, received,
                                pending=pending, dead=dead)
        kills = self.deliverer.kills
        measures["deliver_kills_held"] = [k.held for k in kills]
        if self.target.open_work is not None:
            measures["deliver_kills_open_work"] = [k.open_work for k in kills]
        if self.target.recent is not None:
            measures["deliver_kills_stored_unacknowledged"] = [k.stored for k in kills]
        if self.target.check is not None:
            problems += self.target.check(measures)
        problems += [f"weir deliver (pid {k.pid}) was killed holding nothing (held {k.held}, open work "
                     f"{k.open_work}): the kill did not land mid-work" for k in kills if not k.mid_work]
        if not report.ok:
            problems.append(report.summary())
        return report, problems

    async def _redis_state(self) -> tuple[dict[str, list[str]], dict[str, int], dict[str, int]]:
        streams, pending, dead = {}, {}, {}
        async with RespClient.from_url(self.redis_url) as client:
            for partition in self.partitions:
                key = partition_keys(self.source, partition).events
                streams[partition] = [entry_id.decode() for entry_id, _ in await client.xrange_all(key)]
                summary = await client.command("XPENDING", key, GROUP)
                pending[partition] = int(summary[0])
                dead[partition] = int(await client.command("XLEN", delivery_dead_key(self.source, partition, GROUP)))
        return streams, pending, dead


def _pairs(flat: Sequence[Any]) -> dict[bytes, Any]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def deliver_command(redis_url: str, pipeline: dict[str, Any], settings: Sequence[str]) -> list[str]:
    """``python -m weir deliver`` against ``redis_url`` with one pipeline and ``--set`` each setting."""
    args = [sys.executable, "-m", "weir", "deliver", "--redis-url", redis_url,
            "--set", f"deliver.pipelines={json.dumps([pipeline])}"]
    for setting in settings:
        args += ["--set", setting]
    return [*args, "--log-format", "json", "--log-level", "INFO"]


@asynccontextmanager
async def open_delivery(spec: Delivery, workdir: Path, *, proxied_redis_url: str, redis_url: str, source: str,
                        partitions: Sequence[str]) -> AsyncIterator[RunningDelivery]:
    """Open ``spec``'s target in ``workdir`` and prepare ``weir deliver`` for it (started by
    :meth:`RunningDelivery.start`; killed on exit if it still runs)."""
    async with spec.target.open(workdir) as target:
        pipeline = {**target.pipeline, "source": source, "partitions": list(partitions), "group": GROUP}
        process = WeirProcess(args=deliver_command(proxied_redis_url, pipeline, (*DELIVER_SETTINGS, *spec.settings)),
                              log_path=workdir / "deliver.log")

        async def held(consumer: str) -> int:
            async with RespClient.from_url(redis_url) as client:
                total = 0
                for partition in partitions:
                    try:
                        consumers = await client.command("XINFO", "CONSUMERS", partition_keys(source, partition).events, GROUP)
                    except RespError:  # no stream or no group yet: nothing held
                        continue
                    total += sum(int(c[b"pending"]) for c in map(_pairs, consumers) if c[b"name"] == consumer.encode())
                return total

        async def held_ids(consumer: str) -> list[tuple[str, str]]:
            async with RespClient.from_url(redis_url) as client:
                out: list[tuple[str, str]] = []
                for partition in partitions:
                    key = partition_keys(source, partition).events
                    try:
                        reply = await client.command("XPENDING", key, GROUP, "-", "+", 1_000_000, consumer)
                    except RespError:
                        continue
                    out += [(partition, entry[0].decode()) for entry in reply]
                return out

        running = RunningDelivery(spec=spec, target=target, redis_url=redis_url, source=source,
                                  partitions=tuple(partitions),
                                  deliverer=DeliverProcess(process=process, held=held, held_ids=held_ids,
                                                           open_work=target.open_work, recent=target.recent))
        try:
            yield running
        finally:
            with trio.CancelScope(shield=True):
                process.resume()
                await process.kill()
