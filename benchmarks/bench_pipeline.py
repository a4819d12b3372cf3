#!/usr/bin/env python
"""End-to-end benchmark of weir's pipeline: simulator -> weir -> embedded Redis, in one run.

    python benchmarks/bench_pipeline.py                       # the full run (~1-2 min), table + JSON
    python benchmarks/bench_pipeline.py --events 400000       # bigger replay
    python benchmarks/bench_pipeline.py --only unfiltered --set farcaster.read_batch=2048
    python benchmarks/bench_pipeline.py --only unfiltered,filtered --profile pyinstrument

Scenarios (each measured process is a fresh subprocess, so peak RSS is per scenario):

unfiltered  The simulator (its own process) holds ``--events`` events in all, pregenerated and
            released at once (history = total), so they are replayed at full speed. weir subscribes
            from the oldest event with no filter and persists into a fresh embedded redis-server
            (its own process, AOF everysec). Clock: from calling ``serve`` until every shard's
            persisted cursor equals the last offered id. Then the driver reads the streams back and
            checks they hold exactly the offered events (ids and bytes).
filtered    Same offered events, ``farcaster.fids`` = 1 % of the fids that occur. Reports events read
            from the network per second; checks the persisted events are exactly the offered events
            of those fids (the expected fids come from the wire scanner and are cross-checked against
            the typed betterproto2 decode on a sample).
latency     A live simulator at ``--rate`` events/s in total (history 0, ``--latency-seconds`` worth),
            started by the weir worker right before it subscribes; it goes live at the first
            Subscribe. p50/p99/max of receipt -> durable from PipelineStats.latencies (receipt = when
            the list of events entered trio), and of release -> durable (from when the simulator
            released each event, so waiting before trio counts too). Below the table, where the
            slowest 1 % spent their time (behind a write in flight, hand-over, own write, GC, long
            trio task steps).

weir against other ingesters (Shuttle, a grpcio + redis-py pipeline) is benchmarks/peers/run.py.
The benchmark needs only weir's own dependencies; ``--profile pyinstrument`` needs pyinstrument.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "pipeline.json"
SCENARIOS = ("unfiltered", "filtered", "latency")

# Issue 11's targets (the session-3 ones were 20,000 / 60,000 / p99 100 ms at 5,000 ev/s / 150 MB).
TARGETS = {
    "unfiltered_events_per_s": 80_000,
    "filtered_offered_events_per_s": 200_000,
    "latency_p99_ms": 20.0,
    "peak_rss_mb": 100.0,
}


# ================================================================================================
# Worker: one scenario of weir in a fresh process (python bench_pipeline.py --worker SPEC_JSON)
# ================================================================================================


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    n = len(ordered)

    def q(p: float) -> float:
        return ordered[min(n - 1, int(p * n))]

    return {
        "count": n,
        "mean": sum(ordered) / n,
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "max": ordered[-1],
    }


def _summary_ms(seconds: list[float]) -> dict[str, float]:
    """:func:`_summary` of durations in seconds, given in milliseconds (the count as it is)."""
    return {k: (v * 1000 if k != "count" else v) for k, v in _summary(seconds).items()}


def peak_rss_kb() -> dict[str, int]:
    """This process's peak RSS in KiB: VmHWM (of this program image) and ru_maxrss.

    ru_maxrss is not reliable in a process started with fork/vfork + exec: Linux carries the
    pre-exec image's high-water mark into it, so a worker spawned by a big driver reports the
    driver's size. VmHWM belongs to the address space created by exec, so it is the figure used.
    """
    hwm = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return {"vm_hwm_kb": hwm, "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def machine_busy_s() -> float | None:
    """CPU seconds all cores have spent busy since boot (Linux /proc/stat), None if unavailable."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of another process (Linux /proc), None if unavailable."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _children_cpu(exclude: set[int]) -> float:
    """CPU seconds of this process's live child processes except ``exclude`` (weir's verification
    workers, farcaster.verify_workers: without them the figure of "weir" is its main process only)."""
    total = 0.0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                children = [int(pid) for pid in f.read().split()]
        except (OSError, ValueError):
            continue
        total += sum(_proc_cpu(pid) or 0.0 for pid in children if pid not in exclude)
    return total


class _Instruments:
    """Cheap instrumentation patched onto weir's classes (per crossing / per batch, not per event)."""

    def __init__(self) -> None:
        self.read_sizes: list[int] = []  # lists crossing asyncio -> trio (ShardReader.read calls)
        self.write_events: list[int] = []  # events per RedisSink.write (one EVALSHA)
        self.write_chunks: list[int] = []
        self.write_seconds: list[float] = []
        self.gc_seconds = [0.0, 0.0, 0.0]
        self.gc_counts = [0, 0, 0]
        self.gc_pauses: list[tuple[float, float, int]] = []  # (end, seconds, generation) of each collection
        self._gc_started = 0.0
        # Where the tail comes from (per write and per chunk, not per event): each write's
        # (partition, start, end, [(receipt, events) of its chunks]), the trio task steps longer
        # than LONG_STEP (end, seconds, task), and each verification hand-over (end, seconds, items).
        self.writes: list[tuple[str, float, float, list[tuple[float, int, int, int]]]] = []  # chunk: (receipt, events, first and last position)
        self.long_steps: list[tuple[float, float, str, float]] = []  # (end, seconds, where, CPU seconds)
        self.steps_timed = False
        self.verify_calls: list[tuple[float, float, int]] = []
        self.recording = False

    def install(self) -> None:
        import gc

        from weir.actors import farcaster
        from weir.sinks.redis_sink import RedisSink

        import trio

        instruments = self
        original_read = farcaster.ShardReader.read
        original_write = RedisSink.write

        def read(self, payloads, received, **options):  # type: ignore[no-untyped-def]
            instruments.read_sizes.append(len(payloads))
            return original_read(self, payloads, received, **options)

        async def write(self, partition, chunks, **options):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            result = await original_write(self, partition, chunks, **options)
            ended = time.perf_counter()
            instruments.write_seconds.append(ended - started)
            if instruments.recording:  # trio's clock is perf_counter plus an offset: one timeline
                offset = time.perf_counter() - trio.current_time()
                instruments.writes.append((partition, started, ended, [
                    (chunk.events[0].received + offset, len(chunk.events), chunk.events[0].position, chunk.events[-1].position)
                    for chunk in chunks if chunk.events]))
            instruments.write_events.append(sum(len(chunk.events) for chunk in chunks))
            instruments.write_chunks.append(len(chunks))
            return result

        farcaster.ShardReader.read = read
        RedisSink.write = write

        from weir.actors.verify_workers import ProcessVerifier

        original_verdicts = ProcessVerifier.verdicts

        async def verdicts(self, items):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            result = await original_verdicts(self, items)
            if instruments.recording:
                ended = time.perf_counter()
                instruments.verify_calls.append((ended, ended - started, len(items)))
            return result

        ProcessVerifier.verdicts = verdicts

        def on_gc(phase: str, info: dict) -> None:
            if not instruments.recording:
                return
            if phase == "start":
                instruments._gc_started = time.perf_counter()
            else:
                generation = info["generation"]
                ended = time.perf_counter()
                instruments.gc_seconds[generation] += ended - instruments._gc_started
                instruments.gc_counts[generation] += 1
                instruments.gc_pauses.append((ended, ended - instruments._gc_started, generation))

        gc.callbacks.append(on_gc)

    def report(self) -> dict:
        return {
            "bridge_list_sizes": _summary([float(x) for x in self.read_sizes]),
            "redis_batch_events": _summary([float(x) for x in self.write_events]),
            "redis_batch_chunks": _summary([float(x) for x in self.write_chunks]),
            "redis_write_ms": _summary_ms(self.write_seconds),
            "redis_write_busy_s": sum(self.write_seconds),
            "gc_collections": self.gc_counts,
            "gc_seconds": self.gc_seconds,
            "gc_pause_ms": _summary_ms([p for _, p, _ in self.gc_pauses]),
            "tail": self.tail(),
            # (partition, first position, last position, events, receipt, durable) per chunk, on
            # perf_counter's clock (CLOCK_MONOTONIC, shared with the simulator's process): the driver
            # times each event from when the simulator released it (_release_to_durable).
            "chunk_times": [(partition, first, last, n, received, ended) for partition, _, ended, chunks in self.writes
                            for received, n, first, last in chunks],
        }

    def tail(self) -> dict:
        """Where the slowest 1 % of events spent their time, against all events (means, ms).

        Each chunk's receipt -> durable is cut into: waiting for the partition's previous write to
        end (it was in flight when the chunk arrived), the hand-over (from then, or from receipt,
        to the start of its own write: verification, channels, batch policy, scheduling) and its
        own write. Also how much of that time the process spent in GC or in trio task steps longer
        than LONG_STEP (a step blocks every other task, so it stalls all partitions).
        """
        rows = []  # (latency, events, behind, handover, write, gc, long steps)
        previous_end: dict[str, float] = {}
        pauses = sorted((end - seconds, end) for end, seconds, _ in self.gc_pauses)
        steps = sorted((end - seconds, end) for end, seconds, _, _ in self.long_steps)

        def overlap(spans: list[tuple[float, float]], start: float, end: float) -> float:
            return sum(max(0.0, min(end, e) - max(start, s)) for s, e in spans if e > start and s < end)

        for partition, started, ended, chunks in self.writes:
            before = previous_end.get(partition, -1e300)
            previous_end[partition] = ended
            for received, events, _, _ in chunks:
                behind = max(0.0, min(before, started) - received)
                rows.append((ended - received, events, behind, started - received - behind, ended - started,
                             overlap(pauses, received, ended), overlap(steps, received, ended)))
        if not rows:
            return {}
        rows.sort()
        total = sum(r[1] for r in rows)
        cut, seen = len(rows), 0
        for i in range(len(rows) - 1, -1, -1):
            seen += rows[i][1]
            if seen >= total / 100:
                cut = i
                break
        names = ("latency", "behind_write", "handover", "own_write", "in_gc", "in_long_steps")

        def means(selected: list[tuple]) -> dict[str, float]:
            weight = sum(r[1] for r in selected)
            columns = (0, 2, 3, 4, 5, 6)
            return {name: 1000 * sum(r[c] * r[1] for r in selected) / weight for name, c in zip(names, columns)}

        slow_steps: dict[str, list[float]] = {}
        slow_cpu: dict[str, float] = {}
        for _, seconds, where, cpu in self.long_steps:
            slow_steps.setdefault(where, []).append(seconds)
            slow_cpu[where] = slow_cpu.get(where, 0.0) + cpu
        by_size: dict[str, list[float]] = {}  # a write's duration by its events: what a big batch costs
        for _, started, ended, chunks in self.writes:
            events = sum(chunk[1] for chunk in chunks)
            bucket = next(f"<={b}" for b in (10, 50, 100, 200, 500, 1000, 1 << 30) if events <= b)
            by_size.setdefault(bucket, []).append(ended - started)
        return {
            "write_ms_by_events": {k: {"count": len(v), "p50": 1000 * sorted(v)[len(v) // 2], "max": 1000 * max(v)}
                                   for k, v in by_size.items()},
            "all_ms": means(rows),
            "slowest_1pct_ms": means(rows[cut:]),
            "steps_timed": self.steps_timed,
            "long_steps": {task: {"count": len(v), "max_ms": 1000 * max(v), "total_ms": 1000 * sum(v), "cpu_ms": 1000 * slow_cpu[task]}
                           for task, v in sorted(slow_steps.items(), key=lambda kv: -sum(kv[1]))[:6]},
            "verify_calls": {**_summary_ms([d for _, d, _ in self.verify_calls]),
                             "items_mean": sum(n for _, _, n in self.verify_calls) / max(1, len(self.verify_calls))},
        }


LONG_STEP = 0.002  # seconds: a trio task step longer than this is recorded (it stalls every task)


class _LongSteps:
    """A trio instrument that records task steps longer than LONG_STEP as (end, seconds, where).

    ``where`` names the task and the innermost coroutine it is suspended in after the step, and
    says how much of the step was this thread's CPU (the rest: the OS ran something else).
    """

    def __init__(self, into: list[tuple[float, float, str]], recording) -> None:  # type: ignore[no-untyped-def]
        self.into = into
        self.recording = recording
        self.started: float | None = None
        self.cpu = 0.0

    def before_task_step(self, task) -> None:  # type: ignore[no-untyped-def]
        self.started = time.perf_counter()
        self.cpu = time.thread_time()

    def after_task_step(self, task) -> None:  # type: ignore[no-untyped-def]
        ended = time.perf_counter()
        if self.started is None or ended - self.started <= LONG_STEP or not self.recording():
            return
        coro, inner = task.coro, None
        while coro is not None and hasattr(coro, "cr_code"):
            inner, coro = coro, coro.cr_await
        where = task.name.rpartition(".")[2] + ("/" + inner.cr_code.co_name if inner is not None else "")
        self.into.append((ended, ended - self.started, where, time.thread_time() - self.cpu))


async def _run_weir(spec: dict, instruments: _Instruments) -> dict:
    import functools
    from contextlib import AsyncExitStack

    import trio

    from weir.app import serve
    from weir.config import load_config

    peers: dict[str, int] = dict(spec.get("peer_pids", {}))
    async with AsyncExitStack() as stack:
        url = spec.get("sim_url")
        if spec.get("sim") is not None:  # latency: a live simulator, started right before subscribing
            from weir.sim.farcaster_data import SnapchainSimConfig
            from weir.sim.process import open_snapchain_sim

            sim = await stack.enter_async_context(open_snapchain_sim(SnapchainSimConfig(**spec["sim"]), ready_timeout=120))
            url = sim.url
            peers["sim"] = sim.pid
        shards = list(range(1, spec["shards"] + 1))
        overrides = {
            "farcaster.url": url,
            "farcaster.start": "oldest",
            "farcaster.shards": ",".join(map(str, shards)),
            "farcaster.idle_timeout": "30",
            "redis.url": spec["redis_url"],
            "log_level": "WARNING",
        }
        if spec.get("fids"):
            overrides["farcaster.fids"] = ",".join(map(str, spec["fids"]))
        overrides.update(spec.get("overrides", {}))
        config = load_config(environ={}, overrides=overrides)
        expected_last = {f"farcaster/{shard}": spec["expected_last"][str(shard)] for shard in shards}

        peer_cpu0 = {name: _proc_cpu(pid) for name, pid in peers.items()}
        children0 = _children_cpu(set(peers.values()))
        busy0 = machine_busy_s()
        if spec["scenario"] == "latency":
            # Timing every task step costs two clock reads per step (~5-25 % of weir's CPU in the
            # throughput scenarios, which `weir run` does not pay): only where the tail is the question.
            trio.lowlevel.add_instrument(_LongSteps(instruments.long_steps, lambda: instruments.recording))
            instruments.steps_timed = True
        instruments.recording = True
        t0 = trio.current_time()
        cpu0 = time.process_time()
        first_receipt = None
        async with trio.open_nursery() as nursery:
            stopping = trio.Event()
            service = await nursery.start(functools.partial(serve, config, stopping=stopping))
            t_started = trio.current_time()
            with trio.fail_after(spec["timeout"]):
                while True:
                    parts = service.partitions
                    if first_receipt is None and any(p.source.received for p in parts):
                        first_receipt = trio.current_time()
                    if all(p.sink.cursor == expected_last[p.name] for p in parts):
                        break
                    await trio.sleep(0.005)
            t_done = trio.current_time()
            cpu1 = time.process_time()
            instruments.recording = False
            peer_cpu1 = {name: _proc_cpu(pid) for name, pid in peers.items()}
            children1 = _children_cpu(set(peers.values()))  # before the stop: the workers still live
            busy1 = machine_busy_s()
            parts = service.partitions
            root = service.root.statistics()
            latencies = [x for p in parts for x in p.sink.latencies]
            out = {
                "received": sum(p.source.received for p in parts),
                "appended": sum(p.sink.appended for p in parts),
                "skipped": sum(p.sink.skipped for p in parts),
                "dead_appended": sum(p.sink.dead_appended for p in parts),
                "dead_letters": sum(p.source.dead_letters for p in parts),
                "gaps": sum(p.source.gaps for p in parts),
                "reconnects": sum(p.source.reconnects for p in parts),
                "restarts": root.restarts + sum(c.restarts for c in root.children),
                "batches": sum(p.sink.batches for p in parts),
                "cursors": {p.name: p.sink.cursor for p in parts},
            }
            stopping.set()
    elapsed = t_done - t0
    window = t_done - t_started
    out.update(
        elapsed_s=elapsed,
        setup_s=t_started - t0,
        first_receipt_s=None if first_receipt is None else first_receipt - t0,
        events_per_s=out["appended"] / elapsed,
        received_per_s=out["received"] / elapsed,
        cpu_s=cpu1 - cpu0,
        cpu_cores=(cpu1 - cpu0) / elapsed,
        peer_cpu_cores={
            name: (None if peer_cpu0[name] is None or peer_cpu1[name] is None else (peer_cpu1[name] - peer_cpu0[name]) / elapsed)
            for name in peers
        },
        machine_busy_cores=None if busy0 is None or busy1 is None else (busy1 - busy0) / elapsed,
        weir_children_cores=(children1 - children0) / elapsed,
        load_average=os.getloadavg(),
        latency_ms=_summary_ms(latencies),
        measured_window_s=window,
    )
    return out


def worker_main(spec: dict) -> int:
    import gc
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="  [weir %(levelname)s %(name)s] %(message)s")
    import trio

    import weir.app  # noqa: F401  (import what serve() needs before measuring)

    instruments = _Instruments()
    instruments.install()
    rss_after_import = peak_rss_kb()["vm_hwm_kb"]
    gc_setting = spec.get("gc", "freeze")
    if gc_setting == "freeze":
        gc.collect()
        gc.freeze()
    elif gc_setting == "off":
        gc.disable()
    elif gc_setting.startswith("threshold="):
        gc.set_threshold(int(gc_setting.partition("=")[2]))
    profile = spec.get("profile")
    profiler = None
    if profile and profile["kind"] == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
    elif profile and profile["kind"] == "cprofile":
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        result = trio.run(_run_weir, spec, instruments)
    finally:
        if profile and profiler is not None:
            path = Path(profile["path"])
            path.parent.mkdir(parents=True, exist_ok=True)
            if profile["kind"] == "pyinstrument":
                profiler.stop()
                path.with_suffix(".txt").write_text(profiler.output_text(unicode=False, color=False, show_all=False))
                path.with_suffix(".html").write_text(profiler.output_html())
            else:
                import pstats

                profiler.disable()
                profiler.dump_stats(str(path.with_suffix(".prof")))
                with open(path.with_suffix(".txt"), "w") as f:
                    stats = pstats.Stats(profiler, stream=f)
                    stats.sort_stats("tottime").print_stats(45)
                    stats.sort_stats("cumulative").print_stats(60)
    result.update(instruments.report())
    if spec.get("sim") is None:  # only the live simulator releases events on a known schedule
        del result["chunk_times"]
    result.update(
        scenario=spec["scenario"],
        **peak_rss_kb(),
        rss_after_import_kb=rss_after_import,
        gc_setting=gc_setting,
        overrides=spec.get("overrides", {}),
    )
    print(json.dumps(result), flush=True)
    return 0


# ================================================================================================
# Driver: simulator, fresh Redis per scenario, workers, verification, table
# ================================================================================================


def _compute_expected(sim_config, shards: int, count: int) -> dict:
    """What the simulator offers, recomputed from its configuration: ids, bytes, scanned fids."""
    from weir.codecs.farcaster_keys import scan_hub_event
    from weir.sim.farcaster_data import generate_offered

    offered: dict[int, list[tuple[int, bytes]]] = {}
    fids: dict[int, list[int]] = {}
    for shard in range(1, shards + 1):
        events = generate_offered(sim_config, shard, count)
        offered[shard] = events
        fids[shard] = [scan_hub_event(payload).fid for _, payload in events]
    return {"offered": offered, "fids": fids}


def _release_to_durable(chunk_times: list, offered: dict[int, list[tuple[int, bytes]]], rate: float) -> dict:
    """p50/p99/max (ms) of release -> durable: from when the live simulator released each event to
    when its write returned, so the time an event waited before entering trio (in the socket, in
    grpclib's buffer while the reader was busy) counts too, which receipt -> durable leaves out.

    The simulator releases each shard's blocks on a schedule: the block whose first event is the
    i-th of the shard at ``start + i / rate``. ``start`` is not reported across processes; it is
    taken as the latest value every receipt allows (no event is received before its release), so
    the figures are lower bounds by at most the smallest receipt delay. Events released before the
    shard's first receipt (before weir had subscribed) are left out.
    """
    latencies: list[float] = []
    by_shard: dict[int, list] = {}
    for partition, first, last, n, received, ended in chunk_times:
        by_shard.setdefault(int(partition.rpartition("/")[2]), []).append((first, last, n, received, ended))
    for shard, chunks in by_shard.items():
        index = {event_id: i for i, (event_id, _) in enumerate(offered[shard])}
        ids = [event_id for event_id, _ in offered[shard]]

        def released_at(i: int) -> float:  # the offset of event i's block from the start, seconds
            return index[(ids[i] >> 14) << 14] / rate

        start = min(received - released_at(index[first]) for first, _, _, received, _ in chunks)
        first_receipt = min(received for _, _, _, received, _ in chunks)
        for first, last, n, _, ended in chunks:
            lo, hi = index[first], index[last]
            if hi - lo + 1 != n:  # not a contiguous run of offered events: cannot be timed this way
                continue
            latencies.extend(ended - release for i in range(lo, hi + 1)
                             if (release := start + released_at(i)) >= first_receipt)
    return _summary_ms(latencies)


def _typed_fid(event) -> int:  # type: ignore[no-untyped-def]
    """The fid read from the typed (betterproto2) model of a HubEvent; 0 when the event has none."""
    body = event.merge_message_body or event.prune_message_body or event.revoke_message_body or event.merge_failure
    if body is not None and body.message is not None and body.message.data is not None:
        return body.message.data.fid
    if event.merge_username_proof_body is not None and event.merge_username_proof_body.username_proof is not None:
        return event.merge_username_proof_body.username_proof.fid
    if event.merge_on_chain_event_body is not None and event.merge_on_chain_event_body.on_chain_event is not None:
        return event.merge_on_chain_event_body.on_chain_event.fid
    return 0


def _cross_check_fids(expected: dict, chosen: set[int], every: int = 50) -> dict:
    """Scanner fid == typed-decode fid, on every event of the chosen fids and every ``every``-th."""
    from weir.protos.snapchain import HubEvent

    checked = mismatched = 0
    for shard, events in expected["offered"].items():
        for i, ((_, payload), fid) in enumerate(zip(events, expected["fids"][shard])):
            if fid in chosen or i % every == 0:
                checked += 1
                if _typed_fid(HubEvent.parse(payload)) != fid:
                    mismatched += 1
    return {"checked": checked, "mismatched": mismatched}


def _read_stream(client, key: str) -> list[tuple[bytes, dict]]:
    out: list[tuple[bytes, dict]] = []
    start = "-"
    while True:
        page = client.xrange(key, min=start, max="+", count=20_000)
        out.extend(page)
        if len(page) < 20_000:
            return out
        start = "(" + page[-1][0].decode()


def _verify_weir(redis_url: str, wanted: dict[int, list[tuple[int, bytes]]], last_ids: dict[int, int]) -> dict:
    """The streams hold exactly ``wanted`` (ids and bytes, in order) and the cursors are the last ids."""
    import redis

    from weir.sinks.keys import partition_keys

    client = redis.Redis.from_url(redis_url)
    problems: list[str] = []
    persisted = 0
    try:
        for shard, events in wanted.items():
            keys = partition_keys("farcaster", str(shard))
            entries = _read_stream(client, keys.events)
            persisted += len(entries)
            if len(entries) != len(events):
                problems.append(f"shard {shard}: {len(entries)} persisted, {len(events)} expected")
            for (entry_id, fields), (event_id, payload) in zip(entries, events):
                if entry_id != b"%d-0" % event_id or fields.get(b"data") != payload:
                    problems.append(f"shard {shard}: entry {entry_id!r} differs from offered event {event_id}")
                    break
            cursor = client.hget(keys.cursor, "position")
            if cursor is None or int(cursor) != last_ids[shard]:
                problems.append(f"shard {shard}: cursor {cursor!r}, expected {last_ids[shard]}")
            dead = client.xlen(keys.dead)
            if dead:
                problems.append(f"shard {shard}: {dead} dead letters")
    finally:
        client.close()
    return {"ok": not problems, "persisted": persisted, "expected": sum(map(len, wanted.values())), "problems": problems}


async def _run_subprocess(argv: list[str], timeout: float) -> dict:
    import trio

    with trio.fail_after(timeout):
        completed = await trio.run_process(argv, capture_stdout=True, stderr=None, check=False)
    lines = completed.stdout.decode(errors="replace").strip().splitlines()
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"{argv[1]} {argv[2] if len(argv) > 2 else ''} failed with exit code {completed.returncode}")
    return json.loads(lines[-1])


def _worker_argv(spec: dict) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]


def _machine() -> dict:
    from weir.sinks.embedded_redis import find_server_binary

    version = subprocess.run([str(find_server_binary().path), "--version"], capture_output=True, text=True).stdout.strip()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "redis_server": version,
    }


async def driver(args: argparse.Namespace) -> dict:
    import trio

    from weir.sim.farcaster_data import SnapchainSimConfig
    from weir.sim.process import open_snapchain_sim
    from weir.sinks.embedded_redis import RedisServerConfig, open_embedded_redis

    started = time.perf_counter()
    shards = args.shards
    per_shard = args.events // shards
    scenarios = [s for s in SCENARIOS if s in args.only]
    profile_dir = Path(args.out).parent / "profiles"
    overrides = dict(item.split("=", 1) for item in args.set)
    results: dict = {
        "machine": _machine(),
        "command": " ".join(["python", "benchmarks/bench_pipeline.py", *sys.argv[1:]]),
        "parameters": {
            "shards": shards,
            "events": per_shard * shards,
            "latency_rate": args.rate,
            "latency_seconds": args.latency_seconds,
            "framing": args.framing,
            "weir_overrides": overrides,
            "gc": args.gc,
            "profile": args.profile,
        },
        "targets": TARGETS,
        "scenarios": {},
    }

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    replay = SnapchainSimConfig(
        shards=shards, seed=args.seed, rate=0, history=per_shard, total=per_shard, pregenerate=True, framing=args.framing
    )
    scratch = Path(tempfile.mkdtemp(prefix="weir-bench-"))

    def weir_spec(scenario: str, **extra) -> dict:
        spec = {
            "scenario": scenario,
            "shards": shards,
            "overrides": overrides,
            "timeout": args.timeout,
            "gc": args.gc,
            **extra,
        }
        if args.profile != "none":
            spec["profile"] = {"kind": args.profile, "path": str(profile_dir / f"{scenario}-{args.profile}")}
        return spec

    async def with_redis(name: str, run):
        async with open_embedded_redis(RedisServerConfig(data_dir=scratch / f"redis-{name}", appendfsync="everysec")) as server:
            return await run(server)

    needs_replay = any(s in scenarios for s in ("unfiltered", "filtered"))
    if needs_replay:
        log(f"starting the simulator ({shards} shards x {per_shard:,} events, pregenerated) "
            f"and recomputing the offered events for verification")
        expected: dict = {}

        async def compute() -> None:
            expected.update(await trio.to_thread.run_sync(_compute_expected, replay, shards, per_shard))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(compute)
            sim_cm = open_snapchain_sim(replay, ready_timeout=300)
            sim = await sim_cm.__aenter__()
        try:
            offered = expected["offered"]
            last_ids = {shard: events[-1][0] for shard, events in offered.items()}
            log(f"simulator ready at {sim.url} (pid {sim.pid}); last ids {last_ids}")

            if "unfiltered" in scenarios:
                log("unfiltered: weir, every event")

                async def unfiltered(server):
                    spec = weir_spec("unfiltered", sim_url=sim.url, redis_url=server.url,
                                     expected_last={str(k): v for k, v in last_ids.items()},
                                     peer_pids={"sim": sim.pid, "redis": server.pid})
                    result = await _run_subprocess(_worker_argv(spec), args.timeout + 60)
                    result["offered"] = sum(map(len, offered.values()))
                    result["verify"] = await trio.to_thread.run_sync(_verify_weir, server.url, offered, last_ids)
                    return result

                results["scenarios"]["unfiltered"] = r = await with_redis("unfiltered", unfiltered)
                log(f"unfiltered: {r['appended']:,} persisted in {r['elapsed_s']:.2f} s = {r['events_per_s']:,.0f} events/s; "
                    f"verify {'OK' if r['verify']['ok'] else r['verify']['problems']}")

            if "filtered" in scenarios:
                all_fids = sorted({fid for fids in expected["fids"].values() for fid in fids if fid})
                k = max(1, round(len(all_fids) * args.filter_fraction))
                chosen = [all_fids[i * len(all_fids) // k] for i in range(k)]
                wanted = {
                    shard: [event for event, fid in zip(events, expected["fids"][shard]) if fid in set(chosen)]
                    for shard, events in offered.items()
                }
                cross = await trio.to_thread.run_sync(_cross_check_fids, expected, set(chosen))
                log(f"filtered: weir, fids {chosen} ({k} of {len(all_fids)}), "
                    f"{sum(map(len, wanted.values())):,} matching events; scanner vs typed fid on "
                    f"{cross['checked']:,} events: {cross['mismatched']} mismatches")

                async def filtered(server):
                    spec = weir_spec("filtered", sim_url=sim.url, redis_url=server.url, fids=chosen,
                                     expected_last={str(k): v for k, v in last_ids.items()},
                                     peer_pids={"sim": sim.pid, "redis": server.pid})
                    result = await _run_subprocess(_worker_argv(spec), args.timeout + 60)
                    result["offered"] = sum(map(len, offered.values()))
                    result["fids"] = chosen
                    result["fids_in_data"] = len(all_fids)
                    result["matching"] = sum(map(len, wanted.values()))
                    result["fid_cross_check"] = cross
                    result["verify"] = await trio.to_thread.run_sync(_verify_weir, server.url, wanted, last_ids)
                    return result

                results["scenarios"]["filtered"] = r = await with_redis("filtered", filtered)
                log(f"filtered: {r['received']:,} read in {r['elapsed_s']:.2f} s = {r['received_per_s']:,.0f} events/s offered, "
                    f"{r['appended']:,} persisted; verify {'OK' if r['verify']['ok'] else r['verify']['problems']}")

        finally:
            with trio.CancelScope(shield=True):
                await sim_cm.__aexit__(None, None, None)

    if "latency" in scenarios and args.profile == "none":
        per_shard_rate = args.rate / shards
        live_total = int(per_shard_rate * args.latency_seconds)
        live = SnapchainSimConfig(shards=shards, seed=args.seed, rate=per_shard_rate, history=0, total=live_total, pregenerate=True)
        live_offered = await trio.to_thread.run_sync(_compute_expected, live, shards, live_total)
        live_last = {shard: events[-1][0] for shard, events in live_offered["offered"].items()}
        log(f"latency: live simulator at {args.rate:,.0f} events/s ({per_shard_rate:,.0f} per shard), "
            f"{live_total * shards:,} events")

        async def latency(server):
            # Live from the first Subscribe: released from the simulator's start, the events of
            # weir's own start-up (~2 % of them) reached it as a catch-up burst of 512-event reads and
            # 200-500-event writes, which set the p99 of a 10 s run (docs/performance.md, session 9).
            sim_fields = {"shards": shards, "seed": args.seed, "rate": per_shard_rate, "history": 0,
                          "total": live_total, "pregenerate": True, "live_after_subscribe": True}
            spec = weir_spec("latency", sim=sim_fields, redis_url=server.url,
                             expected_last={str(k): v for k, v in live_last.items()}, peer_pids={"redis": server.pid})
            result = await _run_subprocess(_worker_argv(spec), args.timeout + args.latency_seconds + 120)
            result["offered"] = sum(map(len, live_offered["offered"].values()))
            result["offered_rate"] = args.rate
            result["release_to_durable_ms"] = _release_to_durable(result.pop("chunk_times"), live_offered["offered"], per_shard_rate)
            result["verify"] = await trio.to_thread.run_sync(_verify_weir, server.url, live_offered["offered"], live_last)
            return result

        results["scenarios"]["latency"] = r = await with_redis("latency", latency)
        lat = r["latency_ms"]
        log(f"latency: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms over {lat['count']:,} events; "
            f"verify {'OK' if r['verify']['ok'] else r['verify']['problems']}")

    results["total_seconds"] = time.perf_counter() - started
    if not args.keep_data:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        log(f"Redis data kept in {scratch}")
    return results


def _mb(kb: int) -> float:
    return kb * 1024 / 1e6


def render_table(results: dict) -> str:
    s = results["scenarios"]
    rows: list[tuple[str, str, str, str]] = []

    def met(ok: bool) -> str:
        return "yes" if ok else "NO"

    if "unfiltered" in s:
        r = s["unfiltered"]
        rows.append(("Unfiltered end to end (persisted events/s)", f"{r['events_per_s']:,.0f}",
                     f">= {TARGETS['unfiltered_events_per_s']:,}", met(r["events_per_s"] >= TARGETS["unfiltered_events_per_s"] and r["verify"]["ok"])))
        rows.append(("  persisted / offered, verified byte for byte", f"{r['verify']['persisted']:,} / {r['offered']:,}",
                     "equal", met(r["verify"]["ok"])))
    if "filtered" in s:
        r = s["filtered"]
        rows.append((f"1 % fid filter ({len(r['fids'])} of {r['fids_in_data']} fids), offered events/s", f"{r['received_per_s']:,.0f}",
                     f">= {TARGETS['filtered_offered_events_per_s']:,}", met(r["received_per_s"] >= TARGETS["filtered_offered_events_per_s"] and r["verify"]["ok"])))
        rows.append(("  persisted / matching offered", f"{r['verify']['persisted']:,} / {r['matching']:,}", "equal", met(r["verify"]["ok"])))
    if "latency" in s:
        r = s["latency"]
        lat = r["latency_ms"]
        rows.append((f"Latency receipt->durable at {r['offered_rate']:,.0f} ev/s: p50", f"{lat['p50']:.1f} ms", "", ""))
        rows.append(("  p99", f"{lat['p99']:.1f} ms", f"<= {TARGETS['latency_p99_ms']:.0f} ms", met(lat["p99"] <= TARGETS["latency_p99_ms"])))
        rows.append(("  max", f"{lat['max']:.1f} ms", "", ""))
        if r.get("release_to_durable_ms", {}).get("count"):
            rel = r["release_to_durable_ms"]
            rows.append(("  from the simulator's release: p50 / p99 / max", f"{rel['p50']:.1f} / {rel['p99']:.1f} / {rel['max']:.1f} ms", "", ""))
        rows.append(("  persisted / offered", f"{r['verify']['persisted']:,} / {r['offered']:,}", "equal", met(r["verify"]["ok"])))
    for name in ("unfiltered", "filtered", "latency"):
        if name in s:
            mb = _mb(s[name]["vm_hwm_kb"])
            rows.append((f"Peak RSS of weir's process, {name}", f"{mb:.0f} MB", f"<= {TARGETS['peak_rss_mb']:.0f} MB", met(mb <= TARGETS["peak_rss_mb"])))
    widths = [max(len(row[i]) for row in rows + [("figure", "measured", "target", "met?")]) for i in range(4)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(("figure", "measured", "target", "met?"), widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)


def render_details(results: dict) -> str:
    lines = []
    for name, r in results["scenarios"].items():
        peers = ", ".join([f"weir's workers {r['weir_children_cores']:.2f}"] * bool(r.get("weir_children_cores"))
                          + [f"{k} {v:.2f}" for k, v in r["peer_cpu_cores"].items() if v is not None])
        if r.get("machine_busy_cores") is not None:
            others = (r["machine_busy_cores"] - r["cpu_cores"] - r.get("weir_children_cores", 0.0)
                      - sum(v for v in r["peer_cpu_cores"].values() if v is not None))
            peers += f", everything else {max(0.0, others):.2f} (machine {r['machine_busy_cores']:.2f} of {os.cpu_count()})"
        b, w = r["bridge_list_sizes"], r["redis_batch_events"]
        gc_total = sum(r["gc_seconds"])
        lines.append(
            f"{name}: {r['elapsed_s']:.2f} s (setup {r['setup_s']:.2f} s); weir {r['cpu_cores']:.2f} cores, {peers}; "
            f"bridge lists mean {b.get('mean', 0):.0f} (max {b.get('max', 0):.0f}, {b.get('count', 0):,} crossings); "
            f"Redis batches mean {w.get('mean', 0):.0f} events (p50 {w.get('p50', 0):.0f}, max {w.get('max', 0):.0f}, {w.get('count', 0):,} writes, "
            f"write p50 {r['redis_write_ms'].get('p50', 0):.1f} ms, persist busy {r['redis_write_busy_s'] / r['elapsed_s'] / len(r['cursors']):.0%} per partition); "
            f"GC {r['gc_collections']} collections, {gc_total * 1000:.0f} ms; restarts {r['restarts']}, gaps {r['gaps']}"
        )
        if r.get("tail"):
            t = r["tail"]
            for label, key in (("all events", "all_ms"), ("slowest 1 %", "slowest_1pct_ms")):
                m = t[key]
                lines.append(
                    f"  {label}: receipt->durable {m['latency']:.1f} ms = behind a write in flight {m['behind_write']:.1f} "
                    f"+ hand-over {m['handover']:.1f} + own write {m['own_write']:.1f}; of it in GC {m['in_gc']:.1f}, "
                    f"in trio steps > {LONG_STEP * 1000:.0f} ms {m['in_long_steps']:.1f}"
                )
            steps = ", ".join(f"{task} {v['count']}x max {v['max_ms']:.0f} ms (CPU {v['cpu_ms'] / max(v['total_ms'], 1e-9):.0%})"
                              for task, v in t["long_steps"].items())
            if not t.get("steps_timed", True):
                steps = "not timed (the latency scenario times them)"
            lines.append(f"  long trio steps: {steps or 'none'}; GC pause max {r['gc_pause_ms'].get('max', 0):.1f} ms"
                         + (f"; verify hand-overs p50 {t['verify_calls']['p50']:.1f} / p99 {t['verify_calls']['p99']:.1f} ms, "
                            f"{t['verify_calls']['items_mean']:.0f} items" if t["verify_calls"].get("count") else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, default=200_000, help="events offered in all for unfiltered/filtered (default 200,000)")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=10_000.0, help="latency scenario: offered events/s in total")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--filter-fraction", type=float, default=0.01)
    parser.add_argument("--framing", choices=("packed", "one"), default="packed",
                        help="unfiltered/filtered: the node's HTTP/2 framing (many messages per DATA frame, or one each)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="weir config override, e.g. farcaster.read_batch=2048")
    parser.add_argument("--gc", default="freeze", help="weir worker GC: freeze (the imported heap frozen before serve, "
                        "as `weir run` does: weir/collector.py) | default (Python's) | off | threshold=N")
    parser.add_argument("--profile", choices=("none", "pyinstrument", "cprofile"), default="none",
                        help="profile weir's workers (unfiltered, filtered); figures are then not comparable")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds a scenario may take")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file")
    parser.add_argument("--keep-data", action="store_true", help="keep each scenario's Redis data directory")
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")

    import trio

    results = trio.run(driver, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    print(f"\nweir pipeline benchmark: {m['cores']} cores ({m['cpu']}), Python {m['python']}, {m['redis_server'].split(' sha')[0]}")
    print(f"command: {results['command']}\n")
    print(render_table(results))
    print()
    print(render_details(results))
    print(f"\nresults: {out} (total {results['total_seconds']:.0f} s)")
    ok = all(r["verify"]["ok"] for r in results["scenarios"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
