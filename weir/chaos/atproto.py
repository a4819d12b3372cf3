"""The AT Protocol sources of the chaos suite: the simulated relay's firehose, or its Jetstream, behind the ``relay_link`` proxy.

Targets it adds to a schedule: ``relay_link`` (the proxy between weir and the simulator: every
link fault) and ``relay`` (the simulator's own behaviour, :class:`RelayControl`: ``drop`` closes
every connection, ``error_frame`` sends every firehose client an error frame — ``params.name``,
default ``ConsumerTooSlow`` — and closes it, ``outdated_cursor`` sends every firehose client
``#info OutdatedCursor``; all three instant). The simulator runs as a process
(``python -m weir.sim atproto``, commands by :meth:`~weir.sim.process.AtprotoSimProcess.command`).

What it offered is regenerated from the seed (:func:`~weir.sim.atproto_data.expected_records`)
and judged by identity (:func:`~weir.chaos.atproto_check.compare_atproto`): firehose entries at
``<seq>-<op index>``; Jetstream entries at their ``time_us``, or above the highest position for
those the relay sent late, which the simulator records as it exits (the run's ``compare`` needs
that record, so it is read by ``finish``). The Jetstream simulator reorders and repeats messages
at every replay-to-live cutover (as Bluesky's does), so every Jetstream scenario crosses them.
The firehose's final cursor is its last seq; Jetstream's is known only once every event is
stored, so a Jetstream run gives its own ``drained`` test. See :mod:`weir.chaos.source` for the
contract.
"""

from __future__ import annotations

import functools
import json
import os
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from weir.chaos.atproto_check import AtprotoOffered, compare_atproto
from weir.chaos.checker import PartitionReport, RespClient
from weir.chaos.proxy import open_proxy
from weir.chaos.schedule import TimedFault
from weir.chaos.source import Load, Offer, RunningSource
from weir.chaos.waiting import wait_until
from weir.sim.atproto_data import AtprotoSimConfig, expected_records, generate_history
from weir.sim.process import AtprotoSimProcess, open_atproto_sim_process
from weir.sinks.keys import partition_keys

__all__ = ["FIREHOSE", "JETSTREAM", "AtprotoSource", "RelayControl", "offered_entries"]

#: weir's AT Protocol settings in every scenario (docs/resilience.md says why).
ATPROTO_SETTINGS: tuple[str, ...] = (
    "farcaster.enabled=false",
    "atproto.enabled=true",
    "atproto.start=oldest",
    "atproto.idle_timeout=1",  # a silent-but-open relay is noticed after 1 s (default 60 s)
    "atproto.connect_timeout=2",
)
OUTDATED_CURSOR_MESSAGE = "Requested cursor exceeded limit. Possibly missing events"


@functools.lru_cache(maxsize=2)
def offered_entries(config: AtprotoSimConfig, mode: str) -> tuple[AtprotoOffered, ...]:
    """Every entry a simulator with ``config`` offers in ``mode``, in stream order (cached: the
    engine asks in a worker thread, the run's comparison asks again)."""
    expected, dead = expected_records(generate_history(config), mode=mode)
    if dead:
        raise ValueError("the chaos simulator offers no malformed data (corrupt_every must be None)")
    return tuple(AtprotoOffered(position=e.position, sub=e.sub, kind=e.kind, data=e.data,
                                fields={k: str(v) for k, v in e.fields.items()}) for e in expected)


@attrs.frozen(kw_only=True)
class AtprotoSource:
    """``python -m weir.sim atproto`` read as ``mode`` (``firehose`` or ``jetstream``), one partition.

    Attributes:
        mode: weir's ``atproto.mode``; the partition is named after it.
        ops_per_commit: the simulator's op counts per commit (a frame carries that many records).
        reorder_at_cutover, duplicate_at_cutover: Jetstream, the simulator's reordering and
            repeats at every replay-to-live cutover.
        dids: repositories that commit.
    """

    mode: str = "firehose"
    ops_per_commit: tuple[int, ...] = (1, 1, 1, 2, 3)
    reorder_at_cutover: int = 0
    duplicate_at_cutover: int = 0
    dids: int = 40
    name: str = "atproto"
    network_targets: tuple[str, ...] = ("relay_link", "relay")

    @property
    def partitions(self) -> tuple[str, ...]:
        return (self.mode,)

    @property
    def settings(self) -> tuple[str, ...]:
        return (*ATPROTO_SETTINGS, f"atproto.mode={self.mode}", f"atproto.partition={self.mode}")

    def sim_config(self, load: Load) -> AtprotoSimConfig:
        return AtprotoSimConfig(
            seed=load.seed & 0x7FFFFFFF, total=load.history + int(load.rate * load.seconds), rate=load.rate,
            history=load.history, dids=self.dids, ops_per_commit=self.ops_per_commit,
            reorder_at_cutover=self.reorder_at_cutover, duplicate_at_cutover=self.duplicate_at_cutover,
            time_step_us=max(1000, round(1e6 / load.rate)) if load.rate else 1000,  # time_us follows the release
        )  # fmt: skip

    def offered(self, load: Load) -> dict[str, Offer]:
        entries = offered_entries(self.sim_config(load), self.mode)
        return {self.mode: Offer.of([(e.position, e.sub, e.data) for e in entries])}

    @asynccontextmanager
    async def open(self, load: Load, workdir: Path, seed: int) -> AsyncIterator[RunningSource]:
        config = self.sim_config(load)
        offered = await trio.to_thread.run_sync(offered_entries, config, self.mode)
        record: dict[str, Any] = {}
        async with open_atproto_sim_process(config, record=True) as sim, \
                open_proxy("127.0.0.1", sim.port, seed=seed) as relay_link:  # fmt: skip
            url = relay_link.url("ws")

            async def finish(_: Mapping[str, Offer]) -> list[str]:
                problems = await stop_and_read_record(sim, record)
                if not problems and record["released"] != config.total:
                    problems.append(f"the simulator released {record['released']} of {record['total']} events")
                return problems

            def compare(partition: str, entries: Any, **judged: Any) -> PartitionReport:
                judged.pop("final_token", None)
                return compare_atproto(self.mode, partition, offered, entries, late=set(record.get("late", ())), **judged)

            async def drained(redis_url: str) -> bool:
                return await jetstream_drained(redis_url, self.mode, offered)

            yield RunningSource(
                weir_args=("--set", f"atproto.url={url}", "--set", f"atproto.jetstream_url={url}"),
                targets={"relay_link": relay_link, "relay": RelayControl(sim)},
                finish=finish,
                drained=drained if self.mode == "jetstream" else None,
                compare=compare,
            )


async def stop_and_read_record(sim: AtprotoSimProcess, into: dict[str, Any]) -> list[str]:
    """Stop the simulator and read what it says it offered into ``into``; problems if it wrote nothing."""
    os.kill(sim.pid, signal.SIGTERM)
    if not await wait_until(lambda: os.path.exists(sim.record), timeout=15):
        return ["the simulator wrote no record of what it offered (did it exit?)"]
    into.update(json.loads(await trio.Path(sim.record).read_text()))
    return []


async def jetstream_drained(redis_url: str, partition: str, offered: tuple[AtprotoOffered, ...]) -> bool:
    """Whether a Jetstream partition holds as many entries as were offered and its cursor is at or
    past the last ``time_us`` (late events are stored above it, so the exact cursor is not known)."""
    keys = partition_keys("atproto", partition)
    try:
        async with RespClient.from_url(redis_url) as client:
            length, cursor = await client.pipeline([("XLEN", keys.events), ("HGET", keys.cursor, "position")])
    except (OSError, trio.BrokenResourceError):
        return False
    return cursor is not None and int(cursor) >= offered[-1].position and int(length) >= len(offered)


@attrs.define(eq=False)
class RelayControl:
    """The ``relay`` target: the simulator's own faults, applied through its control file (instant kinds)."""

    sim: AtprotoSimProcess

    async def apply_fault(self, fault: TimedFault):  # type: ignore[no-untyped-def]
        if fault.kind == "drop":
            self.sim.command(drop=True)
        elif fault.kind == "error_frame":
            name = fault.param("name", "ConsumerTooSlow")
            self.sim.command(error=name, message=fault.param("message", f"chaos: {name}"))
        elif fault.kind == "outdated_cursor":
            self.sim.command(info="OutdatedCursor", message=OUTDATED_CURSOR_MESSAGE)
        else:
            raise AssertionError(fault.kind)

        async def nothing() -> None:
            pass

        return nothing, None


#: The firehose and Jetstream sources of the built-in scenarios. Jetstream reorders 20 messages
#: and repeats 5 at every cutover, as Bluesky's does around its replay-to-live switch.
FIREHOSE = AtprotoSource(mode="firehose")
JETSTREAM = AtprotoSource(mode="jetstream", reorder_at_cutover=20, duplicate_at_cutover=5)
