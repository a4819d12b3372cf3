"""``weir demo``: a simulated Snapchain network -> weir -> an embedded Redis, with live progress."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from weir.config import Config, ConfigError, load_config
from weir.live_line import LiveLine, apart_from_logs
from weir.redact import redact_text, redact_url
from weir.sim.farcaster_data import SnapchainSimConfig
from weir.sim.process import open_snapchain_sim

EXIT_USAGE = 2
PROGRESS_INTERVAL = 0.5
CHECK_INTERVAL = 0.05  # completion is checked more often than progress is printed


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@asynccontextmanager
async def _open_simulation(args: argparse.Namespace) -> AsyncIterator[tuple[dict[str, str], Callable[[Any], bool]]]:
    """Start the chosen network's simulator; yield the config overrides and a completion check."""
    if args.network == "atproto":
        from weir.sim.atproto_data import AtprotoSimConfig, generate_history
        from weir.sim.process import open_atproto_sim

        sim_config = AtprotoSimConfig(seed=args.seed, total=args.events, rate=args.rate)
        # Generating the history takes a while (~2 s for 20,000 events): say so first.
        print(f"weir demo: simulating an AT Protocol relay with {args.events} events at "
              f"{'full speed' if not args.rate else f'{args.rate:g} events/s'} (seed {args.seed}); "
              "generating its history...", file=sys.stderr, flush=True)
        last_seq = generate_history(sim_config)[-1].seq
        print("weir demo: 'received' counts relay frames, 'persisted' records: "
              "one commit frame carries one or more records", file=sys.stderr)
        async with open_atproto_sim(sim_config) as url:
            overrides = {"farcaster.enabled": "false", "atproto.enabled": "true", "atproto.url": url,
                         "atproto.jetstream_url": url, "atproto.start": "oldest"}
            yield overrides, lambda p: p.sink.cursor == last_seq
        return
    sim_config = SnapchainSimConfig(shards=args.shards, seed=args.seed, rate=args.rate, total=args.events)
    print(f"weir demo: simulating {args.shards} Snapchain shards x {args.events} events at "
          f"{'full speed' if not args.rate else f'{args.rate:g} events/s per shard'} (seed {args.seed})", file=sys.stderr)
    async with open_snapchain_sim(sim_config) as sim:
        overrides = {"farcaster.url": sim.url, "farcaster.start": "oldest", "farcaster.idle_timeout": "10",
                     "farcaster.shards": ",".join(str(shard) for shard in range(1, args.shards + 1))}
        yield overrides, lambda p: p.source.received >= args.events and p.sink.cursor == p.source.last_id


async def run_demo(config: Config, args: argparse.Namespace) -> int:
    from weir.cli import serve_until_signalled

    with tempfile.TemporaryDirectory(prefix="weir-demo-") as scratch:
        data_dir = config.redis.data_dir if "--data-dir" in sys.argv else str(Path(scratch) / "redis")
        async with _open_simulation(args) as (network_overrides, partition_done):
            try:
                demo_config = load_config(
                    args.config,
                    overrides={
                        **{f"redis.{k}": str(v) for k, v in (("url", config.redis.url), ("data_dir", data_dir)) if v},
                        **network_overrides,
                        "log_level": config.log_level,
                        "metrics.port": "0",  # any free port (printed below); --set metrics.port=N picks one
                        **{item.partition("=")[0].strip(): item.partition("=")[2] for item in args.set},
                    },
                    origins={**{key: f"weir demo --network {args.network}" for key in network_overrides},
                             **{item.partition("=")[0].strip(): "command line --set" for item in args.set}},
                )
            except ConfigError as exc:  # the --set values valid alone, not with the demo's own (e.g. no network left)
                print(f"weir: config error: {redact_text(str(exc))}", file=sys.stderr)
                return EXIT_USAGE
            summary: dict[str, object] = {}

            async def watch(service, stopping: trio.Event) -> None:
                shown = redact_url(service.redis_url)
                print(f"weir demo: Redis at {shown} (redis-cli -u {shown})", file=sys.stderr)
                if service.observability is not None:
                    print(f"weir demo: metrics at {service.observability.url}/metrics", file=sys.stderr)
                start = trio.current_time()
                line = LiveLine(sys.stderr)
                try:
                    with apart_from_logs(line):
                        await _show_progress(service, partition_done, line)
                    summary["complete"] = True
                finally:  # also when a signal stopped the demo early: the counts once drained
                    line.end()  # the shell's prompt starts on a line of its own
                    summary.update(_summary(service, trio.current_time() - start))
                stopping.set()

            code = await serve_until_signalled(demo_config, on_started=watch)
    if summary:
        complete = "" if summary.get("complete") else "stopped early: "
        print(
            f"weir demo: {complete}{summary['persisted']:,} events persisted in {summary['elapsed']:.1f} s "
            f"({summary['rate']:,.0f} events/s); latency receipt->durable p50 {summary['p50'] * 1000:.1f} ms, "
            f"p99 {summary['p99'] * 1000:.1f} ms; dead letters {summary['dead']}; gaps {summary['gaps']}; "
            f"restarts {summary['restarts']}",
            file=sys.stderr,
        )
    print(_where_the_data_went(config, args), file=sys.stderr)
    return code


async def _show_progress(service, partition_done: Callable[[Any], bool], line: LiveLine) -> None:
    """Print a progress line every PROGRESS_INTERVAL until every partition is done."""
    last_time, last_done = trio.current_time(), 0
    next_print = last_time + PROGRESS_INTERVAL
    while True:
        await trio.sleep(CHECK_INTERVAL)
        now = trio.current_time()
        complete = all(partition_done(p) for p in service.partitions)
        if now < next_print and not complete:
            continue
        next_print = now + PROGRESS_INTERVAL
        received = sum(getattr(p.source, "received", 0) for p in service.partitions)
        persisted = sum(p.sink.appended for p in service.partitions)
        durable = sum(p.sink.appended + p.sink.skipped for p in service.partitions)
        rate = (durable - last_done) / (now - last_time)
        last_time, last_done = now, durable
        latencies = [x for p in service.partitions for x in p.sink.latencies[-2000:]]
        text = (f"{received:>9,} received  {persisted:>9,} persisted  {rate:>8,.0f} ev/s  "
                f"lag {max(0, received - durable - _filtered(service)):>6,}  "
                f"p50 {_percentile(latencies, 0.5) * 1000:5.1f} ms  restarts {service.restarts()}")
        line.show(text)
        if complete:
            return


def _summary(service, elapsed: float) -> dict[str, object]:
    persisted = sum(p.sink.appended for p in service.partitions)
    latencies = [x for p in service.partitions for x in p.sink.latencies]
    return {"persisted": persisted, "elapsed": elapsed, "rate": persisted / elapsed if elapsed else 0.0,
            "p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99),
            "dead": sum(p.sink.dead_appended for p in service.partitions),
            "gaps": sum(getattr(p.source, "gaps", 0) for p in service.partitions), "restarts": service.restarts()}


def _where_the_data_went(config: Config, args: argparse.Namespace) -> str:
    """The demo's last line: where its events are now, and the command that reads them."""
    source = "" if args.network == "farcaster" else f" --source {args.network}"
    if config.redis.url:
        shown = redact_url(config.redis.url)
        return f"weir demo: the events are in the Redis at {shown}; read them with: weir tail --redis-url {shown}{source} --count 5"
    if args.data_dir is not None:
        data_dir = shlex.quote(args.data_dir)
        return f"weir demo: the data is kept in {data_dir}; read it with: weir tail --data-dir {data_dir}{source} --count 5"
    return ("weir demo: its Redis data was in a temporary directory, now deleted; to keep it, run "
            f"weir demo --data-dir weir-data, then: weir tail --data-dir weir-data{source} --count 5")


def _filtered(service) -> int:
    return sum(p.sink.filtered + getattr(p.source, "filtered", 0) for p in service.partitions)
