"""weir deliver into Parquet: rows/s and MB/s of payload, from a backlog in Redis to committed files.

    python benchmarks/bench_deliver.py [--events 100000] [--payload 300] [--compression zstd] [--row-group 10000]

Writes ``--events`` Farcaster-shaped events (three routing fields, ``--payload`` bytes each) through
weir's own sink into an embedded redis-server, then times one ``weir deliver`` instance (in this
process) from its start until every entry is acknowledged: XREADGROUP pages of 1000, row building,
row groups, fsync + rename per file, XPENDING check and XACK. Prints one Markdown table row.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis
import trio

from weir.bridge import call_asyncio, open_asyncio_loop
from weir.config import load_config
from weir.deliver.service import serve_deliver
from weir.events import Chunk, Event
from weir.sinks.embedded_redis import RedisServerConfig, open_embedded_redis
from weir.sinks.keys import partition_keys
from weir.sinks.redis_sink import open_redis_sink


async def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with open_asyncio_loop(), open_embedded_redis(RedisServerConfig(data_dir=Path(tmp) / "redis")) as server:
            async with open_redis_sink(server.url, source="farcaster") as sink:
                for start in range(1, args.events + 1, 1000):
                    events = [Event(source="farcaster", partition="1", position=p, kind="MERGE_MESSAGE", key=b"%032d" % p,
                                    payload=bytes(p % 251 for _ in range(args.payload)), timestamp=1_764_000_000 + p / 1000,
                                    fields={"block": p // 10, "fid": p % 5000, "type": "CAST_ADD"})
                              for p in range(start, min(start + 1000, args.events + 1))]
                    await sink.write("1", [Chunk(partition="1", events=events, through=events[-1].position)])
            pipeline = {"source": "farcaster", "directory": str(Path(tmp) / "out"), "compression": args.compression,
                        "row_group_rows": args.row_group, "file_rows": 50_000, "file_age": 1}
            config = load_config(environ={}, overrides={"redis.url": server.url, "deliver.pipelines": json.dumps([pipeline]),
                                                        "log_level": "WARNING"})
            key = partition_keys("farcaster", "1").events
            client = await call_asyncio(_client, server.url)
            began = time.perf_counter()
            async with trio.open_nursery() as nursery:
                service = await nursery.start(functools.partial(serve_deliver, config))
                while True:
                    summary = await call_asyncio(client.xpending, key, "farcaster-parquet")
                    groups = await call_asyncio(client.xinfo_groups, key)
                    if summary["pending"] == 0 and groups[0]["last-delivered-id"] == b"%d-0" % args.events:
                        break
                    await trio.sleep(0.05)
                elapsed = time.perf_counter() - began
                service.stop()
            await call_asyncio(client.aclose)
            size = sum(path.stat().st_size for path in (Path(tmp) / "out").rglob("*.parquet"))
            print(f"| {args.events} | {args.payload} | {args.compression} | {args.row_group} | {args.events / elapsed:,.0f} "
                  f"| {args.events * args.payload / elapsed / 1e6:.1f} | {size / 1e6:.1f} |")


async def _client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--payload", type=int, default=300)
    parser.add_argument("--compression", default="zstd", choices=("zstd", "snappy", "gzip", "none"))
    parser.add_argument("--row-group", type=int, default=10_000)
    args = parser.parse_args()
    print("| events | payload B | codec | row group | rows/s | payload MB/s | file MB |")
    print("|---|---|---|---|---|---|---|")
    trio.run(bench, args)


if __name__ == "__main__":
    main()
