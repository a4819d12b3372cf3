"""The Farcaster source of the chaos suite: two simulated Snapchain shards behind the ``hub_link`` proxy.

Targets it adds to a schedule: ``hub_link`` (the proxy between weir and the simulator) and ``hub``
(the simulator's own switches: dropped streams, an error status; :class:`SimProcessHub`). What it
offered is regenerated from the simulator's seed, and checked against the record the simulator
writes as it exits (:func:`record_mismatches`). See :mod:`weir.chaos.source` for the contract.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from weir.chaos.processes import SimProcessHub
from weir.chaos.proxy import open_proxy
from weir.chaos.source import Load, Offer, RunningSource
from weir.chaos.waiting import wait_until
from weir.sim.farcaster_data import SnapchainSimConfig, generate_offered, offered_digest
from weir.sim.process import SimProcess, open_snapchain_sim

__all__ = ["FARCASTER", "FarcasterSource", "offered_from_config", "record_mismatches"]

#: weir's Farcaster settings in every scenario (docs/resilience.md says why).
FARCASTER_SETTINGS: tuple[str, ...] = (
    "farcaster.start=oldest",
    "farcaster.idle_timeout=1",  # a silent-but-open hub is noticed after 1 s (default 30 s)
    "farcaster.connect_timeout=2",
)


def offered_from_config(config: SnapchainSimConfig, shards: Iterable[int], count: int | None = None) -> dict[str, list[tuple[int, bytes]]]:
    """What a simulator with ``config`` offers per shard: ``count`` events each (default ``total``)."""
    n = count if count is not None else config.total
    if n is None:
        raise ValueError("the simulator produces forever: give count (or set total)")
    return {str(shard): generate_offered(config, shard, n) for shard in shards}


@attrs.frozen(kw_only=True)
class FarcasterSource:
    """``python -m weir.sim snapchain`` with ``shards`` user shards, one partition each."""

    shards: int = 2
    name: str = "farcaster"
    network_targets: tuple[str, ...] = ("hub_link", "hub")

    @property
    def partitions(self) -> tuple[str, ...]:
        return tuple(str(s) for s in range(1, self.shards + 1))

    @property
    def settings(self) -> tuple[str, ...]:
        return (*FARCASTER_SETTINGS, f"farcaster.shards={','.join(self.partitions)}")

    def sim_config(self, load: Load) -> SnapchainSimConfig:
        return SnapchainSimConfig(
            shards=self.shards, seed=load.seed & 0x7FFFFFFF, rate=load.rate, history=load.history,
            total=load.history + int(load.rate * load.seconds), live_after_subscribe=True,
        )  # fmt: skip

    def offered(self, load: Load) -> dict[str, Offer]:
        events = offered_from_config(self.sim_config(load), range(1, self.shards + 1))
        return {partition: Offer.of(offered) for partition, offered in events.items()}

    @asynccontextmanager
    async def open(self, load: Load, workdir: Path, seed: int) -> AsyncIterator[RunningSource]:
        async with open_snapchain_sim(self.sim_config(load), record_offered=True) as sim, \
                open_proxy("127.0.0.1", sim.port, seed=seed) as hub_link:  # fmt: skip

            async def finish(offered: Mapping[str, Offer]) -> list[str]:
                return await check_simulator_record(sim, {p: o.events for p, o in offered.items()})

            yield RunningSource(
                weir_args=("--farcaster-url", hub_link.http_url),
                targets={"hub_link": hub_link, "hub": SimProcessHub(sim.pid, sim.control)},
                finish=finish,
            )


#: The Farcaster source of the built-in scenarios.
FARCASTER = FarcasterSource()


async def check_simulator_record(sim: SimProcess, offered: Mapping[str, Sequence[tuple[int, bytes]]]) -> list[str]:
    """Stop the simulator and compare what it says it offered with what the checker uses.

    The checker regenerates the offered events (ids and bytes) from the simulator's seed; the
    simulator's own record (written as it exits) proves that regeneration is what went on the wire.
    """
    os.kill(sim.pid, signal.SIGTERM)
    if not await wait_until(lambda: os.path.exists(sim.record), timeout=15):
        return ["the simulator wrote no record of what it offered (did it exit?)"]
    record = json.loads(await trio.Path(sim.record).read_text())
    return record_mismatches(record, offered)


def record_mismatches(record: Mapping[str, Any], offered: Mapping[str, Sequence[tuple[int, bytes]]]) -> list[str]:
    """Differences between the simulator's record (``{partition: {ids, sha256}}``) and ``offered``."""
    problems = []
    for partition, events in offered.items():
        entry = record.get(partition)
        if entry is None:
            problems.append(f"partition {partition}: the simulator recorded nothing offered")
            continue
        ids = [event_id for event_id, _ in events]
        if entry["ids"] != ids:
            first = next((i for i, (a, b) in enumerate(zip(entry["ids"], ids)) if a != b), min(len(ids), len(entry["ids"])))
            problems.append(f"partition {partition}: the simulator offered {len(entry['ids'])} events, the checker "
                            f"expected {len(ids)}; they differ from position {first}")
            continue
        if offered_digest(events) != entry["sha256"]:
            problems.append(f"partition {partition}: the simulator offered other bytes than the checker regenerated")
    return problems
