#!/usr/bin/env python
"""The naive ingestor weir is compared against: plain asyncio, typed stub, one XADD per event.

What a first attempt looks like (and what the ratio in docs/performance.md is measured against):

- subscribes with the generated typed stub (``weir.protos.snapchain.HubServiceStub`` over a grpclib
  ``Channel`` with its default protobuf codec), so every HubEvent is fully decoded by betterproto2;
- stores each event as it has it: ``XADD <stream> <id>-0 kind <type> fid <fid> data <bytes(event)>``
  (the raw bytes are gone after the typed decode, so it re-encodes), then ``SET <cursor> <id>``,
  each awaited one at a time with redis.asyncio;
- one task per shard, both in one asyncio loop.

Run by ``bench_pipeline.py`` in a fresh process; usable alone:

    python benchmarks/naive_baseline.py --url http://127.0.0.1:PORT --redis redis://127.0.0.1:6379/0 \
        --shards 2 --events-per-shard 20000

Prints one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from urllib.parse import urlsplit


def peak_rss_kb() -> dict[str, int]:
    """Peak RSS in KiB: VmHWM (see bench_pipeline.peak_rss_kb for why not ru_maxrss) and ru_maxrss."""
    hwm = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return {"vm_hwm_kb": hwm, "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def _fid(event) -> int:
    """The fid a consumer would read from the typed model (0 when the event has none)."""
    body = event.merge_message_body or event.prune_message_body or event.revoke_message_body or event.merge_failure
    if body is not None and body.message is not None and body.message.data is not None:
        return body.message.data.fid
    if event.merge_username_proof_body is not None and event.merge_username_proof_body.username_proof is not None:
        return event.merge_username_proof_body.username_proof.fid
    if event.merge_on_chain_event_body is not None and event.merge_on_chain_event_body.on_chain_event is not None:
        return event.merge_on_chain_event_body.on_chain_event.fid
    return 0


async def consume(url: str, redis_url: str, shard: int, limit: int, prefix: str) -> dict:
    import redis.asyncio as aioredis
    from grpclib.client import Channel

    from weir.protos.snapchain import HubEventType, HubServiceStub, SubscribeRequest

    parts = urlsplit(url)
    channel = Channel(parts.hostname, parts.port)
    client = aioredis.Redis.from_url(redis_url)
    stream_key = f"{prefix}:{shard}:events"
    cursor_key = f"{prefix}:{shard}:cursor"
    request = SubscribeRequest(
        event_types=[t for t in HubEventType if t != HubEventType.NONE], from_id=0, shard_index=shard
    )
    count = 0
    last_id = None
    try:
        async for event in HubServiceStub(channel).subscribe(request):
            await client.xadd(
                stream_key,
                {"kind": event.type.name, "fid": _fid(event), "data": bytes(event)},
                id=f"{event.id}-0",
            )
            await client.set(cursor_key, event.id)
            count += 1
            last_id = event.id
            if count >= limit:
                break
    finally:
        channel.close()
        await client.aclose()
    return {"shard": shard, "count": count, "last_id": last_id}


async def main_async(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    cpu_started = time.process_time()
    results = await asyncio.gather(
        *(consume(args.url, args.redis, shard, args.events_per_shard, args.prefix) for shard in range(1, args.shards + 1))
    )
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    persisted = sum(r["count"] for r in results)
    return {
        "scenario": "naive",
        "persisted": persisted,
        "elapsed_s": elapsed,
        "events_per_s": persisted / elapsed,
        "cpu_s": cpu,
        "shards": results,
        **peak_rss_kb(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="simulator, http://HOST:PORT")
    parser.add_argument("--redis", required=True, help="redis://HOST:PORT/DB")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--events-per-shard", type=int, default=20_000)
    parser.add_argument("--prefix", default="naive")
    args = parser.parse_args(argv)
    # Imports before the clock starts, as for weir's worker.
    import grpclib.client  # noqa: F401
    import redis.asyncio  # noqa: F401

    import weir.protos.snapchain  # noqa: F401

    print(json.dumps(asyncio.run(main_async(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
