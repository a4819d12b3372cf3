#!/usr/bin/env python
"""Per-event cost of each stage of weir's hot path, measured without a profiler.

    python benchmarks/bench_components.py [--events 100000]

Profilers (cProfile, pyinstrument) inflate call-heavy code such as the wire scanner by 2-3x, so
the split of a pipeline run's CPU time is taken from these direct timings instead:

- transport: the Subscribe stream read as raw bytes through weir's own ``_subscribe_aio`` +
  ``bridge.pump_batches`` (lists of ``read_batch`` crossing into trio, nothing else done), and the
  same stream in plain asyncio (no trio-asyncio) for comparison;
- ``scan_hub_event`` alone, and a benchmark-only prototype of a faster scanner (one-byte varints
  inlined, same HubEventKeys out, checked equal on every event) to size the proposed change;
- ``ShardReader.read`` (scan + gap detector + Event construction), lists of 512;
- the fid filter (predicate + list comprehension);
- ``RedisSink._pack_evalsha`` (RESP packing of a batch; Redis itself not involved);
- betterproto2 decode and encode of a HubEvent (what the naive baseline pays).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def per_event(fn, n_events: int, repeat: int = 3) -> float:
    """Best of ``repeat`` runs of ``fn()`` (which handles ``n_events`` events), in µs per event."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best / n_events * 1e6


# -- a prototype scanner (benchmark-only; the proposal for weir/codecs/farcaster_keys.py) -------------


def make_fast_scanner():
    """scan_hub_event with one-byte varints inlined (tags and most lengths are < 128).

    Same result as weir's scanner on valid input; on anything unusual (a multi-byte tag, a
    malformed body) it falls back to weir's scanner, which raises the proper WireError.
    """
    from weir.codecs.farcaster_keys import (
        HubEventKeys,
        _scan_block_confirmed,
        _scan_on_chain_body,
        _scan_username_proof_body,
        scan_hub_event,
    )
    from weir.codecs.protowire import read_varint

    def message_keys(buf: bytes, pos: int, end: int) -> tuple[int, int, bytes]:
        # Message: 1 data (LEN), 2 hash (LEN), 7 data_bytes (LEN); others skipped by length.
        fid = msg_type = 0
        msg_hash = b""
        data_start = data_end = -1
        while pos < end:
            key = buf[pos]
            if key >= 0x80:
                raise ValueError
            pos += 1
            wire_type = key & 7
            if wire_type == 2:
                length = buf[pos]
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = read_varint(buf, pos, end)
                stop = pos + length
                if stop > end:
                    raise ValueError
                field = key >> 3
                if field == 1 or (field == 7 and data_start < 0):
                    data_start, data_end = pos, stop
                elif field == 2:
                    msg_hash = buf[pos:stop]
                pos = stop
            elif wire_type == 0:
                while buf[pos] >= 0x80:
                    pos += 1
                pos += 1
            else:
                raise ValueError
        if data_start >= 0:  # MessageData: 1 type, 2 fid (varints), first fields of the message
            pos, end = data_start, data_end
            while pos < end:
                key = buf[pos]
                pos += 1
                wire_type = key & 7
                if wire_type == 0:
                    value, pos = (buf[pos], pos + 1) if buf[pos] < 0x80 else read_varint(buf, pos, end)
                    if key == 0x08:
                        msg_type = value
                    elif key == 0x10:
                        fid = value
                        if msg_type:
                            break
                elif wire_type == 2:
                    length, pos = (buf[pos], pos + 1) if buf[pos] < 0x80 else read_varint(buf, pos, end)
                    pos += length
                else:
                    raise ValueError
        return fid, msg_type, msg_hash

    def scan(buf: bytes) -> HubEventKeys:
        try:
            end = len(buf)
            pos = 0
            event_type = event_id = shard = block_number = timestamp = fid = msg_type = 0
            msg_hash = b""
            block = None
            saw_id = False
            while pos < end:
                key = buf[pos]
                if key >= 0x80:
                    if key == 0x82 and buf[pos + 1] == 0x01:  # field 16, LEN: BLOCK_CONFIRMED body
                        pos += 2
                        length, start = read_varint(buf, pos, end)
                        stop = start + length
                        if stop > end:
                            raise ValueError
                        block = _scan_block_confirmed(buf, start, stop)
                        pos = stop
                        continue
                    raise ValueError
                pos += 1
                if key & 7 == 0:
                    value = buf[pos]
                    if value < 0x80:
                        pos += 1
                    else:
                        value, pos = read_varint(buf, pos, end)
                    if key == 0x08:
                        event_type = value
                    elif key == 0x10:
                        event_id = value
                        saw_id = True
                    elif key == 0x60:
                        block_number = value
                    elif key == 0x70:
                        shard = value
                    elif key == 0x78:
                        timestamp = value
                elif key & 7 == 2:
                    length = buf[pos]
                    if length < 0x80:
                        start = pos + 1
                    else:
                        length, start = read_varint(buf, pos, end)
                    stop = start + length
                    if stop > end:
                        raise ValueError
                    field = key >> 3
                    if field == 3 or field == 4 or field == 5 or field == 13:
                        # body: field 1 is the Message
                        if buf[start] != 0x0A:
                            raise ValueError
                        mlen, mstart = read_varint(buf, start + 1, stop)
                        fid, msg_type, msg_hash = message_keys(buf, mstart, mstart + mlen)
                    elif field == 8:
                        fid, msg_type, msg_hash = _scan_username_proof_body(buf, start, stop)
                    elif field == 11:
                        fid = _scan_on_chain_body(buf, start, stop)
                    pos = stop
                else:
                    raise ValueError
            if not saw_id:
                raise ValueError
            return HubEventKeys(event_type, event_id, shard, block_number, timestamp, fid, msg_type, msg_hash, block)
        except (ValueError, IndexError):
            return scan_hub_event(buf)  # the careful path: proper WireError, odd encodings

    return scan


# -- transport ceiling ------------------------------------------------------------------------------


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
                await call_asyncio(_subscribe_aio, GrpcTarget.from_url(url), request, trio_sender(send), read_batch, 10.0)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            got = 0
            while got < expected:
                batch = await receive.receive()
                sizes.append(len(batch))
                got += len(batch)
            elapsed = time.perf_counter() - started
            result = {"events": got, "seconds": elapsed, "us_per_event": elapsed / got * 1e6, "crossings": len(sizes),
                      "mean_list": got / len(sizes)}
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
    args = parser.parse_args(argv)
    if args.transport_asyncio:
        print(json.dumps(asyncio.run(transport_asyncio(args.transport_asyncio, 1, args.events))))
        return 0
    if args.transport_trio:
        import trio

        from weir.bridge import open_asyncio_loop

        async def run() -> dict:
            async with open_asyncio_loop():
                return await transport_trio(args.transport_trio, 1, args.events, args.read_batch)

        trio.run(run)  # prints its result and exits

    import trio

    from weir.actors.farcaster import ShardReader
    try:
        from weir.networks.farcaster import farcaster_predicate
    except ImportError:  # before weir/networks/ existed
        from weir.app import farcaster_predicate
    from weir.codecs.farcaster_gaps import GapDetector
    from weir.codecs.farcaster_keys import scan_hub_event
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
    fast = make_fast_scanner()
    mismatches = sum(1 for p in payloads if fast(p) != scan_hub_event(p))
    figures["prototype_fast_scan_us"] = per_event(lambda: [fast(p) for p in payloads], n)
    figures["prototype_fast_scan_mismatches"] = mismatches

    def read_all() -> list[Chunk]:
        reader = ShardReader(shard=1, partition="1", detector=GapDetector(), stats=__import__("weir.actors.farcaster", fromlist=["ShardStats"]).ShardStats())
        return [reader.read(batch, 0.0) for batch in lists]

    figures["shard_reader_read_us"] = per_event(read_all, n)
    chunks = read_all()
    fids = sorted({e.fields.get("fid") for c in chunks for e in c.events if e.fields.get("fid")})
    keep = fids[:: max(1, len(fids) // args.fids)][: args.fids]
    settings = load_config(environ={}, overrides={"farcaster.fids": ",".join(map(str, keep))}).farcaster
    predicate = farcaster_predicate(settings)
    figures["filter_us"] = per_event(lambda: [[e for e in c.events if predicate(e)] for c in chunks], n)

    sink = RedisSink("redis://127.0.0.1:1/0", source="farcaster")
    batches = [chunks[i : i + 1] for i in range(len(chunks))]  # ~512 events each, as in the pipeline
    figures["pack_evalsha_us"] = per_event(lambda: [sink._pack_evalsha("1", b) for b in batches], n)

    sample = payloads[:5000]
    figures["betterproto2_decode_us"] = per_event(lambda: [HubEvent.parse(p) for p in sample], len(sample), 1)
    decoded = [HubEvent.parse(p) for p in sample]
    figures["betterproto2_encode_us"] = per_event(lambda: [bytes(e) for e in decoded], len(sample), 1)

    async def transport() -> None:
        # Each transport run in a fresh process: a clean loop, and plain asyncio without the
        # event loop policy that importing trio-asyncio installs.
        async with open_snapchain_sim(sim_config, ready_timeout=300) as sim:
            for name, flags in (
                ("transport_trio_asyncio_read_batch_512", ["--transport-trio", sim.url, "--read-batch", "512"]),
                ("transport_trio_asyncio_read_batch_2048", ["--transport-trio", sim.url, "--read-batch", "2048"]),
                ("transport_plain_asyncio", ["--transport-asyncio", sim.url]),
            ):
                completed = await trio.run_process(
                    [sys.executable, __file__, *flags, "--events", str(n)], capture_stdout=True
                )
                figures[name] = json.loads(completed.stdout)

    trio.run(transport)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    for name, value in figures.items():
        if isinstance(value, dict):
            print(f"{name:45s} {value['us_per_event']:7.2f} µs/event  ({value['events'] / value['seconds']:,.0f} events/s"
                  + (f", mean list {value['mean_list']:.0f}" if "mean_list" in value else "") + ")")
        elif name.endswith("_us"):
            print(f"{name:45s} {value:7.2f} µs/event")
        else:
            print(f"{name:45s} {value}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
