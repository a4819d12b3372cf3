#!/usr/bin/env python
"""The JetStream publish path alone: client CPU per message of three ways to publish, same run, same server.

    python benchmarks/bench_nats_publish.py                 # 30,000 messages per way, 3 rounds, ~1 min
    python benchmarks/bench_nats_publish.py --messages 100000 --rounds 1

Each way publishes ``--messages`` messages shaped as weir's (a Farcaster entry: a 310-byte body, a
Nats-Msg-Id and six Weir-* headers) in windows of ``--window``, each window's acknowledgements
awaited before the next, into a real nats-server (JetStream, file store; its own stream per way),
from trio as weir runs (nats-py through weir/bridge.py, one crossing per window):

- ``publish_async``: nats-py's JetStream ``publish_async``, a future per message (what weir used);
- ``nc.publish``: nats-py's core ``publish`` with ``reply=<inbox>.<n>`` and one wildcard
  subscription whose callback matches the acknowledgements by token (weir's ack check);
- ``weir``: weir/deliver/nats_publisher.py (its own protocol code on trio sockets).

The rounds are interleaved (the machine's load moves); the table has each way's median.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats
import trio
from nats.js.api import StorageType, StreamConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.nats_server

from tests.nats_server import running_nats  # noqa: E402
from weir.bridge import call_asyncio, open_asyncio_loop  # noqa: E402
from weir.deliver.nats_messages import Message, message_of  # noqa: E402
from weir.deliver.nats_publisher import NatsPublisher  # noqa: E402
from weir.deliver.nats_wire import ack_problem, reply_token  # noqa: E402


def messages(count: int, way: str) -> list[Message]:
    fields = {b"kind": b"MERGE_MESSAGE", b"key": os.urandom(20), b"ts": b"1765000000", b"block": b"12345678",
              b"fid": b"123456", b"type": b"1", b"data": os.urandom(310)}
    return [message_of(f"{way}.{{source}}.{{partition}}.{{kind}}", source="farcaster", partition="1",
                       entry_id=f"1765000000000-{n}", fields=fields) for n in range(count)]


async def make_stream(url: str, way: str) -> None:
    client = await nats.connect(url)
    try:
        await client.jetstream().add_stream(StreamConfig(name=way.upper(), subjects=[f"{way}.>"], storage=StorageType.FILE))
    finally:
        await client.close()


async def way_publish_async(url: str, batches: list[list[Message]]) -> None:
    client = await nats.connect(url)
    try:
        js = client.jetstream(publish_async_max_pending=len(batches[0]))
        for batch in batches:
            futures = [await js.publish_async(m.subject, m.payload, headers=dict(m.headers)) for m in batch]
            await asyncio.wait(futures)
            assert all(not f.exception() for f in futures)
    finally:
        await client.close()


async def way_core_publish(url: str, batches: list[list[Message]]) -> None:
    client = await nats.connect(url)
    prefix = client.new_inbox()
    state: dict = {}

    async def on_reply(msg) -> None:
        token = reply_token(msg.subject.encode(), prefix.encode())
        if token is not None and ack_problem(b"", msg.data) is None:
            state["waiting"].discard(token)
        if not state["waiting"]:
            state["done"].set()

    try:
        await client.subscribe(prefix + ".*", cb=on_reply, pending_msgs_limit=1_000_000)
        first = 0
        for batch in batches:
            state["waiting"], state["done"] = set(range(first, first + len(batch))), asyncio.Event()
            for n, m in enumerate(batch, first):
                await client.publish(m.subject, m.payload, reply=f"{prefix}.{n}", headers=m.headers)
            await state["done"].wait()
            first += len(batch)
    finally:
        await client.close()


async def run_way(way: str, url: str, batches: list[list[Message]]) -> tuple[float, float]:
    """(seconds, CPU seconds of this process) to publish every batch."""
    began, cpu = time.perf_counter(), time.process_time()
    if way == "publish_async":
        await call_asyncio(way_publish_async, url, batches)
    elif way == "nc_publish":
        await call_asyncio(way_core_publish, url, batches)
    else:
        publisher = NatsPublisher(url, name="bench", ack_timeout=30)
        try:
            for batch in batches:
                failed, reason = await publisher.settle(await publisher.send(batch))
                assert not failed, reason
        finally:
            await publisher.aclose()
    return time.perf_counter() - began, time.process_time() - cpu


async def bench(args: argparse.Namespace) -> None:
    ways = ("publish_async", "nc_publish", "weir")
    results: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory(prefix="weir-bench-nats-") as scratch:
        async with open_asyncio_loop(), running_nats(Path(scratch)) as server:
            for round_ in range(args.rounds):
                for way in ways:
                    name = f"{way.replace('_', '')}{round_}"
                    await call_asyncio(make_stream, server.url, name)
                    all_messages = messages(args.messages, name)
                    batches = [all_messages[i:i + args.window] for i in range(0, len(all_messages), args.window)]
                    results[way].append(await run_way(way, server.url, batches))
                    print(f"round {round_ + 1} {way}: {args.messages / results[way][-1][0]:,.0f} messages/s, "
                          f"{results[way][-1][1] / args.messages * 1e6:.1f} µs CPU/message, load {os.getloadavg()[0]:.1f}",
                          file=sys.stderr, flush=True)
    print("| way | messages/s | client CPU µs/message |")
    print("|---|---|---|")
    for way in ways:
        rate = statistics.median(args.messages / seconds for seconds, _ in results[way])
        cpu = statistics.median(cpu / args.messages * 1e6 for _, cpu in results[way])
        print(f"| {way} | {rate:,.0f} | {cpu:.1f} |")
    print(f"load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--window", type=int, default=1000, help="messages per window (weir's in_flight)")
    parser.add_argument("--rounds", type=int, default=3)
    trio.run(bench, parser.parse_args())


if __name__ == "__main__":
    main()
