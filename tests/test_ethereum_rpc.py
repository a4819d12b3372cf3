"""``open_rpc`` / ``RpcConnection`` against the simulated node over a real WebSocket: many calls and a
batch in flight at once on one connection, answered out of order, with head notifications between."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from weir.actors.jsonrpc_ws import open_rpc
from weir.codecs.jsonrpc import METHOD_NOT_FOUND, JsonRpcClientProtocol, JsonRpcError, Notification, from_quantity, to_quantity
from weir.sim.ethereum import EthereumSimConfig

from test_ethereum_e2e import simulated

pytestmark = pytest.mark.integration

HISTORY = 30


@attrs.define(eq=False)
class WireOrder(JsonRpcClientProtocol):
    """The real client protocol, also noting the id of each single (non-batch) reply as it arrives."""

    arrived: list[int] = attrs.Factory(list)

    def receive(self, message: str | bytes) -> list[Any]:
        events = super().receive(message)
        if not message.lstrip().startswith(b"[" if isinstance(message, bytes) else "["):
            self.arrived += [event.id for event in events if not isinstance(event, Notification)]
        return events


async def test_concurrent_calls_and_a_batch_on_one_connection_each_get_their_own_answer():
    # reply_delay: the node sends each reply after a random delay, so replies come back in another
    # order than the calls went out; blocks keep coming, so head notifications arrive in between.
    sim_config = EthereumSimConfig(chain_id=41, seed=19, block_time=0.01, logs_per_block=3, history=HISTORY,
                                   reply_delay=0.05)
    async with simulated(sim_config) as (sim,):
        chain = sim.chain
        async with open_rpc(sim.url, connect_timeout=5, request_timeout=2) as rpc:
            rpc.protocol = wire = WireOrder()  # before any call
            await rpc.call("eth_subscribe", ["newHeads"])
            sent: list[tuple[str, int]] = []  # in the order the calls went out
            answered: list[tuple[str, int]] = []  # in the order the calls returned
            blocks: dict[int, Any] = {}
            logs: dict[int, Any] = {}
            batched: list[Any] = []
            errors: list[JsonRpcError] = []

            async def block(n: int) -> None:
                sent.append(("block", n))
                blocks[n] = await rpc.call("eth_getBlockByNumber", [to_quantity(n), False])
                answered.append(("block", n))

            async def logs_of(n: int) -> None:
                sent.append(("logs", n))
                logs[n] = await rpc.call("eth_getLogs", [{"blockHash": chain.canonical[n]}])
                answered.append(("logs", n))

            async def batch() -> None:
                sent.append(("batch", 0))
                batched.extend(await rpc.batch([("eth_getBlockByHash", [chain.canonical[n], False])
                                                for n in reversed(range(HISTORY + 1))] + [("eth_chainId", [])]))
                answered.append(("batch", 0))

            async def failing() -> None:
                sent.append(("error", 0))
                try:
                    await rpc.call("eth_noSuchMethod", [])
                except JsonRpcError as exc:
                    errors.append(exc)
                answered.append(("error", 0))

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    for n in range(HISTORY + 1):
                        nursery.start_soon(block, n)
                        nursery.start_soon(logs_of, n)
                    nursery.start_soon(batch)
                    nursery.start_soon(failing)
                    nursery.start_soon(block, HISTORY + 1000)  # no such block: null

            # The test tests what it claims: the calls were in flight together, and the node's
            # replies came back in another order than the calls went out (ids rise with each call).
            assert sorted(sent) == sorted(answered) and len(sent) == 2 * (HISTORY + 1) + 3
            assert len(wire.arrived) == 1 + 2 * (HISTORY + 1) + 2 and wire.arrived != sorted(wire.arrived)
            # Each call got its own answer.
            for n in range(HISTORY + 1):
                assert from_quantity(blocks[n]["number"]) == n and blocks[n]["hash"] == chain.canonical[n]
                assert logs[n] == chain.logs[chain.canonical[n]] and len(logs[n]) == (3 if n else 0)
            assert blocks[HISTORY + 1000] is None
            assert [header["hash"] for header in batched[:-1]] == chain.canonical[HISTORY::-1]
            assert from_quantity(batched[-1]) == 41
            (error,) = errors
            assert error.code == METHOD_NOT_FOUND and "eth_noSuchMethod" in str(error)
            # Nothing left waiting, and the pushes went to the heads channel, not to a caller.
            assert rpc.protocol.pending == 0 and not rpc._waiting
            heads = []
            while len(heads) < 3:
                with trio.fail_after(5):
                    heads.append(await rpc.heads.receive())
            for header in heads:
                assert chain.headers[header["hash"]] == header and from_quantity(header["number"]) > HISTORY
            # The connection still works after all that.
            assert from_quantity(await rpc.call("eth_chainId")) == 41


async def test_the_node_can_hold_its_chain_until_a_client_connects():
    """live_after_connect (the chaos suite's load): only the history exists until someone connects;
    without it the chain grows from the node's start."""
    held = EthereumSimConfig(chain_id=42, seed=3, block_time=0, history=5, blocks=20, live_after_connect=True)
    async with simulated(held, attrs.evolve(held, live_after_connect=False)) as (waiting, free):
        for _ in range(50):  # block_time 0: a free-running node makes a block per checkpoint
            await trio.lowlevel.checkpoint()
        assert waiting.chain.produced == 0 and free.chain.produced > 0
        async with open_rpc(waiting.url, connect_timeout=5, request_timeout=2) as rpc:
            with trio.fail_after(10):
                await waiting.finished.wait()
            assert from_quantity(await rpc.call("eth_blockNumber")) == 5 + 20
