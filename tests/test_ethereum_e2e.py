"""The Ethereum source end to end: ``serve()`` against simulated nodes (real WebSockets) and a real redis-server.

The checker replays the stream: a ``log`` entry adds its key, a ``retract`` entry removes it (and
must find it). What remains must be exactly the logs of the simulator's final canonical chain.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from weir.chaos.proxy import Bandwidth, Latency, open_proxy
from weir.config import load_config
from weir.sim.ethereum import APPROVAL_TOPIC, EthereumSim, EthereumSimConfig, contract_address, serve_ethereum_sim
from weir.sinks.keys import partition_keys

from helpers import running_service, wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 20.0


def eth_config(redis_url: str, chains: list[dict], **extra: str):
    return load_config(environ={}, overrides={
        "redis.url": redis_url,
        "redis.socket_timeout": "1",
        "farcaster.enabled": "false",
        "metrics.port": "0",
        "ethereum.enabled": "true",
        "ethereum.chains": json.dumps(chains),
        "supervision.backoff_initial": "0.01",
        "supervision.backoff_max": "0.1",
        "supervision.breaker_reset": "0.1",
        "supervision.max_restarts": "50",
        "log_level": "WARNING",
        **extra,
    })


def chain(sim: EthereumSim, **extra) -> dict:
    return {"chain_id": sim.config.chain_id, "url": sim.url, "start": "0", "block_time": 0.02, "request_timeout": 5,
            "connect_timeout": 2, **extra}


@asynccontextmanager
async def simulated(*configs: EthereumSimConfig):
    async with trio.open_nursery() as nursery:
        sims = [await nursery.start(serve_ethereum_sim, config) for config in configs]
        yield sims
        nursery.cancel_scope.cancel()


async def cursor_token(client, chain_id: int) -> str | None:
    value = await client("HGET", partition_keys("ethereum", str(chain_id)).cursor, "token")
    return None if value is None else value.decode()


def settled_token(sim: EthereumSim, confirmations: int = 0) -> str:
    number = sim.chain.head_number - confirmations
    return f"{number}:{sim.chain.canonical[number]}"


async def caught_up(client, sim: EthereumSim, confirmations: int = 0) -> bool:
    return sim.finished.is_set() and await cursor_token(client, sim.config.chain_id) == settled_token(sim, confirmations)


def canonical_keys(sim: EthereumSim, confirmations: int = 0, *, minus: set = frozenset(),
                   keep: Callable[[dict[str, Any]], bool] | None = None) -> set[bytes]:
    """Stream keys of the canonical logs up to ``confirmations`` below the head, less ``minus`` and,
    with ``keep``, only the logs (as the node serves them) it accepts."""
    chain_id = sim.config.chain_id
    return {f"{chain_id}:{h}:{i}".encode() for h, i in sim.chain.canonical_logs(sim.chain.head_number - confirmations)
            if (h, i) not in minus and (keep is None or keep(sim.chain.logs[h][i]))}


async def assert_canonical(client, sim: EthereumSim, confirmations: int = 0, *, minus: set = frozenset(),
                           keep: Callable[[dict[str, Any]], bool] | None = None) -> Counter:
    """Replay the stream; what is not retracted equals the canonical logs (less ``minus``: (block hash,
    log index) of logs that were dead-lettered; with ``keep``, only the logs it accepts: a filtered
    chain). Returns the kinds seen."""
    chain_id = sim.config.chain_id
    entries = await client("XRANGE", partition_keys("ethereum", str(chain_id)).events, "-", "+")
    held: set[bytes] = set()
    kinds: Counter = Counter()
    for entry_id, fields in entries:
        key, kind = fields[b"key"], fields[b"kind"]
        kinds[kind] += 1
        if kind == b"log":
            assert key not in held, f"{entry_id!r}: {key!r} emitted twice without a retraction between"
            held.add(key)
        else:
            assert kind == b"retract", kind
            assert key in held, f"{entry_id!r}: retraction of {key!r}, which is not held"
            held.remove(key)
    want = canonical_keys(sim, confirmations, minus=minus, keep=keep)
    assert held == want, f"lost {len(want - held)}, unexpected {len(held - want)}"
    return kinds


async def test_reorgs_of_depth_1_to_10_leave_exactly_the_canonical_logs(redis_server, redis_client):
    # history: a backfill at start with a result cap that forces range splits; drops: reconnects
    sim_config = EthereumSimConfig(chain_id=7, seed=3, block_time=0.01, logs_per_block=3, history=40, blocks=150,
                                   reorg_every=5, min_reorg_depth=1, max_reorg_depth=10, max_logs=25, drop_every=40)
    async with simulated(sim_config) as (sim,):
        config = eth_config(redis_server.url, [chain(sim, backfill_blocks=40, gap_fetch=4)])
        async with running_service(config) as (service, _):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the cursor to reach the final head")
            stats = service.partitions[0].source
        depths = {depth for depth, _ in sim.chain.reorgs}
        assert len(sim.chain.reorgs) >= 10 and max(depths) >= 6
        kinds = await assert_canonical(redis_client, sim)
        assert kinds[b"retract"] > 0
        assert stats.reorgs > 0 and stats.range_splits > 0 and stats.reconnects >= 2
        entry = (await redis_client("XRANGE", partition_keys("ethereum", "7").events, "-", "+", "COUNT", 1))[0][1]
        raw = json.loads(entry[b"data"])
        assert entry[b"block_hash"].decode() == raw["blockHash"] and int(entry[b"block"]) == int(raw["blockNumber"], 16)
        assert entry[b"event"] == b"Transfer" and json.loads(entry[b"decoded"])["standard"] in ("erc20", "erc721")


async def test_reorg_while_weir_is_down_is_detected_and_retracted_on_restart(redis_server, redis_client):
    sim_config = EthereumSimConfig(chain_id=8, seed=4, block_time=0.01, logs_per_block=2, history=10, blocks=40)
    async with simulated(sim_config) as (sim,):
        config = eth_config(redis_server.url, [chain(sim)])
        async with running_service(config):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the first run to catch up")
        before = await cursor_token(redis_client, 8)
        # while weir is down the node reorgs 5 blocks under the cursor block
        sim.chain.reorgs.clear()
        sim.config = sim_config  # unchanged; the reorg is forced below
        depth = 5
        del sim.chain.canonical[len(sim.chain.canonical) - depth :]
        for _ in range(depth + 2):
            sim.chain._extend()
        assert before != settled_token(sim)
        async with running_service(config) as (service, _):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the restart to catch up")
            assert service.partitions[0].source.reorgs == 1
        kinds = await assert_canonical(redis_client, sim)
        assert kinds[b"retract"] == depth * 2


async def test_a_node_re_announcing_its_last_heads_on_every_subscribe_moves_nothing_across_a_restart(redis_server, redis_client):
    """Issue 9's defect: after a restart the node announced again the blocks at and below the
    cursor; weir retracted them and emitted their logs a second time. Now: no retraction, each log
    once, and the repeats are counted (weir_ignored_heads{reason="repeat"})."""
    sim_config = EthereumSimConfig(chain_id=9, seed=6, block_time=0.01, logs_per_block=3, history=5, blocks=40,
                                   drop_every=9, reannounce=3)
    async with simulated(sim_config) as (sim,):
        config = eth_config(redis_server.url, [chain(sim)])
        async with running_service(config) as (service, _):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the first run to catch up")
            first = service.partitions[0].source
            assert first.reconnects >= 3 and first.repeated_heads >= 3  # the node dropped us, and repeated itself
        for _ in range(2):  # restarts on the same Redis: only the cursor's block is known at start
            async with running_service(config) as (service, _):
                stats = service.partitions[0].source
                await wait_for(lambda: stats.repeated_heads >= 3, timeout=TIMEOUT, what="the three heads announced again")
                assert await caught_up(redis_client, sim)
                assert (stats.reorgs, stats.retracted_blocks, stats.emitted_blocks) == (0, 0, 0)
    kinds = await assert_canonical(redis_client, sim)
    assert kinds[b"retract"] == 0 and kinds[b"log"] == len(canonical_keys(sim))


async def test_two_chains_at_once_one_with_confirmations(redis_server, redis_client):
    fast = EthereumSimConfig(chain_id=1, seed=5, block_time=0.01, logs_per_block=2, history=5, blocks=60,
                             reorg_every=4, max_reorg_depth=2)
    confirmed = EthereumSimConfig(chain_id=137, seed=6, block_time=0.01, logs_per_block=2, history=5, blocks=60,
                                  reorg_every=4, max_reorg_depth=2)
    async with simulated(fast, confirmed) as (a, b):
        config = eth_config(redis_server.url, [chain(a), chain(b, confirmations=3)])
        async with running_service(config):
            await wait_for(lambda: caught_up(redis_client, a), timeout=TIMEOUT, what="chain 1 to catch up")
            await wait_for(lambda: caught_up(redis_client, b, 3), timeout=TIMEOUT, what="chain 137 to catch up")
        assert (await assert_canonical(redis_client, a))[b"retract"] > 0
        # reorgs of at most 2 blocks never touch blocks 3 deep: nothing is ever retracted
        assert (await assert_canonical(redis_client, b, 3))[b"retract"] == 0


async def test_slow_redis_and_dropped_connections_with_reorgs_lose_nothing(redis_server, redis_client):
    """Redis slower than the chain keeps the pipeline full (the source waits to hand chunks on)
    while the node drops every connection and reorgs: the replay still equals the canonical chain."""
    sim_config = EthereumSimConfig(chain_id=8, seed=4, block_time=0.04, logs_per_block=10, history=30, blocks=120,
                                   reorg_every=6, min_reorg_depth=1, max_reorg_depth=6, drop_every=20)
    async with simulated(sim_config) as (sim,), open_proxy("127.0.0.1", redis_server.port, seed=5) as redis_link:
        redis_link.add(Latency(ms=15, jitter_ms=5))
        redis_link.add(Bandwidth(kb_per_s=250))
        config = eth_config(redis_link.redis_url, [chain(sim, backfill_blocks=20, gap_fetch=4)],
                            **{"batch.max_events": "100", "redis.socket_timeout": "5"})
        waited_to_hand_on = 0
        async with running_service(config) as (service, _):
            source_to_filter = service.partitions[0].sink.channels["source_to_filter"]

            async def pipeline_full() -> bool:
                nonlocal waited_to_hand_on
                if source_to_filter.statistics().tasks_waiting_send:
                    waited_to_hand_on += 1
                return await caught_up(redis_client, sim)

            await wait_for(pipeline_full, timeout=60, what="the cursor to reach the final head")
            stats = service.partitions[0].source
        assert waited_to_hand_on > 0, "the pipeline was never full: Redis is not slow enough to test this"
        assert stats.reconnects >= 3 and stats.reorgs > 0
    await assert_canonical(redis_client, sim)


@pytest.mark.parametrize("addresses, topics", [
    ([1], []),
    ([], [APPROVAL_TOPIC]),
    ([0, 2], [APPROVAL_TOPIC]),
], ids=["one address", "one topic0", "two addresses and one topic0"])
async def test_address_and_topic_filters_leave_exactly_the_matching_canonical_logs(redis_server, redis_client,
                                                                                    addresses, topics):
    """The chain's ``addresses`` / ``topics`` reach every eth_getLogs (live blocks by hash, backfill
    ranges split under the result cap, walks back through reorgs, after reconnects): the stream holds
    only matching logs, and what is not retracted is exactly the matching part of the canonical chain."""
    sim_config = EthereumSimConfig(chain_id=9, seed=21, block_time=0.01, logs_per_block=4, history=30, blocks=60,
                                   reorg_every=5, max_reorg_depth=4, max_logs=8, drop_every=25, contracts=3,
                                   approval_every=4)
    wanted_addresses = {contract_address(i) for i in addresses}
    wanted_topics = {t.lower() for t in topics}

    def keep(item: dict[str, Any]) -> bool:
        return ((not wanted_addresses or item["address"] in wanted_addresses)
                and (not wanted_topics or item["topics"][0] in wanted_topics))

    async with simulated(sim_config) as (sim,):
        # Upper-case hex in the configuration: the filter compares values, not spellings.
        config = eth_config(redis_server.url, [chain(sim, backfill_blocks=30, gap_fetch=4,
                                                     addresses=[a[:2] + a[2:].upper() for a in sorted(wanted_addresses)],
                                                     topics=[t[:2] + t[2:].upper() for t in topics])])
        async with running_service(config) as (service, _):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the cursor to reach the final head")
            stats = service.partitions[0].source
        assert sim.chain.reorgs and stats.reorgs > 0 and stats.range_splits > 0 and stats.reconnects >= 1
    everything, matching = canonical_keys(sim), canonical_keys(sim, keep=keep)
    assert 0 < len(matching) < len(everything) / 2  # the filter leaves out most of the chain
    entries = await redis_client("XRANGE", partition_keys("ethereum", "9").events, "-", "+")
    for _, fields in entries:  # nothing outside the filter was ever emitted (nor retracted)
        assert keep({"address": fields[b"address"].decode(), "topics": [fields[b"topic0"].decode()]}), fields
    kinds = await assert_canonical(redis_client, sim, keep=keep)
    assert kinds[b"retract"] > 0  # reorgs retracted matching logs too


async def test_positional_topics_filter_by_an_indexed_argument(redis_server, redis_client):
    """``topics`` by position, as eth_getLogs takes them: Transfer as topic0, any sender (null),
    one of two receivers as topic2. Only their transfers are stored, through a backfill with a
    result cap, live heads and reorgs."""
    sim_config = EthereumSimConfig(chain_id=12, seed=22, block_time=0.01, logs_per_block=4, history=30, blocks=40,
                                   reorg_every=5, max_reorg_depth=3, max_logs=6, approval_every=4)
    async with simulated(sim_config) as (sim,):
        history = [item for hash_ in sim.chain.canonical[1:] for item in sim.chain.logs[hash_]]
        receivers = sorted({history[5]["topics"][2], history[60]["topics"][2]})
        transfer = history[0]["topics"][0] if history[0]["topics"][0] != APPROVAL_TOPIC else history[1]["topics"][0]

        def keep(item: dict[str, Any]) -> bool:
            return item["topics"][0] == transfer and item["topics"][2] in receivers

        config = eth_config(redis_server.url, [chain(sim, backfill_blocks=30, topics=[[transfer], None, receivers])])
        async with running_service(config):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the cursor to reach the final head")
    assert 0 < len(canonical_keys(sim, keep=keep)) < 10  # the filter leaves out nearly everything
    entries = await redis_client("XRANGE", partition_keys("ethereum", "12").events, "-", "+")
    assert entries and all(keep(json.loads(fields[b"data"])) for _, fields in entries)
    await assert_canonical(redis_client, sim, keep=keep)


APPROVAL_ABI = "Approval(address indexed owner, address indexed spender, uint256 value)"


async def test_user_abi_from_config_decodes_approvals_and_builtin_transfers_keep_theirs(redis_server, redis_client):
    """``ethereum.abis`` reaches the decoder: the simulator's ERC-20 ``Approval`` logs (not a built-in
    event) are stored with the user ABI's event name and arguments, while ``Transfer`` logs keep the
    built-in erc20 / erc721 decoding. An ``Approval`` with a fourth topic (ERC-721's: tokenId indexed,
    no data) does not fit the declared event and is stored raw, undecoded."""
    sim_config = EthereumSimConfig(chain_id=11, seed=8, block_time=0.01, logs_per_block=4, history=10, blocks=30,
                                   approval_every=3)
    async with simulated(sim_config) as (sim,):
        config = eth_config(redis_server.url, [chain(sim)], **{"ethereum.abis": [APPROVAL_ABI]})
        async with running_service(config):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the cursor to reach the final head")
    await assert_canonical(redis_client, sim)
    seen: Counter = Counter()
    for _, fields in await redis_client("XRANGE", partition_keys("ethereum", "11").events, "-", "+"):
        raw = json.loads(fields[b"data"])
        topics, value = raw["topics"], int(raw["data"], 16) if raw["data"] != "0x" else None
        owner, other = ("0x" + t[-40:] for t in topics[1:3])
        decoded = json.loads(fields[b"decoded"]) if b"decoded" in fields else None
        if topics[0] == APPROVAL_TOPIC and len(topics) == 3:
            seen["approval"] += 1
            assert fields[b"event"] == b"Approval" and b"standard" not in fields, fields
            assert decoded == {"event": "Approval", "standard": "",
                               "args": {"owner": owner, "spender": other, "value": str(value)}}, fields
        elif topics[0] == APPROVAL_TOPIC:
            seen["erc721 approval"] += 1
            assert b"event" not in fields and decoded is None, fields
        elif len(topics) == 3:
            seen["erc20"] += 1
            assert (fields[b"event"], fields[b"standard"]) == (b"Transfer", b"erc20"), fields
            assert decoded == {"event": "Transfer", "standard": "erc20",
                               "args": {"from": owner, "to": other, "value": str(value)}}, fields
        else:
            seen["erc721"] += 1
            assert (fields[b"event"], fields[b"standard"]) == (b"Transfer", b"erc721"), fields
            assert decoded == {"event": "Transfer", "standard": "erc721",
                               "args": {"from": owner, "to": other, "tokenId": str(int(topics[3], 16))}}, fields
    assert min(seen[k] for k in ("approval", "erc721 approval", "erc20", "erc721")) > 0, seen
