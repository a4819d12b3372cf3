"""The Ethereum source under faults, end to end: malformed logs and headers from the node (dead
letters, the pipeline keeps running), a stop in the middle of a deep reorg's retractions (hard cancel
and ordered stop, then a restart on the same Redis), and the simulator as a subprocess.

Simulated nodes over real WebSockets, a real redis-server, the real ``serve()``.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter

import pytest
import trio

from weir.actors.ethereum import ChainReader, ChainStats, _session
from weir.actors.jsonrpc_ws import open_rpc
from weir.app import serve
from weir.codecs.ethereum_chain import parse_token
from weir.codecs.ethereum_logs import LogDecoder
from weir.events import Chunk
from weir.codecs.jsonrpc import from_quantity
from weir.sim.ethereum import EthereumSimConfig
from weir.sim.process import open_ethereum_sim
from weir.sinks.keys import partition_keys
from weir.sinks.redis_sink import Cursor

from helpers import running_service, wait_for
from test_ethereum_e2e import assert_canonical, caught_up, chain, cursor_token, eth_config, settled_token, simulated

pytestmark = pytest.mark.integration

TIMEOUT = 20.0


async def test_malformed_logs_and_headers_are_dead_lettered_and_the_pipeline_keeps_running(redis_server, redis_client):
    # Reorgs (retractions must skip the dead-lettered logs), a backfill with a result cap (range
    # splits; a log whose blockHash is unreadable makes the range be fetched block by block).
    sim_config = EthereumSimConfig(chain_id=11, seed=9, block_time=0.01, logs_per_block=3, history=30, blocks=80,
                                   reorg_every=6, max_reorg_depth=4, max_logs=25,
                                   malformed_log_every=6, malformed_header_every=9)
    async with simulated(sim_config) as (sim,):
        config = eth_config(redis_server.url, [chain(sim, backfill_blocks=30, gap_fetch=4)])
        async with running_service(config) as (service, _):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the cursor to reach the final head")
            stats = service.partitions[0].source
            # never dropped, never restarted: one connection for the whole run
            assert (stats.connects, stats.reconnects) == (1, 0), stats.last_error
            assert service.root.statistics().restarts == 0
    keys = partition_keys("ethereum", "11")
    dead = await redis_client("XRANGE", keys.dead, "-", "+")
    log_letters = [fields for _, fields in dead if b"malformed log" in fields[b"reason"]]
    header_letters = [fields for _, fields in dead if fields[b"reason"].startswith(b"malformed header")]
    assert len(log_letters) + len(header_letters) == len(dead)
    assert header_letters and len(header_letters) <= sim.malformed_headers
    assert all(fields[b"position"] == b"" for fields in header_letters)  # never applied: no position

    # Each dead-lettered log is one the node serves malformed, once, at its block's step.
    dead_logs = Counter(sim.chain.malformed[fields[b"data"]] for fields in log_letters)
    assert max(dead_logs.values()) == 1, "a malformed log was dead-lettered twice"
    canonical_bad = sim.chain.malformed_logs()
    assert len(canonical_bad) >= 20
    assert canonical_bad <= set(dead_logs) <= set(sim.chain.malformed.values())
    assert any(b"blockHash" in fields[b"reason"] for fields in log_letters)  # the block-by-block path ran
    entries = await redis_client("XRANGE", keys.events, "-", "+")
    by_position: dict[bytes, set[bytes]] = {}
    for entry_id, fields in entries:
        by_position.setdefault(entry_id.split(b"-")[0], set()).add(fields[b"block_hash"])
    for fields in log_letters:
        block_hash, _ = sim.chain.malformed[fields[b"data"]]
        assert fields[b"reason"].startswith(b"block ") and block_hash.encode() in fields[b"reason"]
        # the position is the step that applied the block: its other logs have that stream position
        assert by_position.get(fields[b"position"], {block_hash.encode()}) == {block_hash.encode()}

    # What is not retracted is the canonical chain minus exactly the dead-lettered logs.
    kinds = await assert_canonical(redis_client, sim, minus=canonical_bad)
    assert kinds[b"retract"] > 0


DEPTH = 20
LOGS = 100


@pytest.mark.parametrize("how", ["hard cancel", "ordered stop"])
async def test_stop_in_the_middle_of_a_deep_reorg_then_restart(redis_server, redis_client, how):
    sim_config = EthereumSimConfig(chain_id=21, seed=11, block_time=0.01, logs_per_block=LOGS, history=30, blocks=0)
    async with simulated(sim_config) as (sim,):
        # one retraction (one block's logs) per batch: the retractions reach Redis block by block
        config = eth_config(redis_server.url, [chain(sim)], **{"batch.max_events": str(LOGS)})
        keys = partition_keys("ethereum", "21")
        old_head = sim.chain.head_number
        async with trio.open_nursery() as nursery:
            stopping = trio.Event()
            await nursery.start(functools.partial(serve, config, stopping=stopping))
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the first run to catch up")
            # A reorg of DEPTH blocks; only the new tip is announced, so weir walks back to find it.
            del sim.chain.canonical[len(sim.chain.canonical) - DEPTH:]
            for _ in range(DEPTH + 1):
                sim.chain._extend()
            sim._announce(sim.chain.canonical[-1:])

            async def retracting() -> bool:
                token = await cursor_token(redis_client, 21)
                return token is not None and parse_token(token)[0] < old_head

            with trio.fail_after(TIMEOUT):
                while not await retracting():
                    await trio.sleep(0.001)
            if how == "hard cancel":
                nursery.cancel_scope.cancel()
            else:
                stopping.set()
        first_run = Counter(fields[b"kind"] for _, fields in await redis_client("XRANGE", keys.events, "-", "+"))
        assert 0 < first_run[b"retract"] < DEPTH * LOGS, f"not stopped in the middle of the retractions: {first_run}"
        assert first_run[b"retract"] % LOGS == 0  # whole blocks: a retraction step is atomic

        async with running_service(config) as (service, _):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the restart to finish the reorg")
            stats = service.partitions[0].source
            assert stats.reorgs == 1
            assert stats.retracted_blocks == DEPTH - first_run[b"retract"] // LOGS
    # Nothing retracted twice or emitted twice (assert_canonical checks every entry), and what is
    # held is exactly the new canonical chain.
    kinds = await assert_canonical(redis_client, sim)
    assert kinds[b"retract"] == DEPTH * LOGS
    assert kinds[b"log"] == old_head * LOGS + (DEPTH + 1) * LOGS  # blocks 1..old head, then the new branch (genesis has none)


async def test_the_simulator_runs_as_a_process_and_stops_on_exit(tmp_path):
    record = tmp_path / "chain.json"
    config = EthereumSimConfig(chain_id=5, seed=2, block_time=0.01, logs_per_block=2, history=7, blocks=3)
    async with open_ethereum_sim(config, record=str(record)) as proc:
        assert proc.url == f"ws://127.0.0.1:{proc.port}"
        async with open_rpc(proc.url, connect_timeout=5, request_timeout=5) as rpc:
            assert from_quantity(await rpc.call("eth_chainId")) == 5
            with trio.fail_after(TIMEOUT):
                while from_quantity(await rpc.call("eth_blockNumber")) < 10:
                    await trio.sleep(0.01)
            latest = await rpc.call("eth_getBlockByNumber", ["latest", False])
            logs = await rpc.call("eth_getLogs", [{"blockHash": latest["hash"]}])
            assert [int(item["logIndex"], 16) for item in logs] == [0, 1]
        pid = proc.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone (and reaped)
    recorded = json.loads(record.read_text())
    assert recorded["head"] == 10 and len(recorded["logs"]) == 10 * 2


async def test_the_simulator_process_takes_commands_through_its_control_file(tmp_path):
    """What the chaos suite does to a node process: a reorg now, a lag, a catch-up."""
    record = tmp_path / "chain.json"
    config = EthereumSimConfig(chain_id=6, seed=3, block_time=0.01, logs_per_block=1, history=5, blocks=5)
    async with open_ethereum_sim(config, record=str(record)) as proc:
        async with open_rpc(proc.url, connect_timeout=5, request_timeout=5) as rpc:

            async def head() -> int:
                return from_quantity(await rpc.call("eth_blockNumber"))

            async def until_head(number: int) -> None:
                with trio.fail_after(TIMEOUT):
                    while await head() != number:
                        await trio.sleep(0.01)

            await until_head(10)
            before = (await rpc.call("eth_getBlockByNumber", ["0x8", False]))["hash"]
            proc.command(reorg=3)  # blocks 8..10 replaced by 8..11
            await until_head(11)
            assert (await rpc.call("eth_getBlockByNumber", ["0x8", False]))["hash"] != before
            assert (await rpc.call("eth_getBlockByHash", [before, False]))["number"] == "0x8"  # kept as a side block
            proc.command(lag=4)
            await until_head(7)
            proc.command(catch_up=True)
            await until_head(11)
    recorded = json.loads(record.read_text())
    assert recorded["reorgs"] == [[3, 10]] and before not in recorded["blocks"] and len(recorded["blocks"]) == 12


async def test_two_backends_behind_one_url_one_lagging_lose_and_retract_nothing(redis_server, redis_client):
    """A load balancer routes every second connection to a backend 4 blocks behind: its heads are
    below weir's tip after a reconnect, its ranges end early, and blocks above its head are unknown
    to it. weir must neither retract a canonical block nor miss one."""
    sim_config = EthereumSimConfig(chain_id=26, seed=16, block_time=0.01, logs_per_block=2, history=10, blocks=60,
                                   drop_every=7, lagging_backend=4, reannounce=2)
    async with simulated(sim_config) as (sim,):
        config = eth_config(redis_server.url, [chain(sim)])
        async with running_service(config) as (service, _):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="weir to follow both backends")
            stats = service.partitions[0].source
            assert stats.reconnects >= 4 and stats.reorgs == 0 and stats.retracted_blocks == 0
            assert stats.behind_heads + stats.repeated_heads > 0  # the lagging backend's heads moved nothing
    kinds = await assert_canonical(redis_client, sim)
    assert kinds[b"retract"] == 0


async def test_a_hand_off_cut_short_is_sent_first_by_the_next_session():
    """The follower applies steps before they are sent: if a session ends while a chunk waits to
    enter the full pipeline, the next session must send that chunk before anything newer (the
    follower's memory counts its blocks as emitted: skipping it would lose them)."""
    sim_config = EthereumSimConfig(chain_id=23, seed=13, block_time=0.01, logs_per_block=3, history=60, blocks=0)
    async with simulated(sim_config) as (sim,):
        settings = eth_config("redis://127.0.0.1:1", [chain(sim, backfill_blocks=10)]).ethereum.chains[0]
        stats = ChainStats()
        reader = ChainReader(settings=settings, decoder=LogDecoder([]), stats=stats)
        send, receive = trio.open_memory_channel[Chunk](0)
        received: list[Chunk] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_session, reader, send, stats, None)
            received += [await receive.receive(), await receive.receive()]  # block 0, then blocks 1..10
            await wait_for(lambda: send.statistics().tasks_waiting_send == 1, timeout=TIMEOUT,
                           what="the third chunk to wait for the pipeline")
            nursery.cancel_scope.cancel()  # the session ends while blocks 11..20 wait to be handed on
        assert reader.handed == Cursor(position=received[-1].through, token=received[-1].token)
        assert [chunk.through for chunk in reader.unsent] == [received[-1].through + 10]  # blocks 11..20

        final = settled_token(sim)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_session, reader, send, stats, None)
            with trio.fail_after(TIMEOUT):
                while received[-1].token != final:
                    received.append(await receive.receive())
            nursery.cancel_scope.cancel()

    positions = [chunk.through for chunk in received]
    assert positions == sorted(set(positions))
    keys = [event.key for chunk in received for event in chunk.events]
    assert all(event.kind == "log" for chunk in received for event in chunk.events)
    assert len(keys) == len(set(keys))
    assert set(keys) == {f"23:{h}:{i}".encode() for h, i in sim.chain.canonical_logs()}


async def test_a_silent_subscription_is_noticed_by_the_idle_watchdog_and_replaced(redis_server, redis_client):
    """The node stops pushing heads on the open subscription but keeps producing blocks: after
    idle_blocks x block_time without a head weir asks eth_blockNumber, sees the node ahead and
    reconnects (a new subscription); once the chain stops, the same check finds weir level with the
    node and keeps the connection. Nothing is lost or duplicated."""
    sim_config = EthereumSimConfig(chain_id=24, seed=14, block_time=0.02, logs_per_block=2, history=5, blocks=40,
                                   reorg_every=8, max_reorg_depth=2)
    async with simulated(sim_config) as (sim,):
        # the watchdog fires after 10 x 0.02 = 0.2 s without a head
        config = eth_config(redis_server.url, [chain(sim, block_time=0.02, idle_blocks=10)])
        async with running_service(config) as (service, _):
            stats = service.partitions[0].source
            await wait_for(lambda: stats.connected and stats.emitted_blocks > 10, timeout=TIMEOUT,
                           what="weir to follow live heads")
            assert stats.idle_reconnects == 0 and not sim.finished.is_set()
            assert sim.mute_heads() == 1  # weir's one subscription; the WebSocket stays open
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the cursor to reach the final head")
            assert stats.idle_reconnects >= 1 and stats.reconnects >= 1
            assert sim.drops == 0  # the node never closed a connection: weir did
            # Level with the node: the watchdog keeps asking (eth_blockNumber) but no longer reconnects.
            reconnects, asked = stats.idle_reconnects, sim.requests["eth_blockNumber"]
            await wait_for(lambda: sim.requests["eth_blockNumber"] >= asked + 2, timeout=TIMEOUT,
                           what="two idle checks of the node's head")
            assert (stats.idle_reconnects, stats.connected) == (reconnects, True)
    await assert_canonical(redis_client, sim)


async def test_a_stale_head_from_an_abandoned_branch_is_skipped(redis_server, redis_client):
    """A head can wait in the buffer while weir learns the newer chain another way; when it is read
    the node has abandoned it. Following it would retract the new branch and re-emit the old one."""
    sim_config = EthereumSimConfig(chain_id=25, seed=15, block_time=0.01, logs_per_block=3, history=20, blocks=0)
    async with simulated(sim_config) as (sim,):
        config = eth_config(redis_server.url, [chain(sim)])
        async with running_service(config) as (service, _):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the first catch-up")
            stale = sim.chain.canonical[-1]
            del sim.chain.canonical[-1:]  # a reorg of depth 1, to a longer branch
            for _ in range(2):
                sim.chain._extend()
            sim._announce(sim.chain.canonical[-1:])
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the new branch")
            stats = service.partitions[0].source
            assert stats.reorgs == 1
            sim._announce([stale])  # the old tip, announced late
            await wait_for(lambda: stats.stale_heads == 1, timeout=TIMEOUT, what="the stale head to be skipped")
            sim.chain._extend()
            sim._announce(sim.chain.canonical[-1:])  # and the chain goes on from the new branch
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the next block")
            assert stats.reorgs == 1
    kinds = await assert_canonical(redis_client, sim)
    assert kinds[b"retract"] == sim_config.logs_per_block  # the one reorg's orphan, and nothing more


async def test_a_node_serving_another_chain_stops_weir_with_one_fatal_line_and_exit_3(redis_server, tmp_path):
    """A configuration error found at run time (the URL serves another chain) is retried within the
    pipeline's restart intensity, then stops weir: one `fatal:` line naming it, exit code 3 —
    not a crash loop under the root supervisor."""
    from helpers import fatal_run_args, run_until_exit

    from weir.errors import EXIT_FATAL

    sim_config = EthereumSimConfig(chain_id=5, seed=2, block_time=0.05, logs_per_block=1, history=3, blocks=None)
    async with open_ethereum_sim(sim_config) as node:
        chains = [{"chain_id": 1, "url": node.url, "start": "0", "block_time": 0.05, "connect_timeout": 2}]
        args = fatal_run_args(redis_server.url, "--set", "farcaster.enabled=false", "--set", "ethereum.enabled=true",
                              "--set", f"ethereum.chains={json.dumps(chains)}", max_restarts=3)
        code, events = await run_until_exit(args, tmp_path / "weir.log", timeout=TIMEOUT)
    assert code == EXIT_FATAL
    fatal = [e for e in events if e.get("event") == "fatal"]
    assert len(fatal) == 1 and "serves chain 5, configured as chain 1" in fatal[0]["msg"]
    assert sum(e.get("event") == "crash" and "ChainMismatch" in e.get("msg", "") for e in events) == 4  # 1 + 3 restarts
    assert not any("giving up" in e.get("msg", "") for e in events)


async def test_forged_head_numbers_never_move_the_cursor_and_lose_nothing(redis_server, redis_client):
    """A node that lies about block numbers (issue 10): a head whose parent is weir's tip but whose
    number is 2^60, and one far above the node's own head, are dead-lettered with their reason and
    never linked; the cursor never reads the forged number, and every log of the chain is there."""
    sim_config = EthereumSimConfig(chain_id=27, seed=17, block_time=0.02, logs_per_block=3, history=10, blocks=40)
    async with simulated(sim_config) as (sim,):
        config = eth_config(redis_server.url, [chain(sim)])
        async with running_service(config) as (service, _):
            stats = service.partitions[0].source
            await wait_for(lambda: stats.emitted_blocks > 15, timeout=TIMEOUT, what="weir to follow the chain")
            sim.forge_head(1 << 60)  # a child of the tip numbered 2^60
            sim.forge_head(sim.chain.head_number + 5000, parent="0x" + "ab" * 32)  # far above the node's head
            await wait_for(lambda: stats.implausible_heads == 2, timeout=TIMEOUT, what="both forged heads refused")
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the chain's last block")
            assert stats.reconnects == 0 and stats.reorgs == 0
    keys = partition_keys("ethereum", "27")
    number = int((await redis_client("HGET", keys.cursor, "token")).decode().partition(":")[0])
    assert number == sim.chain.head_number
    dead = await redis_client("XRANGE", keys.dead, "-", "+")
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert len(reasons) == 2 and all("implausible head" in r for r in reasons)
    assert str(1 << 60) in reasons[0]
    kinds = await assert_canonical(redis_client, sim)
    assert kinds[b"retract"] == 0


async def test_logs_over_the_reply_limit_split_ranges_then_dead_letter_the_block_and_go_on(redis_server, redis_client):
    """A reply over max_reply_bytes closes the WebSocket (1009, MESSAGE_TOO_BIG): asking the same
    again would loop for ever (issue 10). weir halves its ranges, and a single block still too
    large is dead-lettered with its reason, applied without its logs; every other log is there."""
    sim_config = EthereumSimConfig(chain_id=28, seed=18, block_time=0.02, logs_per_block=2, history=90, blocks=20,
                                   fat_block_every=25, fat_logs=120)
    async with simulated(sim_config) as (sim,):
        config = eth_config(redis_server.url, [chain(sim, backfill_blocks=64, max_reply_bytes=32 * 1024)])
        async with running_service(config) as (service, _):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the chain's last block")
            stats = service.partitions[0].source
            fat = [h for n, h in enumerate(sim.chain.canonical) if n and n % 25 == 0]
            # bounded: a reconnect per halving, log2(backfill_blocks) + 1 per large block at most
            assert stats.range_splits >= 1 and stats.reconnects <= len(fat) * 8
            assert service.restarts() == 0
    assert len(fat) == 4
    keys = partition_keys("ethereum", "28")
    dead = await redis_client("XRANGE", keys.dead, "-", "+")
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert len(reasons) == len(fat) and all("logs too large" in r and "max_reply_bytes=32768" in r for r in reasons)
    assert {h for h in fat if any(h in r for r in reasons)} == set(fat)
    await assert_canonical(redis_client, sim, minus={(h, i) for h in fat for i in range(120)})


async def test_a_block_with_more_logs_than_max_logs_per_block_is_one_dead_letter(redis_server, redis_client):
    sim_config = EthereumSimConfig(chain_id=29, seed=19, block_time=0.02, logs_per_block=3, history=30, blocks=10,
                                   fat_block_every=10, fat_logs=50)
    async with simulated(sim_config) as (sim,):
        config = eth_config(redis_server.url, [chain(sim, max_logs_per_block=20)])
        async with running_service(config):
            await wait_for(lambda: caught_up(redis_client, sim), timeout=TIMEOUT, what="the chain's last block")
    fat = [h for n, h in enumerate(sim.chain.canonical) if n and n % 10 == 0]
    dead = await redis_client("XRANGE", partition_keys("ethereum", "29").dead, "-", "+")
    reasons = sorted(fields[b"reason"].decode() for _, fields in dead)
    assert len(reasons) == len(fat) == 4 and all("has 50 matching logs, above max_logs_per_block=20" in r for r in reasons)
    await assert_canonical(redis_client, sim, minus={(h, i) for h in fat for i in range(50)})


async def test_a_node_that_keeps_forging_heads_is_refused_and_reported(redis_server, redis_client):
    """16 implausible heads in a row: the connection is dropped, `refused` says why (/readyz shows
    it as "node refused: …"), and once the node sends heads weir can follow, it is believed again."""
    from weir.actors.ethereum import MALFORMED_RUN
    from weir.observability.health import partition_problems

    sim_config = EthereumSimConfig(chain_id=30, seed=20, block_time=0.02, logs_per_block=2, history=10, blocks=None)
    async with simulated(sim_config) as (sim,):
        config = eth_config(redis_server.url, [chain(sim)])
        async with running_service(config) as (service, _):
            view = service.partitions[0]
            stats = view.source
            await wait_for(lambda: stats.emitted_blocks > 5, timeout=TIMEOUT, what="weir to follow the chain")
            sim.paused = True  # no real head in between: only forged ones
            for i in range(MALFORMED_RUN):
                sim.forge_head(1 << 60 | i)
            await wait_for(lambda: stats.refused is not None, timeout=TIMEOUT, what="the node to be refused")
            assert stats.implausible_heads == MALFORMED_RUN and stats.reconnects >= 1
            assert any("node refused" in p for p in partition_problems(view, now=trio.current_time(), stale_after=30))
            sim.paused = False
            await wait_for(lambda: stats.refused is None, timeout=TIMEOUT, what="the node to be believed again")
    dead = await redis_client("XLEN", partition_keys("ethereum", "30").dead)
    assert dead == MALFORMED_RUN
