"""Ethereum source throughput: logs/s through source -> filter -> batch -> persist into Redis.

The simulated node (real WebSocket) has ``--blocks`` blocks of ``--logs`` logs each (default 500)
when weir starts from block 0; the figure is logs durable per second until the cursor reaches the
head (the ``eth_getLogs`` range backfill path), then the same for live heads (one block per head:
``eth_getLogs`` by block hash). ``--sim process`` (the default) runs the node in its own process,
so weir has a core to itself; ``--sim inline`` runs it in weir's event loop (a lower bound).

    python benchmarks/bench_ethereum.py [--blocks 120] [--logs 500] [--sim process|inline]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import trio

from weir.app import serve
from weir.bridge import open_asyncio_loop
from weir.config import load_config
from weir.sim.ethereum import EthereumSimConfig, serve_ethereum_sim
from weir.sim.process import open_ethereum_sim
from weir.sinks.embedded_redis import RedisServerConfig, open_embedded_redis


async def run(blocks: int, logs: int, live_blocks: int) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with open_asyncio_loop(), open_embedded_redis(RedisServerConfig(data_dir=Path(tmp))) as redis:
            async with trio.open_nursery() as nursery:
                sim_config = EthereumSimConfig(chain_id=1, logs_per_block=logs, history=blocks, blocks=live_blocks, block_time=0.05)
                sim = await nursery.start(serve_ethereum_sim, sim_config)
                sim.paused = True
                config = load_config(environ={}, overrides={
                    "redis.url": redis.url, "farcaster.enabled": "false", "metrics.port": "0", "log_level": "WARNING",
                    "ethereum.enabled": "true",
                    "ethereum.chains": json.dumps([{"chain_id": 1, "url": sim.url, "start": "0", "backfill_blocks": 20}]),
                })
                stopping = trio.Event()
                service = await nursery.start(lambda task_status: serve(config, stopping=stopping, task_status=task_status))
                view = service.partitions[0]
                start = time.perf_counter()
                while view.source.emitted_blocks < blocks + 1 or view.sink.appended < blocks * logs:
                    await trio.sleep(0.01)
                elapsed = time.perf_counter() - start
                results["backfill"] = {"blocks": blocks, "logs": view.sink.appended, "seconds": round(elapsed, 3),
                                       "logs_per_s": round(view.sink.appended / elapsed)}
                before, start = view.sink.appended, time.perf_counter()
                sim.paused = False
                await sim.finished.wait()
                while view.sink.appended < before + live_blocks * logs:
                    await trio.sleep(0.01)
                elapsed = time.perf_counter() - start
                live = view.sink.appended - before
                results["live"] = {"blocks": live_blocks, "block_time": sim_config.block_time, "logs": live,
                                   "seconds": round(elapsed, 3), "logs_per_s": round(live / elapsed),
                                   "offered_logs_per_s": round(logs / sim_config.block_time)}
                stopping.set()
                nursery.cancel_scope.cancel()
    return results


async def run_process(blocks: int, logs: int, live_blocks: int) -> dict:
    """The node in a subprocess: one node for the backfill (all history), one for live heads."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with open_asyncio_loop(), open_embedded_redis(RedisServerConfig(data_dir=Path(tmp))) as redis:
            def config(url: str, chain_id: int):
                return load_config(environ={}, overrides={
                    "redis.url": redis.url, "farcaster.enabled": "false", "metrics.port": "0", "log_level": "WARNING",
                    "ethereum.enabled": "true",
                    "ethereum.chains": json.dumps([{"chain_id": chain_id, "url": url, "start": "0", "backfill_blocks": 20}]),
                })

            backfill = EthereumSimConfig(chain_id=1, logs_per_block=logs, history=blocks, blocks=0)
            async with open_ethereum_sim(backfill) as sim, trio.open_nursery() as nursery:
                stopping = trio.Event()
                start = time.perf_counter()
                service = await nursery.start(lambda task_status: serve(config(sim.url, 1), stopping=stopping, task_status=task_status))
                view = service.partitions[0]
                while view.source.emitted_blocks < blocks + 1 or view.sink.appended < blocks * logs:
                    await trio.sleep(0.01)
                elapsed = time.perf_counter() - start
                results["backfill"] = {"blocks": blocks, "logs": view.sink.appended, "seconds": round(elapsed, 3),
                                       "logs_per_s": round(view.sink.appended / elapsed)}
                stopping.set()
            live = EthereumSimConfig(chain_id=2, logs_per_block=logs, history=0, blocks=live_blocks, block_time=0.05)
            async with open_ethereum_sim(live) as sim:
                stopping = trio.Event()
                async with trio.open_nursery() as nursery:
                    start = time.perf_counter()
                    service = await nursery.start(lambda task_status: serve(config(sim.url, 2), stopping=stopping, task_status=task_status))
                    view = service.partitions[0]
                    while view.sink.appended < live_blocks * logs:
                        await trio.sleep(0.01)
                    elapsed = time.perf_counter() - start
                    results["live"] = {"blocks": live_blocks, "block_time": live.block_time, "logs": view.sink.appended,
                                       "seconds": round(elapsed, 3), "logs_per_s": round(view.sink.appended / elapsed),
                                       "offered_logs_per_s": round(logs / live.block_time)}
                    stopping.set()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=120)
    parser.add_argument("--logs", type=int, default=500)
    parser.add_argument("--live-blocks", type=int, default=40)
    parser.add_argument("--sim", choices=("process", "inline"), default="process")
    args = parser.parse_args()
    runner = run_process if args.sim == "process" else run
    print(json.dumps(trio.run(runner, args.blocks, args.logs, args.live_blocks), indent=2))


if __name__ == "__main__":
    main()
