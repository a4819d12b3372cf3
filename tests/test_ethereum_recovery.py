"""How the Ethereum source recovers, end to end: a reorg while weir is down that no new block
reveals, orphaned blocks the node has pruned, a node behind the cursor (waited for, not taken for
a reorg or a pruned block), the order of a reconnect (resubscribe, backfill, only
then live heads), a reorg deeper than the confirmations, and providers that refuse eth_getLogs
ranges in their own words (down to one block).

Simulated nodes over real WebSockets, a real redis-server, the real ``serve()``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import pytest
import trio

from weir.actors.ethereum import UNAVAILABLE_ATTEMPTS, UNAVAILABLE_BLOCKS, BlockLost
from weir.app import serve
from weir.codecs.jsonrpc import INVALID_PARAMS, from_quantity
from weir.observability.metrics import new_registry
from weir.sim.ethereum import EthereumSim, EthereumSimConfig

from helpers import running_service, wait_for
from test_ethereum_e2e import assert_canonical, caught_up, chain, cursor_token, eth_config, settled_token, simulated

pytestmark = pytest.mark.integration

TIMEOUT = 20.0
PROMPTLY = 10.0  # no block comes to reveal the reorg: only the start-up check can find it


def reorg(sim: EthereumSim, depth: int, new_blocks: int) -> list[str]:
    """Replace the top ``depth`` blocks by ``new_blocks`` others; returns the orphans' hashes."""
    orphans = sim.chain.canonical[-depth:]
    del sim.chain.canonical[-depth:]
    for _ in range(new_blocks):
        sim.chain._extend()
    return orphans


def causes(exc: BaseException) -> list[BaseException]:
    """``exc``, the members of exception groups and the ``__cause__`` chains, flattened."""
    out = [exc]
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            out += causes(inner)
    if exc.__cause__ is not None:
        out += causes(exc.__cause__)
    return out


@pytest.mark.parametrize("new_blocks", [3, 2], ids=["same height", "shorter chain"])
async def test_a_reorg_at_the_cursor_height_while_weir_is_down_is_retracted_at_start(redis_server, redis_client,
                                                                                     new_blocks):
    """The node replaced the cursor's block (and two below it) by a branch as long, or shorter,
    and produces nothing more: the restart must compare the cursor with the node's block at that
    height, walk back and retract at once, not wait for a next block that never comes. A shorter
    chain has no block at the cursor's height, as a node behind has none: it is told apart, without
    waiting, by the cursor's block (still served by hash) whose ancestor at the node's head height
    is not the head."""
    sim_config = EthereumSimConfig(chain_id=31, seed=17, block_time=0.01, logs_per_block=2, history=20, blocks=0)
    async with simulated(sim_config) as (sim,):
        config = eth_config(redis_server.url, [chain(sim)])
        async with running_service(config):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the first run to catch up")
        before = await cursor_token(redis_client, 31)
        reorg(sim, 3, new_blocks)
        assert before != settled_token(sim)
        async with running_service(config) as (service, _):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=PROMPTLY, what="the retraction at start")
            stats = service.partitions[0].source
            assert (stats.reorgs, stats.retracted_blocks, stats.reconnects) == (1, 3, 0), stats.last_error
    kinds = await assert_canonical(redis_client, sim)
    assert kinds[b"retract"] == 3 * sim_config.logs_per_block


async def test_orphans_the_node_no_longer_serves_stop_the_chain_loudly(redis_server, redis_client, caplog):
    """The node reorged while weir was down and pruned the orphaned blocks: weir cannot learn what
    to retract from it. A bounded number of connections (and UNAVAILABLE_BLOCKS block times: 0.2 s
    here) later the source fails with BlockLost (one line, naming the block), not a retry loop that
    looks like a flaky network forever."""
    caplog.set_level(logging.ERROR, logger="weir.actors.ethereum")
    sim_config = EthereumSimConfig(chain_id=34, seed=20, block_time=0.01, logs_per_block=2, history=20, blocks=0)
    async with simulated(sim_config) as (sim,):
        settings = chain(sim)
        config = eth_config(redis_server.url, [settings])
        async with running_service(config):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the first run to catch up")
        before = await cursor_token(redis_client, 34)
        orphans = reorg(sim, 3, 4)
        for hash_ in orphans:
            sim.chain.forget(hash_)
        # No restarts allowed: the first crash escalates to the top and serve() ends with it.
        strict = eth_config(redis_server.url, [chain(sim)], **{"supervision.max_restarts": "0"})
        with pytest.raises(BaseException) as info:  # the cause chain is checked below
            with trio.fail_after(TIMEOUT):
                async with trio.open_nursery() as nursery:
                    await nursery.start(functools.partial(serve, strict, stopping=trio.Event()))
    lost = [exc for exc in causes(info.value) if isinstance(exc, BlockLost)]
    assert lost, f"serve ended without BlockLost: {info.value!r}"
    message = str(lost[0])
    records = [r for r in caplog.records if getattr(r, "event", None) == "block_lost"]
    assert len(records) == 1 and records[0].levelno == logging.ERROR
    # Enough sessions, and for long enough: a fast failure loop alone does not decide.
    attempts = records[0].attempts
    assert attempts >= UNAVAILABLE_ATTEMPTS and records[0].missing_for >= UNAVAILABLE_BLOCKS * settings["block_time"]
    assert "\n" not in message and orphans[-1] in message and f"{attempts} connections" in message
    # Nothing was retracted or emitted past the cursor: the stream still holds the old branch.
    assert before == f"{sim.chain.head_number - 1}:{orphans[-1]}" == await cursor_token(redis_client, 34)


@pytest.mark.parametrize("by_hash", [False, True], ids=["cursor block unknown", "cursor block known by hash"])
async def test_a_node_behind_the_cursor_is_waited_for_then_followed_exactly(redis_server, redis_client, caplog, by_hash):
    """weir restarts against a node 3 blocks behind its cursor (a failover node, a backend still
    importing). It has no block at the cursor's height: that is lag, not a reorg to walk back
    through nor a pruned block. weir reconnects with a growing backoff (the breaker counts the
    sessions as failures) for longer than it would take to call a block lost, then, once the node
    catches up, resumes exactly: nothing retracted, no reorg logged (3 confirmations: a walk back
    would have been a deep one), no BlockLost. With ``by_hash`` the node already serves the
    cursor's block by hash: its head is an ancestor of it, so still behind."""
    caplog.set_level(logging.INFO)
    confirmations, logs_per_block = 3, 2
    sim_config = EthereumSimConfig(chain_id=36, seed=22, block_time=0.01, logs_per_block=logs_per_block, history=20,
                                   blocks=0)
    async with simulated(sim_config) as (sim,):
        settings = chain(sim, confirmations=confirmations)
        config = eth_config(redis_server.url, [settings], **{"supervision.breaker_reset_max": "0.4"})
        async with running_service(config):
            await wait_for(lambda: caught_up(redis_client, sim, confirmations), timeout=TIMEOUT,
                           what="the first run to catch up")
        number = int((await cursor_token(redis_client, 36)).split(":")[0])
        sim.lag(number - 3, by_hash=by_hash)
        for _ in range(4):
            sim.chain._extend()  # the chain goes on meanwhile, unseen by the node
        caplog.clear()
        async with running_service(config) as (service, _):
            stats = service.partitions[0].source
            started, lost_after = trio.current_time(), UNAVAILABLE_BLOCKS * settings["block_time"]
            await wait_for(lambda: stats.reconnects > UNAVAILABLE_ATTEMPTS and trio.current_time() - started > lost_after,
                           timeout=TIMEOUT, what="weir to keep trying past the BlockLost thresholds")
            assert (stats.emitted_blocks, stats.retracted_blocks) == (0, 0)
            sim.catch_up()
            await wait_for(lambda: caught_up(redis_client, sim, confirmations), timeout=TIMEOUT,
                           what="weir to resume once the node caught up")
            assert (stats.reorgs, stats.deep_reorgs, stats.retracted_blocks) == (0, 0, 0)
            assert stats.emitted_blocks == 4

    def events(name: str) -> list[Any]:
        return [r for r in caplog.records if getattr(r, "event", None) == name]

    assert not events("block_lost") and not events("reorg")
    lost = events("disconnect")
    assert len(lost) >= UNAVAILABLE_ATTEMPTS and all("NodeBehind" in r.error for r in lost), [r.error for r in lost]
    # Full jitter draws each delay below a cap that doubles per attempt from backoff_initial (0.01 s):
    # a delay above it means the sessions counted as failures, not as progress.
    assert max(r.reconnect_in for r in lost) > 0.01, [r.reconnect_in for r in lost]
    assert any(r.state == "open" for r in events("breaker_change") if r.breaker == f"ethereum {sim_config.chain_id} {sim.url}")
    kinds = await assert_canonical(redis_client, sim, confirmations)
    assert kinds[b"retract"] == 0


async def test_a_reconnect_resubscribes_then_backfills_by_ranges_and_only_then_follows_heads(redis_server, redis_client,
                                                                                            caplog):
    """The node is down while the chain grows well past gap_fetch. On the way back: eth_subscribe
    first (heads buffer from then on), then the backfill's eth_getLogs ranges up to the node's head,
    and only after them a live head's logs (pinned by blockHash). Each step is a structured log."""
    caplog.set_level(logging.INFO, logger="weir.actors.ethereum")
    gap_fetch = 4
    sim_config = EthereumSimConfig(chain_id=32, seed=18, block_time=0.02, logs_per_block=2, history=5, blocks=150)
    async with simulated(sim_config) as (sim,):
        # A long idle timeout: a head late under load must not add a reconnect of its own.
        config = eth_config(redis_server.url, [chain(sim, gap_fetch=gap_fetch, backfill_blocks=8, idle_blocks=250)])
        async with running_service(config) as (service, _):
            stats = service.partitions[0].source
            await wait_for(lambda: stats.connected and stats.emitted_blocks > 10, timeout=TIMEOUT, what="live heads")
            sim.refusing = True
            sim.drop_connections()
            down_at = sim.chain.head_number
            await wait_for(lambda: sim.chain.head_number > down_at + 4 * gap_fetch, timeout=TIMEOUT,
                           what="the chain to grow while the node is unreachable")
            assert not stats.connected
            backfilled = stats.backfilled_blocks
            calls = sim.record_calls()
            back_at = sim.chain.head_number
            sim.refusing = False
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the cursor to reach the final head")
            assert stats.backfilled_blocks - backfilled >= back_at - down_at - gap_fetch
    methods = [method for method, _ in calls]
    assert methods[:2] == ["eth_chainId", "eth_subscribe"], methods[:10]
    ranges = [(i, from_quantity(params[0]["toBlock"])) for i, (method, params) in enumerate(calls)
              if method == "eth_getLogs" and "fromBlock" in params[0]]
    pinned = [i for i, (method, params) in enumerate(calls) if method == "eth_getLogs" and "blockHash" in params[0]]
    assert ranges and pinned and methods.index("eth_subscribe") < ranges[0][0]
    # Every block up to the node's head at reconnect came through ranges before the first live head.
    assert max(to for i, to in ranges if i < pinned[0]) >= back_at
    await assert_canonical(redis_client, sim)

    def events(name: str) -> list[Any]:
        return [r for r in caplog.records if getattr(r, "event", None) == name]

    lost = events("disconnect")
    assert lost and all(r.source == "ethereum" and r.partition == "32" and r.error and r.url == sim.url for r in lost)
    assert any("ConnectionLost" in r.error for r in lost) and any("Handshake" in r.error or "Rejected" in r.error for r in lost)
    # a connection that had served is "lost"; a handshake refused "did not open" (never both)
    assert any(r.opened and " lost (" in r.getMessage() for r in lost if "ConnectionLost" in r.error)
    assert all(not r.opened and " did not open (" in r.getMessage() for r in lost if "Handshake" in r.error or "Rejected" in r.error)
    connects = events("connect")
    assert [r.resume_from is None for r in connects] == [True, False], [r.getMessage() for r in lost]
    assert int(connects[1].resume_from.split(":")[0]) <= down_at  # from "start", then from the tip it had
    backfills = [r for r in events("backfill") if r.how == "ranges" and r.created > connects[1].created]
    assert backfills and backfills[0].from_block <= down_at + 1 and backfills[0].to_block >= back_at
    assert sum(r.blocks for r in backfills) == stats.backfilled_blocks - backfilled


async def test_a_reorg_deeper_than_the_confirmations_is_retracted_counted_and_logged(redis_server, redis_client, caplog):
    caplog.set_level(logging.INFO, logger="weir.actors.ethereum")
    confirmations, depth = 3, 6
    sim_config = EthereumSimConfig(chain_id=33, seed=19, block_time=0.01, logs_per_block=2, history=20, blocks=0)
    async with simulated(sim_config) as (sim,):
        config = eth_config(redis_server.url, [chain(sim, confirmations=confirmations)])
        async with running_service(config) as (service, _):
            await wait_for(lambda: caught_up(redis_client, sim, confirmations), timeout=TIMEOUT, what="the first catch-up")
            ancestor = sim.chain.head_number - depth
            reorg(sim, depth, depth + 1)
            sim._announce(sim.chain.canonical[-1:])  # only the new tip: weir walks back to the ancestor
            await wait_for(lambda: caught_up(redis_client, sim, confirmations), timeout=TIMEOUT, what="the new branch")
            stats = service.partitions[0].source
            registry = new_registry(service, stale_after=30)
            labels = {"source": "ethereum", "partition": "33"}
            assert registry.get_sample_value("weir_reorgs_total", labels) == 1
            assert registry.get_sample_value("weir_deep_reorgs_total", labels) == 1
    assert (stats.reorgs, stats.deep_reorgs, stats.retracted_blocks) == (1, 1, depth - confirmations)
    kinds = await assert_canonical(redis_client, sim, confirmations)
    assert kinds[b"retract"] == (depth - confirmations) * sim_config.logs_per_block
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "reorg"]
    assert record.levelno == logging.ERROR
    assert (record.depth, record.deep, record.retracted, record.ancestor) == (depth, True, depth - confirmations, ancestor)


# Real providers' answers to an eth_getLogs range they will not serve ({limit}: the cap).
PROVIDERS = {
    "alchemy": (INVALID_PARAMS, ("Log response size exceeded. You can make eth_getLogs requests with up to a 2K block "
                                 "range and no limit on the response size, or you can request any block range with a "
                                 "cap of 10K logs in the response.")),
    "quicknode": (-32614, "eth_getLogs and eth_newFilter are limited to a {limit} blocks range"),
    "reth": (INVALID_PARAMS, "query exceeds max results {limit}, retry with the range 25766988-25775072"),
}


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_ranges_refused_in_a_providers_words_are_split_down_to_blocks_pinned_by_hash(redis_server, redis_client,
                                                                                           provider):
    """Ranges over 4 blocks are refused, and every block has more logs than the result cap, so even
    a one-block range is refused: weir splits the ranges down to one block, then asks for that
    block's logs by blockHash (which the provider serves), instead of retrying for ever."""
    code, message = PROVIDERS[provider]
    sim_config = EthereumSimConfig(chain_id=35, seed=21, block_time=0.01, logs_per_block=5, history=24, blocks=10,
                                   max_logs=3, max_range=4, range_error_code=code, range_error_message=message)
    async with simulated(sim_config) as (sim,):
        calls = sim.record_calls()
        config = eth_config(redis_server.url, [chain(sim, backfill_blocks=8)])
        async with running_service(config) as (service, _):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the cursor to reach the final head")
            stats = service.partitions[0].source
            assert stats.range_splits > 0 and stats.reconnects == 0, stats.last_error
    single: list[Any] = [p[0] for m, p in calls if m == "eth_getLogs" and p[0].get("fromBlock") == p[0].get("toBlock")]
    assert single, "no range was split down to one block"
    await assert_canonical(redis_client, sim)
