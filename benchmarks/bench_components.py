#!/usr/bin/env python
"""Per-event cost of each stage of weir's hot path, measured without a profiler.

    python benchmarks/bench_components.py [--events 100000]

Profilers (cProfile, pyinstrument) inflate call-heavy code such as the wire scanner by 2-3x, so
the split of a pipeline run's CPU time is taken from these direct timings instead:

- transport: the Subscribe stream read as raw bytes through weir's own ``_subscribe_aio`` +
  ``bridge.pump_batches`` (lists of ``read_batch`` crossing into trio, nothing else done), and the
  same stream in plain asyncio (no trio-asyncio) for comparison;
- ``scan_hub_event`` (the fast path with one-byte varints inlined) and ``scan_hub_event_strict``;
- ``ShardReader.read`` (scan + gap detector + Event construction), lists of 512, without and with
  a 1 % fid key filter (filtered events never become Event objects);
- the key filter alone;
- ``RedisSink._pack_evalsha`` (RESP packing of a batch; Redis itself not involved);
- betterproto2 decode and encode of a HubEvent (what a consumer of the typed stub pays).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import attrs

HERE = Path(__file__).resolve().parent


def per_event(fn, n_events: int, repeat: int = 3) -> float:
    """Best of ``repeat`` runs of ``fn()`` (which handles ``n_events`` events), in µs per event."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best / n_events * 1e6


async def transport_trio(url: str, shard: int, expected: int, read_batch: int) -> dict:
    import trio

    from weir.actors.farcaster import GrpcTarget, _subscribe_aio, server_event_types, subscribe_request
    from weir.bridge import call_asyncio, open_asyncio_loop, trio_sender
    from weir.config import FarcasterSettings

    request = subscribe_request(shard, 0, server_event_types(FarcasterSettings()))
    sizes: list[int] = []
    async with open_asyncio_loop():
        send, receive = trio.open_memory_channel(1)

        async def pump() -> None:
            async with send:
                await call_asyncio(_subscribe_aio, GrpcTarget.from_url(url), request, trio_sender(send), FarcasterSettings(read_batch=read_batch))

        started = time.perf_counter()
        cpu_started = time.process_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            got = 0
            while got < expected:
                batch = await receive.receive()
                sizes.append(len(batch))
                got += len(batch)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            result = {"events": got, "seconds": elapsed, "us_per_event": elapsed / got * 1e6, "crossings": len(sizes),
                      "mean_list": got / len(sizes), "cpu_us_per_event": cpu / got * 1e6}
            # Measured; leave at once (this runs in its own process): unwinding a cancelled live
            # grpclib stream under trio-asyncio is not what is being measured here.
            print(json.dumps(result), flush=True)
            os._exit(0)
    raise AssertionError("unreachable")


async def transport_asyncio(url: str, shard: int, expected: int) -> dict:
    """Plain asyncio (run in its own process: importing trio-asyncio changes asyncio's loop policy)."""
    from urllib.parse import urlsplit

    from grpclib.client import Channel
    from grpclib.const import Cardinality

    from weir.codecs.grpc_raw import RawBytesCodec
    from weir.codecs.protowire import varint_field

    parts = urlsplit(url)
    request = b"".join(varint_field(1, t) for t in (1, 2, 3, 6, 9, 10, 11)) + varint_field(2, 0) + varint_field(4, shard)
    channel = Channel(parts.hostname, parts.port, codec=RawBytesCodec())
    got = 0
    started = time.perf_counter()
    try:
        async with channel.request("/HubService/Subscribe", Cardinality.UNARY_STREAM, bytes, bytes) as stream:
            await stream.send_message(request, end=True)
            async for _ in stream:
                got += 1
                if got >= expected:
                    break
            elapsed = time.perf_counter() - started
            await stream.cancel()  # a live stream never ends: do not wait for its trailers
    finally:
        channel.close()
    return {"events": got, "seconds": elapsed, "us_per_event": elapsed / got * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events of one simulated shard")
    parser.add_argument("--fids", type=int, default=4, help="fids kept by the filter stage")
    parser.add_argument("--out", default=str(HERE / "results" / "components.json"))
    parser.add_argument("--transport-asyncio", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--transport-trio", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--read-batch", type=int, default=512, help=argparse.SUPPRESS)
    parser.add_argument("--plain-channel", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-transport", action="store_true", help="only the in-process figures (no simulator)")
    args = parser.parse_args(argv)
    if args.transport_asyncio:
        print(json.dumps(asyncio.run(transport_asyncio(args.transport_asyncio, 1, args.events))))
        return 0
    if args.transport_trio:
        import trio

        if args.plain_channel:  # grpclib's own Channel: h2 parses every DATA frame as it came
            from grpclib.client import Channel

            from weir.actors import farcaster
            from weir.codecs.grpc_raw import RawBytesCodec

            farcaster._open_channel = lambda target: Channel(target.host, target.port, codec=RawBytesCodec())

        from weir.bridge import open_asyncio_loop

        async def run() -> dict:
            async with open_asyncio_loop():
                return await transport_trio(args.transport_trio, 1, args.events, args.read_batch)

        trio.run(run)  # prints its result and exits

    import trio

    from weir.actors.farcaster import ShardReader, ShardStats
    from weir.codecs.farcaster_gaps import GapDetector
    from weir.codecs import farcaster_keys
    from weir.codecs.farcaster_keys import scan_hub_event, scan_hub_event_strict
    from weir.codecs.farcaster_validity import hub_event_invalidity
    from weir.networks.farcaster import key_filter
    from weir.config import load_config
    from weir.events import Chunk
    from weir.protos.snapchain import HubEvent
    from weir.sim.farcaster_data import SnapchainSimConfig, generate_offered
    from weir.sim.process import open_snapchain_sim
    from weir.sinks.redis_sink import RedisSink

    n = args.events
    sim_config = SnapchainSimConfig(shards=1, rate=0, history=n, total=n, pregenerate=True)
    offered = generate_offered(sim_config, 1, n)
    payloads = [p for _, p in offered]
    lists = [payloads[i : i + 512] for i in range(0, n, 512)]
    figures: dict[str, float | dict] = {}

    figures["scan_hub_event_us"] = per_event(lambda: [scan_hub_event(p) for p in payloads], n)
    farcaster_keys.upb_available = False  # the Python scanner alone, as before the C decoder
    figures["scan_hub_event_python_us"] = per_event(lambda: [scan_hub_event(p) for p in payloads], n)
    farcaster_keys.upb_available = True
    figures["scan_hub_event_strict_us"] = per_event(lambda: [scan_hub_event_strict(p) for p in payloads], n)

    def read_all(verify: bool = True) -> list[Chunk]:
        reader = ShardReader(shard=1, partition="1", detector=GapDetector(), stats=ShardStats(), verify=verify)
        return [reader.read(batch, 0.0) for batch in lists]

    # farcaster.verify (on by default): the BLAKE3-160 hash and Ed25519 signature of every message
    # that passes the filter; the difference between the two reader figures is its cost per event.
    figures["shard_reader_read_us"] = per_event(read_all, n)
    figures["shard_reader_read_noverify_us"] = per_event(lambda: read_all(verify=False), n)
    figures["verify_hub_event_us"] = per_event(lambda: [hub_event_invalidity(p) for p in payloads], n)
    chunks = read_all()
    fids = sorted({e.fields.get("fid") for c in chunks for e in c.events if e.fields.get("fid")})
    keep = fids[:: max(1, len(fids) // args.fids)][: args.fids]
    settings = load_config(environ={}, overrides={"farcaster.fids": ",".join(map(str, keep))}).farcaster
    keep_keys = key_filter(settings)
    scanned = [scan_hub_event(p) for p in payloads]
    figures["key_filter_us"] = per_event(lambda: [k for k in scanned if keep_keys(k)], n)

    def read_all_filtered() -> list[Chunk]:
        reader = ShardReader(shard=1, partition="1", detector=GapDetector(), stats=ShardStats(), keep=keep_keys)
        return [reader.read(batch, 0.0) for batch in lists]

    figures["shard_reader_read_filtered_us"] = per_event(read_all_filtered, n)

    sink = RedisSink("redis://127.0.0.1:1/0", source="farcaster")
    batches = [chunks[i : i + 1] for i in range(len(chunks))]  # ~512 events each, as in the pipeline
    figures["pack_evalsha_us"] = per_event(lambda: [sink._pack_evalsha("1", b) for b in batches], n)

    sample = payloads[:5000]
    figures["betterproto2_decode_us"] = per_event(lambda: [HubEvent.parse(p) for p in sample], len(sample), 1)
    decoded = [HubEvent.parse(p) for p in sample]
    figures["betterproto2_encode_us"] = per_event(lambda: [bytes(e) for e in decoded], len(sample), 1)

    async def measure(name: str, flags: list[str]) -> None:
        # Each transport run in a fresh process: a clean loop, and plain asyncio without the
        # event loop policy that importing trio-asyncio installs.
        completed = await trio.run_process([sys.executable, __file__, *flags, "--events", str(n)], capture_stdout=True)
        figures[name] = json.loads(completed.stdout)

    async def transport() -> None:
        async with open_snapchain_sim(sim_config, ready_timeout=300) as sim:
            await measure("transport_trio_asyncio_read_batch_512", ["--transport-trio", sim.url, "--read-batch", "512"])
            await measure("transport_trio_asyncio_read_batch_2048", ["--transport-trio", sim.url, "--read-batch", "2048"])
            await measure("transport_plain_asyncio", ["--transport-asyncio", sim.url])
        # A node that sends one message per DATA frame: h2 sees merged runs (weir) or every frame.
        async with open_snapchain_sim(attrs.evolve(sim_config, framing="one"), ready_timeout=300) as sim:
            await measure("transport_one_per_frame_merged", ["--transport-trio", sim.url])
            await measure("transport_one_per_frame_unmerged", ["--transport-trio", sim.url, "--plain-channel"])

    if not args.no_transport:
        trio.run(transport)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    for name, value in figures.items():
        if isinstance(value, dict):
            print(f"{name:45s} {value['us_per_event']:7.2f} µs/event  ({value['events'] / value['seconds']:,.0f} events/s"
                  + (f", mean list {value['mean_list']:.0f}" if "mean_list" in value else "")
                  + (f", CPU {value['cpu_us_per_event']:.2f} µs/event" if "cpu_us_per_event" in value else "") + ")")
        elif name.endswith("_us"):
            print(f"{name:45s} {value:7.2f} µs/event")
        else:
            print(f"{name:45s} {value}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
