"""The Ethereum source of the chaos suite: one simulated chain behind the ``node_link`` proxy.

Targets it adds to a schedule: ``node_link`` (the proxy between weir and the node) and ``node``
(the node's own switches, :class:`NodeControl`: ``reorg`` now, ``drop`` every connection, ``mute``
the head subscriptions, ``lag`` behind its own chain for the fault's duration, ``refuse`` new
connections for its duration).

A chain's stream cannot be known in advance: what weir retracts depends on what it saw before a
reorg. So the run is judged by replay (:func:`~weir.chaos.checker.compare_chain`) against the final
canonical chain the node records as it exits, and the drain is done when the cursor's token is the
node's final head (:meth:`EthereumSource.open`). See :mod:`weir.chaos.source` for the contract.
"""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from weir.actors.jsonrpc_ws import open_rpc
from weir.chaos.checker import PartitionReport, RespClient, compare_chain
from weir.chaos.proxy import open_proxy
from weir.chaos.schedule import TimedFault
from weir.chaos.source import Load, Offer, RunningSource
from weir.chaos.waiting import wait_until
from weir.codecs.jsonrpc import from_quantity
from weir.sim.ethereum import EthereumSimConfig
from weir.sim.process import EthereumSimProcess, open_ethereum_sim
from weir.sinks.keys import partition_keys

__all__ = ["ETHEREUM", "EthereumSource", "NodeControl"]


@attrs.define(eq=False)
class NodeControl:
    """The ``node`` target: commands to the simulated node process (:meth:`EthereumSimProcess.command`).

    ``forced_reorgs`` counts the reorgs it caused (each one makes the chain a block longer).
    """

    sim: EthereumSimProcess
    forced_reorgs: int = 0

    async def apply_fault(self, fault: TimedFault):  # type: ignore[no-untyped-def]
        """Apply ``fault`` (see :func:`weir.chaos.schedule._apply`): the function that clears it, no outcome."""

        async def nothing() -> None:
            pass

        if fault.kind == "reorg":
            self.forced_reorgs += 1
            self.sim.command(reorg=int(fault.param("depth", 1)))
            return nothing, None
        if fault.kind == "drop":
            os.kill(self.sim.pid, signal.SIGUSR1)
            return nothing, None
        if fault.kind == "mute":
            self.sim.command(mute=True)
            return nothing, None
        if fault.kind == "lag":
            self.sim.command(lag=int(fault.param("blocks", 5)))

            async def catch_up() -> None:
                self.sim.command(catch_up=True)

            return catch_up, None
        if fault.kind == "refuse":
            self.sim.command(refuse=True)

            async def accept() -> None:
                self.sim.command(refuse=False)

            return accept, None
        raise AssertionError(fault.kind)


@attrs.frozen(kw_only=True)
class EthereumSource:
    """``python -m weir.sim ethereum``: one chain (partition = its chain id), ``logs_per_block`` logs a block.

    The load's ``rate`` is logs/s (a block every ``logs_per_block / rate`` s), its ``history`` logs
    that exist when the node starts. The other fields are the node's behaviour
    (:class:`~weir.sim.ethereum.EthereumSimConfig`) and weir's chain settings for the run.
    """

    chain_id: int = 1337
    logs_per_block: int = 8
    reorg_every: int = 0
    max_reorg_depth: int = 3
    reannounce: int = 0
    lagging_backend: int = 0
    max_range: int = 0
    confirmations: int = 0
    weir_max_reorg_depth: int = 64
    backfill_blocks: int = 1000
    #: judge the stream against the branch that ends at weir's cursor, not the final chain: for a
    #: run in which weir stops by itself (a reorg deeper than it can retract is an operator's call)
    judge_at_cursor: bool = False
    name: str = "ethereum"
    network_targets: tuple[str, ...] = ("node_link", "node")

    @property
    def partitions(self) -> tuple[str, ...]:
        return (str(self.chain_id),)

    @property
    def settings(self) -> tuple[str, ...]:
        return ("farcaster.enabled=false", "ethereum.enabled=true")

    def sim_config(self, load: Load) -> EthereumSimConfig:
        block_time = self.logs_per_block / load.rate
        return EthereumSimConfig(
            chain_id=self.chain_id, seed=load.seed & 0x7FFFFFFF, block_time=block_time,
            logs_per_block=self.logs_per_block, history=load.history // self.logs_per_block,
            blocks=math.ceil(load.seconds / block_time), reorg_every=self.reorg_every,
            max_reorg_depth=self.max_reorg_depth, reannounce=self.reannounce,
            lagging_backend=self.lagging_backend, max_range=self.max_range, live_after_connect=True,
        )  # fmt: skip

    def chain_settings(self, url: str, block_time: float) -> dict[str, Any]:
        """weir's ``[[ethereum.chains]]`` entry: tuned so a silent node is noticed in 1 s and a
        failed call in 2 s, a connection that does not open in 1 s (docs/resilience.md)."""
        return {
            "chain_id": self.chain_id, "url": url, "start": "0", "block_time": block_time,
            "idle_blocks": 1.0 / block_time, "connect_timeout": 1, "request_timeout": 2,
            "confirmations": self.confirmations, "max_reorg_depth": self.weir_max_reorg_depth,
            "backfill_blocks": self.backfill_blocks,
        }  # fmt: skip

    def offered(self, load: Load) -> dict[str, Offer]:
        # Not known in advance: the run is judged against the node's record (compare, drained).
        return {partition: Offer(events=(), final_cursor=-1) for partition in self.partitions}

    @asynccontextmanager
    async def open(self, load: Load, workdir: Path, seed: int) -> AsyncIterator[RunningSource]:
        config = self.sim_config(load)
        record = workdir / "chain.json"
        final: dict[str, Any] = {}  # the node's record, once it has exited
        async with open_ethereum_sim(config, record=str(record)) as sim, \
                open_proxy("127.0.0.1", sim.port, seed=seed) as node_link:  # fmt: skip
            control = NodeControl(sim)
            keys = partition_keys(self.name, str(self.chain_id))

            async def drained(redis_url: str) -> bool:
                # the node has produced its last block (each forced reorg adds one) and weir's
                # cursor is that block
                expected_head = config.history + (config.blocks or 0) + control.forced_reorgs
                settled = expected_head - self.confirmations  # the newest block weir emits
                async with open_rpc(sim.url, connect_timeout=2, request_timeout=2) as rpc:
                    head = await rpc.call("eth_blockNumber")
                    block = await rpc.call("eth_getBlockByNumber", [hex(settled), False])
                if from_quantity(head) != expected_head or block is None:
                    return False
                async with RespClient.from_url(redis_url) as client:
                    token = await client.command("HGET", keys.cursor, "token")
                return token is not None and token.decode() == f"{settled}:{block['hash']}"

            async def finish(offered: Mapping[str, Offer]) -> list[str]:
                os.kill(sim.pid, signal.SIGTERM)
                if not await wait_until(record.exists, timeout=15):
                    return ["the Ethereum node wrote no record of its final chain (did it exit?)"]
                final.update(json.loads(await trio.Path(record).read_text()))
                return []

            def compare(partition: str, entries: Any, **kwargs: Any) -> PartitionReport:
                if self.judge_at_cursor:
                    return self._compare_at_cursor(partition, entries, final, **kwargs)
                # what weir emits: the final chain up to `confirmations` below its head
                blocks = final.get("blocks", [])
                settled = final["head"] - self.confirmations if blocks else -1
                emitted = set(blocks[: settled + 1])
                canonical = [f"{self.chain_id}:{h}:{i}".encode() for h, i in final.get("logs", []) if h in emitted]
                expected = f"{settled}:{blocks[settled]}" if blocks else None
                return compare_chain(partition, canonical, set(blocks), entries, expected_token=expected, **kwargs)

            chain = self.chain_settings(node_link.url("ws"), config.block_time)
            yield RunningSource(
                weir_args=("--set", f"ethereum.chains={json.dumps([chain])}"),
                targets={"node_link": node_link, "node": control},
                finish=finish,
                drained=drained,
                compare=compare,
            )


    def _compare_at_cursor(self, partition: str, entries: Any, final: Mapping[str, Any], *,
                           final_token: str | None, **kwargs: Any) -> PartitionReport:
        """The stream replayed against the branch that ends at the cursor's block (every block the
        node ever made is in its record, with its parent): exactly that branch's logs, each once,
        and no retraction of a block on it."""
        parents: Mapping[str, str] = final.get("parents", {})
        branch: list[str] = []
        at = final_token.partition(":")[2] if final_token else ""
        while at in parents:
            branch.append(at)
            at = parents[at]
        genesis = branch[-1] if branch else None
        canonical = [f"{self.chain_id}:{h}:{i}".encode() for h in reversed(branch) if h != genesis
                     for i in range(self.logs_per_block)]
        return compare_chain(partition, canonical, set(branch), entries, final_token=final_token,
                             expected_token=final_token if branch else "a block the node made", **kwargs)


#: The Ethereum source of the built-in scenarios.
ETHEREUM = EthereumSource()
